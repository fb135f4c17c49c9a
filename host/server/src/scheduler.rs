//! The scheduler: takes available runs from the [`RunQueue`] in order and starts those that fit
//! under the host's limit, their app's limit and their concurrency group.
//!
//! A run is prepared once before it can start: its pipeline is loaded and its
//! `concurrency.group` evaluated. As on GitHub, a group holds one running and one pending run:
//! a newer run cancels the older pending one, and with `cancel-in-progress` the running one too.
//!
//! A run starts by leasing it from the queue, as this host ([`Scheduler::owner`]); the lease is
//! renewed while it runs, and completing it records how it ended. A run whose lease expired
//! (another host stopped renewing it) is taken over as at a restart: run again once with
//! `recovery = "retry"`, else failed with the reason.

mod jobs;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::config::{AppConfig, PipelineSource, Recovery, ServeConfig};
use super::logs::{Hub, LiveEvent, LogRecord, LogStore};
use super::queue::{JobLease, JobOffer, JobState, Queue};
use super::repository::fetch::RepoCache;
use super::repository::status::Reporter;
use super::store::{self, Inserted, NewRun, Run, RunStatus, RunStore, Usage, now_ms};
use skiff_pipeline::expr::Scope;
use skiff_pipeline::{
    Plan, RunEvent, RunObserver, RunOptions, RunReport, Status, StepExecutor, load_file, load_str, run_pipeline,
};

/// The most runs of one app that may wait for approvals at once; a job that would be one more
/// fails with the reason.
pub const MAX_WAITING_RUNS_PER_APP: usize = 16;

/// How many available runs one pass looks at.
const PASS: usize = 256;

/// A run in progress.
struct Running {
    app: String,
    /// The attempt this host runs.
    attempt: i64,
    group: Option<String>,
    abort: AbortHandle,
    cancel_reason: Option<String>,
    /// Its lease is no longer this host's: it runs elsewhere now, and its end is not this
    /// host's to tell.
    lost: bool,
    /// Its jobs waiting for an approval.
    waiting: usize,
    /// Its jobs that have started and not ended.
    jobs_running: usize,
    /// When its lease was last taken or renewed.
    renewed: std::time::Instant,
    /// Approved, and waiting for a slot to go on: it goes before queued runs.
    resuming: bool,
}

impl Running {
    fn new(app: String, attempt: i64, group: Option<String>, abort: AbortHandle) -> Self {
        Running {
            app,
            attempt,
            group,
            abort,
            cancel_reason: None,
            lost: false,
            waiting: 0,
            jobs_running: 0,
            resuming: false,
            renewed: std::time::Instant::now(),
        }
    }

    /// All it does is wait for approvals: it holds no slot of the host's or its app's limit
    /// (it keeps its concurrency group).
    fn idle(&self) -> bool {
        self.waiting > 0 && self.jobs_running == 0
    }

    fn holds_slot(&self) -> bool {
        !self.idle() || self.resuming
    }
}

/// What [`Scheduler::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The run was queued and is now cancelled.
    Queued,
    /// The run was running and was stopped.
    Running,
    /// The run had already ended.
    AlreadyOver,
}

/// What the scheduler works with: the host's stores and services, shared with the routes.
pub(crate) struct Handles {
    pub config: Arc<ServeConfig>,
    pub store: Arc<dyn RunStore>,
    pub queue: Arc<dyn Queue>,
    pub logs: Arc<dyn LogStore>,
    pub hub: Arc<Hub>,
    pub executor: Arc<dyn StepExecutor>,
    pub repos: Arc<RepoCache>,
    pub statuses: Reporter,
    /// Fetches and checks shared components before a run starts.
    pub resolver: Arc<skiff_registry::Resolver>,
}

/// What preparing a run did to the store's rows.
enum Prepared {
    /// The run is prepared in memory; nothing changed in the store, not even its prepared flag
    /// (the caller records it).
    AsRead,
    /// The run failed or was skipped, its group was settled, or its inputs were recorded.
    Changed,
}

/// The scheduler of a host: accepts runs into the store, prepares them, starts them under the
/// limits, supervises them, and keeps what is in progress (runs, fetches, checkouts).
pub struct Scheduler {
    config: Arc<ServeConfig>,
    store: Arc<dyn RunStore>,
    queue: Arc<dyn Queue>,
    logs: Arc<dyn LogStore>,
    hub: Arc<Hub>,
    executor: Arc<dyn StepExecutor>,
    resolver: Arc<skiff_registry::Resolver>,
    repos: Arc<RepoCache>,
    statuses: Reporter,
    /// Who this host is, as the owner of its leases.
    owner: String,
    /// Signs the provenance of runs that upload or deploy (created on first start).
    provenance: Arc<crate::provenance::HostKey>,
    accept: std::sync::mpsc::Sender<Pending>,
    /// Runs in progress.
    running: Mutex<HashMap<i64, Running>>,
    /// Runs whose commit is being fetched.
    preparing: Mutex<HashSet<i64>>,
    /// Runs whose workspace holds a fresh checkout made when they were prepared: its commit
    /// and the pipeline read from it.
    checked_out: Mutex<HashMap<i64, (String, Plan)>>,
    /// The pipelines read when runs of apps without a repository were prepared: a run reads
    /// its pipeline once.
    planned: Mutex<HashMap<i64, Plan>>,
    wake: Notify,
    /// An approval or rejection was recorded.
    decided: Notify,
    /// A run ended: a slot may be free.
    slots: Notify,
    halted: AtomicBool,
    draining: AtomicBool,
    /// Jobs this host leased from the pool and runs (`lease-jobs`).
    jobs_here: Mutex<HashMap<jobs::JobId, jobs::JobHere>>,
    /// A job was offered, or one here ended: look at the pool now.
    job_wake: Notify,
    /// A job here ended: the graph waiting for it looks now.
    job_done: tokio::sync::broadcast::Sender<jobs::JobId>,
}

type Pending = (NewRun, tokio::sync::oneshot::Sender<anyhow::Result<Inserted>>);

/// Group commit: takes every run waiting to be accepted, stores them in one transaction, and
/// answers each. One sync serves a whole burst.
fn group_commit(store: &dyn RunStore, rx: std::sync::mpsc::Receiver<Pending>) {
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

/// A lease owner unique to this scheduler: its process and when it started.
fn new_owner() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("pid {} at {} #{}", std::process::id(), now_ms(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Loads an app's pipeline, with `workspace` as the folder a relative pipeline path starts from.
/// (A pipeline from the commit is read by [`Scheduler::commit_plan`].)
pub fn load_plan(app: &AppConfig, workspace: &Path) -> Result<Plan, String> {
    let r = match &app.pipeline {
        PipelineSource::Inline(y) => load_str(y, &format!("{} (pipeline-yaml)", app.name()), workspace),
        PipelineSource::Path(p) => load_file(&workspace.join(p)),
        PipelineSource::Commit(p) => load_file(&workspace.join(p.as_deref().unwrap_or(DEFAULT_PIPELINES[0]))),
    };
    r.map_err(|d| format!("the pipeline of app `{}` is invalid:\n{d}", app.name()))
}

/// Where a commit's pipeline is looked for, in order (a folder ends in `/`).
const DEFAULT_PIPELINES: [&str; 3] = [".skiff/pipeline.yaml", ".skiff/pipelines/", "serverless-pipeline.yaml"];

/// A component path of a commit's pipeline must stay in the workspace (symlinks resolved), so
/// a pushed pipeline cannot load files from elsewhere on the host.
fn confine_components(plan: &Plan, workspace: &Path) -> Result<(), String> {
    let root = workspace.canonicalize().map_err(|e| format!("the workspace: {e}"))?;
    for job in &plan.jobs {
        for step in &job.steps {
            if let skiff_pipeline::plan::Uses::Path { written, path } = &step.uses {
                let real = path.canonicalize().map_err(|e| format!("component `{written}`: {e}"))?;
                if !real.starts_with(&root) {
                    return Err(format!(
                        "component `{written}` is outside the repository: a pipeline from a commit may only use \
                         components inside it"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn source_dir(app: &AppConfig) -> PathBuf {
    app.workspace.clone().unwrap_or_default()
}

/// Points a plan read in `from` at the same files copied into `to`.
fn rebase(plan: &mut Plan, from: &Path, to: &Path) {
    let moved = |p: &Path| p.strip_prefix(from).map(|rel| to.join(rel)).unwrap_or_else(|_| p.to_path_buf());
    plan.dir = moved(&plan.dir);
    for job in &mut plan.jobs {
        for step in &mut job.steps {
            if let skiff_pipeline::plan::Uses::Path { path, .. } = &mut step.uses {
                *path = moved(path);
            }
        }
    }
}

fn scope_for(run: &Run) -> Scope {
    // The engine's own constructor, so `concurrency.group` sees the `run` the steps see.
    RunOptions {
        run_id: run.id.to_string(),
        run_number: run.number.max(0) as u64,
        run_attempt: run.attempt.clamp(1, u32::MAX as i64) as u32,
        event: run.event.clone(),
        body: run.body.clone(),
        inputs: run.inputs.clone(),
        ..RunOptions::default()
    }
    .scope()
}

impl Scheduler {
    /// A scheduler over the host's stores, with its writer thread (see [`Self::enqueue`]).
    pub(crate) fn new(h: Handles) -> anyhow::Result<Self> {
        let (accept, rx) = std::sync::mpsc::channel();
        let provenance = Arc::new(crate::provenance::HostKey::load_or_create(&h.config.data_dir)?);
        // Folders of jobs leased from the pool by this host's previous life: those jobs run
        // elsewhere now.
        if let Ok(work) = std::fs::read_dir(h.config.data_dir.join("work")) {
            for e in work.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("job-")) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let writer = h.store.clone();
        std::thread::Builder::new()
            .name("skiff-accept".into())
            .spawn(move || group_commit(writer.as_ref(), rx))
            .context("starting the run store's writer")?;
        Ok(Scheduler {
            config: h.config,
            store: h.store,
            queue: h.queue,
            logs: h.logs,
            hub: h.hub,
            executor: h.executor,
            resolver: h.resolver,
            repos: h.repos,
            statuses: h.statuses,
            owner: new_owner(),
            provenance,
            accept,
            running: Mutex::default(),
            preparing: Mutex::default(),
            checked_out: Mutex::default(),
            planned: Mutex::default(),
            wake: Notify::new(),
            decided: Notify::new(),
            slots: Notify::new(),
            halted: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            jobs_here: Mutex::default(),
            job_wake: Notify::new(),
            job_done: tokio::sync::broadcast::channel(1024).0,
        })
    }

    /// Who this host is, as the owner of the leases of the runs it runs.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The key this host signs provenance with.
    pub fn provenance_key(&self) -> &crate::provenance::HostKey {
        &self.provenance
    }

    /// Stores a run durably (committed and synced) and wakes the scheduler. Runs accepted at
    /// the same time share one commit.
    pub async fn enqueue(&self, run: NewRun) -> anyhow::Result<Inserted> {
        let stopped = || anyhow::anyhow!("the run store's writer has stopped");
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.accept.send((run, tx)).map_err(|_| stopped())?;
        let inserted = rx.await.map_err(|_| stopped())??;
        if !inserted.duplicate {
            self.wake();
        }
        Ok(inserted)
    }

    /// Asks the scheduler to look at the queue.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs the scheduler until the process ends: a pass over the queue whenever woken, and
    /// the leases of the runs in progress renewed every quarter of `lease-timeout-secs` (with
    /// a pass, which finds runs whose lease expired elsewhere).
    pub async fn run(self: Arc<Self>) {
        let mut beat = tokio::time::interval(self.config.lease_ttl / 4);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if self.config.leases_jobs() {
            tokio::spawn(self.clone().lease_jobs());
        }
        loop {
            if let Err(e) = self.schedule() {
                tracing::error!("scheduler: {e:#}");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = beat.tick() => self.heartbeat(),
            }
        }
    }

    /// Renews the lease of every run in progress. A run whose lease is no longer this host's
    /// (another host took it over, or it was cancelled through another host) is stopped; so
    /// is one whose lease this host could not renew for half the lease's time (the database
    /// is out of reach): it stops well before the lease lapses and another host may take the
    /// run over, since two must never run it at once.
    fn heartbeat(&self) {
        let ttl = self.config.lease_ttl;
        let ids: Vec<i64> = self.running().keys().copied().collect();
        for id in ids {
            let renewed = self.queue.extend(id, &self.owner, ttl);
            let mut running = self.running();
            let Some(r) = running.get_mut(&id) else { continue };
            let why = match renewed {
                Ok(true) => {
                    r.renewed = std::time::Instant::now();
                    continue;
                }
                Ok(false) => {
                    tracing::warn!(
                        run = id,
                        "run {id} is no longer this host's to run (its lease was lost); stopping it"
                    );
                    "this host lost the run's lease"
                }
                Err(e) if r.renewed.elapsed() >= ttl / 2 => {
                    tracing::error!(
                        run = id,
                        "run {id}: its lease could not be renewed for {:?} ({e:#}); stopping it before the lease \
                         lapses and another host takes it over",
                        r.renewed.elapsed()
                    );
                    "this host could not reach the run store to renew the run's lease"
                }
                Err(e) => {
                    tracing::error!(run = id, "renewing its lease: {e:#}");
                    continue;
                }
            };
            r.lost = true;
            r.cancel_reason = Some(why.into());
            r.abort.abort();
        }
    }

    /// Whether [`Self::halt`] was called.
    pub fn halted(&self) -> bool {
        self.halted.load(Ordering::SeqCst)
    }

    /// Whether [`Self::drain`] was called: no run starts any more.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Starts no more runs.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Stops every run in progress at once, as a killed process would: they stay `running`
    /// (and leased) in the store, for the next start to recover.
    pub fn halt(&self) {
        self.halted.store(true, Ordering::SeqCst);
        for r in self.running().values() {
            r.abort.abort();
        }
        for j in self.jobs_here().values() {
            j.abort.abort();
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether run `id` is in progress on this host (its followers hear it through the hub).
    pub fn runs_here(&self, id: i64) -> bool {
        self.running().contains_key(&id)
    }

    /// How many runs are in progress, with the jobs of the pool this host runs.
    pub fn running_count(&self) -> usize {
        self.running().len() + self.jobs_here().len()
    }

    /// One pass over the queue; none while the host drains.
    pub fn schedule(self: &Arc<Self>) -> anyhow::Result<()> {
        if self.draining() {
            return Ok(());
        }
        let mut available = self.queue.available(PASS)?;
        // Runs prepared in this pass with nothing to record but the flag: their lease records
        // it (one write fewer between a webhook and its first step); those not started in this
        // pass are recorded after it.
        let mut unrecorded: Vec<i64> = Vec::new();
        if available.iter().any(|r| !r.prepared) {
            // Read the rows again only when preparing changed more than the prepared flag (a run
            // failed or was skipped, a concurrency group was settled, inputs were recorded):
            // each read parses every available run's event and body.
            let mut changed = false;
            for run in available.iter_mut().filter(|r| !r.prepared) {
                match self.config.apps.get(&run.app) {
                    // Fetching takes a while: it happens beside the scheduler, which comes back
                    // when it is done.
                    Some(app) if app.repo.is_some() => self.spawn_prepare_commit(run.clone()),
                    _ => match self.prepare(run)? {
                        Prepared::AsRead => {
                            run.prepared = true;
                            unrecorded.push(run.id);
                        }
                        Prepared::Changed => changed = true,
                    },
                }
            }
            if changed {
                available = self.queue.available(PASS)?;
            }
        }
        let result = self.start_available(available, &mut unrecorded);
        for id in unrecorded {
            self.store.set_prepared(id, None, false)?;
        }
        result
    }

    /// Starts what the limits allow of `available`, in order; a started run is taken off
    /// `unrecorded`.
    fn start_available(self: &Arc<Self>, available: Vec<Run>, unrecorded: &mut Vec<i64>) -> anyhow::Result<()> {
        // An app's runs start in order: none passes one of the same app still being fetched.
        let mut waiting: Vec<String> = Vec::new();
        for run in available {
            if !run.prepared || waiting.contains(&run.app) {
                waiting.push(run.app.clone());
                continue;
            }
            // Runs whose jobs need labels this host lacks are another host's (the API says
            // which labels they wait for); what this host prepared for one goes.
            // With jobs leased across the pool, any host runs the graph and each job goes to a
            // host with its labels.
            if !self.config.leases_jobs() && !run.labels.iter().all(|l| self.config.labels.contains(l)) {
                self.forget_prepared(run.id);
                continue;
            }
            if run.status == RunStatus::Running && !self.may_take_over(&run)? {
                continue;
            }
            let mut running = self.running();
            if running.values().filter(|r| r.holds_slot()).count() >= self.config.max_concurrent_runs {
                break;
            }
            let Some(app) = self.config.apps.get(&run.app) else {
                drop(running);
                self.fail_queued(run.id, &format!("app `{}` is not configured on this host", run.app))?;
                continue;
            };
            if running.values().filter(|r| r.app == run.app && r.holds_slot()).count() >= app.max_concurrent_runs {
                continue;
            }
            if let Some(g) = &run.concurrency_group
                && running.values().any(|r| r.group.as_ref() == Some(g))
            {
                continue;
            }
            let Some(lease) = self.queue.lease_within(
                run.id,
                &self.owner,
                self.config.lease_ttl,
                &crate::queue::Admission { group: run.concurrency_group.clone(), app_max: app.max_runs_across_hosts },
            )?
            else {
                continue;
            };
            unrecorded.retain(|&id| id != run.id);
            // Taken over: a new attempt, so the row has changed.
            let run = if lease.taken_over {
                let Some(r) = self.store.run(run.id)? else { continue };
                r
            } else {
                run
            };
            self.report_status(run.id, RunStatus::Running, None);
            let id = run.id;
            let group = run.concurrency_group.clone();
            let app_name = run.app.clone();
            let attempt = run.attempt;
            let timeout = app.run_timeout;
            let this = self.clone();
            let app = app.clone();
            let task = tokio::spawn(async move { this.execute(run, app).await });
            let r = Running::new(app_name, attempt, group, task.abort_handle());
            running.insert(id, r);
            drop(running);
            tokio::spawn(self.clone().supervise(id, task, timeout));
        }
        Ok(())
    }

    /// The labels a host needs to take a run: those of all its jobs, unless jobs are leased
    /// one by one (then each job waits for its own, and the run for none).
    fn run_labels(&self, plan: &Plan) -> Vec<String> {
        if self.config.leases_jobs() { Vec::new() } else { plan.labels() }
    }

    /// A running run whose lease expired (its host stopped renewing it) is taken over as at a
    /// restart: it runs again once with `recovery = "retry"`; otherwise it fails with the reason.
    /// One of this host's own is not: the heartbeat renews it.
    fn may_take_over(&self, run: &Run) -> anyhow::Result<bool> {
        if self.running().contains_key(&run.id) {
            return Ok(false);
        }
        let retry = self.config.recovery == Recovery::Retry;
        if retry && run.interruptions == 0 {
            tracing::warn!(run = run.id, "run {} was running on a host that stopped; it runs again here", run.id);
            return Ok(true);
        }
        let why = if retry {
            "the host running this run stopped, for the second time; it was not retried again"
        } else {
            "the host running this run stopped (recovery = \"fail\" in the config)"
        };
        if self.store.finish_run(run.id, RunStatus::Failure, Some(why))? {
            self.ended(run.id, RunStatus::Failure, Some(why));
        }
        Ok(false)
    }

    fn fail_queued(&self, id: i64, why: &str) -> anyhow::Result<()> {
        if self.store.finish_run(id, RunStatus::Failure, Some(why))? {
            self.ended(id, RunStatus::Failure, Some(why));
        }
        Ok(())
    }

    /// Loads a queued run's pipeline and settles its concurrency group.
    fn prepare(self: &Arc<Self>, run: &Run) -> anyhow::Result<Prepared> {
        // Pending on the commit from here, before the run can start (and report running).
        self.report_status(run.id, RunStatus::Queued, None);
        let Some(app) = self.config.apps.get(&run.app) else {
            self.fail_queued(run.id, &format!("app `{}` is not configured on this host", run.app))?;
            return Ok(Prepared::Changed);
        };
        let plan = match load_plan(app, &source_dir(app)) {
            Ok(p) => p,
            Err(e) => {
                self.fail_queued(run.id, &e)?;
                return Ok(Prepared::Changed);
            }
        };
        match self.gate(run, &plan) {
            Ok(true) => {
                let records_inputs =
                    run.trigger == "manual" && plan.triggers.as_ref().is_some_and(|t| t.workflow_dispatch.is_some());
                let labels = self.run_labels(&plan);
                if !labels.is_empty() {
                    self.store.set_labels(run.id, &labels)?;
                }
                let as_read = plan.concurrency.is_none() && !records_inputs && labels.is_empty();
                self.settle_group(run, &plan, as_read)?;
                self.planned.lock().unwrap_or_else(|e| e.into_inner()).insert(run.id, plan);
                Ok(if as_read { Prepared::AsRead } else { Prepared::Changed })
            }
            Ok(false) => Ok(Prepared::Changed),
            Err(e) => {
                self.fail_queued(run.id, &e)?;
                Ok(Prepared::Changed)
            }
        }
    }

    /// The pipeline's own `on:` decides whether the run goes ahead (the app's triggers were
    /// the outer gate): a webhook event it does not take ends the run as skipped, with the
    /// reason; a manual run's inputs are checked against `workflow_dispatch` and get its
    /// defaults. `Ok(false)`: the run was skipped.
    fn gate(&self, run: &Run, plan: &Plan) -> Result<bool, String> {
        let Some(triggers) = &plan.triggers else { return Ok(true) };
        match run.trigger.as_str() {
            "manual" => {
                if let Some(w) = &triggers.workflow_dispatch {
                    let inputs = w.resolve(&run.inputs).map_err(|e| format!("the run's inputs: {e}"))?;
                    self.store.set_inputs(run.id, &inputs).map_err(|e| format!("recording the inputs: {e:#}"))?;
                }
                Ok(true)
            }
            "push" | "pull_request" | "tag" | "release" | "custom" => {
                let mut event = run.event.clone();
                if let Some(o) = event.as_object_mut() {
                    o.insert("body".into(), run.body.clone());
                }
                let Ok(event) = serde_json::from_value::<skiff_edge_core::Event>(event) else { return Ok(true) };
                let app = skiff_edge_core::App {
                    name: run.app.clone(),
                    environment: None,
                    repository: None,
                    on: triggers.clone(),
                };
                let decision = skiff_edge_core::decide(&event, std::slice::from_ref(&app)).remove(0);
                if decision.is_dispatch() {
                    return Ok(true);
                }
                let why = format!("skipped: the pipeline's `on:` does not take this event ({})", decision.reason());
                if self.store.finish_run(run.id, RunStatus::Skipped, Some(&why)).map_err(|e| format!("{e:#}"))? {
                    self.ended(run.id, RunStatus::Skipped, Some(&why));
                }
                Ok(false)
            }
            // Schedules, reruns and the rest were decided by the host's own configuration.
            _ => Ok(true),
        }
    }

    fn spawn_prepare_commit(self: &Arc<Self>, run: Run) {
        if !self.preparing().insert(run.id) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let id = run.id;
            this.report_status(id, RunStatus::Queued, None);
            let r = this.prepare_commit(&run).await;
            let r = match r.and_then(|plan| this.gate(&run, &plan).map(|go| (plan, go))) {
                Ok((plan, true)) => this
                    .store
                    .set_labels(id, &this.run_labels(&plan))
                    .and_then(|()| this.settle_group(&run, &plan, false))
                    .map_err(|e| format!("{e:#}")),
                Ok((_, false)) => {
                    let _ = tokio::fs::remove_dir_all(this.workspace_dir(id)).await;
                    this.checked_out().remove(&id);
                    Ok(())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                let _ = tokio::fs::remove_dir_all(this.workspace_dir(id)).await;
                this.checked_out().remove(&id);
                if let Err(e) = this.fail_queued(id, &e) {
                    tracing::error!(run = id, "recording a failed fetch: {e:#}");
                }
            }
            this.preparing().remove(&id);
            this.wake();
        });
    }

    /// Drops what this host prepared for a run another host is to run (its checkout, the
    /// pipeline it read): that host prepares its own.
    fn forget_prepared(&self, id: i64) {
        self.planned.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        if self.checked_out().remove(&id).is_some() {
            let ws = self.workspace_dir(id);
            tokio::spawn(async move {
                let _ = tokio::fs::remove_dir_all(ws).await;
            });
        }
    }

    fn preparing(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.preparing.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn checked_out(&self) -> std::sync::MutexGuard<'_, HashMap<i64, (String, Plan)>> {
        self.checked_out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fetches a queued run's commit, checks it out into its workspace and reads its pipeline.
    async fn prepare_commit(self: &Arc<Self>, run: &Run) -> Result<Plan, String> {
        let app = self
            .config
            .apps
            .get(&run.app)
            .ok_or_else(|| format!("app `{}` is not configured on this host", run.app))?;
        let ws = self.workspace_dir(run.id);
        let sha = self.check_out(app, run, &ws).await?;
        let (plan, several) = self.commit_plans(app, run, &sha, &ws).await?;
        if let Some((mine, others)) = several {
            // As GitHub's workflows folder: every pipeline file of the commit is a run of its own.
            self.store.set_pipeline(run.id, &mine).map_err(|e| format!("{e:#}"))?;
            for other in others {
                let sibling = store::NewRun {
                    app: run.app.clone(),
                    trigger: run.trigger.clone(),
                    reason: format!("{} ({other})", run.reason),
                    git_ref: run.git_ref.clone(),
                    sha: Some(sha.clone()),
                    dispatch_id: run.dispatch_id.as_ref().map(|d| format!("{d}:{other}")),
                    inputs: run.inputs.clone(),
                    event: run.event.clone(),
                    body: run.body.clone(),
                    requested_by: run.requested_by.clone(),
                    pipeline: Some(other),
                    ..store::NewRun::default()
                };
                self.enqueue(sibling).await.map_err(|e| format!("queueing the commit's other pipelines: {e:#}"))?;
            }
        }
        self.checked_out().insert(run.id, (sha, plan.clone()));
        Ok(plan)
    }

    /// A fresh checkout of the run's commit in `ws`; the commit id.
    async fn check_out(&self, app: &AppConfig, run: &Run, ws: &Path) -> Result<String, String> {
        let repo = app.repo.as_ref().ok_or("the app fetches no repository")?;
        let src = repo.source(&run.event)?;
        let mut want = repo.want(&run.event, run.sha.as_deref(), run.git_ref.as_deref());
        // A run that checked out its commit before (resumed after a restart while a job waited
        // for an approval, or retried) builds that commit again: a pull request's merge ref may
        // have moved since, and what was approved must be what runs.
        if run.started_at.is_some()
            && let Some(sha) = run.sha.as_deref().filter(|s| s.len() >= 40)
        {
            want.sha = Some(sha.to_string());
        }
        let w = ws.to_path_buf();
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&w) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("clearing {}: {e}", w.display())),
            _ => Ok(()),
        })
        .await
        .map_err(|e| e.to_string())??;
        let at = want.sha.as_deref().or(want.git_ref.as_deref()).unwrap_or("its default branch").to_string();
        let sha = self
            .repos
            .ensure(&src, &want)
            .await
            .map_err(|e| format!("the run's code could not be fetched ({} at {at}): {e}", src.remote.url()))?;
        if run.sha.as_deref() != Some(sha.as_str()) {
            match self.store.set_sha(run.id, &sha) {
                // Now that the commit is known, it can show the run as pending.
                Ok(()) if run.sha.is_none() => self.report_status(run.id, RunStatus::Queued, None),
                Ok(()) => {}
                Err(e) => tracing::error!(run = run.id, "recording its commit: {e:#}"),
            }
        }
        let branch = want.branch();
        self.repos
            .checkout(&src, &sha, ws, branch)
            .await
            .map_err(|e| format!("checking out {} at {sha}: {e}", src.remote.url()))?;
        Ok(sha)
    }

    /// With several jobs, each gets its own checkout of the run's commit (from the cache, so it
    /// costs links, not a fetch): no job depends on another's folder.
    fn job_checkouts(&self, app: &AppConfig, run: &Run, sha: &str) -> Result<skiff_pipeline::JobSetup, String> {
        let repo = app.repo.as_ref().ok_or("the app fetches no repository")?;
        let src = Arc::new(repo.source(&run.event)?);
        let want = repo.want(&run.event, run.sha.as_deref(), run.git_ref.as_deref());
        let branch = want.branch().map(String::from);
        let repos = self.repos.clone();
        let sha = sha.to_string();
        Ok(skiff_pipeline::JobSetup(Arc::new(move |dir| {
            let (repos, src, sha, branch) = (repos.clone(), src.clone(), sha.clone(), branch.clone());
            Box::pin(async move { repos.checkout(&src, &sha, &dir, branch.as_deref()).await })
        })))
    }

    /// The pipeline of the commit checked out in `ws`.
    async fn commit_plan(&self, app: &AppConfig, run: &Run, sha: &str, ws: &Path) -> Result<Plan, String> {
        Ok(self.commit_plans(app, run, sha, ws).await?.0)
    }

    /// [`Self::commit_plan`], and the commit's other pipelines when it has several
    /// (`.skiff/pipelines/*`) and the run names none: the file it runs, and the others.
    async fn commit_plans(
        &self,
        app: &AppConfig,
        run: &Run,
        sha: &str,
        ws: &Path,
    ) -> Result<(Plan, Option<(String, Vec<String>)>), String> {
        let (plan, several) = self.read_commit_plan(app, run, sha, ws).await?;
        confine_components(&plan, ws)?;
        Ok((plan, several))
    }

    /// [`Self::commit_plans`] without the check that its components are inside the checkout
    /// (which needs the checkout): what a view of the run may show.
    async fn read_commit_plan(
        &self,
        app: &AppConfig,
        run: &Run,
        sha: &str,
        ws: &Path,
    ) -> Result<(Plan, Option<(String, Vec<String>)>), String> {
        let repo = app.repo.as_ref().ok_or("the app fetches no repository")?;
        let src = repo.source(&run.event)?;
        let named = match &app.pipeline {
            PipelineSource::Commit(p) => p.clone(),
            PipelineSource::Inline(y) => {
                let plan = load_str(y, &format!("{} (pipeline-yaml)", app.name()), ws)
                    .map_err(|d| format!("the pipeline of app `{}` is invalid:\n{d}", app.name()))?;
                return Ok((plan, None));
            }
            PipelineSource::Path(p) => Some(p.clone()),
        };
        let named = named.or_else(|| run.pipeline.clone());
        let short = &sha[..12.min(sha.len())];
        let (path, text, several) = self.find_pipeline(&src, sha, named).await?;
        let dir = ws.join(Path::new(&path).parent().unwrap_or(Path::new("")));
        let plan = load_str(&text, &format!("{path} (commit {short})"), &dir)
            .map_err(|d| format!("the pipeline of app `{}` is invalid:\n{d}", app.name()))?;
        Ok((plan, several))
    }

    /// The plan a repository-driven run runs (or ran), for views such as the console's run page:
    /// the one it holds while it runs, else its pipeline read again at its commit from the
    /// repository cache. Nothing is fetched: `None` when the commit is not (or no longer) there.
    pub(crate) async fn commit_plan_of(&self, run: &Run) -> Option<Plan> {
        let sha = run.sha.as_deref().filter(|s| s.len() >= 40)?;
        if let Some((at, plan)) = self.checked_out().get(&run.id)
            && at == sha
        {
            return Some(plan.clone());
        }
        let app = self.config.apps.get(&run.app)?;
        let repo = app.repo.as_ref()?;
        let src = repo.source(&run.event).ok()?;
        if !self.repos.has_commit(&src, sha).await {
            return None;
        }
        self.read_commit_plan(app, run, sha, &self.workspace_dir(run.id)).await.ok().map(|(plan, _)| plan)
    }

    /// A commit's pipeline file: `named`, else the first of [`DEFAULT_PIPELINES`]; its path and
    /// text, and, for a folder of several, the first file and the others.
    async fn find_pipeline(
        &self,
        src: &crate::repository::fetch::Source,
        sha: &str,
        named: Option<String>,
    ) -> Result<(String, String, Option<(String, Vec<String>)>), String> {
        let candidates: Vec<String> = match named {
            Some(p) => vec![p],
            None => DEFAULT_PIPELINES.iter().map(|s| s.to_string()).collect(),
        };
        for c in &candidates {
            if let Some(folder) = c.strip_suffix('/') {
                let mut files: Vec<String> = self
                    .repos
                    .list_dir(src, sha, folder)
                    .await?
                    .into_iter()
                    .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
                    .collect();
                if !files.is_empty() {
                    let first = files.remove(0);
                    if let Some(t) = self.repos.read_file(src, sha, &first).await? {
                        return Ok((first.clone(), t, Some((first, files))));
                    }
                }
            } else if let Some(t) = self.repos.read_file(src, sha, c).await? {
                return Ok((c.clone(), t, None));
            }
        }
        let short = &sha[..12.min(sha.len())];
        Err(format!("commit {short} has no pipeline: looked for {}", candidates.join(", ")))
    }

    /// For a manual run of a repository-driven app: the commit of `git_ref` (fetched now) and
    /// its pipeline's `workflow_dispatch`, so the run's inputs can be checked before it is
    /// accepted. `None` when that cannot be known now; the run then checks when it is prepared.
    pub(crate) async fn manual_commit(
        &self,
        app: &AppConfig,
        git_ref: Option<&str>,
    ) -> Option<(String, Option<skiff_edge_core::WorkflowDispatch>)> {
        let repo = app.repo.as_ref()?;
        let src = repo.source(&serde_json::json!({})).ok()?;
        let sha = self.repos.ensure(&src, &repo.want(&serde_json::json!({}), None, git_ref)).await.ok()?;
        let named = match &app.pipeline {
            PipelineSource::Commit(p) => p.clone(),
            _ => return Some((sha, None)),
        };
        let (_, text, _) = self.find_pipeline(&src, &sha, named).await.ok()?;
        let on = serde_norway::from_str::<serde_json::Value>(&text).ok()?.get("on").cloned();
        let dispatch = on
            .and_then(|on| serde_json::from_value::<skiff_edge_core::Triggers>(on).ok())
            .and_then(|t| t.workflow_dispatch);
        Some((sha, dispatch))
    }

    /// Evaluates a prepared run's `concurrency.group` and settles the group.
    fn settle_group(self: &Arc<Self>, run: &Run, plan: &Plan, defer_flag: bool) -> anyhow::Result<()> {
        let (group, cancel) = match &plan.concurrency {
            None => (None, false),
            Some(c) => match c.group.tpl.render(&scope_for(run)) {
                Ok(g) if !g.is_empty() => (Some(format!("{}/{g}", run.app)), c.cancel_in_progress),
                Ok(_) => (None, false),
                Err(e) => return self.fail_queued(run.id, &format!("`concurrency.group` of app `{}`: {e}", run.app)),
            },
        };
        // Without a group there is nothing to record but the flag, which the caller may record
        // later (with the run's lease).
        if defer_flag && plan.concurrency.is_none() {
            return Ok(());
        }
        self.store.set_prepared(run.id, group.as_deref(), cancel)?;
        if let Some(g) = &group {
            let why = format!("superseded by run {} in concurrency group `{g}`", run.id);
            for older in self.store.queued_in_group_before(g, run.id)? {
                if self.store.finish_run(older, RunStatus::Cancelled, Some(&why))? {
                    self.ended(older, RunStatus::Cancelled, Some(&why));
                }
            }
            if cancel {
                let mut running = self.running();
                for (_, r) in running.iter_mut().filter(|(_, r)| r.group.as_ref() == Some(g)) {
                    r.cancel_reason = Some(format!("{why} (cancel-in-progress)"));
                    r.abort.abort();
                }
            }
        }
        Ok(())
    }

    /// Cancels a queued or running run. For a running run this waits (up to 5 s) until it has
    /// stopped.
    pub async fn cancel(&self, id: i64, reason: &str) -> anyhow::Result<Cancelled> {
        let mut rx = None;
        {
            let mut running = self.running();
            if let Some(r) = running.get_mut(&id) {
                rx = Some(self.hub.subscribe(id));
                r.cancel_reason = Some(reason.to_string());
                r.abort.abort();
            }
        }
        if let Some(mut rx) = rx {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                loop {
                    match rx.recv().await {
                        Ok(LiveEvent::End { .. }) | Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        _ => {}
                    }
                }
            })
            .await;
            return Ok(Cancelled::Running);
        }
        if self.store.finish_run(id, RunStatus::Cancelled, Some(reason))? {
            self.ended(id, RunStatus::Cancelled, Some(reason));
            self.wake();
            return Ok(Cancelled::Queued);
        }
        Ok(Cancelled::AlreadyOver)
    }

    /// Waits for a run's task and records how it ended.
    async fn supervise(
        self: Arc<Self>,
        id: i64,
        task: tokio::task::JoinHandle<Result<RunReport, String>>,
        timeout: Option<std::time::Duration>,
    ) {
        let abort = task.abort_handle();
        let joined = match timeout {
            None => Some(task.await),
            Some(t) => tokio::time::timeout(t, task).await.ok(),
        };
        let (st, error): (RunStatus, Option<String>) = match joined {
            None => {
                abort.abort();
                (
                    RunStatus::Cancelled,
                    Some(format!("the run took longer than its limit of {} s", timeout.unwrap_or_default().as_secs())),
                )
            }
            Some(Ok(Ok(report))) => match report.status {
                Status::Success | Status::Skipped => (RunStatus::Success, None),
                Status::Failure => (RunStatus::Failure, Some(first_error(&report))),
                Status::Cancelled => (RunStatus::Cancelled, Some("a step or job was cancelled".into())),
            },
            Some(Ok(Err(e))) => (RunStatus::Failure, Some(e)),
            Some(Err(e)) if e.is_cancelled() => {
                let reason = self.running().get(&id).and_then(|r| r.cancel_reason.clone());
                (RunStatus::Cancelled, Some(reason.unwrap_or_else(|| "cancelled".into())))
            }
            Some(Err(e)) => (RunStatus::Failure, Some(format!("the run's task panicked: {e}"))),
        };
        if self.halted() {
            // Like a killed process: the run stays `running` for the next start to recover.
            return;
        }
        let recorded = self.queue.complete(id, &self.owner, st, error.as_deref()).unwrap_or_else(|e| {
            tracing::error!(run = id, "recording its end: {e:#}");
            true
        });
        if !recorded {
            // Ended elsewhere (a cancel through another host): stopped now, it frees its group.
            if let Err(e) = self.queue.release(id, &self.owner) {
                tracing::error!(run = id, "releasing its lease: {e:#}");
            }
        }
        self.logs.close(id);
        let (lost, attempt) = self.running().get(&id).map_or((false, 0), |r| (r.lost, r.attempt));
        // This attempt's jobs leave the pool (their hosts stop them at their next heartbeat);
        // a run taken over by another host keeps the jobs of its new attempt.
        if self.config.leases_jobs()
            && !lost
            && let Err(e) = self.queue.forget_jobs(id, attempt)
        {
            tracing::warn!(run = id, "removing its jobs from the pool (their hosts stop them anyway): {e:#}");
        }
        if recorded || !lost {
            // This host wrote the log's last line: it moves to where finished logs are kept.
            let logs = self.logs.clone();
            match tokio::task::spawn_blocking(move || logs.archive(id)).await {
                Ok(Err(e)) => tracing::warn!(run = id, "archiving its log (it stays where it is): {e}"),
                Err(e) => tracing::warn!(run = id, "archiving its log: {e}"),
                Ok(Ok(())) => {}
            }
        }
        // The workspace goes before anyone hears the run ended.
        if !self.config.keep_workspaces {
            let _ = tokio::fs::remove_dir_all(self.workspace_dir(id)).await;
        }
        let lost = self.running().remove(&id).is_some_and(|r| r.lost);
        self.slots.notify_waiters();
        // A run whose lease another host took goes on there: its end is not this one.
        if recorded || !lost {
            self.ended(id, st, error.as_deref());
        }
        self.wake();
    }

    /// A run ended: its live channel closes, and its commit's status says how.
    fn ended(&self, id: i64, st: RunStatus, why: Option<&str>) {
        // A run cancelled while queued never takes the pipeline it was prepared with.
        self.planned.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        self.hub.end(id, st);
        self.report_status(id, st, why);
    }

    /// Reports a run's state on its commit, for an app with `status-token`. Never fails the run:
    /// the reporter retries and logs.
    pub(crate) fn report_status(&self, id: i64, st: RunStatus, why: Option<&str>) {
        use crate::repository::status::{CommitState, StatusTarget};
        if self.config.apps.values().all(|a| a.status.is_none()) {
            return;
        }
        let Ok(Some(run)) = self.store.run(id) else { return };
        let Some(app) = self.config.apps.get(&run.app) else { return };
        let Some(cfg) = &app.status else { return };
        let Some(sha) = run.sha.clone().filter(|s| s.len() >= 40 && s.bytes().any(|b| b != b'0')) else { return };
        let repository = match &cfg.repository {
            Some(r) => r.clone(),
            None => match run.event.pointer("/repository/full_name").and_then(|v| v.as_str()) {
                Some(r) => r.to_string(),
                None => return,
            },
        };
        let (state, text) = match st {
            RunStatus::Queued => (CommitState::Pending, format!("run {} is queued", run.number)),
            RunStatus::Running => (CommitState::Running, format!("run {} is running", run.number)),
            RunStatus::Success => (CommitState::Success, format!("run {} passed", run.number)),
            RunStatus::Cancelled => (CommitState::Cancelled, format!("run {} was cancelled", run.number)),
            RunStatus::Skipped => {
                (CommitState::Success, format!("run {} skipped: its pipeline does not take this event", run.number))
            }
            // A run that ended before any job started could not build: an error, not a failure.
            _ if why.is_some() && self.store.jobs(id).map(|j| j.is_empty()).unwrap_or(false) => {
                (CommitState::Error, format!("run {}: {}", run.number, why.unwrap_or_default()))
            }
            _ => (CommitState::Failure, format!("run {} failed: {}", run.number, why.unwrap_or("a job failed"))),
        };
        let target = StatusTarget {
            forge: cfg.forge,
            api_url: cfg.api_url.clone(),
            repository,
            sha,
            context: cfg.context.clone(),
            target_url: self.config.public_url.as_ref().map(|u| format!("{u}/v1/runs/{id}")),
            token: cfg.token.clone(),
        };
        self.statuses.report(&target, state, &text);
    }

    /// A run's workspace.
    pub fn workspace_dir(&self, id: i64) -> PathBuf {
        self.config.data_dir.join("work").join(id.to_string())
    }

    /// A fresh workspace, holding a copy of the app's folder when it has one. A retried run
    /// starts from nothing: no old workspace, no old logs.
    async fn prepare_folder(
        &self,
        id: i64,
        source: Option<PathBuf>,
        ws: PathBuf,
        keep_logs: bool,
    ) -> Result<(), String> {
        let logs = self.logs.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            // A retried run starts from nothing: no old workspace, no old logs (a resumed one
            // keeps the logs of the jobs it keeps).
            let _ = std::fs::remove_dir_all(&ws);
            if !keep_logs {
                logs.remove(id).map_err(|e| format!("clearing old logs: {e}"))?;
            }
            std::fs::create_dir_all(&ws).map_err(|e| format!("creating the workspace {}: {e}", ws.display()))?;
            if let Some(src) = source {
                skiff_runtime::workspace::copy_tree(&src, &ws, &[])
                    .map_err(|e| format!("copying the app's workspace {}: {e}", src.display()))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Runs a run: fresh workspace, pipeline, engine.
    async fn execute(self: Arc<Self>, run: Run, app: Arc<AppConfig>) -> Result<RunReport, String> {
        let ws = self.workspace_dir(run.id);
        let source = app.workspace.clone();
        let id = run.id;
        let mut job_setup = None;
        // Jobs already recorded for this attempt: the host restarted while the run only waited
        // for approvals. It goes on where it was: its finished jobs are kept (with their logs),
        // the waiting ones wait again.
        let kept = resumed_jobs(&self.store.jobs(id).map_err(|e| format!("reading the run's jobs: {e:#}"))?);
        let resuming = !kept.is_empty();
        let plan = if app.repo.is_some() {
            let logs = self.logs.clone();
            if !resuming {
                tokio::task::spawn_blocking(move || logs.remove(id))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("clearing old logs: {e}"))?;
            }
            // Checked out and read when it was prepared, unless the host restarted since (or
            // this is a retry): then afresh.
            let prepared = self.checked_out().remove(&id);
            let (sha, plan) = match prepared {
                Some(p) => p,
                None => {
                    let sha = self.check_out(&app, &run, &ws).await?;
                    let plan = self.commit_plan(&app, &run, &sha, &ws).await?;
                    (sha, plan)
                }
            };
            job_setup = Some(self.job_checkouts(&app, &run, &sha)?);
            plan
        } else {
            self.prepare_folder(id, source.clone(), ws.clone(), resuming).await?;
            // Read when the run was prepared, unless the host restarted since: its component
            // paths then point into the copy in the workspace, as if read from there.
            match self.planned.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
                Some(mut plan) => {
                    rebase(&mut plan, &source.unwrap_or_default(), &ws);
                    plan
                }
                None => load_plan(&app, &ws)?,
            }
        };
        let mut plan = plan;
        // Shared components are pinned, fetched and checked (signatures included), and container
        // images pulled and unpacked, before any step runs; a refusal fails the run with its reason.
        if plan.fetches() {
            let ready = self.resolver.prepare(&mut plan, &app.components).await.map_err(|e| e.to_string())?;
            for f in ready.components {
                tracing::info!(run = run.id, component = %f.reference, cached = f.cached, signed_by = ?f.signed_by, "shared component ready");
            }
            for f in ready.images {
                tracing::info!(run = run.id, image = %f.reference, cached = f.cached, "container image ready");
            }
        }
        for j in run.job.iter().flat_map(|j| j.split(',')).map(str::trim).filter(|j| !j.is_empty()) {
            if plan.instances(j).next().is_none() {
                return Err(format!("the pipeline has no job `{j}` any more"));
            }
        }
        // A rerun of failed jobs: what succeeded before and depends on nothing that failed is
        // carried over with its outputs; the failed instances and everything downstream run.
        let mut reuse = match (run.parent_id, &run.job) {
            (Some(parent), Some(_)) => {
                let before = self.store.jobs(parent).map_err(|e| format!("reading the earlier attempt: {e:#}"))?;
                reusable(&plan, &before)
            }
            _ => BTreeMap::new(),
        };
        let job = if reuse.is_empty() { run.job.clone() } else { None };
        reuse.extend(kept.clone());
        // A run that uploads or deploys gets signed provenance; what it says of the workspace (the
        // pipeline file, components by path) is read now, before a step could change it.
        let materials = crate::provenance::Materials::collect(&app, &plan, &ws)
            .map_err(|e| format!("recording the run's provenance: {e}"))?;
        let mut opts = self.run_options(&run, &app, ws, job_setup);
        opts.job = job;
        opts.reuse = reuse;
        opts.gate = Some(self.environment_gate(&run, &app));
        // A resumed run's log goes on after what it has.
        let seq = if resuming {
            let logs = self.logs.clone();
            tokio::task::spawn_blocking(move || logs.read(id, 0))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("reading the run's logs: {e}"))?
                .last()
                .map_or(0, |r| r.seq)
        } else {
            0
        };
        let sink = Arc::new(Sink::new(&self, &run, &plan, kept.keys().cloned().collect(), None));
        sink.seq.store(seq, Ordering::SeqCst);
        if self.config.leases_jobs() {
            opts.dispatch = Some(self.job_dispatch(&run, sink.clone()));
        }
        // Each step that uploads or deploys gets its own signed statement when it succeeds.
        let executor: Arc<dyn StepExecutor> = match &materials {
            Some(m) => Arc::new(crate::provenance::Attesting::new(
                self.executor.clone(),
                self.provenance.clone(),
                self.config.clone(),
                self.store.clone(),
                id,
                m.clone(),
            )),
            None => self.executor.clone(),
        };
        let report = run_pipeline(&plan, opts, executor, sink.clone()).await;
        if let Some(materials) = materials
            && report.success()
        {
            let log = |job: &str, step: &str, text: &str| sink.write_line(job, step, "system", text.to_string());
            crate::provenance::record(
                &self.provenance,
                &self.config,
                self.store.as_ref(),
                id,
                materials,
                &report,
                &log,
            )
            .map_err(|e| format!("the run succeeded, but its provenance could not be recorded: {e:#}"))?;
        }
        Ok(report)
    }
}

/// The jobs a resumed run keeps: those of its attempt that are over, with how they ended and
/// their outputs (as a rerun carries jobs over).
fn resumed_jobs(jobs: &[store::Job]) -> BTreeMap<String, (Status, BTreeMap<String, String>)> {
    jobs.iter()
        .filter_map(|j| {
            let st = match j.status {
                RunStatus::Success => Status::Success,
                RunStatus::Failure => Status::Failure,
                RunStatus::Cancelled => Status::Cancelled,
                RunStatus::Skipped => Status::Skipped,
                _ => return None,
            };
            Some((j.key.clone(), (st, j.outputs.clone())))
        })
        .collect()
}

impl Scheduler {
    /// An approval or rejection was recorded: the jobs waiting look again.
    pub fn decided(&self) {
        self.decided.notify_waiters();
    }

    /// A job of run `id` started (`true`) or ended.
    fn job_counted(&self, id: i64, started: bool) {
        if let Some(r) = self.running().get_mut(&id) {
            r.jobs_running = if started { r.jobs_running + 1 } else { r.jobs_running.saturating_sub(1) };
        }
    }

    /// The rules of an app's environments, for the engine to ask before a job in one starts.
    fn environment_gate(self: &Arc<Self>, run: &Run, app: &Arc<AppConfig>) -> skiff_pipeline::JobGate {
        let this = self.clone();
        let app = app.clone();
        let (id, attempt) = (run.id, run.attempt);
        let git_ref = gate_ref(run);
        skiff_pipeline::JobGate(Arc::new(move |req| {
            let (this, app, git_ref) = (this.clone(), app.clone(), git_ref.clone());
            Box::pin(async move { this.pass_gate(id, attempt, &app, git_ref.as_deref(), req).await })
        }))
    }

    /// A job in an environment: refused when the run's ref is not one of its `branches`; held
    /// until a token among its `approvers` approves it (or rejects it: the job is cancelled).
    /// While the run only waits it holds no slot; once approved it takes one again, before any
    /// queued run.
    async fn pass_gate(
        self: Arc<Self>,
        id: i64,
        attempt: i64,
        app: &AppConfig,
        git_ref: Option<&str>,
        req: skiff_pipeline::GateRequest,
    ) -> Result<Option<String>, skiff_pipeline::Refusal> {
        use skiff_pipeline::Refusal;
        let Some(env) = app.environments.get(&req.environment) else {
            return Ok(Some(format!(
                "environment `{}` is not configured for app `{}`: it has no protection rules and no secrets",
                req.environment,
                app.name()
            )));
        };
        if !env.allows_ref(git_ref) {
            let branches = env.branches.as_ref().map(|b| b.to_string()).unwrap_or_default();
            return Err(Refusal {
                status: Status::Failure,
                reason: format!(
                    "environment `{}` takes only runs of the branches {branches} (its `branches` in skiff.toml), and \
                     this run's ref is {}",
                    env.name,
                    git_ref.map(|r| format!("`{r}`")).unwrap_or_else(|| "not known".into())
                ),
            });
        }
        if env.approvers.is_empty() {
            return Ok(None);
        }
        let reason = format!(
            "waiting for approval of environment `{}` (by {})",
            env.name,
            env.approvers.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(" or ")
        );
        let mut parked = false;
        let decision = loop {
            let notified = self.decided.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.store.decision(id, attempt, &req.job_key) {
                Ok(Some(d)) => break d,
                Ok(None) => {}
                Err(e) => tracing::error!(run = id, "reading the decisions on its jobs: {e:#}"),
            }
            if !parked {
                // Runs that only wait hold no slot, so without a cap anyone who may start runs
                // could park any number of them (each with its workspace) on one environment.
                let waiting = self.running().values().filter(|r| r.app == app.name() && r.idle()).count();
                if waiting >= MAX_WAITING_RUNS_PER_APP {
                    return Err(Refusal {
                        status: Status::Failure,
                        reason: format!(
                            "{waiting} runs of app `{}` already wait for an approval, the most that may: approve or \
                             reject those first (`skiff runs approve|reject`)",
                            app.name()
                        ),
                    });
                }
                parked = true;
                if let Err(e) = self.store.job_waiting(id, &req.job_key, &req.job, &req.name, &env.name, &reason) {
                    tracing::error!(run = id, "recording a waiting job: {e:#}");
                }
                let e = LiveEvent::Step {
                    job: req.job_key.clone(),
                    step: String::new(),
                    name: req.name.clone(),
                    status: RunStatus::Waiting,
                };
                self.hub.send(id, e);
                if let Some(r) = self.running().get_mut(&id) {
                    r.waiting += 1;
                }
                // Its slot may be free now.
                self.wake();
            }
            // The notification is the way; the timer only a safety net.
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        };
        if !decision.approved {
            if parked && let Some(r) = self.running().get_mut(&id) {
                r.waiting = r.waiting.saturating_sub(1);
            }
            return Err(Refusal {
                status: Status::Cancelled,
                reason: format!("rejected by `{}`: the job does not deploy to environment `{}`", decision.by, env.name),
            });
        }
        if parked {
            self.take_slot_back(id, app).await;
        }
        Ok(Some(format!("environment `{}`: approved by `{}`", env.name, decision.by)))
    }

    /// An approved run goes on once the limits allow it: runs that hold a slot, and approved runs
    /// older than it, go first; queued runs after it.
    async fn take_slot_back(&self, id: i64, app: &AppConfig) {
        loop {
            let notified = self.slots.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut running = self.running();
                let ahead = |same_app: bool| {
                    running
                        .iter()
                        .filter(|(rid, r)| **rid != id && (!same_app || r.app == app.name()))
                        .filter(|(rid, r)| !r.idle() || (r.resuming && **rid < id))
                        .count()
                };
                let free = ahead(false) < self.config.max_concurrent_runs && ahead(true) < app.max_concurrent_runs;
                let Some(me) = running.get_mut(&id) else { return };
                if free {
                    me.waiting = me.waiting.saturating_sub(1);
                    me.resuming = false;
                    return;
                }
                me.resuming = true;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Whether a webhook's payload is a pull request from another repository (a fork): GitHub's,
/// Gitea's and Forgejo's `pull_request.head.repo` differs from `base.repo`; GitLab's
/// `source_project_id` from `target_project_id`.
/// Why waiting jobs could not be decided.
#[derive(Debug)]
pub enum Undecidable {
    /// Nothing (or not that job) waits for an approval.
    NotWaiting(String),
    /// The one deciding is not among the environment's approvers.
    NotAnApprover(String),
    /// The store failed.
    Store(anyhow::Error),
}

/// Approves (or rejects) `run`'s jobs waiting for their environment (all of them, or `job`) as
/// the token named `by`: every job is checked first, so a refusal decides none of them. Two
/// approvers at once: the first decision stands. The API's and the console's approvals.
pub(crate) fn decide_waiting(
    s: &crate::Shared,
    run: &Run,
    job: Option<&str>,
    by: &str,
    approved: bool,
) -> Result<Vec<store::Decision>, Undecidable> {
    let id = run.id;
    let waiting: Vec<store::Job> = s
        .store
        .jobs(id)
        .map_err(Undecidable::Store)?
        .into_iter()
        .filter(|j| j.status == RunStatus::Waiting)
        .filter(|j| job.is_none_or(|want| j.job == want || j.key == want))
        .collect();
    if run.status != RunStatus::Running || waiting.is_empty() {
        let what = match job {
            Some(j) => format!("job `{j}` of run {id} is not waiting for an approval"),
            None => format!("no job of run {id} is waiting for an approval"),
        };
        return Err(Undecidable::NotWaiting(format!("{what} (the run is {})", run.status)));
    }
    let Some(app) = s.config.apps.get(&run.app) else {
        return Err(Undecidable::NotWaiting(format!("app `{}` of run {id} is not configured here", run.app)));
    };
    for j in &waiting {
        let env_name = j.environment.clone().unwrap_or_default();
        let approvers = app.environments.get(&env_name).map(|e| e.approvers.clone()).unwrap_or_default();
        if !approvers.iter().any(|a| a == by) {
            let who = approvers.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ");
            return Err(Undecidable::NotAnApprover(format!(
                "token `{by}` may not {} job `{}`: only the approvers of environment `{env_name}` of app `{}` may \
                 ({who}; `approvers` in skiff.toml)",
                if approved { "approve" } else { "reject" },
                j.key,
                run.app
            )));
        }
    }
    let mut decisions = Vec::new();
    for j in waiting {
        let d = store::Decision {
            run: id,
            attempt: run.attempt,
            job_key: j.key.clone(),
            environment: j.environment.clone().unwrap_or_default(),
            approved,
            by: by.to_string(),
            at: store::now_ms(),
        };
        let first = s.store.decide(&d).map_err(Undecidable::Store)?;
        let d =
            if first { d } else { s.store.decision(id, run.attempt, &j.key).map_err(Undecidable::Store)?.unwrap_or(d) };
        decisions.push(d);
    }
    s.scheduler.decided();
    Ok(decisions)
}

/// The ref an environment's `branches` judge a run by, or `None` when the run has none it can
/// be trusted for, so that no branch rule matches:
/// a pull request's ref names its source branch (Bitbucket's, and others', `refs/heads/X`),
/// which anyone who opens one chooses: like GitHub, a pull request is never a branch. (A manual
/// run's ref is checked against the repository when the app has one; without one it is the
/// label the token that may start the app's runs gave.)
fn gate_ref(run: &Run) -> Option<String> {
    let kind = run.event.pointer("/kind/type").or_else(|| run.event.get("kind")).and_then(|v| v.as_str());
    if run.trigger == "pull_request" || kind.is_some_and(|k| k.contains("pull")) || is_pull_request(&run.body) {
        return None;
    }
    run.git_ref.clone().or_else(|| run.event.get("ref").and_then(|v| v.as_str()).map(String::from))
}

/// Whether a webhook body is a pull (merge) request's, by the shape each forge sends.
fn is_pull_request(body: &serde_json::Value) -> bool {
    body.get("pull_request").is_some()
        || body.get("pullrequest").is_some()
        || body.get("object_kind").and_then(|k| k.as_str()) == Some("merge_request")
}

pub fn from_fork(body: &serde_json::Value) -> bool {
    let differ = |a: Option<&serde_json::Value>, b: Option<&serde_json::Value>| match (a, b) {
        (Some(a), Some(b)) => !a.is_null() && a != b,
        (None, Some(_)) => true,
        _ => false,
    };
    if let Some(pr) = body.get("pull_request") {
        // A head repository that is gone (deleted fork) is a fork too.
        let head = pr.pointer("/head/repo/full_name").or_else(|| pr.pointer("/head/repo")).filter(|v| !v.is_null());
        let base = pr.pointer("/base/repo/full_name");
        return differ(head, base) || (pr.pointer("/head/repo").is_some_and(|v| v.is_null()) && base.is_some());
    }
    if let Some(attrs) = body.get("object_attributes") {
        return differ(attrs.get("source_project_id"), attrs.get("target_project_id"));
    }
    // Bitbucket Cloud: `pullrequest.source` and `.destination`, each with its repository.
    if let Some(pr) = body.get("pullrequest") {
        let source = pr.pointer("/source/repository/full_name");
        let destination = pr.pointer("/destination/repository/full_name");
        return differ(source, destination) || (source.is_none() && destination.is_some());
    }
    false
}

fn first_error(report: &RunReport) -> String {
    for j in &report.jobs {
        for s in &j.steps {
            if s.status == Status::Failure
                && let Some(e) = &s.error
            {
                return format!("job `{}`, step `{}`: {e}", j.key, s.id);
            }
        }
    }
    let failed: Vec<&str> =
        report.jobs.iter().filter(|j| j.status == Status::Failure).map(|j| j.key.as_str()).collect();
    format!("failed jobs: {}", failed.join(", "))
}

/// Feeds a run's events into the store, the log store and the live channel.
struct Sink {
    run: i64,
    scheduler: Arc<Scheduler>,
    /// Jobs a resumed run keeps: they are recorded already.
    kept: HashSet<String>,
    seq: AtomicU64,
    job_ids: HashMap<String, String>,
    log_bytes: Mutex<HashMap<(String, String), u64>>,
    cap: u64,
    /// With jobs leased across hosts, several hosts write one run's log: each writer numbers
    /// its lines by the clock (see [`clock_seq`]), told apart by this salt (0 for the host
    /// running the graph, one more than the job's index for a job's host).
    salt: Option<u64>,
    /// The database's clock less this host's, in ms, for clock-numbered lines.
    clock_offset: i64,
}

/// Bits under a millisecond in a clock-numbered line: 9 for the writer's salt, 7 for lines
/// within one millisecond (more run ahead of the clock, still in order).
const SALT_BITS: u32 = 9;
const CLOCK_SHIFT: u32 = SALT_BITS + 7;
/// Lines are numbered from 2026-01-01, so numbers stay under 2^53 (exact in JavaScript) for
/// four years.
const CLOCK_EPOCH_MS: i64 = 1_767_225_600_000;

/// The next clock-numbered line after `last` (a number without its salt): the time in ms,
/// shifted, or one more than the last when the clock has not moved on. Lines from several
/// hosts interleave by time; a follower reading a run's log looks back a while
/// ([`LOG_LOOKBACK`](crate::api::logs)) for lines that reached the store late.
fn clock_seq(last: &AtomicU64, salt: u64, now_ms: i64) -> u64 {
    let now = (now_ms - CLOCK_EPOCH_MS).max(0) as u64;
    let at = now << CLOCK_SHIFT;
    let mut prev = last.load(Ordering::SeqCst);
    loop {
        let next = at.max(prev + (1 << SALT_BITS));
        match last.compare_exchange(prev, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return next | (salt & ((1 << SALT_BITS) - 1)),
            Err(p) => prev = p,
        }
    }
}

const TRUNCATED: u64 = u64::MAX;

impl Sink {
    /// A sink for run `run` (its pipeline `plan`): `kept` are jobs of a resumed run recorded
    /// already; `salt` numbers its lines by the clock (jobs leased across hosts) for a writer
    /// other than the graph's host.
    fn new(scheduler: &Arc<Scheduler>, run: &Run, plan: &Plan, kept: HashSet<String>, salt: Option<u64>) -> Self {
        Sink {
            run: run.id,
            scheduler: scheduler.clone(),
            kept,
            seq: AtomicU64::new(0),
            job_ids: plan.jobs.iter().map(|j| (j.key.clone(), j.job.clone())).collect(),
            log_bytes: Mutex::new(HashMap::new()),
            cap: scheduler.config.log_bytes_per_step,
            salt: salt.or(scheduler.config.leases_jobs().then_some(0)),
            // The database's clock, which every writer of the run's log shares.
            clock_offset: match scheduler.queue.clock_ms() {
                Ok(db) => db - now_ms(),
                Err(e) => {
                    tracing::warn!(run = run.id, "reading the database's clock (log lines use this host's): {e:#}");
                    0
                }
            },
        }
    }

    fn job_id<'a>(&'a self, key: &'a str) -> &'a str {
        self.job_ids.get(key).map(String::as_str).unwrap_or(key)
    }

    fn check(&self, what: &str, r: anyhow::Result<()>) {
        if let Err(e) = r {
            tracing::error!(run = self.run, "recording {what}: {e:#}");
        }
    }

    fn write_line(&self, job: &str, step: &str, level: &str, text: String) {
        let seq = match self.salt {
            Some(salt) => clock_seq(&self.seq, salt, now_ms() + self.clock_offset),
            None => self.seq.fetch_add(1, Ordering::SeqCst) + 1,
        };
        let rec = LogRecord {
            seq,
            ts: now_ms(),
            job: job.to_string(),
            step: step.to_string(),
            level: level.to_string(),
            text,
        };
        if let Err(e) = self.scheduler.logs.append(self.run, &rec) {
            tracing::error!(run = self.run, "writing a log line: {e}");
        }
        self.scheduler.hub.send(self.run, LiveEvent::Log(rec));
    }

    fn log(&self, job: &str, step: &str, level: &str, text: &str) {
        let n = text.len() as u64 + 1;
        {
            let mut used = self.log_bytes.lock().unwrap_or_else(|e| e.into_inner());
            let u = used.entry((job.to_string(), step.to_string())).or_insert(0);
            if *u == TRUNCATED {
                return;
            }
            if *u + n > self.cap {
                *u = TRUNCATED;
                drop(used);
                let note = format!(
                    "[skiff] the log of this step is over the limit of {} bytes; later lines are not kept",
                    self.cap
                );
                self.write_line(job, step, "warn", note);
                return;
            }
            *u += n;
        }
        self.write_line(job, step, level, text.to_string());
    }

    fn kept(&self, job: &str, step: &str) -> i64 {
        let used = self.log_bytes.lock().unwrap_or_else(|e| e.into_inner());
        match used.get(&(job.to_string(), step.to_string())) {
            Some(&TRUNCATED) => self.cap as i64,
            Some(&n) => n as i64,
            None => 0,
        }
    }

    fn live(&self, job: &str, step: &str, name: &str, status: RunStatus) {
        let e = LiveEvent::Step { job: job.into(), step: step.into(), name: name.into(), status };
        self.scheduler.hub.send(self.run, e);
    }
}

impl RunObserver for Sink {
    fn event(&self, e: &RunEvent) {
        let store = &self.scheduler.store;
        match e {
            RunEvent::JobStarted { job_id, .. } | RunEvent::JobFinished { job_id, .. }
                if self.kept.contains(job_id) => {}
            RunEvent::JobStarted { job_id, name } => {
                self.scheduler.job_counted(self.run, true);
                self.check("a job start", store.job_started(self.run, job_id, self.job_id(job_id), name));
                self.live(job_id, "", name, RunStatus::Running);
            }
            RunEvent::JobSkipped { job_id, name, status, reason } => {
                let status = RunStatus::from(*status);
                let r =
                    store.job_finished(self.run, job_id, self.job_id(job_id), name, status, Some(reason), None, None);
                self.check("a job that did not run", r);
                self.live(job_id, "", name, status);
            }
            RunEvent::JobEnvironment { job_id, environment, url } => {
                let r = store.job_environment(self.run, job_id, environment, url.as_deref());
                self.check("a job's environment", r);
            }
            RunEvent::StepStarted { job_id, step_id, name } => {
                self.check("a step start", store.step_started(self.run, job_id, step_id, name));
                self.live(job_id, step_id, name, RunStatus::Running);
            }
            RunEvent::Log(line) => self.log(&line.job_id, &line.step_id, line.level.as_str(), &line.text),
            RunEvent::StepFinished { job_id, step_id, name, status, duration_ms, error, usage: measured, .. } => {
                let usage = Usage {
                    wall_ms: Some(*duration_ms as i64),
                    log_bytes: self.kept(job_id, step_id),
                    cpu_ms: measured.map(|u| u.cpu_ms as i64),
                    peak_memory_bytes: measured.map(|u| u.peak_memory_bytes as i64),
                    egress_bytes: measured.map(|u| u.egress_bytes as i64),
                };
                let status = RunStatus::from(*status);
                let r = store.step_finished(self.run, job_id, step_id, name, status, error.as_deref(), &usage);
                self.check("a step end", r);
                self.live(job_id, step_id, name, status);
            }
            RunEvent::JobFinished { job_id, name, status, duration_ms, outputs } => {
                self.scheduler.job_counted(self.run, false);
                let status = RunStatus::from(*status);
                let r = store.job_finished(
                    self.run,
                    job_id,
                    self.job_id(job_id),
                    name,
                    status,
                    None,
                    Some(*duration_ms),
                    Some(outputs),
                );
                self.check("a job end", r);
                self.live(job_id, "", name, status);
            }
            RunEvent::RunStarted { .. } | RunEvent::RunFinished { .. } => {}
        }
    }
}

/// The job instances of an earlier attempt a rerun of its failed jobs carries over: those
/// that succeeded (or were skipped) and need, directly or not, no job that failed. As on GitHub,
/// only the failed combinations of a matrix run again, with every job downstream of them.
pub fn reusable(plan: &Plan, before: &[store::Job]) -> BTreeMap<String, (Status, BTreeMap<String, String>)> {
    let mut again: std::collections::BTreeSet<String> =
        before.iter().filter(|j| j.status.is_failed()).map(|j| j.job.clone()).collect();
    // Downstream of a failed job: everything that needs it, transitively.
    loop {
        let more: Vec<String> = plan
            .jobs
            .iter()
            .filter(|j| !again.contains(&j.job) && j.needs.iter().any(|n| again.contains(n)))
            .map(|j| j.job.clone())
            .collect();
        if more.is_empty() {
            break;
        }
        again.extend(more);
    }
    before
        .iter()
        .filter(|j| !j.status.is_failed() && plan.jobs.iter().any(|p| p.key == j.key))
        .filter(|j| {
            let downstream = plan.jobs.iter().any(|p| p.key == j.key && p.needs.iter().any(|n| again.contains(n)));
            !downstream
        })
        .filter_map(|j| {
            let st = match j.status {
                RunStatus::Success => Status::Success,
                RunStatus::Skipped => Status::Skipped,
                _ => return None,
            };
            Some((j.key.clone(), (st, j.outputs.clone())))
        })
        .collect()
}

/// Rerun: the jobs to run again for `failed_only`, as the engine's `job` option.
pub fn rerun_job(jobs: &[store::Job]) -> Result<Option<String>, String> {
    let failed: BTreeMap<&str, ()> =
        jobs.iter().filter(|j| j.status.is_failed()).map(|j| (j.job.as_str(), ())).collect();
    if failed.is_empty() {
        return Err("the run has no failed jobs to run again".into());
    }
    // The engine takes several jobs separated by commas, each with what it needs.
    Ok(Some(failed.keys().copied().collect::<Vec<_>>().join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_rules_judge_only_refs_a_run_can_be_trusted_for() {
        use serde_json::json;
        let run = |trigger: &str, git_ref: &str, body: serde_json::Value| Run {
            trigger: trigger.into(),
            git_ref: Some(git_ref.into()),
            body,
            ..Run::default()
        };
        assert_eq!(gate_ref(&run("push", "refs/heads/main", json!({}))).as_deref(), Some("refs/heads/main"));
        // A pull request names its source branch, which its author chose: never a branch.
        let bitbucket = json!({"pullrequest": {"source": {"repository": {"full_name": "eve/web"}},
                                               "destination": {"repository": {"full_name": "acme/web"}}}});
        assert_eq!(gate_ref(&run("push", "refs/heads/main", bitbucket.clone())), None);
        assert_eq!(gate_ref(&run("pull_request", "refs/heads/main", json!({}))), None);
        assert_eq!(gate_ref(&run("push", "refs/heads/main", json!({"object_kind": "merge_request"}))), None);
        // Bitbucket forks are forks.
        assert!(from_fork(&bitbucket));
        let same = json!({"pullrequest": {"source": {"repository": {"full_name": "acme/web"}},
                                          "destination": {"repository": {"full_name": "acme/web"}}}});
        assert!(!from_fork(&same));
    }

    #[test]
    fn a_plan_read_in_the_source_points_into_the_workspace_copy() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("p.yaml"), "steps:\n  - uses: ./steps/x.wasm\n  - uses: diag\n").unwrap();
        std::fs::create_dir(src.path().join("steps")).unwrap();
        std::fs::write(src.path().join("steps/x.wasm"), b"\0asm").unwrap();
        let mut plan = skiff_pipeline::load_file(&src.path().join("p.yaml")).unwrap();
        let ws = Path::new("/data/workspaces/7");
        rebase(&mut plan, src.path(), ws);
        let skiff_pipeline::plan::Uses::Path { path, .. } = &plan.jobs[0].steps[0].uses else { panic!() };
        assert_eq!(path, &ws.join("steps/x.wasm"));
        assert_eq!(plan.dir, ws);
        assert!(matches!(plan.jobs[0].steps[1].uses, skiff_pipeline::plan::Uses::Builtin(_)));
    }

    #[test]
    fn the_host_and_the_engine_see_the_same_run() {
        let run = Run {
            id: 7,
            app: "web".into(),
            number: 3,
            attempt: 2,
            event: serde_json::json!({"name": "push", "app": "web"}),
            ..Run::default()
        };
        let group =
            skiff_pipeline::expr::parse_template("${{ run.app }}-${{ run.number }}-${{ run.attempt }}-${{ run.id }}")
                .unwrap();
        assert_eq!(group.render(&scope_for(&run)).unwrap(), "web-3-2-7");
    }

    #[test]
    fn an_environment_s_branches_match_the_branch_name_or_the_whole_ref() {
        let env = |b: &[&str]| crate::config::Environment {
            name: "production".into(),
            secrets: BTreeMap::new(),
            approvers: Vec::new(),
            branches: Some(skiff_edge_core::Patterns::globs(b.iter().copied()).unwrap()),
        };
        let main = env(&["main", "release/*", "refs/tags/v*"]);
        assert!(main.allows_ref(Some("refs/heads/main")));
        assert!(main.allows_ref(Some("refs/heads/release/1.2")));
        assert!(main.allows_ref(Some("refs/tags/v1.0")));
        assert!(!main.allows_ref(Some("refs/heads/feature/main")));
        assert!(!main.allows_ref(Some("refs/pull/7/merge")));
        assert!(!main.allows_ref(Some("refs/tags/main")), "a branch pattern names branches only");
        assert!(!main.allows_ref(None));
        let any = crate::config::Environment { branches: None, ..env(&["x"]) };
        assert!(any.allows_ref(None));
    }
}
