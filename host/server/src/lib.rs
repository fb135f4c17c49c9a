//! `skiff serve`: the host service. One process answers webhooks (`/hooks/{app}`, the master's
//! part, verified and matched by `skiff-edge-core`) and runs what they ask for: dispatches are
//! committed to a SQLite run store before they are acknowledged, a scheduler starts them under
//! global, per-app and concurrency-group limits, the pipeline engine runs them, and their
//! status, usage and logs are served by the Open API (`/v1/…`).
//!
//! With `--role host` only the host routes are served, behind a remote master that sends
//! signed dispatches to `/v1/dispatch`.
//!
//! The `skiff` binary holds the command line (`skiff serve`'s arguments, and `skiff trigger` and
//! `skiff runs …`, the API's clients).

pub mod api;
pub mod auth;
pub mod config;
pub mod conn;
pub mod cron;
pub mod crypto;
pub mod logs;
pub mod openapi;
pub mod repository;
pub mod request;
pub mod scheduler;
pub mod sse;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use api::app;
pub use config::ServeConfig;

use skiff_pipeline::StepExecutor;
use skiff_runtime::artifact_store::{ArtifactStore, LocalArtifacts};

/// Which routes a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Webhooks and host routes (one process).
    #[default]
    All,
    /// Host routes only (`/v1/…`), behind a remote master.
    Host,
}

/// The artifact store of a host: `artifacts/` in its data directory. The executor that runs the
/// steps and the API that lists and serves artifacts open the same one.
pub fn artifact_store(config: &ServeConfig) -> Arc<dyn ArtifactStore> {
    Arc::new(LocalArtifacts::new(config.data_dir.join("artifacts")))
}

/// Everything the routes, the scheduler and the cron loop share.
pub struct Shared {
    /// The configuration.
    pub config: Arc<ServeConfig>,
    /// The run store.
    pub store: Arc<store::Store>,
    /// The log store.
    pub logs: Arc<dyn logs::LogStore>,
    /// Live log channels.
    pub hub: logs::Hub,
    /// Runs steps.
    pub executor: Arc<dyn StepExecutor>,
    /// The routes served.
    pub role: Role,
    running: Mutex<HashMap<i64, scheduler::Running>>,
    /// Runs whose commit is being fetched.
    preparing: Mutex<std::collections::HashSet<i64>>,
    /// Runs whose workspace holds a fresh checkout made when they were prepared: its commit
    /// and the pipeline read from it.
    checked_out: Mutex<HashMap<i64, (String, skiff_pipeline::Plan)>>,
    /// The object caches of the repositories the apps build.
    pub repos: Arc<crate::repository::fetch::RepoCache>,
    /// Commit statuses on their way to the forges.
    pub statuses: crate::repository::status::Reporter,
    /// The runs' artifacts (see [`artifact_store`]).
    pub artifacts: Arc<dyn ArtifactStore>,
    accept: std::sync::mpsc::Sender<Pending>,
    wake: Notify,
    halted: AtomicBool,
    draining: AtomicBool,
}

impl Shared {
    /// State over an opened store and log store. Runs left running by a stopped host are
    /// recovered first (see [`store::Store::recover`]).
    pub fn new(
        config: ServeConfig,
        store: Arc<store::Store>,
        logs: Arc<dyn logs::LogStore>,
        executor: Arc<dyn StepExecutor>,
        role: Role,
    ) -> anyhow::Result<Arc<Self>> {
        let recovered = store.recover(config.recovery == config::Recovery::Retry)?;
        for id in &recovered.retried {
            tracing::warn!(run = id, "run {id} was running when the host stopped; it runs again");
            logs.remove(*id).ok();
        }
        for id in &recovered.failed {
            tracing::warn!(run = id, "run {id} was running when the host stopped; it is marked failed");
        }
        let (accept, rx) = std::sync::mpsc::channel();
        let writer = store.clone();
        std::thread::Builder::new()
            .name("skiff-accept".into())
            .spawn(move || group_commit(&writer, rx))
            .context("starting the run store's writer")?;
        let repos = Arc::new(crate::repository::fetch::RepoCache::new(config.data_dir.join("repos")));
        let client = crate::repository::status::Reporter::http_client().map_err(anyhow::Error::msg)?;
        let statuses = crate::repository::status::Reporter::new(client, Default::default());
        let artifacts = artifact_store(&config);
        Ok(Arc::new(Shared {
            accept,
            config: Arc::new(config),
            store,
            logs,
            hub: logs::Hub::default(),
            executor,
            role,
            running: Mutex::new(HashMap::new()),
            preparing: Mutex::default(),
            checked_out: Mutex::default(),
            repos,
            statuses,
            artifacts,
            wake: Notify::new(),
            halted: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }))
    }

    /// State with the store and logs in the config's data directory.
    pub fn open(config: ServeConfig, executor: Arc<dyn StepExecutor>, role: Role) -> anyhow::Result<Arc<Self>> {
        let data = config.data_dir.clone();
        std::fs::create_dir_all(&data).with_context(|| format!("creating the data directory {}", data.display()))?;
        let store = Arc::new(store::Store::open(&data.join("skiff.db"))?);
        let logs: Arc<dyn logs::LogStore> = Arc::new(logs::FsLogStore::new(data.join("logs")));
        Self::new(config, store, logs, executor, role)
    }

    /// Stores a run durably (committed and synced) and wakes the scheduler. Runs accepted at
    /// the same time share one commit.
    pub async fn enqueue(&self, run: store::NewRun) -> anyhow::Result<store::Inserted> {
        let stopped = || anyhow::anyhow!("the run store's writer has stopped");
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.accept.send((run, tx)).map_err(|_| stopped())?;
        let inserted = rx.await.map_err(|_| stopped())??;
        if !inserted.duplicate {
            self.wake();
        }
        Ok(inserted)
    }

    /// Whether [`Server::halt`] was called.
    pub fn halted(&self) -> bool {
        self.halted.load(Ordering::SeqCst)
    }

    /// Whether [`Server::drain`] was called: no run starts any more.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

type Pending = (store::NewRun, tokio::sync::oneshot::Sender<anyhow::Result<store::Inserted>>);

/// Group commit: takes every run waiting to be accepted, stores them in one transaction, and
/// answers each. One sync serves a whole burst.
fn group_commit(store: &store::Store, rx: std::sync::mpsc::Receiver<Pending>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (runs, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        match store.insert_runs(&runs) {
            Ok(results) => {
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(anyhow::anyhow!("storing the run: {e:#}")));
                }
            }
        }
    }
}

/// A running server.
pub struct Server {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Its state.
    pub shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Stops everything at once, as a killed process would: runs in progress are left
    /// `running` in the store, for the next start to recover.
    pub fn halt(self) {
        self.shared.halted.store(true, Ordering::SeqCst);
        self.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
        let running = self.shared.running.lock().unwrap_or_else(|e| e.into_inner());
        for r in running.values() {
            r.abort();
        }
    }

    /// Starts no more runs and waits, at most `within`, for the ones in progress to end.
    /// Requests are still answered meanwhile: dispatches are stored and queued for the next
    /// start, and `/healthz` answers 503 so a load balancer sends new work elsewhere. Returns
    /// how many runs were still in progress.
    pub async fn drain(&self, within: std::time::Duration) -> usize {
        self.shared.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = self.shared.running_count();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Stops serving and halts. Open connections (a log follower, say) get a few seconds to
    /// close; runs still in progress are left for the next start to recover.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(http) = self.tasks.pop() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), http).await;
        }
        self.halt();
    }
}

/// Starts serving `config` on its listen address: scheduler, cron, HTTP.
pub async fn start(config: ServeConfig, executor: Arc<dyn StepExecutor>, role: Role) -> anyhow::Result<Server> {
    let listen = config.listen.clone();
    let shared = Shared::open(config, executor, role)?;
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let mut tasks = vec![tokio::spawn(shared.clone().scheduler_loop()), tokio::spawn(cron::run(shared.clone()))];
    let router = app(shared.clone());
    let limits = shared.config.conn;
    // Open connections (a log follower, say) get a few seconds to close at the end.
    tasks.push(tokio::spawn(conn::serve(listener, router, limits, stop.clone(), std::time::Duration::from_secs(5))));
    Ok(Server { addr, shared, stop, tasks })
}
