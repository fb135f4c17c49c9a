//! `notify`: posts a message about the run to a DingTalk robot, a WeCom group
//! robot, a Feishu/Lark bot, a Slack incoming webhook or any JSON webhook.
//!
//! It reaches only the webhook's host (`${inputs.webhook}`), reads only the
//! signing secret it is told to, and turns a refusal by the target (HTTP ≥ 400,
//! DingTalk/WeCom `errcode`, Feishu `code`) into the step's error. The logic
//! (templating, signing, bodies, answers) is pure and tested natively.

pub mod facts;
pub mod provider;
pub mod sign;
pub mod template;

use std::collections::BTreeMap;

use serde_json::Value;
use skiff_step_sdk::http::Request;
use skiff_step_sdk::{Context, Manifest, Outputs, Step, StepError, info};

use provider::{Message, Provider};

struct Notify;

/// What to send, worked out from the inputs alone.
#[derive(Debug)]
pub struct Plan {
    /// The target.
    pub provider: Provider,
    /// The URL to POST to, signed when the target signs in the URL.
    pub url: String,
    /// The JSON body.
    pub body: Value,
    /// The message text, for the step's outputs.
    pub text: String,
}

fn invalid(m: impl Into<String>) -> StepError {
    StepError::InvalidInput(m.into())
}

/// Works out the request from inputs, the event, the signing secret and the time.
pub fn plan(
    inputs: &BTreeMap<String, String>,
    event: &Value,
    run_id: &str,
    step_id: &str,
    secret: Option<&str>,
    now_ms: u64,
) -> Result<Plan, StepError> {
    let input = |k: &str| inputs.get(k).map(String::as_str).filter(|v| !v.trim().is_empty());
    let webhook = input("webhook")
        .ok_or_else(|| invalid("input `webhook` is required: the robot's or webhook's URL"))?
        .trim()
        .to_string();
    if !webhook.starts_with("https://") && !webhook.starts_with("http://") {
        return Err(invalid("input `webhook` must be an http:// or https:// URL"));
    }
    let provider = Provider::parse(input("provider").unwrap_or(""), &webhook).map_err(invalid)?;
    let mut vars = facts::collect(inputs, event, run_id, step_id);
    if let Some(t) = input("title") {
        let title = template::render(t, &vars).map_err(|e| invalid(format!("input `title`: {e}")))?;
        vars.insert("title", title);
    }
    let msgtype = input("msgtype").map(str::to_string);
    let mut markdown = match input("format").map(str::to_ascii_lowercase).as_deref() {
        None | Some("markdown") | Some("md") => true,
        Some("text") | Some("plain") => false,
        Some(other) => return Err(invalid(format!("input `format` is `{other}`; use `markdown` or `text`"))),
    };
    if let Some(m) = &msgtype {
        markdown = m != "text";
    }

    let mut msg = Message { title: vars["title"].clone(), markdown, ..Default::default() };
    // Serverless-cd's DingTalk plugin: `payload` is the message object for `msgtype`.
    if let Some(p) = input("payload") {
        let payload: Value = serde_json::from_str(p)
            .map_err(|e| invalid(format!("input `payload` must be a JSON object (the message for `msgtype`): {e}")))?;
        let payload = render_json(payload, &vars)?;
        let kind = msgtype.clone().unwrap_or_else(|| "text".into());
        msg.text = payload.get("text").or_else(|| payload.get("content")).and_then(Value::as_str).unwrap_or("").into();
        msg.raw = Some((kind, payload));
    } else {
        let (template, plain) = if let Some(t) = input("template").or_else(|| input("message")) {
            (Some(t.to_string()), false)
        } else if let Some(t) = input("text") {
            // `text: {content: …}` in Serverless-cd pipelines, or plain text.
            match serde_json::from_str::<Value>(t) {
                Ok(Value::Object(o)) => {
                    (Some(o.get("content").and_then(Value::as_str).unwrap_or("").to_string()), msgtype.is_none())
                }
                _ => (Some(t.to_string()), false),
            }
        } else if let Some(t) = input("content") {
            (Some(t.to_string()), msgtype.is_none())
        } else {
            (None, false)
        };
        if plain {
            msg.markdown = false;
        }
        msg.text = match template {
            Some(t) => template::render(&t, &vars).map_err(|e| invalid(format!("the message template: {e}")))?,
            None => template::default_message(&vars, provider.flavor(msg.markdown)),
        };
    }
    msg.at_mobiles = input("at-mobiles")
        .map(|s| s.split([',', ' ', '\n']).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        .unwrap_or_default();
    msg.at_all = matches!(input("at-all"), Some("true") | Some("yes") | Some("1"));
    if let Some(at) = input("at") {
        let at: Value =
            serde_json::from_str(at).map_err(|e| invalid(format!("input `at` must be a JSON object: {e}")))?;
        if let Some(m) = at.get("atMobiles").and_then(Value::as_array) {
            msg.at_mobiles.extend(m.iter().filter_map(|v| v.as_str().map(String::from)));
        }
        msg.at_all |= at.get("isAtAll").and_then(Value::as_bool).unwrap_or(false);
        msg.at_raw = Some(at);
    }
    msg.vars = vars;
    let (url, body) = provider::build(provider, &webhook, &msg, secret, now_ms);
    Ok(Plan { provider, url, body, text: msg.text })
}

/// Renders `{{ name }}` inside every string of a JSON payload.
fn render_json(v: Value, vars: &template::Vars) -> Result<Value, StepError> {
    Ok(match v {
        Value::String(s) => {
            Value::String(template::render(&s, vars).map_err(|e| invalid(format!("input `payload`: {e}")))?)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(|x| render_json(x, vars)).collect::<Result<_, _>>()?),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, x)| render_json(x, vars).map(|x| (k, x))).collect::<Result<_, _>>()?)
        }
        other => other,
    })
}

impl Step for Notify {
    fn describe() -> Manifest {
        Manifest::new(
            "notify",
            "Posts a message about the run to DingTalk, WeCom, Feishu/Lark, Slack or a JSON webhook.",
        )
        .input("webhook", "The robot's or webhook's URL (treat it as a secret: it carries the token)", true, None)
        .input(
            "provider",
            "dingtalk, wecom, feishu, lark, slack or webhook; guessed from the URL when empty",
            false,
            None,
        )
        .input(
            "secret-name",
            "Name of a granted secret holding the robot's signing secret (DingTalk, Feishu)",
            false,
            None,
        )
        .input("secret", "The signing secret itself (Serverless-cd style; prefer `secret-name`)", false, None)
        .input("title", "Title template", false, Some("{{app}} {{status}}"))
        .input(
            "template",
            "Message template with {{status}}, {{app}}, {{ref}}, {{commit}}, {{duration}}, {{link}}, …",
            false,
            None,
        )
        .input("message", "Same as `template`", false, None)
        .input("format", "markdown or text", false, Some("markdown"))
        .input("status", "The run's status", false, Some("success"))
        .input("app", "The application's name (default: the repository)", false, None)
        .input("ref", "The Git ref (default: the event's)", false, None)
        .input("commit", "The commit (default: the event's)", false, None)
        .input("duration", "How long the run took (seconds, or text)", false, None)
        .input("link", "A link to the run", false, None)
        .input("author", "Who triggered the run (default: the event's sender)", false, None)
        .input("at-mobiles", "Phone numbers to @, comma-separated (DingTalk, WeCom)", false, None)
        .input("at-all", "true to @ everyone", false, Some("false"))
        .input("msgtype", "Provider message type (Serverless-cd): text, markdown, link, actionCard, …", false, None)
        .input("payload", "Provider message object as JSON (Serverless-cd)", false, None)
        .input("text", "Message text, or `{content: …}` (Serverless-cd)", false, None)
        .input("content", "Message text (Serverless-cd WeCom plugin)", false, None)
        .input("at", "DingTalk `at` object as JSON (Serverless-cd)", false, None)
        .output("provider", "The target the message went to")
        .output("status", "The HTTP status of the answer")
        .output("message", "The text sent")
        .host("${inputs.webhook}")
    }

    fn run(ctx: Context) -> Result<Outputs, StepError> {
        let secret = match ctx.input("secret-name").filter(|s| !s.is_empty()) {
            Some(name) => Some(skiff_step_sdk::secret(name).ok_or_else(|| {
                StepError::Denied(format!(
                    "secret `{name}` (input `secret-name`) was not granted to this step: add it to `permissions.secrets`"
                ))
            })?),
            None => ctx.input("secret").filter(|s| !s.is_empty()).map(String::from),
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let plan = plan(&ctx.inputs, &ctx.event(), &ctx.run_id, &ctx.step_id, secret.as_deref(), now_ms)?;
        let host = provider::host_of(&plan.url);
        let body = serde_json::to_vec(&plan.body).map_err(StepError::failed)?;
        let resp = Request::post(&plan.url)
            .header("content-type", "application/json; charset=utf-8")
            .max_response_bytes(1 << 20)
            .body(body)
            .send()?;
        info!("posted to {} at {host}: HTTP {}", plan.provider.name(), resp.status);
        provider::check(plan.provider, resp.status, &resp.body).map_err(StepError::Failed)?;
        Ok(Outputs::new()
            .set("provider", plan.provider.name())
            .set("status", resp.status.to_string())
            .set("message", plan.text))
    }
}

skiff_step_sdk::export!(Notify);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inputs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_template_is_rendered_with_the_run_s_facts() {
        let p = plan(
            &inputs(&[
                ("webhook", "https://hooks.slack.com/services/x"),
                ("template", "{{app}} {{status}} {{short_commit}}"),
            ]),
            &json!({"repository": {"full_name": "acme/web"}, "after": "abcdef123456"}),
            "r",
            "s",
            None,
            0,
        )
        .unwrap();
        assert_eq!(p.provider, Provider::Slack);
        assert_eq!(p.text, "acme/web success abcdef1");
        assert_eq!(p.body["blocks"][0]["text"]["text"], "acme/web success abcdef1");
    }

    #[test]
    fn serverless_cd_dingtalk_inputs_are_accepted() {
        let i = inputs(&[
            ("webhook", "https://oapi.dingtalk.com/robot/send?access_token=t"),
            ("provider", "dingtalk"),
            ("msgtype", "markdown"),
            ("payload", r#"{"title":"Weather","text":"> {{ref}} done"}"#),
            ("secret", "SECx"),
        ]);
        let p = plan(&i, &json!({"ref": "refs/heads/main"}), "r", "s", Some("SECx"), 1000).unwrap();
        assert_eq!(p.body["markdown"], json!({"title": "Weather", "text": "> refs/heads/main done"}));
        assert!(p.url.contains("&timestamp=1000&sign="));
        // `text: {content: …}` with msgtype text.
        let i = inputs(&[("webhook", "https://oapi.dingtalk.com/robot/send"), ("text", r#"{"content":"failed"}"#)]);
        let p = plan(&i, &Value::Null, "r", "s", None, 0).unwrap();
        assert_eq!(p.body["msgtype"], "text");
        assert_eq!(p.body["text"]["content"], "failed");
    }

    #[test]
    fn bad_inputs_say_what_to_fix() {
        let e = plan(&inputs(&[]), &Value::Null, "r", "s", None, 0).unwrap_err();
        assert!(e.to_string().contains("`webhook` is required"));
        let e = plan(&inputs(&[("webhook", "https://x"), ("template", "{{nope}}")]), &Value::Null, "r", "s", None, 0)
            .unwrap_err();
        assert!(e.to_string().contains("`{{ nope }}`"), "{e}");
        let e = plan(&inputs(&[("webhook", "ftp://x")]), &Value::Null, "r", "s", None, 0).unwrap_err();
        assert!(e.to_string().contains("http"));
    }
}
