//! A webhook taken in: verified, read, pings answered, triggers decided. No signing, so a host
//! that starts runs itself and an edge that forwards them answer a sender the same way.

use serde_json::json;

use crate::dispatch::dispatch_id;
use crate::event::{Event, EventKind};
use crate::headers::{Headers, Secret};
use crate::normalize::{NormalizeError, normalize};
use crate::trigger::{App, Decision, decide_with_headers};
use crate::verify::{Provider, VerifyError, VerifyOptions, verify};

/// A webhook taken in by [`accept`], with what to answer its sender: [`Accepted::status`],
/// [`Accepted::message`] and [`Accepted::response_body`].
#[derive(Clone, Debug, PartialEq)]
pub enum Accepted {
    /// Not genuine (401), too large (413), or there is no secret to check it with (500).
    Rejected(VerifyError),
    /// Genuine, but the payload cannot be read (400).
    BadRequest {
        /// Who sent it.
        provider: Provider,
        /// What is wrong.
        error: NormalizeError,
    },
    /// Genuine, and a ping: the Git host checks the hook works (200, `pong: ...`).
    Ping {
        /// The ping.
        event: Box<Event>,
    },
    /// Genuine, and every app's triggers were asked (202 if any dispatches, else 200).
    Decided {
        /// The event.
        event: Box<Event>,
        /// One decision per app, in the order of the apps.
        decisions: Vec<Decision>,
    },
}

impl Accepted {
    /// The HTTP status to answer the sender with: 401/413/500, 400, 200 (a ping, or no app's
    /// trigger matched) or 202 (at least one run to start).
    pub fn status(&self) -> u16 {
        match self {
            Accepted::Rejected(e) => e.status(),
            Accepted::BadRequest { error, .. } => error.status(),
            Accepted::Ping { .. } => 200,
            Accepted::Decided { decisions, .. } => {
                if decisions.iter().any(Decision::is_dispatch) {
                    202
                } else {
                    200
                }
            }
        }
    }

    /// The event, once verified and read.
    pub fn event(&self) -> Option<&Event> {
        match self {
            Accepted::Ping { event } | Accepted::Decided { event, .. } => Some(event),
            _ => None,
        }
    }

    /// The per-app decisions (empty unless [`Accepted::Decided`]).
    pub fn decisions(&self) -> &[Decision] {
        match self {
            Accepted::Decided { decisions, .. } => decisions,
            _ => &[],
        }
    }

    /// One sentence for the sender's delivery log.
    pub fn message(&self) -> String {
        match self {
            Accepted::Rejected(e) => e.to_string(),
            Accepted::BadRequest { error, .. } => error.to_string(),
            Accepted::Ping { event } => pong(event.provider),
            Accepted::Decided { event, decisions } => {
                let ids: Vec<String> = decisions
                    .iter()
                    .filter_map(|d| match d {
                        Decision::Dispatch { app, environment, .. } => {
                            Some(dispatch_id(&event.delivery_id, app, environment.as_deref()))
                        }
                        Decision::Ignore { .. } => None,
                    })
                    .collect();
                if ids.is_empty() { ignored(decisions) } else { requested(&ids) }
            }
        }
    }

    /// A JSON body for the response: `status`, `message`, and for genuine events the
    /// `delivery_id` and `decisions` (empty for a ping).
    pub fn response_body(&self) -> Vec<u8> {
        response_body(self.status(), &self.message(), self.event().map(|e| (e, self.decisions())))
    }
}

/// Verifies, normalizes, answers pings and decides: a webhook taken in for `apps`, with no
/// dispatch signed. Answer the sender with [`Accepted::status`] and [`Accepted::response_body`].
///
/// Nothing is parsed before the signature is checked against `secret`; `now_unix` (seconds) is
/// checked against the senders' timestamps. A host serving one app's `/hooks/{app}` passes that
/// app's secret and `std::slice::from_ref(&app)`.
///
/// A ping gets [`Accepted::Ping`]: status 200, the message `pong: the {provider} webhook
/// reaches the Skiff master`, and a body with its `delivery_id` and no `decisions`, exactly as
/// [`handle_webhook`](crate::handle_webhook) answers one.
///
/// ```
/// use skiff_edge_core::{accept, Accepted, App, Headers, Secret, VerifyOptions};
///
/// let app: App = serde_json::from_str(r#"{ "name": "web", "on": { "push": { "branches": ["main"] } } }"#).unwrap();
/// let secret = Secret::new("webhook-secret");
/// let options = VerifyOptions::default();
/// let sign = |body: &[u8]| skiff_edge_core::github_signature(b"webhook-secret", body);
///
/// let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
/// let headers = Headers::from_pairs([
///     ("X-GitHub-Event", "ping"), ("X-GitHub-Delivery", "d-0"), ("X-Hub-Signature-256", &sign(body)),
/// ]);
/// let ping = accept(&secret, &options, std::slice::from_ref(&app), &headers, body, 1_700_000_000);
/// assert!(matches!(ping, Accepted::Ping { .. }));
/// assert_eq!((ping.status(), ping.message().as_str()), (200, "pong: the GitHub webhook reaches the Skiff master"));
///
/// let body = br#"{"ref":"refs/heads/main","before":"0000","after":"1111",
///     "repository":{"full_name":"acme/web"},"sender":{"login":"octocat"}}"#;
/// let headers = Headers::from_pairs([
///     ("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "d-1"), ("X-Hub-Signature-256", &sign(body)),
/// ]);
/// let push = accept(&secret, &options, std::slice::from_ref(&app), &headers, body, 1_700_000_000);
/// assert_eq!(push.status(), 202);
/// assert_eq!(push.message(), "accepted: 1 run(s) requested (d-1:web)");
/// ```
pub fn accept(
    secret: &Secret,
    options: &VerifyOptions,
    apps: &[App],
    headers: &Headers,
    body: &[u8],
    now_unix: i64,
) -> Accepted {
    let provider = match verify(headers, body, secret, now_unix, options) {
        Ok(p) => p,
        Err(e) => return Accepted::Rejected(e),
    };
    let event = match normalize(provider, headers, body) {
        Ok(e) => e,
        Err(error) => return Accepted::BadRequest { provider, error },
    };
    if event.kind == EventKind::Ping {
        return Accepted::Ping { event: Box::new(event) };
    }
    let decisions = decide_with_headers(&event, headers, apps);
    Accepted::Decided { event: Box::new(event), decisions }
}

/// The answer to a ping.
pub(crate) fn pong(provider: Provider) -> String {
    format!("pong: the {provider} webhook reaches the Skiff master")
}

/// The answer when no app's trigger matched.
pub(crate) fn ignored(decisions: &[Decision]) -> String {
    if decisions.is_empty() {
        "ignored: no app is configured".into()
    } else {
        let reasons: Vec<&str> = decisions.iter().map(Decision::reason).collect();
        format!("ignored: {}", reasons.join("; "))
    }
}

/// The answer when runs were requested, by dispatch id.
pub(crate) fn requested<S: AsRef<str>>(ids: &[S]) -> String {
    let ids: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
    format!("accepted: {} run(s) requested ({})", ids.len(), ids.join(", "))
}

/// The JSON answer: `status`, `message`, and for a genuine event its `delivery_id` and
/// `decisions`.
pub(crate) fn response_body(status: u16, message: &str, genuine: Option<(&Event, &[Decision])>) -> Vec<u8> {
    let mut body = json!({ "status": status, "message": message });
    if let Some((event, decisions)) = genuine {
        body["delivery_id"] = json!(event.delivery_id);
        body["decisions"] = json!(decisions);
    }
    body.to_string().into_bytes()
}
