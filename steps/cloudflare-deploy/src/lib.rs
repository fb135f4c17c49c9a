//! `cloudflare-deploy`: uploads a Worker from the workspace to Cloudflare as a new version
//! (the Workers versions API, the multipart upload `wrangler deploy` sends for the same
//! Worker), then deploys it to all traffic or to a share of it beside the version serving now;
//! or promotes a version, or rolls back to the previous deployment's version.
//!
//! It reaches only the host of `api-url` and reads only the token's secret (and the secrets
//! its `secrets` input binds). The token goes into the `authorization` header and nowhere
//! else: never into a log line, an output or an error. The logic (the Worker's metadata and
//! modules from inputs and `wrangler.toml`, the form, the traffic split, error texts) is pure
//! and tested natively.

pub mod api;
pub mod form;
pub mod worker;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use skiff_step_sdk::http::Request;
use skiff_step_sdk::{Context, Manifest, Outputs, Step, StepError, info, warn};

use worker::{ConfigFile, Settings};

/// Cloudflare's API, when `api-url` is not given.
pub const DEFAULT_API: &str = "https://api.cloudflare.com/client/v4";
/// The secret holding the token, when `token-secret` is not given.
pub const DEFAULT_TOKEN_SECRET: &str = "CLOUDFLARE_API_TOKEN";

struct CloudflareDeploy;

fn invalid(m: impl Into<String>) -> StepError {
    StepError::InvalidInput(m.into())
}

/// What the step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Upload a version and deploy it (to `percentage` of the traffic).
    Deploy,
    /// Upload a version only.
    Upload,
    /// Deploy `version-id` to all traffic.
    Promote,
    /// Deploy the previous deployment's version (or `version-id`) to all traffic.
    Rollback,
}

impl Action {
    /// Parses input `action`.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "" | "deploy" => Self::Deploy,
            "upload" => Self::Upload,
            "promote" => Self::Promote,
            "rollback" => Self::Rollback,
            other => return Err(format!("input `action` is `{other}`; use deploy, upload, promote or rollback")),
        })
    }
}

/// The API, with the token kept inside.
struct Api {
    base: String,
    account: String,
    token: String,
    ctx: api::Context,
}

impl Api {
    /// `method` on `path` under the account's Workers scripts; the `result`, or the step's error.
    fn call(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>, doing: &str) -> Result<Value, StepError> {
        match self.try_call(method, path, body)? {
            Ok(v) => Ok(v),
            Err(f) => Err(StepError::Failed(api::scrub(&api::explain(doing, &f, &self.ctx), &self.token))),
        }
    }

    fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Result<Value, api::Failure>, StepError> {
        let url = format!("{}/accounts/{}{path}", self.base, self.account);
        let mut req = Request::new(method, &url)
            .header("authorization", &format!("Bearer {}", self.token))
            .header("accept", "application/json")
            .max_response_bytes(8 << 20);
        if let Some((ctype, bytes)) = body {
            req = req.header("content-type", ctype).body(bytes);
        }
        let resp = req.send().map_err(|e| match StepError::from(e) {
            StepError::Failed(m) => StepError::Failed(api::scrub(&m, &self.token)),
            other => other,
        })?;
        Ok(api::envelope(resp.status, &resp.body))
    }
}

/// Input `name` of a granted secret, read; the error says how to grant it.
fn granted(name: &str, input: &str) -> Result<String, StepError> {
    skiff_step_sdk::secret(name).ok_or_else(|| {
        StepError::Denied(format!(
            "secret `{name}` (input `{input}`) was not granted to this step: add it to `permissions.secrets`"
        ))
    })
}

/// The `wrangler.toml` to read: input `config`, else `wrangler.toml` when the workspace has one.
fn config(ctx: &Context, root: &Path) -> Result<Option<ConfigFile>, StepError> {
    let (path, given) = match ctx.input("config").map(str::trim).filter(|s| !s.is_empty()) {
        Some(p) => (worker::normalize(p).map_err(|e| invalid(format!("input `config`: {e}")))?, true),
        None => ("wrangler.toml".to_string(), false),
    };
    match std::fs::read_to_string(root.join(&path)) {
        Ok(text) => ConfigFile::parse(&path, &text).map(Some).map_err(invalid),
        Err(_) if !given => Ok(None),
        Err(e) => Err(invalid(format!("input `config`: cannot read `{path}`: {e}"))),
    }
}

impl Step for CloudflareDeploy {
    fn describe() -> Manifest {
        Manifest::new(
            "cloudflare-deploy",
            "Uploads a Cloudflare Worker as a new version and deploys it, at once or gradually; promotes or rolls back.",
        )
        .input("account-id", "The Cloudflare account's id", true, None)
        .input("action", "deploy, upload (a version only), promote or rollback", false, Some("deploy"))
        .input("api-url", "The Cloudflare API's base URL", false, Some(DEFAULT_API))
        .input("token-secret", "Name of a granted secret holding the API token", false, Some(DEFAULT_TOKEN_SECRET))
        .input("config", "A wrangler.toml in the workspace (default: ./wrangler.toml when there is one)", false, None)
        .input("name", "The Worker's name (default: `name` in the config)", false, None)
        .input("main", "The entry ES module, a workspace path (default: `main` in the config)", false, None)
        .input("modules", "More modules: workspace paths or globs, comma- or newline-separated", false, None)
        .input("base-dir", "The folder module names are relative to (default: the entry's folder)", false, None)
        .input("compatibility-date", "YYYY-MM-DD (default: the config's)", false, None)
        .input("compatibility-flags", "Comma-separated (default: the config's)", false, None)
        .input("vars", "Plain-text variables, `NAME=value` per line, or a JSON object", false, None)
        .input("secrets", "Secret bindings, `BINDING=SECRET_NAME` per line (each secret granted)", false, None)
        .input("kv-namespaces", "KV bindings, `BINDING=namespace-id`", false, None)
        .input("r2-buckets", "R2 bindings, `BINDING=bucket-name`", false, None)
        .input("d1-databases", "D1 bindings, `BINDING=database-id`", false, None)
        .input("durable-objects", "Durable Object bindings, `BINDING=ClassName[@script-name]`", false, None)
        .input("services", "Service bindings, `BINDING=service[@environment]`", false, None)
        .input("percentage", "Share of traffic for the new version; below 100 splits with the current one", false, Some("100"))
        .input("version-id", "promote: the version to deploy; rollback: the version to return to", false, None)
        .input("message", "A message for the version and the deployment (`workers/message`)", false, None)
        .input("tag", "A tag for the version (`workers/tag`)", false, None)
        .output("version-id", "The version uploaded, promoted or rolled back to")
        .output("deployment-id", "The deployment made (empty for `upload`)")
        .output("url", "https://NAME.SUBDOMAIN.workers.dev (empty when the workers.dev subdomain is off)")
        .host("${inputs.api-url}")
        .secret("${inputs.token-secret}")
    }

    fn run(ctx: Context) -> Result<Outputs, StepError> {
        let root = Path::new(".");
        let action = Action::parse(ctx.input_or("action", "deploy")).map_err(invalid)?;
        let account = ctx.required("account-id")?.trim().to_string();
        if !account.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid(format!(
                "input `account-id` is `{account}`; it is the account's id (32 hex characters, shown in the dashboard's sidebar)"
            )));
        }
        let base = ctx.input_or("api-url", DEFAULT_API).trim().trim_end_matches('/').to_string();
        if !base.starts_with("https://") && !base.starts_with("http://") {
            return Err(invalid(format!("input `api-url` is `{base}`; it must be an https:// URL")));
        }
        let token_secret = ctx.input_or("token-secret", DEFAULT_TOKEN_SECRET).trim().to_string();
        let settings = Settings::new(&ctx.inputs, config(&ctx, root)?);
        let script = settings.name().map_err(invalid)?;
        let message = ctx.input("message").map(str::trim).filter(|s| !s.is_empty());
        let pct = api::percentage(ctx.input_or("percentage", "100")).map_err(invalid)?;
        let version_in = ctx.input("version-id").map(str::trim).filter(|s| !s.is_empty());
        if action == Action::Promote && version_in.is_none() {
            return Err(invalid("`action: promote` needs input `version-id`: the version to send all traffic to"));
        }
        if let Some(v) = version_in
            && !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(invalid(format!("input `version-id` is `{v}`; it is a version's UUID")));
        }
        // Everything the upload needs is read and checked before the first request.
        let uploading = matches!(action, Action::Deploy | Action::Upload);
        let worker = if uploading {
            Some(
                settings
                    .worker(root, &|n| skiff_step_sdk::secret(n))
                    .map_err(|e| if e.contains("was not granted") { StepError::Denied(e) } else { invalid(e) })?,
            )
        } else {
            None
        };
        let token = granted(&token_secret, "token-secret")?.trim().to_string();
        if token.is_empty() || token.contains(['\r', '\n']) {
            return Err(invalid(format!("secret `{token_secret}` does not hold an API token")));
        }
        let api = Api {
            base,
            account: account.clone(),
            token,
            ctx: api::Context {
                api_url: ctx.input_or("api-url", DEFAULT_API).into(),
                account,
                script: script.clone(),
                main: worker.as_ref().map(|w| w.main_path.clone()).unwrap_or_default(),
                token_secret,
            },
        };
        let scripts = format!("/workers/scripts/{script}");

        // A gradual deployment splits with the version serving now: found before uploading, so
        // a Worker without one fails without leaving a version behind.
        let current = if action == Action::Deploy && pct < 100.0 || action == Action::Rollback && version_in.is_none() {
            Some(api.call("GET", &format!("{scripts}/deployments"), None, "listing the deployments")?)
        } else {
            None
        };

        let version = match (&worker, action) {
            (Some(w), _) => {
                let mut annotations = BTreeMap::new();
                if let Some(m) = message {
                    annotations.insert("workers/message".to_string(), m.to_string());
                }
                if let Some(t) = ctx.input("tag").map(str::trim).filter(|s| !s.is_empty()) {
                    annotations.insert("workers/tag".to_string(), t.to_string());
                }
                let (ctype, body) = form::multipart(w, &w.metadata(&annotations));
                let size = body.len();
                let result = api.call(
                    "POST",
                    &format!("{scripts}/versions?bindings_inherit=strict"),
                    Some((&ctype, body)),
                    &format!("uploading a version of Worker `{script}`"),
                )?;
                let id = result.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
                if id.is_empty() {
                    return Err(StepError::failed("Cloudflare API: the version upload answered without a version id"));
                }
                info!(
                    "uploaded version {id} of Worker `{script}`: {} module(s), {} binding(s), {size} bytes",
                    1 + w.modules.len(),
                    w.bindings.len()
                );
                id
            }
            (None, Action::Promote) => version_in.unwrap_or_default().to_string(),
            (None, _) => match version_in {
                Some(v) => v.to_string(),
                None => api::previous(current.as_ref().unwrap_or(&Value::Null), &script).map_err(StepError::Failed)?,
            },
        };

        let mut out = Outputs::new().set("version-id", version.clone()).set("deployment-id", "").set("url", "");
        if action == Action::Upload {
            skiff_step_sdk::log::summary(&format!(
                "### Cloudflare Worker `{script}`\nVersion `{version}` uploaded (not deployed)."
            ));
            return Ok(out);
        }
        let split = if action == Action::Deploy && pct < 100.0 {
            api::gradual(current.as_ref().unwrap_or(&Value::Null), &version, pct, &script).map_err(StepError::Failed)?
        } else {
            vec![(version.clone(), 100.0)]
        };
        let message = match (action, message) {
            (_, Some(m)) => Some(m.to_string()),
            (Action::Rollback, None) => Some(format!("Rollback to {version}")),
            _ => None,
        };
        let body = serde_json::to_vec(&api::deployment_body(&split, message.as_deref())).map_err(StepError::failed)?;
        let deployment = api.call(
            "POST",
            &format!("{scripts}/deployments"),
            Some(("application/json", body)),
            &format!("deploying Worker `{script}`"),
        )?;
        let deployment_id = deployment.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let shares: Vec<String> = split.iter().map(|(v, p)| format!("{v} at {p} %")).collect();
        info!("deployed Worker `{script}` ({deployment_id}): {}", shares.join(", "));
        out.insert("deployment-id", deployment_id.clone());

        // The workers.dev URL, when the account has its subdomain on.
        let url = match api.try_call("GET", "/workers/subdomain", None) {
            Ok(Ok(r)) => r.get("subdomain").and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from),
            _ => None,
        };
        match url {
            Some(sub) => {
                let url = format!("https://{script}.{sub}.workers.dev");
                info!("{url}");
                out.insert("url", url);
            }
            None => warn!("the account has no workers.dev subdomain: output `url` is empty"),
        }
        skiff_step_sdk::log::summary(&format!(
            "### Cloudflare Worker `{script}`\nDeployment `{deployment_id}`: {}",
            shares.join(", ")
        ));
        Ok(out)
    }
}

skiff_step_sdk::export!(CloudflareDeploy);
