//! The HTTP routes: webhooks (`/hooks/{app}`), dispatches from a master (`/v1/dispatch`) and
//! the Open API (`/v1/…`, token-authenticated, scoped to apps). [`app`] builds the router.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use skiff_edge_core::{
    self as edge, Decision, Dispatch, Event, Headers, MAX_BODY_BYTES, MAX_DISPATCH_BODY_BYTES, VerifyError,
    VerifyOptions, verify_dispatch,
};
use utoipa::ToSchema;

use super::auth::Caller;
use super::logs::{LiveEvent, LogRecord};
use super::store::{Inserted, Job, NewRun, Run, RunFilter, Usage, status};
use super::{Role, Shared};

/// JSON request bodies of the API are small.
const MAX_API_BODY_BYTES: usize = 64 * 1024;

/// An error answered to the caller: a status and a sentence saying what to do. Internal
/// details go to the host's log, not to the caller.
#[derive(Debug)]
pub enum ApiError {
    /// 400.
    BadRequest(String),
    /// 401.
    Unauthorized(String),
    /// 404.
    NotFound(String),
    /// 409.
    Conflict(String),
    /// 413.
    TooLarge(String),
    /// 422.
    Unprocessable(String),
    /// Any status, from the edge core.
    Status(u16, String),
    /// 500; the error is logged.
    Internal(anyhow::Error),
}

/// The JSON body of an error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The HTTP status.
    pub status: u16,
    /// What went wrong and what to do.
    pub error: String,
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Internal(e)
    }
}

impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> Self {
        ApiError::Status(e.status(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, msg) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            ApiError::Status(s, m) => (StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST), m),
            ApiError::Internal(e) => {
                tracing::error!("internal error: {e:#}");
                (StatusCode::INTERNAL_SERVER_ERROR, "the host failed to handle the request; its log says why".into())
            }
        };
        let mut resp = Json(ErrorBody { status: code.as_u16(), error: msg }).into_response();
        *resp.status_mut() = code;
        if code == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert("www-authenticate", http::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// [`Path`], rejected with an [`ApiError`]: a bad id is explained in JSON like any other error.
pub(crate) struct ApiPath<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(ApiPath(t)),
            Err(e) => Err(ApiError::Status(e.status().as_u16(), e.body_text())),
        }
    }
}

/// [`Query`], rejected with an [`ApiError`] (400 in JSON).
pub(crate) struct ApiQuery<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(t)) => Ok(ApiQuery(t)),
            Err(e) => Err(ApiError::Status(e.status().as_u16(), e.body_text())),
        }
    }
}

/// The router.
pub fn app(state: Arc<Shared>) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(health))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/dispatch", post(dispatch))
        .route("/v1/apps/{app}/runs", post(create_run))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/logs", get(get_logs))
        .route("/v1/runs/{id}/logs/stream", get(stream_logs))
        .route("/v1/runs/{id}/cancel", post(cancel_run))
        .route("/v1/runs/{id}/rerun", post(rerun));
    if state.role == Role::All {
        r = r.route("/hooks/{app}", post(hook));
    }
    // Each handler reads its body with its own limit and a helpful 413.
    r.layer(DefaultBodyLimit::disable()).with_state(state)
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Bytes> {
    let too_large = |size: Option<u64>| {
        let size = size.map(|s| format!("{s} bytes")).unwrap_or_else(|| "larger".into());
        ApiError::TooLarge(format!("the request body is {size}, over the limit of {limit} bytes for this route"))
    };
    if let Some(len) = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large(Some(len)));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            too_large(None)
        } else {
            ApiError::BadRequest(format!("the request body could not be read: {e}"))
        }
    })
}

fn edge_headers(h: &HeaderMap) -> Headers {
    Headers::from_pairs(h.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap_or(""))))
}

fn now_unix() -> i64 {
    super::store::now_ms() / 1000
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> ApiResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_slice(b"{}")
            .map_err(|e| ApiError::BadRequest(format!("the request body is empty: {e}")));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not the JSON expected: {e}")))
}

/// A run created (or found, for a redelivery).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// The run's id.
    pub id: i64,
    /// Its app.
    pub app: String,
    /// Its number within the app.
    pub number: i64,
    /// True when this request repeated one already accepted: no new run was created.
    pub duplicate: bool,
}

fn accepted(app: &str, i: Inserted) -> Accepted {
    Accepted { id: i.id, app: app.to_string(), number: i.number, duplicate: i.duplicate }
}

/// The run for a dispatch (from a master, or from this host's own `/hooks`).
pub fn run_for_dispatch(d: &Dispatch, requested_by: &str) -> NewRun {
    let e: &Event = &d.event;
    let mut event = serde_json::to_value(e).unwrap_or_default();
    let body = event.as_object_mut().and_then(|o| o.remove("body")).unwrap_or_default();
    let trigger = serde_json::to_value(&e.kind)
        .ok()
        .and_then(|k| k.get("type").and_then(|t| t.as_str()).map(String::from))
        .unwrap_or_else(|| "custom".into());
    if let Some(o) = event.as_object_mut() {
        o.insert("sha".into(), e.after.clone().into());
        o.insert("app".into(), d.app.clone().into());
        // The environment the master dispatched to (`event.environment`, `SKIFF_ENVIRONMENT`).
        if let Some(env) = &d.environment {
            o.insert("environment".into(), env.clone().into());
        }
    }
    NewRun {
        app: d.app.clone(),
        trigger,
        reason: d.reason.clone(),
        git_ref: e.git_ref.clone(),
        sha: e.after.clone(),
        dispatch_id: Some(d.id.clone()),
        event,
        body,
        requested_by: Some(requested_by.to_string()),
        ..NewRun::default()
    }
}

#[utoipa::path(get, path = "/healthz", tag = "host", responses(
    (status = 200, description = "The host is up", body = String),
    (status = 503, description = "The host is draining before it stops: send new work elsewhere", body = String),
))]
pub(crate) async fn health(State(s): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if s.draining() { (StatusCode::SERVICE_UNAVAILABLE, "draining") } else { (StatusCode::OK, "ok") }
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "host", responses((status = 200, description = "This document")))]
pub(crate) async fn openapi_json() -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "application/json")], super::openapi::json())
}

/// The answer to a webhook.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HookResponse {
    /// 202 when a run was created, 200 when ignored or a redelivery.
    pub status: u16,
    /// One sentence for the sender's delivery log.
    pub message: String,
    /// The sender's delivery id.
    pub delivery_id: String,
    /// The app's decision.
    #[schema(value_type = Vec<Object>)]
    pub decisions: Vec<Decision>,
    /// The runs created (or found, for a redelivery).
    pub runs: Vec<Accepted>,
}

/// A webhook from a Git host: verified with the app's secret, normalized, matched against the
/// app's triggers, and run here.
#[utoipa::path(post, path = "/hooks/{app}", tag = "webhooks",
    params(("app" = String, Path, description = "The app")),
    request_body(content = Object, description = "The Git host's payload, signed as that host does"),
    responses(
        (status = 202, description = "A run was created", body = HookResponse),
        (status = 200, description = "Ignored, a ping, or a redelivery", body = HookResponse),
        (status = 400, description = "Signed, but not a payload of its sender", body = ErrorBody),
        (status = 401, description = "Not genuine", body = ErrorBody),
        (status = 404, description = "No such app, or it takes no webhooks (it has no `webhook-secret`)", body = ErrorBody),
        (status = 413, description = "Too large", body = ErrorBody),
    ))]
pub(crate) async fn hook(
    State(s): State<Arc<Shared>>,
    ApiPath(app_name): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let app =
        s.config.apps.get(&app_name).ok_or_else(|| ApiError::NotFound(format!("no app `{app_name}` on this host")))?;
    let bytes = read_body(&headers, body, MAX_BODY_BYTES).await?;
    // An app without a secret runs by hand, on a schedule or from a master: its hook URL does
    // not exist, which is the sender's problem to see (404), not a failure of this host (5xx).
    let secret = app.webhook_secret.as_ref().ok_or_else(|| {
        ApiError::NotFound(format!(
            "app `{app_name}` takes no webhooks on this host: set its `webhook-secret` in the host's config"
        ))
    })?;
    let h = edge_headers(&headers);
    let opts = VerifyOptions { allowed: app.provider.map(|p| vec![p]), ..VerifyOptions::default() };
    // The same intake as the edge masters: a sender sees one answer whichever one it reaches.
    let (event, decisions) = match edge::accept(secret, &opts, std::slice::from_ref(&app.edge), &h, &bytes, now_unix())
    {
        edge::Accepted::Rejected(e) => return Err(e.into()),
        edge::Accepted::BadRequest { error, .. } => return Err(ApiError::Status(error.status(), error.to_string())),
        ping @ edge::Accepted::Ping { .. } => {
            let (message, event) = (ping.message(), ping.event().expect("a ping is an event"));
            let body = HookResponse {
                status: 200,
                message,
                delivery_id: event.delivery_id.clone(),
                decisions: Vec::new(),
                runs: Vec::new(),
            };
            return Ok((StatusCode::OK, Json(body)).into_response());
        }
        edge::Accepted::Decided { event, decisions } => (event, decisions),
    };
    let mut runs = Vec::new();
    for d in &decisions {
        if let Some(dispatch) = Dispatch::new(&event, d) {
            let inserted = s.enqueue(run_for_dispatch(&dispatch, "webhook")).await?;
            runs.push(accepted(&app_name, inserted));
        }
    }
    let created = runs.iter().any(|r| !r.duplicate);
    let message = if created {
        format!(
            "accepted: run {} of app `{app_name}` queued",
            runs.iter().map(|r| r.id.to_string()).collect::<Vec<_>>().join(", ")
        )
    } else if !runs.is_empty() {
        format!("already accepted: delivery `{}` is run {}", event.delivery_id, runs[0].id)
    } else {
        let reasons: Vec<&str> = decisions.iter().map(Decision::reason).collect();
        format!("ignored: {}", reasons.join("; "))
    };
    let code = if created { StatusCode::ACCEPTED } else { StatusCode::OK };
    let body = HookResponse { status: code.as_u16(), message, delivery_id: event.delivery_id.clone(), decisions, runs };
    Ok((code, Json(body)).into_response())
}

/// A run request from a master, signed in the Standard Webhooks format with the dispatch key.
/// Answered 202 once the run is committed to the store; a redelivery (same id) is answered 200
/// with the same run.
#[utoipa::path(post, path = "/v1/dispatch", tag = "webhooks",
    request_body(content = Object, description = "A `Dispatch` signed with `webhook-id`, `webhook-timestamp`, `webhook-signature`"),
    responses(
        (status = 202, description = "Stored and queued", body = Accepted),
        (status = 200, description = "A redelivery: no new run", body = Accepted),
        (status = 400, description = "Signed, but not a `Dispatch`", body = ErrorBody),
        (status = 401, description = "Bad signature or stale timestamp", body = ErrorBody),
        (status = 404, description = "This host takes no dispatches (it has no `dispatch-key`)", body = ErrorBody),
        (status = 413, description = "Too large", body = ErrorBody),
        (status = 422, description = "The app is not configured here", body = ErrorBody),
    ))]
pub(crate) async fn dispatch(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let key = s.config.dispatch_key.as_ref().ok_or_else(|| {
        ApiError::NotFound("this host accepts no dispatches: set `dispatch-key` in its config".into())
    })?;
    let bytes = read_body(&headers, body, MAX_DISPATCH_BODY_BYTES).await?;
    let d = verify_dispatch(&edge_headers(&headers), &bytes, key, now_unix(), s.config.dispatch_tolerance_secs)?;
    if !s.config.apps.contains_key(&d.app) {
        return Err(ApiError::Unprocessable(format!("app `{}` is not configured on this host", d.app)));
    }
    let inserted = s.enqueue(run_for_dispatch(&d, "dispatch")).await?;
    let code = if inserted.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((code, Json(accepted(&d.app, inserted))).into_response())
}

/// A manual run.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// The Git ref (`main` or `refs/heads/main`).
    #[serde(rename = "ref", default)]
    pub git_ref: Option<String>,
    /// The `inputs` context.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
}

fn not_found_run(id: i64) -> ApiError {
    ApiError::NotFound(format!("no run {id} (or your token does not reach its app)"))
}

fn visible_run(s: &Shared, caller: &Caller, id: i64) -> ApiResult<Run> {
    match s.store.run(id)? {
        Some(r) if caller.scope.allows(&r.app) => Ok(r),
        _ => Err(not_found_run(id)),
    }
}

/// Starts a run of an app by hand. An `Idempotency-Key` header makes retries of the request
/// safe: the same key gives the same run.
#[utoipa::path(post, path = "/v1/apps/{app}/runs", tag = "runs",
    params(("app" = String, Path, description = "The app"),
           ("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key")),
    request_body = CreateRun,
    responses(
        (status = 202, description = "Stored and queued", body = Accepted),
        (status = 200, description = "Same Idempotency-Key as an earlier request", body = Accepted),
        (status = 400, description = "The body is not a `CreateRun`", body = ErrorBody),
        (status = 404, description = "No such app, or the token does not reach it", body = ErrorBody),
        (status = 413, description = "Too large", body = ErrorBody)),
    security(("token" = [])))]
pub(crate) async fn create_run(
    State(s): State<Arc<Shared>>,
    caller: Caller,
    ApiPath(app): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    if !s.config.apps.contains_key(&app) || !caller.scope.allows(&app) {
        return Err(ApiError::NotFound(format!("no app `{app}` on this host (or your token does not reach it)")));
    }
    let bytes = read_body(&headers, body, MAX_API_BODY_BYTES).await?;
    let mut req: CreateRun = parse_json(&bytes)?;
    // Inputs are checked against the pipeline's `workflow_dispatch` now where the pipeline is
    // at hand; a pipeline in the repository is checked when its commit is fetched.
    if let Some(a) = s.config.apps.get(&app)
        && a.repo.is_none()
        && let Ok(plan) = super::scheduler::load_plan(a, &a.workspace.clone().unwrap_or_default())
        && let Some(w) = plan.triggers.as_ref().and_then(|t| t.workflow_dispatch.as_ref())
    {
        req.inputs = w.resolve(&req.inputs).map_err(ApiError::BadRequest)?;
    }
    let git_ref = req.git_ref.map(|r| if r.starts_with("refs/") { r } else { format!("refs/heads/{r}") });
    // A repository-driven app: the ref's commit is fetched now, so the inputs are checked
    // against that commit's pipeline and the run builds exactly that commit.
    let mut sha = None;
    if let Some(a) = s.config.apps.get(&app)
        && let Some((commit, dispatch)) = s.manual_commit(a, git_ref.as_deref()).await
    {
        if let Some(w) = dispatch {
            req.inputs = w.resolve(&req.inputs).map_err(ApiError::BadRequest)?;
        }
        sha = Some(commit);
    }
    let mut event = serde_json::json!({"name": "manual", "ref": git_ref, "sender": caller.name, "app": app});
    if let Some(b) = git_ref.as_deref().and_then(|r| r.strip_prefix("refs/heads/")) {
        event["branch"] = b.into();
    }
    if let Some(t) = git_ref.as_deref().and_then(|r| r.strip_prefix("refs/tags/")) {
        event["tag"] = t.into();
    }
    if let Some(c) = &sha {
        event["sha"] = c.clone().into();
    }
    // The repository the app builds, as a webhook's event would name it.
    if let Some(r) = s.config.apps.get(&app).and_then(|a| a.repo.as_ref()).and_then(|r| r.repository.clone()) {
        event["repository"] = serde_json::json!({ "full_name": r });
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).filter(|k| !k.is_empty());
    let run = NewRun {
        app: app.clone(),
        trigger: "manual".into(),
        reason: format!("started by `{}` through the API", caller.name),
        git_ref,
        sha,
        dispatch_id: key.map(|k| format!("manual:{app}:{k}")),
        body: serde_json::json!({"inputs": req.inputs}),
        inputs: req.inputs,
        event,
        requested_by: Some(caller.name.clone()),
        ..NewRun::default()
    };
    let inserted = s.enqueue(run).await?;
    let code = if inserted.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((code, Json(accepted(&app, inserted))).into_response())
}

/// A run's state, as the run list filters it (the document's name for `store::status`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Waiting for a slot.
    Queued,
    /// Running.
    Running,
    /// Succeeded.
    Success,
    /// Failed.
    Failure,
    /// Cancelled.
    Cancelled,
    /// Not run: the pipeline's `on:` does not take the event.
    Skipped,
}

/// Filters for the run list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this app.
    pub app: Option<String>,
    /// Only runs in this state.
    #[param(value_type = Option<RunStatus>)]
    pub status: Option<String>,
    /// Only runs with a smaller id (paging).
    pub before: Option<i64>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<i64>,
}

/// A page of runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    /// Newest first.
    pub runs: Vec<Run>,
}

/// Lists the runs of the apps the token reaches, newest first.
#[utoipa::path(get, path = "/v1/runs", tag = "runs", params(ListQuery),
    responses((status = 200, description = "The runs", body = RunList),
              (status = 400, description = "The query string is malformed, or names an unknown status", body = ErrorBody)),
    security(("token" = [])))]
pub(crate) async fn list_runs(
    State(s): State<Arc<Shared>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<RunList>> {
    if let Some(st) = &q.status
        && ![status::QUEUED, status::RUNNING, status::SUCCESS, status::FAILURE, status::CANCELLED]
            .contains(&st.as_str())
    {
        return Err(ApiError::BadRequest(format!(
            "unknown status `{st}`: use queued, running, success, failure or cancelled"
        )));
    }
    let apps = match &caller.scope {
        super::config::AppScope::All => None,
        super::config::AppScope::Only(a) => Some(a.clone()),
    };
    let f = RunFilter { apps, app: q.app, status: q.status, before: q.before, limit: q.limit };
    Ok(Json(RunList { runs: s.store.list_runs(&f)? }))
}

/// A run with its jobs, steps, timings and usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunDetail {
    /// The run.
    #[serde(flatten)]
    pub run: Run,
    /// Jobs in the order they started, each with its steps.
    pub jobs: Vec<Job>,
    /// The steps' usage added up.
    pub usage: Usage,
}

fn total(jobs: &[Job]) -> Usage {
    let add = |a: Option<i64>, b: Option<i64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    let mut u = Usage::default();
    for s in jobs.iter().flat_map(|j| &j.steps) {
        u.wall_ms = add(u.wall_ms, s.usage.wall_ms);
        u.cpu_ms = add(u.cpu_ms, s.usage.cpu_ms);
        u.peak_memory_bytes = match (u.peak_memory_bytes, s.usage.peak_memory_bytes) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        u.egress_bytes = add(u.egress_bytes, s.usage.egress_bytes);
        u.log_bytes += s.usage.log_bytes;
    }
    u
}

/// One run.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs", params(("id" = i64, Path, description = "Run id")),
    responses((status = 200, description = "The run", body = RunDetail),
              (status = 400, description = "The id is malformed", body = ErrorBody),
              (status = 404, description = "No such run, or the token does not reach its app", body = ErrorBody)),
    security(("token" = [])))]
pub(crate) async fn get_run(
    State(s): State<Arc<Shared>>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<RunDetail>> {
    let run = visible_run(&s, &caller, id)?;
    let jobs = s.store.jobs(id)?;
    Ok(Json(RunDetail { usage: total(&jobs), run, jobs }))
}

/// Where to start reading logs.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Only lines with a larger `seq`.
    pub after: Option<u64>,
    /// `text`: plain text, a line each as `[job/step] text`, every control sequence removed
    /// (also chosen by `Accept: text/plain`).
    pub format: Option<LogFormat>,
}

/// Where to resume a log stream.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Only lines with a larger `seq`.
    pub after: Option<u64>,
}

/// How stored logs are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// The JSON body (`Logs`).
    Json,
    /// Plain text, safe to print on a terminal.
    Text,
}

/// Stored log lines.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Logs {
    /// The run's status when read (`complete` once it is over).
    pub status: String,
    /// True when the run is over: no more lines will come.
    pub complete: bool,
    /// Lines in order, secrets masked.
    pub lines: Vec<LogRecord>,
}

/// A run's stored logs.
#[utoipa::path(get, path = "/v1/runs/{id}/logs", tag = "logs", params(("id" = i64, Path, description = "Run id"), LogQuery),
    responses((status = 200, description = "The stored lines: JSON, or with `format=text` (or `Accept: text/plain`) plain text whose every control sequence is removed",
               content((Logs = "application/json"), (String = "text/plain"))),
              (status = 400, description = "The id or the query string is malformed", body = ErrorBody),
              (status = 404, description = "No such run, or the token does not reach its app", body = ErrorBody)),
    security(("token" = [])))]
pub(crate) async fn get_logs(
    State(s): State<Arc<Shared>>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<LogQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let run = visible_run(&s, &caller, id)?;
    let lines = s.logs.read(id, q.after.unwrap_or(0)).map_err(|e| anyhow::anyhow!("reading logs of run {id}: {e}"))?;
    let accepts_text = || {
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| {
            v.split(',').any(|t| t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain")))
        })
    };
    if q.format == Some(LogFormat::Text) || (q.format.is_none() && accepts_text()) {
        // Logs are data: what a step printed cannot move a terminal's cursor or title.
        let mut text = String::new();
        for l in &lines {
            let clean = |s: &str| skiff_pipeline::inert::terminal_text(s, false).into_owned();
            for line in l.text.lines() {
                text.push_str(&format!("[{}/{}] {}\n", clean(&l.job), clean(&l.step), clean(line)));
            }
        }
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response());
    }
    Ok(Json(Logs { complete: status::is_terminal(&run.status), status: run.status, lines }).into_response())
}

/// One Server-Sent Event of a log stream, as an OpenAPI 3.2 `itemSchema` describes events: its
/// name (`event`), its `id` and its `data`, which is JSON. Only the document uses this type
/// (`follow` writes the events); OpenAPI 3.1 tools, schemathesis among them, read the `schema`
/// of `text/event-stream` as the schema of each event.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum StreamEvent {
    /// A log line.
    Log {
        /// Its `seq`: reconnect with it as `Last-Event-ID` to resume after it.
        id: String,
        /// A `LogRecord`, as JSON.
        data: String,
    },
    /// A step or job changed state.
    Step {
        /// `{"event": "step", "job", "step", "name", "status"}`, as JSON.
        data: String,
    },
    /// The run is over; the last event of the stream.
    End {
        /// `{"status"}`: the run's final status, as JSON.
        data: String,
    },
}

/// Follows a run's logs as Server-Sent Events: `log` events (data: a log line, id: its `seq`),
/// `step` events when a step or job changes state, and one `end` event when the run is over.
/// Reconnect with `Last-Event-ID` (or `?after=`) to resume.
#[utoipa::path(get, path = "/v1/runs/{id}/logs/stream", tag = "logs", params(("id" = i64, Path, description = "Run id"), StreamQuery),
    responses((status = 200, description = "An event stream; each event is one `StreamEvent`",
               content_type = "text/event-stream", body = StreamEvent),
              (status = 400, description = "The id or the query string is malformed", body = ErrorBody),
              (status = 404, description = "No such run, or the token does not reach its app", body = ErrorBody)),
    security(("token" = [])))]
pub(crate) async fn stream_logs(
    State(s): State<Arc<Shared>>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    visible_run(&s, &caller, id)?;
    let after = headers.get("last-event-id").and_then(|v| v.to_str().ok()?.parse().ok()).or(q.after).unwrap_or(0);
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(256);
    tokio::spawn(follow(s.clone(), id, after, tx));
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

fn log_event(r: &LogRecord) -> SseEvent {
    SseEvent::default().event("log").id(r.seq.to_string()).data(serde_json::to_string(r).unwrap_or_default())
}

/// Feeds one follower: stored lines first, then live ones, without gaps or repeats.
async fn follow(s: Arc<Shared>, id: i64, mut last: u64, tx: tokio::sync::mpsc::Sender<SseEvent>) {
    use tokio::sync::broadcast::error::RecvError;
    // Subscribe before reading what is stored, so nothing falls between the two.
    let mut rx = s.hub.subscribe(id);
    let catch_up = |last: &mut u64| -> Vec<SseEvent> {
        let lines = s.logs.read(id, *last).unwrap_or_default();
        if let Some(l) = lines.last() {
            *last = l.seq;
        }
        lines.iter().map(log_event).collect()
    };
    for e in catch_up(&mut last) {
        if tx.send(e).await.is_err() {
            return;
        }
    }
    let end = |st: &str| SseEvent::default().event("end").data(serde_json::json!({"status": st}).to_string());
    if let Ok(Some(run)) = s.store.run(id)
        && status::is_terminal(&run.status)
    {
        for e in catch_up(&mut last) {
            let _ = tx.send(e).await;
        }
        s.hub.forget_if_idle(id);
        let _ = tx.send(end(&run.status)).await;
        return;
    }
    loop {
        let e = match rx.recv().await {
            Ok(LiveEvent::Log(r)) if r.seq <= last => continue,
            Ok(LiveEvent::Log(r)) => {
                last = r.seq;
                log_event(&r)
            }
            Ok(e @ LiveEvent::Step { .. }) => {
                SseEvent::default().event("step").data(serde_json::to_string(&e).unwrap_or_default())
            }
            Ok(LiveEvent::End { status }) => {
                for e in catch_up(&mut last) {
                    let _ = tx.send(e).await;
                }
                let _ = tx.send(end(&status)).await;
                return;
            }
            Err(RecvError::Lagged(_)) => {
                for e in catch_up(&mut last) {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Err(RecvError::Closed) => {
                let st = s.store.run(id).ok().flatten().map(|r| r.status).unwrap_or_default();
                let _ = tx.send(end(&st)).await;
                return;
            }
        };
        if tx.send(e).await.is_err() {
            return;
        }
    }
}

/// Cancels a queued or running run; answers with the run once it has stopped.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", tag = "runs", params(("id" = i64, Path, description = "Run id")),
    responses((status = 200, description = "The run, stopped", body = Run),
              (status = 400, description = "The id is malformed", body = ErrorBody),
              (status = 404, description = "No such run, or the token does not reach its app", body = ErrorBody),
              (status = 409, description = "Already over", body = ErrorBody)),
    security(("token" = [])))]
pub(crate) async fn cancel_run(
    State(s): State<Arc<Shared>>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<Run>> {
    let run = visible_run(&s, &caller, id)?;
    let outcome = s.cancel(id, &format!("cancelled by `{}`", caller.name)).await?;
    if outcome == super::scheduler::Cancelled::AlreadyOver {
        return Err(ApiError::Conflict(format!("run {id} is already over ({}); nothing to cancel", run.status)));
    }
    Ok(Json(s.store.run(id)?.ok_or_else(|| not_found_run(id))?))
}

/// What to run again.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunRequest {
    /// Only the failed jobs (and what they need); default: the whole run.
    #[serde(default)]
    pub failed_only: bool,
}

/// Runs a finished run again as a new attempt (same number), whole or only its failed jobs.
#[utoipa::path(post, path = "/v1/runs/{id}/rerun", tag = "runs", params(("id" = i64, Path, description = "Run id")),
    request_body = RerunRequest,
    responses((status = 202, description = "The new attempt, stored and queued", body = Accepted),
              (status = 400, description = "The id is malformed, or the body is not a `RerunRequest`", body = ErrorBody),
              (status = 404, description = "No such run, or the token does not reach its app", body = ErrorBody),
              (status = 409, description = "Not over, or nothing failed", body = ErrorBody),
              (status = 413, description = "Too large", body = ErrorBody)),
    security(("token" = [])))]
pub(crate) async fn rerun(
    State(s): State<Arc<Shared>>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let run = visible_run(&s, &caller, id)?;
    let bytes = read_body(&headers, body, MAX_API_BODY_BYTES).await?;
    let req: RerunRequest = parse_json(&bytes)?;
    if !status::is_terminal(&run.status) {
        return Err(ApiError::Conflict(format!(
            "run {id} is still {}; cancel it or wait before running it again",
            run.status
        )));
    }
    let job = if req.failed_only {
        super::scheduler::rerun_job(&s.store.jobs(id)?).map_err(|e| ApiError::Conflict(format!("run {id}: {e}")))?
    } else {
        None
    };
    let attempt = s.store.max_attempt(&run.app, run.number)?;
    let what = match (&job, req.failed_only) {
        (Some(j), _) => format!("job(s) `{j}` of run {id}"),
        (None, true) => format!("run {id}"),
        (None, false) => format!("run {id}"),
    };
    let new = NewRun {
        app: run.app.clone(),
        trigger: run.trigger.clone(),
        reason: format!("{what} again, asked by `{}`", caller.name),
        git_ref: run.git_ref.clone(),
        sha: run.sha.clone(),
        inputs: run.inputs.clone(),
        event: run.event.clone(),
        body: run.body.clone(),
        job,
        pipeline: run.pipeline.clone(),
        parent: Some((run.id, run.number, attempt)),
        requested_by: Some(caller.name.clone()),
        ..NewRun::default()
    };
    let inserted = s.enqueue(new).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted(&run.app, inserted))).into_response())
}
