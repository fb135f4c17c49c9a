//! The web console with 10,000 runs stored: how long the run page, the runs list and the apps
//! page take to answer, and how much they weigh, beside the JSON API's answer for the same run
//! measured in the same process (the baseline: the same store reads without HTML).
//!
//! `cargo bench -p skiff --bench console` prints a table (see docs/BENCHMARKS.md); the target
//! is ≤ 50 ms for the run page and ≤ 100 KiB for any page before logs.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, header};
use skiff_server::config::ServeConfig;
use skiff_server::store::{NewRun, RunStatus, Usage};
use skiff_server::{Role, Shared};
use tower::ServiceExt as _;

/// Never asked to run anything: no scheduler runs here.
struct Idle;

impl skiff_pipeline::StepExecutor for Idle {
    fn run_step<'a>(
        &'a self,
        _: skiff_pipeline::StepRequest,
        _: &'a (dyn Fn(skiff_pipeline::LogLine) + Send + Sync),
    ) -> Pin<Box<dyn Future<Output = skiff_pipeline::StepResult> + Send + 'a>> {
        Box::pin(std::future::pending())
    }
}

const PIPELINE: &str = r#"
jobs:
  build:
    strategy: { matrix: { os: [linux, mac, windows] } }
    steps:
      - { id: checkout, uses: checkout }
      - { id: compile, run: make, permissions: { process: true } }
  test:
    needs: build
    steps:
      - { id: unit, uses: diag }
  deploy:
    needs: [build, test]
    steps:
      - { id: ship, uses: upload, with: { target: artifact, source: dist } }
"#;

fn config(data: &Path) -> ServeConfig {
    let text = format!(
        "data = \"{}\"\n[[tokens]]\nname = \"bench\"\ntoken = \"bench-token\"\napps = [\"*\"]\n\
         [[apps]]\nname = \"web\"\npipeline-yaml = \"\"\"{PIPELINE}\"\"\"\n\
         [[apps]]\nname = \"api\"\npipeline-yaml = \"\"\"{PIPELINE}\"\"\"\n",
        data.display()
    );
    ServeConfig::from_toml(&text, Path::new("/"), None).unwrap()
}

async fn answer(router: &axum::Router, path: &str, cookie: &str, auth: Option<&str>) -> (u16, usize) {
    let mut req = Request::get(path).header(header::COOKIE, cookie);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    let resp = router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, bytes.len())
}

async fn sign_in(router: &axum::Router) -> String {
    let page = router.clone().oneshot(Request::get("/sign-in").body(Body::empty()).unwrap()).await.unwrap();
    let pre = cookie(&page, "skiff_signin");
    let csrf = pre.split_once('=').unwrap().1.to_string();
    let resp = router
        .clone()
        .oneshot(
            Request::post("/sign-in")
                .header(header::COOKIE, &pre)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("csrf={csrf}&next=%2F&token=bench-token")))
                .unwrap(),
        )
        .await
        .unwrap();
    cookie(&resp, "skiff_session")
}

fn cookie(resp: &axum::response::Response, name: &str) -> String {
    resp.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_string())
        .unwrap_or_else(|| panic!("no {name} cookie"))
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(v[v.len() / 2]), ms(v[(v.len() * 9) / 10]))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: usize = std::env::var("SKIFF_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let samples: usize = std::env::var("SKIFF_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let shared: Arc<Shared> = Shared::open(config(dir.path()), Arc::new(Idle), Role::All).unwrap();
    let store = shared.store.clone();
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let runs: Vec<NewRun> = chunk
            .iter()
            .map(|i| NewRun {
                app: if i % 2 == 0 { "web" } else { "api" }.into(),
                trigger: if i % 3 == 0 { "pull_request" } else { "push" }.into(),
                git_ref: Some(format!("refs/heads/{}", ["main", "dev", "feature-x"][i % 3])),
                sha: Some(format!("{i:040x}")),
                ..NewRun::default()
            })
            .collect();
        for r in store.insert_runs(&runs).unwrap() {
            r.unwrap();
        }
    }
    // The run looked at: the newest of `web`, finished, with its jobs and steps.
    let id = store.insert_run(&NewRun { app: "web".into(), trigger: "push".into(), ..NewRun::default() }).unwrap().id;
    for (key, job, steps) in [
        ("build-linux", "build", &["checkout", "compile"][..]),
        ("build-mac", "build", &["checkout", "compile"][..]),
        ("build-windows", "build", &["checkout", "compile"][..]),
        ("test", "test", &["unit"][..]),
        ("deploy", "deploy", &["ship"][..]),
    ] {
        store.job_started(id, key, job, key).unwrap();
        for s in steps {
            store.step_started(id, key, s, s).unwrap();
            store.step_finished(id, key, s, s, RunStatus::Success, None, &Usage::default()).unwrap();
        }
        store.job_finished(id, key, job, key, RunStatus::Success, None, Some(1200), None).unwrap();
    }
    store.finish_run(id, RunStatus::Success, None).unwrap();
    let stored = t.elapsed();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "console benchmark: {} runs stored in {:.1} s; {} cores; load {}",
        n + 1,
        stored.as_secs_f64(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );

    let router = skiff_server::app(shared.clone());
    let session = sign_in(&router).await;
    let bearer = "Bearer bench-token";
    let pages = [
        ("JSON API: GET /v1/runs/{id} (baseline)", format!("/v1/runs/{id}"), Some(bearer)),
        ("run page: GET /runs/{id}", format!("/runs/{id}"), None),
        ("runs list: GET /runs?app=web", "/runs?app=web".to_string(), None),
        ("apps page: GET /", "/".to_string(), None),
    ];
    println!("| what | p50 ms | p90 ms | × baseline (p50) | bytes |");
    println!("|---|---|---|---|---|");
    let mut baseline = None;
    for (name, path, auth) in pages {
        let mut lat = Vec::with_capacity(samples);
        let mut size = 0;
        for _ in 0..samples {
            let t = Instant::now();
            let (status, bytes) = answer(&router, &path, &session, auth).await;
            lat.push(t.elapsed());
            assert_eq!(status, 200, "{path}");
            size = bytes;
        }
        let (p50, p90) = stats(lat);
        let base = *baseline.get_or_insert(p50);
        println!("| {name} | {p50:.3} | {p90:.3} | {:.1} | {size} |", p50 / base);
        assert!(size <= 100 * 1024 || path.starts_with("/v1"), "{path} weighs {size} bytes, over 100 KiB");
    }
}
