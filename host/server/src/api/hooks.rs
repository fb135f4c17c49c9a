//! Work coming in: webhooks from Git hosts (`/hooks/{app}`), verified and decided by the edge
//! core's `accept` as the masters do, and signed dispatches from a master (`/v1/dispatch`).

use super::*;
use crate::request::RunRequest;

pub(crate) fn edge_headers(h: &HeaderMap) -> Headers {
    Headers::from_pairs(h.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap_or(""))))
}

pub(crate) fn now_unix() -> i64 {
    crate::store::now_ms() / 1000
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
            let inserted = s.enqueue(RunRequest::from_dispatch(&dispatch, "webhook").into_new_run()).await?;
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
    let inserted = s.enqueue(RunRequest::from_dispatch(&d, "dispatch").into_new_run()).await?;
    let code = if inserted.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((code, Json(accepted(&d.app, inserted))).into_response())
}
