//! What the process sandbox costs per process: `/bin/true` started and awaited
//! through `skiff_sandbox::run` (bubblewrap, namespaces, rlimits, cgroup where
//! available) against a plain `std::process::Command` fork/exec. Prints a markdown table.
//!
//! `cargo bench -p skiff --bench sandbox` (set `SANDBOX_BENCH_N` to change N=200).

use std::time::{Duration, Instant};

use skiff_sandbox::{self as sandbox, Capture, Exit, SandboxSpec};
use tokio_util::sync::CancellationToken;

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let n: usize = std::env::var("SANDBOX_BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    if let Err(e) = sandbox::availability() {
        eprintln!("skipping: {e}");
        return;
    }
    let workspace = std::env::temp_dir().join(format!("skiff-sandbox-bench-{}", std::process::id()));
    std::fs::create_dir_all(&workspace).expect("create workspace");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");

    let spec = SandboxSpec { timeout: Duration::from_secs(30), ..SandboxSpec::new("/bin/true", &workspace) };
    let quiet = |_: sandbox::Stream, _: &str| {};
    let run_sandboxed = || {
        let t = Instant::now();
        let out = rt
            .block_on(sandbox::run(&spec, Capture::default(), CancellationToken::new(), &quiet))
            .expect("sandboxed run");
        assert_eq!(out.exit, Exit::Code(0));
        t.elapsed()
    };
    let run_plain = || {
        let t = Instant::now();
        let status = std::process::Command::new("/bin/true").status().expect("plain run");
        assert!(status.success());
        t.elapsed()
    };
    for _ in 0..10 {
        run_sandboxed();
        run_plain();
    }
    // Interleaved, so drift in machine load affects both alike.
    let (mut sandboxed, mut plain) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        sandboxed.push(run_sandboxed());
        plain.push(run_plain());
    }
    let (sm, sp) = stats(sandboxed);
    let (pm, pp) = stats(plain);
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("sandbox: {}\n", sandbox::describe());
    println!("| `/bin/true`, N={n} | median | p99 |");
    println!("|---|---:|---:|");
    println!("| plain `std::process::Command` | {} | {} |", ms(pm), ms(pp));
    println!("| `sandbox::run` (bubblewrap) | {} | {} |", ms(sm), ms(sp));
    println!("| ratio | {:.1}x | {:.1}x |", ratio(sm, pm), ratio(sp, pp));
    let _ = std::fs::remove_dir_all(&workspace);
}
