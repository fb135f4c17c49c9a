//! The OpenAPI document, generated from the handlers and types. Served at `/v1/openapi.json`
//! and checked in at `docs/openapi.json` (a test keeps the two equal).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::api::{
    self, Accepted, ArtifactList, CreateRun, DecideRequest, DecisionList, ErrorBody, HookResponse, Job, JobDecision,
    LogFormat, Logs, RerunRequest, Run, RunDetail, RunList, RunStatus, Step, StreamEvent, Usage,
};
use super::logs::LogRecord;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Skiff host API", description = "Runs, logs and webhooks of `skiff serve`. Routes under /v1 except /v1/dispatch, /v1/openapi.json and /v1/provenance/key take `Authorization: Bearer <token>`; a token sees only its apps."),
    paths(api::health, api::openapi_json, api::hook, api::dispatch, api::create_run, api::list_runs, api::get_run, api::get_logs, api::stream_logs, api::cancel_run, api::rerun, api::approve_run, api::reject_run, api::list_artifacts, api::download_artifact, crate::provenance::provenance_key),
    components(schemas(Accepted, ArtifactList, CreateRun, DecideRequest, JobDecision, DecisionList, ErrorBody, HookResponse, LogFormat, Logs, RerunRequest, RunDetail, RunList, RunStatus, StreamEvent, LogRecord, Job, Run, Step, Usage)),
    modifiers(&Token),
    tags((name = "runs"), (name = "logs"), (name = "artifacts"), (name = "provenance"), (name = "webhooks"), (name = "host"))
)]
pub struct ApiDoc;

/// The bearer token scheme, and its 401 on every operation that takes it (the `Caller`
/// extractor answers it before any handler runs, so no handler lists it).
struct Token;

impl Modify for Token {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "token",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
        let unauthorized = ResponseBuilder::new()
            .description("No token, or one this host does not know")
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
            .build();
        for item in openapi.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    op.responses.responses.entry("401".into()).or_insert_with(|| unauthorized.clone().into());
                }
            }
        }
    }
}

/// The document as pretty JSON, ending in a newline.
pub fn json() -> String {
    let mut s = ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}
