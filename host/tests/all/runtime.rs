//! The step runtime against real components: the built-in `diag` step and the
//! hostile guest, one attack per test, each contained while the host keeps serving.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use skiff_runtime::builtin;
use skiff_runtime::cache::Source;
use skiff_runtime::capabilities::http::Allowlist;
use skiff_runtime::capabilities::log::{Level, LogLine};
use skiff_runtime::capabilities::process::ProcessGrant;
use skiff_runtime::limits::Limits;
use skiff_runtime::{EngineOptions, LoadedStep, Runtime, StepInvocation, StepReport, StepStatus};

const HOSTILE: &str = skiff_runtime::test_guests::HOSTILE;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Runtime::new(EngineOptions { pool_size: 64, ..Default::default() }, Some(crate::shared_cache_dir())).unwrap()
    })
}

async fn hostile() -> Arc<LoadedStep> {
    runtime().load(&std::fs::read(HOSTILE).unwrap()).await.unwrap()
}

async fn diag() -> Arc<LoadedStep> {
    runtime().load(builtin::get("diag").unwrap()).await.unwrap()
}

fn invocation(ws: &Path, inputs: &[(&str, &str)]) -> StepInvocation {
    StepInvocation {
        run_id: "r1".into(),
        step_id: "s1".into(),
        inputs: inputs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        workspace: ws.to_path_buf(),
        limits: Limits { timeout: Duration::from_secs(20), ..Limits::default() },
        ..Default::default()
    }
}

/// Runs a step and collects its log.
async fn run(step: &LoadedStep, inv: StepInvocation) -> (StepReport, Vec<LogLine>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let report = runtime().run(step, inv, Arc::new(move |r| sink.lock().unwrap().push(r))).await;
    let lines = lines.lock().unwrap().clone();
    (report, lines)
}

async fn attack(ws: &Path, name: &str, arg: &str) -> (StepReport, Vec<LogLine>) {
    run(&*hostile().await, invocation(ws, &[("attack", name), ("arg", arg)])).await
}

fn joined(lines: &[LogLine]) -> String {
    lines.iter().map(|l| format!("{}: {}\n", l.level.as_str(), l.text)).collect()
}

/// A one-answer HTTP server on 127.0.0.1 that counts connections.
fn http_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello");
        }
    });
    (port, hits)
}

#[tokio::test]
async fn diag_writes_its_file_and_reports_only_what_was_granted() {
    let ws = tempfile::tempdir().unwrap();
    let mut inv = invocation(ws.path(), &[("message", "ahoy")]);
    inv.env = BTreeMap::from([("DECLARED".into(), "1".into())]);
    inv.secrets = BTreeMap::from([("TOKEN".into(), "tok-123456".into())]);
    let (report, log) = run(&*diag().await, inv).await;
    assert_eq!(report.status, StepStatus::Succeeded, "{}", joined(&log));
    let text = std::fs::read_to_string(ws.path().join("skiff-diag.txt")).unwrap();
    assert!(text.starts_with("ahoy\nrun=r1 step=s1"), "{text}");
    assert_eq!(report.outputs["env"], "DECLARED", "no host environment may leak in");
    assert_eq!(report.outputs["secrets"], "TOKEN");
    assert_eq!(report.outputs["inputs"], "message");
    assert!(report.summary.unwrap().contains("diag"));
    assert!(joined(&log).contains("wrote"));
}

#[tokio::test]
async fn a_failing_step_ends_with_its_own_error() {
    let ws = tempfile::tempdir().unwrap();
    let (report, _) = run(&*diag().await, invocation(ws.path(), &[("fail", "true")])).await;
    assert_eq!(report.status, StepStatus::Failed("failing on purpose because input `fail` is `true`".into()));
}

#[tokio::test]
async fn an_infinite_loop_times_out_and_the_host_keeps_serving() {
    let ws = tempfile::tempdir().unwrap();
    let step = hostile().await;
    let mut inv = invocation(ws.path(), &[("attack", "loop")]);
    inv.limits.timeout = Duration::from_secs(1);
    let spinning = tokio::spawn(async move { run(&step, inv).await.0 });
    // While it spins, other steps run.
    let ws2 = tempfile::tempdir().unwrap();
    let (ok, _) = run(&*diag().await, invocation(ws2.path(), &[])).await;
    assert!(ok.status.succeeded());
    let report = spinning.await.unwrap();
    assert_eq!(report.status, StepStatus::TimedOut("timed out after 1s".into()));
}

#[tokio::test]
async fn cpu_time_is_limited_separately_from_wall_time() {
    let ws = tempfile::tempdir().unwrap();
    let mut inv = invocation(ws.path(), &[("attack", "loop")]);
    inv.limits.cpu = Duration::from_millis(300);
    let (report, _) = run(&*hostile().await, inv).await;
    assert_eq!(report.status, StepStatus::CpuLimit("CPU limit 300ms exceeded".into()));
    assert!(report.usage.cpu_ms >= 300);
}

#[tokio::test]
async fn unbounded_allocation_hits_the_memory_limit() {
    let ws = tempfile::tempdir().unwrap();
    let mut inv = invocation(ws.path(), &[("attack", "alloc")]);
    inv.limits.memory = 64 << 20;
    let (report, _) = run(&*hostile().await, inv).await;
    assert_eq!(report.status, StepStatus::MemoryLimit("memory limit 64 MiB exceeded".into()));
    assert!(report.usage.peak_memory_bytes <= 64 << 20);
}

#[tokio::test]
async fn unbounded_recursion_is_a_stack_overflow() {
    let ws = tempfile::tempdir().unwrap();
    let (report, _) = attack(ws.path(), "recurse", "").await;
    assert_eq!(report.status, StepStatus::Crashed("stack overflow: the step recursed too deeply".into()));
    let (report, _) = attack(ws.path(), "recurse-shadow", "").await;
    assert!(
        matches!(&report.status, StepStatus::Crashed(m) if m.contains("unbounded recursion")),
        "{:?}",
        report.status
    );
}

#[tokio::test]
async fn a_panic_is_a_crash_not_a_host_failure() {
    let ws = tempfile::tempdir().unwrap();
    let (report, log) = attack(ws.path(), "panic", "").await;
    assert!(matches!(report.status, StepStatus::Crashed(_)), "{:?}", report.status);
    assert!(joined(&log).contains("hostile guest panics on purpose"), "the guest's stderr explains the crash");
}

#[tokio::test]
async fn the_workspace_cannot_be_escaped() {
    let outer = tempfile::tempdir().unwrap();
    let ws = outer.path().join("ws");
    let other = outer.path().join("other-step");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(outer.path().join("host-secret"), "TOP-SECRET").unwrap();
    std::fs::write(other.join("data"), "OTHER-STEP").unwrap();
    let other_abs = other.join("data").display().to_string();
    let cases = [
        ("read", "../host-secret".to_string()),
        ("read", "/etc/passwd".to_string()),
        ("read", other_abs.clone()),
        ("read", "../other-step/data".to_string()),
        ("read", "/workspace/../host-secret".to_string()),
        ("symlink", "/etc/passwd".to_string()),
        ("symlink", "../host-secret".to_string()),
        ("symlink", other_abs),
        ("list", "..".to_string()),
    ];
    for (what, arg) in cases {
        let (report, _) = attack(&ws, what, &arg).await;
        assert!(
            matches!(report.status, StepStatus::Failed(_)) && !report.outputs.contains_key("leaked"),
            "{what} {arg}: {:?} {:?}",
            report.status,
            report.outputs
        );
    }
    // `/` lists nothing of the host.
    let (report, _) = attack(&ws, "list", "/").await;
    let entries = report.outputs.get("entries").cloned().unwrap_or_default();
    assert!(!entries.contains("etc") && !entries.contains("usr"), "{entries}");
    let (report, _) = attack(&ws, "write", "../owned").await;
    assert!(matches!(report.status, StepStatus::Failed(_)));
    assert!(!outer.path().join("owned").exists());
    let (report, _) = attack(&ws, "write", "/tmp/skiff-owned").await;
    assert!(matches!(report.status, StepStatus::Failed(_)));
    // Inside the workspace, both spellings work.
    let (report, _) = attack(&ws, "write", "inside.txt").await;
    assert!(report.status.succeeded());
    let (report, _) = attack(&ws, "read", "/workspace/inside.txt").await;
    assert_eq!(report.outputs["leaked"], "owned");
}

#[tokio::test]
async fn http_reaches_only_allowlisted_hosts_and_no_connection_is_made_otherwise() {
    let ws = tempfile::tempdir().unwrap();
    let (port, hits) = http_server();
    let url = format!("http://127.0.0.1:{port}/");
    let step = hostile().await;

    // Not allowlisted at all.
    let (report, log) = run(&step, invocation(ws.path(), &[("attack", "http"), ("arg", &url)])).await;
    assert!(matches!(&report.status, StepStatus::Denied(m) if m.contains("not allowed")), "{:?}", report.status);
    assert!(joined(&log).contains(&format!("denied outbound HTTP to `127.0.0.1:{port}`")));

    // Another port of the same address is granted, not this one.
    let mut inv = invocation(ws.path(), &[("attack", "http"), ("arg", &url)]);
    inv.allow_hosts = Allowlist::parse(&[format!("127.0.0.1:{}", port.wrapping_add(1))]).unwrap();
    let (report, _) = run(&step, inv).await;
    assert!(matches!(report.status, StepStatus::Denied(_)));
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a denied request must not connect");

    // Cloud metadata, even when listed.
    let mut inv = invocation(ws.path(), &[("attack", "http"), ("arg", "http://169.254.169.254/latest/meta-data/")]);
    inv.allow_hosts = Allowlist::parse(&["169.254.169.254"]).unwrap();
    let (report, log) = run(&step, inv).await;
    assert!(matches!(report.status, StepStatus::Denied(_)), "{:?}", report.status);
    assert!(joined(&log).contains("metadata"));

    // Granted.
    let mut inv = invocation(ws.path(), &[("attack", "http"), ("arg", &url)]);
    inv.allow_hosts = Allowlist::parse(&[format!("127.0.0.1:{port}")]).unwrap();
    let (report, log) = run(&step, inv).await;
    assert!(report.status.succeeded(), "{:?} {}", report.status, joined(&log));
    assert_eq!(report.outputs["status"], "200");
    assert_eq!(report.outputs["body"], "hello");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(report.usage.egress_bytes >= 5);
}

#[tokio::test]
async fn a_step_that_asks_for_a_host_it_is_not_granted_is_refused_before_it_runs() {
    let ws = tempfile::tempdir().unwrap();
    let (report, _) = run(&*diag().await, invocation(ws.path(), &[("fetch", "https://example.com/")])).await;
    assert_eq!(
        report.status,
        StepStatus::Denied("step `diag` asks for network access to `https://example.com/`, which is not granted: add it to `permissions.hosts` (or pass --allow-host)".into())
    );
    assert!(!ws.path().join("skiff-diag.txt").exists(), "the step must not have run");
}

#[tokio::test]
async fn the_host_environment_is_invisible() {
    // SAFETY-free: tests in this binary only read their own variables.
    let ws = tempfile::tempdir().unwrap();
    let mut inv = invocation(ws.path(), &[("attack", "env")]);
    inv.env = BTreeMap::from([("ONLY_THIS".into(), "yes".into())]);
    let (report, _) = run(&*hostile().await, inv).await;
    assert_eq!(report.outputs["env"], "ONLY_THIS=yes");
    assert!(std::env::var("PATH").is_ok(), "the host does have variables to leak");
}

#[tokio::test]
async fn flooding_the_log_stops_at_the_limit() {
    for attack_name in ["flood", "flood-stdout"] {
        let ws = tempfile::tempdir().unwrap();
        let mut inv = invocation(ws.path(), &[("attack", attack_name)]);
        inv.limits.log_bytes = 1 << 20;
        let (report, log) = run(&*hostile().await, inv).await;
        assert_eq!(report.status, StepStatus::LogLimit("log limit 1 MiB reached".into()), "{attack_name}");
        let guest_bytes: usize = log.iter().filter(|l| l.level != Level::System).map(|l| l.text.len() + 1).sum();
        assert!(guest_bytes <= 1 << 20, "{attack_name}: {guest_bytes} bytes got through");
    }
}

#[tokio::test]
async fn a_granted_secret_is_masked_whole_everywhere_in_the_log() {
    let ws = tempfile::tempdir().unwrap();
    let secret = "hunter2-Sup3r/S3cret";
    let mut inv = invocation(ws.path(), &[("attack", "print-secret"), ("arg", "API_KEY")]);
    inv.secrets = BTreeMap::from([("API_KEY".into(), secret.into())]);
    let (report, log) = run(&*hostile().await, inv).await;
    assert!(report.status.succeeded());
    let text = joined(&log);
    assert!(!text.contains("hunter2") && !text.contains("S3cret"), "{text}");
    assert!(text.contains("info: the secret is *** (log)"), "{text}");
    assert!(text.contains("stdout: stdout sees ***!"), "{text}");
    assert!(text.contains("stderr: stderr sees:***"), "{text}");
}

#[tokio::test]
async fn secrets_and_processes_not_granted_are_refused() {
    let ws = tempfile::tempdir().unwrap();
    let (report, _) = attack(ws.path(), "secret-not-granted", "AWS_SECRET").await;
    assert_eq!(report.status, StepStatus::Denied("secret `AWS_SECRET` was not granted".into()));
    let (report, _) = attack(ws.path(), "process", "").await;
    assert!(
        matches!(&report.status, StepStatus::Denied(m) if m.contains("not granted `process`")),
        "{:?}",
        report.status
    );
    let _ = ProcessGrant::default();
}

#[tokio::test]
async fn many_steps_run_at_once() {
    let step = diag().await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let step = step.clone();
        tasks.push(tokio::spawn(async move {
            let ws = tempfile::tempdir().unwrap();
            let (r, _) = run(&step, invocation(ws.path(), &[("message", &format!("n{i}"))])).await;
            r.status
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().succeeded());
    }
}

#[tokio::test]
async fn compiled_components_are_cached_by_content_and_engine_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = builtin::get("diag").unwrap();
    let opts = EngineOptions { pooling: false, ..Default::default() };
    let first = Runtime::new(opts, Some(dir.path().to_path_buf())).unwrap();
    assert_eq!(first.load(bytes).await.unwrap().source, Source::Compiled);
    let second = Runtime::new(opts, Some(dir.path().to_path_buf())).unwrap();
    assert_eq!(second.load(bytes).await.unwrap().source, Source::Disk);
    let fuel = Runtime::new(EngineOptions { fuel: true, ..opts }, Some(dir.path().to_path_buf())).unwrap();
    assert_eq!(fuel.load(bytes).await.unwrap().source, Source::Compiled, "another engine configuration recompiles");
    // A corrupt cache entry is recompiled, not trusted. (Replaced, not
    // rewritten in place: the runtimes above still map the old files.)
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let path = e.unwrap().path();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"garbage").unwrap();
    }
    let third = Runtime::new(opts, Some(dir.path().to_path_buf())).unwrap();
    assert_eq!(third.load(bytes).await.unwrap().source, Source::Compiled);
}

#[tokio::test]
async fn a_fuel_budget_stops_a_step_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(EngineOptions { pooling: false, fuel: true, ..Default::default() }, Some(dir.path().into()))
        .unwrap();
    let step = rt.load(&std::fs::read(HOSTILE).unwrap()).await.unwrap();
    let ws = tempfile::tempdir().unwrap();
    let mut inv = invocation(ws.path(), &[("attack", "loop")]);
    inv.limits.fuel = Some(5_000_000);
    let report = rt.run(&step, inv, Arc::new(|_| {})).await;
    assert_eq!(report.status, StepStatus::CpuLimit("fuel budget of 5000000 instructions exhausted".into()));
}

#[tokio::test]
async fn not_a_component_is_a_clear_error() {
    let err = runtime().load(b"\0asm\x01\0\0\0").await.unwrap_err().to_string();
    assert!(err.contains("not a valid step component"), "{err}");
}

async fn shell() -> Arc<LoadedStep> {
    runtime().load(builtin::get("shell").unwrap()).await.unwrap()
}

fn shell_invocation(ws: &Path, script: &str) -> StepInvocation {
    let mut inv = invocation(ws, &[("script", script)]);
    inv.process = ProcessGrant { allowed: true, ..Default::default() };
    inv
}

#[tokio::test]
async fn the_shell_step_runs_scripts_in_the_process_sandbox_and_returns_outputs() {
    let ws = tempfile::tempdir().unwrap();
    let script = "echo hello from bash\necho \"greeting=hi $WHO\" >> \"$SKIFF_OUTPUT\"\necho 'EXTRA=1' >> \"$SKIFF_ENV\"\ntouch made-here";
    let mut inv = shell_invocation(ws.path(), script);
    inv.env = BTreeMap::from([("WHO".into(), "there".into())]);
    let (report, log) = run(&*shell().await, inv).await;
    assert!(report.status.succeeded(), "{:?}\n{}", report.status, joined(&log));
    assert!(joined(&log).contains("stdout: hello from bash"), "{}", joined(&log));
    assert_eq!(report.outputs["greeting"], "hi there");
    assert_eq!(report.outputs["skiff.env.EXTRA"], "1");
    assert!(ws.path().join("made-here").exists());
}

#[tokio::test]
async fn a_shell_step_without_the_process_grant_is_refused_before_it_runs() {
    let ws = tempfile::tempdir().unwrap();
    let (report, _) = run(&*shell().await, invocation(ws.path(), &[("script", "touch nope")])).await;
    assert!(matches!(&report.status, StepStatus::Denied(m) if m.contains("`process`")), "{:?}", report.status);
    assert!(!ws.path().join("nope").exists());
}

#[tokio::test]
async fn a_process_outliving_its_step_is_killed_with_it() {
    let ws = tempfile::tempdir().unwrap();
    let token = format!("skiff-sleeper-{}", std::process::id());
    let mut inv = shell_invocation(ws.path(), &format!("trap '' TERM; exec -a {token} sleep 300"));
    inv.limits.timeout = Duration::from_secs(2);
    let (report, _) = run(&*shell().await, inv).await;
    assert!(!report.status.succeeded());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ps = std::process::Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(!ps.contains(&token), "left running:\n{ps}");
}

#[tokio::test]
async fn a_failing_script_fails_the_step_with_its_exit_code() {
    let ws = tempfile::tempdir().unwrap();
    let (report, _) = run(&*shell().await, shell_invocation(ws.path(), "echo before\nfalse\necho never")).await;
    assert_eq!(report.status, StepStatus::Failed("`run` script exited with code 1".into()));
}
