//! The edge master's real artifacts, each in a real runtime, in front of a real
//! `skiff serve`: the Cloudflare Worker under `wrangler dev` (workerd), and the
//! Spin component under `skiff edge up` (Skiff's wasmtime, `wasi:http@0.3`).
//! They need the tools `scripts/setup.sh --edge` installs and the artifacts
//! `scripts/build-edge.sh` builds; `scripts/test.sh` does both and turns on the
//! `edge-tests` feature.

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::serve::{DISPATCH_KEY, ServeProcess, WEBHOOK_SECRET, push_body};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The Spin component `scripts/build-edge.sh` builds.
fn spin_wasm() -> PathBuf {
    repo().join("target/edge-spin/wasm32-wasip2/release/skiff_edge_spin.wasm")
}

/// The hostile Spin component `scripts/test.sh` builds from host/test-guests/spin-hostile.
fn spin_hostile_wasm() -> PathBuf {
    repo().join("target/edge-spin/wasm32-wasip2/release/skiff_test_spin_hostile.wasm")
}

fn need(path: &Path) -> &Path {
    assert!(path.exists(), "{} is missing: run scripts/setup.sh --edge and scripts/build-edge.sh", path.display());
    path
}

/// A master process in its own process group, so workerd and friends go with it.
struct Master {
    base: String,
    child: Child,
    stderr: PathBuf,
}

impl Master {
    fn spawn(mut cmd: Command, stderr: PathBuf) -> Child {
        cmd.process_group(0).stderr(std::fs::File::create(&stderr).unwrap());
        cmd.spawn().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `GET path` on the master; the request goes out when the future is first polled.
    fn get(&self, path: &str) -> impl Future<Output = reqwest::Result<reqwest::Response>> + use<> {
        reqwest::Client::new().get(format!("{}{path}", self.base)).send()
    }

    async fn wait_healthy(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = self.get("/healthz").await
                && r.status() == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the master exited ({status}) before it served:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "the master did not answer /healthz in {within:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// `body` as a GitHub push delivery, signed with the test webhook secret, posted to the master for app `web`.
async fn post_signed(master: &str, delivery: &str, body: Vec<u8>) -> reqwest::Response {
    post_signed_to(master, "web", delivery, body).await
}

async fn post_signed_to(master: &str, app: &str, delivery: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{master}/hooks/{app}"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", skiff_edge_core::github_signature(WEBHOOK_SECRET.as_bytes(), &body))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A signed GitHub push to `main`; the status and JSON answer.
async fn push(master: &str, delivery: &str) -> (u16, Value) {
    let resp = post_signed(master, delivery, push_body("main", delivery)).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Waits until the host has run the dispatch of `delivery` to app `web` to success.
async fn wait_for_run(host: &ServeProcess, delivery: &str) -> Value {
    wait_for_run_of(host, "web", delivery).await
}

async fn wait_for_run_of(host: &ServeProcess, app: &str, delivery: &str) -> Value {
    let id = format!("{delivery}:{app}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = host.runs().await;
        if let Some(run) = runs.iter().find(|r| r["dispatch_id"] == id.as_str()) {
            if run["status"] == "success" {
                return run.clone();
            }
            assert!(run["status"] != "failure", "{run:#}");
        }
        assert!(Instant::now() < deadline, "no successful run for {id}: {runs:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What both masters must do: dispatch a signed push that the host runs, answer
/// a redelivery from their own store without calling the host, and answer 502
/// (so the Git host redelivers) when the host is down.
async fn dispatches_dedupes_and_reports_a_down_host(master: &Master, host: &mut ServeProcess, tag: &str) {
    let (status, body) = push(&master.base, &format!("{tag}-1")).await;
    assert_eq!(status, 202, "{body:#}\n{}", master.log());
    assert_eq!(body["decisions"][0]["decision"], "dispatch", "{body:#}");
    let run = wait_for_run(host, &format!("{tag}-1")).await;
    assert_eq!(run["trigger"], "push");
    assert_eq!(run["ref"], "refs/heads/main");

    let (status, body) = push(&master.base, &format!("{tag}-other")).await;
    assert_eq!(status, 202, "{body:#}");
    wait_for_run(host, &format!("{tag}-other")).await;

    // A forged signature never reaches the host.
    let forged = reqwest::Client::new()
        .post(format!("{}/hooks/web", master.base))
        .header("x-github-event", "push")
        .header("x-github-delivery", "forged")
        .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
        .body(push_body("main", "forged"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let unknown = reqwest::Client::new().post(format!("{}/hooks/nope", master.base)).body("{}").send().await.unwrap();
    assert_eq!(unknown.status(), 404, "an app that is not configured is the sender's mistake");
    // Bodies over the core's 1 MiB limit are refused before they are verified or parsed.
    let huge = reqwest::Client::new()
        .post(format!("{}/hooks/web", master.base))
        .header("x-github-event", "push")
        .body(vec![b' '; (1 << 20) + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    // A genuine delivery whose body is not the event it claims: 400, nothing dispatched.
    let bad = post_signed(&master.base, "junk", b"[1, 2, 3]".to_vec()).await;
    assert_eq!(bad.status(), 400);

    host.kill();
    // The same delivery again: deduplicated in the master's store, so the host is not needed.
    let (status, body) = push(&master.base, &format!("{tag}-1")).await;
    assert_eq!(status, 202, "a redelivery is answered from the master's store: {body:#}\n{}", master.log());
    // A new delivery while the host is down: 502, so the Git host tries again later.
    let (status, body) = push(&master.base, &format!("{tag}-2")).await;
    assert_eq!(status, 502, "{body:#}");
    assert!(body["failures"][0].as_str().unwrap().contains(&format!("{tag}-2:web")), "{body:#}");
    // The redelivery after the host is back goes through, once.
    host.restart().await;
    let (status, _) = push(&master.base, &format!("{tag}-2")).await;
    assert_eq!(status, 202);
    wait_for_run(host, &format!("{tag}-2")).await;
    let runs = host.runs().await;
    assert_eq!(runs.iter().filter(|r| r["dispatch_id"] == format!("{tag}-1:web").as_str()).count(), 1);
    assert_eq!(runs.len(), 3, "{runs:#?}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

const APPS: &str = r#"[{"name": "web", "on": {"push": {"branches": ["main"]}}}]"#;

/// The edge master on `skiff edge up` with the test's variables; returns once it serves.
async fn spin_up(manifest: &Path, host: &str, dir: &Path) -> Master {
    let mut cmd = edge_up(manifest);
    cmd.arg("--key-value-file").arg(dir.join("kv.db"));
    for (k, v) in [("host_url", host), ("apps", APPS), ("webhook_secret", WEBHOOK_SECRET)] {
        cmd.arg("--variable").arg(format!("{k}={v}"));
    }
    // Secrets may come from the environment, as with `spin up`.
    cmd.env("SPIN_VARIABLE_DISPATCH_KEY", DISPATCH_KEY);
    serving(cmd, dir).await
}

/// `skiff edge up` on `manifest`, on a free port.
fn edge_up(manifest: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.args(["edge", "up", "--listen", "127.0.0.1:0", "-f"]).arg(manifest);
    cmd
}

/// Starts `skiff edge up` and returns once it answers `/healthz`.
async fn serving(mut cmd: Command, dir: &Path) -> Master {
    cmd.stdout(Stdio::piped());
    let mut child = Master::spawn(cmd, dir.join("edge.stderr"));
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let base = first
        .split_once(" on ")
        .map(|(_, url)| url.trim().to_string())
        .unwrap_or_else(|| panic!("`skiff edge up` printed `{first}` instead of its address"));
    std::thread::spawn(move || lines.for_each(drop));
    let mut master = Master { base, child, stderr: dir.join("edge.stderr") };
    master.wait_healthy(Duration::from_secs(120)).await;
    master
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "edge-tests"),
    ignore = "needs scripts/setup.sh --edge, scripts/build-edge.sh, --features edge-tests"
)]
async fn spin_component_in_skiffs_wasi_http_host_dispatches_to_skiff_serve() {
    let manifest = repo().join("edge-master/spin/spin.toml");
    need(&spin_wasm());
    let dir = tempfile::tempdir().unwrap();
    let mut host = ServeProcess::start(&dir.path().join("host"), "").await;
    let master = spin_up(&manifest, &host.base, dir.path()).await;
    dispatches_dedupes_and_reports_a_down_host(&master, &mut host, "spin").await;
}

/// `allowed_outbound_hosts` is enforced: a manifest that names another host
/// cannot reach the Skiff host, and the Git host is told to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "edge-tests"),
    ignore = "needs scripts/setup.sh --edge, scripts/build-edge.sh, --features edge-tests"
)]
async fn spin_component_reaches_only_its_allowed_outbound_hosts() {
    let wasm = spin_wasm();
    need(&wasm);
    let dir = tempfile::tempdir().unwrap();
    let host = ServeProcess::start(&dir.path().join("host"), "").await;
    let text = std::fs::read_to_string(repo().join("edge-master/spin/spin.toml"))
        .unwrap()
        .replace("allowed_outbound_hosts = [\"{{ host_url }}\"]", "allowed_outbound_hosts = [\"http://127.0.0.1:9\"]")
        .replace("../../target/edge-spin/wasm32-wasip2/release/skiff_edge_spin.wasm", wasm.to_str().unwrap());
    let manifest = dir.path().join("spin.toml");
    std::fs::write(&manifest, text).unwrap();
    let master = spin_up(&manifest, &host.base, dir.path()).await;
    let (status, body) = push(&master.base, "denied-1").await;
    assert_eq!(status, 502, "{body:#}");
    assert!(master.log().contains("denied outbound HTTP"), "{}", master.log());
    assert!(host.runs().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "edge-tests"),
    ignore = "needs scripts/setup.sh --edge, scripts/build-edge.sh, --features edge-tests"
)]
async fn cloudflare_worker_under_wrangler_dev_dispatches_to_skiff_serve() {
    let worker = repo().join("edge-master/cloudflare");
    let wrangler = need(&worker.join("node_modules/.bin/wrangler")).to_path_buf();
    need(&worker.join("build/worker/shim.mjs"));
    let dir = tempfile::tempdir().unwrap();
    let mut host = ServeProcess::start(&dir.path().join("host"), "").await;
    // Apps held in KV win over SKIFF_APPS: `other` is only in KV.
    let kv_apps = r#"[{"name": "web", "on": {"push": {"branches": ["main"]}}}, {"name": "other", "on": {"push": {}}}]"#;
    let put = Command::new(&wrangler)
        .current_dir(&worker)
        .args(["kv", "key", "put", "apps", kv_apps, "--binding", "SKIFF_CONFIG", "--local", "--persist-to"])
        .arg(dir.path().join("wrangler-state"))
        .env("CI", "1")
        .env("WRANGLER_SEND_METRICS", "false")
        .output()
        .unwrap();
    assert!(put.status.success(), "wrangler kv key put: {}", String::from_utf8_lossy(&put.stderr));
    let port = free_port();
    let mut cmd = Command::new(wrangler);
    cmd.current_dir(&worker)
        .args(["dev", "--ip", "127.0.0.1", "--port", &port.to_string(), "--persist-to"])
        .arg(dir.path().join("wrangler-state"))
        .arg("--var")
        .arg(format!("SKIFF_HOST_URL:{}", host.base))
        .arg("--var")
        .arg(format!("SKIFF_APPS:{APPS}"))
        // Secrets are plain bindings under `wrangler dev`; deployed, they come from `wrangler secret put`.
        .arg("--var")
        .arg(format!("SKIFF_DISPATCH_KEY:{DISPATCH_KEY}"))
        .arg("--var")
        .arg(format!("SKIFF_WEBHOOK_SECRET:{WEBHOOK_SECRET}"))
        .env("CI", "1")
        .env("WRANGLER_SEND_METRICS", "false")
        .stdout(Stdio::null());
    let child = Master::spawn(cmd, dir.path().join("wrangler.stderr"));
    let mut master =
        Master { base: format!("http://127.0.0.1:{port}"), child, stderr: dir.path().join("wrangler.stderr") };
    // wrangler runs build.sh first (a no-op rebuild when the artifacts are current).
    master.wait_healthy(Duration::from_secs(300)).await;
    dispatches_dedupes_and_reports_a_down_host(&master, &mut host, "cf").await;

    let resp = post_signed_to(&master.base, "other", "cf-kv", push_body("dev", "cf-kv")).await;
    assert_eq!(resp.status(), 202, "{}", master.log());
    wait_for_run_of(&host, "other", "cf-kv").await;
}

/// Mistakes in starting `skiff edge up` are explained before anything is served.
#[test]
fn edge_up_says_which_variables_are_missing() {
    let manifest = repo().join("edge-master/spin/spin.toml");
    let out = edge_up(&manifest)
        .args(["--key-value-file", ":memory:", "--variable", "apps=[]", "--variable", "colour=blue"])
        .env_remove("SPIN_VARIABLE_HOST_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`colour` is not declared"), "{err}");

    let out = edge_up(&manifest).args(["--key-value-file", ":memory:", "--variable", "apps=[]"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("required variables are not set: dispatch_key, host_url, webhook_secret"), "{err}");
    assert!(err.contains("SPIN_VARIABLE_HOST_URL"), "{err}");
}

/// `skiff edge up` serving the hostile component, with a 2 s request timeout and `extra` flags.
async fn hostile_edge_up(extra: &[&str], dir: &Path) -> Master {
    need(&spin_hostile_wasm());
    let mut cmd = edge_up(&repo().join("host/test-guests/spin-hostile/spin.toml"));
    cmd.args(["--key-value-file", ":memory:", "--request-timeout", "2s"]).args(extra);
    serving(cmd, dir).await
}

/// A component that spins, hoards memory, panics, floods its response or pokes at
/// the sandbox gets an error for that request alone; the host serves the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "edge-tests"),
    ignore = "needs scripts/setup.sh --edge, scripts/test.sh's spin-hostile build, --features edge-tests"
)]
async fn edge_up_contains_a_hostile_component() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = hostile_edge_up(&[], dir.path()).await;

    // A guest that never yields is stopped at the timeout, and does not hold up other requests.
    let started = Instant::now();
    let spinning = tokio::spawn(master.get("/spin"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = master.get("/healthz").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(2), "a spinning guest held up another request");
    let spun = spinning.await.unwrap().unwrap();
    assert_eq!(spun.status(), 504, "{}", master.log());
    assert!(started.elapsed() < Duration::from_secs(10), "the spinning guest ran for {:?}", started.elapsed());
    assert!(spun.text().await.unwrap().contains("took longer than 2s"));

    for attack in ["/alloc", "/panic", "/huge"] {
        let resp = master.get(attack).await.unwrap();
        assert_eq!(resp.status(), 500, "{attack}: {}", master.log());
        assert!(resp.text().await.unwrap().contains("component `hostile` failed"), "{attack}");
    }
    let log = master.log();
    assert!(log.contains("memory") || log.contains("unreachable"), "the memory hoarder's end is logged:\n{log}");
    assert!(log.contains("length limit exceeded"), "the flood's end is logged:\n{log}");

    // The sandbox shows the declared environment and nothing else: no files, no sockets.
    let probe = master.get("/probe").await.unwrap().text().await.unwrap();
    assert!(probe.starts_with("env: DECLARED=yes\n"), "{probe}");
    for line in ["file: read", "dir: listed", "tcp: connected"] {
        assert!(!probe.contains(line), "{probe}");
    }

    // A Host header that makes no URL is the client's mistake, not the component's.
    for host in ["a b", "evil.example/../admin", "user@host"] {
        let raw = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = raw_http(&master.base, &raw);
        assert!(answer.starts_with("HTTP/1.1 400"), "Host `{host}`: {answer}");
    }

    assert_eq!(master.get("/healthz").await.unwrap().status(), 200);
    assert!(master.child.try_wait().unwrap().is_none(), "the host exited:\n{}", master.log());
}

/// At most `--max-concurrency` instances run; a request waits its turn for as long as the
/// request timeout, then gets 503 with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "edge-tests"),
    ignore = "needs scripts/setup.sh --edge, scripts/test.sh's spin-hostile build, --features edge-tests"
)]
async fn edge_up_caps_concurrent_instances() {
    let dir = tempfile::tempdir().unwrap();
    let master = hostile_edge_up(&["--max-concurrency", "1"], dir.path()).await;
    // `a` holds the one instance until 2 s; `b` waits for it (its wait ends at 2.5 s) and then
    // runs until 4 s; `c` waits from 1 s to 3 s for an instance that never comes free.
    let a = tokio::spawn(master.get("/spin"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = tokio::spawn(master.get("/spin"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = master.get("/healthz").await.unwrap();
    assert_eq!(c.status(), 503, "{}", master.log());
    assert_eq!(c.headers()["retry-after"], "1");
    assert!(c.text().await.unwrap().contains("all 1 instances are busy"));
    for spun in [a, b] {
        let spun = spun.await.unwrap().unwrap();
        assert_eq!(spun.status(), 504, "{}", master.log());
    }
    assert_eq!(master.get("/healthz").await.unwrap().status(), 200);
}

/// Sends `request` as it is and returns the whole answer.
fn raw_http(base: &str, request: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// The edge master's Spin application built, published and deployed by a pipeline, then served
/// from the registry: a `run:` step builds the component with the project's own `cargo build`
/// (the one `spin build` runs; fresh after `scripts/build-edge.sh`, so it checks rather than
/// recompiles; the toolchain under `~/.cargo` is why it runs with `--unsandboxed-processes`),
/// `spin-push` sends it with its spin.toml to a real registry (`docker-registry`) in Spin's
/// layout, `spin-deploy` keeps the SpinKube `SpinApp` naming it by digest, and `skiff edge up
/// --from` that digest pulls it, serves it and dispatches a signed webhook to a real `skiff serve`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "edge-tests"),
    ignore = "needs scripts/setup.sh --edge, scripts/build-edge.sh, --features edge-tests"
)]
async fn a_spin_app_pushed_by_a_pipeline_is_served_from_the_registry() {
    need(&spin_wasm());
    let Some(registry) = crate::registry::Registry::start(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(ws.join(".skiff")).unwrap();
    let manifest = std::fs::read_to_string(repo().join("edge-master/spin/spin.toml"))
        .unwrap()
        .replace("../../target/edge-spin/wasm32-wasip2/release/skiff_edge_spin.wasm", "build/skiff_edge_spin.wasm");
    std::fs::write(ws.join("spin.toml"), manifest).unwrap();
    let image = format!("{}/skiff/edge-master:ci", registry.addr);
    // The build sees this machine's toolchain, as `spin build` would.
    let mut env = serde_json::Map::new();
    for k in ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"] {
        if let Ok(v) = std::env::var(k) {
            env.insert(k.into(), v.into());
        }
    }
    let spin_dir = repo().join("edge-master/spin");
    let pipeline = format!(
        r#"
steps:
  - id: build
    run: |
      (cd "{spin_dir}" && cargo build --offline --target wasm32-wasip2 --release)
      mkdir -p build && cp "{built}" build/
    env: {env}
    permissions: {{ process: true }}
  - id: push
    uses: spin-push
    with: {{ image: "{image}" }}
    permissions: {{ hosts: ["{addr}"] }}
  - uses: spin-deploy
    with:
      reference: ${{{{ steps.push.outputs.reference }}}}
      namespace: edge
      variables: |
        host_url=https://skiff.example.com
"#,
        addr = registry.addr,
        spin_dir = spin_dir.display(),
        built = spin_wasm().display(),
        env = serde_json::Value::Object(env),
    );
    std::fs::write(ws.join(".skiff/pipeline.yaml"), pipeline).unwrap();
    let store = dir.path().join("artifacts");
    let run = |ws: &Path| {
        Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["run", "--unsandboxed-processes", "--artifacts"])
            .arg(&store)
            .current_dir(ws)
            .env("SKIFF_CACHE_DIR", crate::shared_cache_dir())
            .output()
            .unwrap()
    };
    let out = run(&ws);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let runs: Vec<_> = std::fs::read_dir(&store).unwrap().map(|e| e.unwrap().path()).collect();
    let spin_app: Value = serde_json::from_slice(&std::fs::read(runs[0].join("spinapp.json")).unwrap()).unwrap();
    let reference = spin_app["spec"]["image"].as_str().unwrap().to_string();
    assert!(reference.starts_with(&format!("{}/skiff/edge-master@sha256:", registry.addr)), "{spin_app:#}");
    assert_eq!(spin_app["kind"], "SpinApp");
    assert_eq!(spin_app["metadata"]["name"], "edge-master");
    assert_eq!(spin_app["spec"]["variables"][0]["value"], "https://skiff.example.com");
    // The same application pushes to the same digest: nothing in it depends on the time.
    let again = run(&ws);
    assert!(again.status.success());
    let runs: Vec<_> = std::fs::read_dir(&store).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 2);
    for r in &runs {
        let app: Value = serde_json::from_slice(&std::fs::read(r.join("spinapp.json")).unwrap()).unwrap();
        assert_eq!(app["spec"]["image"], reference.as_str());
    }

    // Served from the registry by its digest, with its own variables.
    let mut host = ServeProcess::start(&dir.path().join("host"), "").await;
    let mut cmd = edge_up(Path::new(&reference));
    cmd.env("SKIFF_CACHE_DIR", dir.path().join("cache"));
    cmd.arg("--key-value-file").arg(dir.path().join("kv.db"));
    for (k, v) in [("host_url", host.base.as_str()), ("apps", APPS), ("webhook_secret", WEBHOOK_SECRET)] {
        cmd.arg("--variable").arg(format!("{k}={v}"));
    }
    cmd.env("SPIN_VARIABLE_DISPATCH_KEY", DISPATCH_KEY);
    let master = serving(cmd, dir.path()).await;
    dispatches_dedupes_and_reports_a_down_host(&master, &mut host, "pulled").await;
    drop(master);

    // A reference that is not a Spin application is refused with what it is instead.
    let not_app = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["edge", "up", "--listen", "127.0.0.1:0", "--from"])
        .arg(format!("{}/skiff/nothing:1", registry.addr))
        .env("SKIFF_CACHE_DIR", dir.path().join("cache"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&not_app.stderr);
    assert!(!not_app.status.success() && err.contains("was not found"), "{err}");
}
