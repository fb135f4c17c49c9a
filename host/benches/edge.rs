//! `cargo bench -p skiff --bench edge`: one webhook through the Spin edge
//! master as `skiff edge up` serves it (a fresh wasmtime instance per request,
//! `wasi:http@0.3`), beside the baseline of the same `skiff-edge-core` call made
//! natively, as the master built into `skiff serve` makes it. The event is a
//! signed push to a branch no trigger matches, so no dispatch leaves the
//! process and only the master's own work is timed. Needs
//! `scripts/build-edge.sh` first. `SKIFF_BENCH_N` sets the iterations.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use skiff_edge_core::{Headers, MasterConfig, Secret, apps_named, github_signature, handle_webhook};
use skiff_spin_host::SpinApp;
use skiff_spin_host::kv::KvStores;
use skiff_spin_host::manifest::Manifest;

const APPS: &str = r#"[{"name": "web", "on": {"push": {"branches": ["main"]}}}]"#;
const SECRET: &str = "bench-webhook-secret";
const KEY: &str = "whsec_c2tpZmYtZGlzcGF0Y2gta2V5";

fn stats(mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    (d[d.len() / 2], d[d.len() * 99 / 100])
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let n: usize = std::env::var("SKIFF_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let wasm = repo.join("target/edge-spin/wasm32-wasip2/release/skiff_edge_spin.wasm");
    if !wasm.exists() {
        eprintln!("{} is missing: run scripts/build-edge.sh first", wasm.display());
        std::process::exit(1);
    }
    let body = serde_json::json!({
        "ref": "refs/heads/feature", "before": "0000", "after": "1111",
        "repository": {"full_name": "acme/web"}, "sender": {"login": "octocat"}
    })
    .to_string();
    let signature = github_signature(SECRET.as_bytes(), body.as_bytes());

    // Baseline: the core natively.
    let config = MasterConfig::new(Secret::new(SECRET), Secret::new(KEY), apps_named(APPS, "web").unwrap());
    let headers = Headers::from_pairs([
        ("x-github-event", "push"),
        ("x-github-delivery", "bench"),
        ("x-hub-signature-256", signature.as_str()),
    ]);
    let now = 1_800_000_000;
    let mut native = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let outcome = handle_webhook(&config, &headers, body.as_bytes(), now);
        native.push(t.elapsed());
        assert_eq!(outcome.status(), 200);
    }

    // The Spin component, a fresh instance per request.
    let manifest = Manifest::load(&repo.join("edge-master/spin/spin.toml")).unwrap();
    let vars: BTreeMap<String, String> =
        [("host_url", "http://127.0.0.1:9"), ("apps", APPS), ("dispatch_key", KEY), ("webhook_secret", SECRET)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let compile = Instant::now();
    let app = SpinApp::new(manifest, &vars, KvStores::open(None).unwrap()).unwrap();
    let compile = compile.elapsed();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let request = || {
        http::Request::post("http://127.0.0.1/hooks/web")
            .header("host", "127.0.0.1")
            .header("x-github-event", "push")
            .header("x-github-delivery", "bench")
            .header("x-hub-signature-256", signature.as_str())
            .body(Bytes::from(body.clone()))
            .unwrap()
    };
    let mut spin = Vec::with_capacity(n);
    rt.block_on(async {
        for _ in 0..n.min(50) {
            app.handle(request()).await; // warm-up
        }
        for _ in 0..n {
            let req = request();
            let t = Instant::now();
            let resp = app.handle(req).await;
            spin.push(t.elapsed());
            assert_eq!(resp.status(), 200, "{:?}", resp.body());
        }
    });

    let (nm, np) = stats(native);
    let (sm, sp) = stats(spin);
    println!("edge master, one ignored push, {n} requests each (compile of the component: {compile:?})");
    println!("| what | median | p99 | median vs native core |");
    println!("|---|---|---|---|");
    println!("| skiff-edge-core natively (the built-in master) | {} | {} | 1.0× |", us(nm), us(np));
    println!(
        "| Spin component under `skiff edge up` (fresh instance) | {} | {} | {:.1}× |",
        us(sm),
        us(sp),
        sm.as_secs_f64() / nm.as_secs_f64()
    );
}
