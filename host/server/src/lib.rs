//! `skiff serve`: the host service. One process answers webhooks (`/hooks/{app}`, the master's
//! part, verified and matched by `skiff-edge-core`) and runs what they ask for: dispatches are
//! committed to the run store (SQLite) before they are acknowledged, the scheduler leases them
//! from the run queue under global, per-app and concurrency-group limits, the pipeline engine
//! runs them, and their status, usage and logs are served by the Open API (`/v1/…`).
//!
//! Storage is behind traits: [`store::RunStore`] (runs, jobs, steps, cron, recovery),
//! [`queue::RunQueue`] (leases), [`logs::LogStore`] and the runtime's `ArtifactStore`; the API
//! answers with its own types ([`api::Run`], …), not the store's rows.
//!
//! With `--role host` only the host routes are served, behind a remote master that sends
//! signed dispatches to `/v1/dispatch`.
//!
//! The `skiff` binary holds the command line (`skiff serve`'s arguments, and `skiff trigger` and
//! `skiff runs …`, the API's clients).

pub mod api;
pub mod auth;
pub mod bucket;
pub mod config;
pub mod conn;
pub mod console;
pub mod cron;
pub mod crypto;
pub mod logs;
pub mod openapi;
pub mod provenance;
pub mod queue;
pub mod repository;
pub mod request;
pub mod retention;
pub mod scheduler;
pub mod sse;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::sync::Arc;

use anyhow::Context as _;
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

/// The artifact store of a host: the bucket of `[objects]`, shared by every host, or else
/// `artifacts/` in its data directory, and the apps' caches in `cache/`, under the config's
/// caps. The executor that runs the steps, the API that lists and serves artifacts and the
/// retention sweep open the same one.
pub fn artifact_store(config: &ServeConfig) -> Arc<dyn ArtifactStore> {
    if let Some(b) = &config.bucket {
        return b.clone();
    }
    Arc::new(
        LocalArtifacts::new(config.data_dir.join("artifacts"))
            .with_cache(config.data_dir.join("cache"), config.cache.clone()),
    )
}

/// Everything the routes, the scheduler and the cron loop share: the configuration, the
/// stores, the services, and the scheduler.
pub struct Shared {
    /// The configuration.
    pub config: Arc<ServeConfig>,
    /// The run store.
    pub store: Arc<dyn store::RunStore>,
    /// The run queue (the same database as the run store, for SQLite).
    pub queue: Arc<dyn queue::Queue>,
    /// The log store.
    pub logs: Arc<dyn logs::LogStore>,
    /// Live log channels.
    pub hub: Arc<logs::Hub>,
    /// Runs steps.
    pub executor: Arc<dyn StepExecutor>,
    /// The routes served.
    pub role: Role,
    /// The object caches of the repositories the apps build.
    pub repos: Arc<crate::repository::fetch::RepoCache>,
    /// Commit statuses on their way to the forges.
    pub statuses: crate::repository::status::Reporter,
    /// The runs' artifacts (see [`artifact_store`]).
    pub artifacts: Arc<dyn ArtifactStore>,
    /// Starts, supervises and cancels runs.
    pub scheduler: Arc<scheduler::Scheduler>,
}

impl Shared {
    /// State over opened stores. Runs left running by a stopped host are recovered first (see
    /// [`store::RunStore::recover`]).
    pub fn new(
        config: ServeConfig,
        store: Arc<dyn store::RunStore>,
        queue: Arc<dyn queue::Queue>,
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
        let config = Arc::new(config);
        let repos = Arc::new(crate::repository::fetch::RepoCache::new(config.data_dir.join("repos")));
        let client = crate::repository::status::Reporter::http_client().map_err(anyhow::Error::msg)?;
        let statuses = crate::repository::status::Reporter::new(client, Default::default());
        let artifacts = artifact_store(&config);
        let hub = Arc::new(logs::Hub::default());
        let scheduler = Arc::new(scheduler::Scheduler::new(scheduler::Handles {
            config: config.clone(),
            store: store.clone(),
            queue: queue.clone(),
            logs: logs.clone(),
            hub: hub.clone(),
            executor: executor.clone(),
            repos: repos.clone(),
            statuses: statuses.clone(),
            resolver: Arc::new(skiff_registry::Resolver::new(
                skiff_runtime::component_store::ComponentStore::default_store(),
                skiff_registry::client::ClientOptions { insecure: config.registry_insecure, credentials: None },
            )),
        })?);
        Ok(Arc::new(Shared { config, store, queue, logs, hub, executor, role, repos, statuses, artifacts, scheduler }))
    }

    /// State with the stores the config names: the runs and their queue in `skiff.db` in the
    /// data directory with the logs in its `logs/`, or all of them in PostgreSQL (`store`),
    /// which every host and instance sharing it reads; with `[objects]`, finished logs move to
    /// the bucket.
    pub fn open(config: ServeConfig, executor: Arc<dyn StepExecutor>, role: Role) -> anyhow::Result<Arc<Self>> {
        let data = config.data_dir.clone();
        std::fs::create_dir_all(&data).with_context(|| format!("creating the data directory {}", data.display()))?;
        let (store, queue, mut logs): (Arc<dyn store::RunStore>, Arc<dyn queue::Queue>, Arc<dyn logs::LogStore>) =
            match &config.store {
                config::StoreLocation::Sqlite => {
                    let db = Arc::new(store::SqliteStore::open(&data.join("skiff.db"))?);
                    (db.clone(), db, Arc::new(logs::FsLogStore::new(data.join("logs"))))
                }
                config::StoreLocation::Postgres(url) => {
                    let db = Arc::new(store::PostgresStore::connect(url)?);
                    tracing::info!("runs and their logs are stored in {}", db.url());
                    (db.clone(), db.clone(), db)
                }
            };
        if let Some(bucket) = &config.bucket {
            tracing::info!("finished logs, artifacts and caches are kept in {}", bucket.shown());
            logs = Arc::new(bucket::BucketLogs::new(logs, bucket.clone()));
        }
        Self::new(config, store, queue, logs, executor, role)
    }

    /// Stores a run durably and wakes the scheduler (see [`scheduler::Scheduler::enqueue`]).
    pub async fn enqueue(&self, run: store::NewRun) -> anyhow::Result<store::Inserted> {
        self.scheduler.enqueue(run).await
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
        self.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
        self.shared.scheduler.halt();
    }

    /// Starts no more runs and waits, at most `within`, for the ones in progress to end.
    /// Requests are still answered meanwhile: dispatches are stored and queued for the next
    /// start, and `/healthz` answers 503 so a load balancer sends new work elsewhere. Returns
    /// how many runs were still in progress.
    pub async fn drain(&self, within: std::time::Duration) -> usize {
        self.shared.scheduler.drain();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = self.shared.scheduler.running_count();
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
    let mut tasks = vec![
        tokio::spawn(shared.scheduler.clone().run()),
        tokio::spawn(cron::run(shared.clone())),
        tokio::spawn(retention::run(shared.clone())),
    ];
    let router = app(shared.clone());
    let limits = shared.config.conn;
    // Open connections (a log follower, say) get a few seconds to close at the end.
    tasks.push(tokio::spawn(conn::serve(listener, router, limits, stop.clone(), std::time::Duration::from_secs(5))));
    Ok(Server { addr, shared, stop, tasks })
}
