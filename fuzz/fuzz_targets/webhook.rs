//! Webhooks: verification, normalization, the decision and the signed dispatch, for every
//! provider scheme. Input: a request (see `skiff_fuzz`), its placeholders filled in so that
//! fuzzed bodies stay genuine.
//!
//! Nothing may panic; the one-call entry must agree with `verify`; a dispatch the master signs
//! must verify on the host; every normalized event must survive the JSON trip to the host.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use skiff_edge_core::{
    App, Event, Headers, MasterConfig, Outcome, Provider, Secret, VerifyOptions, decide_with_headers, detect_provider,
    handle_webhook, normalize, verify, verify_dispatch,
};
use skiff_fuzz::{DISPATCH_KEY, NOW, SECRET, SW_SECRET, signed_headers, split_request};

/// Apps with every kind of trigger, globs in both forms, and CEL filters over body, headers
/// and event.
const APPS: &str = r#"[
  {"name": "all", "on": ["push", "pull_request", "release", "tag", "custom"]},
  {"name": "web", "environment": "prod", "repository": ["acme/*", "!acme/old"], "on": {
    "push": {"branches": ["main", "release/**"], "tags": "v*", "paths-ignore": ["docs/**", "**.md"]},
    "pull_request": {"types": ["opened", "synchronize", "closed"],
                     "branches": {"precise": ["main"], "prefix": ["rel-"], "exclude": ["rel-old*"]}},
    "release": {"tags": "v*"},
    "tag": {"tags": ["v[0-9]*"], "tags-ignore": "*-rc*"},
    "custom": {"types": ["com.example.*"], "sources": ["/registry/**"]}}},
  {"name": "filtered", "on": {
    "push": {"filter": "body.ref in [\"refs/heads/master\", \"refs/heads/main\"] && size(body.commits) > 0"},
    "pull_request": {"filter": "body.pull_request.head.ref.startsWith('feat') || has(body.pull_request.draft)"},
    "filter": "has(event.sender) || headers[\"content-type\"].startsWith(\"application/\")"}},
  {"name": "whole-body", "on": {"push": {}, "pull_request": {}, "custom": {},
    "filter": "size(body) > 1 || event.kind.type == 'custom' || body[\"ref\"] != ''"}}
]"#;

static CONFIG: LazyLock<MasterConfig> = LazyLock::new(|| {
    let apps: Vec<App> = serde_json::from_str(APPS).expect("the fuzz apps are valid");
    MasterConfig::new(Secret::new(SECRET).with_previous(SW_SECRET), Secret::new(DISPATCH_KEY), apps)
});

fuzz_target!(|data: &[u8]| {
    let (pairs, body) = split_request(data);
    let headers = signed_headers(&pairs, body);
    let config = &*CONFIG;

    let detected = detect_provider(&headers);
    let verified = verify(&headers, body, &config.secret, NOW, &VerifyOptions::default());
    if let Ok(p) = verified {
        assert_eq!(Some(p), detected, "verify accepts only the detected provider");
    }
    let outcome = handle_webhook(config, &headers, body, NOW);
    match (&verified, &outcome) {
        (Err(e), Outcome::Rejected(r)) => assert_eq!(e, r),
        (Err(e), _) => panic!("verify refuses ({e}) what handle_webhook accepts"),
        (Ok(_), Outcome::Rejected(r)) => panic!("handle_webhook rejects ({r}) what verify accepts"),
        (Ok(_), _) => {}
    }
    assert!(matches!(outcome.status(), 200 | 202 | 400 | 401 | 413 | 500), "{}", outcome.status());
    let response: serde_json::Value =
        serde_json::from_slice(&outcome.response_body()).expect("the response body is JSON");
    assert_eq!(response["status"], outcome.status());
    if let Some(event) = outcome.event() {
        assert_eq!(
            outcome.decisions().len(),
            if event.kind == skiff_edge_core::EventKind::Ping { 0 } else { config.apps.len() }
        );
    }
    for request in outcome.requests() {
        let h = Headers::from_pairs(request.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let dispatch = verify_dispatch(&h, &request.body, &config.dispatch_key, NOW, 300)
            .unwrap_or_else(|e| panic!("the host refuses a dispatch the master signed: {e}"));
        assert_eq!(dispatch.id, request.id);
    }

    // Past the signature: every provider's reader on the same (attacker-controlled) payload.
    for provider in Provider::ALL {
        match normalize(provider, &headers, body) {
            Ok(event) => {
                let _ = event.summary();
                let decisions = decide_with_headers(&event, &headers, &config.apps);
                assert_eq!(decisions.len(), config.apps.len());
                for d in &decisions {
                    let _ = serde_json::to_vec(d).expect("a decision serializes");
                }
                let json = serde_json::to_vec(&event).expect("an event serializes");
                if let Err(e) = serde_json::from_slice::<Event>(&json) {
                    panic!("a normalized {provider} event does not read back: {e}");
                }
            }
            Err(e) => {
                assert_eq!(e.status(), 400);
                let _ = e.to_string();
            }
        }
    }
});
