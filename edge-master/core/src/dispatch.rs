//! Run requests from the master to a host, signed in the Standard Webhooks format.

use serde::{Deserialize, Serialize};

use crate::crypto::standard_webhooks_signature;
use crate::event::Event;
use crate::headers::{Headers, Secret};
use crate::trigger::Decision;
use crate::verify::{MAX_BODY_BYTES, Provider, VerifyError, verify_standard_webhooks};

/// The largest dispatch body [`verify_dispatch`] accepts, 3 MiB: a dispatch carries the webhook
/// body (at most [`MAX_BODY_BYTES`]) plus the normalized event, which repeats parts of it.
pub const MAX_DISPATCH_BODY_BYTES: usize = 3 * MAX_BODY_BYTES;

/// One run to start: the app, why, and the event. This is the JSON body of a dispatch.
///
/// ```
/// use skiff_edge_core::{decide, normalize, Dispatch, App, Headers, Provider};
///
/// let headers = Headers::from_pairs([("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "d-42")]);
/// let event = normalize(Provider::Github, &headers, br#"{"ref":"refs/heads/main"}"#).unwrap();
/// let apps: Vec<App> = serde_json::from_str(r#"[{"name":"web","on":"push"}]"#).unwrap();
/// let decision = &decide(&event, &apps)[0];
/// let dispatch = Dispatch::new(&event, decision).unwrap();
/// assert_eq!(dispatch.id, "d-42:web");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dispatch {
    /// `{delivery_id}:{app}` (`{delivery_id}:{app}:{environment}` for an environment): the
    /// same webhook delivered twice gives the same id, so the host can deduplicate.
    pub id: String,
    /// The app to run.
    pub app: String,
    /// Its environment, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Why the app's trigger matched.
    pub reason: String,
    /// The event.
    pub event: Event,
}

impl Dispatch {
    /// The dispatch for a [`Decision::Dispatch`]; `None` for an ignore.
    pub fn new(event: &Event, decision: &Decision) -> Option<Self> {
        match decision {
            Decision::Dispatch { app, environment, reason } => Some(Dispatch {
                id: dispatch_id(&event.delivery_id, app, environment.as_deref()),
                app: app.clone(),
                environment: environment.clone(),
                reason: reason.clone(),
                event: event.clone(),
            }),
            Decision::Ignore { .. } => None,
        }
    }
}

/// The id of a dispatch: `{delivery_id}:{app}`, or `{delivery_id}:{app}:{environment}`.
///
/// ```
/// assert_eq!(skiff_edge_core::dispatch_id("d-1", "web", Some("prod")), "d-1:web:prod");
/// ```
pub fn dispatch_id(delivery_id: &str, app: &str, environment: Option<&str>) -> String {
    match environment {
        Some(env) => format!("{delivery_id}:{app}:{env}"),
        None => format!("{delivery_id}:{app}"),
    }
}

/// A signed run request, ready to POST to a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchRequest {
    /// The dispatch id (also the `webhook-id` header).
    pub id: String,
    /// `content-type`, `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    pub headers: Vec<(String, String)>,
    /// The [`Dispatch`] as JSON.
    pub body: Vec<u8>,
}

/// Signs `dispatch` with the master's dispatch key, as a Standard Webhooks message:
/// `webhook-id` is the dispatch id, `webhook-timestamp` is `now_unix`, and `webhook-signature`
/// holds one `v1,` signature per key of `key` (so hosts holding the old or the new key during a
/// rotation both accept it).
///
/// ```
/// use skiff_edge_core::{sign_dispatch, verify_dispatch, Dispatch, Event, EventKind, Headers, Provider, Secret};
///
/// let event = Event {
///     provider: Provider::StandardWebhooks, kind: EventKind::Custom { event_type: "deploy".into(), source: None },
///     name: "deploy".into(), delivery_id: "msg_1".into(), repository: None, git_ref: None, branch: None,
///     tag: None, before: None, after: None, deleted: false, pull_request: None, changed_paths: None,
///     sender: None, body: serde_json::json!({"type": "deploy"}),
/// };
/// let dispatch = Dispatch { id: "msg_1:web".into(), app: "web".into(), environment: None,
///     reason: "manual".into(), event };
/// let key = Secret::new("whsec_c2tpZmYtZGlzcGF0Y2gta2V5");
/// let request = sign_dispatch(&dispatch, &key, 1_700_000_000);
///
/// let headers = Headers::from_pairs(request.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
/// let received = verify_dispatch(&headers, &request.body, &key, 1_700_000_030, 300).unwrap();
/// assert_eq!(received, dispatch);
/// ```
pub fn sign_dispatch(dispatch: &Dispatch, key: &Secret, now_unix: i64) -> DispatchRequest {
    let view = DispatchView {
        id: &dispatch.id,
        app: &dispatch.app,
        environment: dispatch.environment.as_deref(),
        reason: &dispatch.reason,
        event: &dispatch.event,
    };
    sign_view(&view, key, now_unix)
}

/// Signs the dispatch of `decision` for `event` without copying the event; `None` for an
/// ignore.
pub(crate) fn sign_decision(
    event: &Event,
    decision: &Decision,
    key: &Secret,
    now_unix: i64,
) -> Option<DispatchRequest> {
    let Decision::Dispatch { app, environment, reason } = decision else {
        return None;
    };
    let id = dispatch_id(&event.delivery_id, app, environment.as_deref());
    let view = DispatchView { id: &id, app, environment: environment.as_deref(), reason, event };
    Some(sign_view(&view, key, now_unix))
}

/// [`Dispatch`] by reference: the same JSON.
#[derive(Serialize)]
struct DispatchView<'a> {
    id: &'a str,
    app: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<&'a str>,
    reason: &'a str,
    event: &'a Event,
}

fn sign_view(view: &DispatchView<'_>, key: &Secret, now_unix: i64) -> DispatchRequest {
    // Serializing strings, numbers and `serde_json::Value`s cannot fail.
    let body = serde_json::to_vec(view).unwrap_or_else(|e| unreachable!("a dispatch always serializes: {e}"));
    let signatures: Vec<String> =
        key.keys().map(|k| standard_webhooks_signature(k, view.id, now_unix, &body)).collect();
    DispatchRequest {
        id: view.id.to_owned(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("webhook-id".into(), view.id.to_owned()),
            ("webhook-timestamp".into(), now_unix.to_string()),
            ("webhook-signature".into(), signatures.join(" ")),
        ],
        body,
    }
}

/// Checks a dispatch on the host: size, Standard Webhooks signature under `key`, timestamp
/// within `tolerance_secs` of `now_unix`, and that `webhook-id` is the dispatch's id. Only then
/// is the body parsed.
///
/// The host should answer 401 (or [`VerifyError::status`]) on error, and deduplicate on
/// [`Dispatch::id`] before queueing the run.
pub fn verify_dispatch(
    headers: &Headers,
    body: &[u8],
    key: &Secret,
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<Dispatch, VerifyError> {
    if body.len() > MAX_DISPATCH_BODY_BYTES {
        return Err(VerifyError::BodyTooLarge { size: body.len(), limit: MAX_DISPATCH_BODY_BYTES });
    }
    if key.has_empty_key() {
        return Err(VerifyError::NoSecret);
    }
    verify_standard_webhooks(Provider::StandardWebhooks, headers, body, key, now_unix, tolerance_secs)?;
    let dispatch: Dispatch = serde_json::from_slice(body).map_err(|e| VerifyError::MalformedDispatch(e.to_string()))?;
    let id = headers.get("webhook-id").unwrap_or_default();
    if dispatch.id != id {
        return Err(VerifyError::MalformedDispatch(format!(
            "its id `{}` differs from the `webhook-id` header `{id}`",
            dispatch.id
        )));
    }
    Ok(dispatch)
}
