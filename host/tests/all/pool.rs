//! A pool of real `skiff serve` processes sharing one real PostgreSQL (a throwaway cluster,
//! `skiff_server::testing::postgres`), with `lease-timeout-secs = 3`: a host killed with
//! SIGKILL in the middle of a run, a host cut off from the database (through a TCP proxy the
//! test cuts), a cancel through one host of a run on another, and one concurrency group raced
//! from two hosts. The step of each run holds an HTTP request open to a gate server of the
//! test's own, so the test sees where and how many times a run is running, and when it stops.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::serve::ServeProcess;

const TOKEN: &str = "pool-admin-token";
const WEBHOOK_SECRET: &str = "pool-webhook-secret";

/// An HTTP server whose requests are held open until released: it counts arrivals and how
/// many are open at once (a request whose client went away is no longer open).
struct Gate {
    port: u16,
    arrived: AtomicUsize,
    open: AtomicUsize,
    most_open: AtomicUsize,
    closed_by_client: AtomicUsize,
    /// Requests are answered at once from here on.
    released: watch::Sender<bool>,
    /// Answer after this long without a release (0: wait for the release).
    hold_ms: AtomicUsize,
    changed: Notify,
    /// The request lines open now, and the most seen open together.
    open_paths: Mutex<Vec<String>>,
    overlap: Mutex<Vec<String>>,
}

impl Gate {
    async fn start() -> Arc<Gate> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate = Arc::new(Gate {
            port: listener.local_addr().unwrap().port(),
            arrived: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            most_open: AtomicUsize::new(0),
            closed_by_client: AtomicUsize::new(0),
            released: watch::channel(false).0,
            hold_ms: AtomicUsize::new(0),
            changed: Notify::new(),
            open_paths: Mutex::new(Vec::new()),
            overlap: Mutex::new(Vec::new()),
        });
        let g = gate.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(g.clone().serve(sock));
            }
        });
        gate
    }

    async fn serve(self: Arc<Self>, mut sock: TcpStream) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let path = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
        {
            let mut open = self.open_paths.lock().unwrap();
            open.push(path.clone());
            if open.len() > 1 {
                *self.overlap.lock().unwrap() = open.clone();
            }
        }
        let now_open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_open.fetch_max(now_open, Ordering::SeqCst);
        self.changed.notify_waiters();
        let mut released = self.released.subscribe();
        let hold = self.hold_ms.load(Ordering::SeqCst) as u64;
        let answered = tokio::select! {
            _ = released.wait_for(|r| *r) => true,
            _ = tokio::time::sleep(Duration::from_millis(hold)), if hold > 0 => true,
            // The client went away (its host was killed, or stopped the step).
            _ = sock.read(&mut buf) => false,
        };
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.open_paths.lock().unwrap().retain(|p| *p != path);
        if answered {
            let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
        } else {
            self.closed_by_client.fetch_add(1, Ordering::SeqCst);
        }
        self.changed.notify_waiters();
    }

    /// Waits until `check` holds of the gate (at most 60 s).
    async fn until(&self, what: &str, check: impl Fn(&Gate) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !check(self) {
            assert!(Instant::now() < deadline, "the gate waited for {what}: {self:?}");
            let _ = tokio::time::timeout(Duration::from_millis(50), self.changed.notified()).await;
        }
    }

    fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "arrived {}, open {}, at most {} open ({:?}), {} closed by the client",
            self.arrived(),
            self.open.load(Ordering::SeqCst),
            self.most_open.load(Ordering::SeqCst),
            self.overlap.lock().unwrap(),
            self.closed_by_client.load(Ordering::SeqCst)
        )
    }
}

/// A TCP proxy to PostgreSQL that the test can cut (every connection dropped, new ones
/// refused) and mend.
struct Proxy {
    port: u16,
    cut: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, _) = watch::channel(false);
        let flag = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cut = flag.subscribe();
                if *cut.borrow() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Proxy { port, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// The port in a `postgres://…@127.0.0.1:PORT/db` URL.
fn port_of(url: &str) -> u16 {
    let after = url.rsplit_once("127.0.0.1:").unwrap().1;
    after.split('/').next().unwrap().parse().unwrap()
}

fn config(port: u16, data: &Path, store: &str, gate: u16, extra: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:{port}"
data = "{data}"
store = "{store}"
lease-timeout-secs = 3

[[tokens]]
name = "admin"
token = "{TOKEN}"
apps = ["*"]

[[apps]]
name = "hold"
pipeline-yaml = """
steps:
  - id: wait
    uses: diag
    with:
      fetch: http://127.0.0.1:{gate}/hold
    permissions:
      hosts: ["127.0.0.1:{gate}"]
"""

[[apps]]
name = "group"
pipeline-yaml = """
concurrency: deploy
steps:
  - id: deploy
    uses: diag
    with:
      fetch: http://127.0.0.1:{gate}/group/${{{{ run.id }}}}/${{{{ run.attempt }}}}
    permissions:
      hosts: ["127.0.0.1:{gate}"]
"""

[[apps]]
name = "hooked"
repository = "acme/web"
provider = "github"
fetch = false
webhook-secret = "{WEBHOOK_SECRET}"
on = {{ push = {{ branches = ["main"] }} }}
max-concurrent-runs = 64
pipeline-yaml = """
steps:
  - id: quick
    uses: diag
"""

[[apps]]
name = "train"
pipeline-yaml = """
jobs:
  train:
    runs-on: gpu
    steps:
      - id: wait
        uses: diag
        with:
          fetch: http://127.0.0.1:{gate}/train
        permissions:
          hosts: ["127.0.0.1:{gate}"]
"""

[[apps]]
name = "art"
pipeline-yaml = """
steps:
  - uses: diag
    with: {{ message: built on one host, file: out.txt }}
  - uses: upload
    with: {{ target: artifact, source: out.txt, name: out.txt }}
"""
{extra}
"#,
        data = data.display(),
    )
}

struct Host {
    serve: ServeProcess,
    data: PathBuf,
}

impl Host {
    async fn start(root: &Path, name: &str, store: &str, gate: u16) -> Host {
        Self::start_with(root, name, store, gate, "").await
    }

    async fn start_with(root: &Path, name: &str, store: &str, gate: u16, extra: &str) -> Host {
        let data = root.join(name);
        let d = data.clone();
        let (store, extra) = (store.to_string(), extra.to_string());
        let serve = ServeProcess::start_with(&data, move |port| config(port, &d, &store, gate, &extra)).await;
        Host { serve, data }
    }

    /// A host with `labels = ["gpu"]`.
    async fn start_gpu(root: &Path, name: &str, store: &str, gate: u16) -> Host {
        let data = root.join(name);
        let (d, store) = (data.clone(), store.to_string());
        let serve = ServeProcess::start_with(&data, move |port| {
            format!("labels = [\"gpu\"]\n{}", config(port, &d, &store, gate, ""))
        })
        .await;
        Host { serve, data }
    }

    /// Whether this host holds run `id`'s workspace: it is running it.
    fn runs(&self, id: i64) -> bool {
        self.data.join("work").join(id.to_string()).exists()
    }

    /// Whether this host holds a workspace of a job of run `id` that it leased from the pool.
    fn runs_job_of(&self, id: i64) -> bool {
        let prefix = format!("job-{id}-");
        std::fs::read_dir(self.data.join("work"))
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(&prefix)))
            .unwrap_or(false)
    }
}

/// The host among `hosts` that runs a job of run `id` (its step is at the gate).
fn job_runner(hosts: &[&Host], id: i64) -> usize {
    let on: Vec<usize> = (0..hosts.len()).filter(|&i| hosts[i].runs_job_of(id)).collect();
    assert_eq!(on.len(), 1, "a job of run {id} has a workspace on hosts {on:?}");
    on[0]
}

async fn trigger(host: &Host, app: &str) -> i64 {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/apps/{app}/runs", host.serve.base))
        .bearer_auth(TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

/// The body of `GET path` through `host`, as the admin.
async fn get_text(host: &Host, path: &str) -> String {
    let url = format!("{}{path}", host.serve.base);
    reqwest::Client::new().get(url).bearer_auth(TOKEN).send().await.unwrap().text().await.unwrap()
}

async fn run(host: &Host, id: i64) -> Value {
    serde_json::from_str(&get_text(host, &format!("/v1/runs/{id}")).await).unwrap()
}

async fn until_over(host: &Host, id: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = run(host, id).await;
        if !matches!(r["status"].as_str(), Some("queued" | "running")) {
            return r;
        }
        assert!(Instant::now() < deadline, "run {id} did not end: {r:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The host among `hosts` that runs `id` (its step is at the gate).
fn runner(hosts: &[&Host], id: i64) -> usize {
    let on: Vec<usize> = (0..hosts.len()).filter(|&i| hosts[i].runs(id)).collect();
    let work: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            std::fs::read_dir(h.data.join("work"))
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(on.len(), 1, "run {id} has a workspace on hosts {on:?}: {work:?}");
    on[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_a_host_killed_with_sigkill_completes_on_another() {
    let Some(db) = skiff_server::testing::postgres::database() else { return };
    let root = tempfile::tempdir().unwrap();
    let gate = Gate::start().await;
    let mut hosts = Vec::new();
    for name in ["a", "b", "c"] {
        hosts.push(Host::start(root.path(), name, &db.url, gate.port).await);
    }
    let id = trigger(&hosts[0], "hold").await;
    gate.until("the step on its first host", |g| g.arrived() == 1).await;
    let first = runner(&hosts.iter().collect::<Vec<_>>(), id);
    hosts[first].serve.kill();

    // Another host takes the run over once the lease lapses, as its next attempt; never two
    // at once.
    gate.until("the step on another host", |g| g.arrived() == 2).await;
    let alive: Vec<&Host> = hosts.iter().enumerate().filter(|(i, _)| *i != first).map(|(_, h)| h).collect();
    runner(&alive, id);
    gate.released.send_replace(true);
    let done = until_over(alive[0], id).await;
    assert_eq!(done["status"], "success", "{done:#}");
    assert_eq!(done["attempt"], 2, "{done:#}");
    assert_eq!(gate.most_open.load(Ordering::SeqCst), 1, "{gate:?}");
    assert_eq!(gate.arrived(), 2, "{gate:?}");
}

/// Jobs, not runs, are leased: the run's graph stays on the host that took it (the only one
/// without `gpu`), its job moves from a killed host to another with the label as its second
/// try, and the run goes on as the same attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_a_host_killed_with_sigkill_completes_on_another_in_the_same_attempt() {
    let Some(db) = skiff_server::testing::postgres::database() else { return };
    let root = tempfile::tempdir().unwrap();
    let gate = Gate::start().await;
    let a = Host::start(root.path(), "a", &db.url, gate.port).await;
    let id = trigger(&a, "train").await;
    // No host has `gpu` yet: the graph runs on A, its job waits and says for what.
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let r = run(&a, id).await;
        if r["jobs"][0]["status"] == "queued" {
            break r;
        }
        assert!(Instant::now() < deadline, "the job never waited for a host: {r:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(waiting["status"], "running", "{waiting:#}");
    assert_eq!(waiting["jobs"][0]["reason"], "waiting for a host with the labels gpu", "{waiting:#}");
    assert!(a.runs(id) && !a.runs_job_of(id));

    let mut gpus = [
        Host::start_gpu(root.path(), "b", &db.url, gate.port).await,
        Host::start_gpu(root.path(), "c", &db.url, gate.port).await,
    ];
    gate.until("the job on a host with gpu", |g| g.arrived() == 1).await;
    let first = job_runner(&gpus.iter().collect::<Vec<_>>(), id);
    gpus[first].serve.kill();
    let other = &gpus[1 - first];
    gate.until("the job on the other host with gpu", |g| g.arrived() == 2).await;
    assert!(other.runs_job_of(id));
    gate.released.send_replace(true);
    let done = until_over(&a, id).await;
    assert_eq!(done["status"], "success", "{done:#}");
    assert_eq!(done["attempt"], 1, "the run went on; only its job moved: {done:#}");
    assert_eq!(gate.most_open.load(Ordering::SeqCst), 1, "never twice at once: {gate:?}");
    assert_eq!(gate.arrived(), 2, "{gate:?}");
    let log = get_text(&a, &format!("/v1/runs/{id}/logs?format=text")).await;
    assert!(log.contains("the host that ran this job before stopped; try 2 of it"), "{log}");
}

/// A job's host cut off from the database stops the job before its lease lapses; another host
/// takes it, and the first, back, does not complete it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_s_host_cut_off_from_the_database_stops_it_and_another_host_finishes_it() {
    let Some(db) = skiff_server::testing::postgres::database() else { return };
    let root = tempfile::tempdir().unwrap();
    let gate = Gate::start().await;
    let proxy = Proxy::start(port_of(&db.url)).await;
    let via_proxy = db.url.replace(&format!(":{}/", port_of(&db.url)), &format!(":{}/", proxy.port));
    let a = Host::start(root.path(), "a", &db.url, gate.port).await;
    let b = Host::start_gpu(root.path(), "b", &via_proxy, gate.port).await;
    let id = trigger(&a, "train").await;
    gate.until("the job on host B", |g| g.arrived() == 1).await;
    assert!(b.runs_job_of(id) && a.runs(id));
    let c = Host::start_gpu(root.path(), "c", &db.url, gate.port).await;

    proxy.set_cut(true);
    gate.until("host B to stop the job", |g| g.closed_by_client.load(Ordering::SeqCst) == 1).await;
    gate.until("the job on host C", |g| g.arrived() == 2).await;
    assert!(c.runs_job_of(id));
    gate.released.send_replace(true);
    let done = until_over(&a, id).await;
    assert_eq!((done["status"].clone(), done["attempt"].clone()), (json!("success"), json!(1)), "{done:#}");

    proxy.set_cut(false);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = run(&b, id).await;
    assert_eq!((after["status"].clone(), after["attempt"].clone()), (json!("success"), json!(1)), "{after:#}");
    assert_eq!(after["jobs"][0]["status"], "success", "{after:#}");
    assert_eq!(gate.arrived(), 2, "{gate:?}");
    assert_eq!(gate.most_open.load(Ordering::SeqCst), 1, "{gate:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_from_the_database_stops_its_run_and_never_ends_it_after_another_did() {
    let Some(db) = skiff_server::testing::postgres::database() else { return };
    let root = tempfile::tempdir().unwrap();
    let gate = Gate::start().await;
    let proxy = Proxy::start(port_of(&db.url)).await;
    let via_proxy = db.url.replace(&format!(":{}/", port_of(&db.url)), &format!(":{}/", proxy.port));
    let b = Host::start(root.path(), "b", &via_proxy, gate.port).await;
    let id = trigger(&b, "hold").await;
    gate.until("the step on host B", |g| g.arrived() == 1).await;
    assert!(b.runs(id));
    let a = Host::start(root.path(), "a", &db.url, gate.port).await;

    // B loses the database: it stops the step itself, before its lease lapses; then A takes
    // the run over.
    proxy.set_cut(true);
    gate.until("host B to stop its step", |g| g.closed_by_client.load(Ordering::SeqCst) == 1).await;
    gate.until("the step on host A", |g| g.arrived() == 2).await;
    assert!(a.runs(id));
    gate.released.send_replace(true);
    let done = until_over(&a, id).await;
    assert_eq!(done["status"], "success", "{done:#}");
    assert_eq!(done["attempt"], 2, "{done:#}");

    // B comes back: it does not run the step again, nor record an end of its own.
    proxy.set_cut(false);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = run(&b, id).await;
    assert_eq!((after["status"].clone(), after["attempt"].clone()), (json!("success"), json!(2)), "{after:#}");
    assert_eq!(after["error"], Value::Null, "{after:#}");
    assert_eq!(gate.arrived(), 2, "{gate:?}");
    assert_eq!(gate.most_open.load(Ordering::SeqCst), 1, "{gate:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_one_host_stops_the_run_on_another() {
    let Some(db) = skiff_server::testing::postgres::database() else { return };
    let root = tempfile::tempdir().unwrap();
    let gate = Gate::start().await;
    let a = Host::start(root.path(), "a", &db.url, gate.port).await;
    let b = Host::start(root.path(), "b", &db.url, gate.port).await;
    let id = trigger(&a, "hold").await;
    gate.until("the step", |g| g.arrived() == 1).await;
    let hosts = [&a, &b];
    let other = hosts[1 - runner(&hosts, id)];
    let r = reqwest::Client::new()
        .post(format!("{}/v1/runs/{id}/cancel", other.serve.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    gate.until("the step to stop", |g| g.closed_by_client.load(Ordering::SeqCst) == 1).await;
    let done = until_over(other, id).await;
    assert_eq!(done["status"], "cancelled", "{done:#}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(run(&a, id).await["status"], "cancelled", "the host that ran it did not overwrite the cancel");
    assert_eq!(gate.arrived(), 1, "{gate:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_concurrency_group_raced_from_two_hosts_runs_one_at_a_time() {
    let Some(db) = skiff_server::testing::postgres::database() else { return };
    let root = tempfile::tempdir().unwrap();
    let gate = Gate::start().await;
    gate.hold_ms.store(400, Ordering::SeqCst);
    let a = Host::start(root.path(), "a", &db.url, gate.port).await;
    let b = Host::start(root.path(), "b", &db.url, gate.port).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    for round in 0..3 {
        // Both hosts accept a run of the group at the same moment.
        let (x, y) = tokio::join!(trigger(&a, "group"), trigger(&b, "group"));
        for id in [x, y] {
            let done = until_over(&a, id).await;
            assert!(matches!(done["status"].as_str(), Some("success" | "cancelled")), "round {round}: {done:#}");
            seen.lock().unwrap().push(done["status"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(gate.most_open.load(Ordering::SeqCst), 1, "two runs of one group at once: {gate:?}");
    let seen = seen.lock().unwrap();
    assert!(seen.iter().filter(|s| *s == "success").count() >= 3, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_is_followed_live_through_an_instance_the_run_is_not_on() {
    let Some(db) = skiff_server::testing::postgres::database() else { return };
    let root = tempfile::tempdir().unwrap();
    let gate = Gate::start().await;
    let a = Host::start(root.path(), "a", &db.url, gate.port).await;
    let id = trigger(&a, "hold").await;
    gate.until("the step on host A", |g| g.arrived() == 1).await;
    assert!(a.runs(id));
    // B starts after the run did: it is not B's.
    let b = Host::start(root.path(), "b", &db.url, gate.port).await;

    let resp = reqwest::Client::new()
        .get(format!("{}/v1/runs/{id}/logs/stream", b.serve.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    use futures::StreamExt as _;
    // The line the step wrote before it went to the gate arrives while the step still waits.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text.contains("wrote ") {
        let chunk = tokio::time::timeout_at(deadline.into(), body.next()).await.expect("no live line through B");
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
    assert_eq!(run(&b, id).await["status"], "running", "{text}");
    assert!(!b.runs(id), "the run is A's");
    // The running step's state arrives too (read from the store: B's hub hears nothing of A's).
    while !text.contains("event: step") {
        let chunk = tokio::time::timeout_at(deadline.into(), body.next()).await.expect("no step event through B");
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
    gate.released.send_replace(true);
    while !text.contains("event: end") {
        let chunk = tokio::time::timeout_at(deadline.into(), body.next()).await.expect("no end through B");
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
    assert!(text.contains("GET http://127.0.0.1:") && text.contains(r#""status":"success""#), "{text}");
    let steps: Vec<&str> = text.split("\n\n").filter(|e| e.starts_with("event: step")).collect();
    assert!(
        steps.iter().any(|e| e.contains(r#""status":"running""#))
            && steps.iter().filter(|e| e.contains(r#""status":"success""#)).count() >= 2,
        "the step and its job start and end, seen through B: {text}"
    );
    // The stored log reads the same through either instance.
    let path = format!("/v1/runs/{id}/logs?format=text");
    let (from_a, from_b) = (get_text(&a, &path).await, get_text(&b, &path).await);
    assert!(from_a.contains("wrote ") && from_a == from_b, "{from_a}\n---\n{from_b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_and_a_log_stored_on_one_host_read_through_another_from_the_bucket() {
    let Some(db) = skiff_server::testing::postgres::database() else { return };
    let s3 = skiff_server::testing::s3::S3Server::start();
    let objects = format!(
        "[objects]\nurl = \"s3://bucket/pool\"\nendpoint = \"{}\"\naccess-key-id = \"{}\"\nsecret-access-key = \"{}\"\n",
        s3.endpoint(),
        skiff_server::testing::s3::ACCESS_KEY,
        skiff_server::testing::s3::SECRET_KEY
    );
    let root = tempfile::tempdir().unwrap();
    let gate = Gate::start().await;
    let a = Host::start_with(root.path(), "a", &db.url, gate.port, &objects).await;
    let id = trigger(&a, "art").await;
    let done = until_over(&a, id).await;
    assert_eq!(done["status"], "success", "{done:#}");
    // B starts after the run: it never held the artifact, yet serves it.
    let b = Host::start_with(root.path(), "b", &db.url, gate.port, &objects).await;
    let list: Value = serde_json::from_str(&get_text(&b, &format!("/v1/runs/{id}/artifacts")).await).unwrap();
    let names: Vec<&str> = list["artifacts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"out.txt") && names.contains(&"provenance.intoto.jsonl"), "{list:#}");
    let body = get_text(&b, &format!("/v1/runs/{id}/artifacts/out.txt")).await;
    assert!(body.starts_with("built on one host"), "{body}");
    // In the bucket, not in either host's data folder.
    assert!(s3.root.path().join(format!("bucket/pool/artifact-records/{id}/out.txt.json")).is_file());
    for h in [&a, &b] {
        assert!(!h.data.join("artifacts").join(id.to_string()).exists());
    }

    // The finished log moves from the database to the bucket, one object per step, and reads
    // the same through the instance that never ran it.
    // The synchronous client lives and dies on a thread of its own, off the test's runtime.
    let rows = tokio::task::spawn_blocking(move || {
        let mut pg = db.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n: i64 = pg.query_one("SELECT COUNT(*) FROM log_lines WHERE run_id = $1", &[&id]).unwrap().get(0);
            if n == 0 || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    assert_eq!(rows, 0, "the log left the database");
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.path().is_dir() { files(&e.path(), out) } else { out.push(e.path()) }
        }
    }
    let mut objects = Vec::new();
    files(&s3.root.path().join(format!("bucket/pool/logs/{id}")), &mut objects);
    assert!(objects.len() >= 2 && objects.iter().all(|p| p.extension().is_some_and(|e| e == "jsonl")), "{objects:?}");
    let log = get_text(&b, &format!("/v1/runs/{id}/logs?format=text")).await;
    assert!(log.contains("wrote ") && log.lines().count() >= 2, "{log}");
}

/// A burst of signed GitHub webhooks spread over two API instances (both also hosts) sharing
/// one PostgreSQL: each delivery is stored once, gets one run, and every run succeeds once.
/// Each delivery is sent to both instances (as an edge master's retry to another instance
/// would), so each instance races the other for the same dispatch id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_3000_webhooks_over_two_instances_is_stored_once_and_run_once() {
    let Some(db) = skiff_server::testing::postgres::database() else { return };
    let root = tempfile::tempdir().unwrap();
    let gate = Gate::start().await;
    let a = Host::start_with(root.path(), "a", &db.url, gate.port, "max-concurrent-runs = 64").await;
    let b = Host::start_with(root.path(), "b", &db.url, gate.port, "max-concurrent-runs = 64").await;
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let n = 3000;
    let send = |base: String, i: usize| {
        let http = http.clone();
        async move {
            let body = serde_json::to_vec(&json!({
                "ref": "refs/heads/main", "before": "0000", "after": format!("{:040x}", i + 1),
                "repository": {"full_name": "acme/web"}, "sender": {"login": "octocat"}
            }))
            .unwrap();
            let sig = skiff_edge_core::github_signature(WEBHOOK_SECRET.as_bytes(), &body);
            let resp = http
                .post(format!("{base}/hooks/hooked"))
                .header("x-github-event", "push")
                .header("x-github-delivery", format!("burst-{i}"))
                .header("x-hub-signature-256", sig)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            assert!(status == 200 || status == 202, "delivery {i}: {status} {text}");
            (i, base, status, text)
        }
    };
    let bases = [a.serve.base.clone(), b.serve.base.clone()];
    use futures::StreamExt as _;
    let answers = futures::stream::iter((0..n).flat_map(|i| [(i, 0), (i, 1)]))
        .map(|(i, k)| send(bases[(i + k) % 2].clone(), i))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;

    // Every delivery is one run, and every run ends in success, once.
    let count = |filter: &str| -> i64 {
        let sql = format!("SELECT COUNT(*) FROM runs WHERE app = 'hooked'{filter}");
        tokio::task::block_in_place(|| db.client().query_one(sql.as_str(), &[]).unwrap().get(0))
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (runs, done) = (count(""), count(" AND status = 'success'"));
        if runs != n as i64 {
            let ids: Vec<String> = tokio::task::block_in_place(|| {
                db.client()
                    .query("SELECT dispatch_id FROM runs WHERE app = 'hooked'", &[])
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
                    .collect()
            });
            let missing: Vec<usize> =
                (0..n).filter(|i| !ids.iter().any(|d| d.starts_with(&format!("burst-{i}:")))).collect();
            let answers: Vec<_> = answers.iter().filter(|a| missing.contains(&a.0)).collect();
            panic!("{runs} runs for {n} deliveries; missing {missing:?}: {answers:#?}");
        }
        if done == runs {
            break;
        }
        assert!(Instant::now() < deadline, "{done} of {runs} runs succeeded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats: (i64, i64, i64) = tokio::task::block_in_place(|| {
        let row = db
            .client()
            .query_one(
                "SELECT COUNT(DISTINCT dispatch_id), MAX(attempt)::BIGINT, COUNT(DISTINCT number) FROM runs WHERE app = 'hooked'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    });
    assert_eq!(stats, (n as i64, 1, n as i64), "distinct deliveries, one attempt each, distinct numbers");
}

/// A browser signed in to the web console through one instance is signed in through every
/// instance sharing the store, and signing out through another ends it everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_session_started_on_one_instance_holds_on_another_until_signed_out_there() {
    let Some(db) = skiff_server::testing::postgres::database() else { return };
    let root = tempfile::tempdir().unwrap();
    let gate = Gate::start().await;
    let a = Host::start(root.path(), "a", &db.url, gate.port).await;
    let b = Host::start(root.path(), "b", &db.url, gate.port).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let cookie_of = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| c.split(';').next().filter(|kv| kv.starts_with(&format!("{name}="))).map(String::from))
    };

    let page = http.get(format!("{}/sign-in", a.serve.base)).send().await.unwrap();
    let pre = cookie_of(&page, "skiff_signin").expect("the sign-in form's cookie");
    let csrf = pre.split_once('=').unwrap().1.to_string();
    let signed = http
        .post(format!("{}/sign-in", a.serve.base))
        .header("cookie", &pre)
        .form(&[("csrf", csrf.as_str()), ("next", "/runs"), ("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 303);
    let session = cookie_of(&signed, "skiff_session").expect("a session cookie");

    let page = |h: &Host, cookie: Option<String>| {
        let mut req = http.get(format!("{}/runs", h.serve.base));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        async move { req.send().await.unwrap() }
    };
    let on_b = page(&b, Some(session.clone())).await;
    assert_eq!(on_b.status(), 200, "the session started on A holds on B");
    let html = on_b.text().await.unwrap();
    assert_eq!(page(&b, None).await.status(), 303, "without it, B asks to sign in");

    // Sign out through B, with the session's own form token from B's page.
    let field = r#"name="csrf" value=""#;
    let at = html.find(field).expect("a form with the session's token") + field.len();
    let token = &html[at..at + html[at..].find('"').unwrap()];
    let out = http
        .post(format!("{}/sign-out", b.serve.base))
        .header("cookie", &session)
        .form(&[("csrf", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    let on_a = page(&a, Some(session)).await;
    assert_eq!(on_a.status(), 303, "signed out through B, the session is over on A too");
    assert!(on_a.headers()["location"].to_str().unwrap().starts_with("/sign-in"));
}
