//! One constructor for every run: a webhook taken in by this host, a master's dispatch, a manual
//! run through the API, a schedule, and `skiff run`. Each builds a [`RunRequest`]; its
//! [`RunEvent`] gives the `event` context one shape whatever started the run: `name`, `ref`,
//! `branch`, `tag`, `sha`, `app`, `repository`, `sender` and `environment` are always there
//! (`null` when unknown), and what only some events have (a webhook's `provider`, `kind`,
//! `delivery_id`, `pull_request`, `changed_paths`; a schedule's `schedule` and `time`) beside.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use skiff_edge_core::{Dispatch, Event, Headers, Provider, Repository, normalize};

use crate::store::NewRun;

/// What started a run, as its steps and expressions see it (`event`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunEvent {
    /// The event's name: the sender's (`push`, `pull_request`, `Push Hook`), or `manual`,
    /// `schedule`.
    pub name: String,
    /// The full Git ref (`refs/heads/main`).
    pub git_ref: Option<String>,
    /// The commit.
    pub sha: Option<String>,
    /// The repository, where known.
    pub repository: Option<Repository>,
    /// Who caused it: the Git host's user, or the API token's name.
    pub sender: Option<String>,
    /// The environment a master dispatched to.
    pub environment: Option<String>,
    /// What only some events have.
    pub detail: Map<String, Value>,
}

impl RunEvent {
    /// The `event` context of a run of `app`.
    pub fn to_json(&self, app: Option<&str>) -> Value {
        let mut o = self.detail.clone();
        let from_ref = |prefix: &str| self.git_ref.as_deref().and_then(|r| r.strip_prefix(prefix)).map(String::from);
        // A pull request's ref is `refs/pull/N/head`: its branch (the head) comes from the event.
        let branch = o.get("branch").and_then(Value::as_str).map(String::from).or_else(|| from_ref("refs/heads/"));
        let tag = o.get("tag").and_then(Value::as_str).map(String::from).or_else(|| from_ref("refs/tags/"));
        o.insert("name".into(), self.name.clone().into());
        o.insert("ref".into(), self.git_ref.clone().into());
        o.insert("branch".into(), branch.into());
        o.insert("tag".into(), tag.into());
        o.insert("sha".into(), self.sha.clone().unwrap_or_default().into());
        o.insert("app".into(), app.map(String::from).into());
        o.insert("repository".into(), self.repository.as_ref().map_or(Value::Null, |r| json!(r)));
        o.insert("sender".into(), self.sender.clone().into());
        o.insert("environment".into(), self.environment.clone().into());
        Value::Object(o)
    }
}

/// A run to start, from whatever asked for it.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// The app.
    pub app: String,
    /// `push`, `tag`, `pull_request`, `manual`, `schedule`, …
    pub trigger: String,
    /// Why it runs, in a sentence.
    pub reason: String,
    /// The `event` context.
    pub event: RunEvent,
    /// The `body` context: the payload as sent.
    pub body: Value,
    /// The `inputs` context.
    pub inputs: BTreeMap<String, String>,
    /// A second request with the same key starts no second run.
    pub dispatch_id: Option<String>,
    /// Who asked: `webhook`, `dispatch`, `cron`, or a token's name.
    pub requested_by: String,
}

impl RunRequest {
    /// A run for a dispatch: a master's (`requested_by` = `dispatch`) or this host's own
    /// `/hooks` (`webhook`).
    pub fn from_dispatch(d: &Dispatch, requested_by: &str) -> Self {
        let e: &Event = &d.event;
        let mut detail = match serde_json::to_value(e) {
            Ok(Value::Object(o)) => o,
            _ => Map::new(),
        };
        let body = detail.remove("body").unwrap_or_default();
        let trigger = serde_json::to_value(&e.kind)
            .ok()
            .and_then(|k| k.get("type").and_then(|t| t.as_str()).map(String::from))
            .unwrap_or_else(|| "custom".into());
        RunRequest {
            app: d.app.clone(),
            trigger,
            reason: d.reason.clone(),
            event: RunEvent {
                name: e.name.clone(),
                git_ref: e.git_ref.clone(),
                sha: e.after.clone(),
                repository: e.repository.clone(),
                sender: e.sender.clone(),
                environment: d.environment.clone(),
                detail,
            },
            body,
            inputs: BTreeMap::new(),
            dispatch_id: Some(d.id.clone()),
            requested_by: requested_by.into(),
        }
    }

    /// A run started by hand through the API by the token named `caller`; `key` is the
    /// request's `Idempotency-Key`.
    pub fn manual(
        app: &str,
        caller: &str,
        git_ref: Option<String>,
        sha: Option<String>,
        repository: Option<String>,
        inputs: BTreeMap<String, String>,
        key: Option<&str>,
    ) -> Self {
        RunRequest {
            app: app.into(),
            trigger: "manual".into(),
            reason: format!("started by `{caller}` through the API"),
            event: RunEvent {
                name: "manual".into(),
                git_ref,
                sha,
                repository: repository.map(|full_name| Repository { full_name, ..Repository::default() }),
                sender: Some(caller.into()),
                ..RunEvent::default()
            },
            body: json!({ "inputs": inputs }),
            inputs,
            dispatch_id: key.map(|k| format!("manual:{app}:{k}")),
            requested_by: caller.into(),
        }
    }

    /// A run of `app` for its schedule `cron`, due at `time` (RFC 3339; `at` in Unix seconds).
    pub fn schedule(app: &str, cron: &str, time: &str, at: i64, repository: Option<String>) -> Self {
        let mut detail = Map::new();
        detail.insert("schedule".into(), cron.into());
        detail.insert("time".into(), time.into());
        RunRequest {
            app: app.into(),
            trigger: "schedule".into(),
            reason: format!("schedule `{cron}` at {time}"),
            event: RunEvent {
                name: "schedule".into(),
                repository: repository.map(|full_name| Repository { full_name, ..Repository::default() }),
                sender: Some("cron".into()),
                detail,
                ..RunEvent::default()
            },
            body: Value::Null,
            inputs: BTreeMap::new(),
            dispatch_id: Some(format!("cron:{app}:{cron}:{at}")),
            requested_by: "cron".into(),
        }
    }

    /// A run on this machine (`skiff run`): an event named `name` (`push`, `manual`, …) for the
    /// payload `body` (`{}` without `--event`); `git_ref` (`main` or a full ref) wins over the
    /// payload's. The payload is read as the edge core reads a GitHub-style one, so its commit,
    /// repository and sender are where a webhook run has them; GitLab's `project` names the
    /// repository too.
    pub fn local(name: &str, git_ref: Option<&str>, body: Value) -> Self {
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let headers = Headers::from_pairs([("x-github-event", name)]);
        let read = normalize(Provider::Github, &headers, &bytes).ok();
        let git_ref = git_ref
            .map(|r| if r.starts_with("refs/") { r.to_string() } else { format!("refs/heads/{r}") })
            .or_else(|| body.get("ref").and_then(Value::as_str).map(String::from));
        let sha = body
            .get("after")
            .or_else(|| body.pointer("/head_commit/id"))
            .or_else(|| body.pointer("/pull_request/head/sha"))
            .and_then(Value::as_str)
            .map(String::from);
        let repository = read.as_ref().and_then(|e| e.repository.clone()).or_else(|| {
            let p = body.get("project")?;
            let full_name = p.get("path_with_namespace")?.as_str()?.to_string();
            let text = |k: &str| p.get(k).and_then(Value::as_str).map(String::from);
            Some(Repository {
                full_name,
                clone_url: text("git_http_url"),
                ssh_url: text("git_ssh_url"),
                html_url: text("web_url"),
                default_branch: text("default_branch"),
            })
        });
        // A pull request payload's pull request, as a webhook run has it (its base branch is what
        // the run's cache reads after its own).
        let mut detail = Map::new();
        if let Some(pr) = read.as_ref().and_then(|e| e.pull_request.as_ref()) {
            detail.insert("pull_request".into(), json!(pr));
        }
        RunRequest {
            app: String::new(),
            trigger: name.into(),
            reason: "started on this machine (`skiff run`)".into(),
            event: RunEvent {
                name: name.into(),
                git_ref,
                sha,
                repository,
                sender: read.and_then(|e| e.sender),
                detail,
                ..RunEvent::default()
            },
            body,
            inputs: BTreeMap::new(),
            dispatch_id: None,
            requested_by: "skiff run".into(),
        }
    }

    /// The `event` context (for a local run, `app` is `null`).
    pub fn event_json(&self) -> Value {
        self.event.to_json(Some(self.app.as_str()).filter(|a| !a.is_empty()))
    }

    /// The run to store.
    pub fn into_new_run(self) -> NewRun {
        let event = self.event_json();
        NewRun {
            app: self.app,
            trigger: self.trigger,
            reason: self.reason,
            git_ref: self.event.git_ref,
            sha: self.event.sha,
            dispatch_id: self.dispatch_id,
            inputs: self.inputs,
            event,
            body: self.body,
            requested_by: Some(self.requested_by),
            ..NewRun::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALWAYS: [&str; 9] = ["name", "ref", "branch", "tag", "sha", "app", "repository", "sender", "environment"];

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    fn push_dispatch() -> Dispatch {
        let body = br#"{"ref":"refs/heads/main","before":"0000","after":"1111",
            "repository":{"full_name":"acme/web"},"sender":{"login":"octocat"}}"#;
        let headers = Headers::from_pairs([("x-github-event", "push"), ("x-github-delivery", "d-1")]);
        let event = normalize(Provider::Github, &headers, body).unwrap();
        Dispatch {
            id: "d-1:web".into(),
            app: "web".into(),
            environment: Some("prod".into()),
            reason: "push to main".into(),
            event,
        }
    }

    #[test]
    fn every_origin_gives_the_event_one_shape() {
        let all = [
            RunRequest::from_dispatch(&push_dispatch(), "dispatch"),
            RunRequest::manual(
                "web",
                "ci",
                Some("refs/heads/main".into()),
                None,
                Some("acme/web".into()),
                [].into(),
                None,
            ),
            RunRequest::schedule("web", "0 * * * *", "2026-11-30T19:00:00+00:00", 1, Some("acme/web".into())),
            RunRequest::local("manual", Some("main"), json!({})),
        ];
        for r in &all {
            let e = r.event_json();
            for k in ALWAYS {
                assert!(e.get(k).is_some(), "`{k}` missing from the {} event: {e}", r.trigger);
            }
            assert!(e["sha"].is_string(), "{e}");
        }
        let [webhook, manual, schedule, local] = all.map(|r| r.event_json());
        assert_eq!(webhook["repository"]["full_name"], "acme/web");
        assert_eq!(manual["repository"]["full_name"], "acme/web");
        assert_eq!(schedule["repository"]["full_name"], "acme/web");
        assert_eq!((webhook["branch"].as_str(), webhook["sha"].as_str()), (Some("main"), Some("1111")));
        assert_eq!((webhook["environment"].as_str(), webhook["app"].as_str()), (Some("prod"), Some("web")));
        assert_eq!(webhook["sender"], "octocat");
        assert_eq!((manual["branch"].as_str(), manual["sender"].as_str()), (Some("main"), Some("ci")));
        assert_eq!((schedule["schedule"].as_str(), schedule["tag"].clone()), (Some("0 * * * *"), Value::Null));
        assert_eq!((local["ref"].as_str(), local["app"].clone()), (Some("refs/heads/main"), Value::Null));
        // What only a webhook has is kept beside the common keys.
        assert!(keys(&webhook).contains(&"delivery_id") && keys(&webhook).contains(&"provider"), "{webhook}");
    }

    #[test]
    fn a_pull_request_keeps_its_head_branch_and_a_local_payload_its_repository() {
        let body = json!({"action": "opened", "number": 3,
            "pull_request": {"number": 3, "title": "t", "head": {"ref": "feature", "sha": "abc"}, "base": {"ref": "main", "sha": "def"}},
            "repository": {"full_name": "acme/web"}, "sender": {"login": "octocat"}});
        let r = RunRequest::local("pull_request", None, body);
        let e = r.event_json();
        assert_eq!((e["sha"].as_str(), e["repository"]["full_name"].as_str()), (Some("abc"), Some("acme/web")), "{e}");
        assert_eq!(e["sender"], "octocat");
        assert_eq!(
            (e["pull_request"]["base_ref"].as_str(), e["pull_request"]["head_ref"].as_str()),
            (Some("main"), Some("feature"))
        );
        let gitlab = RunRequest::local("push", None, json!({"project": {"path_with_namespace": "g/sub/p"}}));
        assert_eq!(gitlab.event_json()["repository"]["full_name"], "g/sub/p");
        let run = RunRequest::from_dispatch(&push_dispatch(), "webhook").into_new_run();
        assert_eq!((run.sha.as_deref(), run.git_ref.as_deref()), (Some("1111"), Some("refs/heads/main")));
        assert_eq!((run.trigger.as_str(), run.requested_by.as_deref()), ("push", Some("webhook")));
        assert!(run.body.get("ref").is_some() && run.event.get("body").is_none());
    }
}
