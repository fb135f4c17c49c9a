//! Repository-driven runs against real git servers started here: git's smart HTTP
//! (`git http-backend` behind a small HTTP/1.1 server, plain or TLS) and `git daemon`.

use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_server::config::ServeConfig;
use skiff_server::{Role, start};

use crate::plugins::{Req, read_request};
use crate::serve::{TOKEN_ALL, WEBHOOK_SECRET};

pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("git is installed (apt-get install git)");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A forge's repository `acme/web.git` under `root`: commit one, commit two (a changed file
/// and a changed pipeline) on `main`, and a pull request's head in `refs/pull/1/head`.
pub(crate) struct Repo {
    pub root: tempfile::TempDir,
    pub commits: Vec<String>,
    pub pr_head: String,
    /// `refs/pull/1/merge`: the head merged into main.
    pub pr_merge: String,
}

const PIPELINE_ONE: &str = r#"steps:
  - run: echo "built $(cat version.txt) with pipeline one secret=${{ secrets.DEPLOY_TOKEN }}"
"#;
const PIPELINE_TWO: &str = r#"steps:
  - run: echo "built $(cat version.txt) with pipeline two"
"#;
const PIPELINE_PR: &str = r#"steps:
  - run: echo "built $(cat version.txt) with pipeline two secret=[${{ secrets.DEPLOY_TOKEN }}] commits=$(git rev-list --count HEAD)"
"#;

impl Repo {
    pub fn new() -> Repo {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("work");
        std::fs::create_dir_all(work.join(".skiff")).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        let mut commits = Vec::new();
        for (version, pipeline) in [("v1", PIPELINE_ONE), ("v2", PIPELINE_TWO)] {
            std::fs::write(work.join("version.txt"), version).unwrap();
            std::fs::write(work.join(".skiff/pipeline.yaml"), pipeline).unwrap();
            git(&work, &["add", "."]);
            git(&work, &["commit", "-q", "-m", version]);
            commits.push(git(&work, &["rev-parse", "HEAD"]));
        }
        git(&work, &["checkout", "-q", "-b", "feature"]);
        std::fs::write(work.join("version.txt"), "pr").unwrap();
        std::fs::write(work.join(".skiff/pipeline.yaml"), PIPELINE_PR).unwrap();
        git(&work, &["commit", "-q", "-am", "pr"]);
        let pr_head = git(&work, &["rev-parse", "HEAD"]);
        // The forge's test merge of the pull request into main, as `refs/pull/1/merge`.
        git(&work, &["checkout", "-q", "main"]);
        git(&work, &["merge", "-q", "--no-ff", "-m", "merge", "feature"]);
        let pr_merge = git(&work, &["rev-parse", "HEAD"]);
        git(&work, &["reset", "-q", "--hard", "HEAD~1"]);
        git(&work, &["checkout", "-q", "feature"]);
        let bare = root.path().join("acme/web.git");
        git(root.path(), &["clone", "-q", "--bare", work.to_str().unwrap(), bare.to_str().unwrap()]);
        git(&bare, &["update-ref", "refs/pull/1/head", &pr_head]);
        git(&bare, &["update-ref", "refs/pull/1/merge", &pr_merge]);
        Repo { root, commits, pr_head, pr_merge }
    }

    pub fn bare_root(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }
}

/// `git http-backend` behind an HTTP/1.1 server on 127.0.0.1 (TLS when `tls` holds a server
/// config); answers 401 unless `Authorization` is `want_auth` (when given), 503 while `down`.
pub(crate) struct HttpGit {
    pub port: u16,
    pub requests: Arc<AtomicUsize>,
    pub down: Arc<AtomicBool>,
    pub auth_seen: Arc<Mutex<Vec<String>>>,
}

pub(crate) fn http_git(root: PathBuf, want_auth: Option<String>, tls: Option<Arc<rustls::ServerConfig>>) -> HttpGit {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let auth_seen = Arc::new(Mutex::new(Vec::new()));
    let (r, d, a) = (requests.clone(), down.clone(), auth_seen.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (root, want, r, d, a, tls) =
                (root.clone(), want_auth.clone(), r.clone(), d.clone(), a.clone(), tls.clone());
            std::thread::spawn(move || {
                let _ = match tls {
                    Some(cfg) => {
                        let conn = rustls::ServerConnection::new(cfg).unwrap();
                        cgi(rustls::StreamOwned::new(conn, stream), &root, want.as_deref(), &r, &d, &a)
                    }
                    None => cgi(stream, &root, want.as_deref(), &r, &d, &a),
                };
            });
        }
    });
    HttpGit { port, requests, down, auth_seen }
}

fn cgi(
    mut stream: impl Read + Write,
    root: &Path,
    want_auth: Option<&str>,
    requests: &AtomicUsize,
    down: &AtomicBool,
    auth_seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut stream);
    let Req { method, target, headers, body } = read_request(&mut reader)?;
    let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    drop(reader);
    requests.fetch_add(1, Ordering::SeqCst);
    let auth = get("authorization").unwrap_or_default();
    auth_seen.lock().unwrap().push(auth.clone());
    let reply = |out: &mut dyn Write, status: &str, body: &[u8]| -> std::io::Result<()> {
        write!(out, "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len())?;
        out.write_all(body)?;
        out.flush()
    };
    if down.load(Ordering::SeqCst) {
        return reply(&mut stream, "503 Service Unavailable", b"down for maintenance");
    }
    if let Some(w) = want_auth
        && auth != w
    {
        return reply(&mut stream, "401 Unauthorized", b"who are you?");
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut child = std::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", &method)
        .env("CONTENT_TYPE", get("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("GIT_PROTOCOL", get("git-protocol").unwrap_or_default())
        .env("HTTP_CONTENT_ENCODING", get("content-encoding").unwrap_or_default())
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output()?;
    let split = out.stdout.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let split = split.or_else(|| out.stdout.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((i, n)) = split else { return reply(&mut stream, "500 Internal Server Error", &out.stdout) };
    let head = String::from_utf8_lossy(&out.stdout[..i]).into_owned();
    let payload = &out.stdout[i + n..];
    let mut status = "200 OK".to_string();
    let mut response = String::new();
    for l in head.lines() {
        match l.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
            Some(_) => response.push_str(&format!("{l}\r\n")),
            None => {}
        }
    }
    write!(stream, "HTTP/1.1 {status}\r\n{response}content-length: {}\r\nconnection: close\r\n\r\n", payload.len())?;
    stream.write_all(payload)?;
    stream.flush()
}

/// A CA of the test's own and a server certificate for 127.0.0.1 signed by it.
pub(crate) fn tls_config() -> (Arc<rustls::ServerConfig>, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    (Arc::new(config), ca.pem())
}

/// `git daemon` serving `root` on a free port; killed when dropped.
pub(crate) struct Daemon {
    pub port: u16,
    child: std::process::Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // `git daemon` starts `git-daemon`, which starts a process per connection: stop the
        // whole group.
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

pub(crate) fn git_daemon(root: &Path) -> Daemon {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new("git")
        .args(["daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1", &format!("--port={port}")])
        .arg(format!("--base-path={}", root.display()))
        .arg(root)
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("git daemon (Debian's git) is installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "git daemon did not start on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon { port, child }
}

/// `skiff serve` in this process with the local executor and one GitHub app, `web`, with the
/// keys in `app` (its `clone-url`, …).
async fn serve(data: &Path, app: &str) -> skiff_server::Server {
    serve_app(data, Serve { app, ..Serve::default() }).await
}

/// [`serve`], with more secrets (`, NAME = "value"` pairs).
async fn serve_with_secrets(data: &Path, app: &str, secrets: &str) -> skiff_server::Server {
    serve_app(data, Serve { app, secrets, ..Serve::default() }).await
}

/// What varies between the tests' hosts.
pub(crate) struct Serve<'a> {
    /// `github`, `gitlab`, `gitea`, …
    pub provider: &'a str,
    /// Top-level keys (`dispatch-key`, `keep-workspaces`).
    pub top: &'a str,
    /// Keys of the app.
    pub app: &'a str,
    /// More secrets, as `, NAME = "value"` pairs.
    pub secrets: &'a str,
}

impl Default for Serve<'_> {
    fn default() -> Self {
        Serve { provider: "github", top: "", app: "", secrets: "" }
    }
}

/// `skiff serve` in this process with the local executor and the app `web`.
pub(crate) async fn serve_app(data: &Path, s: Serve<'_>) -> skiff_server::Server {
    use skiff_runtime::{EngineOptions, Runtime};
    let runtime =
        Runtime::new(EngineOptions { pool_size: 8, ..Default::default() }, Some(crate::shared_cache_dir())).unwrap();
    let executor = Arc::new(skiff_runtime::executor::LocalExecutor::new(Arc::new(runtime)));
    let text = format!(
        r#"
listen = "127.0.0.1:0"
data = "{data}"
{top}

[[tokens]]
name = "admin"
token = "{TOKEN_ALL}"
apps = ["*"]

[[apps]]
name = "web"
repository = "acme/web"
provider = "{provider}"
webhook-secret = "{WEBHOOK_SECRET}"
on = {{ push = {{ branches = ["main"] }}, pull_request = {{}} }}
secrets = {{ DEPLOY_TOKEN = "tok-9f8e7d", GIT_TOKEN = "git-tok-5e4d3c"{secrets} }}
{app}
"#,
        data = data.display(),
        top = s.top,
        provider = s.provider,
        secrets = s.secrets,
        app = s.app,
    );
    start(ServeConfig::from_toml(&text, data, None).unwrap(), executor, Role::All).await.unwrap()
}

/// `repo` behind `git http-backend`, and `skiff serve` with the app fetching from it: the git
/// server, the data folder, the server and its base URL.
async fn over_http(repo: &Repo) -> (HttpGit, tempfile::TempDir, skiff_server::Server, String) {
    let server_git = http_git(repo.bare_root(), None, None);
    let data = tempfile::tempdir().unwrap();
    let app = format!("clone-url = \"http://127.0.0.1:{}/acme/web.git\"", server_git.port);
    let server = serve(data.path(), &app).await;
    let base = format!("http://{}", server.addr);
    (server_git, data, server, base)
}

fn sign(body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends a GitHub-signed webhook; the run's id.
async fn hook(base: &str, event: &str, body: Value) -> i64 {
    let bytes = serde_json::to_vec(&body).unwrap();
    static N: AtomicUsize = AtomicUsize::new(0);
    let resp = reqwest::Client::new()
        .post(format!("{base}/hooks/web"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", format!("d-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)))
        .header("x-hub-signature-256", sign(&bytes))
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, 202, "{v:#}");
    v["runs"][0]["id"].as_i64().unwrap()
}

fn push(sha: &str) -> Value {
    serde_json::json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": sha,
        "repository": {"full_name": "acme/web", "clone_url": "https://github.com/acme/web.git", "default_branch": "main"},
        "head_commit": {"id": sha, "modified": ["version.txt"]},
        "commits": [{"id": sha, "added": [], "removed": [], "modified": ["version.txt"]}],
        "sender": {"login": "dev"}
    })
}

/// Waits (up to 20 s) until `cond` holds.
pub(crate) async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the run to end; the run and its log as text.
pub(crate) async fn finished(base: &str, id: i64) -> (Value, String) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run: Value =
            http.get(format!("{base}/v1/runs/{id}")).bearer_auth(TOKEN_ALL).send().await.unwrap().json().await.unwrap();
        if !matches!(run["status"].as_str(), Some("queued" | "running")) {
            let log = http
                .get(format!("{base}/v1/runs/{id}/logs?format=text"))
                .bearer_auth(TOKEN_ALL)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            return (run, log);
        }
        assert!(Instant::now() < deadline, "run {id} did not end: {run:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_push_builds_the_pushed_commit_with_the_pipeline_of_that_commit() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let (server_git, _data, server, base) = over_http(&repo).await;

    let first = hook(&base, "push", push(&repo.commits[0])).await;
    let (run, log) = finished(&base, first).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert!(log.contains("built v1 with pipeline one"), "{log}");
    assert!(!log.contains("tok-9f8e7d"), "secrets are masked: {log}");
    assert_eq!(run["sha"], repo.commits[0]);

    let second = hook(&base, "push", push(&repo.commits[1])).await;
    let (run, log) = finished(&base, second).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert!(log.contains("built v2 with pipeline two"), "the second commit's pipeline and code: {log}");

    // The first commit again: its objects are in the host's cache, so nothing is fetched.
    let before = server_git.requests.load(Ordering::SeqCst);
    let again = hook(&base, "push", push(&repo.commits[0])).await;
    let (run, log) = finished(&base, again).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert!(log.contains("built v1 with pipeline one"), "{log}");
    assert_eq!(server_git.requests.load(Ordering::SeqCst), before, "a cached commit is not fetched again");
    server.halt();
}

fn pull_request(repo: &Repo, head_repo: &str) -> Value {
    serde_json::json!({
        "action": "opened", "number": 1,
        "pull_request": {"number": 1, "title": "PR", "head": {"ref": "feature", "sha": repo.pr_head,
            "repo": {"full_name": head_repo}},
            "base": {"ref": "main", "sha": repo.commits[1], "repo": {"full_name": "acme/web"}},
            "html_url": "https://github.com/acme/web/pull/1"},
        "repository": {"full_name": "acme/web"}, "sender": {"login": "dev"}
    })
}

#[tokio::test]
async fn a_pull_request_builds_its_head_over_git_daemon_and_a_fork_s_sees_no_secret() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let daemon = git_daemon(&repo.bare_root());
    let data = tempfile::tempdir().unwrap();
    let app = format!("clone-url = \"git://127.0.0.1:{}/acme/web.git\"", daemon.port);
    let server = serve(data.path(), &app).await;
    let base = format!("http://{}", server.addr);
    let id = hook(&base, "pull_request", pull_request(&repo, "acme/web")).await;
    let (run, log) = finished(&base, id).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert!(log.contains("built pr with pipeline two secret=[***]"), "a branch of the repository itself: {log}");
    // Shallow by default: one commit of history (`fetch-depth = 1`).
    assert!(log.contains("commits=1"), "{log}");

    let id = hook(&base, "pull_request", pull_request(&repo, "mallory/web")).await;
    let (run, log) = finished(&base, id).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert!(log.contains("built pr with pipeline two secret=[]"), "a fork's pull request gets no secret: {log}");
    server.halt();
}

/// A forge's API on 127.0.0.1 recording every request whole (GitLab's token is in
/// `PRIVATE-TOKEN`, not `Authorization`), answering 201.
pub(crate) fn forge_api() -> (u16, Arc<Mutex<Vec<Req>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let Ok(req) = read_request(&mut reader) else { continue };
            log.lock().unwrap().push(req);
            let _ = stream.write_all(
                b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
            );
        }
    });
    (port, seen)
}

#[tokio::test]
async fn statuses_reach_the_forge_in_order_and_a_run_that_cannot_build_is_an_error() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let server_git = http_git(repo.bare_root(), None, None);
    let (api, seen) = forge_api();
    let data = tempfile::tempdir().unwrap();
    let app = format!(
        "clone-url = \"http://127.0.0.1:{}/acme/web.git\"\nstatus-token = \"GIT_TOKEN\"\napi-url = \"http://127.0.0.1:{api}\"",
        server_git.port
    );
    let top = "public-url = \"https://ci.example.com/\"";
    let server = serve_app(data.path(), Serve { app: &app, top, ..Serve::default() }).await;
    let base = format!("http://{}", server.addr);
    let id = hook(&base, "push", push(&repo.commits[1])).await;
    let (run, log) = finished(&base, id).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    eventually("three statuses", || seen.lock().unwrap().len() >= 3).await;
    server.shared.statuses.flush().await;
    // The forge is down for the next one: its fetch fails, and the status says it could not build.
    server_git.down.store(true, Ordering::SeqCst);
    let failed = hook(&base, "push", push(&repo.commits[0])).await;
    let (run, _) = finished(&base, failed).await;
    assert_eq!(run["status"], "failure", "{run:#}");
    eventually("five statuses", || seen.lock().unwrap().len() >= 5).await;
    server.shared.statuses.flush().await;

    let seen = seen.lock().unwrap().clone();
    let states: Vec<String> =
        seen.iter().map(|r| format!("{} {}", r.target, r.json()["state"].as_str().unwrap_or(""))).collect();
    let (one, zero) = (
        format!("/repos/acme/web/statuses/{}", repo.commits[1]),
        format!("/repos/acme/web/statuses/{}", repo.commits[0]),
    );
    let want = [(&one, "pending"), (&one, "pending"), (&one, "success"), (&zero, "pending"), (&zero, "error")];
    assert_eq!(states, want.map(|(p, st)| format!("{p} {st}")), "{seen:#?}");
    assert!(
        seen.iter()
            .all(|r| r.header("authorization") == Some("Bearer git-tok-5e4d3c") && r.json()["context"] == "skiff/web"),
        "{seen:#?}"
    );
    assert!(seen[4].json()["description"].as_str().unwrap_or("").contains("could not be fetched"), "{seen:#?}");
    assert_eq!(seen[0].json()["target_url"], format!("https://ci.example.com/v1/runs/{id}"), "a link to the run");
    server.halt();
}

#[tokio::test]
async fn https_with_the_app_s_ca_and_a_token_that_never_shows() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let (tls, ca_pem) = tls_config();
    use base64::Engine as _;
    let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("x-access-token:git-tok-5e4d3c"));
    let server_git = http_git(repo.bare_root(), Some(want.clone()), Some(tls));
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("ca.pem"), &ca_pem).unwrap();
    let app = format!(
        "clone-url = \"https://127.0.0.1:{}/acme/web.git\"\nclone-credential = \"GIT_TOKEN\"\nca-file = \"ca.pem\"",
        server_git.port
    );
    let server = serve(data.path(), &app).await;
    let base = format!("http://{}", server.addr);
    let id = hook(&base, "push", push(&repo.commits[1])).await;
    let (run, log) = finished(&base, id).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert!(log.contains("built v2 with pipeline two"), "{log}");
    assert!(server_git.auth_seen.lock().unwrap().iter().all(|a| *a == want), "every request carried the token");
    // The token is nowhere a user or a step could see it.
    let ws_config = data.path().join("work").join(id.to_string()).join(".git/config");
    let everything = format!("{run}{log}{}", std::fs::read_to_string(ws_config).unwrap_or_default());
    assert!(!everything.contains("git-tok-5e4d3c") && !everything.contains("eC1hY2Nlc3MtdG9rZW46"), "{everything}");

    // Without the app's CA the forge's certificate is refused, and the run says so.
    let data2 = tempfile::tempdir().unwrap();
    let app =
        format!("clone-url = \"https://127.0.0.1:{}/acme/web.git\"\nclone-credential = \"GIT_TOKEN\"", server_git.port);
    let server2 = serve(data2.path(), &app).await;
    let base2 = format!("http://{}", server2.addr);
    let id = hook(&base2, "push", push(&repo.commits[1])).await;
    let (run, _) = finished(&base2, id).await;
    let error = run["error"].as_str().unwrap_or_default();
    assert_eq!(run["status"], "failure", "{run:#}");
    assert!(error.contains("could not be fetched") && error.contains("certificate"), "{error}");
    assert!(!error.contains("git-tok-5e4d3c"), "{error}");
    server.halt();
    server2.halt();
}

#[tokio::test]
async fn a_fetch_from_a_forge_that_is_down_fails_the_run_clearly_and_the_next_run_works() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let (server_git, _data, server, base) = over_http(&repo).await;

    server_git.down.store(true, Ordering::SeqCst);
    let id = hook(&base, "push", push(&repo.commits[0])).await;
    let (run, log) = finished(&base, id).await;
    assert_eq!(run["status"], "failure", "{run:#}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(error.contains("could not be fetched") && error.contains("503"), "{error}");
    assert!(!log.contains("built"), "no step ran: {log}");
    assert!(run["jobs"].as_array().is_none_or(|j| j.is_empty()), "{run:#}");

    server_git.down.store(false, Ordering::SeqCst);
    let id = hook(&base, "push", push(&repo.commits[0])).await;
    let (run, log) = finished(&base, id).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    server.halt();
}

#[tokio::test]
async fn a_pushed_pipeline_cannot_use_components_outside_its_repository() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let work = repo.root.path().join("work");
    git(&work, &["checkout", "-q", "main"]);
    std::fs::write(work.join(".skiff/pipeline.yaml"), "steps:\n  - uses: ./evil/outside.wasm\n").unwrap();
    std::fs::create_dir_all(work.join(".skiff/evil")).unwrap();
    // A symlink to a component outside the repository.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("outside.wasm"), b"\0asm").unwrap();
    std::os::unix::fs::symlink(outside.path().join("outside.wasm"), work.join(".skiff/evil/outside.wasm")).unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "evil"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);
    let bare = repo.root.path().join("acme/web.git");
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);

    let (_git, _data, server, base) = over_http(&repo).await;
    let id = hook(&base, "push", push(&sha)).await;
    let (run, _) = finished(&base, id).await;
    assert_eq!(run["status"], "failure", "{run:#}");
    assert!(run["error"].as_str().unwrap_or_default().contains("outside the repository"), "{run:#}");
    server.halt();
}

#[tokio::test]
async fn a_pipeline_whose_on_does_not_take_the_push_gives_a_skipped_run_with_the_reason() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let work = repo.root.path().join("work");
    git(&work, &["checkout", "-q", "main"]);
    let pipeline = "on:\n  push:\n    branches: [release/*]\nsteps:\n  - run: echo should not run\n";
    std::fs::write(work.join(".skiff/pipeline.yaml"), pipeline).unwrap();
    git(&work, &["commit", "-q", "-am", "release only"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["push", "-q", repo.root.path().join("acme/web.git").to_str().unwrap(), "main"]);

    let (_git, _data, server, base) = over_http(&repo).await;
    let id = hook(&base, "push", push(&sha)).await;
    let (run, log) = finished(&base, id).await;
    assert_eq!(run["status"], "skipped", "{run:#}\n{log}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(error.contains("`on:` does not take this event") && error.contains("release/*"), "{error}");
    assert!(!log.contains("should not run"), "{log}");
    server.halt();
}

#[tokio::test]
async fn manual_runs_are_checked_against_workflow_dispatch_and_get_its_defaults() {
    if !crate::sandbox::available() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let app = r#"fetch = false
pipeline-yaml = """
on:
  workflow_dispatch:
    inputs:
      target: { type: choice, options: [staging, production], default: staging }
      replicas: { type: number, required: true }
steps:
  - run: echo "deploying to ${{ inputs.target }} with ${{ inputs.replicas }} replicas"
""""#;
    let server = serve(data.path(), app).await;
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let create = |inputs: Value| {
        http.post(format!("{base}/v1/apps/web/runs"))
            .bearer_auth(TOKEN_ALL)
            .json(&serde_json::json!({ "inputs": inputs }))
            .send()
    };
    for (inputs, why) in [
        (serde_json::json!({}), "input `replicas` is required"),
        (serde_json::json!({"replicas": "three"}), "input `replicas` is a number"),
        (serde_json::json!({"replicas": "3", "target": "moon"}), "`moon` is not among them"),
        (serde_json::json!({"replicas": "3", "colour": "red"}), "input `colour` is not declared"),
    ] {
        let resp = create(inputs).await.unwrap();
        assert_eq!(resp.status(), 400);
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().unwrap_or_default().contains(why), "{body:#} should say {why}");
    }
    let resp = create(serde_json::json!({"replicas": "3"})).await.unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let (run, log) = finished(&base, id).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert_eq!(run["inputs"], serde_json::json!({"replicas": "3", "target": "staging"}));
    assert!(log.contains("deploying to staging with 3 replicas"), "{log}");
    server.halt();
}

#[tokio::test]
async fn each_job_gets_its_own_checkout_of_the_commit() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let work = repo.root.path().join("work");
    git(&work, &["checkout", "-q", "main"]);
    let pipeline = r#"jobs:
  build:
    steps:
      - run: echo "build sees $(cat version.txt)" && echo scribbled > version.txt && touch build-only
  test:
    needs: build
    steps:
      - run: echo "test sees $(cat version.txt) build-only=$(ls build-only 2>/dev/null || echo absent) head=$(git rev-parse HEAD)"
"#;
    std::fs::write(work.join(".skiff/pipeline.yaml"), pipeline).unwrap();
    git(&work, &["commit", "-q", "-am", "two jobs"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["push", "-q", repo.root.path().join("acme/web.git").to_str().unwrap(), "main"]);

    let (_git, _data, server, base) = over_http(&repo).await;
    let id = hook(&base, "push", push(&sha)).await;
    let (run, log) = finished(&base, id).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert!(log.contains("build sees v2"), "{log}");
    assert!(log.contains(&format!("test sees v2 build-only=absent head={sha}")), "{log}");
    // The console draws the run's graph from the pipeline of its commit (read again from the
    // repository cache once the run is over): `test` needs `build`.
    let page = crate::support::Console::sign_in(&base, TOKEN_ALL).await.get(&format!("/runs/{id}")).await;
    assert!(page.contains(r##"<a href="#job-build">build</a>"##), "{page}");
    server.halt();
}

#[tokio::test]
async fn a_run_from_the_spare_checkout_has_exactly_its_commit_s_files() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let work = repo.root.path().join("work");
    git(&work, &["checkout", "-q", "main"]);
    git(&work, &["rm", "-q", "version.txt"]);
    std::fs::write(work.join("new.txt"), "fresh").unwrap();
    let pipeline =
        "steps:\n  - run: |\n      test ! -e version.txt && echo \"only $(cat new.txt) files: $(ls | tr '\\n' ' ')\"\n";
    std::fs::write(work.join(".skiff/pipeline.yaml"), pipeline).unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "moved"]);
    let moved = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["push", "-q", repo.root.path().join("acme/web.git").to_str().unwrap(), "main"]);

    let (_git, data, server, base) = over_http(&repo).await;
    let (run, log) = finished(&base, hook(&base, "push", push(&repo.commits[0])).await).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    // The host makes a spare checkout (of the first commit) for the next run, beside the cache.
    let deadline = Instant::now() + Duration::from_secs(20);
    let spare = || {
        std::fs::read_dir(data.path().join("repos"))
            .unwrap()
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "spare"))
    };
    while !spare() {
        assert!(Instant::now() < deadline, "no spare checkout was made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (run, log) = finished(&base, hook(&base, "push", push(&moved)).await).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert!(log.contains("only fresh files: new.txt "), "the spare moved to the commit, nothing left over: {log}");
    server.halt();
}

#[tokio::test]
async fn every_file_in_skiff_pipelines_is_a_run_of_its_own() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let work = repo.root.path().join("work");
    git(&work, &["checkout", "-q", "main"]);
    git(&work, &["rm", "-q", ".skiff/pipeline.yaml"]);
    std::fs::create_dir_all(work.join(".skiff/pipelines")).unwrap();
    std::fs::write(work.join(".skiff/pipelines/build.yaml"), "steps:\n  - run: echo building $(cat version.txt)\n")
        .unwrap();
    std::fs::write(work.join(".skiff/pipelines/lint.yml"), "steps:\n  - run: echo linting $(cat version.txt)\n")
        .unwrap();
    std::fs::write(work.join(".skiff/pipelines/README.md"), "not a pipeline").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "two pipelines"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["push", "-q", repo.root.path().join("acme/web.git").to_str().unwrap(), "main"]);

    let (_git, _data, server, base) = over_http(&repo).await;
    let first = hook(&base, "push", push(&sha)).await;
    let (run, log) = finished(&base, first).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert_eq!(run["pipeline"], ".skiff/pipelines/build.yaml");
    assert!(log.contains("building v2"), "{log}");
    // The other file's run was queued beside it, for the same commit.
    let (sibling, log) = finished(&base, first + 1).await;
    assert_eq!(sibling["status"], "success", "{sibling:#}\n{log}");
    assert_eq!(
        (sibling["pipeline"].as_str(), sibling["sha"].as_str()),
        (Some(".skiff/pipelines/lint.yml"), Some(sha.as_str()))
    );
    assert!(log.contains("linting v2"), "{log}");
    let all: Value = reqwest::Client::new()
        .get(format!("{base}/v1/runs"))
        .bearer_auth(TOKEN_ALL)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = all.as_array().or_else(|| all["runs"].as_array()).map(|a| a.len()).unwrap_or(0);
    assert_eq!(listed, 2, "one run per pipeline file, no more: {all:#}");
    server.halt();
}

/// As on GitHub: running the failed jobs again runs only the failed combinations of a matrix
/// and the jobs downstream of them; the rest is carried over with its outputs.
#[tokio::test]
async fn a_rerun_of_failed_jobs_runs_the_failed_cells_and_their_dependents_only() {
    if !crate::sandbox::available() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let app = r#"fetch = false
pipeline-yaml = """
jobs:
  version:
    outputs:
      v: ${{ steps.v.outputs.v }}
    steps:
      - id: v
        run: echo "v=1.2.${{ run.attempt }}" >> "$SKIFF_OUTPUT"
  build:
    needs: version
    strategy:
      fail-fast: false
      matrix:
        n: [1, 2, 3]
    steps:
      - run: echo "build ${{ matrix.n }} attempt ${{ run.attempt }}" && test "${{ matrix.n }}-${{ run.attempt }}" != "2-1"
  deploy:
    needs: [version, build]
    steps:
      - run: echo "deploy ${{ needs.version.outputs.v }} attempt ${{ run.attempt }}"
  docs:
    steps:
      - run: echo "docs attempt ${{ run.attempt }}"
""""#;
    let server = serve(data.path(), app).await;
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let post = |path: String, body: Value| http.post(format!("{base}{path}")).bearer_auth(TOKEN_ALL).json(&body).send();
    let first = post("/v1/apps/web/runs".into(), serde_json::json!({})).await.unwrap();
    let first = first.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let (run, log) = finished(&base, first).await;
    assert_eq!(run["status"], "failure", "{run:#}\n{log}");
    assert!(log.contains("build 2 attempt 1") && !log.contains("deploy"), "{log}");

    let again = post(format!("/v1/runs/{first}/rerun"), serde_json::json!({"failed_only": true})).await.unwrap();
    assert_eq!(again.status(), 202);
    let again = again.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let (run, log) = finished(&base, again).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert_eq!(run["attempt"], 2);
    // Ran again: the failed cell and the job downstream of it, which sees the carried-over output.
    assert!(log.contains("build 2 attempt 2"), "{log}");
    assert!(log.contains("deploy 1.2.1 attempt 2"), "the first attempt's output reaches it: {log}");
    // Carried over: the cells that passed, the job they needed and the independent job.
    for not_again in ["build 1 attempt 2", "build 3 attempt 2", "docs attempt 2"] {
        assert!(!log.contains(not_again), "{not_again} ran again: {log}");
    }
    let jobs = run["jobs"].as_array().unwrap();
    let status_of = |key: &str| jobs.iter().find(|j| j["key"] == key).map(|j| j["status"].clone());
    for key in ["version", "build-1", "build-2", "build-3", "deploy", "docs"] {
        assert_eq!(status_of(key), Some(Value::from("success")), "{key}: {run:#}");
    }
    let version = jobs.iter().find(|j| j["key"] == "version").unwrap();
    assert_eq!(version["outputs"]["v"], "1.2.1", "{version:#}");
    server.halt();
}

#[tokio::test]
async fn submodules_are_checked_out_on_request_from_the_same_host() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let root = repo.root.path();
    // A second repository on the same server, used as a submodule by a relative URL.
    let lib = root.join("libwork");
    std::fs::create_dir_all(&lib).unwrap();
    git(&lib, &["init", "-q", "-b", "main"]);
    std::fs::write(lib.join("lib.txt"), "from the submodule").unwrap();
    git(&lib, &["add", "."]);
    git(&lib, &["commit", "-q", "-m", "lib"]);
    git(root, &["clone", "-q", "--bare", lib.to_str().unwrap(), root.join("acme/lib.git").to_str().unwrap()]);
    let work = root.join("work");
    git(&work, &["checkout", "-q", "main"]);
    git(
        &work,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            root.join("acme/lib.git").to_str().unwrap(),
            "vendor/lib",
        ],
    );
    // As a forge would hold it: relative to the repository's own URL.
    git(&work, &["config", "-f", ".gitmodules", "submodule.vendor/lib.url", "../lib.git"]);
    std::fs::write(work.join(".skiff/pipeline.yaml"), "steps:\n  - run: cat vendor/lib/lib.txt\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "with a submodule"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["push", "-q", root.join("acme/web.git").to_str().unwrap(), "main"]);

    let server_git = http_git(repo.bare_root(), None, None);
    let data = tempfile::tempdir().unwrap();
    let app = format!("clone-url = \"http://127.0.0.1:{}/acme/web.git\"\nsubmodules = true", server_git.port);
    let server = serve(data.path(), &app).await;
    let base = format!("http://{}", server.addr);
    let (run, log) = finished(&base, hook(&base, "push", push(&sha)).await).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert!(log.contains("from the submodule"), "{log}");
    server.halt();
}

/// `sshd` on 127.0.0.1 with a host key and one authorized key of the test's own, serving
/// repositories over SSH as git does (`git-upload-pack` through the user's shell); killed when
/// dropped.
struct Sshd {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sshd(client_public_key: &str) -> Sshd {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keygen = |path: &Path| {
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path)
            .status()
            .expect("ssh-keygen (openssh-client) is installed");
        assert!(ok.success());
    };
    keygen(&d.join("host_key"));
    std::fs::write(d.join("authorized_keys"), client_public_key).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\nAuthorizedKeysFile {dir}/authorized_keys\n\
         PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         StrictModes no\nUsePAM no\nPidFile {dir}/sshd.pid\n",
        dir = d.display()
    );
    std::fs::write(d.join("sshd_config"), config).unwrap();
    let _ = std::fs::create_dir_all("/run/sshd");
    let child = std::process::Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sshd (openssh-server; scripts/setup.sh installs it) is installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd did not start on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Sshd { port, child, _dir: dir }
}

#[tokio::test]
async fn a_deploy_key_fetches_over_ssh_and_shows_nowhere() {
    if !crate::sandbox::available() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("deploy");
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "skiff-deploy", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (openssh-client) is installed");
    assert!(ok.success());
    let private = std::fs::read_to_string(&key).unwrap();
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let server_ssh = sshd(&public);
    let repo = Repo::new();
    let user = String::from_utf8(std::process::Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let url = format!("ssh://{}@127.0.0.1:{}{}/acme/web.git", user.trim(), server_ssh.port, repo.bare_root().display());
    let data = tempfile::tempdir().unwrap();
    let app = format!("clone-url = \"{url}\"\nclone-credential = \"DEPLOY_KEY\"");
    let secret = format!(", DEPLOY_KEY = \"{}\"", private.replace('\n', "\\n"));
    let server = serve_with_secrets(data.path(), &app, &secret).await;
    let base = format!("http://{}", server.addr);
    let id = hook(&base, "push", push(&repo.commits[1])).await;
    let (run, log) = finished(&base, id).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert!(log.contains("built v2 with pipeline two"), "{log}");
    // The key file was removed after the fetch, and no part of the key is anywhere visible.
    let body = private.lines().nth(1).unwrap_or_default().to_string();
    let everything = format!("{run}{log}");
    assert!(!everything.contains(&body), "{everything}");
    let leftovers: Vec<_> =
        walkdir_files(&data.path().join("repos")).into_iter().filter(|p| p.ends_with("skiff-deploy-key")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    server.halt();
}

fn walkdir_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() { todo.push(p) } else { out.push(p) }
        }
    }
    out
}

#[tokio::test]
async fn a_pull_request_can_build_the_forge_s_test_merge_and_history_can_be_whole() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let server_git = http_git(repo.bare_root(), None, None);
    let data = tempfile::tempdir().unwrap();
    let app = format!(
        "clone-url = \"http://127.0.0.1:{}/acme/web.git\"\npull-request-ref = \"merge\"\nfetch-depth = 0",
        server_git.port
    );
    let server = serve(data.path(), &app).await;
    let base = format!("http://{}", server.addr);
    let (run, log) = finished(&base, hook(&base, "pull_request", pull_request(&repo, "acme/web")).await).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert!(log.contains("built pr with pipeline two"), "{log}");
    // The merge commit, not the head, is the run's commit; with `fetch-depth = 0` its whole
    // history is there (two commits on main, the pull request's, the merge).
    assert_eq!(run["sha"], repo.pr_merge, "{run:#}");
    assert!(log.contains("commits=4"), "{log}");
    server.halt();
}

#[tokio::test]
async fn a_manual_run_of_a_repository_is_checked_against_its_commit_s_workflow_dispatch() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let work = repo.root.path().join("work");
    git(&work, &["checkout", "-q", "main"]);
    let pipeline = "on:\n  workflow_dispatch:\n    inputs:\n      level: { type: choice, options: [low, high], default: low }\nsteps:\n  - run: echo \"level ${{ inputs.level }} at $(cat version.txt)\"\n";
    std::fs::write(work.join(".skiff/pipeline.yaml"), pipeline).unwrap();
    git(&work, &["commit", "-q", "-am", "dispatchable"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["push", "-q", repo.root.path().join("acme/web.git").to_str().unwrap(), "main"]);

    let (_git, _data, server, base) = over_http(&repo).await;
    let http = reqwest::Client::new();
    let create = |body: Value| http.post(format!("{base}/v1/apps/web/runs")).bearer_auth(TOKEN_ALL).json(&body).send();
    let refused = create(serde_json::json!({"ref": "main", "inputs": {"level": "extreme"}})).await.unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap_or_default().contains("`extreme` is not among them"), "{body:#}");
    let ok = create(serde_json::json!({"ref": "main"})).await.unwrap();
    assert_eq!(ok.status(), 202);
    let id = ok.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let (run, log) = finished(&base, id).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert_eq!(run["sha"], sha, "the branch's head when the run was asked for");
    assert!(log.contains("level low at v2"), "{log}");
    server.halt();
}
