//! Sending an [`Outcome`]'s signed dispatches to the host, once each, and the answer to give
//! the webhook's sender. The edge adapters supply the I/O as a [`Relay`].

use serde_json::json;

use crate::dispatch::DispatchRequest;
use crate::handle::Outcome;

/// What an edge adapter does for [`forward`]: remember which dispatches the host already took
/// (in its key-value store, keyed by [`DispatchRequest::id`]) and POST a dispatch to the host's
/// `/v1/dispatch` with its headers and body.
// The adapters run on single-threaded wasm (Workers, Spin), whose futures are not `Send`, so
// a public `async fn` without a `Send` bound is what they need.
#[allow(async_fn_in_trait)]
pub trait Relay {
    /// Whether the host already took the dispatch `id` (a redelivery of the same webhook).
    async fn seen(&self, id: &str) -> Result<bool, RelayError>;
    /// Records that the host took the dispatch `id`.
    async fn remember(&self, id: &str) -> Result<(), RelayError>;
    /// POSTs `request` to the host; the host's HTTP status.
    async fn post(&self, request: &DispatchRequest) -> Result<u16, RelayError>;
}

/// Why a [`Relay`] could not do its part.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The host could not be reached: this dispatch failed, the others are still sent, and the
    /// sender gets 502 so that it redelivers.
    #[error("{0}")]
    Host(String),
    /// The store of delivered dispatch ids failed (500 at once). The text names the store.
    #[error("{0}")]
    Store(String),
    /// The adapter's configuration is wrong, for instance the host URL (500 at once).
    #[error("{0}")]
    Misconfigured(String),
}

/// What to answer the webhook's sender, and what to tell the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body (`content-type: application/json`).
    pub body: Vec<u8>,
    /// A line for the adapter's log when something failed; internal details go there, not to
    /// the sender.
    pub log: Option<String>,
}

impl Answer {
    fn json(status: u16, body: serde_json::Value, log: String) -> Self {
        Answer { status, body: body.to_string().into_bytes(), log: Some(log) }
    }
}

/// Sends each of `outcome`'s [`requests`](Outcome::requests) the host has not taken yet, then
/// answers: the outcome's own status and body when the host took them all (a 2xx), else 502
/// with the failures, so that the Git host redelivers and the dispatches already taken are
/// skipped then. A failing store or configuration answers 500 at once.
///
/// ```
/// use std::cell::RefCell;
/// use skiff_edge_core::{forward, handle_webhook, DispatchRequest, Headers, MasterConfig, Relay, RelayError, Secret};
///
/// #[derive(Default)]
/// struct Memory { taken: RefCell<Vec<String>> }
/// impl Relay for Memory {
///     async fn seen(&self, id: &str) -> Result<bool, RelayError> { Ok(self.taken.borrow().iter().any(|t| t == id)) }
///     async fn remember(&self, id: &str) -> Result<(), RelayError> {
///         self.taken.borrow_mut().push(id.into());
///         Ok(())
///     }
///     async fn post(&self, _: &DispatchRequest) -> Result<u16, RelayError> { Ok(202) }
/// }
///
/// let apps = serde_json::from_str(r#"[{ "name": "web", "on": "push" }]"#).unwrap();
/// let config = MasterConfig::new(Secret::new("s"), Secret::new("k"), apps);
/// let body = br#"{"ref":"refs/heads/main"}"#;
/// let signature = skiff_edge_core::github_signature(b"s", body);
/// let headers = Headers::from_pairs([
///     ("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "d-1"), ("X-Hub-Signature-256", &signature),
/// ]);
/// let outcome = handle_webhook(&config, &headers, body, 1_700_000_000);
///
/// let relay = Memory::default();
/// let answer = block_on(forward(&relay, &outcome));
/// assert_eq!((answer.status, answer.body), (202, outcome.response_body()));
/// assert_eq!(*relay.taken.borrow(), ["d-1:web"]);
/// # fn block_on<F: std::future::Future>(future: F) -> F::Output { // this relay never waits
/// #     let cx = &mut std::task::Context::from_waker(std::task::Waker::noop());
/// #     let std::task::Poll::Ready(out) = std::pin::pin!(future).poll(cx) else { unreachable!() };
/// #     out
/// # }
/// ```
pub async fn forward<R: Relay + ?Sized>(relay: &R, outcome: &Outcome) -> Answer {
    let mut failures = Vec::new();
    for request in outcome.requests() {
        match send(relay, request).await {
            Ok(None) => {}
            Ok(Some(status)) if (200..300).contains(&status) => {}
            Ok(Some(status)) => failures.push(format!("{}: host answered {status}", request.id)),
            Err(RelayError::Host(e)) => failures.push(format!("{}: {e}", request.id)),
            Err(RelayError::Store(e)) => {
                let body = json!({"error": "the master's key-value store failed; see its log"});
                return Answer::json(500, body, e);
            }
            Err(RelayError::Misconfigured(e)) => {
                let body = json!({"error": "the master is misconfigured; see its log"});
                return Answer::json(500, body, format!("configuration: {e}"));
            }
        }
    }
    if !failures.is_empty() {
        let log = format!("dispatch failed: {}", failures.join("; "));
        // 502 makes the Git host redeliver; delivered apps are deduped then.
        return Answer::json(502, json!({"error": "the host did not accept the run", "failures": failures}), log);
    }
    Answer { status: outcome.status(), body: outcome.response_body(), log: None }
}

/// Sends `request` unless the host already took it: `None` for a redelivery, else the host's
/// status (the id remembered on a 2xx).
async fn send<R: Relay + ?Sized>(relay: &R, request: &DispatchRequest) -> Result<Option<u16>, RelayError> {
    if relay.seen(&request.id).await? {
        return Ok(None); // a redelivery: this app already got this event
    }
    let status = relay.post(request).await?;
    if (200..300).contains(&status) {
        relay.remember(&request.id).await?;
    }
    Ok(Some(status))
}
