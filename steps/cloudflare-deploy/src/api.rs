//! The Cloudflare API as this step uses it: the `{success, errors, messages, result}`
//! envelope, errors that name the code and what to check, and the traffic split of a
//! deployment. Only the HTTP call itself needs the host.

use serde_json::{Value, json};

/// A call that failed: the HTTP status and Cloudflare's errors (`code`, `message`).
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The HTTP status.
    pub status: u16,
    /// Cloudflare's error codes and messages; empty when the answer was not the API's JSON.
    pub errors: Vec<(i64, String)>,
    /// The start of a body that was not the API's JSON.
    pub raw: String,
}

/// The `result` of an answer, or why the call failed.
pub fn envelope(status: u16, body: &[u8]) -> Result<Value, Failure> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let Some(v) = parsed.filter(|v| v.get("success").is_some()) else {
        let raw: String = String::from_utf8_lossy(body).chars().take(200).collect();
        return Err(Failure { status, errors: Vec::new(), raw });
    };
    if v["success"] == json!(true) && status < 400 {
        return Ok(v.get("result").cloned().unwrap_or(Value::Null));
    }
    let errors = v
        .get("errors")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| {
                    let code = e.get("code").and_then(Value::as_i64).unwrap_or(0);
                    let msg = e.get("message").and_then(Value::as_str).unwrap_or("").to_string();
                    (code, msg)
                })
                .collect()
        })
        .unwrap_or_default();
    Err(Failure { status, errors, raw: String::new() })
}

/// What to check for an error code (or, without one, an HTTP status).
fn hint(code: i64, status: u16, what: &Context) -> String {
    match code {
        10021 | 10027 | 10068 => format!(
            "the Worker's code was refused: check that `main` (`{}`) is an ES module that the runtime of \
             `compatibility-date` accepts, and that every module it imports is uploaded (`modules`, or the \
             config's module rules)",
            what.main
        ),
        10000 | 10001 | 9106 | 9109 | 6003 | 6111 => format!(
            "the API token was refused: check that secret `{}` holds a valid token with the \"Workers Scripts: \
             Edit\" permission on account `{}`",
            what.token_secret, what.account
        ),
        7003 | 7000 | 10013 => format!("check `account-id` (`{}`): it is the account's id, not its name", what.account),
        10007 | 10090 => format!(
            "check the Worker's name (`{}`) and `account-id`; `promote` and `rollback` need a Worker that was deployed before",
            what.script
        ),
        _ if status == 401 || status == 403 => format!(
            "check that secret `{}` holds a token with the \"Workers Scripts: Edit\" permission on account `{}`",
            what.token_secret, what.account
        ),
        _ if status == 404 => format!("check `api-url` (`{}`), `account-id` and the Worker's name", what.api_url),
        _ => "see Cloudflare's message above".to_string(),
    }
}

/// What an error message may name.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The API's base URL.
    pub api_url: String,
    /// The account id.
    pub account: String,
    /// The Worker's name.
    pub script: String,
    /// The entry module.
    pub main: String,
    /// The name of the secret holding the token (never its value).
    pub token_secret: String,
}

/// The step's error for a failed call to `what` (`uploading the version`, …).
pub fn explain(doing: &str, f: &Failure, ctx: &Context) -> String {
    if f.errors.is_empty() {
        let raw = if f.raw.trim().is_empty() { String::new() } else { format!(": {}", f.raw.trim()) };
        return format!("Cloudflare API: {doing} failed with HTTP {}{raw}; {}", f.status, hint(0, f.status, ctx));
    }
    let list: Vec<String> = f.errors.iter().map(|(c, m)| format!("error {c}: {m}")).collect();
    let code = f.errors.first().map_or(0, |e| e.0);
    format!("Cloudflare API: {doing} failed (HTTP {}, {}); {}", f.status, list.join("; "), hint(code, f.status, ctx))
}

/// The versions a deployment sends traffic to, with their percentages, newest deployment first
/// as the API lists them.
fn split_of(deployment: &Value) -> Vec<(String, f64)> {
    deployment
        .get("versions")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| {
                    Some((v.get("version_id")?.as_str()?.to_string(), v.get("percentage").and_then(Value::as_f64)?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The deployments in `GET …/deployments`'s result, newest first (the API's order).
fn deployments(list: &Value) -> Vec<Value> {
    list.get("deployments").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// The version carrying most of a deployment's traffic, other than `except`.
fn main_version(deployment: &Value, except: Option<&str>) -> Option<String> {
    split_of(deployment)
        .into_iter()
        .filter(|(v, _)| Some(v.as_str()) != except)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(v, _)| v)
}

/// The split of a gradual deployment: `percentage` to `new`, the rest to the version serving
/// most traffic now.
pub fn gradual(list: &Value, new: &str, percentage: f64, script: &str) -> Result<Vec<(String, f64)>, String> {
    let current = deployments(list).into_iter().next().ok_or_else(|| {
        format!(
            "Worker `{script}` has no deployment yet, so there is no version to split traffic with: deploy it at \
             100 % first (leave `percentage` out)"
        )
    })?;
    let stable = main_version(&current, Some(new))
        .ok_or_else(|| format!("the current deployment of `{script}` serves no other version to split traffic with"))?;
    Ok(vec![(new.to_string(), percentage), (stable, 100.0 - percentage)])
}

/// The version a rollback returns to: the one that served most traffic in the deployment
/// before the current one.
pub fn previous(list: &Value, script: &str) -> Result<String, String> {
    let all = deployments(list);
    let prev = all.get(1).ok_or_else(|| {
        format!(
            "Worker `{script}` has {} deployment(s), so there is nothing to roll back to; give `version-id` to deploy \
             a version of your choice",
            all.len()
        )
    })?;
    main_version(prev, None).ok_or_else(|| format!("the previous deployment of `{script}` lists no version"))
}

/// The body of `POST …/deployments` (as `wrangler versions deploy` sends it).
pub fn deployment_body(split: &[(String, f64)], message: Option<&str>) -> Value {
    let versions: Vec<Value> = split
        .iter()
        .map(|(id, p)| {
            // Whole percentages as integers, as wrangler sends them.
            let p = if p.fract() == 0.0 { json!(*p as u64) } else { json!(p) };
            json!({"version_id": id, "percentage": p})
        })
        .collect();
    let mut body = json!({"strategy": "percentage", "versions": versions});
    if let Some(m) = message {
        body["annotations"] = json!({"workers/message": m});
    }
    body
}

/// Parses `percentage`: a number in (0, 100].
pub fn percentage(text: &str) -> Result<f64, String> {
    let t = text.trim().trim_end_matches('%').trim();
    match t.parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => {
            Err(format!("input `percentage` is `{text}`; give the share of traffic for the new version, from 1 to 100"))
        }
    }
}

/// `text` with every occurrence of `secret` replaced: an error must never carry the token.
pub fn scrub(text: &str, secret: &str) -> String {
    if secret.len() < 4 { text.to_string() } else { text.replace(secret, "***") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> Value {
        json!({"deployments": [
            {"id": "d2", "versions": [{"version_id": "v2", "percentage": 10.0}, {"version_id": "v1", "percentage": 90.0}]},
            {"id": "d1", "versions": [{"version_id": "v1", "percentage": 100.0}]},
            {"id": "d0", "versions": [{"version_id": "v0", "percentage": 100.0}]},
        ]})
    }

    #[test]
    fn a_gradual_deployment_splits_with_the_version_serving_now() {
        let s = gradual(&json!({"deployments": [list()["deployments"][1].clone()]}), "v2", 10.0, "w").unwrap();
        assert_eq!(s, [("v2".to_string(), 10.0), ("v1".to_string(), 90.0)]);
        assert_eq!(
            deployment_body(&s, Some("canary")),
            json!({"strategy": "percentage", "versions": [{"version_id": "v2", "percentage": 10}, {"version_id": "v1", "percentage": 90}], "annotations": {"workers/message": "canary"}})
        );
        // A second gradual step from a split keeps the stable version.
        assert_eq!(gradual(&list(), "v3", 50.0, "w").unwrap()[1].0, "v1");
        assert!(gradual(&json!({"deployments": []}), "v", 10.0, "w").unwrap_err().contains("100 % first"));
    }

    #[test]
    fn a_rollback_returns_to_the_previous_deployment_s_version() {
        assert_eq!(previous(&list(), "w").unwrap(), "v1");
        let one = json!({"deployments": [{"id": "d1", "versions": [{"version_id": "v1", "percentage": 100}]}]});
        assert!(previous(&one, "w").unwrap_err().contains("nothing to roll back to"));
    }

    #[test]
    fn api_errors_name_the_code_the_message_and_what_to_check() {
        let body = br#"{"success":false,"errors":[{"code":10021,"message":"Uncaught SyntaxError: Unexpected token"}],"messages":[],"result":null}"#;
        let f = envelope(400, body).unwrap_err();
        let ctx = Context { main: "src/index.js".into(), ..Context::default() };
        let e = explain("uploading the version", &f, &ctx);
        assert!(e.contains("error 10021: Uncaught SyntaxError") && e.contains("`main` (`src/index.js`)"), "{e}");
        let f = envelope(502, b"<html>bad gateway</html>").unwrap_err();
        assert!(explain("x", &f, &ctx).contains("HTTP 502: <html>bad gateway</html>"));
        assert_eq!(envelope(200, br#"{"success":true,"errors":[],"result":{"id":"v"}}"#).unwrap()["id"], "v");
        assert!(percentage("0").is_err() && percentage("101").is_err() && percentage("abc").is_err());
        assert_eq!(percentage("10%").unwrap(), 10.0);
        assert_eq!(scrub("token abcdef in it", "abcdef"), "token *** in it");
    }
}
