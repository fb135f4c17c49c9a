//! `skiff serve` benchmarks: latency from a webhook to its first step starting, and runs
//! accepted per second with nothing lost, beside a bare SQLite insert+commit as the baseline.
//!
//! `cargo bench -p skiff --bench serve` prints a table (see docs/BENCHMARKS.md).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_server::config::ServeConfig;
use skiff_server::{Role, start};
use tokio::sync::mpsc;

// The tests' scripted executor; the benchmark uses only part of it.
#[allow(dead_code)]
#[path = "../tests/all/support/executor.rs"]
mod executor;

const SECRET: &str = "bench-secret";

fn config(data: &Path, max: usize) -> ServeConfig {
    let text = format!(
        r#"
listen = "127.0.0.1:0"
data = "{}"
max-concurrent-runs = {max}
[[tokens]]
name = "bench"
token = "bench-token"
apps = ["*"]
[[apps]]
name = "web"
provider = "github"
webhook-secret = "{SECRET}"
on = {{ push = {{ branches = ["main"] }} }}
pipeline-yaml = """
steps:
  - id: first
    uses: diag
"""
"#,
        data.display()
    );
    ServeConfig::from_toml(&text, Path::new("/"), None).unwrap()
}

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| ms(v[((v.len() as f64 - 1.0) * q).round() as usize]);
    (at(0.5), at(0.9), at(0.99))
}

fn sqlite_baseline(n: usize) -> (Vec<Duration>, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = rusqlite::Connection::open(dir.path().join("b.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v TEXT)").unwrap();
    let body = "x".repeat(1500);
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let tx = conn.transaction().unwrap();
        tx.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", rusqlite::params![format!("k{i}"), body]).unwrap();
        tx.commit().unwrap();
        lat.push(t.elapsed());
    }
    (lat, t0.elapsed())
}

fn push(delivery: &str) -> (Vec<u8>, String) {
    let body = serde_json::json!({
        "ref": "refs/heads/main", "before": "0", "after": "1",
        "repository": {"full_name": "acme/web"}, "sender": {"login": "octocat"}, "d": delivery
    })
    .to_string()
    .into_bytes();
    let sig = skiff_edge_core::github_signature(SECRET.as_bytes(), &body);
    (body, sig)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n_latency: usize = std::env::var("SKIFF_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let n_burst: usize = n_latency * 5;
    println!("skiff serve benchmark ({} cores)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));

    // Baseline: a bare SQLite insert + commit, WAL, synchronous=FULL.
    let (lat, total) = sqlite_baseline(n_burst);
    let (p50, p90, p99) = stats(lat);
    println!(
        "| bare SQLite insert+commit (WAL, FULL) | {p50:.3} | {p90:.3} | {p99:.3} | {:.0}/s |",
        n_burst as f64 / total.as_secs_f64()
    );

    // Webhook → first step started, one at a time over a kept-alive connection.
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Tells the bench when each step starts; every step succeeds at once.
    let exec = executor::Scripted::new()
        .every("")
        .on_start(move |req| {
            let _ = tx.send((req.run_id.clone(), Instant::now()));
        })
        .without_recording();
    let server = start(config(dir.path(), 64), Arc::new(exec), Role::All).await.unwrap();
    let url = format!("http://{}/hooks/web", server.addr);
    let http = reqwest::Client::new();
    let mut lat = Vec::with_capacity(n_latency);
    let mut accept = Vec::with_capacity(n_latency);
    for i in 0..n_latency {
        let (body, sig) = push(&format!("lat-{i}"));
        let t = Instant::now();
        let resp = http
            .post(&url)
            .header("x-github-event", "push")
            .header("x-github-delivery", format!("lat-{i}"))
            .header("x-hub-signature-256", sig)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        accept.push(t.elapsed());
        let (_, started) = rx.recv().await.unwrap();
        lat.push(started.duration_since(t));
    }
    let (a50, a90, a99) = stats(accept);
    println!("| webhook → 202 (verified, committed) | {a50:.3} | {a90:.3} | {a99:.3} | |");
    let (p50, p90, p99) = stats(lat);
    println!("| webhook → first step started | {p50:.3} | {p90:.3} | {p99:.3} | |");

    // A burst: 32 concurrent senders, then every accepted run must be stored and run.
    let before = server.shared.store.count_runs().unwrap();
    let t0 = Instant::now();
    let senders = 32;
    let mut tasks = Vec::new();
    for w in 0..senders {
        let http = http.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0usize;
            for i in (w..n_burst).step_by(senders) {
                let (body, sig) = push(&format!("burst-{i}"));
                let resp = http
                    .post(&url)
                    .header("x-github-event", "push")
                    .header("x-github-delivery", format!("burst-{i}"))
                    .header("x-hub-signature-256", sig)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                if resp.status() == 202 {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    let elapsed = t0.elapsed();
    println!(
        "| burst: {n_burst} webhooks, {senders} senders | | | | {:.0}/s accepted |",
        accepted as f64 / elapsed.as_secs_f64()
    );
    // Nothing lost: every accepted run is stored and reaches `success`.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let f = skiff_server::store::RunFilter {
            status: Some(skiff_server::store::RunStatus::Success),
            limit: Some(500),
            ..Default::default()
        };
        let done = count_success(server.shared.store.as_ref(), f);
        if done == before as usize + accepted {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of {} runs succeeded", before as usize + accepted);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = t0.elapsed();
    println!(
        "| burst: all {accepted} accepted runs stored and run | | | | {:.0} runs/s end to end |",
        accepted as f64 / all.as_secs_f64()
    );
    assert_eq!(accepted, n_burst, "every webhook of the burst was accepted");
    server.halt();
}

fn count_success(store: &dyn skiff_server::store::RunStore, mut f: skiff_server::store::RunFilter) -> usize {
    let mut n = 0;
    loop {
        let page = store.list_runs(&f).unwrap();
        n += page.len();
        match page.last() {
            Some(last) if page.len() == 500 => f.before = Some(last.id),
            _ => return n,
        }
    }
}
