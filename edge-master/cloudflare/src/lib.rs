//! Skiff's edge master on Cloudflare Workers. All logic is in
//! `skiff-edge-core`; this file only converts requests and responses, reads
//! configuration, and lends `forward` (which dedupes deliveries and sends the signed
//! dispatches) its KV namespace and `fetch`.
//!
//! Configuration (see `wrangler.toml` and docs/deploy.md):
//! - var `SKIFF_HOST_URL`: the host's base URL (dispatches go to `/v1/dispatch`);
//! - var `SKIFF_APPS`: the apps and their triggers, as JSON (`[{"name": "web", "on": {...}}]`);
//! - KV namespace `SKIFF_CONFIG` (optional), key `apps`: the same JSON; when set it wins over
//!   `SKIFF_APPS`, so triggers change with `wrangler kv key put` and no redeploy;
//! - secret `SKIFF_DISPATCH_KEY`: the key dispatches are signed with;
//! - secret `SKIFF_WEBHOOK_SECRET_<APP>` (upper-case, `-` and `.` as `_`), else `SKIFF_WEBHOOK_SECRET`;
//! - KV namespace `SKIFF_DELIVERIES`: delivery ids already dispatched.

use skiff_edge_core::{
    AppLookupError, DispatchRequest, Headers, MasterConfig, Relay, RelayError, Secret, app_variable_suffix, apps_named,
    forward, handle_webhook,
};
use worker::{
    Context, Env, Headers as WHeaders, KvStore, Method, Request, RequestInit, Response, ResponseBuilder, Result,
    Router, event,
};

/// How long a delivery id is remembered: longer than any Git host's redelivery window.
const DEDUPE_TTL_SECS: u64 = 7 * 24 * 3600;

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    Router::new()
        .post_async("/hooks/:app", |req, ctx| async move {
            let app = ctx.param("app").cloned();
            hook(req, ctx.env, app).await
        })
        .get("/healthz", |_, _| Response::ok("ok"))
        .run(req, env)
        .await
}

fn json(status: u16, body: serde_json::Value) -> Result<Response> {
    Ok(Response::from_json(&body)?.with_status(status))
}

async fn hook(mut req: Request, env: Env, app: Option<String>) -> Result<Response> {
    let Some(app) = app else { return json(404, serde_json::json!({"error": "no app in the path"})) };
    let body = req.bytes().await?;
    if body.len() > skiff_edge_core::MAX_BODY_BYTES {
        return json(413, serde_json::json!({"error": "the webhook body is larger than the 1 MiB limit"}));
    }
    let headers: Headers = req.headers().entries().collect();
    let config = match config(&env, &app).await {
        Ok(c) => c,
        Err(AppLookupError::Unknown) => {
            return json(404, serde_json::json!({"error": format!("no app `{app}` is configured")}));
        }
        Err(AppLookupError::Invalid(msg)) => {
            worker::console_error!("configuration: {msg}");
            return json(500, serde_json::json!({"error": "the master is misconfigured; see its log"}));
        }
    };
    let now = (worker::Date::now().as_millis() / 1000) as i64;
    let outcome = handle_webhook(&config, &headers, &body, now);
    let relay = Workers { kv: env.kv("SKIFF_DELIVERIES")?, host: env.var("SKIFF_HOST_URL")?.to_string() };
    let answer = forward(&relay, &outcome).await;
    if let Some(log) = &answer.log {
        worker::console_error!("{log}");
    }
    Ok(ResponseBuilder::new()
        .with_status(answer.status)
        .with_header("content-type", "application/json")?
        .fixed(answer.body))
}

/// Delivery ids in KV `SKIFF_DELIVERIES`, dispatches to `{SKIFF_HOST_URL}/v1/dispatch`.
struct Workers {
    kv: KvStore,
    host: String,
}

impl Relay for Workers {
    async fn seen(&self, id: &str) -> std::result::Result<bool, RelayError> {
        let value = self.kv.get(id).text().await.map_err(store_failed)?;
        Ok(value.is_some())
    }

    async fn remember(&self, id: &str) -> std::result::Result<(), RelayError> {
        let put = self.kv.put(id, "1").map_err(store_failed)?;
        put.expiration_ttl(DEDUPE_TTL_SECS).execute().await.map_err(store_failed)
    }

    async fn post(&self, request: &DispatchRequest) -> std::result::Result<u16, RelayError> {
        let url = format!("{}/v1/dispatch", self.host.trim_end_matches('/'));
        let misconfigured = |e: worker::Error| RelayError::Misconfigured(format!("no dispatch to `{url}`: {e}"));
        let headers = WHeaders::new();
        for (k, v) in &request.headers {
            headers.set(k, v).map_err(misconfigured)?;
        }
        let mut init = RequestInit::new();
        init.with_method(Method::Post).with_headers(headers).with_body(Some(request.body.clone().into()));
        let outgoing = Request::new_with_init(&url, &init).map_err(misconfigured)?;
        match worker::Fetch::Request(outgoing).send().await {
            Ok(resp) => Ok(resp.status_code()),
            Err(e) => Err(RelayError::Host(e.to_string())),
        }
    }
}

fn store_failed(e: impl std::fmt::Display) -> RelayError {
    RelayError::Store(format!("KV SKIFF_DELIVERIES: {e}"))
}

async fn config(env: &Env, app: &str) -> std::result::Result<MasterConfig, AppLookupError> {
    let invalid = AppLookupError::Invalid;
    let (apps_json, source) = apps_json(env).await?;
    let apps = apps_named(&apps_json, app).map_err(|e| match e {
        AppLookupError::Invalid(msg) => invalid(format!("{source}: {msg}")),
        unknown => unknown,
    })?;
    let per_app = format!("SKIFF_WEBHOOK_SECRET_{}", app_variable_suffix(app).to_ascii_uppercase());
    let secret = env
        .secret(&per_app)
        .or_else(|_| env.secret("SKIFF_WEBHOOK_SECRET"))
        .map_err(|_| invalid(format!("neither secret {per_app} nor SKIFF_WEBHOOK_SECRET is set")))?
        .to_string();
    let key = env.secret("SKIFF_DISPATCH_KEY").map_err(|_| invalid("secret SKIFF_DISPATCH_KEY is missing".into()))?;
    Ok(MasterConfig::new(Secret::new(secret), Secret::new(key.to_string()), apps))
}

/// The apps as JSON, and where they came from: KV `SKIFF_CONFIG` key `apps` when that namespace
/// is bound and the key is set, else var `SKIFF_APPS`.
async fn apps_json(env: &Env) -> std::result::Result<(String, &'static str), AppLookupError> {
    if let Ok(kv) = env.kv("SKIFF_CONFIG") {
        match kv.get("apps").text().await {
            Ok(Some(json)) => return Ok((json, "KV SKIFF_CONFIG key `apps`")),
            Ok(None) => {}
            Err(e) => return Err(AppLookupError::Invalid(format!("KV SKIFF_CONFIG cannot be read: {e}"))),
        }
    }
    match env.var("SKIFF_APPS") {
        Ok(v) => Ok((v.to_string(), "var SKIFF_APPS")),
        Err(_) => Err(AppLookupError::Invalid("neither KV SKIFF_CONFIG key `apps` nor var SKIFF_APPS is set".into())),
    }
}
