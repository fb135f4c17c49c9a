//! Each target's request body, URL signing and error answer, as pure functions.

use serde_json::{Value, json};

use crate::sign;
use crate::template::{Flavor, Vars};

/// Where the message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// A DingTalk custom robot (`oapi.dingtalk.com/robot/send?access_token=…`).
    DingTalk,
    /// A WeCom (WeChat Work) group robot (`qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…`).
    WeCom,
    /// A Feishu or Lark custom bot (`open.feishu.cn/open-apis/bot/v2/hook/…`).
    Feishu,
    /// A Slack incoming webhook (`hooks.slack.com/services/…`).
    Slack,
    /// Any URL that takes a JSON POST.
    Webhook,
}

impl Provider {
    /// From the `provider` input; empty means "guess from the webhook's host".
    pub fn parse(name: &str, webhook: &str) -> Result<Self, String> {
        Ok(match name.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Self::detect(webhook),
            "dingtalk" | "ding-talk" | "dingding" => Self::DingTalk,
            "wecom" | "wechat" | "wechat-work" | "wework" | "qywx" => Self::WeCom,
            "feishu" | "lark" => Self::Feishu,
            "slack" => Self::Slack,
            "webhook" | "json" | "generic" => Self::Webhook,
            other => {
                return Err(format!(
                    "input `provider` is `{other}`; use one of dingtalk, wecom, feishu, lark, slack, webhook"
                ));
            }
        })
    }

    /// Guesses the provider from the webhook URL's host.
    pub fn detect(webhook: &str) -> Self {
        let host = host_of(webhook);
        if host.ends_with("dingtalk.com") {
            Self::DingTalk
        } else if host == "qyapi.weixin.qq.com" {
            Self::WeCom
        } else if host.ends_with("feishu.cn") || host.ends_with("larksuite.com") {
            Self::Feishu
        } else if host == "hooks.slack.com" {
            Self::Slack
        } else {
            Self::Webhook
        }
    }

    /// The name used in outputs and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::DingTalk => "dingtalk",
            Self::WeCom => "wecom",
            Self::Feishu => "feishu",
            Self::Slack => "slack",
            Self::Webhook => "webhook",
        }
    }

    /// How the default message is written for this target.
    pub fn flavor(self, markdown: bool) -> Flavor {
        match (self, markdown) {
            (_, false) => Flavor::Text,
            (Self::Slack, true) => Flavor::Slack,
            _ => Flavor::Markdown,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::DingTalk => "DingTalk",
            Self::WeCom => "WeCom",
            Self::Feishu => "Feishu",
            Self::Slack => "Slack",
            Self::Webhook => "the webhook",
        }
    }
}

/// The host part of a URL, lower-cased, without port.
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("").to_ascii_lowercase();
    }
    host.split(':').next().unwrap_or("").to_ascii_lowercase()
}

/// What to post.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// The title (DingTalk markdown, Feishu card header).
    pub title: String,
    /// The rendered text.
    pub text: String,
    /// Whether `text` is markdown (sent as markdown where the target supports it).
    pub markdown: bool,
    /// Phone numbers to @ (DingTalk, WeCom text).
    pub at_mobiles: Vec<String>,
    /// @ everyone.
    pub at_all: bool,
    /// A provider-native message type and its object, sent as given
    /// (Serverless-cd's `msgtype` + `payload`).
    pub raw: Option<(String, Value)>,
    /// A provider-native `at` object (Serverless-cd's DingTalk `at`).
    pub at_raw: Option<Value>,
    /// The run's facts, sent as fields to a generic webhook.
    pub vars: Vars,
}

/// The URL and JSON body to POST. `now_ms` is the current Unix time in milliseconds;
/// `secret` is the signing secret, when the robot has signing on.
pub fn build(provider: Provider, webhook: &str, msg: &Message, secret: Option<&str>, now_ms: u64) -> (String, Value) {
    let mut url = webhook.to_string();
    let body = match provider {
        Provider::DingTalk => {
            if let Some(secret) = secret {
                let sep = if url.contains('?') { '&' } else { '?' };
                url = format!("{url}{sep}timestamp={now_ms}&sign={}", sign::dingtalk(secret, now_ms));
            }
            let at = msg.at_raw.clone().unwrap_or_else(|| json!({"atMobiles": msg.at_mobiles, "isAtAll": msg.at_all}));
            match &msg.raw {
                Some((kind, payload)) => json!({"msgtype": kind, kind.as_str(): payload, "at": at}),
                None if msg.markdown => {
                    // A markdown message @s someone only when the text names them.
                    let mut text = msg.text.clone();
                    for m in &msg.at_mobiles {
                        text.push_str(&format!(" @{m}"));
                    }
                    json!({"msgtype": "markdown", "markdown": {"title": msg.title, "text": text}, "at": at})
                }
                None => json!({"msgtype": "text", "text": {"content": msg.text}, "at": at}),
            }
        }
        Provider::WeCom => match &msg.raw {
            Some((kind, payload)) => json!({"msgtype": kind, kind.as_str(): payload}),
            None if msg.markdown && msg.at_mobiles.is_empty() && !msg.at_all => {
                json!({"msgtype": "markdown", "markdown": {"content": msg.text}})
            }
            None => {
                // WeCom's markdown cannot @ by phone number: mentions need a text message.
                let mut mobiles = msg.at_mobiles.clone();
                if msg.at_all {
                    mobiles.push("@all".into());
                }
                json!({"msgtype": "text", "text": {"content": msg.text, "mentioned_mobile_list": mobiles}})
            }
        },
        Provider::Feishu => {
            let mut body = match &msg.raw {
                Some((kind, payload)) if kind == "interactive" => json!({"msg_type": kind, "card": payload}),
                Some((kind, payload)) => json!({"msg_type": kind, "content": payload}),
                None if msg.markdown => {
                    let mut text = msg.text.clone();
                    if msg.at_all {
                        text.push_str("\n<at id=all></at>");
                    }
                    json!({"msg_type": "interactive", "card": {
                        "header": {"title": {"tag": "plain_text", "content": msg.title}},
                        "elements": [{"tag": "markdown", "content": text}],
                    }})
                }
                None => {
                    let mut text = msg.text.clone();
                    if msg.at_all {
                        text.push_str(" <at user_id=\"all\">all</at>");
                    }
                    json!({"msg_type": "text", "content": {"text": text}})
                }
            };
            if let Some(secret) = secret {
                let secs = now_ms / 1000;
                body["timestamp"] = json!(secs.to_string());
                body["sign"] = json!(sign::feishu(secret, secs));
            }
            body
        }
        Provider::Slack => match &msg.raw {
            Some((_, payload)) => payload.clone(),
            None => {
                let text = if msg.at_all { format!("<!channel> {}", msg.text) } else { msg.text.clone() };
                if msg.markdown {
                    json!({"text": msg.title, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]})
                } else {
                    json!({"text": text})
                }
            }
        },
        Provider::Webhook => match &msg.raw {
            Some((_, payload)) => payload.clone(),
            None => {
                let mut body = json!({"title": msg.title, "text": msg.text});
                for (k, v) in &msg.vars {
                    if !body.as_object().is_some_and(|o| o.contains_key(*k)) {
                        body[*k] = json!(v);
                    }
                }
                body
            }
        },
    };
    (url, body)
}

/// Turns the target's answer into an error the user can act on.
pub fn check(provider: Provider, status: u16, body: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(body);
    let snippet: String = text.chars().take(300).collect();
    if status >= 400 {
        return Err(format!("{} answered HTTP {status}: {}", provider.label(), snippet.trim()));
    }
    let json: Value = match provider {
        Provider::DingTalk | Provider::WeCom | Provider::Feishu => match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => {
                return Err(format!(
                    "{} answered with something that is not JSON: {}",
                    provider.label(),
                    snippet.trim()
                ));
            }
        },
        _ => return Ok(()),
    };
    let code_of = |k: &str| json.get(k).and_then(Value::as_i64);
    let (code, msg) = match provider {
        Provider::DingTalk | Provider::WeCom => (code_of("errcode"), json.get("errmsg")),
        _ => (code_of("code").or_else(|| code_of("StatusCode")), json.get("msg").or_else(|| json.get("StatusMessage"))),
    };
    match code {
        Some(0) => Ok(()),
        Some(code) => {
            let msg = msg.and_then(Value::as_str).unwrap_or("");
            let hint = match (provider, code) {
                (Provider::DingTalk, 310000) | (Provider::Feishu, 19021) => {
                    " (check the signing secret, and that the robot's security settings match)"
                }
                _ => "",
            };
            Err(format!("{} rejected the message: error {code}: {msg}{hint}", provider.label()))
        }
        None => Err(format!("{} answered without an error code: {}", provider.label(), snippet.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Message {
        Message { title: "T".into(), text: "hello".into(), markdown: true, ..Default::default() }
    }

    #[test]
    fn providers_are_detected_from_the_webhook_host() {
        assert_eq!(
            Provider::parse("", "https://oapi.dingtalk.com/robot/send?access_token=x").unwrap(),
            Provider::DingTalk
        );
        assert_eq!(Provider::detect("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k"), Provider::WeCom);
        assert_eq!(Provider::detect("https://open.larksuite.com/open-apis/bot/v2/hook/x"), Provider::Feishu);
        assert_eq!(Provider::detect("https://hooks.slack.com/services/A/B/C"), Provider::Slack);
        assert_eq!(Provider::detect("http://127.0.0.1:8080/hook"), Provider::Webhook);
        assert_eq!(Provider::parse("Lark", "").unwrap(), Provider::Feishu);
        assert!(Provider::parse("teams", "").unwrap_err().contains("use one of"));
        assert_eq!(host_of("http://user@[::1]:80/x"), "::1");
    }

    #[test]
    fn dingtalk_is_signed_in_the_query_and_mentions_go_in_the_text() {
        let mut m = msg();
        m.at_mobiles = vec!["130".into()];
        let (url, body) =
            build(Provider::DingTalk, "https://x/robot/send?access_token=t", &m, Some("SEC1"), 1_700_000_000_123);
        let sig = sign::dingtalk("SEC1", 1_700_000_000_123);
        assert_eq!(url, format!("https://x/robot/send?access_token=t&timestamp=1700000000123&sign={sig}"));
        assert_eq!(body["msgtype"], "markdown");
        assert_eq!(body["markdown"]["text"], "hello @130");
        assert_eq!(body["at"]["atMobiles"][0], "130");
        let (url, _) = build(Provider::DingTalk, "https://x/robot/send?access_token=t", &m, None, 1);
        assert!(!url.contains("sign="));
    }

    #[test]
    fn serverless_cd_payloads_are_sent_as_given() {
        let mut m = msg();
        m.raw = Some(("link".into(), json!({"title": "a", "messageUrl": "u"})));
        m.at_raw = Some(json!({"isAtAll": true}));
        let (_, body) = build(Provider::DingTalk, "https://x", &m, None, 0);
        assert_eq!(
            body,
            json!({"msgtype": "link", "link": {"title": "a", "messageUrl": "u"}, "at": {"isAtAll": true}})
        );
    }

    #[test]
    fn feishu_puts_the_signature_in_the_body_in_seconds() {
        let (url, body) =
            build(Provider::Feishu, "https://open.feishu.cn/hook/x", &msg(), Some("k"), 1_700_000_000_999);
        assert_eq!(url, "https://open.feishu.cn/hook/x");
        assert_eq!(body["timestamp"], "1700000000");
        assert_eq!(body["sign"], sign::feishu("k", 1_700_000_000));
        assert_eq!(body["msg_type"], "interactive");
        assert_eq!(body["card"]["elements"][0]["content"], "hello");
    }

    #[test]
    fn wecom_mentions_switch_to_a_text_message() {
        let (_, body) = build(Provider::WeCom, "https://q", &msg(), None, 0);
        assert_eq!(body, json!({"msgtype": "markdown", "markdown": {"content": "hello"}}));
        let mut m = msg();
        m.at_all = true;
        let (_, body) = build(Provider::WeCom, "https://q", &m, None, 0);
        assert_eq!(body["text"]["mentioned_mobile_list"], json!(["@all"]));
    }

    #[test]
    fn errors_become_sentences() {
        assert!(check(Provider::DingTalk, 200, br#"{"errcode":0,"errmsg":"ok"}"#).is_ok());
        let e = check(Provider::DingTalk, 200, br#"{"errcode":310000,"errmsg":"sign not match"}"#).unwrap_err();
        assert!(e.contains("310000") && e.contains("sign not match") && e.contains("signing secret"), "{e}");
        assert!(check(Provider::Feishu, 200, br#"{"code":19021,"msg":"sign match fail"}"#).is_err());
        assert!(check(Provider::Feishu, 200, br#"{"StatusCode":0,"code":0}"#).is_ok());
        assert!(check(Provider::Slack, 200, b"ok").is_ok());
        let e = check(Provider::Slack, 404, b"no_team").unwrap_err();
        assert_eq!(e, "Slack answered HTTP 404: no_team");
        assert!(check(Provider::WeCom, 200, b"<html>").unwrap_err().contains("not JSON"));
    }
}
