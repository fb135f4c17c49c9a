//! Labels: `runs-on:` in a pipeline as GitHub writes it, and hosts with `labels` that take
//! only the runs whose jobs they can run. One host on SQLite (a run no host can take waits,
//! with the reason in the API, until a host with the label starts), and two hosts sharing a
//! real PostgreSQL (each job goes to the host with its labels).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skiff_server::config::ServeConfig;
use skiff_server::{Role, Server, start};

use crate::support::Scripted;

const ADMIN: &str = "admin-token";

/// `any` runs anywhere (GitHub's hosted image name means `linux`); `gpu` needs a host with
/// that label, in a matrix whose second cell also needs `big`.
const PIPELINES: &str = r#"
[[apps]]
name = "any"
pipeline-yaml = """
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - id: anywhere
        uses: diag
"""

[[apps]]
name = "gpu"
pipeline-yaml = """
jobs:
  train:
    runs-on: [self-hosted, GPU]
    steps:
      - id: train
        uses: diag
"""

[[apps]]
name = "split"
pipeline-yaml = """
jobs:
  build:
    outputs:
      word: ${{ steps.make.outputs.message }}
    steps:
      - id: make
        uses: diag
        with: { message: "built-${{ run.id }}" }
  train:
    needs: build
    runs-on: gpu
    strategy: { matrix: { size: [s, m] } }
    steps:
      - id: fit
        uses: diag
        with: { message: "trained ${{ needs.build.outputs.word }} ${{ matrix.size }}" }
"""

[[apps]]
name = "tpu"
pipeline-yaml = """
jobs:
  quick:
    steps:
      - id: quick
        uses: diag
  big:
    runs-on: tpu
    steps:
      - id: never
        uses: diag
"""
"#;

fn config(data: &Path, top: &str) -> ServeConfig {
    let text = format!(
        r#"
listen = "127.0.0.1:0"
data = "{data}"
{top}

[[tokens]]
name = "admin"
token = "{ADMIN}"
apps = ["*"]
{PIPELINES}"#,
        data = data.display(),
    );
    ServeConfig::from_toml(&text, Path::new("/"), None).unwrap()
}

async fn serve(data: &Path, top: &str, exec: Arc<Scripted>) -> Server {
    start(config(data, top), exec, Role::All).await.unwrap()
}

async fn trigger(http: &reqwest::Client, server: &Server, app: &str) -> i64 {
    let r = http
        .post(format!("http://{}/v1/apps/{app}/runs", server.addr))
        .bearer_auth(ADMIN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

async fn run(http: &reqwest::Client, server: &Server, id: i64) -> Value {
    let url = format!("http://{}/v1/runs/{id}", server.addr);
    http.get(url).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap()
}

async fn until(http: &reqwest::Client, server: &Server, id: i64, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = run(http, server, id).await;
        if check(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "run {id}: waited for {what}: {r:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_run_waits_with_its_reason_until_a_host_with_its_labels_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let exec = Arc::new(Scripted::new());
    let server = serve(dir.path(), "", exec.clone()).await;

    // `ubuntu-latest` runs on any Linux host; `gpu` waits, saying for what.
    let gpu = trigger(&http, &server, "gpu").await;
    let any = trigger(&http, &server, "any").await;
    let done = until(&http, &server, any, "success", |r| r["status"] == "success").await;
    assert_eq!(done["runs_on"], json!(["linux"]), "{done:#}");
    assert!(done.get("waiting_for").is_none(), "{done:#}");
    let waiting = until(&http, &server, gpu, "its labels", |r| r["runs_on"].is_array()).await;
    assert_eq!(waiting["status"], "queued", "{waiting:#}");
    assert_eq!(waiting["runs_on"], json!(["gpu", "self-hosted"]), "{waiting:#}");
    let why = waiting["waiting_for"].as_str().unwrap_or_default();
    assert!(why.contains("a host with the labels gpu, self-hosted") && why.contains("--labels"), "{waiting:#}");
    // The console's run page says so too.
    let console = crate::support::Console::sign_in(&format!("http://{}", server.addr), ADMIN).await;
    let page = console.get(&format!("/runs/{gpu}")).await;
    assert!(page.contains("Waiting for a host with the labels gpu, self-hosted"), "{page}");
    assert!(page.contains("<dt>Runs on</dt><dd><code>gpu, self-hosted</code></dd>"), "{page}");
    // Later runs of other apps are not held up by it.
    let again = trigger(&http, &server, "any").await;
    until(&http, &server, again, "success", |r| r["status"] == "success").await;
    assert_eq!(run(&http, &server, gpu).await["status"], "queued");
    assert!(exec.calls().iter().all(|c| c.step_id != "train"));
    server.stop().await;

    // The same store under a host that has the label: the run goes.
    let exec = Arc::new(Scripted::new());
    let server = serve(dir.path(), "labels = [\"gpu\", \"cuda-12\"]", exec.clone()).await;
    let done = until(&http, &server, gpu, "success", |r| r["status"] == "success").await;
    assert!(done.get("waiting_for").is_none(), "{done:#}");
    assert_eq!(exec.call("train").job_id, "train");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_on_one_postgres_each_take_the_runs_they_have_the_labels_for() {
    let Some(db) = skiff_server::testing::postgres::database() else { return };
    let store = format!("store = \"{}\"", db.url);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (plain, gpu) = (Arc::new(Scripted::new()), Arc::new(Scripted::new()));
    let host_a = serve(a.path(), &store, plain.clone()).await;
    let host_b = serve(b.path(), &format!("{store}\nlabels = [\"gpu\"]"), gpu.clone()).await;
    let http = reqwest::Client::new();

    // Both hosts see every run (one store); the ones that need `gpu` run on host B only,
    // whichever host accepted them.
    let mut trains = Vec::new();
    for i in 0..4 {
        let via = if i % 2 == 0 { &host_a } else { &host_b };
        trains.push(trigger(&http, via, "gpu").await);
    }
    for id in &trains {
        let r = until(&http, &host_a, *id, "success", |r| r["status"] == "success").await;
        // Jobs are leased one by one here: the run waits for no labels, its job for its own.
        assert!(r.get("runs_on").is_none() && r.get("waiting_for").is_none(), "{r:#}");
    }
    let on_b = gpu.calls().iter().filter(|c| c.step_id == "train").count();
    assert_eq!(on_b, trains.len(), "every run that needs `gpu` ran on the host with it, once");
    assert!(plain.calls().iter().all(|c| c.step_id != "train"), "host A ran a job it has no label for");

    // A run any host can take runs once, on one of them.
    let mut anys = Vec::new();
    for _ in 0..6 {
        anys.push(trigger(&http, &host_a, "any").await);
    }
    for id in &anys {
        until(&http, &host_b, *id, "success", |r| r["status"] == "success").await;
    }
    let ran = |e: &Scripted| e.calls().iter().filter(|c| c.step_id == "anywhere").count();
    assert_eq!(ran(&plain) + ran(&gpu), anys.len(), "each run once");

    host_a.stop().await;
    host_b.stop().await;
}

/// With PostgreSQL, jobs rather than runs are leased: one run's jobs go to the hosts with
/// their labels, each job once, and a job's outputs reach the jobs that need it on another
/// host. A job no host can take waits, saying for what, while the rest of its run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_of_one_run_go_to_the_hosts_with_their_labels_and_hand_on_their_outputs() {
    let Some(db) = skiff_server::testing::postgres::database() else { return };
    let store = format!("store = \"{}\"", db.url);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (plain, gpu) = (Arc::new(Scripted::new()), Arc::new(Scripted::new()));
    let host_a = serve(a.path(), &store, plain.clone()).await;
    let host_b = serve(b.path(), &format!("{store}\nlabels = [\"gpu\"]"), gpu.clone()).await;
    let http = reqwest::Client::new();

    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(trigger(&http, &host_a, "split").await);
    }
    for id in &ids {
        let r = until(&http, &host_b, *id, "success", |r| r["status"] == "success").await;
        let jobs: Vec<(&str, &str)> = r["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| (j["key"].as_str().unwrap(), j["status"].as_str().unwrap()))
            .collect();
        assert_eq!(jobs.len(), 3, "{r:#}");
        assert!(jobs.iter().all(|(_, st)| *st == "success"), "{r:#}");
        assert_eq!(r["attempt"], 1, "{r:#}");
    }
    // Every `train` combination ran on B, the host with `gpu`, with `build`'s output from
    // wherever `build` ran; each job once.
    let fits: Vec<String> =
        gpu.calls().iter().filter(|c| c.step_id == "fit").map(|c| c.inputs["message"].clone()).collect();
    assert_eq!(fits.len(), 2 * ids.len(), "{fits:?}");
    for id in &ids {
        for size in ["s", "m"] {
            let want = format!("trained built-{id} {size}");
            assert_eq!(fits.iter().filter(|f| **f == want).count(), 1, "{want} in {fits:?}");
        }
    }
    assert!(plain.calls().iter().all(|c| c.step_id != "fit"), "host A ran a job it has no label for");
    let makes = plain.calls().iter().chain(gpu.calls().iter()).filter(|c| c.step_id == "make").count();
    assert_eq!(makes, ids.len(), "each build once, on either host");

    // No host has `tpu`: that job waits with its reason; the run's other job runs meanwhile.
    let id = trigger(&http, &host_a, "tpu").await;
    let waiting = until(&http, &host_a, id, "a job waiting for tpu", |r| {
        r["jobs"].as_array().is_some_and(|j| {
            j.iter().any(|j| j["key"] == "quick" && j["status"] == "success")
                && j.iter().any(|j| j["key"] == "big" && j["status"] == "queued")
        })
    })
    .await;
    assert_eq!(waiting["status"], "running", "{waiting:#}");
    let big = waiting["jobs"].as_array().unwrap().iter().find(|j| j["key"] == "big").unwrap().clone();
    assert_eq!(big["reason"], "waiting for a host with the labels tpu", "{waiting:#}");
    let r = http.post(format!("http://{}/v1/runs/{id}/cancel", host_b.addr)).bearer_auth(ADMIN).send().await.unwrap();
    assert!(r.status().is_success());
    let over = until(&http, &host_a, id, "cancelled", |r| r["status"] == "cancelled").await;
    let big = over["jobs"].as_array().unwrap().iter().find(|j| j["key"] == "big").unwrap().clone();
    assert_eq!(big["status"], "cancelled", "{over:#}");
    assert!(plain.calls().iter().chain(gpu.calls().iter()).all(|c| c.step_id != "never"));

    host_a.stop().await;
    host_b.stop().await;
}

fn problems(yaml: &str) -> String {
    match skiff_pipeline::load_str(yaml, "p.yaml", Path::new(".")) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(d) => d.to_string(),
    }
}

#[test]
fn runs_on_is_read_as_github_writes_it_and_its_mistakes_are_explained() {
    let job = |runs_on: &str| format!("jobs:\n  build:\n    runs-on: {runs_on}\n    steps:\n      - uses: diag\n");
    let labels = |runs_on: &str| {
        let plan = skiff_pipeline::load_str(&job(runs_on), "p.yaml", Path::new(".")).unwrap();
        (plan.jobs.iter().map(|j| j.runs_on.clone()).collect::<Vec<_>>(), plan.labels())
    };
    assert_eq!(labels("ubuntu-latest").1, ["linux"]);
    assert_eq!(labels("ubuntu-24.04").1, ["linux"]);
    assert_eq!(labels("[self-hosted, Linux, X64, gpu, gpu]").1, ["gpu", "linux", "self-hosted", "x64"]);
    assert_eq!(labels("{ labels: big }").1, ["big"]);
    assert_eq!(labels("{ labels: [big, fast] }").1, ["big", "fast"]);
    // Through the matrix: one set of labels per combination.
    let matrix = "jobs:\n  build:\n    strategy:\n      matrix:\n        arch: [x64, arm64]\n    runs-on: [linux, \"${{ matrix.arch }}\"]\n    steps:\n      - uses: diag\n";
    let plan = skiff_pipeline::load_str(matrix, "p.yaml", Path::new(".")).unwrap();
    let per_job: Vec<Vec<String>> = plan.jobs.iter().map(|j| j.runs_on.clone()).collect();
    assert_eq!(per_job, [vec!["linux".to_string(), "x64".into()], vec!["arm64".into(), "linux".into()]]);
    assert_eq!(plan.labels(), ["arm64", "linux", "x64"]);
    assert!(plan.render().contains("  runs-on: [linux, x64]"), "{}", plan.render());

    let e = problems(&job("{ group: large-runners }"));
    assert!(e.contains("runner group") && e.contains("--labels"), "{e}");
    let e = problems(&job("{ labels: [gpu], size: xl }"));
    assert!(e.contains("takes `labels` only, not `size`"), "{e}");
    let e = problems(&job("\"${{ inputs.host }}\""));
    assert!(e.contains("`runs-on` can use only `matrix`") && e.contains("inputs"), "{e}");
    let e = problems(&job("\"gpu box\""));
    assert!(e.contains("may hold only letters, digits"), "{e}");
    let e = problems(&job("[]"));
    assert!(e.contains("names no label"), "{e}");
    let e = problems(&job("42"));
    assert!(e.contains("`runs-on` is a label, a list of labels"), "{e}");
}

#[test]
fn a_host_s_labels_are_checked_and_include_what_every_host_has() {
    let dir = tempfile::tempdir().unwrap();
    let labels = config(dir.path(), "labels = [\"GPU\", \"cuda-12\"]").labels;
    assert!(labels.iter().any(|l| l == "gpu") && labels.iter().any(|l| l == "cuda-12"), "{labels:?}");
    for implicit in ["self-hosted", "linux"] {
        assert!(labels.iter().any(|l| l == implicit), "{labels:?}");
    }
    let text = format!("data = \"{}\"\nlabels = [\"gpu box\"]\n", dir.path().display());
    let e = format!("{:#}", ServeConfig::from_toml(&text, Path::new("/"), None).unwrap_err());
    assert!(e.contains("labels") && e.contains("may hold only letters, digits"), "{e}");
}
