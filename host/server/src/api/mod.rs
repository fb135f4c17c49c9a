//! The HTTP routes: webhooks (`/hooks/{app}`), dispatches from a master (`/v1/dispatch`) and
//! the Open API (`/v1/…`, token-authenticated, scoped to apps). [`app`] builds the router; one
//! module per group of routes: `hooks` (webhooks and dispatches in), `runs` (start, list, show,
//! cancel, rerun), `logs` (stored and live), `artifacts` (list and download); `types` holds the
//! bodies about runs, made from the store's rows; `errors` is the error type every route
//! answers with.

pub(crate) mod artifacts;
mod errors;
mod hooks;
pub(crate) mod logs;
mod runs;
mod types;

pub use self::artifacts::*;
pub use self::errors::*;
pub use self::hooks::*;
pub use self::logs::*;
pub use self::runs::*;
pub use self::types::*;
pub use crate::store::RunStatus;

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
    self as edge, Decision, Dispatch, Headers, MAX_BODY_BYTES, MAX_DISPATCH_BODY_BYTES, VerifyError, VerifyOptions,
    verify_dispatch,
};
use utoipa::ToSchema;

use super::{Role, Shared};
use crate::auth::Caller;
use crate::logs::{LiveEvent, LogRecord};
use crate::store::{Inserted, NewRun, RunFilter};

/// JSON request bodies of the API are small.
const MAX_API_BODY_BYTES: usize = 64 * 1024;

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
        .route("/v1/runs/{id}/rerun", post(rerun))
        .route("/v1/runs/{id}/approve", post(approve_run))
        .route("/v1/runs/{id}/reject", post(reject_run))
        .route("/v1/runs/{id}/artifacts", get(list_artifacts))
        .route("/v1/runs/{id}/artifacts/{name}", get(download_artifact))
        .route("/v1/provenance/key", get(crate::provenance::provenance_key));
    if state.role == Role::All {
        r = r.route("/hooks/{app}", post(hook));
    }
    r = r.merge(crate::console::router(&state));
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

#[utoipa::path(get, path = "/healthz", tag = "host", responses(
    (status = 200, description = "The host is up", body = String),
    (status = 503, description = "The host is draining before it stops: send new work elsewhere", body = String),
))]
pub(crate) async fn health(State(s): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if s.scheduler.draining() { (StatusCode::SERVICE_UNAVAILABLE, "draining") } else { (StatusCode::OK, "ok") }
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "host", responses((status = 200, description = "This document")))]
pub(crate) async fn openapi_json() -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "application/json")], crate::openapi::json())
}
