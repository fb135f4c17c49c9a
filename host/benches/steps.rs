//! Per-step overhead of Wasm steps (issue 18), a bench binary printing markdown tables:
//! pipelines of 1, 20 and 200 `diag` steps run through the [`LocalExecutor`] (built-in and
//! `./diag.wasm` from a file), the cost of each extra step, the same steps as direct
//! executor calls without the pipeline engine, and the warm start of a trivial step.
//!
//! `cargo bench -p skiff --bench steps` (`SKIFF_BENCH_N` scales the repetitions, default 1.0;
//! `SKIFF_BENCH_ONLY=pipeline|start` runs one part).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_pipeline::engine::NoObserver;
use skiff_pipeline::{LogLine, Plan, RunOptions, StepExecutor, StepRef, StepRequest, load_str, run_pipeline};
use skiff_runtime::executor::LocalExecutor;
use skiff_runtime::limits::Limits;
use skiff_runtime::{EngineOptions, LoadedStep, Runtime, StepInvocation};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * 0.99).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn pipeline(uses: &str, n: usize) -> String {
    let mut y = String::from("name: bench\nsteps:\n");
    for i in 0..n {
        y.push_str(&format!("  - id: s{i}\n    uses: {uses}\n"));
    }
    y
}

fn run(rt: &tokio::runtime::Runtime, exec: &Arc<dyn StepExecutor>, plan: &Plan, ws: &Path, k: usize) -> Duration {
    let opts = RunOptions { run_id: format!("r{k}"), workspace: ws.to_path_buf(), ..Default::default() };
    let t = Instant::now();
    let report = rt.block_on(run_pipeline(plan, opts, exec.clone(), Arc::new(NoObserver)));
    let e = t.elapsed();
    assert!(report.success(), "{report:?}");
    e
}

fn request(uses: &StepRef, ws: &Path, i: usize) -> StepRequest {
    StepRequest {
        run_id: "direct".into(),
        job_id: "job".into(),
        step_id: format!("s{i}"),
        step_name: String::new(),
        uses: uses.clone(),
        inputs: Default::default(),
        env: Default::default(),
        secrets: Default::default(),
        grants: Default::default(),
        workspace: ws.to_path_buf(),
        working_directory: None,
        timeout: None,
        memory: None,
        image: None,
        event_json: String::new(),
        ca_bundle: None,
        needs: Vec::new(),
    }
}

fn pipelines(scale: f64) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let wasm = dir.path().join("diag.wasm");
    std::fs::write(&wasm, skiff_runtime::builtin::get("diag").unwrap()).unwrap();
    let runtime =
        Runtime::new(EngineOptions { pool_size: 64, ..Default::default() }, Some(dir.path().join("cache"))).unwrap();
    let exec: Arc<dyn StepExecutor> = Arc::new(LocalExecutor::new(Arc::new(runtime)));

    let sizes = [(1usize, 300usize), (20, 60), (200, 12)];
    println!("## Pipelines of `diag` steps through the executor\n");
    println!("| steps | built-in `diag`: median | `./diag.wasm` (a file): median | runs |");
    println!("|---:|---:|---:|---:|");
    let mut medians = Vec::new();
    for (n, reps) in sizes {
        let reps = ((reps as f64 * scale) as usize).max(3);
        let builtin = load_str(&pipeline("diag", n), "bench.yaml", dir.path()).unwrap();
        let file = load_str(&pipeline("./diag.wasm", n), "bench.yaml", dir.path()).unwrap();
        // Warm: the first run compiles (or loads the compiled artifact) and fills every cache.
        for k in 0..2 {
            run(&rt, &exec, &builtin, &ws, k);
            run(&rt, &exec, &file, &ws, k);
        }
        let (mut b, mut f) = (Vec::new(), Vec::new());
        // Interleaved, so that machine noise falls on both alike.
        for k in 0..reps {
            b.push(run(&rt, &exec, &builtin, &ws, k));
            f.push(run(&rt, &exec, &file, &ws, k));
        }
        let (b, f) = (median(b), median(f));
        println!("| {n} | {} | {} | {reps} |", ms(b), ms(f));
        medians.push((n, b, f));
    }
    let per = |i: usize, pick: fn(&(usize, Duration, Duration)) -> Duration| {
        let (n0, n1) = (medians[0].0, medians[i].0);
        (pick(&medians[i]).saturating_sub(pick(&medians[0]))) / (n1 - n0) as u32
    };
    println!("\n| per extra step | built-in `diag` | `./diag.wasm` |");
    println!("|---|---:|---:|");
    for (i, label) in [(1, "1 → 20 steps"), (2, "1 → 200 steps")] {
        println!("| {label} | {} | {} |", us(per(i, |m| m.1)), us(per(i, |m| m.2)));
    }

    // The same steps as direct executor calls: the executor and the runtime without the engine.
    let reps = ((2000.0 * scale) as usize).max(50);
    let log = |_: LogLine| {};
    let mut rows = Vec::new();
    for uses in [StepRef::Builtin("diag".into()), StepRef::Path(wasm.clone())] {
        let mut times = Vec::with_capacity(reps);
        rt.block_on(async {
            for i in 0..reps / 10 + reps {
                let t = Instant::now();
                let r = exec.run_step(request(&uses, &ws, i), &log).await;
                if i >= reps / 10 {
                    times.push(t.elapsed());
                }
                assert!(matches!(r.outcome, skiff_pipeline::StepOutcome::Success), "{:?}", r.outcome);
            }
        });
        rows.push(times);
    }
    println!("\n| one `diag` step as a direct `run_step` call ({reps} runs) | median | p99 |");
    println!("|---|---:|---:|");
    for (label, t) in ["built-in `diag`", "`./diag.wasm`"].iter().zip(rows) {
        println!("| {label} | {} | {} |", us(median(t.clone())), us(p99(t)));
    }
}

fn inv(ws: &Path) -> StepInvocation {
    StepInvocation {
        run_id: "bench".into(),
        step_id: "s".into(),
        inputs: [("attack".to_string(), "noop".to_string())].into(),
        workspace: ws.to_path_buf(),
        limits: Limits::default(),
        ..Default::default()
    }
}

async fn warm_starts(rt: &Runtime, step: &LoadedStep, ws: &Path, n: usize) -> Vec<Duration> {
    let sink: Arc<dyn Fn(_) + Send + Sync> = Arc::new(|_| {});
    for _ in 0..n / 10 {
        rt.run(step, inv(ws), sink.clone()).await;
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = rt.run(step, inv(ws), sink.clone()).await;
        times.push(t.elapsed());
        assert!(r.status.succeeded(), "{:?}", r.status);
    }
    times
}

fn starts(scale: f64) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let n = ((3000.0 * scale) as usize).max(100);
    let dir = tempfile::tempdir().unwrap();
    let runtime =
        Runtime::new(EngineOptions { pool_size: 64, ..Default::default() }, Some(dir.path().join("cache"))).unwrap();
    let bytes = std::fs::read(skiff_runtime::test_guests::HOSTILE).unwrap();
    let (times, diag) = rt.block_on(async {
        let step = runtime.load(&bytes).await.unwrap();
        let noop = warm_starts(&runtime, &step, dir.path(), n).await;
        // The built-in `diag` through the runtime alone, without the executor.
        let diag = runtime.load_static(skiff_runtime::builtin::get("diag").unwrap()).await.unwrap();
        let sink: Arc<dyn Fn(_) + Send + Sync> = Arc::new(|_| {});
        let mut times = Vec::with_capacity(n);
        for i in 0..n + n / 10 {
            let t = Instant::now();
            let r = runtime.run(&diag, inv(dir.path()), sink.clone()).await;
            if i >= n / 10 {
                times.push(t.elapsed());
            }
            assert!(r.status.succeeded(), "{:?}", r.status);
        }
        (noop, times)
    });
    println!("\n## Warm step start, trivial step (hostile guest, `noop`), {n} runs\n");
    println!("| what | median | p99 |");
    println!("|---|---:|---:|");
    println!("| `Runtime::run`, pooling allocator | {} | {} |", us(median(times.clone())), us(p99(times)));
    println!("| `Runtime::run` of built-in `diag` (no executor) | {} | {} |", us(median(diag.clone())), us(p99(diag)));
}

fn main() {
    let scale: f64 = std::env::var("SKIFF_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1.0);
    let only = std::env::var("SKIFF_BENCH_ONLY").unwrap_or_default();
    println!("load average: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    if only.is_empty() || only == "pipeline" {
        pipelines(scale);
    }
    if only.is_empty() || only == "start" {
        starts(scale);
    }
}
