//! Runs through the API: started by hand, listed, shown, cancelled and run again.

use super::*;
use crate::request::RunRequest;

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

pub(crate) fn not_found_run(id: i64) -> ApiError {
    ApiError::NotFound(format!("no run {id} (or your token does not reach its app)"))
}

pub(crate) fn visible_run(s: &Shared, caller: &Caller, id: i64) -> ApiResult<crate::store::Run> {
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
        && let Ok(plan) = crate::scheduler::load_plan(a, &a.workspace.clone().unwrap_or_default())
        && let Some(w) = plan.triggers.as_ref().and_then(|t| t.workflow_dispatch.as_ref())
    {
        req.inputs = w.resolve(&req.inputs).map_err(ApiError::BadRequest)?;
    }
    let git_ref = req.git_ref.map(|r| if r.starts_with("refs/") { r } else { format!("refs/heads/{r}") });
    // A repository-driven app: the ref's commit is fetched now, so the inputs are checked
    // against that commit's pipeline and the run builds exactly that commit.
    let mut sha = None;
    if let Some(a) = s.config.apps.get(&app)
        && let Some((commit, dispatch)) = s.scheduler.manual_commit(a, git_ref.as_deref()).await
    {
        if let Some(w) = dispatch {
            req.inputs = w.resolve(&req.inputs).map_err(ApiError::BadRequest)?;
        }
        sha = Some(commit);
    }
    // The repository the app builds, as a webhook's event would name it.
    let repository = s.config.apps.get(&app).and_then(|a| a.repo.as_ref()).and_then(|r| r.repository.clone());
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).filter(|k| !k.is_empty());
    let run = RunRequest::manual(&app, &caller.name, git_ref, sha, repository, req.inputs, key).into_new_run();
    let inserted = s.enqueue(run).await?;
    let code = if inserted.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((code, Json(accepted(&app, inserted))).into_response())
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
    let status = match q.status.as_deref().map(str::parse::<RunStatus>) {
        None => None,
        Some(Ok(st)) => Some(st),
        Some(Err(_)) => {
            let st = q.status.unwrap_or_default();
            return Err(ApiError::BadRequest(format!(
                "unknown status `{st}`: use queued, running, success, failure, cancelled or skipped"
            )));
        }
    };
    let apps = match &caller.scope {
        crate::config::AppScope::All => None,
        crate::config::AppScope::Only(a) => Some(a.clone()),
    };
    let f = RunFilter { apps, app: q.app, status, before: q.before, limit: q.limit };
    Ok(Json(RunList { runs: s.store.list_runs(&f)?.into_iter().map(Run::from).collect() }))
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
    /// Who approved or rejected its jobs waiting for their environments, and when.
    pub decisions: Vec<JobDecision>,
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
    let run = visible_run(&s, &caller, id)?.into();
    let jobs: Vec<Job> = s.store.jobs(id)?.into_iter().map(Job::from).collect();
    let decisions = s.store.decisions(id)?.into_iter().map(JobDecision::from).collect();
    Ok(Json(RunDetail { usage: Usage::total(&jobs), run, jobs, decisions }))
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
    let outcome = s.scheduler.cancel(id, &format!("cancelled by `{}`", caller.name)).await?;
    if outcome == crate::scheduler::Cancelled::AlreadyOver {
        return Err(ApiError::Conflict(format!("run {id} is already over ({}); nothing to cancel", run.status)));
    }
    Ok(Json(s.store.run(id)?.ok_or_else(|| not_found_run(id))?.into()))
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
    if !run.status.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "run {id} is still {}; cancel it or wait before running it again",
            run.status
        )));
    }
    let job = if req.failed_only {
        crate::scheduler::rerun_job(&s.store.jobs(id)?).map_err(|e| ApiError::Conflict(format!("run {id}: {e}")))?
    } else {
        None
    };
    let attempt = s.store.max_attempt(&run.app, run.number)?;
    let what = match (&job, req.failed_only) {
        (Some(j), _) => format!("job(s) `{j}` of run {id}"),
        (None, true) => format!("run {id}"),
        (None, false) => format!("run {id}"),
    };
    let new = NewRun::rerun_of(&run, job, attempt, format!("{what} again, asked by `{}`", caller.name), &caller.name);
    let inserted = s.enqueue(new).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted(&run.app, inserted))).into_response())
}

/// Which waiting job to approve or reject.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    /// The job (its id in the pipeline, or a matrix instance's key); default: every job of the
    /// run waiting for an approval.
    #[serde(default)]
    pub job: Option<String>,
}

/// The decisions a request recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionList {
    /// One per job decided.
    pub decisions: Vec<JobDecision>,
}

/// Approves a run's jobs waiting for their environment (all of them, or `job`): they go on.
/// Only a token among the environment's `approvers` may.
#[utoipa::path(post, path = "/v1/runs/{id}/approve", tag = "runs", params(("id" = i64, Path, description = "Run id")),
    request_body = DecideRequest,
    responses((status = 200, description = "Approved", body = DecisionList),
              (status = 400, description = "The id is malformed, or the body is not a `DecideRequest`", body = ErrorBody),
              (status = 403, description = "The token is not among the environment's approvers", body = ErrorBody),
              (status = 404, description = "No such run, or the token does not reach its app", body = ErrorBody),
              (status = 409, description = "No job of the run waits for an approval (or not that one)", body = ErrorBody),
              (status = 413, description = "Too large", body = ErrorBody)),
    security(("token" = [])))]
pub(crate) async fn approve_run(
    State(s): State<Arc<Shared>>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<DecisionList>> {
    decide(&s, &caller, id, &headers, body, true).await
}

/// Rejects a run's jobs waiting for their environment (all of them, or `job`): they are
/// cancelled, and the jobs that need them skipped. Only a token among the environment's
/// `approvers` may.
#[utoipa::path(post, path = "/v1/runs/{id}/reject", tag = "runs", params(("id" = i64, Path, description = "Run id")),
    request_body = DecideRequest,
    responses((status = 200, description = "Rejected", body = DecisionList),
              (status = 400, description = "The id is malformed, or the body is not a `DecideRequest`", body = ErrorBody),
              (status = 403, description = "The token is not among the environment's approvers", body = ErrorBody),
              (status = 404, description = "No such run, or the token does not reach its app", body = ErrorBody),
              (status = 409, description = "No job of the run waits for an approval (or not that one)", body = ErrorBody),
              (status = 413, description = "Too large", body = ErrorBody)),
    security(("token" = [])))]
pub(crate) async fn reject_run(
    State(s): State<Arc<Shared>>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<DecisionList>> {
    decide(&s, &caller, id, &headers, body, false).await
}

async fn decide(
    s: &Shared,
    caller: &Caller,
    id: i64,
    headers: &HeaderMap,
    body: Body,
    approved: bool,
) -> ApiResult<Json<DecisionList>> {
    let run = visible_run(s, caller, id)?;
    let bytes = read_body(headers, body, MAX_API_BODY_BYTES).await?;
    let req: DecideRequest = parse_json(&bytes)?;
    let decisions =
        crate::scheduler::decide_waiting(s, &run, req.job.as_deref(), &caller.name, approved).map_err(|e| match e {
            crate::scheduler::Undecidable::NotWaiting(m) => ApiError::Conflict(m),
            crate::scheduler::Undecidable::NotAnApprover(m) => ApiError::Forbidden(m),
            crate::scheduler::Undecidable::Store(e) => ApiError::from(e),
        })?;
    Ok(Json(DecisionList { decisions: decisions.into_iter().map(JobDecision::from).collect() }))
}
