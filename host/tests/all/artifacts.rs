//! Run artifacts: stored by steps (`upload` with `target: artifact`) in `skiff run` and in
//! `skiff serve`, fetched by the jobs that need the job that stored them (`uses: download`),
//! listed and downloaded through the API and the CLI, and only with a token that reaches the
//! run's app.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sha2::Digest as _;

/// A pipeline whose `build` job writes a file and keeps it as an artifact, and whose `test` job
/// (which needs `build`) downloads it and keeps it again under another name; `lint`, which
/// needs nothing, may not download it.
const PIPELINE: &str = r#"
jobs:
  build:
    steps:
      - uses: diag
        with:
          message: built by the artifact test
          file: report.txt
      - uses: upload
        with:
          target: artifact
          source: report.txt
          name: report.txt
  test:
    needs: [build]
    steps:
      - id: get
        uses: download
        with:
          path: got/here
      - uses: upload
        with:
          target: artifact
          source: got/here/report.txt
          name: roundtrip.txt
  lint:
    steps:
      - uses: download
        continue-on-error: true
        with:
          name: report.txt
"#;

const TOKEN_ADMIN: &str = "admin-7c1f0b";
const TOKEN_WEB: &str = "web-2b8d4e";
const TOKEN_OTHER: &str = "other-91aa3c";

#[test]
fn skiff_run_keeps_the_artifacts_and_says_where() {
    let project = tempfile::tempdir().unwrap();
    std::fs::create_dir(project.path().join(".skiff")).unwrap();
    std::fs::write(project.path().join(".skiff/pipeline.yaml"), PIPELINE).unwrap();
    let store = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["run", "--artifacts"])
        .arg(store.path())
        .current_dir(project.path())
        .env("TMPDIR", tmp.path())
        .env("SKIFF_CACHE_DIR", crate::shared_cache_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", String::from_utf8_lossy(&out.stdout));
    let runs: Vec<_> = std::fs::read_dir(store.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let text = std::fs::read_to_string(runs[0].join("report.txt")).unwrap();
    assert!(text.contains("built by the artifact test"), "{text}");
    // `test` got what `build` stored, in its own workspace, and stored it again.
    assert_eq!(std::fs::read_to_string(runs[0].join("roundtrip.txt")).unwrap(), text);
    assert!(stderr.contains(&format!("artifacts: 2 stored in {}", runs[0].display())), "{stderr}");
    // `lint` needs nothing, so it may not fetch what `build` stored.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("needs no other job"), "{stdout}");
}

#[test]
fn a_job_downloads_only_what_the_jobs_it_needs_stored() {
    let project = tempfile::tempdir().unwrap();
    std::fs::create_dir(project.path().join(".skiff")).unwrap();
    let pipeline = r#"
jobs:
  build:
    strategy:
      matrix:
        os: [linux, mac]
    steps:
      - uses: diag
        with:
          message: built for ${{ matrix.os }}
          file: app.txt
      - uses: upload
        with:
          target: artifact
          source: app.txt
          name: app-${{ matrix.os }}.txt
  docs:
    steps:
      - uses: diag
        with:
          file: docs.txt
      - uses: upload
        with:
          target: artifact
          source: docs.txt
          name: docs.txt
  package:
    needs: [build]
    steps:
      - uses: download
        with:
          path: dist
      - id: docs
        uses: download
        continue-on-error: true
        with:
          name: docs.txt
  release:
    needs: [package, docs]
    steps:
      - uses: download
        with:
          name: app-mac.txt
"#;
    std::fs::write(project.path().join(".skiff/pipeline.yaml"), pipeline).unwrap();
    let store = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["run", "--json", "--keep-workspace", "--artifacts"])
        .arg(store.path())
        .current_dir(project.path())
        .env("TMPDIR", tmp.path())
        .env("SKIFF_CACHE_DIR", crate::shared_cache_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let step = |job: &str, id: &str| {
        events
            .iter()
            .find(|e| e["event"] == "step-finished" && e["job_id"] == job && e["step_id"] == id)
            .unwrap_or_else(|| panic!("no {job}/{id} in {stdout}"))
            .clone()
    };
    // Both combinations of the matrix job, and nothing of `docs`, which `package` does not need.
    let all = step("package", "step-1");
    assert_eq!(all["outputs"]["names"], "app-linux.txt,app-mac.txt", "{all}");
    let docs = step("package", "docs");
    assert!(
        // `docs` runs beside `package`: its artifact is either stored already (and named as not
        // needed) or not yet; either way `package` gets none of it.
        docs["error"].as_str().unwrap().contains("stored by job `docs`, which job `package` does not need")
            || docs["error"].as_str().unwrap().contains("stored no artifact `docs.txt`"),
        "{docs}"
    );
    // Through `package`, `release` needs `build` too.
    assert_eq!(step("release", "step-1")["outputs"]["names"], "app-mac.txt");
    let files = walk(tmp.path());
    let got = files.iter().find(|p| p.ends_with("dist/app-mac.txt")).unwrap_or_else(|| panic!("{files:?}"));
    assert!(std::fs::read_to_string(got).unwrap().contains("built for mac"));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn config(data: &Path, port: u16) -> String {
    let pipeline = PIPELINE.replace('\n', "\n    ");
    format!(
        r#"
listen = "127.0.0.1:{port}"
data = "{data}"

[[tokens]]
name = "admin"
sha256 = "{admin}"
apps = ["*"]

[[tokens]]
name = "web-ci"
sha256 = "{web}"
apps = ["web"]

[[tokens]]
name = "other-ci"
sha256 = "{other}"
apps = ["other"]

[[apps]]
name = "web"
pipeline-yaml = """
    {pipeline}"""

[[apps]]
name = "other"
pipeline-yaml = """
steps:
  - uses: diag
"""
"#,
        data = data.display(),
        admin = skiff_server::crypto::token_hash(TOKEN_ADMIN),
        web = skiff_server::crypto::token_hash(TOKEN_WEB),
        other = skiff_server::crypto::token_hash(TOKEN_OTHER),
    )
}

#[tokio::test]
async fn artifacts_are_listed_and_downloaded_through_the_api_and_the_cli_by_their_app_only() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let serve = crate::serve::ServeProcess::start_with(data.path(), |port| config(&dir.join("data"), port)).await;
    let base = serve.base.clone();
    let http = reqwest::Client::new();
    let run = crate::support::manual_run(&http, &base, TOKEN_ADMIN, "web").await;
    let id = run["id"].as_i64().unwrap_or_else(|| panic!("{run}"));
    assert_eq!(run["status"], "success", "{run:#}");

    // Listed, with what the download is checked against.
    let list = http.get(format!("{base}/v1/runs/{id}/artifacts")).bearer_auth(TOKEN_WEB).send().await.unwrap();
    assert_eq!(list.status(), 200);
    let list: Value = list.json().await.unwrap();
    // The steps' artifacts (the host may keep its own beside them, such as the run's provenance).
    let named = |name: &str| {
        list["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{list}"))
    };
    let (a, b) = (&named("report.txt"), &named("roundtrip.txt"));
    assert_eq!((a["job"].as_str(), a["step"].as_str()), (Some("build"), Some("step-2")), "{list}");
    assert_eq!(b["job"].as_str(), Some("test"), "{list}");
    assert_eq!(a["sha256"], b["sha256"], "the download in `test` got the bytes `build` stored");

    // Downloaded: the bytes the step stored, with their digest.
    let resp =
        http.get(format!("{base}/v1/runs/{id}/artifacts/report.txt")).bearer_auth(TOKEN_WEB).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let sum = resp.headers()["x-checksum-sha256"].to_str().unwrap().to_string();
    let bytes = resp.bytes().await.unwrap();
    assert!(String::from_utf8_lossy(&bytes).contains("built by the artifact test"));
    assert_eq!(sum, hex::encode(sha2::Sha256::digest(&bytes)));
    assert_eq!(a["sha256"].as_str(), Some(sum.as_str()));
    assert_eq!(a["size"].as_u64(), Some(bytes.len() as u64));

    // Another app's token sees neither the list nor the bytes; a missing name says what exists.
    for path in [format!("/v1/runs/{id}/artifacts"), format!("/v1/runs/{id}/artifacts/report.txt")] {
        let r = http.get(format!("{base}{path}")).bearer_auth(TOKEN_OTHER).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = http.get(format!("{base}/v1/runs/{id}/artifacts/nope.txt")).bearer_auth(TOKEN_WEB).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("/artifacts` lists"), "{body}");
    let r =
        http.get(format!("{base}/v1/runs/{id}/artifacts/..%2Fskiff.toml")).bearer_auth(TOKEN_WEB).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // The CLI: listed, then downloaded into a folder and checked.
    let cli = |args: &[&str], token: &str| {
        Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["runs", "artifacts", &id.to_string(), "--server", &base, "--token", token])
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(&[], TOKEN_WEB);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("report.txt") && stdout.contains(&sum), "{stdout}");
    let into = tempfile::tempdir().unwrap();
    let dir = into.path().join("got");
    let out = cli(&["--download", dir.to_str().unwrap()], TOKEN_WEB);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(dir.join("report.txt")).unwrap(), bytes.to_vec());
    assert_eq!(std::fs::read(dir.join("roundtrip.txt")).unwrap(), bytes.to_vec());
    let out = cli(&["--download", dir.to_str().unwrap(), "--name", "missing.bin"], TOKEN_WEB);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no artifact `missing.bin`; it has ") && stderr.contains("report.txt, roundtrip.txt"),
        "{stderr}"
    );
    let out = cli(&[], TOKEN_OTHER);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"), "{}", String::from_utf8_lossy(&out.stderr));
}
