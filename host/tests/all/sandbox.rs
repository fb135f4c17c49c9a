//! Tests of the sandbox: hostile programs, each contained, and the plain contract
//! (exit codes, signals, stdin, capture, environment, cwd).
//!
//! They need bubblewrap and user namespaces. Without them a test fails under `CI=true`
//! (`.ci/run` installs bubblewrap, so a missing one is a broken set-up, not a pass); on a
//! developer's machine it says so and passes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use skiff_sandbox::{self as sandbox, Capture, Exit, Limit, Outcome, SandboxError, SandboxSpec, Stream};
use tokio_util::sync::CancellationToken;

pub(crate) fn available() -> bool {
    match sandbox::availability() {
        Ok(()) => true,
        Err(e) => {
            assert!(
                std::env::var("CI").map_or(true, |v| v.is_empty() || v == "false"),
                "the sandbox is unavailable, and under CI=true no sandbox test may pass without it: {e}"
            );
            eprintln!("SKIPPED: the sandbox is unavailable here: {e}");
            false
        }
    }
}

/// A unique token to find a test's processes by command line.
fn token(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("skiff-{name}-{}-{nanos}", std::process::id())
}

/// Processes on the host whose command line contains `token`.
fn running_with(token: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid as u32 == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(token) {
            out.push(pid);
        }
    }
    out
}

struct Run {
    outcome: Outcome,
    lines: Vec<(Stream, String)>,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.outcome.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.outcome.stderr).into_owned()
    }
    fn log(&self) -> String {
        self.lines.iter().map(|(_, l)| format!("{l}\n")).collect()
    }
}

fn sh(script: &str, workspace: &std::path::Path) -> SandboxSpec {
    SandboxSpec {
        args: vec!["-c".into(), script.into()],
        timeout: Duration::from_secs(20),
        ..SandboxSpec::new("sh", workspace)
    }
}

async fn go(spec: &SandboxSpec) -> Run {
    try_go(spec).await.expect("the sandbox runs the program")
}

async fn try_go(spec: &SandboxSpec) -> Result<Run, SandboxError> {
    let lines = Mutex::new(Vec::new());
    let on_line = |s: Stream, l: &str| lines.lock().unwrap().push((s, l.to_string()));
    let outcome = sandbox::run(spec, Capture { log: true, limit: 1 << 20 }, CancellationToken::new(), &on_line).await?;
    Ok(Run { outcome, lines: lines.into_inner().unwrap() })
}

// ---- the contract ----

#[tokio::test]
async fn exit_codes_and_streams() {
    if !available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let run = go(&sh("echo out; echo err >&2; exit 3", ws.path())).await;
    assert_eq!(run.outcome.exit, Exit::Code(3));
    assert_eq!(run.stdout(), "out\n");
    assert_eq!(run.stderr(), "err\n");
    assert!(run.lines.contains(&(Stream::Stdout, "out".into())));
    assert!(run.lines.contains(&(Stream::Stderr, "err".into())));
    assert!(!run.outcome.truncated);
    assert_eq!(run.outcome.output_bytes, 8);
    assert_eq!(go(&SandboxSpec::new("true", ws.path())).await.outcome.exit, Exit::Code(0));
}

#[tokio::test]
async fn signals_are_reported() {
    if !available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let run = go(&sh("kill -TERM $$", ws.path())).await;
    assert_eq!(run.outcome.exit, Exit::Signal(15));
    let run = go(&sh("kill -KILL $$", ws.path())).await;
    assert_eq!(run.outcome.exit, Exit::Signal(9));
}

#[tokio::test]
async fn stdin_is_fed() {
    if !available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let spec = SandboxSpec { stdin: Some(b"hello\nworld".to_vec()), ..SandboxSpec::new("cat", ws.path()) };
    let run = go(&spec).await;
    assert_eq!(run.outcome.exit, Exit::Code(0));
    assert_eq!(run.stdout(), "hello\nworld");
    assert_eq!(run.lines, [(Stream::Stdout, "hello".into()), (Stream::Stdout, "world".into())]);
    // Without stdin, the program reads end-of-file at once.
    assert_eq!(go(&SandboxSpec::new("cat", ws.path())).await.stdout(), "");
}

#[tokio::test]
async fn capture_is_cut_at_its_limit() {
    if !available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let lines = Mutex::new(Vec::new());
    let on_line = |_: Stream, l: &str| lines.lock().unwrap().push(l.to_string());
    let spec = sh("printf 0123456789; printf abcdefgh >&2", ws.path());
    let out = sandbox::run(&spec, Capture { log: false, limit: 4 }, CancellationToken::new(), &on_line).await.unwrap();
    assert_eq!(out.stdout, b"0123");
    assert_eq!(out.stderr, b"abcd");
    assert!(out.truncated);
    assert_eq!(out.output_bytes, 18);
    assert!(lines.lock().unwrap().is_empty(), "log: false delivers no lines");
}

#[tokio::test]
async fn environment_is_only_what_was_declared() {
    if !available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    // The test process has plenty of environment (CARGO_*, HOME, PATH, ...): none may leak.
    assert!(std::env::vars().count() > 3);
    let spec = SandboxSpec { env: vec![("FOO".into(), "bar baz".into())], ..SandboxSpec::new("env", ws.path()) };
    let run = go(&spec).await;
    let stdout = run.stdout();
    let mut names: Vec<&str> = stdout.lines().filter_map(|l| l.split_once('=')).map(|(k, _)| k).collect();
    names.sort();
    // PWD is bubblewrap's, from `--chdir`.
    assert_eq!(names, ["FOO", "HOME", "PATH", "PWD"], "{stdout}");
    assert!(stdout.contains("FOO=bar baz\n"));
    assert!(stdout.contains("PATH=/usr/local/bin:/usr/bin:/bin\n"));
    assert!(stdout.contains("HOME=/tmp\n"));
    // A declared PATH or HOME wins over the defaults.
    let spec = SandboxSpec { env: vec![("HOME".into(), "/workspace".into())], ..SandboxSpec::new("env", ws.path()) };
    assert!(go(&spec).await.stdout().contains("HOME=/workspace\n"));
}

#[tokio::test]
async fn cwd_escapes_are_rejected() {
    if !available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ws.path().join("sub/dir")).unwrap();
    std::os::unix::fs::symlink("/etc", ws.path().join("link")).unwrap();
    for bad in ["..", "../..", "sub/../../x", "/etc", "link", "missing"] {
        let spec = SandboxSpec { cwd: Some(bad.into()), ..SandboxSpec::new("pwd", ws.path()) };
        match try_go(&spec).await {
            Err(SandboxError::Invalid(msg)) => assert!(msg.contains(bad), "{msg}"),
            other => panic!("cwd `{bad}` must be rejected, got {:?}", other.map(|r| r.outcome)),
        }
    }
    let spec = SandboxSpec { cwd: Some("sub/./dir".into()), ..SandboxSpec::new("pwd", ws.path()) };
    assert_eq!(go(&spec).await.stdout(), "/workspace/sub/dir\n");
}

#[tokio::test]
async fn cancel_stops_the_tree() {
    if !available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let tok = token("cancel");
    let spec = SandboxSpec { timeout: Duration::from_secs(60), ..sh(&format!("sleep 100 # {tok}"), ws.path()) };
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let started = Instant::now();
    let out = sandbox::run(&spec, Capture::default(), cancel, &|_, _| {}).await.unwrap();
    assert_eq!(out.exit, Exit::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(running_with(&tok).is_empty());
}

#[tokio::test]
async fn unsandboxed_runs_warn_every_time() {
    let ws = tempfile::tempdir().unwrap();
    let spec = SandboxSpec { unsandboxed: true, ..sh("echo $PWD", ws.path()) };
    let run = go(&spec).await;
    assert_eq!(run.outcome.exit, Exit::Code(0));
    assert!(run.lines[0].1.contains("WITHOUT a sandbox"), "{:?}", run.lines);
}

// ---- hostile programs ----

#[tokio::test]
async fn fork_bomb_is_contained() {
    if !available() {
        return;
    }
    if !sandbox::process_limit_enforced() {
        eprintln!("SKIPPED: running as root without a writable pids cgroup: no process limit to test");
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let tok = token("forkbomb");
    let mut spec = SandboxSpec {
        program: "bash".into(),
        // The classic bomb, while the first shell spins without forking, so the bomb
        // runs until the timeout instead of dying with the namespace when bash exits.
        args: vec!["-c".into(), format!("bomb() {{ bomb | bomb & }}; bomb; while :; do :; done # {tok}")],
        timeout: Duration::from_secs(3),
        ..SandboxSpec::new("bash", ws.path())
    };
    spec.limits.max_processes = 64;
    let started = Instant::now();
    let run = go(&spec).await;
    let elapsed = started.elapsed();
    eprintln!("fork bomb: {:?} after {elapsed:?}, {} log lines", run.outcome.exit, run.lines.len());
    // It hit the process limit (fork fails) and was stopped at its timeout.
    assert_eq!(run.outcome.exit, Exit::TimedOut);
    assert!(run.log().contains("Resource temporarily unavailable"), "the process limit was never hit");
    assert!(elapsed < Duration::from_secs(3) + sandbox::KILL_GRACE + Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(running_with(&tok), Vec::<i32>::new(), "fork bomb processes left running");
}

#[tokio::test]
async fn secrets_and_host_data_are_invisible() {
    if !available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    // A stand-in for the host's data directory (run store, other workspaces): outside the workspace.
    let data_dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let secret = data_dir.path().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET-VALUE").unwrap();
    let other_ws = tempfile::tempdir().unwrap();
    std::fs::write(other_ws.path().join("theirs.txt"), "TOP-SECRET-VALUE").unwrap();
    let script = format!(
        "for f in /etc/shadow /etc/gshadow {secret} {other}/theirs.txt /root /home /var /work /proc/1/root/etc/shadow; do \
           if cat \"$f\" >/dev/null 2>&1 || ls \"$f\" >/dev/null 2>&1; then echo \"LEAK $f\"; else echo \"denied $f\"; fi; \
         done; cat {secret} {other}/theirs.txt 2>&1; grep -c . /etc/passwd",
        secret = secret.display(),
        other = other_ws.path().display(),
    );
    let run = go(&sh(&script, ws.path())).await;
    let out = run.stdout();
    eprintln!("{out}");
    assert!(!out.contains("LEAK"), "{out}");
    assert!(!out.contains("TOP-SECRET-VALUE"), "{out}");
    assert_eq!(out.matches("denied").count(), 9, "{out}");
    // /etc/passwd is the minimal one, not the host's.
    assert!(out.trim_end().ends_with("\n3"), "{out}");
}

#[tokio::test]
async fn nothing_outside_the_workspace_is_writable() {
    if !available() {
        return;
    }
    let parent = tempfile::tempdir().unwrap();
    let ws = parent.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let sibling = parent.path().join("sibling.txt");
    let tok = token("write");
    let targets = [
        "/usr/pwned".to_string(),
        "/etc/pwned".into(),
        "/pwned".into(),
        sibling.display().to_string(),
        "/proc/pwned".into(),
    ];
    let mut script = String::new();
    for t in &targets {
        script.push_str(&format!(
            "if echo x > {t} 2>/dev/null; then echo \"WROTE {t}\"; else echo \"refused {t}\"; fi; "
        ));
    }
    script.push_str(&format!("echo ok > /workspace/ok.txt && echo x > /tmp/{tok} && echo fine"));
    let run = go(&sh(&script, &ws)).await;
    let out = run.stdout();
    assert!(!out.contains("WROTE"), "{out}");
    assert_eq!(out.matches("refused").count(), targets.len(), "{out}");
    assert!(out.contains("fine"), "{out}");
    assert_eq!(std::fs::read_to_string(ws.join("ok.txt")).unwrap(), "ok\n");
    assert!(!sibling.exists());
    assert!(!std::path::Path::new("/usr/pwned").exists() && !std::path::Path::new("/pwned").exists());
    // The sandbox's /tmp is private.
    assert!(!std::env::temp_dir().join(&tok).exists());
}

#[tokio::test]
async fn kill_everything_kills_only_the_sandbox() {
    if !available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let mut sentinel = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let run = go(&sh("kill -9 -1; echo survived", ws.path())).await;
    let alive = sentinel.try_wait().unwrap().is_none();
    let _ = sentinel.kill();
    let _ = sentinel.wait();
    assert!(alive, "`kill -9 -1` in the sandbox killed a host process");
    assert_eq!(run.outcome.exit, Exit::Code(0), "{}", run.log());
    assert_eq!(run.stdout(), "survived\n");
}

#[tokio::test]
async fn network_is_denied_unless_granted() {
    if !available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected");
    let spec = SandboxSpec { program: "bash".into(), ..sh(&script, ws.path()) };
    let run = go(&spec).await;
    assert_ne!(run.outcome.exit, Exit::Code(0), "{}", run.log());
    assert!(!run.stdout().contains("connected"));
    assert!(listener.accept().is_err(), "the listener was reached");
    // Only loopback exists inside.
    let run = go(&sh("cat /proc/net/dev", ws.path())).await;
    let ifaces: Vec<String> =
        run.stdout().lines().skip(2).filter_map(|l| l.split(':').next()).map(|s| s.trim().to_string()).collect();
    assert_eq!(ifaces, ["lo"]);

    // Granted the network, a process still never shares the host's: the same direct
    // connection fails, and without an egress proxy the host refuses to start it.
    let spec = SandboxSpec { network: true, ..spec };
    match try_go(&spec).await {
        Err(e) => assert!(e.to_string().contains("no egress proxy"), "{e}"),
        Ok(run) => panic!("a process with network ran without an egress proxy: {}", run.log()),
    }
}

/// An HTTP server on loopback that answers every request with `body`; its port.
fn http_server(body: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            use std::io::{Read as _, Write as _};
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ =
                write!(conn, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        }
    });
    port
}

#[tokio::test]
async fn network_goes_only_through_the_hosts_egress_proxy() {
    use skiff_runtime::capabilities::egress::{Destinations, EgressProxy};
    use skiff_runtime::capabilities::http::Allowlist;
    if !available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let port = http_server("hello from the host");
    let relay = std::path::PathBuf::from(env!("CARGO_BIN_EXE_skiff-egress-relay"));
    let refused = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let traffic = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let with_proxy = |to: Destinations, script: &str| {
        let notes = refused.clone();
        let proxy =
            EgressProxy::start(to, traffic.clone(), std::sync::Arc::new(move |m| notes.lock().unwrap().push(m)))
                .unwrap();
        let mut spec = sh(script, ws.path());
        spec.network = true;
        spec.egress = Some(sandbox::Egress { socket: proxy.socket().to_path_buf(), relay: relay.clone() });
        (proxy, spec)
    };
    // `--noproxy ''`: as a tool that sends even loopback through the proxy would.
    let curl = format!("curl --noproxy '' -sS --max-time 5 http://127.0.0.1:{port}/ ; echo; echo exit=$?");

    // Any public host: the host's own loopback and the metadata address are refused.
    let (_p, spec) = with_proxy(
        Destinations::Public,
        &format!("{curl}; curl -sS --max-time 5 http://169.254.169.254/latest/ ; echo"),
    );
    let run = go(&spec).await;
    assert!(!run.stdout().contains("hello from the host"), "{}", run.log());
    assert!(run.stdout().contains("loopback, private or metadata"), "{}", run.log());
    assert_eq!(refused.lock().unwrap().len(), 2, "{:?}", refused.lock().unwrap());

    // A direct connection, bypassing the proxy, has nowhere to go.
    let (_p, spec) = with_proxy(Destinations::Public, &format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"));
    let run = go(&spec).await;
    assert!(!run.stdout().contains("connected"), "{}", run.log());

    // Named literally in the allowlist, the private service is reached, and metered.
    let allow = Allowlist::parse(&[format!("127.0.0.1:{port}")]).unwrap();
    let before = traffic.load(std::sync::atomic::Ordering::Relaxed);
    let (_p, spec) = with_proxy(Destinations::Only(allow.clone()), &curl);
    let run = go(&spec).await;
    assert!(run.stdout().contains("hello from the host"), "{}", run.log());
    assert!(traffic.load(std::sync::atomic::Ordering::Relaxed) > before + 50);
    // …and nothing else.
    let (_p, spec) = with_proxy(Destinations::Only(allow), "curl -sS --max-time 5 https://example.com/ ; echo exit=$?");
    let run = go(&spec).await;
    assert!(run.stdout().contains("exit=56") || run.log().contains("403"), "{}", run.log());
}

#[tokio::test]
async fn children_ignoring_sigterm_are_killed_at_timeout() {
    if !available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let tok = token("sigterm");
    let script = format!(
        "trap '' TERM; (trap '' TERM; while :; do sleep 1; done # {tok}-child\n) & \
         setsid sh -c 'trap \"\" TERM; while :; do sleep 1; done # {tok}-daemon' & \
         while :; do sleep 1; done # {tok}"
    );
    let spec = SandboxSpec { timeout: Duration::from_millis(800), ..sh(&script, ws.path()) };
    let started = Instant::now();
    let run = go(&spec).await;
    let elapsed = started.elapsed();
    assert_eq!(run.outcome.exit, Exit::TimedOut);
    assert!(elapsed >= Duration::from_millis(800) + sandbox::KILL_GRACE, "the grace period was skipped: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(800) + sandbox::KILL_GRACE + Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(running_with(&tok), Vec::<i32>::new(), "processes left running");
}

#[tokio::test]
async fn gigabytes_of_output_are_cut_quickly() {
    if !available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let tok = token("flood");
    // `yes` writes gigabytes a second; the default 64 MiB cap stops it.
    let spec = sh(&format!("yes {tok} | cat"), ws.path());
    let lines = Mutex::new((0u64, Vec::new()));
    let on_line = |_: Stream, l: &str| {
        let mut g = lines.lock().unwrap();
        g.0 += 1;
        if l.starts_with("skiff:") {
            g.1.push(l.to_string());
        }
    };
    let started = Instant::now();
    let out =
        sandbox::run(&spec, Capture { log: true, limit: 1024 }, CancellationToken::new(), &on_line).await.unwrap();
    let elapsed = started.elapsed();
    let (count, notices) = lines.into_inner().unwrap();
    eprintln!("flood: {:?} after {elapsed:?}, {} bytes read, {count} lines", out.exit, out.output_bytes);
    assert!(out.output_limit_reached && out.truncated);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].contains("output limit reached"));
    let line_len = tok.len() as u64 + 1;
    assert!(count <= (64 << 20) / line_len + 2, "{count} lines delivered past the cap");
    assert_eq!(out.stdout.len(), 1024);
    assert!(matches!(out.exit, Exit::Signal(_) | Exit::Code(_)), "{:?}", out.exit);
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    assert_eq!(running_with(&tok), Vec::<i32>::new());
}

#[tokio::test]
async fn memory_and_file_size_are_limited() {
    if !available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let mut spec = sh("head -c 4194304 /dev/zero > /workspace/big", ws.path());
    spec.limits.max_file_size = 1 << 20;
    let run = go(&spec).await;
    assert_ne!(run.outcome.exit, Exit::Code(0));
    assert!(std::fs::metadata(ws.path().join("big")).unwrap().len() <= 1 << 20);

    let mut spec = SandboxSpec {
        program: "python3".into(),
        args: vec!["-c".into(), "b = bytearray(2 << 30); print('allocated')".into()],
        ..sh("", ws.path())
    };
    spec.limits.memory_bytes = 512 << 20;
    let run = go(&spec).await;
    assert_ne!(run.outcome.exit, Exit::Code(0));
    if sandbox::memory_limit_per_tree() {
        // The memory cgroup's OOM killer, not an allocation failure: the process is gone.
        assert_eq!(run.outcome.limit_exceeded, Some(Limit::Memory(512 << 20)), "{}", run.log());
    } else {
        assert!(run.log().contains("MemoryError"), "{}", run.log());
    }
}

/// Whether the tree's limits and metering can be tested here: skiff must use a memory cgroup
/// wherever this machine lets its user create one (checked here independently of skiff's own
/// detection, so a detection bug fails instead of skipping), and the tests skip loudly where it
/// does not (cgroups are the machine's, not a tool setup.sh could install).
pub(crate) fn tree_cgroups() -> bool {
    let machine = machine_has_memory_cgroup();
    let skiff = sandbox::memory_limit_per_tree() && sandbox::cpu_metered_per_tree();
    assert!(
        !machine || skiff,
        "this machine lets its user create memory cgroups, and skiff does not use them: {}",
        sandbox::describe()
    );
    if !skiff {
        eprintln!("SKIPPED: no writable memory/cpu cgroups here: {}", sandbox::describe());
    }
    skiff
}

/// A writable v1 memory cgroup below our own, probed by creating one.
fn machine_has_memory_cgroup() -> bool {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let probe = |dir: std::path::PathBuf| {
        let child = dir.join(format!("skiff-test-probe-{}", std::process::id()));
        let ok = std::fs::create_dir(&child).is_ok();
        let _ = std::fs::remove_dir(&child);
        ok
    };
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        // v1 only: there a creatable child is all skiff needs. On v2 the controllers must also be
        // delegated, which only skiff's own detection knows how to try.
        let v2 = controllers.is_empty();
        if v2 || !controllers.split(',').any(|c| c == "memory") {
            continue;
        }
        for m in mounts.lines() {
            let Some((left, right)) = m.split_once(" - ") else { continue };
            let fields: Vec<&str> = right.split(' ').collect();
            let is_it = if v2 {
                fields.first() == Some(&"cgroup2")
            } else {
                fields.first() == Some(&"cgroup") && fields.get(2).is_some_and(|o| o.split(',').any(|c| c == "memory"))
            };
            let Some(mount) = left.split(' ').nth(4) else { continue };
            if !is_it {
                continue;
            }
            let dir = std::path::Path::new(mount).join(path.trim_start_matches('/'));
            let has_memory = !v2
                || std::fs::read_to_string(dir.join("cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"));
            if has_memory && probe(dir) {
                return true;
            }
        }
    }
    false
}

#[tokio::test]
async fn bound_folders_are_writable_only_when_bound_so() {
    if !available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let (home, tools) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut spec = sh(
        "echo kept > /home/skiff/f && cat /opt/skiff/tool-cache/tool && (echo x > /opt/skiff/tool-cache/planted) 2>&1; true",
        ws.path(),
    );
    std::fs::write(tools.path().join("tool"), "a cached tool\n").unwrap();
    spec.binds = vec![
        sandbox::Bind { host: home.path().into(), inside: "/home/skiff".into(), read_only: false },
        sandbox::Bind { host: tools.path().into(), inside: "/opt/skiff/tool-cache".into(), read_only: true },
    ];
    let run = go(&spec).await;
    assert_eq!(run.outcome.exit, Exit::Code(0), "{}", run.log());
    assert!(run.log().contains("a cached tool") && run.log().contains("Read-only file system"), "{}", run.log());
    assert_eq!(std::fs::read_to_string(home.path().join("f")).unwrap(), "kept\n");
    assert!(!tools.path().join("planted").exists());
    // Mount points that would shadow the workspace or the sandbox's own are refused.
    for inside in ["/workspace/x", "/", "relative", "/home/../etc", "/proc/self"] {
        let mut bad = sh("true", ws.path());
        bad.binds = vec![sandbox::Bind { host: home.path().into(), inside: inside.into(), read_only: false }];
        assert!(matches!(try_go(&bad).await, Err(SandboxError::Invalid(_))), "{inside} was accepted");
    }
}

#[tokio::test]
async fn memory_limit_holds_for_the_whole_tree() {
    if !available() || !tree_cgroups() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    // Three children of 100 MiB each stay under any per-process limit; the tree does not.
    let script = "for i in 1 2 3; do python3 -c 'import time; b = bytearray(100 << 20); time.sleep(3)' & done; wait";
    let mut spec = sh(script, ws.path());
    spec.limits.memory_bytes = 100 << 20;
    let run = go(&spec).await;
    assert_eq!(run.outcome.limit_exceeded, Some(Limit::Memory(100 << 20)), "{:?} {}", run.outcome.exit, run.log());
    assert_eq!(Limit::Memory(100 << 20).to_string(), "memory limit 100 MiB exceeded");
    let peak = run.outcome.usage.peak_memory_bytes.unwrap();
    assert!(peak <= (100 << 20) + (1 << 20), "peak {peak} past the limit");

    // One 300 MiB allocation in one process, as a user would write it.
    let mut spec = sh("python3 -c 'b = bytearray(300 << 20); print(len(b))'", ws.path());
    spec.limits.memory_bytes = 100 << 20;
    let run = go(&spec).await;
    assert_ne!(run.outcome.exit, Exit::Code(0));
    assert_eq!(run.outcome.limit_exceeded, Some(Limit::Memory(100 << 20)), "{}", run.log());
}

#[tokio::test]
async fn usage_counts_the_whole_tree() {
    if !available() || !tree_cgroups() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    // Two busy children, each spinning for 0.4 s of its own CPU time however loaded the machine
    // is, and 64 MiB held by a third.
    let script = "for i in 1 2; do python3 -c 'import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass' & done; \
                  python3 -c 'import time; b = bytearray(64 << 20); time.sleep(0.5)'; wait";
    let run = go(&sh(script, ws.path())).await;
    assert_eq!(run.outcome.exit, Exit::Code(0), "{}", run.log());
    let usage = run.outcome.usage;
    let cpu = usage.cpu.unwrap();
    assert!(cpu >= Duration::from_millis(600), "the busy children's CPU time is missing: {cpu:?}");
    let peak = usage.peak_memory_bytes.unwrap();
    assert!(peak >= 64 << 20, "the 64 MiB child is missing from the peak: {peak}");
    assert_eq!(run.outcome.limit_exceeded, None);
}

#[tokio::test]
async fn cpu_limit_holds_for_the_whole_tree() {
    if !available() || !tree_cgroups() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    // Each child stays under a per-process RLIMIT_CPU of 1 s for a while; their sum does not.
    let mut spec = sh("for i in 1 2 3 4; do sh -c 'while :; do :; done' & done; wait", ws.path());
    spec.limits.cpu_seconds = 1;
    spec.timeout = Duration::from_secs(30);
    let started = Instant::now();
    let run = go(&spec).await;
    assert_eq!(run.outcome.limit_exceeded, Some(Limit::Cpu(Duration::from_secs(1))), "{}", run.log());
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert_ne!(run.outcome.exit, Exit::Code(0));
}
