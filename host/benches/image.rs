//! What a container image costs a `run:` step (issue 15's target: a step in an image, layer
//! cache warm, within 1.5x of host mode). Two levels, each interleaved so machine drift affects
//! all alike:
//! - process: `/bin/true` through `skiff_sandbox::run` on the host's `/usr`, the same in the
//!   image (overlay per job, mounted per process), and a bare `bwrap` of the same command with the
//!   image's root bound read-only (no overlay, no cgroups, no rlimits);
//! - step: a one-step pipeline `run: "true"` through the engine and the wasmtime runtime (the
//!   `shell` component, its process), in host mode and in the image.
//!
//! `cargo bench -p skiff --bench image` (N with `IMAGE_BENCH_N`, default 200 processes and 50 steps).
//! Needs Debian's busybox-static (`/bin/busybox`) for the image's root.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_pipeline::component_ref::Digest;
use skiff_pipeline::{RunEvent, RunObserver, RunOptions, load_str, run_pipeline};
use skiff_runtime::Runtime;
use skiff_runtime::engine::EngineOptions;
use skiff_runtime::executor::LocalExecutor;
use skiff_runtime::image_store::{ImageStore, PreparedImage};
use skiff_runtime::jobs::JobSpaces;
use skiff_runtime::sandbox::{self, Capture, Exit, ImageRoot, SandboxSpec, rootfs};
use tokio_util::sync::CancellationToken;

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A root filesystem of busybox and its `true` and `sh`, unpacked by `rootfs::build` as a pulled
/// image's would be.
fn image_root(dir: &Path) -> std::path::PathBuf {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        match link {
            Some(l) => b.append_link(&mut h, path, l).unwrap(),
            None => b.append_data(&mut h, path, data).unwrap(),
        }
    };
    // `proc` and `dev` exist for the bare `bwrap`, whose root is read-only.
    for d in ["bin", "etc", "tmp", "proc", "dev"] {
        add(d, tar::EntryType::Directory, &[], None);
    }
    add("bin/busybox", tar::EntryType::Regular, &busybox, None);
    for applet in ["sh", "true"] {
        add(&format!("bin/{applet}"), tar::EntryType::Symlink, &[], Some("busybox"));
    }
    add("etc/passwd", tar::EntryType::Regular, b"root:x:0:0:root:/root:/bin/sh\n", None);
    let layer = b.into_inner().unwrap();
    let blob = dir.join("layer.tar");
    std::fs::write(&blob, &layer).unwrap();
    let layers =
        [rootfs::Layer { digest: Digest::of(&layer).to_string(), compression: rootfs::Compression::None, path: blob }];
    rootfs::build(&dir.join("rootfs"), &Digest::of(&layer).to_string(), &layers, &rootfs::Limits::default()).unwrap()
}

struct Quiet;
impl RunObserver for Quiet {
    fn event(&self, _: &RunEvent) {}
}

fn main() {
    let n: usize = std::env::var("IMAGE_BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let steps = (n / 4).max(10);
    if let Err(e) = sandbox::availability().and_then(|()| sandbox::image_roots_available()) {
        eprintln!("skipping: {e}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lower = image_root(dir.path());
    let workspace = dir.path().join("workspace");
    std::fs::create_dir_all(&workspace).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // ---- one process ----
    let quiet = |_: sandbox::Stream, _: &str| {};
    let host = SandboxSpec { timeout: Duration::from_secs(30), ..SandboxSpec::new("/bin/true", &workspace) };
    let image = SandboxSpec {
        image: Some(ImageRoot { lower: lower.clone(), job_dir: dir.path().join("job"), uid: 0, gid: 0 }),
        ..host.clone()
    };
    let run = |spec: &SandboxSpec| {
        let t = Instant::now();
        let out = rt.block_on(sandbox::run(spec, Capture::default(), CancellationToken::new(), &quiet)).unwrap();
        assert_eq!(out.exit, Exit::Code(0));
        t.elapsed()
    };
    let bare = || {
        let t = Instant::now();
        let status = std::process::Command::new("bwrap")
            .args(["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"])
            .args(["--die-with-parent", "--ro-bind"])
            .arg(&lower)
            .args(["/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "/bin/true"])
            .status()
            .unwrap();
        assert!(status.success());
        t.elapsed()
    };
    for _ in 0..10 {
        run(&host);
        run(&image);
        bare();
    }
    let (mut h, mut i, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        h.push(run(&host));
        i.push(run(&image));
        b.push(bare());
    }
    let ((hm, hp), (im, ip), (bm, bp)) = (stats(h), stats(i), stats(b));
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("sandbox: {}\n", sandbox::describe());
    println!("| `/bin/true`, N={n} | median | p99 | image / this (median) |");
    println!("|---|---:|---:|---:|");
    println!("| bare `bwrap`, image root read-only | {} | {} | {:.2}x |", ms(bm), ms(bp), ratio(im, bm));
    println!("| `sandbox::run`, host mode | {} | {} | {:.2}x |", ms(hm), ms(hp), ratio(im, hm));
    println!("| `sandbox::run`, in the image (overlay) | {} | {} | 1.00x |", ms(im), ms(ip));

    // ---- one `run:` step ----
    let store = ImageStore::new(dir.path().join("images"));
    let pinned = Digest::of(b"skiff image bench");
    store
        .record(
            &pinned,
            &PreparedImage {
                reference: "bench".into(),
                manifest: pinned.to_string(),
                rootfs: lower.clone(),
                env: vec!["PATH=/bin".into()],
                working_dir: "/".into(),
                user: String::new(),
            },
        )
        .unwrap();
    let runtime = Runtime::new(EngineOptions { pool_size: 16, ..Default::default() }, None).unwrap();
    let mut executor = LocalExecutor::new(Arc::new(runtime));
    executor.images = store;
    executor.jobs = JobSpaces::new(dir.path().join("jobs"), None);
    let executor: Arc<dyn skiff_pipeline::StepExecutor> = Arc::new(executor);
    let load = |text: String| load_str(&text, "bench.yaml", dir.path()).unwrap();
    let host_plan = load("steps:\n  - run: \"true\"\n    shell: sh\n".into());
    let image_plan = load(format!(
        "jobs:\n  j:\n    container: 127.0.0.1:1/bench/busybox@{pinned}\n    steps:\n      - run: \"true\"\n        shell: sh\n"
    ));
    let step = |plan: &skiff_pipeline::Plan, k: usize| {
        let opts = RunOptions { run_id: format!("r{k}"), workspace: workspace.clone(), ..Default::default() };
        let t = Instant::now();
        let report = rt.block_on(run_pipeline(plan, opts, executor.clone(), Arc::new(Quiet)));
        assert!(report.success(), "{report:?}");
        t.elapsed()
    };
    for k in 0..5 {
        step(&host_plan, k);
        step(&image_plan, k);
    }
    let (mut h, mut i) = (Vec::new(), Vec::new());
    for k in 0..steps {
        h.push(step(&host_plan, k));
        i.push(step(&image_plan, k));
    }
    let ((hm, hp), (im, ip)) = (stats(h), stats(i));
    println!("\n| one-step pipeline `run: \"true\"`, N={steps} | median | p99 |");
    println!("|---|---:|---:|");
    println!("| host mode | {} | {} |", ms(hm), ms(hp));
    println!("| in the image (warm layer cache) | {} | {} |", ms(im), ms(ip));
    println!("| ratio image / host | {:.2}x | {:.2}x |", ratio(im, hm), ratio(ip, hp));
}
