//! Trigger configuration and decisions, on recorded events.

use skiff_edge_core::{App, Decision, Event, Triggers, decide, decide_with_headers, handle_webhook, normalize, verify};

use crate::fixtures::{NOW, apps, load, master, secret_for};

fn event(dir: &str, name: &str) -> Event {
    let rec = load(dir, name);
    let p = verify(&rec.headers, &rec.body, &secret_for(dir), NOW, &Default::default()).unwrap();
    normalize(p, &rec.headers, &rec.body).unwrap()
}

fn reasons(event: &Event, yaml: &str) -> Vec<(bool, String)> {
    decide(event, &apps(yaml)).into_iter().map(|d| (d.is_dispatch(), d.reason().to_owned())).collect()
}

#[test]
fn branch_reasons_read_as_sentences() {
    let mut e = event("github", "push");
    e.branch = Some("dev".into());
    let r = reasons(&e, "- name: web\n  on:\n    push:\n      branches: [main, release/*]\n");
    assert_eq!(r, [(false, "push to `dev` does not match branches [main, release/*] of app `web`".to_string())]);
    let r = reasons(&e, "- name: web\n  on:\n    push:\n      branches-ignore: [dev]\n");
    assert_eq!(r[0].1, "push to `dev` matches branches-ignore [dev] of app `web`");
    let r = reasons(&e, "- name: web\n  on:\n    pull_request: {}\n");
    assert_eq!(r[0].1, "app `web` has no `push` trigger");
}

#[test]
fn several_apps_and_environments_each_get_a_run() {
    let rec = load("github", "push");
    let cfg = master(
        "github",
        apps(
            r#"
- name: web
  environment: staging
  on: { push: { branches: [main] } }
- name: web
  environment: production
  on: { push: { branches: [main] }, filter: 'event.sender == "release-bot"' }
- name: docs
  on: push
- name: mobile
  repository: acme/mobile
  on: push
"#,
        ),
    );
    let out = handle_webhook(&cfg, &rec.headers, &rec.body, NOW);
    assert_eq!(out.status(), 202);
    let ids: Vec<&str> = out.requests().iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["0b5c8e40-f8d1-11ef-9a3c-5a1f2b8c4d7e:web:staging", "0b5c8e40-f8d1-11ef-9a3c-5a1f2b8c4d7e:docs"]);
    let d = out.decisions();
    assert_eq!(
        d[1].reason(),
        "the filter `event.sender == \"release-bot\"` of app `web` (environment `production`) is false for this event"
    );
    assert_eq!(d[3].reason(), "the event is for `acme/web`, but app `mobile` builds [acme/mobile]");
}

#[test]
fn serverless_cd_filters_and_structured_rules_work_as_written() {
    let e = event("github", "push");
    let r = reasons(
        &e,
        r#"
- name: a
  trigger:
    push:
      branches:
        prefix: [ma]
        exclude: [maintenance]
    filter: 'body.ref in ["refs/heads/master", "refs/heads/main"]'
- name: b
  on:
    push:
      filter: 'body.ref in ["refs/heads/master"]'
- name: c
  on:
    push:
      branches: { precise: [master] }
"#,
    );
    assert_eq!(r[0], (true, "push to `main` matches the `push` trigger of app `a`".to_string()));
    assert_eq!(r[1].1, "the filter `body.ref in [\"refs/heads/master\"]` of app `b` is false for this event");
    assert_eq!(r[2].1, "push to `main` does not match branches precise [master] of app `c`");
}

#[test]
fn a_filter_that_errors_counts_as_not_matched_with_the_error_recorded() {
    let e = event("github", "push");
    let r = reasons(&e, "- name: web\n  on:\n    push: {}\n    filter: 'body.release.tag_name == \"v1\"'\n");
    assert!(!r[0].0);
    assert_eq!(
        r[0].1,
        "the filter `body.release.tag_name == \"v1\"` of app `web` could not be evaluated (No such key: release), which counts as not matched"
    );
}

#[test]
fn filters_see_headers_but_not_credentials() {
    let rec = load("gitlab", "push");
    let e = normalize(skiff_edge_core::Provider::Gitlab, &rec.headers, &rec.body).unwrap();
    let yaml = r#"
- name: a
  on: { push: {}, filter: 'headers["x-gitlab-instance"] == "https://gitlab.example.com"' }
- name: b
  on: { push: {}, filter: '"x-gitlab-token" in headers' }
"#;
    let d = decide_with_headers(&e, &rec.headers, &apps(yaml));
    assert!(d[0].is_dispatch(), "{}", d[0].reason());
    assert!(!d[1].is_dispatch(), "{}", d[1].reason());
}

#[test]
fn paths_and_paths_ignore() {
    let e = event("github", "push"); // changes src/features/f0/index.ts, src/app/*.tsx, src/lib/cart.ts
    let r = reasons(
        &e,
        r#"
- name: app
  on: { push: { paths: ["src/app/**"] } }
- name: docs
  on: { push: { paths: ["docs/**", "**.md"] } }
- name: not-only-docs
  on: { push: { paths-ignore: ["docs/**"] } }
- name: only-src
  on: { push: { paths-ignore: ["src/**"] } }
"#,
    );
    assert!(r[0].0);
    assert_eq!(r[1].1, "the push changes no path matching paths [docs/**, **.md] of app `docs`");
    assert!(r[2].0);
    assert_eq!(r[3].1, "the push changes only paths matching paths-ignore [src/**] of app `only-src`");

    // Unknown changed paths never skip a push.
    let e = event("codeup", "push");
    let r = reasons(&e, "- name: docs\n  on: { push: { paths: [docs/**] } }\n");
    assert_eq!(r[0], (true, "push to `master` matches the `push` trigger of app `docs` (changed paths unknown, so path filters were not applied)".into()));
}

#[test]
fn tags_follow_github_rules_and_the_tag_trigger() {
    let e = event("github", "push-tag");
    let r = reasons(
        &e,
        r#"
- name: all
  on: push
- name: branches-only
  on: { push: { branches: [main] } }
- name: releases
  on: { push: { tags: ["v2.*"] } }
- name: old
  on: { push: { tags: ["v1.*"] } }
- name: serverless-cd
  on: { tag: { tags: { prefix: [v] } } }
"#,
    );
    assert!(r[0].0);
    assert_eq!(
        r[1].1,
        "tag `v2.4.0` does not fire the `push` trigger of app `branches-only`, which lists only branches"
    );
    assert!(r[2].0);
    assert_eq!(r[3].1, "tag `v2.4.0` does not match tags [v1.*] of app `old`");
    assert_eq!(r[4], (true, "tag `v2.4.0` matches the `tag` trigger of app `serverless-cd`".into()));

    // A branch push does not fire a trigger that lists only tags.
    let e = event("github", "push");
    let r = reasons(&e, "- name: t\n  on: { push: { tags: [v*] } }\n");
    assert_eq!(r[0].1, "push to branch `main` does not fire the `push` trigger of app `t`, which lists only tags");
}

#[test]
fn deletions_start_nothing() {
    let mut e = event("github", "push");
    e.deleted = true;
    let r = reasons(&e, "- name: web\n  on: push\n");
    assert_eq!(r[0].1, "the push deletes branch `main`; deletions start no run");
}

#[test]
fn pull_request_types_and_target_branches() {
    let e = event("github", "pull_request"); // opened, into main
    let r = reasons(
        &e,
        r#"
- name: default
  on: pull_request
- name: closed-only
  on: { pull_request: { types: [closed] } }
- name: into-release
  on: { pull_request: { branches: [release/*] } }
- name: serverless-cd
  on: { merge_request: { actions: opened, branches: { precise: [main] } } }
"#,
    );
    assert_eq!(
        r[0],
        (true, "pull request opened into `main` matches the `pull_request` trigger of app `default`".into())
    );
    assert_eq!(r[1].1, "pull request action `opened` is not one of types [closed] of app `closed-only`");
    assert_eq!(r[2].1, "pull request into `main` does not match branches [release/*] of app `into-release`");
    assert!(r[3].0);

    // A merge is `closed` with `merged`, and `types: [merged]` catches it.
    let mut e = event("gitlab", "merge_request");
    e.kind = skiff_edge_core::EventKind::PullRequest { action: "closed".into() };
    e.pull_request.as_mut().unwrap().merged = true;
    let r = reasons(&e, "- name: m\n  on: { pull_request: { types: [merged] } }\n- name: d\n  on: pull_request\n");
    assert!(r[0].0);
    assert_eq!(
        r[1].1,
        "pull request action merged (closed) is not one of types [opened, synchronize, reopened] of app `d`"
    );
}

#[test]
fn custom_events_by_type_and_source() {
    let e = event("cloudevents", "binary");
    let r = reasons(
        &e,
        r#"
- name: storage
  on: { custom: { types: ["com.acme.storage.*"], sources: ["/storage/**"] }, filter: 'body.data.size > 1000' }
- name: deploys
  on: { custom: { types: ["com.acme.deploy.*"] } }
"#,
    );
    assert!(r[0].0, "{}", r[0].1);
    assert_eq!(
        r[1].1,
        "event type `com.acme.storage.object.created` does not match types [com.acme.deploy.*] of app `deploys`"
    );
}

#[test]
fn triggers_load_from_yaml_toml_and_json_and_refuse_unknown_fields() {
    let yaml: App = serde_norway::from_str(
        "name: web\non:\n  push:\n  pull_request:\n    types: [opened]\n  schedule:\n    - cron: '*/15 * * * *'\n",
    )
    .unwrap();
    assert!(yaml.on.push.is_some(), "`push:` with no value enables push");
    assert_eq!(yaml.on.schedule.len(), 1);

    let toml: App = toml::from_str(
        r#"
name = "web"
[on.push]
branches = ["main"]
paths-ignore = ["docs/**"]
[[on.schedule]]
cron = "0 3 * * *"
"#,
    )
    .unwrap();
    assert_eq!(toml.on.push.as_ref().unwrap().branches.as_ref().unwrap().to_string(), "[main]");

    let json: Triggers = serde_json::from_str(r#""push""#).unwrap();
    assert!(json.push.is_some());

    let err = serde_norway::from_str::<App>("name: web\non:\n  push:\n    branch: [main]\n").unwrap_err().to_string();
    assert!(err.contains("unknown field `branch`"), "{err}");
    let err = serde_norway::from_str::<App>("name: web\non: [push, workflow_run]\n").unwrap_err().to_string();
    assert!(err.contains("unknown event `workflow_run`"), "{err}");
    // Manual runs are an event a pipeline may name; webhooks never match it.
    let app = serde_norway::from_str::<App>("name: web\non: [push, workflow_dispatch]\n").unwrap();
    assert!(app.on.workflow_dispatch.is_some());
    let err = serde_norway::from_str::<App>("name: web\non:\n  push: {}\n  filter: 'body.ref in ['\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not valid CEL"), "{err}");
    let err =
        serde_norway::from_str::<App>("name: web\non:\n  push:\n    branches: ['[z-a]']\n").unwrap_err().to_string();
    assert!(err.contains("is not a valid glob"), "{err}");
    let err = serde_norway::from_str::<App>("name: web\nonn: push\n").unwrap_err().to_string();
    assert!(err.contains("unknown field `onn`"), "{err}");

    // Configuration round-trips through JSON.
    let again: App = serde_json::from_str(&serde_json::to_string(&toml).unwrap()).unwrap();
    assert_eq!(again, toml);
}

#[test]
fn schedules_and_pings_never_dispatch() {
    let e = event("github", "ping");
    let d = decide(&e, &apps("- name: web\n  on: { schedule: [{ cron: '0 * * * *' }], push: {} }\n"));
    assert!(matches!(&d[0], Decision::Ignore { reason, .. } if reason == "a ping from GitHub starts no run"));
}
