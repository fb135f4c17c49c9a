//! Property tests: nothing panics on hostile input, and signing round-trips.

use proptest::prelude::*;
use serde_json::Value;
use skiff_edge_core::{
    App, Headers, MasterConfig, Patterns, Provider, Secret, VerifyOptions, decide, handle_webhook, normalize,
    sign_dispatch, standard_webhooks_signature, verify, verify_dispatch,
};

const HEADER_NAMES: &[&str] = &[
    "x-github-event",
    "x-hub-signature-256",
    "x-hub-signature",
    "x-gitlab-event",
    "x-gitlab-token",
    "x-gitee-event",
    "x-gitee-token",
    "x-gitee-timestamp",
    "x-gitea-event",
    "x-gitea-signature",
    "x-forgejo-event",
    "x-forgejo-signature",
    "x-codeup-event",
    "x-codeup-token",
    "x-event-key",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "ce-specversion",
    "ce-type",
    "ce-source",
    "ce-id",
    "content-type",
    "authorization",
];

const EVENT_NAMES: &[&str] = &[
    "push",
    "pull_request",
    "release",
    "ping",
    "Push Hook",
    "Tag Push Hook",
    "Merge Request Hook",
    "Release Hook",
    "repo:push",
    "pullrequest:fulfilled",
    "application/cloudevents+json",
];

const KEYS: &[&str] = &[
    "ref",
    "before",
    "after",
    "commits",
    "added",
    "modified",
    "removed",
    "repository",
    "full_name",
    "pull_request",
    "head",
    "base",
    "number",
    "action",
    "object_kind",
    "object_attributes",
    "source_branch",
    "target_branch",
    "push",
    "changes",
    "new",
    "old",
    "name",
    "type",
    "target",
    "hash",
    "pullrequest",
    "source",
    "destination",
    "branch",
    "commit",
    "id",
    "specversion",
    "project",
    "path_with_namespace",
    "homepage",
    "release",
    "tag_name",
    "total_commits_count",
    "deleted",
];

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![prop::sample::select(HEADER_NAMES).prop_map(str::to_owned), "[a-zA-Z-]{1,12}"];
    let value = prop_oneof![
        prop::sample::select(EVENT_NAMES).prop_map(str::to_owned),
        "sha256=[0-9a-f]{0,70}",
        "v1,[A-Za-z0-9+/=]{0,50}( v1,[A-Za-z0-9+/=]{0,50})?",
        "-?[0-9]{0,20}",
        "Bearer .{0,10}",
        ".{0,30}",
    ];
    prop::collection::vec((name, value), 0..8)
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "(refs/heads/|refs/tags/)?[a-z0-9/]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

fn all_apps() -> Vec<App> {
    serde_json::from_str(
        r#"[
            {"name": "a", "on": ["push", "pull_request", "release", "tag", "custom"]},
            {"name": "b", "on": {"push": {"branches": ["main"], "paths": ["src/**"]}, "filter": "body.ref == 'refs/heads/main'"}}
        ]"#,
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn verify_never_panics(h in headers(), body in prop::collection::vec(any::<u8>(), 0..256), now in any::<i64>()) {
        let headers = Headers::from_pairs(h);
        let _ = verify(&headers, &body, &Secret::new("s"), now, &VerifyOptions::default());
    }

    #[test]
    fn normalize_never_panics_on_bytes(h in headers(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        let headers = Headers::from_pairs(h);
        for p in Provider::ALL {
            let _ = normalize(p, &headers, &body);
        }
    }

    #[test]
    fn normalize_and_decide_never_panic_on_json(h in headers(), event_name in prop::sample::select(EVENT_NAMES), body in json()) {
        let mut headers = Headers::from_pairs(h);
        for p in Provider::ALL {
            if let Some(header) = p.event_header() {
                headers.append(header, event_name);
            }
        }
        let bytes = serde_json::to_vec(&body).unwrap();
        let apps = all_apps();
        for p in Provider::ALL {
            if let Ok(event) = normalize(p, &headers, &bytes) {
                let _ = decide(&event, &apps);
            }
        }
    }

    #[test]
    fn handle_webhook_never_panics_and_answers_a_known_status(h in headers(), body in json(), now in any::<i64>()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        let cfg = MasterConfig::new(Secret::new("s"), Secret::new("k"), all_apps());
        let out = handle_webhook(&cfg, &Headers::from_pairs(h), &bytes, now);
        prop_assert!([200, 202, 400, 401, 413, 500].contains(&out.status()));
    }

    /// A correctly signed Standard Webhooks message with arbitrary JSON is accepted, and
    /// whatever it contains, normalizing and deciding do not panic.
    #[test]
    fn signed_standard_webhooks_verify(id in "[a-zA-Z0-9_]{1,30}", body in json(), ts in 0i64..4_000_000_000) {
        let bytes = serde_json::to_vec(&body).unwrap();
        let key = "whsec_c2VjcmV0LWtleS1mb3ItcHJvcHRlc3Q=";
        let sig = standard_webhooks_signature(key.as_bytes(), &id, ts, &bytes);
        let ts_text = ts.to_string();
        let headers = Headers::from_pairs([("webhook-id", id.as_str()), ("webhook-timestamp", ts_text.as_str()), ("webhook-signature", sig.as_str())]);
        prop_assert_eq!(verify(&headers, &bytes, &Secret::new(key), ts, &VerifyOptions::default()), Ok(Provider::StandardWebhooks));
        let cfg = MasterConfig::new(Secret::new(key), Secret::new("k"), all_apps());
        let out = handle_webhook(&cfg, &headers, &bytes, ts);
        prop_assert!([200, 202, 400].contains(&out.status()), "{}", out.message());
    }

    #[test]
    fn sign_then_verify_dispatch_round_trips(
        delivery in ".{1,40}",
        app in "[a-z][a-z0-9-]{0,20}",
        env in prop::option::of("[a-z]{1,10}"),
        body in json(),
        now in 0i64..4_000_000_000,
        skew in -300i64..=300,
        key in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let headers = Headers::from_pairs([("webhook-id", delivery.as_str())]);
        let bytes = serde_json::to_vec(&serde_json::json!({"type": "t", "data": body})).unwrap();
        let event = normalize(Provider::StandardWebhooks, &headers, &bytes).unwrap();
        let decision = skiff_edge_core::Decision::Dispatch { app: app.clone(), environment: env.clone(), reason: "r".into() };
        let dispatch = skiff_edge_core::Dispatch::new(&event, &decision).unwrap();
        let key = Secret::new(key);
        let req = sign_dispatch(&dispatch, &key, now);
        let h = Headers::from_pairs(req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let back = verify_dispatch(&h, &req.body, &key, now + skew, 300);
        prop_assert_eq!(back.as_ref(), Ok(&dispatch));
        // One flipped byte is always caught.
        let mut tampered = req.body.clone();
        let i = req.body.len() / 2;
        tampered[i] ^= 0x01;
        prop_assert!(verify_dispatch(&h, &tampered, &key, now, 300).is_err());
    }

    #[test]
    fn patterns_never_panic(pattern in ".{0,20}", name in ".{0,20}") {
        if let Ok(p) = Patterns::globs([pattern.as_str()]) {
            let _ = p.matches(&name);
        }
        if let Ok(p) = Patterns::structured(vec![pattern.clone()], vec![pattern.clone()], vec![pattern]) {
            let _ = p.matches(&name);
        }
    }
}
