//! Requests that must not start anything, each answered with the right status.

use skiff_edge_core::{
    Headers, MAX_BODY_BYTES, NormalizeError, Outcome, Provider, Secret, VerifyError, VerifyOptions, handle_webhook,
    verify,
};

use crate::fixtures::{NOW, SECRET, apps, load, master, sign, with_header, without_header};

const APP: &str = r#"
- name: web
  on: [push, pull_request, custom]
"#;

fn answer(dir: &str, headers: &Headers, body: &[u8]) -> Outcome {
    handle_webhook(&master(dir, apps(APP)), headers, body, NOW)
}

fn rejected(out: &Outcome) -> &VerifyError {
    match out {
        Outcome::Rejected(e) => e,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn wrong_secret_is_401() {
    let rec = load("github", "push");
    let cfg = skiff_edge_core::MasterConfig::new(Secret::new("not-the-secret"), Secret::new("k"), apps(APP));
    let out = handle_webhook(&cfg, &rec.headers, &rec.body, NOW);
    assert_eq!(out.status(), 401);
    assert_eq!(
        rejected(&out),
        &VerifyError::BadSignature { provider: Provider::Github, header: "x-hub-signature-256" }
    );
    assert!(out.message().contains("check that the webhook's secret equals the one configured here"));

    let rec = load("gitlab", "push");
    let out = answer("gitlab", &with_header(&rec, "X-Gitlab-Token", "guess"), &rec.body);
    assert_eq!(out.status(), 401);
    assert!(matches!(rejected(&out), VerifyError::BadToken { provider: Provider::Gitlab, .. }));

    let rec = load("codeup", "push");
    let out = answer("codeup", &with_header(&rec, "X-Codeup-Token", "guess"), &rec.body);
    assert_eq!(out.status(), 401);

    let rec = load("cloudevents", "binary");
    let out = answer("cloudevents", &with_header(&rec, "Authorization", "Bearer guess"), &rec.body);
    assert!(matches!(rejected(&out), VerifyError::BadToken { provider: Provider::CloudEvents, .. }));
    let out = answer("cloudevents", &with_header(&rec, "Authorization", "Basic Zm9vOmJhcg=="), &rec.body);
    assert!(matches!(rejected(&out), VerifyError::MalformedHeader { .. }));
}

#[test]
fn tampered_body_is_401_for_every_signing_provider() {
    for (dir, name) in [
        ("github", "push"),
        ("gitea", "push"),
        ("forgejo", "push"),
        ("bitbucket", "repo-push"),
        ("standard-webhooks", "image-pushed"),
        ("cloudevents", "structured"),
    ] {
        let rec = load(dir, name);
        let mut body = rec.body.clone();
        let at = body.iter().position(|b| *b == b'a').unwrap();
        body[at] = b'b';
        let out = answer(dir, &rec.headers, &body);
        assert_eq!(out.status(), 401, "{dir}/{name}");
        assert!(matches!(rejected(&out), VerifyError::BadSignature { .. }), "{dir}/{name}: {out:?}");
    }
}

#[test]
fn stale_timestamps_are_401() {
    let rec = load("standard-webhooks", "image-pushed");
    for now in [NOW + 301, NOW - 301, NOW + 86_400] {
        let out = handle_webhook(&master("standard-webhooks", apps(APP)), &rec.headers, &rec.body, now);
        assert_eq!(out.status(), 401);
        assert!(matches!(rejected(&out), VerifyError::StaleTimestamp { .. }), "{out:?}");
    }
    assert_eq!(
        handle_webhook(&master("standard-webhooks", apps(APP)), &rec.headers, &rec.body, NOW + 299).status(),
        202
    );

    let rec = load("gitee", "push");
    let out = handle_webhook(&master("gitee", apps(APP)), &rec.headers, &rec.body, NOW + 3600);
    let err = rejected(&out);
    assert!(matches!(err, VerifyError::StaleTimestamp { provider: Provider::Gitee, .. }));
    assert!(err.to_string().contains("more than the 300 s allowed"), "{err}");

    // A custom tolerance.
    let opts = VerifyOptions { timestamp_tolerance_secs: 10_000, ..VerifyOptions::default() };
    assert_eq!(verify(&rec.headers, &rec.body, &Secret::new(SECRET), NOW + 3600, &opts), Ok(Provider::Gitee));
}

#[test]
fn oversized_body_is_413_before_anything_else() {
    let body = vec![b' '; MAX_BODY_BYTES + 1];
    // Even with no identifying headers, size is checked first.
    let out = answer("github", &Headers::new(), &body);
    assert_eq!(out.status(), 413);
    assert_eq!(rejected(&out), &VerifyError::BodyTooLarge { size: MAX_BODY_BYTES + 1, limit: MAX_BODY_BYTES });
    let rec = load("github", "push");
    assert_eq!(answer("github", &rec.headers, &body).status(), 413);
    // Exactly at the limit is fine as far as size goes (the signature is then wrong).
    assert_eq!(answer("github", &rec.headers, &body[..MAX_BODY_BYTES]).status(), 401);
}

#[test]
fn malformed_json_with_a_good_signature_is_400() {
    let rec = load("github", "push");
    let raw: Vec<(String, String)> = rec
        .pairs
        .iter()
        .map(|(k, v)| {
            if k == "X-Hub-Signature-256" { (k.clone(), "sha256={{hmac_hex}}".into()) } else { (k.clone(), v.clone()) }
        })
        .collect();
    let broken = sign(raw, br#"{"ref": "refs/heads/main", "commits": [}"#.to_vec());
    let out = answer("github", &broken.headers, &broken.body);
    assert_eq!(out.status(), 400);
    let Outcome::BadRequest { error, .. } = &out else { panic!("{out:?}") };
    assert!(matches!(error, NormalizeError::MalformedJson { .. }));
    assert!(out.message().contains("is not valid JSON"), "{}", out.message());
    assert!(out.message().contains("line 1 column"), "{}", out.message());

    // A push without a ref cannot be matched against branches.
    let raw = vec![
        ("X-GitHub-Event".to_string(), "push".to_string()),
        ("X-Hub-Signature-256".into(), "sha256={{hmac_hex}}".into()),
    ];
    let no_ref = sign(raw, br#"{"after": "abc"}"#.to_vec());
    let out = answer("github", &no_ref.headers, &no_ref.body);
    assert_eq!(out.status(), 400);
    assert_eq!(out.message(), "the GitHub `push` payload has no `ref`, which this event always carries");
}

#[test]
fn unknown_events_are_200_ignored_not_errors() {
    let rec = load("github", "issues");
    let out = answer("github", &rec.headers, &rec.body);
    assert_eq!(out.status(), 200);
    assert!(out.requests().is_empty());
    assert_eq!(
        out.decisions()[0].reason(),
        "GitHub event `issues` is not one that starts runs (push, tag, pull_request, release, custom)"
    );
}

#[test]
fn no_trigger_matched_is_200_and_distinct_from_a_bad_signature() {
    let rec = load("github", "push");
    let cfg = master("github", apps("- name: web\n  on:\n    push:\n      branches: [release/*]\n"));
    let out = handle_webhook(&cfg, &rec.headers, &rec.body, NOW);
    assert_eq!(out.status(), 200);
    assert!(matches!(out, Outcome::Ignored { .. }));
    assert_eq!(out.message(), "ignored: push to `main` does not match branches [release/*] of app `web`");
}

#[test]
fn missing_headers_are_401_with_the_header_named() {
    let rec = load("github", "push");
    let out = answer("github", &without_header(&rec, "X-Hub-Signature-256"), &rec.body);
    assert_eq!(out.status(), 401);
    assert_eq!(
        out.message(),
        "the GitHub request has no `x-hub-signature-256` header; set a secret in the webhook's settings on GitHub"
    );

    let rec = load("gitlab", "push");
    assert_eq!(answer("gitlab", &without_header(&rec, "X-Gitlab-Token"), &rec.body).status(), 401);

    let rec = load("standard-webhooks", "image-pushed");
    for h in ["webhook-timestamp", "webhook-signature"] {
        let out = answer("standard-webhooks", &without_header(&rec, h), &rec.body);
        assert!(matches!(rejected(&out), VerifyError::MissingHeader { header, .. } if *header == h), "{out:?}");
    }

    let rec = load("cloudevents", "binary");
    let out = answer("cloudevents", &without_header(&rec, "Authorization"), &rec.body);
    assert!(matches!(rejected(&out), VerifyError::MissingHeader { header: "Authorization", .. }));

    // No identifying header at all.
    let out = answer("github", &Headers::from_pairs([("Content-Type", "application/json")]), b"{}");
    assert_eq!(out.status(), 401);
    assert_eq!(rejected(&out), &VerifyError::UnknownProvider);
    // A User-Agent alone does not identify a sender.
    let out = answer("github", &Headers::from_pairs([("User-Agent", "GitHub-Hookshot/1")]), b"{}");
    assert_eq!(rejected(&out), &VerifyError::UnknownProvider);
}

#[test]
fn malformed_signature_headers_are_401() {
    let rec = load("github", "push");
    let out = answer("github", &with_header(&rec, "X-Hub-Signature-256", "sha1=abcdef"), &rec.body);
    assert!(matches!(rejected(&out), VerifyError::MalformedHeader { .. }));
    let out = answer("github", &with_header(&rec, "X-Hub-Signature-256", "sha256=zz"), &rec.body);
    assert!(matches!(rejected(&out), VerifyError::MalformedHeader { .. }));
    let rec = load("standard-webhooks", "image-pushed");
    let out = answer("standard-webhooks", &with_header(&rec, "webhook-signature", "v2,abc"), &rec.body);
    assert!(matches!(rejected(&out), VerifyError::MalformedHeader { .. }));
    let out = answer("standard-webhooks", &with_header(&rec, "webhook-timestamp", "soon"), &rec.body);
    assert!(matches!(rejected(&out), VerifyError::MalformedHeader { .. }));
}

#[test]
fn providers_can_be_restricted() {
    let rec = load("gitea", "push");
    let mut cfg = master("gitea", apps(APP));
    cfg.verify.allowed = Some(vec![Provider::Github]);
    let out = handle_webhook(&cfg, &rec.headers, &rec.body, NOW);
    assert_eq!(rejected(&out), &VerifyError::ProviderNotAllowed { provider: Provider::Gitea });
}

#[test]
fn key_rotation_accepts_the_previous_secret() {
    let rec = load("github", "push");
    let secret = Secret::new("the-new-secret").with_previous(SECRET);
    assert_eq!(verify(&rec.headers, &rec.body, &secret, NOW, &VerifyOptions::default()), Ok(Provider::Github));
}
