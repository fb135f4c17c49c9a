//! Step-runtime benchmark (a bench binary printing markdown tables):
//! warm sandboxed step start, against native processes under bubblewrap and
//! plain fork/exec in the same run; memory per idle step; cold compile vs cache.
//!
//! `cargo bench -p skiff --bench runtime` (set SKIFF_BENCH_N to change iterations).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_runtime::cache::DiskCache;
use skiff_runtime::limits::Limits;
use skiff_runtime::{EngineOptions, LoadedStep, Runtime, StepInvocation};

const GUEST: &str = skiff_runtime::test_guests::HOSTILE;

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.99))
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn inv(ws: &Path, attack: &str, arg: &str) -> StepInvocation {
    StepInvocation {
        run_id: "bench".into(),
        step_id: "s".into(),
        inputs: [("attack".to_string(), attack.to_string()), ("arg".to_string(), arg.to_string())].into(),
        workspace: ws.to_path_buf(),
        limits: Limits::default(),
        ..Default::default()
    }
}

async fn warm_starts(rt: &Runtime, step: &LoadedStep, ws: &Path, n: usize) -> Vec<Duration> {
    let sink: Arc<dyn Fn(_) + Send + Sync> = Arc::new(|_| {});
    for _ in 0..n / 10 {
        rt.run(step, inv(ws, "noop", ""), sink.clone()).await;
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = rt.run(step, inv(ws, "noop", ""), sink.clone()).await;
        times.push(t.elapsed());
        assert!(r.status.succeeded(), "{:?}", r.status);
    }
    times
}

fn process_starts(n: usize, mut make: impl FnMut() -> Command) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let st = make().status().expect("spawn");
            assert!(st.success());
            t.elapsed()
        })
        .collect()
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("SKIFF_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let bytes = std::fs::read(GUEST).unwrap();
    let ws = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();

    let pooled =
        Runtime::new(EngineOptions { pool_size: 1000, ..Default::default() }, Some(cache.path().into())).unwrap();
    let ondemand =
        Runtime::new(EngineOptions { pooling: false, ..Default::default() }, Some(cache.path().into())).unwrap();
    let step_p = pooled.load(&bytes).await.unwrap();
    let step_o = ondemand.load(&bytes).await.unwrap();

    let (pm, p99) = stats(warm_starts(&pooled, &step_p, ws.path(), n).await);
    let (om, o99) = stats(warm_starts(&ondemand, &step_o, ws.path(), n).await);
    let m = n.min(300);
    let (fm, f99) = stats(process_starts(m, || Command::new("/bin/true")));
    let bwrap = which("bwrap");
    let bw = bwrap.as_ref().map(|b| {
        stats(process_starts(m, || {
            let mut c = Command::new(b);
            c.args([
                "--unshare-all",
                "--die-with-parent",
                "--new-session",
                "--ro-bind",
                "/usr",
                "/usr",
                "--symlink",
                "usr/bin",
                "/bin",
                "--symlink",
                "usr/lib",
                "/lib",
                "--symlink",
                "usr/lib64",
                "/lib64",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                "--",
                "/bin/true",
            ]);
            c
        }))
    });

    println!("## Step start (warm cache), {n} runs each, trivial step (`noop`)\n");
    println!("| what | median | p99 | median vs pooled step |");
    println!("|---|---|---|---|");
    println!("| Wasm step, pooling allocator | {} | {} | 1.0× |", us(pm), us(p99));
    println!("| Wasm step, on-demand allocator | {} | {} | {:.2}× |", us(om), us(o99), ratio(om, pm));
    println!("| native `/bin/true`, plain fork/exec ({m} runs) | {} | {} | {:.1}× |", us(fm), us(f99), ratio(fm, pm));
    if let Some((bm, b99)) = bw {
        println!(
            "| native `/bin/true` under `bwrap --unshare-all` ({m} runs) | {} | {} | {:.1}× |",
            us(bm),
            us(b99),
            ratio(bm, pm)
        );
    }

    // Memory per idle step: K steps asleep in a host call at once, in a pool of K slots of
    // 64 MiB reservations (4 GiB ones cannot all be mapped), with the open-file limit raised.
    // Each idle step holds two descriptors (its workspace, preopened as `.` and `/workspace`)
    // and several memory maps (its stack and guard, its memories): 50,000 of them need an
    // open-file limit past 100,000 and a `vm.max_map_count` past 400,000 (Linux's default is
    // 65,530). By default the bench runs as many as this machine's limits allow, up to 50,000.
    let nofile = skiff_runtime::engine::raise_open_file_limit();
    let maps: u64 =
        std::fs::read_to_string("/proc/sys/vm/max_map_count").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let fits = (nofile.saturating_sub(512) / 2).min(maps / 8).min(50_000) as usize;
    let k: usize = std::env::var("SKIFF_BENCH_IDLE").ok().and_then(|v| v.parse().ok()).unwrap_or(fits);
    let idle = Arc::new(
        Runtime::new(
            EngineOptions { pool_size: k as u32, memory_reservation: Some(64 << 20), ..Default::default() },
            Some(cache.path().into()),
        )
        .unwrap(),
    );
    let step_i = idle.load(&bytes).await.unwrap();
    // Long enough for every step to be started before the first wakes up.
    let sleep_ms = 10_000 + k as u64 / 5;
    let before = rss_kib();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..k {
        let rt = idle.clone();
        let step = step_i.clone();
        let ws = ws.path().to_path_buf();
        let arg = sleep_ms.to_string();
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            let ok = rt.run(&step, inv(&ws, "sleep", &arg), Arc::new(|_| {})).await.status.succeeded();
            (at, Instant::now(), ok)
        }));
    }
    // The most resident memory while they sleep, sampled until the first could wake.
    let mut during = 0;
    while started.elapsed() < Duration::from_millis(sleep_ms * 9 / 10) {
        during = during.max(rss_kib());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (mut ok, mut last_start, mut first_end) = (0, started, None::<Instant>);
    for t in tasks {
        let (at, end, succeeded) = t.await.unwrap();
        ok += usize::from(succeeded);
        last_start = last_start.max(at);
        first_end = Some(first_end.map_or(end, |f| f.min(end)));
    }
    let together = first_end.is_some_and(|f| last_start < f);
    println!("\n## Concurrent idle steps\n");
    println!(
        "Open-file limit: {nofile}; vm.max_map_count {maps} ({fits} steps fit); per-slot memory reservation \
         64 MiB; each step sleeps {sleep_ms} ms.\n"
    );
    println!(
        "| steps asleep at once | succeeded | all asleep together | RSS before | RSS during | per idle step | total wall |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {k} | {ok} | {} | {} MiB | {} MiB | {} KiB | {:.1} s |",
        if together { "yes" } else { "no" },
        before / 1024,
        during / 1024,
        during.saturating_sub(before) / k as u64,
        started.elapsed().as_secs_f64()
    );
    drop(idle);

    // Cold compile vs cached load.
    let engine = pooled.engine();
    let digest = skiff_runtime::cache::sha256(&bytes);
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskCache::new(engine, dir.path().into());
        let t = Instant::now();
        disk.load_or_compile(engine, &digest, || Ok(bytes.clone())).unwrap();
        cold.push(t.elapsed());
        for _ in 0..20 {
            let t = Instant::now();
            disk.load_or_compile(engine, &digest, || Ok(bytes.clone())).unwrap();
            warm.push(t.elapsed());
        }
    }
    let (cm, _) = stats(cold);
    let (wm, _) = stats(warm);
    println!("\n## Compile cold vs load from the on-disk cache ({} KiB component)\n", bytes.len() / 1024);
    println!("| what | median | ratio |");
    println!("|---|---|---|");
    println!("| compile (Cranelift) | {:.1} ms | {:.0}× |", cm.as_secs_f64() * 1e3, ratio(cm, wm));
    println!("| deserialize cached artifact | {:.3} ms | 1× |", wm.as_secs_f64() * 1e3);
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn which(bin: &str) -> Option<String> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| format!("{d}/{bin}")).find(|p| Path::new(p).exists())
}
