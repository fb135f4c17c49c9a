//! `uses: cache`: a miss is saved at the end of the job and the next run hits; a pull request
//! reads its base branch's entries and never writes them; an app's cache stays under its cap,
//! the least recently used going first; a hostile entry is refused on restore and writes
//! nothing outside the workspace. Runs are real (`skiff run`, `skiff serve`), the steps the
//! built-in components.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use skiff_runtime::artifact_store::{ArtifactStore as _, CacheLimits, LocalArtifacts, cache_version};

/// Restores `deps` by the lock file's digest (else any `deps-` entry); builds it on a miss.
const PIPELINE: &str = r#"
steps:
  - id: cache
    uses: cache
    with:
      key: deps-${{ hashFiles('lock.txt') }}
      restore-keys: |
        deps-
      path: deps
  - id: build
    if: steps.cache.outputs['cache-hit'] != 'true'
    uses: diag
    with:
      file: deps/built.txt
      message: built for ${{ hashFiles('lock.txt') }}
"#;

/// A project run with `skiff run`, its cache in its own `SKIFF_CACHE_DIR`.
struct Project {
    dir: tempfile::TempDir,
    cache: tempfile::TempDir,
}

/// One `skiff run`: whether it succeeded, its events, its output, and its temporary folder
/// (which holds its workspace, kept).
struct Ran {
    ok: bool,
    events: Vec<Value>,
    text: String,
    tmp: tempfile::TempDir,
}

impl Ran {
    fn step(&self, id: &str) -> &Value {
        self.events
            .iter()
            .find(|e| e["event"] == "step-finished" && e["step_id"] == id)
            .unwrap_or_else(|| panic!("no step `{id}` in\n{}", self.text))
    }

    fn cache(&self) -> (String, String) {
        let o = &self.step("cache")["outputs"];
        (o["cache-hit"].as_str().unwrap_or_default().into(), o["cache-matched-key"].as_str().unwrap_or_default().into())
    }

    /// A file of the run's workspace.
    fn file(&self, rel: &str) -> Option<String> {
        let ws = std::fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("skiff-local-"))?;
        std::fs::read_to_string(ws.join(rel)).ok()
    }
}

impl Project {
    fn new(pipeline: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".skiff")).unwrap();
        std::fs::write(dir.path().join(".skiff/pipeline.yaml"), pipeline).unwrap();
        std::fs::write(dir.path().join("lock.txt"), "v1").unwrap();
        std::fs::create_dir(dir.path().join("deps")).unwrap();
        Project { dir, cache: tempfile::tempdir().unwrap() }
    }

    fn lock(&self, text: &str) {
        std::fs::write(self.dir.path().join("lock.txt"), text).unwrap();
    }

    fn run(&self, args: &[&str]) -> Ran {
        let tmp = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["run", "--json", "--keep-workspace"])
            .args(args)
            .current_dir(self.dir.path())
            .env("TMPDIR", tmp.path())
            .env("SKIFF_CACHE_DIR", self.cache.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let events = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let text = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        Ran { ok: out.status.success(), events, text, tmp }
    }

    /// The store `skiff run` keeps its cache in (app `local`).
    fn store(&self) -> LocalArtifacts {
        LocalArtifacts::new(self.cache.path().join("unused"))
            .with_cache(self.cache.path().join("step-cache"), CacheLimits::default())
    }

    fn keys(&self, scope: &str) -> Vec<String> {
        let mut keys: Vec<String> =
            self.store().cache_list("local", scope).unwrap().into_iter().map(|e| e.key).collect();
        keys.sort();
        keys
    }
}

/// The key `PIPELINE` computes for a lock file holding `lock`: `hashFiles` of one file is the
/// SHA-256 of its SHA-256.
fn key_of(lock: &str) -> String {
    use sha2::Digest as _;
    format!("deps-{}", hex::encode(sha2::Sha256::digest(sha2::Sha256::digest(lock.as_bytes()))))
}

#[test]
fn a_miss_is_saved_at_the_end_of_the_job_and_the_next_run_hits() {
    let p = Project::new(PIPELINE);
    let first = p.run(&["--ref", "main"]);
    assert!(first.ok, "{}", first.text);
    assert_eq!(first.cache(), ("false".into(), String::new()));
    // Saved by the step's post, after the build: what the build wrote is in it.
    let post = first.step("post-1");
    assert_eq!((post["status"].as_str(), post["outputs"]["saved"].as_str()), (Some("success"), Some("true")), "{post}");
    assert_eq!(p.keys("refs/heads/main"), [key_of("v1")]);

    let second = p.run(&["--ref", "main"]);
    assert!(second.ok, "{}", second.text);
    assert_eq!(second.cache(), ("true".into(), key_of("v1")));
    assert_eq!(second.step("build")["status"], "skipped");
    assert!(second.file("deps/built.txt").unwrap().contains("built for"), "{}", second.text);
    // An exact hit saves nothing.
    assert!(!second.events.iter().any(|e| e["step_id"] == "post-1"), "{}", second.text);

    // A new lock file: the old entry is restored by prefix, and the new key saved beside it.
    p.lock("v2");
    let third = p.run(&["--ref", "main"]);
    assert_eq!(third.cache(), ("false".into(), key_of("v1")));
    assert_eq!(p.keys("refs/heads/main"), {
        let mut k = vec![key_of("v1"), key_of("v2")];
        k.sort();
        k
    });
    // Other branches start empty.
    let dev = p.run(&["--ref", "dev"]);
    assert_eq!(dev.cache(), ("false".into(), String::new()));
}

#[test]
fn a_failed_job_saves_nothing() {
    let p = Project::new(&format!("{PIPELINE}  - uses: diag\n    with:\n      fail: 'true'\n"));
    let ran = p.run(&["--ref", "main"]);
    assert!(!ran.ok, "{}", ran.text);
    assert_eq!(ran.step("post-1")["status"], "skipped", "{}", ran.text);
    assert!(p.keys("refs/heads/main").is_empty());
}

#[test]
fn a_pull_request_reads_its_base_branch_s_cache_and_never_writes_it() {
    let p = Project::new(PIPELINE);
    assert!(p.run(&["--ref", "main"]).ok);
    let event = p.dir.path().join("pr.json");
    let payload = json!({"action": "opened", "number": 3,
        "pull_request": {"number": 3, "title": "t", "head": {"ref": "feature", "sha": "abc"}, "base": {"ref": "main", "sha": "def"}},
        "repository": {"full_name": "acme/web"}, "sender": {"login": "octocat"}});
    std::fs::write(&event, payload.to_string()).unwrap();
    let pr_args = ["--event", event.to_str().unwrap(), "--event-name", "pull_request", "--ref", "refs/pull/3/head"];

    // Same lock file: an exact hit from the base branch, nothing to save.
    let pr = p.run(&pr_args);
    assert!(pr.ok, "{}", pr.text);
    assert_eq!(pr.cache(), ("true".into(), key_of("v1")));
    assert!(pr.text.contains("from `refs/heads/main`"), "{}", pr.text);

    // The pull request changes it: main's entry is restored, the new one goes to its own scope.
    p.lock("v2");
    let pr = p.run(&pr_args);
    assert_eq!(pr.cache(), ("false".into(), key_of("v1")));
    assert_eq!(pr.step("post-1")["outputs"]["saved"], "true", "{}", pr.text);
    assert_eq!(p.keys("pull:refs/pull/3/head"), [key_of("v2")]);
    assert_eq!(p.keys("refs/heads/main"), [key_of("v1")]);

    // Main never sees it; the pull request's next run does.
    let main = p.run(&["--ref", "main"]);
    assert_eq!(main.cache(), ("false".into(), key_of("v1")));
    let pr = p.run(&pr_args);
    assert_eq!(pr.cache(), ("true".into(), key_of("v2")));
    assert!(pr.text.contains("from `pull:refs/pull/3/head`"), "{}", pr.text);
}

/// One tar member: its name, kind, and content (a link's target).
type Member<'a> = (&'a str, tar::EntryType, &'a str);

/// A tar with these members as an attacker writes them: names and link targets unchecked.
fn crafted(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, body) in members {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        let content = if *kind == tar::EntryType::Regular { body.as_bytes() } else { b"" };
        if *kind == tar::EntryType::Symlink {
            h.as_old_mut().linkname[..body.len()].copy_from_slice(body.as_bytes());
        }
        h.set_size(content.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn plant(p: &Project, tar: &[u8]) {
    let version = cache_version(&["deps".to_string()]);
    let mut w = p.store().cache_create("local", "refs/heads/main", &key_of("v1"), &version).unwrap();
    w.write_all(tar).unwrap();
    w.commit().unwrap();
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&path));
        }
        out.push(path);
    }
    out
}

#[test]
fn a_hostile_entry_is_refused_on_restore_and_writes_nothing_outside_the_workspace() {
    use tar::EntryType::{Regular, Symlink};
    let cases: &[(&[Member], &str)] = &[
        (&[("deps/ok.txt", Regular, "fine"), ("deps/../../escaped", Regular, "pwned")], "is outside the workspace"),
        (&[("deps/out", Symlink, "../.."), ("deps/out/escaped", Regular, "pwned")], "outside the workspace"),
        (&[("deps/etc", Symlink, "/etc")], "a symbolic link to `/etc`, outside the workspace"),
    ];
    for (members, want) in cases {
        let p = Project::new(PIPELINE);
        plant(&p, &crafted(members));
        let ran = p.run(&["--ref", "main"]);
        assert!(!ran.ok, "{members:?}: {}", ran.text);
        let error = ran.step("cache")["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains("was not restored") && error.contains(want), "{members:?}: {error}");
        // Nothing landed beside the workspace, and no link out is left in it.
        let escaped: Vec<_> =
            files_under(ran.tmp.path()).into_iter().filter(|f| f.file_name().is_some_and(|n| n == "escaped")).collect();
        assert!(escaped.is_empty(), "{escaped:?}");
        let links: Vec<_> = files_under(ran.tmp.path()).into_iter().filter(|f| f.is_symlink()).collect();
        assert!(links.is_empty(), "{links:?}");
    }
}

/// `skiff serve` with a 1 MiB cap per app: each run saves 700 KB under its own key.
fn serve_config(data: &Path, port: u16) -> String {
    format!(
        r#"
listen = "127.0.0.1:{port}"
data = "{data}"

[cache]
max-size-mb = 1

[[tokens]]
name = "admin"
sha256 = "{token}"
apps = ["*"]

[[apps]]
name = "web"
pipeline-yaml = """
jobs:
  build:
    outputs:
      hit: ${{{{ steps.cache.outputs['cache-hit'] }}}}
    steps:
      - id: cache
        uses: cache
        with:
          key: blob-${{{{ inputs.n }}}}
          path: deps
      - if: steps.cache.outputs['cache-hit'] != 'true'
        run: mkdir -p deps && head -c 700000 /dev/urandom > deps/blob
"""
"#,
        data = data.display(),
        token = skiff_server::crypto::token_hash(crate::serve::TOKEN_ALL),
    )
}

#[tokio::test]
async fn an_app_s_cache_keeps_under_its_cap_the_least_recently_used_going_first() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = crate::serve::ServeProcess::start_with(dir.path(), |port| serve_config(&data, port)).await;
    let http = reqwest::Client::new();
    let run = |n: &str| {
        let (http, base) = (http.clone(), serve.base.clone());
        let n = n.to_string();
        async move {
            let started: Value = http
                .post(format!("{base}/v1/apps/web/runs"))
                .bearer_auth(crate::serve::TOKEN_ALL)
                .json(&json!({"ref": "main", "inputs": {"n": n}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let id = started["id"].as_i64().unwrap_or_else(|| panic!("{started}"));
            let run = crate::support::finished(&http, &base, crate::serve::TOKEN_ALL, id).await;
            assert_eq!(run["status"], "success", "{run:#}");
            run["jobs"][0]["outputs"]["hit"].as_str().unwrap_or_default().to_string()
        }
    };
    assert_eq!(run("1").await, "false");
    assert_eq!(run("1").await, "true");
    // Two entries do not fit in 1 MiB: saving the second evicts the first.
    assert_eq!(run("2").await, "false");
    assert_eq!(run("2").await, "true");
    assert_eq!(run("1").await, "false");
    let tars: Vec<_> =
        files_under(&data.join("cache")).into_iter().filter(|f| f.extension().is_some_and(|e| e == "tar")).collect();
    assert_eq!(tars.len(), 1, "{tars:?}");
}
