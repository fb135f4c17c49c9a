//! Sign-in, sessions and CSRF tokens.
//!
//! A session is kept in the run store under the SHA-256 of a random 256-bit id, so every
//! instance sharing the store (a pool on PostgreSQL) knows it, and a restart keeps it; the
//! browser holds the id in an HttpOnly, SameSite=Strict cookie (Secure when the console is
//! reached over HTTPS). It ends after [`SESSION_TTL`] or at sign-out, on every instance.
//! Each session has its own CSRF token, which every form that changes something must send
//! back; the sign-in form, before any session, is bound to a random cookie the same way
//! (double submit).

use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use sha2::Digest as _;

use super::{ConsoleError, Result, pages};
use crate::Shared;
use crate::config::AppScope;

/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const COOKIE: &str = "skiff_session";
const PRE_COOKIE: &str = "skiff_signin";
/// Sessions kept at most; past it the oldest go (a flood of sign-ins cannot fill the memory).
const MAX_SESSIONS: usize = 10_000;

/// Someone signed in.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// `alice`, or `token admin`.
    pub name: String,
    /// The apps they reach.
    pub scope: AppScope,
    /// The token every form of theirs carries.
    pub csrf: String,
}

/// The console's sessions, in the run store.
pub struct Sessions {
    store: Arc<dyn crate::store::RunStore>,
}

/// Who signed in: their scope is read from the configuration on every request, so a token or
/// user removed from it (or given fewer apps) loses its sessions with the next start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "kebab-case")]
pub enum SignedIn {
    /// With the API token of this name.
    Token(String),
    /// A `[[users]]` user.
    User(String),
}

/// A session as its row keeps it.
#[derive(serde::Serialize, Deserialize)]
struct StoredViewer {
    who: SignedIn,
    csrf: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the operating system's random numbers");
    hex::encode(b)
}

/// What the store keys a session by: never the cookie itself.
fn key(id: &str) -> String {
    hex::encode(sha2::Sha256::digest(id.as_bytes()))
}

impl Sessions {
    /// Sessions kept in `store`.
    pub fn new(store: Arc<dyn crate::store::RunStore>) -> Self {
        Sessions { store }
    }

    /// Starts a session; returns its id (the cookie's value).
    pub fn start(&self, who: SignedIn) -> anyhow::Result<String> {
        let id = random_hex();
        let viewer = serde_json::to_string(&StoredViewer { who, csrf: random_hex() })?;
        let now = now_ms();
        let ttl = i64::try_from(SESSION_TTL.as_millis()).unwrap_or(i64::MAX);
        self.store.session_save(&key(&id), &viewer, now.saturating_add(ttl), now, MAX_SESSIONS)?;
        Ok(id)
    }

    /// The viewer of session `id`, with the scope `config` gives them now; none when the
    /// session is unknown, over, or its token or user is no longer configured.
    fn get(&self, id: &str, config: &crate::config::ServeConfig) -> Option<Viewer> {
        let stored = match self.store.session(&key(id), now_ms()) {
            Ok(found) => found?,
            Err(e) => {
                tracing::warn!("reading a console session: {e:#}");
                return None;
            }
        };
        let v: StoredViewer = serde_json::from_str(&stored).ok()?;
        let (name, scope) = match v.who {
            SignedIn::Token(name) => {
                let scope = config.tokens.values().find(|t| t.name == name)?.scope.clone();
                (format!("token {name}"), scope)
            }
            SignedIn::User(name) => {
                let scope = config.console.users.get(&name)?.scope.clone();
                (name, scope)
            }
        };
        Some(Viewer { name, scope, csrf: v.csrf })
    }

    fn end(&self, id: &str) {
        if let Err(e) = self.store.session_end(&key(id)) {
            tracing::warn!("ending a console session: {e:#}");
        }
    }
}

/// A cookie's value from the request.
pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn sessions(parts: &Parts) -> Arc<Sessions> {
    parts.extensions.get::<Arc<Sessions>>().cloned().expect("the console's router adds its sessions")
}

impl FromRequestParts<Arc<Shared>> for Viewer {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Shared>) -> Result<Self> {
        let found = cookie(&parts.headers, COOKIE).and_then(|id| sessions(parts).get(id, &s.config));
        found.ok_or_else(|| {
            let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            ConsoleError::SignIn(next.to_string())
        })
    }
}

/// Someone signed in, or nobody (the badge, the sign-in page).
pub struct MaybeViewer(pub Option<Viewer>);

impl FromRequestParts<Arc<Shared>> for MaybeViewer {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Shared>) -> Result<Self> {
        Ok(MaybeViewer(cookie(&parts.headers, COOKIE).and_then(|id| sessions(parts).get(id, &s.config))))
    }
}

/// Compares in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Viewer {
    /// Refuses (403) a form whose `csrf` field is not this session's token.
    pub fn check_csrf(&self, form: &[(String, String)]) -> Result<()> {
        match form.iter().find(|(k, _)| k == "csrf") {
            Some((_, v)) if same(v, &self.csrf) => Ok(()),
            _ => Err(ConsoleError::Forbidden(
                "This form's security token is missing or stale: reload the page and send it again.".into(),
            )),
        }
    }
}

/// Whether the browser reached the console over HTTPS (directly, or through a proxy that says
/// so), or the config's `public-url` is `https://`: cookies then say `Secure`.
fn over_tls(s: &Shared, headers: &HeaderMap) -> bool {
    s.config.public_url.as_deref().is_some_and(|u| u.starts_with("https://"))
        || headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

/// Where to go after signing in: a path of this host only. Browsers drop tabs and newlines
/// from URLs and read `\\` as `/`, so `/\t/evil.example` would leave the host: only printable
/// ASCII is kept, and the second character may be neither slash.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && n.bytes().all(|b| (0x21..=0x7e).contains(&b))
                && !matches!(n.as_bytes().get(1), Some(b'/' | b'\\'))
                && !n.contains('\\') =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

/// Password checks at once: argon2 takes about 19 MiB and tens of milliseconds each, so a flood
/// of sign-in forms must wait its turn (or be told to come back) rather than take the host's
/// memory and its blocking threads.
static PASSWORD_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

#[derive(Deserialize)]
pub(super) struct NextQuery {
    next: Option<String>,
}

pub(super) async fn sign_in_page(
    State(s): State<Arc<Shared>>,
    Query(q): Query<NextQuery>,
    headers: HeaderMap,
) -> Response {
    sign_in_form(&s, &headers, StatusCode::OK, &safe_next(q.next.as_deref()), None)
}

fn sign_in_form(s: &Shared, headers: &HeaderMap, code: StatusCode, next: &str, error: Option<&str>) -> Response {
    let pre = random_hex();
    let users = !s.config.console.users.is_empty();
    let page = pages::sign_in(next, &pre, users, error).into_string();
    let cookie = set_cookie(PRE_COOKIE, &pre, 3600, over_tls(s, headers));
    (code, [(header::SET_COOKIE, cookie), (header::CONTENT_TYPE, "text/html; charset=utf-8".into())], page)
        .into_response()
}

pub(super) async fn sign_in(
    State(s): State<Arc<Shared>>,
    axum::Extension(sessions): axum::Extension<Arc<Sessions>>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response> {
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    // The sign-in form is bound to its cookie: another site cannot sign a browser in.
    match (cookie(&headers, PRE_COOKIE), field("csrf")) {
        (Some(c), Some(f)) if same(c, f) => {}
        _ => {
            return Err(ConsoleError::Forbidden(
                "This sign-in form is stale or came from elsewhere: open the sign-in page again.".into(),
            ));
        }
    }
    let next = safe_next(field("next"));
    let found = match (field("token").map(str::trim).filter(|t| !t.is_empty()), field("name")) {
        (Some(token), _) => s.config.token(token).map(|t| SignedIn::Token(t.name.clone())),
        // Without users, there is no password to check: no argon2 for anyone.
        (None, Some(name)) if !s.config.console.users.is_empty() => {
            let password = field("password").unwrap_or("");
            let Ok(_turn) = PASSWORD_CHECKS.try_acquire() else {
                return Ok((
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "2")],
                    "Too many sign-ins at once: try again in a moment.",
                )
                    .into_response());
            };
            let user = s.config.console.users.get(name.trim());
            // Unknown names cost the same as wrong passwords.
            let hash = user.map(|u| u.password_hash.clone()).unwrap_or_else(|| DUMMY_HASH.to_string());
            let ok = {
                let password = password.to_string();
                tokio::task::spawn_blocking(move || verify_password(&password, &hash))
                    .await
                    .map_err(|e| anyhow::anyhow!("checking a password: {e}"))?
            };
            user.filter(|_| ok).map(|_| SignedIn::User(name.trim().to_string()))
        }
        _ => None,
    };
    let Some(who) = found else {
        let msg = "That token, name or password is not known here.";
        return Ok(sign_in_form(&s, &headers, StatusCode::UNAUTHORIZED, &next, Some(msg)));
    };
    tracing::info!(viewer = ?who, "signed in to the console");
    let id = sessions.start(who).map_err(|e| anyhow::anyhow!("starting a console session: {e:#}"))?;
    let tls = over_tls(&s, &headers);
    let mut resp = Redirect::to(&next).into_response();
    let h = resp.headers_mut();
    h.append(header::SET_COOKIE, set_cookie(COOKIE, &id, SESSION_TTL.as_secs(), tls).parse().expect("cookie"));
    h.append(header::SET_COOKIE, set_cookie(PRE_COOKIE, "", 0, tls).parse().expect("cookie"));
    Ok(resp)
}

pub(super) async fn sign_out(
    State(s): State<Arc<Shared>>,
    axum::Extension(sessions): axum::Extension<Arc<Sessions>>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response> {
    viewer.check_csrf(&form)?;
    if let Some(id) = cookie(&headers, COOKIE) {
        sessions.end(id);
    }
    let mut resp = Redirect::to("/sign-in").into_response();
    let cookie = set_cookie(COOKIE, "", 0, over_tls(&s, &headers));
    resp.headers_mut().insert(header::SET_COOKIE, cookie.parse().expect("cookie"));
    Ok(resp)
}

/// A hash of nothing anyone knows, checked for unknown names.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2tpZmYtY29uc29sZQ$LxoAr1d8Y6R6sKrRo0Mu5MqdFnHlsjpHcnMSq9hvqYU";

fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::PasswordVerifier as _;
    argon2::PasswordHash::new(phc)
        .is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// An argon2id PHC string of `password` with a random salt, for `[[users]] password-hash`.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::PasswordHasher as _;
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("random salt: {e}"))?;
    let salt = argon2::password_hash::SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(argon2::PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[test]
    fn next_stays_on_this_host() {
        assert_eq!(safe_next(Some("/runs/3")), "/runs/3");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        // Browsers drop tabs and newlines: `/\t/evil.example` is `//evil.example` to them.
        assert_eq!(safe_next(Some("/\t/evil.example")), "/");
        assert_eq!(safe_next(Some("/\n/evil.example")), "/");
        assert_eq!(safe_next(Some("/ /evil.example")), "/");
        assert_eq!(safe_next(Some("/runs?app=web&status=failure")), "/runs?app=web&status=failure");
    }
}
