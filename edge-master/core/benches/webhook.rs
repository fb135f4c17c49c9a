//! Verify + normalize + decide for a ~24 KB GitHub push (19 commits), against baselines
//! measured in the same run: parsing the same bytes with `serde_json`, and one HMAC-SHA256 of
//! them.
//!
//! Run with `cargo bench -p skiff-edge-core --bench webhook -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use skiff_edge_core::{
    App, Headers, MasterConfig, Provider, Secret, VerifyOptions, decide_with_headers, github_signature, handle_webhook,
    normalize, verify,
};

const SECRET: &[u8] = b"skiff-bench-secret";
const NOW: i64 = 1_741_080_000;

fn fixture() -> (Headers, Vec<u8>) {
    let body = include_bytes!("../tests/fixtures/github/push-large.json").to_vec();
    let sig = github_signature(SECRET, &body);
    let headers = Headers::from_pairs([
        ("Accept", "*/*"),
        ("Content-Type", "application/json"),
        ("User-Agent", "GitHub-Hookshot/4c4b8d1"),
        ("X-GitHub-Delivery", "1c6d9f50-f8d1-11ef-8b2a-6b2e3c9d5e8f"),
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Hook-ID", "488264911"),
        ("X-Hub-Signature-256", sig.as_str()),
    ]);
    (headers, body)
}

fn apps() -> Vec<App> {
    serde_json::from_str(
        r#"[
            {"name": "web", "on": {"push": {"branches": ["main", "release/*"], "paths-ignore": ["docs/**", "**.md"]}}},
            {"name": "api", "repository": "acme/api", "on": "push"},
            {"name": "docs", "on": {"push": {"branches": ["main"], "paths": ["docs/**"]}}}
        ]"#,
    )
    .unwrap()
}

fn apps_with_filter() -> Vec<App> {
    let mut apps = apps();
    apps.push(
        serde_json::from_str(
            r#"{"name": "serverless-cd", "on": {"push": {}, "filter": "body.ref in [\"refs/heads/master\", \"refs/heads/main\"]"}}"#,
        )
        .unwrap(),
    );
    apps
}

/// The same, but the filter indexes `body` instead of selecting a field, so the whole payload is
/// converted to CEL values: the worst case.
fn apps_with_whole_body_filter() -> Vec<App> {
    let mut apps = apps();
    apps.push(
        serde_json::from_str(
            r#"{"name": "whole-body", "on": {"push": {}, "filter": "body[\"ref\"] == \"refs/heads/main\""}}"#,
        )
        .unwrap(),
    );
    apps
}

fn bench(c: &mut Criterion) {
    let (headers, body) = fixture();
    let secret = Secret::new(SECRET);
    let opts = VerifyOptions::default();
    let apps = apps();
    let apps_filter = apps_with_filter();
    let apps_whole = apps_with_whole_body_filter();
    let mut g = c.benchmark_group("github_push_24KB");
    g.throughput(Throughput::Bytes(body.len() as u64));

    g.bench_function("baseline: serde_json::from_slice::<Value>", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap())
    });
    g.bench_function("baseline: HMAC-SHA256 of body", |b| b.iter(|| github_signature(SECRET, black_box(&body))));
    g.bench_function("verify", |b| {
        b.iter(|| verify(black_box(&headers), black_box(&body), &secret, NOW, &opts).unwrap())
    });
    g.bench_function("verify + normalize", |b| {
        b.iter(|| {
            let p = verify(black_box(&headers), black_box(&body), &secret, NOW, &opts).unwrap();
            normalize(p, &headers, &body).unwrap()
        })
    });
    g.bench_function("verify + normalize + decide (3 apps, globs)", |b| {
        b.iter(|| {
            let p = verify(black_box(&headers), black_box(&body), &secret, NOW, &opts).unwrap();
            let e = normalize(p, &headers, &body).unwrap();
            decide_with_headers(&e, &headers, &apps)
        })
    });
    g.bench_function("verify + normalize + decide (4 apps, one CEL filter)", |b| {
        b.iter(|| {
            let p = verify(black_box(&headers), black_box(&body), &secret, NOW, &opts).unwrap();
            let e = normalize(p, &headers, &body).unwrap();
            decide_with_headers(&e, &headers, &apps_filter)
        })
    });
    g.bench_function("verify + normalize + decide (4 apps, CEL filter reading all of body)", |b| {
        b.iter(|| {
            let p = verify(black_box(&headers), black_box(&body), &secret, NOW, &opts).unwrap();
            let e = normalize(p, &headers, &body).unwrap();
            decide_with_headers(&e, &headers, &apps_whole)
        })
    });
    let cfg = MasterConfig::new(Secret::new(SECRET), Secret::new("whsec_ZGlzcGF0Y2g="), apps.clone());
    g.bench_function("handle_webhook (3 apps, 1 signed dispatch)", |b| {
        b.iter(|| {
            let out = handle_webhook(&cfg, black_box(&headers), black_box(&body), NOW);
            assert_eq!(out.status(), 202);
            out
        })
    });
    g.finish();

    // Sanity: the path really does what is measured.
    let e = normalize(Provider::Github, &headers, &body).unwrap();
    let d = decide_with_headers(&e, &headers, &apps_filter);
    assert!(d[0].is_dispatch() && !d[1].is_dispatch() && d[3].is_dispatch());
    assert!(decide_with_headers(&e, &headers, &apps_whole)[3].is_dispatch());
}

criterion_group!(benches, bench);
criterion_main!(benches);
