//! The run's facts a message talks about, from inputs first and the event second.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::template::Vars;

/// Everything a template can name. Inputs win; the event fills the gaps.
pub fn collect(inputs: &BTreeMap<String, String>, event: &Value, run_id: &str, step_id: &str) -> Vars {
    let input = |k: &str| inputs.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let ev = |path: &[&str]| {
        let mut v = event;
        for p in path {
            v = v.get(p)?;
        }
        v.as_str().map(str::to_string).filter(|s| !s.is_empty())
    };
    let status = input("status").unwrap_or_else(|| "success".into());
    let app = input("app").or_else(|| ev(&["repository", "full_name"])).unwrap_or_default();
    let git_ref = input("ref").or_else(|| ev(&["ref"])).unwrap_or_default();
    let branch = ev(&["branch"]).or_else(|| ev(&["tag"])).unwrap_or_else(|| short_ref(&git_ref).to_string());
    let commit = input("commit")
        .or_else(|| ev(&["after"]))
        .or_else(|| ev(&["body", "checkout_sha"]))
        .or_else(|| ev(&["body", "sha"]))
        .unwrap_or_default();
    let short_commit: String = commit.chars().take(7).collect();
    let author = input("author").or_else(|| ev(&["sender"])).unwrap_or_default();
    let commit_message = ev(&["body", "head_commit", "message"])
        .or_else(|| ev(&["pull_request", "title"]))
        .map(|m| m.lines().next().unwrap_or("").to_string())
        .unwrap_or_default();
    let repo_url = ev(&["repository", "html_url"]).unwrap_or_default();
    let commit_url =
        if repo_url.is_empty() || commit.is_empty() { String::new() } else { format!("{repo_url}/commit/{commit}") };
    let duration = input("duration").map(|d| human_duration(&d)).unwrap_or_default();
    let link = input("link").unwrap_or_default();
    let subject = if app.is_empty() { "Pipeline".to_string() } else { app.clone() };
    let mut vars = Vars::new();
    vars.insert("status_emoji", status_emoji(&status).into());
    vars.insert("title", String::new());
    vars.insert("status", status);
    vars.insert("app", app);
    vars.insert("ref", git_ref);
    vars.insert("branch", branch);
    vars.insert("commit", commit);
    vars.insert("short_commit", short_commit);
    vars.insert("author", author);
    vars.insert("commit_message", commit_message);
    vars.insert("repo_url", repo_url);
    vars.insert("commit_url", commit_url);
    vars.insert("duration", duration);
    vars.insert("link", link);
    vars.insert("run_id", run_id.into());
    vars.insert("step_id", step_id.into());
    vars.insert("event", ev(&["name"]).unwrap_or_default());
    let default_title = format!("{subject} {}", vars["status"]);
    vars.insert("title", default_title);
    vars
}

fn short_ref(r: &str) -> &str {
    r.strip_prefix("refs/heads/").or_else(|| r.strip_prefix("refs/tags/")).unwrap_or(r)
}

fn status_emoji(status: &str) -> &'static str {
    match status.to_ascii_lowercase().as_str() {
        "success" | "succeeded" | "passed" | "ok" => "✅",
        "failure" | "failed" | "error" => "❌",
        "cancelled" | "canceled" | "skipped" => "⚪",
        _ => "ℹ️",
    }
}

/// `75` (seconds) → `1m 15s`; anything else is kept as written (`3m`, `1.2s`).
pub fn human_duration(d: &str) -> String {
    let Ok(secs) = d.trim().parse::<u64>() else { return d.to_string() };
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_event_fills_what_inputs_leave_out() {
        let event = json!({
            "name": "push", "ref": "refs/heads/main", "branch": "main",
            "after": "0123456789abcdef", "sender": "octo",
            "repository": {"full_name": "acme/web", "html_url": "https://git.example.com/acme/web"},
            "body": {"head_commit": {"message": "Fix it\n\nlong text"}}
        });
        let inputs = BTreeMap::from([("status".to_string(), "failure".to_string()), ("duration".into(), "75".into())]);
        let v = collect(&inputs, &event, "r1", "s1");
        assert_eq!(v["app"], "acme/web");
        assert_eq!(v["title"], "acme/web failure");
        assert_eq!(v["short_commit"], "0123456");
        assert_eq!(v["branch"], "main");
        assert_eq!(v["commit_message"], "Fix it");
        assert_eq!(v["commit_url"], "https://git.example.com/acme/web/commit/0123456789abcdef");
        assert_eq!(v["duration"], "1m 15s");
        assert_eq!(v["status_emoji"], "❌");
        let v = collect(&BTreeMap::from([("app".into(), "mine".into())]), &Value::Null, "r", "s");
        assert_eq!((v["app"].as_str(), v["status"].as_str(), v["ref"].as_str()), ("mine", "success", ""));
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human_duration("5"), "5s");
        assert_eq!(human_duration("3725"), "1h 2m 5s");
        assert_eq!(human_duration("3m"), "3m");
    }
}
