//! The built-in `script` step (zx-style JavaScript in boa, inside the step's Wasm
//! sandbox) as a real component in the real runtime: what a script can reach is
//! exactly what its step was granted.
//!
//! Tests that run a process need bubblewrap: without it they fail under `CI=true`
//! and say so elsewhere (`crate::sandbox::available`).

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use skiff_runtime::builtin;
use skiff_runtime::capabilities::http::Allowlist;
use skiff_runtime::capabilities::log::LogLine;
use skiff_runtime::capabilities::process::ProcessGrant;
use skiff_runtime::limits::Limits;
use skiff_runtime::{EngineOptions, LoadedStep, Runtime, StepInvocation, StepReport, StepStatus};

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Runtime::new(EngineOptions { pool_size: 16, ..Default::default() }, Some(crate::shared_cache_dir())).unwrap()
    })
}

async fn script_step() -> Arc<LoadedStep> {
    runtime().load(builtin::get("script").expect("`script` is a built-in step")).await.unwrap()
}

/// An invocation of `script` with `source` as its script and `origin` as the pipeline does.
fn invocation(ws: &Path, source: &str) -> StepInvocation {
    StepInvocation {
        run_id: "r1".into(),
        step_id: "s1".into(),
        inputs: BTreeMap::from([
            ("script".to_string(), source.to_string()),
            ("origin".to_string(), ".skiff.yaml:12:15".to_string()),
        ]),
        workspace: ws.to_path_buf(),
        env: BTreeMap::from([("CI".to_string(), "true".to_string())]),
        limits: Limits { timeout: Duration::from_secs(60), ..Limits::default() },
        ..Default::default()
    }
}

fn with_process(mut inv: StepInvocation) -> StepInvocation {
    inv.process = ProcessGrant { allowed: true, ..Default::default() };
    inv
}

async fn run(inv: StepInvocation) -> (StepReport, Vec<LogLine>) {
    let step = script_step().await;
    let lines: Arc<Mutex<Vec<LogLine>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let report = runtime().run(&step, inv, Arc::new(move |r| sink.lock().unwrap().push(r))).await;
    let lines = lines.lock().unwrap().clone();
    (report, lines)
}

fn joined(lines: &[LogLine]) -> String {
    lines.iter().map(|l| format!("{}: {}\n", l.level.as_str(), l.text)).collect()
}

/// The texts of the lines the script logged itself (`console.*`, `core.*`).
fn info(lines: &[LogLine]) -> Vec<&str> {
    lines.iter().filter(|l| l.level.as_str() == "info").map(|l| l.text.as_str()).collect()
}

fn failure(report: &StepReport) -> &str {
    match &report.status {
        StepStatus::Failed(m) | StepStatus::Denied(m) => m,
        other => panic!("expected the script to fail, it ended {other:?}"),
    }
}

#[tokio::test]
async fn the_manifest_asks_for_nothing() {
    let step = script_step().await;
    let caps = &step.manifest.capabilities;
    assert_eq!(step.manifest.name, "script");
    assert!(!caps.process && caps.hosts.is_empty() && caps.secrets.is_empty(), "{caps:?}");
    assert!(step.manifest.inputs.iter().any(|i| i.name == "script" && i.required));
}

#[tokio::test]
async fn the_zx_example_lists_the_workspace() {
    if !crate::sandbox::available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("marker-from-the-test.txt"), "x").unwrap();
    let inv = with_process(invocation(ws.path(), "const listFile = await $`ls -la`; console.log(listFile)"));
    let (report, lines) = run(inv).await;
    assert!(report.status.succeeded(), "{:?}\n{}", report.status, joined(&lines));
    // Once streamed by `ls` itself, once printed by `console.log`.
    let streamed = lines.iter().filter(|l| l.level.as_str() == "stdout" && l.text.contains("marker-from-the-test.txt"));
    assert_eq!(streamed.count(), 1, "{}", joined(&lines));
    let printed = info(&lines);
    assert!(printed.iter().any(|l| l.contains("marker-from-the-test.txt")), "{}", joined(&lines));
}

#[tokio::test]
async fn without_the_process_grant_dollar_fails_naming_the_grant() {
    let ws = tempfile::tempdir().unwrap();
    let (report, lines) =
        run(invocation(ws.path(), "console.log('before');\nawait $`ls -la`;\nconsole.log('after');")).await;
    // The step ran (the manifest asks for nothing), and `$` failed when it was called.
    assert_eq!(info(&lines), ["before"], "{}", joined(&lines));
    assert!(matches!(report.status, StepStatus::Denied(_)), "{:?}", report.status);
    assert!(failure(&report).contains("permissions: { process: true }"), "{}", failure(&report));
}

#[tokio::test]
async fn fs_cannot_leave_the_workspace() {
    let outer = tempfile::tempdir().unwrap();
    let ws = outer.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(outer.path().join("x"), "OUTSIDE-THE-WORKSPACE").unwrap();
    std::os::unix::fs::symlink("/etc", ws.join("etc-link")).unwrap();
    std::fs::write(ws.join("inside.txt"), "inside").unwrap();
    let source = r#"
        for (const p of ['../x', '/etc/passwd', 'etc-link/passwd', 'etc-link', '/workspace/../x']) {
          try {
            const text = fs.readFileSync(p);
            console.log(`READ ${p}: ${text}`);
          } catch (e) {
            console.log(`refused ${p}: ${e.code}: ${e.message}`);
          }
        }
        for (const [op, args] of [['writeFileSync', ['../y', 'z']], ['readdirSync', ['etc-link']], ['mkdirSync', ['../d']]]) {
          try { fs[op](...args); console.log(`DID ${op}`) } catch (e) { console.log(`refused ${op}: ${e.code}`) }
        }
        try { cd('..') } catch (e) { console.log(`refused cd: ${e.code}`) }
        console.log(`ok ${await fs.readFile('/workspace/inside.txt')} ${fs.existsSync('inside.txt')}`);
    "#;
    let (report, lines) = run(invocation(&ws, source)).await;
    assert!(report.status.succeeded(), "{:?}\n{}", report.status, joined(&lines));
    let log = joined(&lines);
    assert!(!log.contains("READ") && !log.contains("DID") && !log.contains("OUTSIDE-THE-WORKSPACE"), "{log}");
    assert!(!log.contains("root:"), "{log}");
    let refused = info(&lines).iter().filter(|l| l.starts_with("refused")).count();
    assert_eq!(refused, 9, "{log}");
    assert!(log.contains("refused ../x: SKIFF_OUTSIDE_WORKSPACE: `../x` leads out of the workspace"), "{log}");
    assert!(
        log.contains("refused /etc/passwd: SKIFF_OUTSIDE_WORKSPACE: `/etc/passwd` is outside the workspace"),
        "{log}"
    );
    assert!(
        log.contains("refused etc-link/passwd: SKIFF_OUTSIDE_WORKSPACE: `etc-link/passwd` goes through a symlink"),
        "{log}"
    );
    assert!(log.contains("ok inside true"), "{log}");
    assert!(!outer.path().join("y").exists() && !outer.path().join("d").exists());
}

/// An HTTP/1.1 server on 127.0.0.1 answering every request with JSON naming its path.
fn json_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let Ok(req) = crate::plugins::read_request(&mut BufReader::new(&mut stream)) else { return };
                let body = format!(
                    r#"{{"hello":"world","path":"{}","method":"{}","got":{:?}}}"#,
                    req.target,
                    req.method,
                    String::from_utf8_lossy(&req.body)
                );
                let _ = write!(
                    stream,
                    "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nx-test: yes\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

#[tokio::test]
async fn fetch_reaches_granted_hosts_only() {
    let port = json_server();
    let ws = tempfile::tempdir().unwrap();
    let source = format!(
        r#"
        const r = await fetch('http://127.0.0.1:{port}/data?x=1');
        console.log(`status ${{r.status}} ${{r.ok}} ${{r.headers.get('X-Test')}}`);
        const j = await r.json();
        console.log(`json ${{j.hello}} ${{j.path}} ${{j.method}}`);
        const t = await (await fetch('http://127.0.0.1:{port}/p', {{method: 'POST', body: 'hi', headers: {{'content-type': 'text/plain'}}}})).text();
        console.log(`text ${{t}}`);
        try {{ await fetch('http://not-granted.example.com/x') }} catch (e) {{ console.log(`refused ${{e.message}}`) }}
        await fetch('http://127.0.0.1:1/');
        "#
    );
    let mut inv = invocation(ws.path(), &source);
    inv.allow_hosts = Allowlist::parse(&[format!("127.0.0.1:{port}")]).unwrap();
    let (report, lines) = run(inv).await;
    let log = joined(&lines);
    let printed = info(&lines);
    assert_eq!(printed[0], "status 201 true yes", "{log}");
    assert_eq!(printed[1], "json world /data?x=1 GET", "{log}");
    assert!(printed[2].starts_with("text {") && printed[2].contains(r#""got":"hi""#), "{log}");
    assert!(printed[3].starts_with("refused") && printed[3].contains("not-granted.example.com"), "{log}");
    // An uncaught refusal fails the step with the host's message, as a denial.
    assert!(matches!(report.status, StepStatus::Denied(_)), "{:?}\n{log}", report.status);
    assert!(failure(&report).contains("127.0.0.1:1"), "{}", failure(&report));
}

#[tokio::test]
async fn a_script_that_spins_is_stopped_at_its_cpu_limit() {
    let ws = tempfile::tempdir().unwrap();
    let mut inv = invocation(ws.path(), "console.log('spinning');\nwhile (true) {}");
    inv.limits.cpu = Duration::from_secs(1);
    inv.limits.timeout = Duration::from_secs(30);
    let started = std::time::Instant::now();
    let (report, lines) = run(inv).await;
    assert!(matches!(report.status, StepStatus::CpuLimit(_)), "{:?}\n{}", report.status, joined(&lines));
    assert!(started.elapsed() < Duration::from_secs(25));
    assert_eq!(info(&lines), ["spinning"]);
}

#[tokio::test]
async fn a_script_that_allocates_without_end_hits_its_memory_limit() {
    let ws = tempfile::tempdir().unwrap();
    let mut inv = invocation(ws.path(), "let a = []; for (;;) a.push(new Array(1e6).fill(1))");
    inv.limits.memory = 48 << 20;
    let (report, lines) = run(inv).await;
    assert!(matches!(report.status, StepStatus::MemoryLimit(_)), "{:?}\n{}", report.status, joined(&lines));
    assert!(report.usage.peak_memory_bytes <= 48 << 20);
}

#[tokio::test]
async fn expression_values_are_data_never_code() {
    if !crate::sandbox::available() {
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let value = "`; touch INJECTED` ${process.exit} $(touch INJECTED2); touch INJECTED3 'q\" \\";
    let source = "console.log(process.env.SKIFF_EXPR_1);\n\
                  const out = await $`printf %s ${process.env.SKIFF_EXPR_1}`.quiet();\n\
                  await $`echo ${process.env.SKIFF_EXPR_1}`;\n\
                  core.setOutput('echoed', out.stdout);";
    let mut inv = with_process(invocation(ws.path(), source));
    inv.env.insert("SKIFF_EXPR_1".into(), value.into());
    let (report, lines) = run(inv).await;
    assert!(report.status.succeeded(), "{:?}\n{}", report.status, joined(&lines));
    assert_eq!(report.outputs.get("echoed").map(String::as_str), Some(value));
    assert_eq!(info(&lines), [value], "{}", joined(&lines));
    let echoed = lines.iter().filter(|l| l.level.as_str() == "stdout").map(|l| l.text.as_str()).collect::<Vec<_>>();
    assert_eq!(echoed, [value]);
    let names: Vec<_> = std::fs::read_dir(ws.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.iter().all(|n| !n.to_string_lossy().contains("INJECTED")), "{names:?}");
}

#[tokio::test]
async fn inputs_outputs_and_secrets() {
    let ws = tempfile::tempdir().unwrap();
    let source = "core.setOutput('v', '42');\n\
                  core.setOutput('greeting', core.getInput('greeting'));\n\
                  core.setOutput('token-length', core.getSecret('TOKEN').length);\n\
                  console.log(`the token is ${core.getSecret('TOKEN')}`);\n\
                  try { core.getSecret('OTHER') } catch (e) { core.setOutput('other', e.message) }\n\
                  core.getSecret('OTHER');";
    let mut inv = invocation(ws.path(), source);
    inv.inputs.insert("greeting".into(), "hello".into());
    inv.secrets = BTreeMap::from([("TOKEN".to_string(), "tok-123456".to_string())]);
    let (report, lines) = run(inv).await;
    let log = joined(&lines);
    // The uncaught refusal at the end fails the step: outputs of a failed step are not kept.
    assert!(matches!(report.status, StepStatus::Denied(_)), "{:?}\n{log}", report.status);
    assert!(failure(&report).contains("secret `OTHER` was not granted"), "{}", failure(&report));
    assert!(!log.contains("tok-123456") && log.contains("the token is ***"), "{log}");

    let mut inv = invocation(ws.path(), &source.replace("core.getSecret('OTHER');", ""));
    inv.inputs.insert("greeting".into(), "hello".into());
    inv.secrets = BTreeMap::from([("TOKEN".to_string(), "tok-123456".to_string())]);
    let (report, lines) = run(inv).await;
    assert!(report.status.succeeded(), "{:?}\n{}", report.status, joined(&lines));
    let out = &report.outputs;
    assert_eq!(out.get("v").map(String::as_str), Some("42"));
    assert_eq!(out.get("greeting").map(String::as_str), Some("hello"));
    assert_eq!(out.get("token-length").map(String::as_str), Some("10"));
    assert!(out.get("other").is_some_and(|m| m.contains("permissions: { secrets: [OTHER] }")), "{out:?}");
}

#[tokio::test]
async fn syntax_errors_point_into_the_pipeline_file() {
    let ws = tempfile::tempdir().unwrap();
    // Script line 1 starts at column 15 of line 12: its column 9 is the file's column 23.
    let (report, _) = run(invocation(ws.path(), "let x = ;")).await;
    assert!(failure(&report).starts_with("SyntaxError:"), "{}", failure(&report));
    assert!(failure(&report).contains(" at .skiff.yaml:12:23"), "{}", failure(&report));
    // Script line 2 is the file's line 13, shifted like line 1: a multi-line script is a
    // YAML block whose lines all start at the same column.
    let (report, _) = run(invocation(ws.path(), "const a = 1;\nlet x = ;")).await;
    assert!(failure(&report).contains(" at .skiff.yaml:13:23"), "{}", failure(&report));
}

#[tokio::test]
async fn an_uncaught_error_fails_with_its_message_and_stack() {
    let ws = tempfile::tempdir().unwrap();
    let (report, lines) =
        run(invocation(ws.path(), "function build() {\n  throw new Error('boom');\n}\nbuild();")).await;
    let message = failure(&report);
    assert!(matches!(report.status, StepStatus::Failed(_)), "{:?}", report.status);
    assert!(message.starts_with("Error: boom"), "{message}");
    assert!(message.contains("    at build (.skiff.yaml:13:"), "{message}");
    assert!(message.contains("    at <main> (.skiff.yaml:15:"), "{message}");
    assert!(joined(&lines).contains("boom"));
}

/// The seed's `script:` step through `skiff run`, as a user writes it: the pipeline turns it
/// into the `script` component, an expression reaches it as data, its output reaches the next
/// step, and an error points into the pipeline file.
#[test]
fn script_steps_run_in_a_pipeline_through_skiff_run() {
    if !crate::sandbox::available() {
        return;
    }
    let project = tempfile::tempdir().unwrap();
    std::fs::create_dir(project.path().join(".skiff")).unwrap();
    std::fs::write(project.path().join("marker.txt"), "x").unwrap();
    let pipeline = r#"steps:
  - id: list
    script: 'const listFile = await $`ls -la`; console.log(listFile)'
    permissions: { process: true }
  - id: out
    script: |
      const ref = `${{ event.ref }}`;
      core.setOutput('ref', ref + '!');
  - run: echo "got ${{ steps.out.outputs.ref }}"
"#;
    std::fs::write(project.path().join(".skiff/pipeline.yaml"), pipeline).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("run")
            .args(args)
            .current_dir(project.path())
            .env("SKIFF_CACHE_DIR", crate::shared_cache_dir())
            .output()
            .unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (code, text) = run(&["--ref", "main; touch INJECTED"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("marker.txt"), "{text}");
    assert!(text.contains("got refs/heads/main; touch INJECTED!"), "{text}");
    assert!(!project.path().join("INJECTED").exists());

    let broken = "steps:\n  - script: |\n      const a = 1;\n      let x = ;\n";
    std::fs::write(project.path().join(".skiff/pipeline.yaml"), broken).unwrap();
    // A failed run keeps its workspace: give it one that the test removes.
    let ws = tempfile::tempdir().unwrap();
    let (code, text) = run(&["--workspace", ws.path().to_str().unwrap()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("SyntaxError") && text.contains(".skiff/pipeline.yaml:4:15"), "{text}");
}
