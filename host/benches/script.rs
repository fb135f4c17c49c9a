//! `script:` step benchmark (a bench binary printing a markdown table): a
//! JavaScript step printing one line, against the built-in `shell` step running
//! `echo hi` (a process under bubblewrap) and native `node -e` when node is on
//! `PATH`. Components are loaded once (warm); each row is the median of N runs.
//!
//! `cargo bench -p skiff --bench script` (SKIFF_BENCH_N sets N, 50 by default).

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff_runtime::builtin;
use skiff_runtime::capabilities::log::LogLine;
use skiff_runtime::capabilities::process::ProcessGrant;
use skiff_runtime::limits::Limits;
use skiff_runtime::{EngineOptions, LoadedStep, Runtime, StepInvocation};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn inv(ws: &Path, script: &str, process: bool) -> StepInvocation {
    StepInvocation {
        run_id: "bench".into(),
        step_id: "s".into(),
        inputs: [("script".to_string(), script.to_string())].into(),
        workspace: ws.to_path_buf(),
        process: ProcessGrant { allowed: process, ..Default::default() },
        limits: Limits::default(),
        ..Default::default()
    }
}

/// N warm runs of `step` (after a few unmeasured ones); each must log `hi`.
async fn runs(rt: &Runtime, step: &LoadedStep, ws: &Path, script: &str, process: bool, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n + (n / 10).max(1) {
        let lines: Arc<Mutex<Vec<LogLine>>> = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let t = Instant::now();
        let r = rt.run(step, inv(ws, script, process), Arc::new(move |l| sink.lock().unwrap().push(l))).await;
        let took = t.elapsed();
        assert!(r.status.succeeded(), "{:?}", r.status);
        assert!(lines.lock().unwrap().iter().any(|l| l.text == "hi"), "the step did not print `hi`");
        if i >= (n / 10).max(1) {
            times.push(took);
        }
    }
    times
}

fn which(bin: &str) -> Option<String> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| format!("{d}/{bin}")).find(|p| Path::new(p).exists())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("SKIFF_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(50).max(1);
    let ws = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let rt = Runtime::new(EngineOptions { pool_size: 16, ..Default::default() }, Some(cache.path().into())).unwrap();

    let script_bytes = builtin::get("script").expect("`script` is a built-in step");
    let t = Instant::now();
    let script = rt.load(script_bytes).await.unwrap();
    let compile = t.elapsed();
    let shell = rt.load(builtin::get("shell").unwrap()).await.unwrap();

    let js = median(runs(&rt, &script, ws.path(), "console.log('hi')", false, n).await);
    let sandboxed = skiff_runtime::sandbox::availability();
    let sh = match &sandboxed {
        Ok(()) => Some(median(runs(&rt, &shell, ws.path(), "echo hi", true, n).await)),
        Err(_) => None,
    };
    let node = which("node").map(|node| {
        let times = (0..n)
            .map(|_| {
                let t = Instant::now();
                let out = Command::new(&node).args(["-e", "console.log('hi')"]).output().expect("node runs");
                let took = t.elapsed();
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hi");
                took
            })
            .collect();
        median(times)
    });

    println!("## A one-line step, warm, median of {n} runs\n");
    println!("| what | median | vs `script:` |");
    println!("|---|---|---|");
    println!("| `script: console.log('hi')` (boa in the Wasm sandbox) | {} | 1.0× |", ms(js));
    match (sh, &sandboxed) {
        (Some(d), _) => println!(
            "| `run: echo hi` (built-in `shell` step, bash under bubblewrap) | {} | {:.2}× |",
            ms(d),
            d.as_secs_f64() / js.as_secs_f64()
        ),
        (None, Err(e)) => println!("| `run: echo hi` | skipped: the process sandbox is unavailable here ({e}) | |"),
        (None, Ok(())) => {}
    }
    match node {
        Some(d) => println!(
            "| native `node -e \"console.log('hi')\"` (no sandbox) | {} | {:.2}× |",
            ms(d),
            d.as_secs_f64() / js.as_secs_f64()
        ),
        None => println!("| native `node -e` | skipped: no `node` on PATH | |"),
    }
    println!(
        "\nThe `script` component is {} KiB; compiling it (Cranelift, before the on-disk cache) took {:.1} s.",
        script_bytes.len() / 1024,
        compile.as_secs_f64()
    );
}
