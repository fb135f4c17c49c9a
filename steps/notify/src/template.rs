//! `{{ name }}` templates over the run's context.

use std::collections::BTreeMap;

/// The values a template can use, by name.
pub type Vars = BTreeMap<&'static str, String>;

/// Replaces every `{{ name }}` with its value. An unknown name is an error
/// that lists the known ones, so a typo does not post a half-empty message.
pub fn render(template: &str, vars: &Vars) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("the template has a `{{` without a closing `}}`".into());
        };
        let name = after[..end].trim();
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => {
                let known: Vec<&str> = vars.keys().copied().collect();
                return Err(format!(
                    "the template uses `{{{{ {name} }}}}`, which is not known; use one of: {}",
                    known.join(", ")
                ));
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// How the default message is written for a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// CommonMark-ish (DingTalk, WeCom, Feishu cards).
    Markdown,
    /// Slack's mrkdwn: `*bold*`, `<url|text>`.
    Slack,
    /// Plain text.
    Text,
}

/// The default message: one line per known fact, empty ones left out.
pub fn default_message(vars: &Vars, flavor: Flavor) -> String {
    let get = |k: &str| vars.get(k).map(String::as_str).unwrap_or("");
    let mut lines = Vec::new();
    let bold = |s: &str| match flavor {
        Flavor::Markdown => format!("**{s}**"),
        Flavor::Slack => format!("*{s}*"),
        Flavor::Text => s.to_string(),
    };
    match flavor {
        Flavor::Markdown => lines.push(format!("### {}", get("title"))),
        _ => lines.push(bold(get("title"))),
    }
    let bullet = if flavor == Flavor::Text { "" } else { "- " };
    for (label, key) in [
        ("Status", "status"),
        ("App", "app"),
        ("Ref", "ref"),
        ("Commit", "short_commit"),
        ("Author", "author"),
        ("Duration", "duration"),
    ] {
        let v = get(key);
        if v.is_empty() {
            continue;
        }
        let v = if key == "status" { bold(v) } else { v.to_string() };
        lines.push(format!("{bullet}{label}: {v}"));
    }
    let link = get("link");
    if !link.is_empty() {
        lines.push(match flavor {
            Flavor::Markdown => format!("[View run]({link})"),
            Flavor::Slack => format!("<{link}|View run>"),
            Flavor::Text => format!("View run: {link}"),
        });
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars::from([
            ("title", "web succeeded".into()),
            ("status", "success".into()),
            ("app", "web".into()),
            ("ref", "refs/heads/main".into()),
            ("short_commit", "abc1234".into()),
            ("author", String::new()),
            ("duration", "1m 2s".into()),
            ("link", "https://ci.example.com/runs/1".into()),
        ])
    }

    #[test]
    fn renders_names_with_or_without_spaces() {
        let out = render("{{app}} is {{ status }} at {{short_commit}}", &vars()).unwrap();
        assert_eq!(out, "web is success at abc1234");
        assert_eq!(render("no placeholders", &vars()).unwrap(), "no placeholders");
    }

    #[test]
    fn an_unknown_name_is_an_error_that_lists_the_known_ones() {
        let err = render("{{ stauts }}", &vars()).unwrap_err();
        assert!(err.contains("`{{ stauts }}`") && err.contains("status"), "{err}");
        assert!(render("{{ open", &vars()).unwrap_err().contains("closing"));
    }

    #[test]
    fn the_default_message_leaves_out_empty_facts() {
        let md = default_message(&vars(), Flavor::Markdown);
        assert!(md.starts_with("### web succeeded\n- Status: **success**"), "{md}");
        assert!(!md.contains("Author"));
        assert!(md.ends_with("[View run](https://ci.example.com/runs/1)"));
        let slack = default_message(&vars(), Flavor::Slack);
        assert!(slack.contains("<https://ci.example.com/runs/1|View run>") && slack.starts_with("*web succeeded*"));
    }
}
