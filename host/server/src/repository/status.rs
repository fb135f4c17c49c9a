//! Commit statuses on the forge: `pending` when a run is accepted, then how it ended, with a
//! link to the run, the mark a pull request shows beside each commit.
//!
//! [`request`] is the pure half: a forge's documented API, a target and a state in, the HTTP
//! request out. It checks every input first, so nothing a webhook or a pipeline supplies can
//! steer the URL path or smuggle a header. [`Reporter`] delivers in the background: strictly in
//! order for one commit and context, retried while the forge is down or rate-limits, given up
//! on after [`Backoff::attempts`], and never failing a run. The token goes into a header and
//! nowhere else: not into a URL, a `Debug` output, an error or a log line.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use tokio::sync::watch;

/// GitHub refuses longer descriptions; the others get the same cut so a status reads the same
/// everywhere.
pub const DESCRIPTION_LIMIT: usize = 140;

/// One attempt at most this long: a forge that accepts the connection and never answers must
/// not hold its commit's later statuses (or `flush`) forever.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
const USER_AGENT: &str = concat!("skiff/", env!("CARGO_PKG_VERSION"));
/// How much of a refusal's body is read, for its message.
const ERROR_BODY_LIMIT: usize = 4096;

/// Path segments are checked to be `[A-Za-z0-9._-]`; encoding anything else is a second fence.
/// GitLab's `:id` is the whole project path with its `/` encoded as `%2F`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// A forge's commit status API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forge {
    GitHub,
    GitLab,
    /// Gitea, and Forgejo (its fork, with the same API).
    Gitea,
}

impl Forge {
    /// The forge's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Forge::GitHub => "GitHub",
            Forge::GitLab => "GitLab",
            Forge::Gitea => "Gitea",
        }
    }
}

impl FromStr for Forge {
    type Err = String;

    /// `github`, `gitlab`, `gitea` or `forgejo`, in any case.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "github" => Ok(Forge::GitHub),
            "gitlab" => Ok(Forge::GitLab),
            "gitea" | "forgejo" => Ok(Forge::Gitea),
            _ => Err(format!("unknown forge {s:?}; expected `github`, `gitlab`, `gitea` or `forgejo`")),
        }
    }
}

/// Where a run is, as a commit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommitState {
    /// Accepted, not started.
    Pending,
    Running,
    Success,
    /// The pipeline failed (a step exited non-zero, a check did not pass).
    Failure,
    /// The run could not complete for reasons other than the pipeline's own verdict.
    Error,
    Cancelled,
}

impl CommitState {
    /// The word `forge`'s API takes for this state. GitHub and Gitea have no `running` (it is
    /// `pending`) and no `cancelled` (it is `error`, and the description says why); GitLab has
    /// no `error` (it is `failed`).
    pub fn on(self, forge: Forge) -> &'static str {
        use CommitState::*;
        match (forge, self) {
            (Forge::GitLab, Pending) => "pending",
            (Forge::GitLab, Running) => "running",
            (Forge::GitLab, Success) => "success",
            (Forge::GitLab, Failure | Error) => "failed",
            (Forge::GitLab, Cancelled) => "canceled",
            (_, Pending | Running) => "pending",
            (_, Success) => "success",
            (_, Failure) => "failure",
            (_, Error | Cancelled) => "error",
        }
    }

    /// What the status says when the caller gives no description.
    fn default_description(self) -> &'static str {
        match self {
            CommitState::Pending => "Queued",
            CommitState::Running => "Running",
            CommitState::Success => "Succeeded",
            CommitState::Failure => "Failed",
            CommitState::Error => "Could not complete",
            CommitState::Cancelled => "Cancelled",
        }
    }
}

/// One status line on one commit: which forge, repository, commit and context.
#[derive(Clone, PartialEq, Eq)]
pub struct StatusTarget {
    pub forge: Forge,
    /// The API's base, e.g. `https://api.github.com`, `https://gitlab.com/api/v4`,
    /// `https://gitea.example/api/v1`; a trailing `/` is fine.
    pub api_url: String,
    /// `owner/name`; on GitLab the project path (`group/sub/name`) or its numeric id.
    pub repository: String,
    /// The full commit id: 40 hex digits (SHA-1) or 64 (SHA-256).
    pub sha: String,
    /// The status's name, e.g. `skiff/web` (GitLab's `name`).
    pub context: String,
    /// The run's page, linked from the status.
    pub target_url: Option<String>,
    /// Sent in a header only; never logged, shown by `Debug` or put in an error.
    pub token: String,
}

impl fmt::Debug for StatusTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusTarget")
            .field("forge", &self.forge)
            .field("api_url", &self.api_url)
            .field("repository", &self.repository)
            .field("sha", &self.sha)
            .field("context", &self.context)
            .field("target_url", &self.target_url)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl StatusTarget {
    /// Checks the target as [`request`] does, e.g. when configuration is loaded, so a mistake
    /// shows at startup rather than as a log line after the first run.
    pub fn validate(&self) -> Result<(), String> {
        request(self, CommitState::Pending, "").map(drop)
    }

    /// `owner/name@1234567`, for log lines; escaped, since it may be unchecked.
    fn label(&self) -> String {
        let sha: String = self.sha.chars().take(7).collect();
        format!("{}@{}", self.repository.escape_debug(), sha.escape_debug())
    }
}

/// An HTTP request for a forge's commit status API, before it is sent.
#[derive(Clone, PartialEq)]
pub struct StatusRequest {
    pub method: http::Method,
    pub url: String,
    /// Lower-case names. One of them carries the token.
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

/// Headers whose value is (or holds) the token.
fn is_secret_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("private-token")
}

impl fmt::Debug for StatusRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret_header(k) { "<redacted>" } else { v.as_str() }))
            .collect();
        f.debug_struct("StatusRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &headers)
            .field("body", &self.body)
            .finish()
    }
}

/// The request that sets `target`'s status to `state` on its forge, following the forge's
/// documented API:
///
/// - GitHub: `POST {api}/repos/{owner}/{repo}/statuses/{sha}` with `{state, target_url,
///   description, context}`, `Authorization: Bearer`, API version `2022-11-28`
///   (<https://docs.github.com/en/rest/commits/statuses#create-a-commit-status>).
/// - GitLab: `POST {api}/projects/{url-encoded path}/statuses/{sha}` with `{state, name,
///   target_url, description}`, `PRIVATE-TOKEN`
///   (<https://docs.gitlab.com/api/commits/#set-the-pipeline-status-of-a-commit>).
/// - Gitea and Forgejo: `POST {api}/repos/{owner}/{repo}/statuses/{sha}` with `{state,
///   target_url, description, context}`, `Authorization: token`
///   (<https://gitea.com/api/swagger#/repository/repoCreateStatus>).
///
/// The description is cut to [`DESCRIPTION_LIMIT`] characters; where the forge has no
/// cancelled state, it says "Cancelled". An error names what is wrong and how to fix it, and
/// never contains the token.
pub fn request(target: &StatusTarget, state: CommitState, description: &str) -> Result<StatusRequest, String> {
    let forge = target.forge;
    let api = check_api_url(&target.api_url)?;
    let sha = check_sha(&target.sha)?;
    let segments = check_repository(forge, &target.repository)?;
    check_context(&target.context)?;
    if let Some(url) = &target.target_url {
        check_target_url(url)?;
    }
    let auth = match forge {
        Forge::GitHub => ("authorization", format!("Bearer {}", target.token)),
        Forge::GitLab => ("private-token", target.token.clone()),
        Forge::Gitea => ("authorization", format!("token {}", target.token)),
    };
    check_token(forge, &target.token, &auth.1)?;

    let encoded: Vec<String> = segments.iter().map(|s| utf8_percent_encode(s, SEGMENT).to_string()).collect();
    let description = describe(forge, state, description);
    let (url, mut body) = match forge {
        Forge::GitHub | Forge::Gitea => (
            format!("{api}/repos/{}/{}/statuses/{sha}", encoded[0], encoded[1]),
            json!({ "state": state.on(forge), "description": description, "context": target.context }),
        ),
        Forge::GitLab => (
            format!("{api}/projects/{}/statuses/{sha}", encoded.join("%2F")),
            json!({ "state": state.on(forge), "description": description, "name": target.context }),
        ),
    };
    if let Some(link) = &target.target_url {
        body["target_url"] = Value::String(link.clone());
    }
    let accept = match forge {
        Forge::GitHub => "application/vnd.github+json",
        Forge::GitLab | Forge::Gitea => "application/json",
    };
    let mut headers = vec![
        (auth.0.to_string(), auth.1),
        ("accept".to_string(), accept.to_string()),
        ("content-type".to_string(), "application/json".to_string()),
        ("user-agent".to_string(), USER_AGENT.to_string()),
    ];
    if forge == Forge::GitHub {
        headers.push(("x-github-api-version".to_string(), "2022-11-28".to_string()));
    }
    Ok(StatusRequest { method: http::Method::POST, url, headers, body })
}

/// The description as sent: one line, at most [`DESCRIPTION_LIMIT`] characters (cut at a
/// character, never inside one), saying "Cancelled" where the state cannot.
fn describe(forge: Forge, state: CommitState, description: &str) -> String {
    let given: String = description.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut text = if given.is_empty() { state.default_description().to_string() } else { given };
    if state == CommitState::Cancelled && forge != Forge::GitLab && !text.to_lowercase().contains("cancel") {
        text = format!("Cancelled: {text}");
    }
    if text.chars().count() > DESCRIPTION_LIMIT {
        text = text.chars().take(DESCRIPTION_LIMIT - 1).collect::<String>() + "…";
    }
    text
}

/// The API base without its trailing `/`: `http(s)`, a host, and no credentials, query or
/// fragment (credentials in it would end up in log lines).
fn check_api_url(api_url: &str) -> Result<String, String> {
    if api_url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("the forge API URL {api_url:?} contains whitespace or a control character"));
    }
    let url = reqwest::Url::parse(api_url).map_err(|e| {
        format!("the forge API URL {api_url:?} is not a URL ({e}); expected e.g. `https://api.github.com`")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("the forge API URL {api_url:?} is not an http(s) URL with a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the forge API URL carries credentials; give the token as the token instead".to_string());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("the forge API URL {api_url:?} has a query or fragment; give the API's base only"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// The full commit id in lower case.
fn check_sha(sha: &str) -> Result<String, String> {
    if matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(sha.to_ascii_lowercase());
    }
    let shown: String = sha.chars().take(80).collect();
    Err(format!(
        "commit {shown:?} is not a full commit id (40 hexadecimal digits, or 64 for SHA-256); give the commit the \
         run builds, not a branch, a tag or an abbreviated id"
    ))
}

/// The repository's path segments: two (`owner/name`) on GitHub and Gitea; on GitLab two or
/// more (`group/sub/name`), or one numeric project id. Each is a name of letters, digits, `-`,
/// `_` and `.`, and not `.` or `..`, so nothing can climb out of or add to the URL's path.
fn check_repository(forge: Forge, repository: &str) -> Result<Vec<&str>, String> {
    let segments: Vec<&str> = repository.split('/').collect();
    for segment in &segments {
        let named = !segment.is_empty()
            && *segment != "."
            && *segment != ".."
            && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !named {
            return Err(format!(
                "repository {repository:?} has a path segment {segment:?} that is not a name; each segment is made of \
                 letters, digits, `-`, `_` and `.`, and is not `.` or `..`"
            ));
        }
    }
    let fits = match forge {
        Forge::GitHub | Forge::Gitea => segments.len() == 2,
        Forge::GitLab => segments.len() >= 2 || segments[0].bytes().all(|b| b.is_ascii_digit()),
    };
    if !fits {
        let expected = match forge {
            Forge::GitLab => "a project path `group/name` (subgroups allowed) or a numeric project id",
            _ => "`owner/name`",
        };
        return Err(format!("repository {repository:?} is not {expected}, as {} expects", forge.name()));
    }
    Ok(segments)
}

fn check_context(context: &str) -> Result<(), String> {
    if context.trim().is_empty() {
        return Err("the status context is empty; name it, e.g. `skiff/web`".to_string());
    }
    if context.chars().any(char::is_control) {
        return Err(format!("the status context {context:?} contains a control character"));
    }
    Ok(())
}

fn check_target_url(target_url: &str) -> Result<(), String> {
    let shown: String = target_url.chars().take(200).collect();
    if target_url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("the run's link {shown:?} contains whitespace or a control character"));
    }
    match reqwest::Url::parse(target_url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(()),
        _ => Err(format!("the run's link {shown:?} is not an http(s) URL; forges refuse anything else")),
    }
}

/// The token must fit in a header; the message never shows it.
fn check_token(forge: Forge, token: &str, header: &str) -> Result<(), String> {
    if token.trim().is_empty() {
        return Err(format!("the {} token is empty", forge.name()));
    }
    if token.trim() != token || http::HeaderValue::from_str(header).is_err() {
        return Err(format!(
            "the {} token has whitespace or a character an HTTP header cannot carry (it is not shown here); check \
             for a stray newline",
            forge.name()
        ));
    }
    Ok(())
}

/// How a failed delivery is retried: after `first`, then twice as long each time up to `max`,
/// for `attempts` attempts in all (at least one). `max` bounds every wait, a forge's
/// `Retry-After` included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { first: Duration::from_secs(1), max: Duration::from_secs(60), attempts: 8 }
    }
}

impl Backoff {
    /// The wait after the `failed`-th failed attempt (counted from 1).
    fn delay(&self, failed: u32) -> Duration {
        let factor = 1u32.checked_shl(failed.saturating_sub(1)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// Delivers commit statuses in the background; cheap to clone (the clones share one queue).
///
/// [`Reporter::report`] returns at once. Reports for one status line (API, repository, commit
/// and context) are delivered one at a time in the order they were made, by a task that ends
/// when that line has nothing left to send; different lines do not wait for each other.
/// Connection errors, timeouts, 5xx, 429 and GitHub's rate-limit 403 are retried per
/// [`Backoff`]; other refusals are not. Failures are logged, never returned: a status never
/// fails a run.
#[derive(Clone)]
pub struct Reporter {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    retry: Backoff,
    /// The runtime to spawn on when `report` is called from outside one.
    runtime: Option<tokio::runtime::Handle>,
    /// Reports not yet started, per status line; a line is here exactly while its task runs.
    queues: Mutex<HashMap<Key, VecDeque<Job>>>,
    /// Reports queued or being delivered, for `flush`.
    outstanding: watch::Sender<usize>,
}

/// One status line on a forge: the request URL holds the API, repository and commit.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    url: String,
    context: String,
}

struct Job {
    request: StatusRequest,
    token: String,
    /// `owner/name@1234567`.
    label: String,
    /// "`skiff/web` → success".
    what: String,
}

impl Reporter {
    /// A reporter sending with `client`. Prefer [`Reporter::http_client`]'s: a client that
    /// follows redirects would carry GitLab's `PRIVATE-TOKEN` header to wherever a forge (or
    /// whoever answers for it) redirects, since only `Authorization` is dropped across hosts.
    pub fn new(client: reqwest::Client, retry: Backoff) -> Self {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let (outstanding, _) = watch::channel(0);
        Reporter { inner: Arc::new(Inner { client, retry, runtime, queues: Mutex::default(), outstanding }) }
    }

    /// A client suited to status reports: no redirects followed, a connect timeout.
    pub fn http_client() -> Result<reqwest::Client, String> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| format!("building the HTTP client for commit statuses: {e}"))
    }

    /// Queues `target`'s status `state` and returns at once. An invalid target is logged and
    /// dropped.
    pub fn report(&self, target: &StatusTarget, state: CommitState, description: &str) {
        let label = target.label();
        let request = match request(target, state, description) {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!("status for {label}: not sent: {}", scrub(&e, &target.token));
                return;
            }
        };
        let Some(runtime) = tokio::runtime::Handle::try_current().ok().or_else(|| self.inner.runtime.clone()) else {
            tracing::warn!("status for {label}: not sent: no async runtime to send it from");
            return;
        };
        let key = Key { url: request.url.clone(), context: target.context.clone() };
        let what = format!("`{}` → {}", target.context, state.on(target.forge));
        let job = Job { request, token: target.token.clone(), label, what };
        // Counted before it is visible to a task, so `flush` cannot see zero while it waits.
        self.inner.outstanding.send_modify(|n| *n += 1);
        let mut queues = lock(&self.inner.queues);
        match queues.entry(key) {
            Entry::Occupied(mut line) => line.get_mut().push_back(job),
            Entry::Vacant(line) => {
                let key = line.key().clone();
                line.insert(VecDeque::from([job]));
                drop(queues);
                let worker = Worker { inner: self.inner.clone(), key, in_flight: false, done: false };
                runtime.spawn(worker.run());
            }
        }
    }

    /// Waits until every report queued so far (and any queued meanwhile) is delivered or given
    /// up on. Bounded by the backoff: at most about `attempts × (max + 30 s)` per report
    /// queued for one status line. Wrap it in a timeout at shutdown.
    pub async fn flush(&self) {
        let mut outstanding = self.inner.outstanding.subscribe();
        // The sender lives in `inner`, which `self` holds: this cannot fail.
        let _ = outstanding.wait_for(|n| *n == 0).await;
    }
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporter")
            .field("retry", &self.inner.retry)
            .field("outstanding", &*self.inner.outstanding.borrow())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The task delivering one status line's reports in order.
struct Worker {
    inner: Arc<Inner>,
    key: Key,
    in_flight: bool,
    done: bool,
}

impl Worker {
    async fn run(mut self) {
        loop {
            let job = {
                let mut queues = lock(&self.inner.queues);
                match queues.get_mut(&self.key).and_then(VecDeque::pop_front) {
                    Some(job) => job,
                    None => {
                        // Under the same lock as the check: a report made after this starts a
                        // new task.
                        queues.remove(&self.key);
                        self.done = true;
                        return;
                    }
                }
            };
            self.in_flight = true;
            let log = |message: &str| tracing::warn!("status for {}: {message}", job.label);
            if let Err(message) = deliver(&self.inner.client, &self.inner.retry, &job, &log).await {
                log(&message);
            }
            self.in_flight = false;
            self.inner.outstanding.send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

impl Drop for Worker {
    /// A task that ends before its queue is empty (a panic, the runtime shutting down) frees
    /// its line for a new task, and stops `flush` waiting for reports nobody will send.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let left = lock(&self.inner.queues).remove(&self.key).map_or(0, |q| q.len()) + usize::from(self.in_flight);
        self.inner.outstanding.send_modify(|n| *n = n.saturating_sub(left));
    }
}

/// How one attempt went.
enum Attempt {
    Delivered,
    /// Worth another try, no sooner than `after` if the forge said so.
    Retry {
        why: String,
        after: Option<Duration>,
    },
    Refused(String),
}

/// Sends one report, retrying per `retry`. Each retried failure goes to `log`; the final
/// failure is returned. Everything passed to `log` or returned has the token scrubbed out.
/// `Ok` holds how many attempts it took.
async fn deliver(
    client: &reqwest::Client,
    retry: &Backoff,
    job: &Job,
    log: &(dyn Fn(&str) + Sync),
) -> Result<u32, String> {
    let attempts = retry.attempts.max(1);
    let mut attempt = 1;
    loop {
        match send(client, &job.request).await {
            Attempt::Delivered => return Ok(attempt),
            Attempt::Refused(why) => {
                return Err(scrub(&format!("{}: not delivered: {why}; not retried", job.what), &job.token));
            }
            Attempt::Retry { why, .. } if attempt >= attempts => {
                let tries = if attempts == 1 { "1 attempt".to_string() } else { format!("{attempts} attempts") };
                return Err(scrub(&format!("{}: not delivered after {tries}; the last: {why}", job.what), &job.token));
            }
            Attempt::Retry { why, after } => {
                let wait = retry.delay(attempt).max(after.unwrap_or_default()).min(retry.max);
                log(&scrub(
                    &format!("{}: attempt {attempt} of {attempts} failed: {why}; retrying in {wait:?}", job.what),
                    &job.token,
                ));
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

async fn send(client: &reqwest::Client, request: &StatusRequest) -> Attempt {
    let mut builder = client.request(request.method.clone(), &request.url).timeout(ATTEMPT_TIMEOUT);
    for (name, value) in &request.headers {
        let Ok(mut value) = http::HeaderValue::from_str(value) else {
            return Attempt::Refused(format!("header `{name}` cannot be sent"));
        };
        value.set_sensitive(is_secret_header(name));
        builder = builder.header(name.as_str(), value);
    }
    let body = match serde_json::to_vec(&request.body) {
        Ok(body) => body,
        Err(e) => return Attempt::Refused(format!("encoding the body: {e}")),
    };
    let response = match builder.body(body).send().await {
        Ok(response) => response,
        Err(e) if e.is_builder() => return Attempt::Refused(chain(&e)),
        Err(e) => return Attempt::Retry { why: chain(&e), after: None },
    };
    let status = response.status();
    if status.is_success() {
        return Attempt::Delivered;
    }
    let headers = response.headers().clone();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let retry_after = header("retry-after").and_then(|s| s.parse::<u64>().ok()).map(Duration::from_secs);
    // GitHub's rate limits answer 403 as well as 429: with `x-ratelimit-remaining: 0` (wait
    // until `x-ratelimit-reset`) or, for the secondary limits, with `retry-after`.
    let exhausted = header("x-ratelimit-remaining") == Some("0");
    let reset = header("x-ratelimit-reset").and_then(|s| s.parse::<u64>().ok()).map(|at| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        Duration::from_secs(at.saturating_sub(now))
    });
    let rate_limited = status.as_u16() == 429 || (status.as_u16() == 403 && (exhausted || retry_after.is_some()));
    let message = forge_message(response).await;
    let why = format!("the forge answered {status}{message}");
    if rate_limited || status.is_server_error() {
        let after = retry_after.or(if exhausted { reset } else { None });
        return Attempt::Retry { why, after };
    }
    let hint = match status.as_u16() {
        300..=399 => match header("location") {
            Some(to) => format!(" (a redirect to {to:?}; give the API's own URL)"),
            None => " (a redirect; give the API's own URL)".to_string(),
        },
        401 => " (the token is not accepted: expired, revoked or mistyped?)".to_string(),
        403 => " (the token may not set commit statuses on this repository)".to_string(),
        404 => " (no such repository or commit, or the token cannot see it)".to_string(),
        _ => String::new(),
    };
    Attempt::Refused(format!("{why}{hint}"))
}

/// The forge's own words for a refusal: the JSON `message` all three forges send, or the start
/// of the body. Read up to [`ERROR_BODY_LIMIT`] bytes; one line, at most 200 characters.
async fn forge_message(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(ERROR_BODY_LIMIT);
    let text = match serde_json::from_slice::<Value>(&body) {
        Ok(json) => match json.get("message") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => json.to_string(),
        },
        Err(_) => String::from_utf8_lossy(&body).into_owned(),
    };
    let text: String = text.trim().chars().take(200).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.is_empty() { String::new() } else { format!(": {text}") }
}

/// An error with its causes: reqwest's own message is only "error sending request for url".
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `text` with every occurrence of the token replaced: whatever a forge echoes back, or an
/// error quotes, the token stays out of the log.
fn scrub(text: &str, token: &str) -> String {
    let token = token.trim();
    if token.is_empty() { text.to_string() } else { text.replace(token, "<redacted>") }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;
    use tokio::sync::Semaphore;
    use tokio::task::JoinHandle;

    use super::*;

    const SHA: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";
    const TOKEN: &str = "ghp_s3cr3tT0kenValue";

    fn fast() -> Backoff {
        Backoff { first: Duration::from_millis(1), max: Duration::from_millis(5), attempts: 3 }
    }

    fn reporter(retry: Backoff) -> Reporter {
        Reporter::new(Reporter::http_client().unwrap(), retry)
    }

    fn target(forge: Forge, api_url: &str, repository: &str) -> StatusTarget {
        StatusTarget {
            forge,
            api_url: api_url.to_string(),
            repository: repository.to_string(),
            sha: SHA.to_string(),
            context: "skiff/web".to_string(),
            target_url: Some("https://skiff.example/runs/42".to_string()),
            token: TOKEN.to_string(),
        }
    }

    fn state(name: &str) -> CommitState {
        match name {
            "pending" => CommitState::Pending,
            "running" => CommitState::Running,
            "success" => CommitState::Success,
            "failure" => CommitState::Failure,
            "error" => CommitState::Error,
            "cancelled" => CommitState::Cancelled,
            other => panic!("fixture names unknown state {other:?}"),
        }
    }

    /// A request as the fake forge saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        headers: BTreeMap<String, String>,
        body: Value,
    }

    /// A scripted answer: status, headers, JSON body.
    struct Reply(u16, Vec<(&'static str, String)>, Value);

    #[derive(Default)]
    struct Script {
        /// Answers to give before the default 201.
        replies: VecDeque<Reply>,
        /// Requests whose description is this wait for a permit before they are answered.
        hold: Option<(String, Arc<Semaphore>)>,
    }

    /// A forge on 127.0.0.1 answering the commit status APIs as documented: 201 and the status
    /// created, unless scripted otherwise.
    struct FakeForge {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<Seen>>>,
        script: Arc<Mutex<Script>>,
        task: JoinHandle<()>,
    }

    impl Drop for FakeForge {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl FakeForge {
        async fn start() -> FakeForge {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let script = Arc::new(Mutex::new(Script::default()));
            let (s, sc) = (seen.clone(), script.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let (seen, script) = (s.clone(), sc.clone());
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, script) = (seen.clone(), script.clone());
                        async move { Ok::<_, Infallible>(answer(req, seen, script).await) }
                    });
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            FakeForge { addr, seen, script, task }
        }

        fn url(&self, api_path: &str) -> String {
            format!("http://{}{api_path}", self.addr)
        }

        fn reply(&self, status: u16, headers: Vec<(&'static str, String)>, body: Value) {
            lock(&self.script).replies.push_back(Reply(status, headers, body));
        }

        fn seen(&self) -> Vec<Seen> {
            lock(&self.seen).clone()
        }

        fn states(&self) -> Vec<String> {
            self.seen().iter().map(|s| s["state"].clone()).collect()
        }
    }

    impl std::ops::Index<&str> for Seen {
        type Output = String;
        fn index(&self, field: &str) -> &String {
            match &self.body[field] {
                Value::String(s) => s,
                other => panic!("body field {field} is {other}"),
            }
        }
    }

    async fn answer(
        req: hyper::Request<hyper::body::Incoming>,
        seen: Arc<Mutex<Vec<Seen>>>,
        script: Arc<Mutex<Script>>,
    ) -> hyper::Response<Full<Bytes>> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("<binary>").to_string()))
            .collect();
        let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        lock(&seen).push(Seen { method, path: path.clone(), headers, body: body.clone() });
        let hold = lock(&script).hold.clone();
        if let Some((marker, gate)) = hold
            && body["description"] == marker.as_str()
        {
            let _permit = gate.acquire().await;
        }
        let scripted = lock(&script).replies.pop_front();
        let Reply(status, extra, reply) = scripted.unwrap_or_else(|| Reply(201, Vec::new(), created(&path, &body)));
        let mut response = hyper::Response::builder().status(status).header("content-type", "application/json");
        for (k, v) in extra {
            response = response.header(k, v);
        }
        response.body(Full::new(Bytes::from(reply.to_string()))).unwrap()
    }

    /// The status each forge's API documents as its 201 answer.
    fn created(path: &str, body: &Value) -> Value {
        if path.contains("/projects/") {
            json!({ "id": 93, "sha": path.rsplit('/').next(), "ref": "main", "status": body["state"],
                    "name": body["name"], "target_url": body["target_url"], "description": body["description"],
                    "created_at": "2026-11-30T16:00:00.000Z", "allow_failure": false, "coverage": null })
        } else {
            json!({ "id": 1, "url": format!("https://forge.example{path}"), "state": body["state"],
                    "status": body["state"], "description": body["description"], "target_url": body["target_url"],
                    "context": body["context"], "created_at": "2026-11-30T16:00:00Z" })
        }
    }

    #[tokio::test]
    async fn each_forge_sends_its_documented_request() {
        let fixtures = [
            (Forge::GitHub, include_str!("../../../tests/fixtures/forge-status/github.json")),
            (Forge::GitLab, include_str!("../../../tests/fixtures/forge-status/gitlab.json")),
            (Forge::Gitea, include_str!("../../../tests/fixtures/forge-status/gitea.json")),
        ];
        for (forge, fixture) in fixtures {
            let fixture: Value = serde_json::from_str(fixture).unwrap();
            let server = FakeForge::start().await;
            let t = &fixture["target"];
            let target = StatusTarget {
                forge,
                api_url: server.url(fixture["api_path"].as_str().unwrap()),
                repository: t["repository"].as_str().unwrap().to_string(),
                sha: t["sha"].as_str().unwrap().to_string(),
                context: t["context"].as_str().unwrap().to_string(),
                target_url: t["target_url"].as_str().map(str::to_string),
                token: t["token"].as_str().unwrap().to_string(),
            };
            let cases = fixture["cases"].as_array().unwrap();
            let reporter = reporter(Backoff::default());
            for case in cases {
                reporter.report(&target, state(case["state"].as_str().unwrap()), case["description"].as_str().unwrap());
            }
            reporter.flush().await;

            let seen = server.seen();
            let expected = &fixture["request"];
            assert_eq!(seen.len(), cases.len(), "{forge:?}: {seen:#?}");
            for (seen, case) in seen.iter().zip(cases) {
                let name = format!("{forge:?} {}", case["state"]);
                assert_eq!(seen.method, expected["method"], "{name}");
                assert_eq!(seen.path, expected["path"], "{name}");
                for (header, value) in expected["headers"].as_object().unwrap() {
                    assert_eq!(seen.headers.get(header).map(String::as_str), value.as_str(), "{name}: header {header}");
                }
                assert!(seen.headers["user-agent"].starts_with("skiff/"), "{name}: {:?}", seen.headers);
                let other_auth = if forge == Forge::GitLab { "authorization" } else { "private-token" };
                assert!(!seen.headers.contains_key(other_auth), "{name}: {other_auth} sent too");
                assert_eq!(seen.body, case["body"], "{name}");
            }
        }
    }

    #[tokio::test]
    async fn pending_then_success_arrive_in_order_when_the_first_attempt_fails() {
        let server = FakeForge::start().await;
        server.reply(500, vec![], json!({ "message": "Server Error" }));
        let target = target(Forge::GitHub, &server.url(""), "octo-org/hello-world");
        let reporter = reporter(fast());
        reporter.report(&target, CommitState::Pending, "Run 42 queued");
        reporter.report(&target, CommitState::Success, "Run 42 passed");
        reporter.flush().await;
        assert_eq!(server.states(), ["pending", "pending", "success"]);
        assert_eq!(server.seen()[2]["description"], "Run 42 passed");
    }

    #[tokio::test]
    async fn many_reports_for_one_status_line_keep_their_order() {
        let server = FakeForge::start().await;
        for _ in 0..2 {
            server.reply(503, vec![], json!({}));
        }
        let target = target(Forge::GitLab, &server.url("/api/v4"), "group/sub/name");
        let reporter = reporter(fast());
        let clone = reporter.clone();
        let order = [CommitState::Pending, CommitState::Running, CommitState::Failure];
        for (i, state) in order.into_iter().enumerate() {
            let r = if i % 2 == 0 { &reporter } else { &clone };
            r.report(&target, state, &format!("step {i}"));
        }
        reporter.flush().await;
        // The first report's first two attempts got 503s; the third got through.
        assert_eq!(server.states(), ["pending", "pending", "pending", "running", "failed"]);
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried_and_the_next_report_still_goes() {
        for (status, body) in [
            (422, json!({ "message": "Validation Failed", "errors": [{ "resource": "Status", "code": "custom" }] })),
            (404, json!({ "message": "Not Found" })),
            (401, json!({ "message": "Bad credentials" })),
        ] {
            let server = FakeForge::start().await;
            server.reply(status, vec![], body);
            let target = target(Forge::GitHub, &server.url(""), "octo-org/hello-world");
            let reporter = reporter(fast());
            reporter.report(&target, CommitState::Pending, "queued");
            reporter.report(&target, CommitState::Success, "passed");
            reporter.flush().await;
            assert_eq!(server.states(), ["pending", "success"], "after a {status}");
        }
    }

    #[tokio::test]
    async fn rate_limits_and_server_errors_are_retried_until_the_attempts_run_out() {
        let server = FakeForge::start().await;
        server.reply(429, vec![("retry-after", "120".into())], json!({ "message": "slow down" }));
        server.reply(403, vec![("x-ratelimit-remaining", "0".into()), ("x-ratelimit-reset", "1".into())], json!({}));
        server.reply(502, vec![], json!({}));
        // A 403 that is not a rate limit is a refusal.
        server.reply(403, vec![], json!({ "message": "Resource not accessible by integration" }));
        let target = target(Forge::GitHub, &server.url(""), "octo-org/hello-world");
        let reporter = reporter(Backoff { attempts: 5, ..fast() });
        let started = std::time::Instant::now();
        reporter.report(&target, CommitState::Success, "passed");
        reporter.report(&target, CommitState::Failure, "failed");
        reporter.flush().await;
        // Three retried, then refused (a fifth `success` would mean the plain 403 was retried).
        assert_eq!(server.states(), ["success", "success", "success", "success", "failure"]);
        // `max` bounds the forge's `retry-after: 120`.
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

        let server = FakeForge::start().await;
        for _ in 0..5 {
            server.reply(500, vec![], json!({}));
        }
        let target = StatusTarget { api_url: server.url(""), ..target };
        let reporter = self::reporter(fast());
        reporter.report(&target, CommitState::Success, "passed");
        reporter.flush().await;
        assert_eq!(server.seen().len(), 3, "three attempts, then given up");
    }

    #[tokio::test]
    async fn a_forge_that_is_down_is_given_up_on_and_flush_returns() {
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        // The listener is dropped: connections are refused.
        let target = target(Forge::Gitea, &format!("http://{addr}/api/v1"), "owner/repo");
        let reporter = reporter(fast());
        reporter.report(&target, CommitState::Pending, "queued");
        reporter.report(&target, CommitState::Success, "passed");
        tokio::time::timeout(Duration::from_secs(20), reporter.flush()).await.expect("flush returns");
        assert_eq!(*reporter.inner.outstanding.borrow(), 0);
        assert!(lock(&reporter.inner.queues).is_empty(), "the line's task has ended");

        let job = job(&target, CommitState::Success);
        let logged = Mutex::new(Vec::new());
        let log = |m: &str| lock(&logged).push(m.to_string());
        let error = deliver(&Reporter::http_client().unwrap(), &fast(), &job, &log).await.unwrap_err();
        assert!(error.starts_with("`skiff/web` → success: not delivered after 3 attempts; the last: "), "{error}");
        assert!(error.contains(&addr.to_string()), "{error}");
        let logged = logged.into_inner().unwrap();
        assert_eq!(logged.len(), 2, "{logged:?}");
        assert!(logged[0].contains("attempt 1 of 3 failed") && logged[0].ends_with("retrying in 1ms"), "{logged:?}");
        assert!(logged[1].contains("attempt 2 of 3 failed") && logged[1].ends_with("retrying in 2ms"), "{logged:?}");
    }

    #[tokio::test]
    async fn different_status_lines_do_not_wait_for_each_other() {
        let server = FakeForge::start().await;
        let gate = Arc::new(Semaphore::new(0));
        lock(&server.script).hold = Some(("held".to_string(), gate.clone()));
        let stuck = target(Forge::GitHub, &server.url(""), "o/r");
        let other_commit = StatusTarget { sha: "f".repeat(40), ..stuck.clone() };
        let other_context = StatusTarget { context: "skiff/lint".to_string(), ..stuck.clone() };
        let reporter = reporter(fast());
        reporter.report(&stuck, CommitState::Pending, "held");
        reporter.report(&stuck, CommitState::Success, "after the held one");
        reporter.report(&other_commit, CommitState::Success, "other commit");
        reporter.report(&other_context, CommitState::Success, "other context");
        let descriptions = || server.seen().iter().map(|s| s["description"].clone()).collect::<Vec<_>>();
        tokio::time::timeout(Duration::from_secs(10), async {
            while !(descriptions().contains(&"other commit".into()) && descriptions().contains(&"other context".into()))
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the other lines are delivered while one is held");
        let now = descriptions();
        assert!(now.contains(&"held".into()), "{now:?}");
        assert!(!now.contains(&"after the held one".into()), "the held line keeps its order: {now:?}");
        gate.add_permits(100);
        reporter.flush().await;
        let web: Vec<String> = server
            .seen()
            .iter()
            .filter(|s| s.path.contains(SHA) && s["context"] == "skiff/web")
            .map(|s| s["description"].clone())
            .collect();
        assert_eq!(web, ["held", "after the held one"]);
    }

    fn job(target: &StatusTarget, state: CommitState) -> Job {
        Job {
            request: request(target, state, "x").unwrap(),
            token: target.token.clone(),
            label: target.label(),
            what: format!("`{}` → {}", target.context, state.on(target.forge)),
        }
    }

    /// Delivers `target`'s status with `deliver`; what it logged, then its error if any.
    async fn deliver_logged(target: &StatusTarget, retry: Backoff) -> Vec<String> {
        let logged = Mutex::new(Vec::new());
        let log = |m: &str| lock(&logged).push(m.to_string());
        let result = deliver(&Reporter::http_client().unwrap(), &retry, &job(target, CommitState::Failure), &log).await;
        let mut lines = logged.into_inner().unwrap();
        lines.extend(result.err());
        lines
    }

    #[tokio::test]
    async fn the_token_appears_in_no_log_line_or_error() {
        let server = FakeForge::start().await;
        // A forge (or a proxy in front of it) that quotes the credential back.
        server.reply(500, vec![], json!({ "message": format!("upstream rejected Bearer {TOKEN}") }));
        server.reply(401, vec![], Value::String(format!("bad token {TOKEN}")));
        let mut everything = Vec::new();
        for forge in [Forge::GitHub, Forge::GitLab, Forge::Gitea] {
            let target = target(forge, &server.url("/api"), "owner/repo");
            everything.extend(deliver_logged(&target, fast()).await);
            everything.push(format!("{target:?} {:?}", request(&target, CommitState::Success, "").unwrap()));
        }
        assert_eq!(server.seen().len(), 4, "GitHub: a 500, then a 401; one each for the others");
        let down = target(Forge::GitLab, "http://127.0.0.1:1/api/v4", "owner/repo");
        everything.extend(deliver_logged(&down, fast()).await);
        // Input errors, including a token that cannot be sent.
        for broken in [
            StatusTarget { token: format!("{TOKEN}\n"), ..target(Forge::GitHub, "https://api.github.com", "o/r") },
            StatusTarget {
                token: format!("{TOKEN}\u{7f}"),
                ..target(Forge::GitLab, "https://gitlab.com/api/v4", "o/r")
            },
            StatusTarget { token: format!(" {TOKEN}"), ..target(Forge::Gitea, "https://g.example/api/v1", "o/r") },
            StatusTarget { repository: "../..".to_string(), ..target(Forge::Gitea, "https://g.example/api/v1", "o/r") },
        ] {
            everything.push(request(&broken, CommitState::Pending, "").unwrap_err());
        }
        assert_eq!(everything.len(), 3 + 1 + 1 + 3 + 4, "{everything:#?}");
        assert!(everything.iter().any(|m| m.contains("upstream rejected Bearer <redacted>")), "{everything:#?}");
        assert!(everything.iter().any(|m| m.contains("bad token <redacted>")), "{everything:#?}");
        assert!(everything.iter().any(|m| m.contains("token: \"<redacted>\"")), "{everything:#?}");
        for line in &everything {
            assert!(!line.contains(TOKEN), "the token leaked: {line}");
        }
    }

    #[test]
    fn a_bad_sha_is_refused_clearly() {
        let ok = target(Forge::GitHub, "https://api.github.com", "octo-org/hello-world");
        for sha in ["main", "6dcb09b", &SHA[..39], &format!("{SHA}0"), &format!("{}g", &SHA[..39]), "", "../../x"] {
            let error =
                request(&StatusTarget { sha: sha.to_string(), ..ok.clone() }, CommitState::Pending, "").expect_err(sha);
            assert!(error.starts_with(&format!("commit {sha:?} is not a full commit id")), "{error}");
            assert!(error.contains("not a branch, a tag or an abbreviated id"), "{error}");
        }
        let upper = SHA.to_ascii_uppercase();
        let sha256 = "a".repeat(64);
        for (given, url_ends) in [(upper.as_str(), SHA), (sha256.as_str(), sha256.as_str())] {
            let req =
                request(&StatusTarget { sha: given.to_string(), ..ok.clone() }, CommitState::Pending, "").unwrap();
            assert!(req.url.ends_with(&format!("/statuses/{url_ends}")), "{}", req.url);
        }
    }

    #[test]
    fn a_bad_repository_is_refused_clearly() {
        let refused = [
            (Forge::GitHub, "octo-org", "is not `owner/name`, as GitHub expects"),
            (Forge::GitHub, "a/b/c", "is not `owner/name`, as GitHub expects"),
            (Forge::Gitea, "owner/repo/statuses", "is not `owner/name`, as Gitea expects"),
            (Forge::GitHub, "../hello", "path segment \"..\" that is not a name"),
            (Forge::GitHub, "octo/..", "path segment \"..\" that is not a name"),
            (Forge::GitHub, "octo/.", "path segment \".\" that is not a name"),
            (Forge::GitHub, "octo//x", "path segment \"\" that is not a name"),
            (Forge::GitHub, "/octo/x", "path segment \"\" that is not a name"),
            (Forge::GitHub, "octo/x?y=1", "path segment \"x?y=1\" that is not a name"),
            (Forge::GitHub, "octo/x#frag", "that is not a name"),
            (Forge::Gitea, "octo/x%2F..", "that is not a name"),
            (Forge::Gitea, "octo/x\\..", "that is not a name"),
            (Forge::GitLab, "group/x\n", "path segment \"x\\n\" that is not a name"),
            (Forge::GitLab, "group/sub/../../admin", "that is not a name"),
            (
                Forge::GitLab,
                "project",
                "is not a project path `group/name` (subgroups allowed) or a numeric project id",
            ),
            (Forge::GitLab, "", "path segment \"\" that is not a name"),
        ];
        for (forge, repository, says) in refused {
            let t = StatusTarget {
                repository: repository.to_string(),
                ..target(forge, "https://forge.example/api", "o/r")
            };
            let error = request(&t, CommitState::Success, "").expect_err(repository);
            assert!(error.starts_with(&format!("repository {repository:?} ")), "{error}");
            assert!(error.contains(says), "{repository}: {error}");
        }
        let gitlab = |repository: &str| {
            let t = StatusTarget {
                repository: repository.to_string(),
                ..target(Forge::GitLab, "https://gitlab.com/api/v4/", "o/r")
            };
            request(&t, CommitState::Success, "").unwrap().url
        };
        assert_eq!(gitlab("278964"), format!("https://gitlab.com/api/v4/projects/278964/statuses/{SHA}"));
        assert_eq!(gitlab("a/b.c/d_e-f"), format!("https://gitlab.com/api/v4/projects/a%2Fb.c%2Fd_e-f/statuses/{SHA}"));
    }

    #[test]
    fn other_bad_inputs_are_refused_clearly() {
        let ok = target(Forge::GitHub, "https://api.github.com", "o/r");
        let cases = [
            (StatusTarget { api_url: "api.github.com".into(), ..ok.clone() }, "is not a URL"),
            (StatusTarget { api_url: "ftp://api.github.com".into(), ..ok.clone() }, "not an http(s) URL"),
            (StatusTarget { api_url: "https://user:pw@api.github.com".into(), ..ok.clone() }, "carries credentials"),
            (StatusTarget { api_url: "https://api.github.com/?x=1".into(), ..ok.clone() }, "query or fragment"),
            (StatusTarget { api_url: "https://api.github.com/\n".into(), ..ok.clone() }, "control character"),
            (StatusTarget { context: " ".into(), ..ok.clone() }, "the status context is empty"),
            (StatusTarget { context: "a\nb".into(), ..ok.clone() }, "control character"),
            (StatusTarget { target_url: Some("javascript:alert(1)".into()), ..ok.clone() }, "not an http(s) URL"),
            (StatusTarget { token: String::new(), ..ok.clone() }, "the GitHub token is empty"),
            (StatusTarget { token: "abc def\r\n".into(), ..ok.clone() }, "check for a stray newline"),
        ];
        for (t, says) in cases {
            let error = t.validate().expect_err(says);
            assert!(error.contains(says), "{says}: {error}");
        }
        assert_eq!(ok.validate(), Ok(()));
        let slash = StatusTarget { api_url: "https://api.github.com/".into(), ..ok.clone() };
        assert_eq!(
            request(&slash, CommitState::Pending, "").unwrap().url,
            request(&ok, CommitState::Pending, "").unwrap().url
        );
        assert_eq!("Forgejo".parse::<Forge>(), Ok(Forge::Gitea));
        assert!("bitbucket".parse::<Forge>().unwrap_err().contains("expected `github`"));
    }

    #[test]
    fn descriptions_are_cut_at_140_characters_on_a_character_boundary() {
        let t = target(Forge::GitHub, "https://api.github.com", "o/r");
        let description = |text: &str| {
            request(&t, CommitState::Success, text).unwrap().body["description"].as_str().unwrap().to_string()
        };
        let long = "é".repeat(139) + "日本語";
        let cut = description(&long);
        assert_eq!(cut.chars().count(), 140);
        assert_eq!(cut, "é".repeat(139) + "…");
        assert_eq!(description(&"x".repeat(140)), "x".repeat(140));
        assert_eq!(description("  line one\nline two  "), "line one line two");
        assert_eq!(description(""), "Succeeded");
        for forge in [Forge::GitLab, Forge::Gitea] {
            let t = StatusTarget { forge, ..t.clone() };
            let d = request(&t, CommitState::Failure, &long).unwrap().body["description"].clone();
            assert_eq!(d.as_str().unwrap().chars().count(), 140, "{forge:?}");
        }
    }

    #[test]
    fn cancelled_says_so_where_the_forge_has_no_cancelled_state() {
        let body = |forge, description: &str| {
            let t = target(forge, "https://forge.example/api", "o/r");
            request(&t, CommitState::Cancelled, description).unwrap().body
        };
        assert_eq!(body(Forge::GitHub, "Run 42 stopped")["state"], "error");
        assert_eq!(body(Forge::GitHub, "Run 42 stopped")["description"], "Cancelled: Run 42 stopped");
        assert_eq!(body(Forge::Gitea, "Run 42 was cancelled by ana")["description"], "Run 42 was cancelled by ana");
        assert_eq!(body(Forge::Gitea, "")["description"], "Cancelled");
        assert_eq!(body(Forge::GitLab, "Run 42 stopped")["state"], "canceled");
        assert_eq!(body(Forge::GitLab, "Run 42 stopped")["description"], "Run 42 stopped");
        let long = "y".repeat(200);
        let cut = body(Forge::GitHub, &long)["description"].as_str().unwrap().to_string();
        assert!(cut.starts_with("Cancelled: yyy") && cut.chars().count() == 140, "{cut}");
    }

    #[test]
    fn backoff_doubles_up_to_its_max() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=9).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.delay(200), Duration::from_secs(60));
        let tiny = Backoff { first: Duration::from_millis(3), max: Duration::from_millis(10), attempts: 1 };
        assert_eq!((1..=4).map(|n| tiny.delay(n).as_millis()).collect::<Vec<_>>(), [3, 6, 10, 10]);
    }

    #[test]
    fn reports_outside_a_runtime_are_dropped_not_panicked_on() {
        let reporter = Reporter::new(reqwest::Client::new(), fast());
        let t = target(Forge::GitHub, "http://127.0.0.1:1", "o/r");
        reporter.report(&t, CommitState::Pending, "queued");
        assert_eq!(*reporter.inner.outstanding.borrow(), 0);
        // An invalid target is dropped too, without counting.
        reporter.report(&StatusTarget { sha: "x".into(), ..t }, CommitState::Pending, "");
        assert!(lock(&reporter.inner.queues).is_empty());
    }
}
