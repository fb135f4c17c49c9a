//! The web console at `/`: server-rendered HTML (maud templates, checked at compile time) from
//! the same binary, a small script for what is live (Server-Sent Events), and no front-end
//! build. Pages: apps, runs, a run (its jobs graph, steps, usage and grants, artifacts, cancel
//! and rerun), a step's log (live, then stored; colours as classes, every other control
//! sequence removed, never interpreted as HTML), an app's settings and its manual-run form,
//! and a status badge (`/badge/{app}.svg`).
//!
//! Sign-in takes an API token (its apps) or a user of `[[users]]` (argon2 password hash, its
//! apps); the session is server-side, in memory, behind an HttpOnly SameSite=Strict cookie, and
//! every form that changes something carries the session's CSRF token. A page of an app the
//! viewer does not reach answers 404, as if it did not exist. `docs/console.md` says more.

mod ansi;
mod auth;
mod badge;
mod live;
mod pages;

pub use self::ansi::{Segment, escape, segments, to_html};
pub use self::auth::{Sessions, hash_password};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::Shared;
use crate::config::{AppDef, AppScope};

/// A `[[users]]` entry of `skiff.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UserDef {
    /// The name typed at sign-in.
    pub name: String,
    /// An argon2 PHC string (`$argon2id$v=19$…`, from `skiff serve --hash-password`).
    pub password_hash: String,
    /// Apps the user sees and runs; `"*"` for all.
    pub apps: Vec<String>,
}

/// Who sees an app's status badge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BadgeAccess {
    /// Anyone: a README on a public forge can show it.
    Public,
    /// Only someone signed in to the console who reaches the app.
    #[default]
    Private,
}

/// A console user, resolved.
#[derive(Debug, Clone)]
pub struct User {
    /// The argon2 PHC string.
    pub password_hash: String,
    /// Its apps.
    pub scope: AppScope,
}

/// The console's part of the configuration.
#[derive(Debug, Clone, Default)]
pub struct ConsoleConfig {
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Apps whose badge anyone may see.
    pub public_badges: BTreeSet<String>,
}

impl ConsoleConfig {
    /// Checks the users (their hashes parse, their apps exist) and reads the apps' badges.
    pub fn resolve(users: &[UserDef], apps: &[AppDef]) -> anyhow::Result<Self> {
        let known: BTreeSet<&str> = apps.iter().map(|a| a.name.as_str()).collect();
        let mut out = ConsoleConfig::default();
        for u in users {
            argon2::PasswordHash::new(&u.password_hash).map_err(|e| {
                anyhow::anyhow!(
                    "user `{}`: `password-hash` is not an argon2 PHC string ({e}); make one with `skiff serve --hash-password`",
                    u.name
                )
            })?;
            let scope = if u.apps.iter().any(|a| a == "*") {
                AppScope::All
            } else {
                for a in &u.apps {
                    if !known.contains(a.as_str()) {
                        bail!("user `{}` names app `{a}`, which is not configured", u.name);
                    }
                }
                AppScope::Only(u.apps.clone())
            };
            let user = User { password_hash: u.password_hash.clone(), scope };
            if out.users.insert(u.name.clone(), user).is_some() {
                bail!("user `{}` is defined twice", u.name);
            }
        }
        out.public_badges =
            apps.iter().filter(|a| a.badge == Some(BadgeAccess::Public)).map(|a| a.name.clone()).collect();
        Ok(out)
    }
}

/// Form bodies of the console are small.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The console's routes, merged into the host's router by [`crate::api::app`].
pub fn router(state: &Arc<Shared>) -> Router<Arc<Shared>> {
    let sessions = Arc::new(Sessions::new(state.store.clone()));
    Router::new()
        .route("/", get(pages::apps))
        .route("/sign-in", get(auth::sign_in_page).post(auth::sign_in))
        .route("/sign-out", post(auth::sign_out))
        .route("/apps/{app}", get(pages::app_page))
        .route("/apps/{app}/runs", post(pages::start_run))
        .route("/runs", get(pages::runs))
        .route("/runs/watch", get(live::watch_runs))
        .route("/runs/{id}", get(pages::run_page))
        .route("/runs/{id}/events", get(live::run_events))
        .route("/runs/{id}/cancel", post(pages::cancel))
        .route("/runs/{id}/rerun", post(pages::rerun))
        .route("/runs/{id}/approve", post(pages::approve))
        .route("/runs/{id}/reject", post(pages::reject))
        .route("/runs/{id}/jobs/{job}/steps/{step}", get(pages::log_page))
        .route("/runs/{id}/jobs/{job}/steps/{step}/raw", get(pages::raw_log))
        .route("/runs/{id}/artifacts/{name}", get(pages::artifact))
        .route("/badge/{file}", get(badge::badge))
        .route("/console/{asset}", get(asset))
        .layer(axum::Extension(sessions))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::map_response(security_headers))
}

/// What every console answer carries: no script but ours, no framing, no sniffing, no caching
/// unless it says otherwise.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Pages, logs, artifacts and errors are one viewer's: no shared cache (a CDN caching
    // `…/artifacts/dist.zip` by its extension) may keep them. Answers that are public say so.
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("private, no-store"));
    resp
}

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "public, max-age=300")], body).into_response()
}

/// An error as a page: a status and a sentence.
#[derive(Debug)]
pub enum ConsoleError {
    /// 303 to the sign-in page, then back to this path.
    SignIn(String),
    /// 400.
    BadRequest(String),
    /// 403: a form without its CSRF token, say.
    Forbidden(String),
    /// 404: also what a page of an app out of the viewer's reach answers.
    NotFound,
    /// 409.
    Conflict(String),
    /// 500; the error is logged.
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for ConsoleError {
    fn from(e: anyhow::Error) -> Self {
        ConsoleError::Internal(e)
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (code, msg) = match self {
            ConsoleError::SignIn(next) => {
                let next = percent_encoding::utf8_percent_encode(&next, percent_encoding::NON_ALPHANUMERIC);
                return Redirect::to(&format!("/sign-in?next={next}")).into_response();
            }
            ConsoleError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ConsoleError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ConsoleError::NotFound => (
                StatusCode::NOT_FOUND,
                "There is nothing here, or you are not allowed to see it: check the address, or sign in with \
                 another account."
                    .into(),
            ),
            ConsoleError::Conflict(m) => (StatusCode::CONFLICT, m),
            ConsoleError::Internal(e) => {
                tracing::error!("console: {e:#}");
                (StatusCode::INTERNAL_SERVER_ERROR, "The host failed to answer; its log says why.".into())
            }
        };
        (code, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], pages::error_page(code, &msg).into_string())
            .into_response()
    }
}

type Result<T, E = ConsoleError> = std::result::Result<T, E>;

/// `app` if it is configured and `scope` reaches it; else 404.
fn visible_app(s: &Shared, scope: &AppScope, app: &str) -> Result<Arc<crate::config::AppConfig>> {
    match s.config.apps.get(app) {
        Some(a) if scope.allows(app) => Ok(a.clone()),
        _ => Err(ConsoleError::NotFound),
    }
}

/// Run `id` if `scope` reaches its app; else 404.
fn visible_run(s: &Shared, scope: &AppScope, id: i64) -> Result<crate::store::Run> {
    match s.store.run(id).with_context(|| format!("reading run {id}"))? {
        Some(r) if scope.allows(&r.app) => Ok(r),
        _ => Err(ConsoleError::NotFound),
    }
}

#[cfg(test)]
mod tests;
