//! Deployment environments: `environment:` in a pipeline, `[[apps.environments]]` of a host,
//! against a real `skiff serve` on a socket: approvals (who may, what a waiting run holds, a
//! restart), rejections and cancels, secrets only for their environment's jobs, branch rules,
//! and the mistakes a pipeline or a config can make.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skiff_server::config::ServeConfig;
use skiff_server::{Role, Server, start};

use crate::support::Scripted;

const ADMIN: &str = "admin-token";
const RELEASE: &str = "release-token-s3cret";
const DEV: &str = "dev-token-s3cret";
const STAGING_VALUE: &str = "st4ging-v4lue";
const PROD_VALUE: &str = "pr0d-v4lue";

/// Builds, then deploys to `production` (approvers: `release`; branches: `main`).
const DEPLOY: &str = r#"
jobs:
  build:
    steps:
      - uses: diag
        with: { message: built }
  deploy:
    needs: build
    environment:
      name: production
      url: ${{ steps.ship.outputs.message }}
    steps:
      - id: ship
        uses: diag
        with: { message: "https://web.example.com" }
"#;

fn config_text(data: &Path, pipeline: &str, top: &str) -> String {
    let pipeline = pipeline.replace('\n', "\n    ");
    format!(
        r#"
listen = "127.0.0.1:0"
data = "{data}"
{top}

[[tokens]]
name = "admin"
token = "{ADMIN}"
apps = ["*"]

[[tokens]]
name = "release"
token = "{RELEASE}"
apps = ["web"]

[[tokens]]
name = "dev"
token = "{DEV}"
apps = ["web"]

[[apps]]
name = "web"
pipeline-yaml = """
    {pipeline}"""

[[apps.environments]]
name = "production"
secrets = {{ PROD_TOKEN = "{PROD_VALUE}" }}
approvers = ["release"]
branches = ["main"]

[[apps.environments]]
name = "staging"
secrets = {{ STAGING_TOKEN = "{STAGING_VALUE}" }}

[[apps]]
name = "other"
pipeline-yaml = """
steps:
  - uses: diag
    with:
      message: other app
"""
"#,
        data = data.display(),
    )
}

async fn serve(data: &Path, pipeline: &str, top: &str, exec: Arc<Scripted>) -> Server {
    let cfg = ServeConfig::from_toml(&config_text(data, pipeline, top), Path::new("/"), None).unwrap();
    start(cfg, exec, Role::All).await.unwrap()
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn of(server: &Server) -> Self {
        Api { http: reqwest::Client::new(), base: format!("http://{}", server.addr) }
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(format!("{}{path}", self.base)).bearer_auth(token).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.http.get(format!("{}{path}", self.base)).bearer_auth(ADMIN).send().await.unwrap();
        r.json().await.unwrap()
    }

    async fn trigger(&self, app: &str, git_ref: &str) -> i64 {
        let (code, r) = self.post(&format!("/v1/apps/{app}/runs"), ADMIN, json!({"ref": git_ref})).await;
        assert_eq!(code, 202, "{r}");
        r["id"].as_i64().unwrap()
    }

    /// Waits until `check` holds for the run's detail; returns it.
    async fn until(&self, id: i64, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let run = self.get(&format!("/v1/runs/{id}")).await;
            if check(&run) {
                return run;
            }
            assert!(Instant::now() < deadline, "run {id}: waited for {what}: {run:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn until_status(&self, id: i64, status: &str) -> Value {
        self.until(id, status, |r| r["status"] == status).await
    }

    /// Until the run is running and `job` waits in it (after a restart the job's row still says
    /// `waiting` while the run is queued to resume).
    async fn until_waiting(&self, id: i64, job: &str) -> Value {
        self.until(id, "a waiting job", |r| {
            r["status"] == "running" && job_of(r, job).is_some_and(|j| j["status"] == "waiting")
        })
        .await
    }

    async fn logs(&self, id: i64) -> Vec<Value> {
        self.get(&format!("/v1/runs/{id}/logs")).await["lines"].as_array().unwrap().clone()
    }
}

fn job_of<'a>(run: &'a Value, key: &str) -> Option<&'a Value> {
    run["jobs"].as_array()?.iter().find(|j| j["key"] == key)
}

/// The `skiff` command line against the server.
fn cli(api: &Api, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .args(["--server", &api.base, "--token", token])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The job waits before its first step, visibly, holding no slot; a token that is no approver
/// is refused with who may; an approver's approval (from the command line) lets it run, and
/// is recorded with who and when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_in_a_protected_environment_waits_for_an_approval() {
    let dir = tempfile::tempdir().unwrap();
    let exec = Arc::new(Scripted::new());
    let server = serve(dir.path(), DEPLOY, "max-concurrent-runs = 1", exec.clone()).await;
    let api = Api::of(&server);
    let id = api.trigger("web", "main").await;
    let run = api.until_waiting(id, "deploy").await;
    assert_eq!(run["status"], "running");
    assert_eq!(job_of(&run, "build").unwrap()["status"], "success");
    let deploy = job_of(&run, "deploy").unwrap();
    let reason = deploy["reason"].as_str().unwrap();
    assert!(reason.contains("waiting for approval of environment `production`"), "{reason}");
    assert_eq!(deploy["environment"], "production");
    assert!(deploy["steps"].as_array().unwrap().is_empty(), "no step before the approval: {deploy:#}");

    // `skiff runs show` says so.
    let (ok, out, err) = cli(&api, DEV, &["runs", "show", &id.to_string()]);
    assert!(ok, "{err}");
    assert!(out.contains("job deploy [waiting]") && out.contains("waiting for approval of environment"), "{out}");

    // Waiting holds no slot of the host's limit of one run: another app's run goes through.
    let other = api.trigger("other", "main").await;
    api.until_status(other, "success").await;

    // A token that is no approver is refused, and told who may.
    let (code, r) = api.post(&format!("/v1/runs/{id}/approve"), DEV, json!({})).await;
    assert_eq!(code, 403, "{r}");
    let msg = r["error"].as_str().unwrap();
    assert!(msg.contains("`dev`") && msg.contains("`release`") && msg.contains("production"), "{msg}");
    let (code, _) = api.post(&format!("/v1/runs/{id}/reject"), DEV, json!({"job": "deploy"})).await;
    assert_eq!(code, 403);
    assert_eq!(job_of(&api.get(&format!("/v1/runs/{id}")).await, "deploy").unwrap()["status"], "waiting");

    // An approver approves from the command line.
    let (ok, out, err) = cli(&api, RELEASE, &["runs", "approve", &id.to_string(), "--job", "deploy"]);
    assert!(ok, "{err}");
    assert!(out.contains("approved") && out.contains("release"), "{out}");
    let run = api.until_status(id, "success").await;
    let deploy = job_of(&run, "deploy").unwrap();
    assert_eq!(deploy["status"], "success");
    assert_eq!(deploy["environment_url"], "https://web.example.com", "{deploy:#}");
    let d = &run["decisions"][0];
    assert_eq!(
        (d["job"].as_str(), d["decision"].as_str(), d["by"].as_str()),
        (Some("deploy"), Some("approved"), Some("release"))
    );
    assert!(d["at"].as_i64().unwrap() > 0);
    let logs = api.logs(id).await;
    assert!(logs.iter().any(|l| l["text"].as_str().unwrap().contains("approved by `release`")), "{logs:?}");

    // Nothing waits any more.
    let (code, r) = api.post(&format!("/v1/runs/{id}/approve"), RELEASE, json!({})).await;
    assert_eq!(code, 409, "{r}");
    server.halt();
}

/// A rejection cancels the waiting job (and so the run); cancelling a run ends its wait.
/// The console shows the waiting job with its buttons; only an approver's token may use them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_job_is_approved_in_the_console_by_an_approver_only() {
    let dir = tempfile::tempdir().unwrap();
    let exec = Arc::new(Scripted::new());
    let server = serve(dir.path(), DEPLOY, "", exec.clone()).await;
    let api = Api::of(&server);
    let id = api.trigger("web", "main").await;
    api.until_waiting(id, "deploy").await;

    let dev = crate::support::Console::sign_in(&api.base, DEV).await;
    let page = dev.get(&format!("/runs/{id}")).await;
    assert!(
        page.contains("waiting for approval of environment `production`") && page.contains("Approve deploy"),
        "{page}"
    );
    assert_eq!(dev.post(&page, &format!("/runs/{id}/approve"), &[("job", "deploy")]).await, 403);
    let release = crate::support::Console::sign_in(&api.base, RELEASE).await;
    let page = release.get(&format!("/runs/{id}")).await;
    // A form without its CSRF token changes nothing.
    assert_eq!(
        release
            .post(
                "name=\"csrf\" value=\"0000000000000000000000000000000000000000000000000000000000000000",
                &format!("/runs/{id}/approve"),
                &[]
            )
            .await,
        403
    );
    assert_eq!(release.post(&page, &format!("/runs/{id}/approve"), &[("job", "deploy")]).await, 303);
    let run = api.until_status(id, "success").await;
    assert_eq!(run["decisions"][0]["by"], "release", "{run:#}");
    server.halt();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_cancels_the_job_and_a_cancel_ends_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let exec = Arc::new(Scripted::new());
    let server = serve(dir.path(), DEPLOY, "", exec.clone()).await;
    let api = Api::of(&server);

    let id = api.trigger("web", "main").await;
    api.until_waiting(id, "deploy").await;
    let (code, r) = api.post(&format!("/v1/runs/{id}/reject"), RELEASE, json!({"job": "deploy"})).await;
    assert_eq!(code, 200, "{r}");
    let run = api.until_status(id, "cancelled").await;
    let deploy = job_of(&run, "deploy").unwrap();
    assert_eq!(deploy["status"], "cancelled");
    assert!(deploy["reason"].as_str().unwrap().contains("rejected by `release`"), "{deploy:#}");
    assert_eq!(run["decisions"][0]["decision"], "rejected");
    assert!(!exec.calls().iter().any(|c| c.job_id == "deploy"), "a rejected job runs no step");

    let id = api.trigger("web", "main").await;
    api.until_waiting(id, "deploy").await;
    let (code, r) = api.post(&format!("/v1/runs/{id}/cancel"), DEV, json!({})).await;
    assert_eq!(code, 200, "{r}");
    let run = api.until_status(id, "cancelled").await;
    assert_eq!(job_of(&run, "deploy").unwrap()["status"], "cancelled", "{run:#}");
    server.halt();
}

/// A host that stops while a run waits: after the restart the run waits again, as the same
/// attempt, with its finished jobs kept (not run again), and an approval lets it finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_run_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DEPLOY, "", Arc::new(Scripted::new())).await;
    let api = Api::of(&server);
    let id = api.trigger("web", "main").await;
    api.until_waiting(id, "deploy").await;
    server.halt();

    let exec = Arc::new(Scripted::new());
    let server = serve(dir.path(), DEPLOY, "", exec.clone()).await;
    let api = Api::of(&server);
    let run = api.until_waiting(id, "deploy").await;
    assert_eq!((run["status"].as_str(), run["attempt"].as_i64()), (Some("running"), Some(1)), "{run:#}");
    assert_eq!(job_of(&run, "build").unwrap()["status"], "success");
    let (code, r) = api.post(&format!("/v1/runs/{id}/approve"), RELEASE, json!({})).await;
    assert_eq!(code, 200, "{r}");
    api.until_status(id, "success").await;
    let jobs: Vec<String> = exec.calls().iter().map(|c| c.job_id.clone()).collect();
    assert_eq!(jobs, ["deploy"], "the build was kept, not run again");
    // The first life's log lines are kept, and the new ones follow them.
    let logs = api.logs(id).await;
    assert!(logs.iter().any(|l| l["text"] == "built"), "{logs:?}");
    let seqs: Vec<i64> = logs.iter().map(|l| l["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    server.halt();
}

/// An environment's secrets reach its jobs only: a job of no environment, or of another (or
/// of one nobody configured), cannot read them, even by naming them. No value is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_secrets_reach_only_the_jobs_of_their_environment() {
    // A secret the job does not have reads as empty, as on GitHub.
    let probe = r#"
      - id: named
        run: log STAGING_TOKEN set=${{ secrets.STAGING_TOKEN != '' }} PROD_TOKEN set=${{ secrets.PROD_TOKEN != '' }}
      - id: granted
        uses: diag
        with: { message: asked }
        permissions: { secrets: [STAGING_TOKEN, PROD_TOKEN] }"#;
    let pipeline = format!(
        "jobs:\n  stage:\n    environment: staging\n    steps:{probe}\n  plain:\n    steps:{probe}\n  qa:\n    environment: qa\n    steps:{probe}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let exec = Arc::new(Scripted::new());
    let server = serve(dir.path(), &pipeline, "", exec.clone()).await;
    let api = Api::of(&server);
    let id = api.trigger("web", "feature/x").await;
    let run = api.until_status(id, "success").await;
    let logs = api.logs(id).await;
    let said = |job: &str| -> Vec<String> {
        logs.iter()
            .filter(|l| l["job"] == job)
            .map(|l| l["text"].as_str().unwrap().to_string())
            .filter(|t| t.contains("set="))
            .collect()
    };
    assert_eq!(said("stage"), ["STAGING_TOKEN set=true PROD_TOKEN set=false"], "{logs:?}");
    assert_eq!(said("plain"), ["STAGING_TOKEN set=false PROD_TOKEN set=false"], "{logs:?}");
    assert_eq!(said("qa"), ["STAGING_TOKEN set=false PROD_TOKEN set=false"], "{logs:?}");
    // Granted by name, given only in the environment.
    for c in exec.calls().iter().filter(|c| c.step_id == "granted") {
        let names: Vec<&str> = c.secrets.keys().map(String::as_str).collect();
        let want: &[&str] = if c.job_id == "stage" { &["STAGING_TOKEN"] } else { &[] };
        assert_eq!(names, want, "job {}", c.job_id);
    }
    assert_eq!(exec.calls().iter().filter(|c| c.step_id == "granted").count(), 3);
    let all = serde_json::to_string(&logs).unwrap() + &run.to_string();
    assert!(!all.contains(STAGING_VALUE) && !all.contains(PROD_VALUE));
    // An environment nobody configured is said so, in the job's log.
    assert!(
        logs.iter().any(|l| l["job"] == "qa" && l["text"].as_str().unwrap().contains("`qa` is not configured")),
        "{logs:?}"
    );
    assert_eq!(job_of(&run, "stage").unwrap()["environment"], "staging");
    assert!(job_of(&run, "plain").unwrap()["environment"].is_null());
    server.halt();
}

/// A run of a ref the environment's `branches` do not take: the job fails with the rule,
/// before any step (and before asking for an approval).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_rule_refuses_a_run_of_another_ref() {
    let dir = tempfile::tempdir().unwrap();
    let exec = Arc::new(Scripted::new());
    let server = serve(dir.path(), DEPLOY, "", exec.clone()).await;
    let api = Api::of(&server);
    let id = api.trigger("web", "feature/x").await;
    let run = api.until_status(id, "failure").await;
    assert_eq!(job_of(&run, "build").unwrap()["status"], "success");
    let deploy = job_of(&run, "deploy").unwrap();
    assert_eq!(deploy["status"], "failure");
    let reason = deploy["reason"].as_str().unwrap();
    assert!(
        reason.contains("environment `production`")
            && reason.contains("[main]")
            && reason.contains("`refs/heads/feature/x`"),
        "{reason}"
    );
    assert!(!exec.calls().iter().any(|c| c.job_id == "deploy"));
    assert!(run["decisions"].as_array().unwrap().is_empty());
    server.halt();
}

/// A job's `if:` is decided before its environment's rules, so it sees the run's secrets only:
/// two probes of an environment secret that may not reach this ref end the same way, whatever
/// the secret holds (a false probe would otherwise be `skipped` and a true one refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_s_condition_cannot_probe_its_environment_s_secrets() {
    const PROBES: &str = r#"
jobs:
  probe-yes:
    environment: production
    if: ${{ secrets.PROD_TOKEN.startsWith('pr0d') }}
    steps:
      - uses: diag
  probe-no:
    environment: production
    if: ${{ !secrets.PROD_TOKEN.startsWith('pr0d') }}
    steps:
      - uses: diag
"#;
    let dir = tempfile::tempdir().unwrap();
    let exec = Arc::new(Scripted::new());
    let server = serve(dir.path(), PROBES, "", exec.clone()).await;
    let api = Api::of(&server);
    let id = api.trigger("web", "feature/x").await;
    let run = api.until_status(id, "failure").await;
    let (yes, no) = (job_of(&run, "probe-yes").unwrap(), job_of(&run, "probe-no").unwrap());
    // Without the secret, `probe-no` holds and reaches the branch rule; `probe-yes` is false.
    assert_eq!(no["status"], "failure", "{run:#}");
    assert_eq!(yes["status"], "skipped", "{run:#}");
    assert!(exec.calls().is_empty());
    server.halt();
}

fn problems(yaml: &str) -> String {
    match skiff_pipeline::load_str(yaml, "p.yaml", Path::new(".")) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(d) => d.to_string(),
    }
}

#[test]
fn environment_mistakes_in_a_pipeline_are_explained() {
    let steps = "    steps:\n      - uses: diag\n";
    let job = |env: &str| format!("jobs:\n  deploy:\n    environment: {env}\n{steps}");
    let e = problems(&job("{ name: production, reviewers: [alice] }"));
    assert!(e.contains("takes `name` and `url`, not `reviewers`") && e.contains("skiff.toml"), "{e}");
    let e = problems(&job("{ url: https://x.example.com }"));
    assert!(e.contains("`environment` needs `name`"), "{e}");
    let e = problems(&job("\"${{ inputs.target }}\""));
    assert!(e.contains("must be written out") && e.contains("3:"), "{e}");
    let e = problems(&job("\"prod uction\""));
    assert!(e.contains("may hold only letters, digits"), "{e}");
    let e = problems(&job("{ name: production, url: \"${{ secrets.TOKEN }}\" }"));
    assert!(e.contains("`environment.url` cannot read secrets"), "{e}");
    let e = problems(&job("[production]"));
    assert!(e.contains("is a name (`production`) or `{ name: …, url: … }`"), "{e}");

    let plan = skiff_pipeline::load_str(DEPLOY, "p.yaml", Path::new(".")).unwrap();
    let text = plan.render();
    assert!(text.contains("  environment: \"production\" url \"${{ steps.ship.outputs.message }}\""), "{text}");
}

#[test]
fn environment_mistakes_in_the_config_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let load = |text: String| ServeConfig::from_toml(&text, Path::new("/"), None).map(|_| ()).unwrap_err();
    let base = config_text(dir.path(), DEPLOY, "");
    let e = load(base.replace(r#"approvers = ["release"]"#, r#"approvers = ["relaese"]"#));
    assert!(format!("{e:#}").contains("names approver `relaese`, which is no token"), "{e:#}");
    let e = load(base.replace(r#"branches = ["main"]"#, "branches = []"));
    assert!(format!("{e:#}").contains("`branches = []` would refuse every run"), "{e:#}");
    let e = load(base.replace(r#"name = "staging""#, r#"name = "production""#));
    assert!(format!("{e:#}").contains("environment `production` is defined twice"), "{e:#}");
}
