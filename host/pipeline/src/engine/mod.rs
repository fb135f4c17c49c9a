//! The engine: runs a [`Plan`] through a [`StepExecutor`], jobs in parallel
//! as their `needs` allow, and reports [`RunEvent`]s (masked) to an observer.
//!
//! `graph` starts each job instance once what it needs has finished (its `if:`, fail-fast,
//! `max-parallel`, the `needs` context); `job` runs one job's steps and post scripts;
//! `events` holds what a run reports and masks it on the way out.
//!
//! [`Plan`]: crate::Plan
//! [`StepExecutor`]: crate::StepExecutor

mod events;
mod graph;
mod job;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use events::{JobReport, NoObserver, RunEvent, RunObserver, RunReport, Status, StepReport};
pub use graph::{run_job, run_pipeline};

/// The `PATH` a process gets when its environment names none (as the process sandbox,
/// `skiff-sandbox`, sets it); `$SKIFF_PATH` entries go in front of it.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

impl RunOptions {
    /// The contexts every expression of the run sees: `event`, `body`, `inputs`, `secrets` and
    /// `run` (`id`, `number`, `attempt`, and `app` when the event names one). The one place they
    /// are built: the engine uses it for the run, and the host for what it evaluates before the
    /// run starts (`concurrency.group`), so both see the same `run`.
    pub fn scope(&self) -> crate::expr::Scope {
        let mut scope = crate::expr::Scope::default();
        scope.set_json("event", &self.event);
        scope.set_json("body", &self.body);
        scope.vars.insert("secrets", crate::expr::strings_to_cel(&self.secrets));
        scope.vars.insert("inputs", crate::expr::strings_to_cel(&self.inputs));
        let mut run =
            serde_json::json!({"id": self.run_id, "number": self.run_number, "attempt": self.run_attempt.max(1)});
        if let Some(app) = self.event.get("app").filter(|a| a.is_string()) {
            run["app"] = app.clone();
        }
        scope.set_json("run", &run);
        scope
    }
}

/// What a run is started with.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The run's id (`run.id`).
    pub run_id: String,
    /// `run.number`.
    pub run_number: u64,
    /// `run.attempt`, from 1.
    pub run_attempt: u32,
    /// The normalized event (`event` context): name, ref, sha, …
    pub event: serde_json::Value,
    /// The raw webhook payload (`body` context).
    pub body: serde_json::Value,
    /// Every secret the run may grant, by name.
    pub secrets: BTreeMap<String, String>,
    /// `inputs` context (manual runs, `--input`).
    pub inputs: BTreeMap<String, String>,
    /// The run's workspace. One job runs in it directly; with several, each job runs in `<workspace>/<job key>`.
    pub workspace: PathBuf,
    /// Run only this job, or these comma-separated jobs, and the jobs they need.
    pub job: Option<String>,
    /// PEM certificates the app trusts for HTTPS besides the Web PKI roots (`ca-file`).
    pub ca_bundle: Option<Arc<str>>,
    /// Steps may only read (a pull request from a fork): see [`Grants::read_only`](crate::Grants::read_only).
    pub read_only: bool,
    /// Job instances not run again (a rerun of failed jobs): how they ended in the earlier
    /// attempt, and their outputs, which their dependents see as if they had just run.
    pub reuse: BTreeMap<String, (Status, BTreeMap<String, String>)>,
    /// Fills each job's own folder before its steps run (the host's checkout of the run's
    /// commit), when the run has several jobs.
    pub job_setup: Option<JobSetup>,
    /// Secrets of deployment environments, by environment: a job in `environment: NAME` sees
    /// these besides [`Self::secrets`] (and wins over them); no other job sees them.
    pub environment_secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// Asked before a job in an environment starts (after its `if:`): the host's protection
    /// rules. Without it, environments are unprotected.
    pub gate: Option<JobGate>,
    /// Runs each job instance somewhere else (a pool of hosts leasing jobs) instead of in this
    /// process: the run's graph stays here, its jobs go where [`JobDispatch`] sends them.
    pub dispatch: Option<JobDispatch>,
}

/// What a job instance needs, besides the run, to run anywhere: it travels as JSON to the host
/// that leases it, which runs it with [`run_job`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobTicket {
    /// The job instance (`build`, `test-2`).
    pub key: String,
    /// The job's id in the pipeline (`test`).
    pub job: String,
    /// Its display name.
    pub name: String,
    /// The deployment environment whose rules let it start, if any: the host running it gives
    /// it that environment's secrets only if its own reading of the pipeline agrees.
    pub environment: Option<String>,
    /// The `needs` context: each needed job's `outputs` and `result`.
    pub needs: serde_json::Value,
    /// Its folder under the run's workspace; empty when the run has one job, which runs in the
    /// workspace itself.
    pub dir: String,
    /// The labels a host needs to run it (its `runs-on`).
    pub labels: Vec<String>,
}

impl JobTicket {
    /// Where the job runs, in the run's workspace `run`.
    pub fn workspace(&self, run: &std::path::Path) -> PathBuf {
        if self.dir.is_empty() { run.to_path_buf() } else { run.join(&self.dir) }
    }
}

/// Runs a job instance elsewhere and waits for its report. The flag says the job should stop
/// (another combination of its matrix failed, with fail-fast); dropping the future (the run
/// was cancelled) abandons it.
#[derive(Clone)]
#[allow(clippy::type_complexity)]
pub struct JobDispatch(
    pub  Arc<
        dyn Fn(
                JobTicket,
                Arc<std::sync::atomic::AtomicBool>,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = JobReport> + Send>>
            + Send
            + Sync,
    >,
);

impl std::fmt::Debug for JobDispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobDispatch")
    }
}

/// What a job in an environment asks the [`JobGate`] before its first step.
#[derive(Debug, Clone)]
pub struct GateRequest {
    /// The job instance.
    pub job_key: String,
    /// The job id in the pipeline.
    pub job: String,
    /// Its display name.
    pub name: String,
    /// The environment.
    pub environment: String,
}

/// Why a job in an environment does not run: how it ends, and a sentence saying why.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// `failure` (a rule refused it) or `cancelled` (someone rejected it).
    pub status: Status,
    /// Why, for the job's record.
    pub reason: String,
}

/// The host's protection rules for environments: may this job start? It may wait (for an
/// approval) as long as it needs; dropping the future (a cancelled run) ends the wait. `Ok`
/// may carry a line for the job's log (who approved it).
#[derive(Clone)]
#[allow(clippy::type_complexity)]
pub struct JobGate(
    pub  Arc<
        dyn Fn(
                GateRequest,
            )
                -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<String>, Refusal>> + Send>>
            + Send
            + Sync,
    >,
);

impl std::fmt::Debug for JobGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobGate")
    }
}

/// What prepares a job's folder: called with the folder, which exists and is empty.
#[derive(Clone)]
pub struct JobSetup(
    #[allow(clippy::type_complexity)]
    pub  Arc<
        dyn Fn(PathBuf) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
            + Send
            + Sync,
    >,
);

impl std::fmt::Debug for JobSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobSetup")
    }
}
