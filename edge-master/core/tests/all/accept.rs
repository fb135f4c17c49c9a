//! `accept`: the webhook path without signing, answering as `handle_webhook` does.

use skiff_edge_core::{
    Accepted, App, Decision, NormalizeError, Provider, VerifyError, VerifyOptions, accept, handle_webhook,
};

use crate::fixtures::{Recorded, apps, load, master, secret_for, sign};

const APPS: &str = r#"
- name: web
  on: { push: { branches: [main] } }
- name: docs
  on: { push: { branches: [docs] } }
"#;

fn accepted(provider: &str, rec: &Recorded, apps: &[App]) -> Accepted {
    accept(&secret_for(provider), &VerifyOptions::default(), apps, &rec.headers, &rec.body, crate::fixtures::NOW)
}

/// `accept` answers exactly what `handle_webhook` answers for the same webhook.
fn answers_as_handle_webhook(provider: &str, rec: &Recorded, apps: Vec<App>, accepted: &Accepted) {
    let outcome = handle_webhook(&master(provider, apps), &rec.headers, &rec.body, crate::fixtures::NOW);
    assert_eq!(accepted.status(), outcome.status());
    assert_eq!(accepted.message(), outcome.message());
    assert_eq!(accepted.response_body(), outcome.response_body());
    assert_eq!(accepted.decisions(), outcome.decisions());
    assert_eq!(accepted.event(), outcome.event());
}

#[test]
fn a_ping_is_answered_200_pong_with_no_decisions() {
    let rec = load("github", "ping");
    let out = accepted("github", &rec, &apps(APPS));
    let Accepted::Ping { event } = &out else { panic!("{out:?}") };
    assert_eq!(out.status(), 200);
    assert_eq!(out.message(), "pong: the GitHub webhook reaches the Skiff master");
    assert!(out.decisions().is_empty());
    let body: serde_json::Value = serde_json::from_slice(&out.response_body()).unwrap();
    assert_eq!(body["decisions"], serde_json::json!([]));
    assert_eq!(body["delivery_id"], serde_json::json!(event.delivery_id));
    answers_as_handle_webhook("github", &rec, apps(APPS), &out);
}

#[test]
fn a_bad_signature_is_rejected_401() {
    let rec = load("github", "push");
    let wrong = skiff_edge_core::Secret::new("not-the-secret");
    let out = accept(&wrong, &VerifyOptions::default(), &apps(APPS), &rec.headers, &rec.body, crate::fixtures::NOW);
    assert_eq!(
        out,
        Accepted::Rejected(VerifyError::BadSignature { provider: Provider::Github, header: "x-hub-signature-256" })
    );
    assert_eq!(out.status(), 401);
    assert!(out.event().is_none() && out.decisions().is_empty());
    let body: serde_json::Value = serde_json::from_slice(&out.response_body()).unwrap();
    assert_eq!(body, serde_json::json!({"status": 401, "message": out.message()}));

    let tampered = Recorded { body: [rec.body.as_slice(), b" "].concat(), ..rec };
    assert!(matches!(accepted("github", &tampered, &apps(APPS)), Accepted::Rejected(_)));
}

#[test]
fn a_genuine_but_unreadable_body_is_400() {
    let raw = vec![
        ("X-GitHub-Event".to_owned(), "push".to_owned()),
        ("X-GitHub-Delivery".to_owned(), "d-bad".to_owned()),
        ("X-Hub-Signature-256".to_owned(), "sha256={{hmac_hex}}".to_owned()),
    ];
    let rec = sign(raw, br#"{"ref": "refs/heads/main", "commits": [}"#.to_vec());
    let out = accepted("github", &rec, &apps(APPS));
    let Accepted::BadRequest { provider: Provider::Github, error: NormalizeError::MalformedJson { .. } } = &out else {
        panic!("{out:?}")
    };
    assert_eq!(out.status(), 400);
    answers_as_handle_webhook("github", &rec, apps(APPS), &out);
}

#[test]
fn a_push_is_decided_for_each_app_without_signing() {
    let rec = load("github", "push");
    let all = apps(APPS);
    let out = accepted("github", &rec, &all);
    let Accepted::Decided { event, decisions } = &out else { panic!("{out:?}") };
    assert_eq!(decisions.len(), 2);
    assert!(matches!(&decisions[0], Decision::Dispatch { app, .. } if app == "web"));
    assert!(matches!(&decisions[1], Decision::Ignore { app, .. } if app == "docs"));
    assert_eq!(out.status(), 202);
    assert_eq!(out.message(), format!("accepted: 1 run(s) requested ({}:web)", event.delivery_id));
    answers_as_handle_webhook("github", &rec, all.clone(), &out);

    // A host's `/hooks/docs` asks only that app: nothing to run, 200 with the reason.
    let docs = accepted("github", &rec, std::slice::from_ref(&all[1]));
    assert_eq!(docs.status(), 200);
    assert!(docs.message().starts_with("ignored: "), "{}", docs.message());
    answers_as_handle_webhook("github", &rec, vec![all[1].clone()], &docs);

    let none = accepted("github", &rec, &[]);
    assert_eq!((none.status(), none.message().as_str()), (200, "ignored: no app is configured"));
}
