//! Trigger matching, CEL filters and glob patterns over arbitrary apps, events and names.
//!
//! Input, in NUL-separated parts: the apps (a JSON list; anything else is taken as the source
//! of a CEL filter on an app with every trigger), the event (a request as in the webhook
//! target, normalized; else an `Event` as JSON; else a push carrying the text as its body),
//! glob patterns (one a line), and names to match them against (one a line).
//!
//! Nothing may panic; apps, patterns and decisions must survive a JSON round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_edge_core::{
    App, Decision, Event, EventKind, Filter, Headers, Patterns, Provider, PushTrigger, Triggers, decide,
    decide_with_headers, detect_provider, normalize,
};
use skiff_fuzz::{parts, signed_headers, split_request};

fn apps(text: &[u8]) -> Vec<App> {
    if let Ok(apps) = serde_json::from_slice::<Vec<App>>(text) {
        return apps;
    }
    let source = String::from_utf8_lossy(text);
    let Ok(filter) = Filter::new(source.as_ref()) else { return Vec::new() };
    assert_eq!(filter.source(), source);
    let on = Triggers {
        push: Some(PushTrigger::default()),
        pull_request: Some(Default::default()),
        release: Some(Default::default()),
        tag: Some(Default::default()),
        custom: Some(Default::default()),
        schedule: Vec::new(),
        workflow_dispatch: None,
        filter: Some(filter),
    };
    vec![App { name: "filtered".into(), environment: None, repository: None, on }]
}

fn event(text: &[u8]) -> (Event, Headers) {
    let (pairs, body) = split_request(text);
    let headers = signed_headers(&pairs, body);
    let provider = detect_provider(&headers).unwrap_or(Provider::Github);
    if let Ok(event) = normalize(provider, &headers, body) {
        return (event, headers);
    }
    if let Ok(event) = serde_json::from_slice::<Event>(text) {
        return (event, Headers::new());
    }
    let body = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let branch = pairs.first().map(|(k, _)| k.clone());
    let event = Event {
        provider,
        kind: EventKind::Push,
        name: "push".into(),
        delivery_id: "fuzz".into(),
        repository: None,
        git_ref: branch.as_ref().map(|b| format!("refs/heads/{b}")),
        branch,
        tag: None,
        before: None,
        after: None,
        deleted: false,
        pull_request: None,
        changed_paths: Some(pairs.iter().map(|(_, v)| v.clone()).collect()),
        sender: None,
        body,
    };
    (event, headers)
}

fn check_patterns(p: &Patterns, names: &[&str]) {
    let json = serde_json::to_value(p).expect("patterns serialize");
    let back: Patterns = serde_json::from_value(json).expect("serialized patterns read back");
    assert_eq!(&back, p);
    for n in names {
        assert_eq!(back.matches(n), p.matches(n), "`{n}` against {p}");
    }
    let _ = p.matches_any(names.iter().copied());
    let _ = p.to_string();
}

fuzz_target!(|data: &[u8]| {
    let p = parts(data, 4);
    let apps = apps(p[0]);
    for app in &apps {
        let json = serde_json::to_string(app).expect("an app serializes");
        let back: App = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json} does not read back: {e}"));
        assert_eq!(&back, app);
        let _ = app.label();
    }

    let (event, headers) = event(p.get(1).copied().unwrap_or_default());
    let decisions = decide_with_headers(&event, &headers, &apps);
    assert_eq!(decisions.len(), apps.len());
    for (d, app) in decisions.iter().zip(&apps) {
        assert_eq!(d.app(), app.name);
        assert_eq!(d.environment(), app.environment.as_deref());
        let back: Decision = serde_json::from_value(serde_json::to_value(d).unwrap()).unwrap();
        assert_eq!(&back, d);
    }
    assert_eq!(decide(&event, &apps).len(), apps.len());

    let text = |i: usize| String::from_utf8_lossy(p.get(i).copied().unwrap_or_default()).into_owned();
    let (globs, names) = (text(2), text(3));
    let globs: Vec<&str> = globs.lines().collect();
    let mut names: Vec<&str> = names.lines().collect();
    names.extend(event.branch.as_deref());
    names.extend(event.tag.as_deref());
    names.extend(event.changed_paths.iter().flatten().map(String::as_str));
    if let Ok(p) = Patterns::globs(globs.iter().copied()) {
        check_patterns(&p, &names);
    }
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (precise, rest) = globs.split_at(globs.len() / 2);
    if let Ok(p) = Patterns::structured(owned(precise), owned(rest), owned(rest)) {
        check_patterns(&p, &names);
    }
});
