//! The whole webhook path in one call, for the adapters.

use crate::accept::{Accepted, accept, ignored, pong, requested, response_body};
use crate::dispatch::{DispatchRequest, sign_decision};
use crate::event::{Event, EventKind};
use crate::headers::{Headers, Secret};
use crate::normalize::NormalizeError;
use crate::trigger::{App, Decision};
use crate::verify::{Provider, VerifyError, VerifyOptions};

/// What the master needs to answer webhooks: the webhook secret, the key dispatches are signed
/// with, and the apps.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// The secret the Git host signs webhooks with (or its plain token).
    pub secret: Secret,
    /// The key dispatches to hosts are signed with.
    pub dispatch_key: Secret,
    /// The apps and their triggers.
    pub apps: Vec<App>,
    /// Verification options.
    pub verify: VerifyOptions,
}

impl MasterConfig {
    /// A configuration with default [`VerifyOptions`].
    pub fn new(secret: Secret, dispatch_key: Secret, apps: Vec<App>) -> Self {
        MasterConfig { secret, dispatch_key, apps, verify: VerifyOptions::default() }
    }
}

/// Why an adapter has no configuration for the app a webhook names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppLookupError {
    /// No app of that name: the sender's mistake (404), not the master's.
    Unknown,
    /// The list of apps itself is broken (500); the text says what to fix.
    Invalid(String),
}

/// The apps named `app` (one per environment) from the JSON list of apps the
/// edge adapters keep in one variable: `[{"name": "web", "on": {...}}]`.
pub fn apps_named(apps_json: &str, app: &str) -> Result<Vec<App>, AppLookupError> {
    let apps: Vec<App> = serde_json::from_str(apps_json)
        .map_err(|e| AppLookupError::Invalid(format!("the list of apps is not valid JSON for apps: {e}")))?;
    let apps: Vec<App> = apps.into_iter().filter(|a| a.name == app).collect();
    if apps.is_empty() { Err(AppLookupError::Unknown) } else { Ok(apps) }
}

/// An app name as the suffix of a per-app variable (`my-app` → `my_app`), so
/// `WEBHOOK_SECRET_MY_APP` or `webhook_secret_my_app` can hold its secret.
pub fn app_variable_suffix(app: &str) -> String {
    app.replace(['-', '.'], "_")
}

/// How a webhook was answered, with the HTTP status to reply with ([`Outcome::status`]) and the
/// signed requests to send to the host ([`Outcome::requests`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Not genuine (401), too large (413), or the master has no secret (500).
    Rejected(VerifyError),
    /// Genuine, but the payload cannot be read (400).
    BadRequest {
        /// Who sent it.
        provider: Provider,
        /// What is wrong.
        error: NormalizeError,
    },
    /// Genuine, and no app's trigger matched, or it was a ping (200).
    Ignored {
        /// The event.
        event: Box<Event>,
        /// One decision per app, each an ignore with its reason.
        decisions: Vec<Decision>,
    },
    /// Genuine, and at least one app's trigger matched (202).
    Dispatched {
        /// The event.
        event: Box<Event>,
        /// One decision per app.
        decisions: Vec<Decision>,
        /// One signed request per matching app, to POST to the host.
        requests: Vec<DispatchRequest>,
    },
}

impl Outcome {
    /// The HTTP status to answer the sender with: 401/413/500, 400, 200 (ignored) or 202.
    pub fn status(&self) -> u16 {
        match self {
            Outcome::Rejected(e) => e.status(),
            Outcome::BadRequest { error, .. } => error.status(),
            Outcome::Ignored { .. } => 200,
            Outcome::Dispatched { .. } => 202,
        }
    }

    /// The signed requests to send to the host (empty unless [`Outcome::Dispatched`]).
    pub fn requests(&self) -> &[DispatchRequest] {
        match self {
            Outcome::Dispatched { requests, .. } => requests,
            _ => &[],
        }
    }

    /// The per-app decisions (empty when the request was rejected or unreadable).
    pub fn decisions(&self) -> &[Decision] {
        match self {
            Outcome::Ignored { decisions, .. } | Outcome::Dispatched { decisions, .. } => decisions,
            _ => &[],
        }
    }

    /// The event, once verified and read.
    pub fn event(&self) -> Option<&Event> {
        match self {
            Outcome::Ignored { event, .. } | Outcome::Dispatched { event, .. } => Some(event),
            _ => None,
        }
    }

    /// One sentence for the sender's delivery log.
    pub fn message(&self) -> String {
        match self {
            Outcome::Rejected(e) => e.to_string(),
            Outcome::BadRequest { error, .. } => error.to_string(),
            Outcome::Ignored { event, decisions } => {
                if event.kind == EventKind::Ping {
                    pong(event.provider)
                } else {
                    ignored(decisions)
                }
            }
            Outcome::Dispatched { requests, .. } => {
                let ids: Vec<&str> = requests.iter().map(|r| r.id.as_str()).collect();
                requested(&ids)
            }
        }
    }

    /// A JSON body for the response: `status`, `message`, and for genuine events the
    /// `delivery_id` and `decisions`.
    pub fn response_body(&self) -> Vec<u8> {
        response_body(self.status(), &self.message(), self.event().map(|e| (e, self.decisions())))
    }
}

/// Verifies, normalizes, decides and signs: everything an adapter needs to answer a webhook.
///
/// This is [`accept`] for `config.apps`, then each dispatch signed with `config.dispatch_key`.
/// Nothing is parsed before the signature is checked. `now_unix` (seconds) is used for the
/// senders' timestamps and as the dispatch timestamp. The adapter then sends each of
/// [`Outcome::requests`] to the host and answers with [`Outcome::status`] and
/// [`Outcome::response_body`] ([`forward`](crate::forward) does both). Deduplicating on the
/// delivery id needs storage, so it is the adapter's or the host's job (the dispatch ids are
/// stable for that).
///
/// See the crate documentation for an example.
pub fn handle_webhook(config: &MasterConfig, headers: &Headers, body: &[u8], now_unix: i64) -> Outcome {
    match accept(&config.secret, &config.verify, &config.apps, headers, body, now_unix) {
        Accepted::Rejected(e) => Outcome::Rejected(e),
        Accepted::BadRequest { provider, error } => Outcome::BadRequest { provider, error },
        Accepted::Ping { event } => Outcome::Ignored { event, decisions: Vec::new() },
        Accepted::Decided { event, decisions } => {
            let requests: Vec<DispatchRequest> =
                decisions.iter().filter_map(|d| sign_decision(&event, d, &config.dispatch_key, now_unix)).collect();
            if requests.is_empty() {
                Outcome::Ignored { event, decisions }
            } else {
                Outcome::Dispatched { event, decisions, requests }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_are_found_by_name_and_mistakes_explained() {
        let json = r#"[{"name": "web", "on": {"push": {"branches": ["main"]}}},
                       {"name": "web", "environment": "prod", "on": {"push": {"tags": ["v*"]}}},
                       {"name": "docs"}]"#;
        assert_eq!(apps_named(json, "web").unwrap().len(), 2);
        assert_eq!(apps_named(json, "api"), Err(AppLookupError::Unknown));
        let Err(AppLookupError::Invalid(msg)) = apps_named("[{\"nom\": 1}]", "web") else { panic!() };
        assert!(msg.contains("name"), "{msg}");
        assert_eq!(app_variable_suffix("my-app.v2"), "my_app_v2");
    }
}
