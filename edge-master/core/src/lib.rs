//! The edge master's logic, without I/O: it proves a webhook is genuine, turns it into one
//! [`Event`], decides which apps' triggers match, and signs the run requests sent to a host.
//!
//! Everything here is a pure function over bytes and data, so the same code runs natively
//! (inside `skiff serve`), on Cloudflare Workers (`wasm32-unknown-unknown`) and in Spin
//! (`wasm32-wasip2`). There is no clock and no randomness: callers pass the current time in.
//! The adapters only convert their request and response types, call [`handle_webhook`], and
//! hand the outcome to [`forward`] with a [`Relay`] over their key-value store and HTTP client.
//! A host that starts runs itself calls [`accept`]: the same answers, nothing signed.
//!
//! The pipeline is:
//!
//! 1. [`verify`]: the raw body is checked against the provider's signature or token with
//!    constant-time comparisons before anything is parsed ([`VerifyError`], 401 or 413).
//! 2. [`normalize`]: the payload becomes one [`Event`] whatever the Git host
//!    ([`NormalizeError`], 400).
//! 3. [`decide`]: every [`App`]'s [`Triggers`] (GitHub-style `on:` plus Serverless-cd's
//!    structured rules and a CEL `filter`) give a [`Decision`]: dispatch or ignore, with a
//!    reason a person can read.
//! 4. [`sign_dispatch`]: each dispatch becomes a request signed in the Standard Webhooks
//!    format, which the host checks with [`verify_dispatch`].
//!
//! ```
//! use skiff_edge_core::{handle_webhook, App, Headers, MasterConfig, Secret};
//!
//! let apps: Vec<App> = serde_json::from_str(r#"[
//!     { "name": "web", "on": { "push": { "branches": ["main"] } } }
//! ]"#).unwrap();
//! let config = MasterConfig::new(Secret::new("webhook-secret"), Secret::new("dispatch-key"), apps);
//!
//! let body = br#"{"ref":"refs/heads/main","before":"0000","after":"1111",
//!     "repository":{"full_name":"acme/web"},"sender":{"login":"octocat"}}"#;
//! let signature = skiff_edge_core::github_signature(b"webhook-secret", body);
//! let headers = Headers::from_pairs([
//!     ("X-GitHub-Event", "push"),
//!     ("X-GitHub-Delivery", "d-1"),
//!     ("X-Hub-Signature-256", signature.as_str()),
//! ]);
//! let outcome = handle_webhook(&config, &headers, body, 1_700_000_000);
//! assert_eq!(outcome.status(), 202);
//! assert_eq!(outcome.requests().len(), 1);
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod accept;
pub mod cel_limits;
mod crypto;
mod dispatch;
mod event;
mod filter;
mod forward;
mod handle;
mod headers;
mod normalize;
mod patterns;
mod trigger;
mod verify;

pub use accept::{Accepted, accept};
pub use crypto::{github_signature, standard_webhooks_signature};
pub use dispatch::{Dispatch, DispatchRequest, MAX_DISPATCH_BODY_BYTES, dispatch_id, sign_dispatch, verify_dispatch};
pub use event::{Event, EventKind, PullRequest, Repository};
pub use filter::{Filter, FilterError, json_to_cel};
pub use forward::{Answer, Relay, RelayError, forward};
pub use handle::{AppLookupError, MasterConfig, Outcome, app_variable_suffix, apps_named, handle_webhook};
pub use headers::{Headers, Secret};
pub use normalize::{NormalizeError, normalize};
pub use patterns::{PatternError, Patterns};
pub use trigger::{
    App, CustomTrigger, Decision, DispatchInput, InputKind, PullRequestTrigger, PushTrigger, ReleaseTrigger, Schedule,
    TagTrigger, Triggers, WorkflowDispatch, decide, decide_with_headers,
};
pub use verify::{
    DEFAULT_TIMESTAMP_TOLERANCE_SECS, MAX_BODY_BYTES, Provider, VerifyError, VerifyOptions, detect_provider,
    gitee_signature, verify,
};
