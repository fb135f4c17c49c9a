//! Skiff's edge master as a Spin HTTP component. All logic is in `skiff-edge-core`; this file
//! only converts requests and responses, reads configuration, and lends `forward` (which dedupes
//! deliveries and sends the signed dispatches) its key-value store and outbound HTTP.
//!
//! Configuration (Spin variables, see `spin.toml`):
//! - `host_url`: the host's base URL, scheme and authority only (dispatches go to
//!   `/v1/dispatch`; it is also the component's one allowed outbound host);
//! - `apps`: the apps and their triggers, as JSON (`[{"name": "web", "on": {...}}]`);
//! - `dispatch_key` (secret): the key dispatches are signed with;
//! - `webhook_secret_<app>` (lower-case, `-` and `.` as `_`), else `webhook_secret` (secret);
//! - key-value store `default`: delivery ids already dispatched.

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::cell::OnceCell;

use skiff_edge_core::{
    AppLookupError, DispatchRequest, Headers, MasterConfig, Relay, RelayError, Secret, app_variable_suffix, apps_named,
    forward, handle_webhook,
};
use spin_sdk::http::{FullBody, HeaderName, HeaderValue, Method, Request, Response, StatusCode, send};
use spin_sdk::{http_service, key_value, variables};

type Reply = Response<FullBody<Bytes>>;

#[http_service]
async fn handle(req: Request) -> Reply {
    let path = req.uri().path().to_owned();
    if let Some(app) = path.strip_prefix("/hooks/")
        && req.method() == Method::POST
    {
        if app.is_empty() || app.contains('/') {
            return json(404, serde_json::json!({"error": "no app in the path; webhooks go to POST /hooks/<app>"}));
        }
        return hook(req, app).await;
    }
    if path == "/healthz" && req.method() == Method::GET {
        return reply(StatusCode::OK, "text/plain; charset=utf-8", "ok");
    }
    let error = format!("nothing at {} {path}; webhooks go to POST /hooks/<app>", req.method());
    json(404, serde_json::json!({ "error": error }))
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut resp = Response::new(FullBody::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(HeaderName::from_static("content-type"), HeaderValue::from_static(content_type));
    resp
}

fn json(status: u16, body: serde_json::Value) -> Reply {
    json_bytes(status, body.to_string())
}

fn json_bytes(status: u16, body: impl Into<Bytes>) -> Reply {
    reply(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "application/json", body)
}

fn misconfigured(msg: &str) -> Reply {
    eprintln!("configuration: {msg}");
    json(500, serde_json::json!({"error": "the master is misconfigured; see its log"}))
}

async fn hook(req: Request, app: &str) -> Reply {
    // A header that is not UTF-8 cannot be a signature or event name the core reads.
    let headers: Headers = req.headers().iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))).collect();
    // Capped while reading, so an oversized body is never held whole in memory.
    let body = match Limited::new(req.into_body(), skiff_edge_core::MAX_BODY_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return json(413, serde_json::json!({"error": "the webhook body is larger than the 1 MiB limit"}));
        }
        Err(e) => return json(400, serde_json::json!({"error": format!("the webhook body could not be read: {e}")})),
    };
    let (host, config) = match config(app).await {
        Ok(c) => c,
        Err(AppLookupError::Unknown) => {
            return json(404, serde_json::json!({"error": format!("no app `{app}` is configured")}));
        }
        Err(AppLookupError::Invalid(msg)) => return misconfigured(&msg),
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let outcome = handle_webhook(&config, &headers, &body, now);
    let answer = forward(&Outbound { host, kv: OnceCell::new() }, &outcome).await;
    if let Some(log) = &answer.log {
        eprintln!("{log}");
    }
    json_bytes(answer.status, answer.body)
}

/// Delivery ids in key-value store `default`, dispatches to `{host_url}/v1/dispatch`.
///
/// Spin's key-value store has no TTL, unlike Workers KV: delivery ids (a few dozen bytes each)
/// stay until the store is cleared, which only makes redeliveries safe for longer.
struct Outbound {
    host: String,
    /// Opened on first use: a webhook that starts nothing never touches the store.
    kv: OnceCell<key_value::Store>,
}

impl Outbound {
    async fn kv(&self) -> Result<&key_value::Store, RelayError> {
        if let Some(kv) = self.kv.get() {
            return Ok(kv);
        }
        let kv = key_value::Store::open("default")
            .await
            .map_err(|e| RelayError::Misconfigured(format!("key-value store `default` cannot be opened: {e}")))?;
        Ok(self.kv.get_or_init(|| kv))
    }
}

impl Relay for Outbound {
    async fn seen(&self, id: &str) -> Result<bool, RelayError> {
        self.kv().await?.exists(id).await.map_err(store_failed)
    }

    async fn remember(&self, id: &str) -> Result<(), RelayError> {
        self.kv().await?.set(id, "1").await.map_err(store_failed)
    }

    async fn post(&self, request: &DispatchRequest) -> Result<u16, RelayError> {
        let url = format!("{}/v1/dispatch", self.host.trim_end_matches('/'));
        let mut outgoing = Request::post(&url);
        for (k, v) in &request.headers {
            outgoing = outgoing.header(k, v);
        }
        let outgoing = outgoing
            .body(FullBody::new(Bytes::from(request.body.clone())))
            .map_err(|e| RelayError::Misconfigured(format!("variable `host_url` gives no valid URL `{url}`: {e}")))?;
        match send(outgoing).await {
            Ok(resp) => Ok(resp.status().as_u16()),
            Err(e) => Err(RelayError::Host(e.to_string())),
        }
    }
}

fn store_failed(e: key_value::Error) -> RelayError {
    RelayError::Store(format!("key-value store `default`: {e}"))
}

/// The host's base URL and the master's configuration for `app`.
async fn config(app: &str) -> Result<(String, MasterConfig), AppLookupError> {
    let apps = apps_named(&var("apps").await?, app).map_err(|e| match e {
        AppLookupError::Invalid(msg) => AppLookupError::Invalid(format!("variable `apps`: {msg}")),
        unknown => unknown,
    })?;
    let per_app = format!("webhook_secret_{}", app_variable_suffix(app).to_ascii_lowercase());
    let secret = match variables::get(&per_app).await {
        Ok(s) => s,
        // Not declared in spin.toml (or no valid variable name): the shared secret applies.
        Err(variables::Error::Undefined(_) | variables::Error::InvalidName(_)) => {
            var("webhook_secret").await.map_err(|_| {
                AppLookupError::Invalid(format!("neither variable `{per_app}` nor `webhook_secret` is set"))
            })?
        }
        Err(e) => return Err(AppLookupError::Invalid(format!("variable `{per_app}` cannot be read: {e}"))),
    };
    let key = var("dispatch_key").await?;
    let host = var("host_url").await?;
    Ok((host, MasterConfig::new(Secret::new(secret), Secret::new(key), apps)))
}

async fn var(name: &str) -> Result<String, AppLookupError> {
    variables::get(name).await.map_err(|e| {
        AppLookupError::Invalid(match e {
            variables::Error::Undefined(_) => format!(
                "variable `{name}` is not set; declare it in spin.toml and set it (SPIN_VARIABLE_{})",
                name.to_ascii_uppercase()
            ),
            e => format!("variable `{name}` cannot be read: {e}"),
        })
    })
}
