//! Runs per second end to end across a pool of hosts: 1, 2 and 3 real `skiff serve` processes
//! sharing one PostgreSQL (a throwaway cluster, `skiff_server::testing::postgres`), and one
//! host on its default SQLite store beside one on PostgreSQL; with jobs leased one by one (the
//! default on PostgreSQL) and, as the baseline, runs leased whole (`lease-jobs = false`). The same one-step Wasm pipeline
//! (`uses: diag`) on every host; N runs submitted through the API (`POST /v1/apps/{app}/runs`),
//! spread round-robin over the hosts, 32 requests in flight; the clock runs from the first
//! submit until the store holds all N in a terminal state. Then every run must have succeeded,
//! once (attempt 1, one step row), with N distinct numbers: none lost, none run twice.
//!
//! `cargo bench -p skiff --bench pool --profile dev` prints a table (see docs/BENCHMARKS.md).
//! `SKIFF_BENCH_N` runs per configuration (default 600). Every process (the hosts,
//! PostgreSQL, this client) shares the machine's cores: more hosts add no CPU here.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt as _;

const TOKEN: &str = "pool-bench-token";
/// Each host's `max-concurrent-runs`: enough runs in flight to overlap the store's round
/// trips, few enough that two cores are not thrashed by Wasm instances.
const MAX_CONCURRENT: usize = 16;
/// Requests in flight from the client.
const SENDERS: usize = 32;
/// Runs of app `warm` per host before the clock starts (the step's component compiled and
/// cached, connections open).
const WARM_PER_HOST: usize = 3;

/// A `skiff serve` process of the built binary; its stderr in `serve.log` of its data folder.
struct Host {
    base: String,
    data: PathBuf,
    child: Child,
}

fn config(port: u16, data: &Path, store: Option<&str>, lease_jobs: bool) -> String {
    let mut store = store.map(|s| format!("store = \"{s}\"\n")).unwrap_or_default();
    if !lease_jobs {
        store.push_str("lease-jobs = false\n");
    }
    let app = |name: &str| {
        format!(
            r#"
[[apps]]
name = "{name}"
pipeline-yaml = """
steps:
  - id: only
    uses: diag
"""
"#
        )
    };
    format!(
        r#"listen = "127.0.0.1:{port}"
data = "{data}"
{store}lease-timeout-secs = 60
max-concurrent-runs = {MAX_CONCURRENT}

[[tokens]]
name = "bench"
token = "{TOKEN}"
apps = ["*"]
{bench}{warm}"#,
        data = data.display(),
        bench = app("bench"),
        warm = app("warm"),
    )
}

impl Host {
    async fn start(root: &Path, name: &str, store: Option<&str>, lease_jobs: bool) -> Host {
        let data = root.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = data.join("skiff.toml");
        std::fs::write(&cfg, config(port, &data, store, lease_jobs)).unwrap();
        let log = std::fs::File::create(data.join("serve.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let host = Host { base: format!("http://127.0.0.1:{port}"), data, child };
        let http = reqwest::Client::new();
        for _ in 0..1200 {
            if http.get(format!("{}/healthz", host.base)).send().await.is_ok() {
                return host;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("skiff serve did not come up in 60 s: {}", host.log_tail());
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data.join("serve.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// CPU time (user + system) the process used so far.
    fn cpu(&self) -> Duration {
        cpu_of(&format!("/proc/{}/stat", self.child.id()))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a `/proc/PID/stat` file.
fn cpu_of(stat: &str) -> Duration {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    let Some((_, rest)) = text.rsplit_once(')') else { return Duration::ZERO };
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    Duration::from_secs_f64(f.iter().sum::<u64>() as f64 / clock_ticks())
}

/// The `/proc` folders of the processes alive now.
fn processes() -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .map(|e| e.path())
}

/// The parent process id in a `/proc/PID/stat` file.
fn parent_of(proc: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(proc.join("stat")).ok()?;
    text.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time of this process's PostgreSQL cluster (other test processes may run clusters of
/// their own): its postmaster, found as the parent of a backend serving one of this process's
/// databases (`t_PID_N`), and every child of it alive now.
fn postgres_cpu() -> Duration {
    let ours = format!(" t_{}_", std::process::id());
    let Some(postmaster) = processes().find_map(|p| {
        let cmdline = std::fs::read(p.join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline).contains(&ours).then(|| parent_of(&p)).flatten()
    }) else {
        return Duration::ZERO;
    };
    let root = PathBuf::from(format!("/proc/{postmaster}"));
    cpu_of(&root.join("stat").to_string_lossy())
        + processes()
            .filter(|p| parent_of(p) == Some(postmaster))
            .map(|p| cpu_of(&p.join("stat").to_string_lossy()))
            .sum::<Duration>()
}

fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().next().unwrap_or("?").to_string()
}

/// Reads the run store as integers: one row of a query, whichever store it is.
type Query = Box<dyn FnMut(&str) -> Vec<i64> + Send>;

fn postgres_query(db: &skiff_server::testing::postgres::Database) -> Query {
    let mut client = db.client();
    Box::new(move |sql| {
        let row = client.query_one(sql, &[]).unwrap();
        (0..row.len()).map(|i| row.get::<_, i64>(i)).collect()
    })
}

fn sqlite_query(path: PathBuf) -> Query {
    let mut conn = None;
    Box::new(move |sql| {
        let c = conn.get_or_insert_with(|| {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.busy_timeout(Duration::from_secs(5)).unwrap();
            c
        });
        c.query_row(sql, [], |row| (0..row.as_ref().column_count()).map(|i| row.get::<_, i64>(i)).collect()).unwrap()
    })
}

fn progress_sql(app: &str) -> String {
    format!(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status IN ('success', 'failure', 'cancelled', 'skipped') \
         THEN 1 ELSE 0 END), 0) FROM runs WHERE app = '{app}'"
    )
}

/// Submits `n` runs of `app`, round-robin over `hosts`; the ids the API gave.
async fn submit(http: &reqwest::Client, hosts: &[String], app: &str, n: usize) -> Vec<i64> {
    futures::stream::iter(0..n)
        .map(|i| {
            let url = format!("{}/v1/apps/{app}/runs", hosts[i % hosts.len()]);
            let http = http.clone();
            async move {
                let resp = http.post(&url).bearer_auth(TOKEN).json(&serde_json::json!({})).send().await.unwrap();
                let status = resp.status();
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                assert_eq!(status, 202, "submit {i} to {url}: {body}");
                body["id"].as_i64().unwrap()
            }
        })
        .buffer_unordered(SENDERS)
        .collect()
        .await
}

/// Waits (at most `limit`) until the store holds `n` runs of `app`, all ended.
async fn until_ended(query: &mut Query, app: &str, n: usize, limit: Duration, hosts: &[Host]) {
    let sql = progress_sql(app);
    let deadline = Instant::now() + limit;
    loop {
        let counts = tokio::task::block_in_place(|| query(&sql));
        if counts[1] >= n as i64 {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = hosts.iter().map(Host::log_tail).collect();
            panic!(
                "{app}: {counts:?} (stored, ended) of {n} after {limit:?}; the hosts' logs:\n{}",
                logs.join("\n--\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Figures {
    rate: f64,
    accept_rate: f64,
    host_cpu_ms: f64,
    pg_cpu_ms: f64,
    client_cpu_ms: f64,
    load_start: String,
    load_end: String,
}

/// One configuration: `hosts` hosts on `store` (None: each its own SQLite), `n` runs.
async fn measure(
    hosts: usize,
    store: Option<&skiff_server::testing::postgres::Database>,
    n: usize,
    lease_jobs: bool,
) -> Figures {
    let root = tempfile::tempdir().unwrap();
    let mut pool = Vec::new();
    for i in 0..hosts {
        pool.push(Host::start(root.path(), &format!("h{i}"), store.map(|d| d.url.as_str()), lease_jobs).await);
    }
    // The synchronous PostgreSQL client runs its own runtime: made, used and dropped beside
    // this one's workers.
    let mut query = tokio::task::block_in_place(|| match store {
        Some(db) => postgres_query(db),
        None => sqlite_query(root.path().join("h0/skiff.db")),
    });
    let bases: Vec<String> = pool.iter().map(|h| h.base.clone()).collect();
    let http = reqwest::Client::builder().pool_max_idle_per_host(SENDERS).build().unwrap();

    // Warm: the step's component compiled (and cached on disk), every host's connections open.
    submit(&http, &bases, "warm", WARM_PER_HOST * hosts).await;
    until_ended(&mut query, "warm", WARM_PER_HOST * hosts, Duration::from_secs(300), &pool).await;

    let load_start = load1();
    let host_cpu = |pool: &[Host]| pool.iter().map(|h| h.cpu().as_secs_f64()).sum::<f64>();
    let others = || (postgres_cpu().as_secs_f64(), cpu_of("/proc/self/stat").as_secs_f64());
    let (host0, (pg0, me0)) = (host_cpu(&pool), others());
    let t0 = Instant::now();
    let submitter = {
        let (http, bases) = (http.clone(), bases.clone());
        tokio::spawn(async move {
            let ids = submit(&http, &bases, "bench", n).await;
            (ids, t0.elapsed())
        })
    };
    until_ended(&mut query, "bench", n, Duration::from_secs(900), &pool).await;
    let elapsed = t0.elapsed();
    let (ids, accepted_in) = submitter.await.unwrap();
    let (host1, (pg1, me1)) = (host_cpu(&pool), others());
    let load_end = load1();

    // Every run once: N stored, N succeeded, N distinct numbers, one attempt, one step row each.
    let distinct: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), n, "the API gave {} distinct ids for {n} runs", distinct.len());
    let check = tokio::task::block_in_place(|| {
        query(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status = 'success' THEN 1 ELSE 0 END), 0), \
             COUNT(DISTINCT number), COALESCE(MAX(attempt), 0), \
             (SELECT COUNT(*) FROM steps WHERE run_id IN (SELECT id FROM runs WHERE app = 'bench')) \
             FROM runs WHERE app = 'bench'",
        )
    });
    let n64 = n as i64;
    assert_eq!(
        check,
        vec![n64, n64, n64, 1, n64],
        "(stored, succeeded, distinct numbers, most attempts, step rows) for {n} runs"
    );
    tokio::task::block_in_place(move || drop(query));
    drop(pool);
    Figures {
        rate: n as f64 / elapsed.as_secs_f64(),
        accept_rate: n as f64 / accepted_in.as_secs_f64(),
        host_cpu_ms: (host1 - host0) * 1000.0 / n as f64,
        pg_cpu_ms: (pg1 - pg0) * 1000.0 / n as f64,
        client_cpu_ms: (me1 - me0) * 1000.0 / n as f64,
        load_start,
        load_end,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("SKIFF_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "pool benchmark: {n} runs per configuration, one `uses: diag` step each; {cores} cores shared by \
         every host, PostgreSQL and this client; max-concurrent-runs = {MAX_CONCURRENT} per host; \
         {SENDERS} submits in flight, round-robin over the hosts"
    );
    println!();
    println!(
        "| configuration | runs/s | × 1 host on PostgreSQL | accepted/s | CPU ms per run: hosts / PostgreSQL / client | load (1 min) start → end |"
    );
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, f: &Figures, base: f64| {
        println!(
            "| {name} | {:.1} | {:.2} | {:.0} | {:.1} / {:.1} / {:.1} | {} → {} |",
            f.rate,
            f.rate / base,
            f.accept_rate,
            f.host_cpu_ms,
            f.pg_cpu_ms,
            f.client_cpu_ms,
            f.load_start,
            f.load_end
        );
    };
    let database = || {
        skiff_server::testing::postgres::database().expect(
            "the pool benchmark needs PostgreSQL (Debian's `initdb`/`pg_ctl` in /usr/lib/postgresql/*/bin, or \
             SKIFF_PG_BIN): `scripts/setup.sh` installs it",
        )
    };
    let mut base = None;
    for hosts in 1..=3 {
        let db = database();
        let f = measure(hosts, Some(&db), n, true).await;
        let b = *base.get_or_insert(f.rate);
        row(&format!("{hosts} host{} on PostgreSQL, jobs leased", if hosts > 1 { "s" } else { "" }), &f, b);
    }
    // What leasing each job costs: the same pools leasing whole runs (`lease-jobs = false`).
    for hosts in [1, 3] {
        let db = database();
        let f = measure(hosts, Some(&db), n, false).await;
        row(
            &format!("{hosts} host{} on PostgreSQL, runs leased whole", if hosts > 1 { "s" } else { "" }),
            &f,
            base.unwrap(),
        );
    }
    let f = measure(1, None, n, false).await;
    row("1 host on SQLite (its default store)", &f, base.unwrap());
}
