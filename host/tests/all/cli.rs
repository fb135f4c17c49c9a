//! The `skiff` command line, run as a user runs it.

use std::path::Path;
use std::process::Command;

use crate::support::{output_of, snapshot};

const HOSTILE: &str = skiff_runtime::test_guests::HOSTILE;

fn skiff(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .env("SKIFF_CACHE_DIR", crate::shared_cache_dir())
        .output()
        .expect("running skiff");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn step_run_prints_the_log_then_the_outputs_and_exits_zero() {
    let ws = tempfile::tempdir().unwrap();
    let dir = ws.path().to_str().unwrap();
    let (code, out) = skiff(&["step", "run", "diag", "--with", "message=ahoy", "--dir", dir]);
    assert_eq!(code, 0, "{out}");
    let log_at = out.find("bytes to skiff-diag.txt").expect(&out);
    let outputs_at = out.find("── outputs ──").expect(&out);
    assert!(log_at < outputs_at, "{out}");
    assert!(out.contains("file=skiff-diag.txt"), "{out}");
    assert!(out.contains("── succeeded"), "{out}");
}

#[test]
fn step_run_exits_non_zero_with_the_reason() {
    let ws = tempfile::tempdir().unwrap();
    let dir = ws.path().to_str().unwrap();
    let (code, out) = skiff(&["step", "run", HOSTILE, "--with", "attack=loop", "--timeout", "1s", "--dir", dir]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("timed out after 1s"), "{out}");
    let (code, out) = skiff(&["step", "run", HOSTILE, "--with", "attack=alloc", "--memory", "32MiB", "--dir", dir]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("memory limit 32 MiB exceeded"), "{out}");
    let (code, out) = skiff(&["step", "run", HOSTILE, "--with", "attack=flood", "--log-limit", "64KiB", "--dir", dir]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("log limit 64 KiB reached"), "{out}");
}

#[test]
fn step_run_masks_secrets_in_log_and_outputs() {
    let ws = tempfile::tempdir().unwrap();
    let dir = ws.path().to_str().unwrap();
    let args = [
        "step",
        "run",
        HOSTILE,
        "--with",
        "attack=print-secret",
        "--with",
        "arg=K",
        "--secret",
        "K=pa55w0rd!x",
        "--dir",
        dir,
    ];
    let (code, out) = skiff(&args);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("pa55w0rd"), "{out}");
    assert!(out.contains("echo=out:***"), "{out}");
}

#[test]
fn step_inspect_prints_the_declaration() {
    let (code, out) = skiff(&["step", "inspect", "diag"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("diag 0.1.0"), "{out}");
    assert!(out.contains("hosts:   ${inputs.fetch}"), "{out}");
    let (code, out) = skiff(&["step", "inspect", "nope"]);
    assert_eq!(code, 2);
    assert!(out.contains("neither a built-in step"), "{out}");
}

#[test]
fn bad_arguments_say_what_to_fix() {
    let (code, out) = skiff(&["step", "run", "diag", "--with", "novalue"]);
    assert_eq!(code, 2);
    assert!(out.contains("--with `novalue` must be written KEY=VALUE"), "{out}");
    let (code, out) = skiff(&["step", "run", "diag", "--memory", "lots"]);
    assert_eq!(code, 2);
    assert!(out.contains("not a size"), "{out}");
}

#[test]
fn the_bundled_example_pipeline_runs_end_to_end() {
    let ws = tempfile::tempdir().unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello/.skiff/pipeline.yaml");
    let (code, out) = skiff(&["run", example.to_str().unwrap(), "--workspace", ws.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Hello, world!"), "{out}");
    assert!(ws.path().join("greeting.txt").exists(), "{out}");
}

/// `skiff ARGS` in `dir`, not yet started.
fn skiff_at(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_skiff"));
    c.args(args).current_dir(dir).env("SKIFF_CACHE_DIR", crate::shared_cache_dir());
    c
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn snapshot_of_validate_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let broken = r#"name: broken
on:
  push:
    branchs: [main]
jobs:
  build:
    stpes:
      - run: echo hi
  test:
    needs: [biuld]
    steps:
      - id: a
        uses: diag
        with:
          message: ${{ steps.a.outputs. }}
      - id: a
        run: echo again
        timeout-minutes: soon
"#;
    std::fs::write(dir.path().join("pipeline.yaml"), broken).unwrap();
    snapshot!("validate_errors", output_of(&mut skiff_at(dir.path(), &["validate", "pipeline.yaml"])));
}

/// `skiff validate --plan` asks each step's component what it needs, as the runtime does before
/// the step starts: a step that would be refused is a problem now, not in a run.
#[test]
fn validate_plan_refuses_a_step_whose_component_asks_for_more_than_it_is_granted() {
    let dir = tempfile::tempdir().unwrap();
    let write = |text: &str| std::fs::write(dir.path().join("pipeline.yaml"), text).unwrap();
    let notify = "steps:\n  - uses: notify\n    with:\n      provider: generic\n      webhook: https://hooks.example.com/x\n      message: hi\n";
    write(notify);
    let out = skiff_at(dir.path(), &["validate", "--plan", "pipeline.yaml"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("main/step-1 (notify) asks: secrets [] hosts [${inputs.webhook}]"), "{stdout}");
    assert!(
        stderr.contains("step `step-1` would be refused") && stderr.contains("`https://hooks.example.com/x`"),
        "{stderr}"
    );
    // Granted: valid. Without --plan nothing is loaded, so nothing is checked.
    write(&notify.replace("  - uses: notify\n", "  - uses: notify\n    permissions: { hosts: [hooks.example.com] }\n"));
    let out = skiff_at(dir.path(), &["validate", "--plan", "pipeline.yaml"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A webhook held in a secret is known only when the run starts: not refused now.
    write(&notify.replace("https://hooks.example.com/x", "${{ secrets.HOOK }}"));
    let out = skiff_at(dir.path(), &["validate", "--plan", "pipeline.yaml"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn snapshot_of_validate_plan_of_the_bundled_example() {
    let args = ["validate", "--plan", "examples/hello/.skiff/pipeline.yaml"];
    snapshot!("validate_plan_hello", output_of(&mut skiff_at(repo_root(), &args)));
}

#[test]
fn snapshot_of_run_of_the_bundled_example() {
    let ws = tempfile::tempdir().unwrap();
    let args = ["run", "examples/hello/.skiff/pipeline.yaml", "--workspace", ws.path().to_str().unwrap()];
    snapshot!("run_hello", output_of(&mut skiff_at(repo_root(), &args)));
}

/// A Serverless-cd pipeline, unchanged: `run:` steps, `inputs:`, and the DingTalk
/// plugin posting to the webhook held in a secret (here a local robot).
#[test]
fn a_serverless_cd_pipeline_runs_unchanged() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let robot = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 8192];
        // Read the head, then the body by content-length.
        loop {
            let n = s.read(&mut buf).unwrap();
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).to_string();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let len = text[..head_end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if req.len() >= head_end + 4 + len {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        let body = br#"{"errcode":0,"errmsg":"ok"}"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        String::from_utf8_lossy(&req).to_string()
    });
    // Serverless-cd scripts had the network; in its file they keep it, through the host's
    // egress proxy, which refuses the host's own services (here one on its loopback).
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("serverless-pipeline.yaml");
    std::fs::write(
        &pipeline,
        r#"env:
  APP: demo
steps:
  - run: echo "building $APP" && echo "version=1.2.3" >> "$SKIFF_OUTPUT" && curl --noproxy '' -sS http://127.0.0.1:OTHER_PORT/
    id: build
  - plugin: '@serverless-cd/ding-talk'
    inputs:
      webhook: ${{ secrets.DING_TALK_WEBHOOK }}
      msgtype: text
      text:
        content: 'built ${{ steps.build.outputs.version }}'
"#
        .replace("OTHER_PORT", &other_port.to_string()),
    )
    .unwrap();
    let ws = tempfile::tempdir().unwrap();
    let secret = format!("DING_TALK_WEBHOOK=http://127.0.0.1:{port}/robot/send?access_token=tok-abc123");
    let (code, out) =
        skiff(&["run", pipeline.to_str().unwrap(), "--workspace", ws.path().to_str().unwrap(), "--secret", &secret]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("building demo"), "{out}");
    assert!(!out.contains("tok-abc123"), "the webhook secret must be masked: {out}");
    let request = robot.join().unwrap();
    assert!(request.starts_with("POST /robot/send?access_token=tok-abc123"), "{request}");
    assert!(request.contains("built 1.2.3"), "{request}");
    assert!(out.contains("it resolves to 127.0.0.1, a loopback, private or metadata address"), "{out}");
    drop(other);
}

/// A local run works on a copy of the project in a temporary workspace, which is
/// removed when the run succeeds and kept, with a note, when it fails.
#[test]
fn a_local_run_sees_a_copy_of_the_project_and_leaves_it_untouched() {
    let project = Project::new();
    project.write(".skiff/.keep", "").write("target/debug/.keep", "").write("input.txt", "from the project");
    let local_run = |script: &str, extra: &[&str]| {
        project.write(".skiff/pipeline.yaml", &format!("steps:\n  - run: {script}\n"));
        let (code, text) = project.run(extra);
        (code == 0, text)
    };
    let workspaces = || std::fs::read_dir(project.tmp.path()).unwrap().count();

    let (ok, text) = local_run("cat input.txt && test ! -e target && echo changed > input.txt", &[]);
    assert!(ok, "{text}");
    assert!(text.contains("from the project"), "{text}");
    assert_eq!(std::fs::read_to_string(project.dir.path().join("input.txt")).unwrap(), "from the project");
    assert_eq!(workspaces(), 0, "a successful run's workspace is removed: {text}");

    let (ok, text) = local_run("echo left > evidence.txt && exit 3", &[]);
    assert!(!ok, "{text}");
    let kept = text.lines().find_map(|l| l.strip_prefix("workspace kept: ")).expect(&text);
    assert_eq!(std::fs::read_to_string(std::path::Path::new(kept).join("evidence.txt")).unwrap(), "left\n");

    let (ok, text) = local_run("echo fine", &["--keep-workspace"]);
    assert!(ok, "{text}");
    assert_eq!(workspaces(), 2, "{text}");
}

#[test]
fn job_selects_several_jobs_and_what_they_need() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        "jobs:\n  base:\n    steps: [{ uses: diag, with: { message: base-ran } }]\n  a:\n    needs: base\n    steps: [{ uses: diag, with: { message: a-ran } }]\n  b:\n    steps: [{ uses: diag, with: { message: b-ran } }]\n  c:\n    steps: [{ uses: diag, with: { message: c-ran } }]\n",
    )
    .unwrap();
    let ws = tempfile::tempdir().unwrap();
    let args = ["run", pipeline.to_str().unwrap(), "--workspace", ws.path().to_str().unwrap(), "--job", "a,c"];
    let (code, out) = skiff(&args);
    assert_eq!(code, 0, "{out}");
    let ran = |job: &str| ws.path().join(job).join("skiff-diag.txt").exists();
    assert!(ran("base") && ran("a") && ran("c"), "{out}");
    assert!(!ran("b"), "{out}");
    let (code, out) = skiff(&["run", pipeline.to_str().unwrap(), "--job", "a,nope"]);
    assert_ne!(code, 0);
    assert!(out.contains("no job `nope`"), "{out}");
}

/// A project folder for `skiff run`, with a temporary folder of its own where runs put their
/// workspaces (a failed run keeps its workspace; here it goes with the test).
struct Project {
    dir: tempfile::TempDir,
    tmp: tempfile::TempDir,
}

impl Project {
    fn new() -> Self {
        Project { dir: tempfile::tempdir().unwrap(), tmp: tempfile::tempdir().unwrap() }
    }

    /// Writes a file of the project.
    fn write(&self, name: &str, text: &str) -> &Self {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }

    /// `skiff run ARGS` in the project, not yet started.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_skiff"));
        c.arg("run")
            .args(args)
            .current_dir(self.dir.path())
            .env("SKIFF_CACHE_DIR", crate::shared_cache_dir())
            .env("TMPDIR", self.tmp.path());
        c
    }

    /// `skiff run ARGS`: the exit code and everything printed.
    fn run(&self, args: &[&str]) -> (i32, String) {
        let out = self.command(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }
}

/// `skiff run` in a new project holding `pipeline` as `.skiff/pipeline.yaml`.
fn run_project(pipeline: &str, args: &[&str]) -> (i32, String) {
    let project = Project::new();
    project.write(".skiff/pipeline.yaml", pipeline);
    project.run(args)
}

#[test]
fn expressions_reach_scripts_as_values_and_never_as_code() {
    let message = r#"x"; touch INJECTED; echo "'$(touch INJECTED)'`touch INJECTED` ${HOME} \"#;
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("push.json");
    std::fs::write(&event, serde_json::json!({ "head_commit": { "message": message } }).to_string()).unwrap();
    let pipeline = r#"
steps:
  - uses: shell
    with:
      script: echo "with:${{ body.head_commit.message }}"
  - run: echo 'single:${{ body.head_commit.message }}'
  - run: echo "double:${{ body.head_commit.message }}"
  - run: |
      cat <<EOF
      heredoc:${{ body.head_commit.message }}
      EOF
  - run: print("python:${{ body.head_commit.message }}")
    shell: python
  - run: console.log(`node:${{ body.head_commit.message }}`)
    shell: node
  - run: test ! -e INJECTED && echo nothing was injected
"#;
    let (code, out) = run_project(pipeline, &["--event", event.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    for how in ["with", "single", "double", "heredoc", "python", "node"] {
        assert!(out.contains(&format!("{how}:{message}")), "{how}: {out}");
    }
    assert!(out.contains("nothing was injected"), "{out}");

    // Where no reference can work, `skiff validate` says so instead of pasting the value.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, "steps:\n  - run: print \"${{ body.x }}\"\n    shell: perl {0}\n").unwrap();
    let (code, out) = skiff(&["validate", file.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("pipeline.yaml:2:") && out.contains("would be pasted into its code"), "{out}");
    std::fs::write(&file, "steps:\n  - run: echo hi\n    shell: ${{ body.shell }} {0}\n").unwrap();
    let (code, out) = skiff(&["validate", file.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("cannot hold `${{ }}`"), "{out}");
}

#[test]
fn a_step_cannot_draw_on_the_terminal() {
    let pipeline = r#"
steps:
  - name: "evil\e]0;title\a"
    run: printf '\033[2J\033[H\033]0;pwned\007\033]8;;http://evil\033\\link\033]8;;\033\\ \r✓ run 99 success\b\b\n'
"#;
    let (code, out) = run_project(pipeline, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains(['\u{1b}', '\u{7}', '\r', '\u{8}']), "a control sequence reached the terminal: {out:?}");
    assert!(out.contains("│ ✓ run 99 success\n"), "the prefix stays in front of what the step printed: {out:?}");
}

#[test]
fn what_a_step_hands_on_is_capped_with_a_clear_failure() {
    let cases = [
        (
            r#"printf 'big=%s\n' "$(head -c 2000000 /dev/zero | tr '\0' x)" >> "$SKIFF_OUTPUT""#,
            "output `big` is 1.9 MiB, over the limit of 1.0 MiB",
        ),
        (r#"head -c 5000000 /dev/zero | tr '\0' x >> "$SKIFF_OUTPUT""#, "$SKIFF_OUTPUT holds 5000000 bytes"),
        (r#"for i in $(seq 1100); do echo "V$i=x"; done >> "$SKIFF_ENV""#, "would hold 11"),
        (r#"printf 'V=%s\n' "$(head -c 200000 /dev/zero | tr '\0' x)" >> "$SKIFF_ENV""#, "exported variable `V`"),
    ];
    for (script, error) in cases {
        let pipeline = format!("steps:\n  - run: '{}'\n  - run: echo NEXT-$((1+1))\n", script.replace('\'', "''"));
        let (code, out) = run_project(&pipeline, &[]);
        assert_eq!(code, 1, "{script}: {out}");
        assert!(out.contains(error), "{script}: {out}");
        assert!(!out.contains("NEXT-2"), "the next step ran: {out}");
    }
    // Many variables under the caps still reach every later process.
    let pipeline = "steps:\n  - run: 'for i in $(seq 900); do echo \"V$i=$i\"; done >> \"$SKIFF_ENV\"'\n  - run: echo \"last=$V900\"\n";
    let (code, out) = run_project(pipeline, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("last=900"), "{out}");

    let pipeline = format!("steps:\n  - uses: {HOSTILE}\n    with: {{ attack: big-output, arg: '2' }}\n");
    let (code, out) = run_project(&pipeline, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("output `big` is 2.0 MiB"), "{out}");
}

#[test]
fn a_component_without_the_process_grant_cannot_steer_later_processes() {
    let pipeline = format!(
        "steps:\n  - run: echo 'touch STEERED' > evil.sh\n  - uses: {HOSTILE}\n    with: {{ attack: steer }}\n  \
         - run: echo next\n    if: always()\n  - run: test ! -e PWNED && test ! -e STEERED && echo nothing was steered\n    \
         if: always()\n"
    );
    let (code, out) = run_project(&pipeline, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("only a step granted `process`"), "{out}");
    assert!(out.contains("nothing was steered"), "{out}");
}

#[test]
fn a_closed_pipe_ends_skiff_run_quietly() {
    use std::io::BufRead as _;
    let project = Project::new();
    project
        .write(".skiff/pipeline.yaml", "steps:\n  - run: 'for i in $(seq 200); do echo line $i; sleep 0.005; done'\n");
    let mut child =
        project.command(&[]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    // The reader is gone (as `| head -1` goes); skiff's next line finds the pipe closed.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}

#[test]
fn run_steps_with_network_reach_neither_the_host_nor_metadata() {
    // A service on the host's loopback, as the Skiff API or a database would be.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            use std::io::{Read as _, Write as _};
            let mut b = [0u8; 2048];
            let _ = c.read(&mut b);
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nSECRET");
        }
    });
    // A Serverless-cd pipeline: its `run:` steps have the network by default.
    let project = Project::new();
    project.write(
        "serverless-pipeline.yaml",
        &format!(
            "steps:\n  - run: curl --noproxy '' -sS --max-time 5 http://127.0.0.1:{port}/ ; echo\n  \
             - run: curl -sS --max-time 5 http://169.254.169.254/latest/meta-data/ ; echo\n  \
             - run: exec 3<>/dev/tcp/127.0.0.1/{port} && echo DIRECT-OK || echo no direct route\n  \
             - run: curl --noproxy '' -sS --max-time 5 http://127.0.0.1:{port}/ ; echo\n    \
             permissions: {{ network: true, hosts: ['127.0.0.1:{port}'] }}\n"
        ),
    );
    let (_, text) = project.run(&["serverless-pipeline.yaml"]);
    assert!(text.matches("loopback, private or metadata").count() >= 2, "{text}");
    assert!(text.contains("│ no direct route") && !text.contains("│ DIRECT-OK"), "{text}");
    // Named literally, the service is reached, once.
    assert_eq!(text.matches("SECRET").count(), 1, "{text}");
}

#[test]
fn doctor_says_what_binds_a_process_tree() {
    let (code, out) = skiff(&["doctor"]);
    for line in ["bubblewrap:", "container images:", "cgroups:", "memory limit:", "CPU limit and metering:", "cache:"] {
        assert!(out.contains(line), "{line} missing: {out}");
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        // The CI machine gives skiff everything: nothing may quietly fall back there.
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("bubblewrap: available"), "{out}");
        assert!(out.contains("container images: available"), "{out}");
    }
    if crate::sandbox::tree_cgroups() {
        assert!(out.contains("memory limit: per process tree"), "{out}");
        assert!(out.contains("CPU limit and metering: per process tree"), "{out}");
    }
}

#[test]
fn a_path_entry_goes_in_front_of_path_and_keeps_the_rest() {
    let pipeline = r#"
steps:
  - run: |
      mkdir -p tools && printf '#!/bin/sh\necho mytool ran\n' > tools/mytool && chmod +x tools/mytool
      echo /workspace/tools >> "$SKIFF_PATH"
  - run: mytool && ls / > /dev/null && echo "PATH=$PATH"
"#;
    let (code, out) = run_project(pipeline, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("mytool ran"), "{out}");
    // The job's install folders (`npm i -g`, `pip install --user`) come after it, then the rest.
    assert!(
        out.contains(
            "PATH=/workspace/tools:/home/skiff/.npm-global/bin:/home/skiff/.local/bin:/usr/local/bin:/usr/bin:/bin"
        ),
        "{out}"
    );
}

#[test]
fn a_local_run_for_an_event_file_sees_its_repository() {
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("push.json");
    let payload = serde_json::json!({
        "ref": "refs/heads/main", "after": "1111",
        "repository": { "full_name": "acme/web", "clone_url": "https://example.com/acme/web.git" },
    });
    std::fs::write(&event, payload.to_string()).unwrap();
    let pipeline =
        "steps:\n  - run: echo \"repo=${{ event.repository.full_name }} url=${{ event.repository.clone_url }}\"\n";
    let (code, out) = run_project(pipeline, &["--event", event.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("repo=acme/web url=https://example.com/acme/web.git"), "{out}");
    let gitlab = serde_json::json!({ "ref": "refs/heads/main", "project": { "path_with_namespace": "group/sub/web" } });
    std::fs::write(&event, gitlab.to_string()).unwrap();
    let (code, out) = run_project(pipeline, &["--event", event.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("repo=group/sub/web url="), "{out}");
}

/// `skiff init`: from an empty folder to a served app, with the real `skiff serve`.
mod init {
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use serde_json::Value;
    use skiff_edge_core::{Provider, Secret};
    use skiff_server::config::{AppScope, ServeConfig};
    use skiff_server::crypto::{MasterKey, token_hash};

    /// `skiff ARGS` in `dir`, with no Skiff settings from the environment: the exit code,
    /// standard output and standard error.
    fn skiff_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
        let out = command(dir).args(args).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    }

    fn command(dir: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_skiff"));
        c.current_dir(dir).env("SKIFF_CACHE_DIR", crate::shared_cache_dir());
        for var in ["SKIFF_MASTER_KEY", "SKIFF_MASTER_KEY_FILE", "SKIFF_CONFIG", "SKIFF_DATA", "SKIFF_LISTEN"] {
            c.env_remove(var);
        }
        c
    }

    /// What `skiff init` printed, each found on its own labelled line.
    struct Printed {
        token: String,
        secret: String,
        url: String,
    }

    fn printed(out: &str) -> Printed {
        let find = |label: &str| {
            let mut values = out.lines().filter_map(|l| l.strip_prefix(label));
            let v = values.next().unwrap_or_else(|| panic!("no `{label}` line: {out}")).to_string();
            assert_eq!(values.next(), None, "`{label}` is printed once: {out}");
            v
        };
        Printed { token: find("admin API token: "), secret: find("webhook secret: "), url: find("webhook URL: ") }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// The config as `skiff serve` loads it, with the master key `skiff init` created.
    fn load(dir: &Path) -> ServeConfig {
        let key = MasterKey::parse(&std::fs::read_to_string(dir.join("skiff-data/master.key")).unwrap()).unwrap();
        ServeConfig::load(&dir.join("skiff.toml"), Some(&key)).unwrap()
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[test]
    fn init_writes_a_config_the_real_loader_accepts_and_prints_its_secrets_once() {
        let tmp = tempfile::tempdir().unwrap();
        let args = ["init", "site", "--app", "web", "--repository", "acme/web", "--listen", "127.0.0.1:8099"];
        let (code, out, err) = skiff_in(tmp.path(), &args);
        assert_eq!(code, 0, "{out}{err}");
        let p = printed(&out);
        assert!(p.token.starts_with("skiff_") && p.token.len() == 6 + 43, "{}", p.token);
        assert_eq!(out.matches(&p.token).count(), 1, "the token is printed once: {out}");
        assert!(out.contains("store it now: it is not kept"), "{out}");
        assert!(p.secret.len() == 64 && p.secret.chars().all(|c| c.is_ascii_hexdigit()), "{}", p.secret);
        assert_eq!(p.url, "http://127.0.0.1:8099/hooks/web");
        assert!(out.lines().any(|l| l == "  skiff serve --config site/skiff.toml"), "{out}");

        let site = tmp.path().join("site");
        let text = std::fs::read_to_string(site.join("skiff.toml")).unwrap();
        assert!(!text.contains(&p.token) && !text.contains(&p.secret), "no secret in plain text:\n{text}");
        assert!(text.contains(&format!("sha256 = \"{}\"", token_hash(&p.token))), "{text}");
        assert!(text.contains("webhook-secret = \"enc:v1:"), "{text}");
        // Every key written is explained by the comment line above it.
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if !l.is_empty() && !l.starts_with('#') && !l.starts_with('[') {
                assert!(lines[i - 1].starts_with("# "), "`{l}` has no comment above it:\n{text}");
            }
        }
        assert_eq!(mode(&site.join("skiff.toml")), 0o600);
        assert_eq!(mode(&site.join("skiff-data")), 0o700);
        assert_eq!(mode(&site.join("skiff-data/master.key")), 0o600);

        let config = load(&site);
        assert_eq!(config.listen, "127.0.0.1:8099");
        assert_eq!(config.data_dir, site.join("skiff-data"));
        let admin = config.token(&p.token).expect("the printed token is configured");
        assert_eq!((admin.name.as_str(), &admin.scope), ("admin", &AppScope::All));
        assert!(config.token("skiff_not-the-token").is_none());
        assert_eq!(config.tokens.len(), 1);
        assert_eq!(config.apps.keys().collect::<Vec<_>>(), ["web"]);
        let app = &config.apps["web"];
        assert_eq!(app.webhook_secret, Some(Secret::new(&p.secret)));
        assert_eq!(app.provider, Some(Provider::Github));
        assert_eq!(serde_json::to_value(&app.edge.repository).unwrap(), serde_json::json!(["acme/web"]));
    }

    /// Kills `skiff serve` when the test ends, however it ends.
    struct Serve(std::process::Child);

    impl Drop for Serve {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn init_then_serve_takes_the_printed_token_and_webhooks_signed_with_the_printed_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let args = ["init", "--app", "web", "--repository", "acme/web", "--provider", "github", "--listen", &listen];
        let (code, out, err) = skiff_in(tmp.path(), &args);
        assert_eq!(code, 0, "{out}{err}");
        let p = printed(&out);
        assert_eq!(p.url, format!("http://{listen}/hooks/web"));
        // The next command printed is the whole of it: `skiff serve` finds ./skiff.toml.
        assert!(out.lines().any(|l| l == "  skiff serve"), "{out}");
        let _serve =
            Serve(command(tmp.path()).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());

        let base = format!("http://{listen}");
        let http = reqwest::Client::new();
        let mut up = false;
        for _ in 0..600 {
            if http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status() == 200) {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "skiff serve did not come up with the config `skiff init` wrote");

        let runs = |token: Option<String>| {
            let mut req = http.get(format!("{base}/v1/runs"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send()
        };
        let ok = runs(Some(p.token.clone())).await.unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.json::<Value>().await.unwrap()["runs"], serde_json::json!([]));
        assert_eq!(runs(Some(format!("{}x", p.token))).await.unwrap().status(), 401);
        assert_eq!(runs(None).await.unwrap().status(), 401);

        let body = serde_json::json!({
            "ref": "refs/heads/main", "before": "0000", "after": "1111",
            "repository": {"full_name": "acme/web"}, "sender": {"login": "octocat"}
        })
        .to_string()
        .into_bytes();
        let hook = |secret: &str, delivery: &str| {
            http.post(&p.url)
                .header("content-type", "application/json")
                .header("x-github-event", "push")
                .header("x-github-delivery", delivery)
                .header("x-hub-signature-256", skiff_edge_core::github_signature(secret.as_bytes(), &body))
                .body(body.clone())
                .send()
        };
        let forged = hook("not-the-secret", "d-forged").await.unwrap();
        assert_eq!(forged.status(), 401);
        let accepted = hook(&p.secret, "d-1").await.unwrap();
        assert_eq!(accepted.status(), 202);
        let answer: Value = accepted.json().await.unwrap();
        let id = answer["runs"][0]["id"].as_i64().unwrap_or_else(|| panic!("no run in {answer}"));
        assert!(
            answer["message"].as_str().unwrap().starts_with(&format!("accepted: run {id} of app `web`")),
            "{answer}"
        );

        let run: Value =
            http.get(format!("{base}/v1/runs/{id}")).bearer_auth(&p.token).send().await.unwrap().json().await.unwrap();
        assert_eq!((run["app"].as_str(), run["trigger"].as_str()), (Some("web"), Some("push")), "{run}");
    }

    #[test]
    fn init_refuses_to_overwrite_an_existing_config_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let (code, out, err) = skiff_in(tmp.path(), &["init", "--app", "web"]);
        assert_eq!(code, 0, "{out}{err}");
        let first = printed(&out);
        let config = tmp.path().join("skiff.toml");
        let key = tmp.path().join("skiff-data/master.key");
        let (text, key_text) = (std::fs::read(&config).unwrap(), std::fs::read(&key).unwrap());

        let (code, out, err) = skiff_in(tmp.path(), &["init", "--app", "other"]);
        assert_eq!(code, 2, "{out}{err}");
        assert!(err.contains("./skiff.toml already exists, and `skiff init` leaves it as it is"), "{err}");
        assert!(err.contains("run `skiff init --force`"), "{err}");
        assert!(!out.contains("admin API token"), "nothing new is printed: {out}");
        assert_eq!(std::fs::read(&config).unwrap(), text, "the config is untouched");
        assert!(load(tmp.path()).token(&first.token).is_some());

        // `--force` replaces it: new token and secret, the same master key.
        let (code, out, err) = skiff_in(tmp.path(), &["init", "--app", "other", "--force"]);
        assert_eq!(code, 0, "{out}{err}");
        let second = printed(&out);
        assert_ne!((&second.token, &second.secret), (&first.token, &first.secret));
        assert_eq!(std::fs::read(&key).unwrap(), key_text, "the master key is kept");
        let loaded = load(tmp.path());
        assert!(loaded.token(&first.token).is_none() && loaded.token(&second.token).is_some());
        assert_eq!(loaded.apps["other"].webhook_secret, Some(Secret::new(&second.secret)));
        assert!(!tmp.path().join("skiff.toml.new").exists());
    }

    #[test]
    fn init_explains_a_bad_provider_or_app_name_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (code, _, err) = skiff_in(tmp.path(), &["init", "--provider", "gihub"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("`gihub` is not a webhook sender Skiff knows; give one of"), "{err}");
        assert!(err.contains("gitlab, github"), "{err}");
        let (code, _, err) = skiff_in(tmp.path(), &["init", "--app", "my app"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("app name `my app` may hold only letters, digits"), "{err}");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing was written");
    }

    #[test]
    fn init_is_what_serve_without_a_config_asks_for() {
        let tmp = tempfile::tempdir().unwrap();
        let (code, out, err) = skiff_in(tmp.path(), &["serve"]);
        assert_eq!(code, 2, "{out}{err}");
        let looked = tmp.path().canonicalize().unwrap().join("skiff.toml");
        assert!(err.contains(&format!("no config file at {}: run `skiff init`", looked.display())), "{err}");
        let (code, _, err) = skiff_in(tmp.path(), &["serve", "--config", "elsewhere/host.toml"]);
        assert_eq!(code, 2, "{err}");
        let looked = tmp.path().canonicalize().unwrap().join("elsewhere/host.toml");
        assert!(err.contains(&format!("no config file at {}: run `skiff init`", looked.display())), "{err}");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "serve created nothing");
    }
}
