//! The run store: runs, their jobs and steps, cron bookkeeping and recovery, behind
//! [`RunStore`]. The rows here are the store's own types; the API shows them through its own
//! (`api::Run`, …), so a column can change without changing a response.
//!
//! [`SqliteStore`] is the store of a single host: SQLite in WAL mode; accepting a run commits
//! with `synchronous=FULL`, so a run answered 202 survives a crash, even a power cut. It also
//! implements the host's [`RunQueue`](crate::queue::RunQueue).
//!
//! [`PostgresStore`] (`store = "postgres://…"`) behaves the same, in a database several hosts
//! may share. One behavioural test suite (`tests.rs`) runs against both.

pub(crate) mod pg_tls;
mod postgres;
mod sqlite;
mod status;
#[cfg(test)]
mod tests;

pub use self::postgres::{MIGRATIONS as POSTGRES_MIGRATIONS, PostgresStore, redacted as postgres_url_redacted};
pub use self::sqlite::{MIGRATIONS, SqliteStore};
pub use self::status::{RunStatus, UnknownStatus};

use std::collections::BTreeMap;

use anyhow::Context as _;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A run to store.
#[derive(Debug, Clone, Default)]
pub struct NewRun {
    /// The app.
    pub app: String,
    /// `push`, `pull_request`, `manual`, `schedule`, `rerun`, …
    pub trigger: String,
    /// Why it runs.
    pub reason: String,
    /// The Git ref.
    pub git_ref: Option<String>,
    /// The commit.
    pub sha: Option<String>,
    /// Dedupe key (the dispatch id); a second run with the same key is not created.
    pub dispatch_id: Option<String>,
    /// `inputs` context.
    pub inputs: BTreeMap<String, String>,
    /// `event` context.
    pub event: serde_json::Value,
    /// `body` context.
    pub body: serde_json::Value,
    /// Run only this job (and what it needs).
    pub job: Option<String>,
    /// For a rerun: the run it repeats (same number, next attempt).
    pub parent: Option<(i64, i64, i64)>,
    /// The token (or `webhook`, `cron`) that asked for it.
    pub requested_by: Option<String>,
    /// The pipeline file of the commit it runs, when the commit has several.
    pub pipeline: Option<String>,
}

impl NewRun {
    /// A rerun of `run` (all of it, or `job` and what it needs) as its next attempt after
    /// `attempt`: the same number, commit, event and inputs.
    pub fn rerun_of(run: &Run, job: Option<String>, attempt: i64, reason: String, requested_by: &str) -> Self {
        NewRun {
            app: run.app.clone(),
            trigger: run.trigger.clone(),
            reason,
            git_ref: run.git_ref.clone(),
            sha: run.sha.clone(),
            inputs: run.inputs.clone(),
            event: run.event.clone(),
            body: run.body.clone(),
            job,
            pipeline: run.pipeline.clone(),
            parent: Some((run.id, run.number, attempt)),
            requested_by: Some(requested_by.to_string()),
            ..NewRun::default()
        }
    }
}

/// What [`RunStore::insert_run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// The run's id.
    pub id: i64,
    /// Its number within the app.
    pub number: i64,
    /// True when the dispatch id was already known: no new run was created.
    pub duplicate: bool,
}

/// A run as stored.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Id, unique on this host.
    pub id: i64,
    /// The app.
    pub app: String,
    /// Number within the app (a rerun keeps it).
    pub number: i64,
    /// 1 for the first attempt; a rerun or a retry after a crash adds one.
    pub attempt: i64,
    /// Its state (`skipped`: its pipeline's `on:` did not take the event).
    pub status: RunStatus,
    /// What started it: `push`, `pull_request`, `manual`, `schedule`, `rerun`, …
    pub trigger: String,
    /// Why it runs.
    pub reason: String,
    /// The Git ref.
    pub git_ref: Option<String>,
    /// The commit.
    pub sha: Option<String>,
    /// The dispatch id it was created for (redeliveries of it create no run).
    pub dispatch_id: Option<String>,
    /// Inputs.
    pub inputs: BTreeMap<String, String>,
    /// Only this job (and what it needs) runs.
    pub job: Option<String>,
    /// The run this one repeats.
    pub parent_id: Option<i64>,
    /// Who asked for it.
    pub requested_by: Option<String>,
    /// The pipeline file of the commit it runs (`.skiff/pipelines/deploy.yaml`), when the
    /// commit has several: each runs as a run of its own.
    pub pipeline: Option<String>,
    /// The evaluated `concurrency.group`.
    pub concurrency_group: Option<String>,
    /// How often the host stopped while this run was running.
    pub interruptions: i64,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub started_at: Option<i64>,
    /// Unix ms.
    pub finished_at: Option<i64>,
    /// Wall time of the run so far, in ms.
    pub duration_ms: Option<i64>,
    /// `event` context.
    pub event: serde_json::Value,
    /// `body` context.
    pub body: serde_json::Value,
    /// Whether its pipeline was loaded and its concurrency group settled.
    pub prepared: bool,
    /// Whether a newer run of its group cancels it while it runs.
    pub cancel_in_progress: bool,
    /// The labels a host needs to take it (its jobs' `runs-on`), once its pipeline was read.
    pub labels: Vec<String>,
}

/// A job of a run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job instance (`build`, or `build-2` for a matrix combination).
    pub key: String,
    /// The job id in the pipeline.
    pub job: String,
    /// Display name.
    pub name: String,
    /// `running`, or how it ended.
    pub status: RunStatus,
    /// Why it was skipped or failed.
    pub reason: Option<String>,
    /// Unix ms.
    pub started_at: Option<i64>,
    /// Unix ms.
    pub finished_at: Option<i64>,
    /// Wall time in ms.
    pub duration_ms: Option<i64>,
    /// Its outputs (masked).
    pub outputs: BTreeMap<String, String>,
    /// The deployment environment it runs in.
    pub environment: Option<String>,
    /// The URL its `environment.url` gave when it ended.
    pub environment_url: Option<String>,
    /// Its steps in order.
    pub steps: Vec<Step>,
}

/// A decision on a job waiting for an approval of its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The run.
    pub run: i64,
    /// The run's attempt it holds for (a retry after a crash asks again).
    pub attempt: i64,
    /// The job instance.
    pub job_key: String,
    /// The environment.
    pub environment: String,
    /// Approved (true) or rejected.
    pub approved: bool,
    /// The name of the token that decided.
    pub by: String,
    /// Unix ms.
    pub at: i64,
}

/// A step of a job, with its usage.
#[derive(Debug, Clone)]
pub struct Step {
    /// Step id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `running`, or how it ended.
    pub status: RunStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// Unix ms.
    pub started_at: Option<i64>,
    /// Unix ms.
    pub finished_at: Option<i64>,
    /// Usage.
    pub usage: Usage,
}

/// What a step used. Fields the executor does not report are `None`.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Wall time in ms.
    pub wall_ms: Option<i64>,
    /// CPU time in ms.
    pub cpu_ms: Option<i64>,
    /// Peak memory in bytes.
    pub peak_memory_bytes: Option<i64>,
    /// Bytes sent and received over HTTP.
    pub egress_bytes: Option<i64>,
    /// Log bytes kept.
    pub log_bytes: i64,
}

/// Filters for [`RunStore::list_runs`].
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only these apps (`None`: all).
    pub apps: Option<Vec<String>>,
    /// Only this app.
    pub app: Option<String>,
    /// Only this status.
    pub status: Option<RunStatus>,
    /// Ids below this (paging).
    pub before: Option<i64>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<i64>,
}

/// What the web console also filters runs by, beside a [`RunFilter`].
#[derive(Debug, Clone, Default)]
pub struct RunSearch {
    /// Only this Git ref (`refs/heads/main`).
    pub git_ref: Option<String>,
    /// Only runs started by this trigger (`push`, `manual`, …).
    pub trigger: Option<String>,
}

/// What startup recovery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Runs put back in the queue.
    pub retried: Vec<i64>,
    /// Runs whose jobs were all done or waiting for an approval: queued again as they were
    /// (same attempt, their finished jobs kept), to wait again.
    pub resumed: Vec<i64>,
    /// Runs failed.
    pub failed: Vec<i64>,
}

/// Where runs are kept: what the API reads and the scheduler writes as a run goes from
/// accepted to ended. Starting a queued run (taking it) is the [`RunQueue`](crate::queue::RunQueue)'s.
///
/// The methods are synchronous: the step engine reports progress through a synchronous
/// observer, and SQLite answers in microseconds. A store over the network would answer from a
/// blocking pool.
pub trait RunStore: Send + Sync + 'static {
    /// Stores several queued runs in one transaction, durably (committed and synced) before it
    /// returns; one result per run, in order. A run whose `dispatch_id` is known is not stored
    /// again: the existing run is returned, marked `duplicate`. A run that cannot be stored
    /// gets its error without failing the others.
    fn insert_runs(&self, runs: &[NewRun]) -> anyhow::Result<Vec<anyhow::Result<Inserted>>>;

    /// [`Self::insert_runs`] for one run.
    fn insert_run(&self, run: &NewRun) -> anyhow::Result<Inserted> {
        let mut out = self.insert_runs(std::slice::from_ref(run))?;
        out.pop().context("no run inserted")?
    }

    /// One run.
    fn run(&self, id: i64) -> anyhow::Result<Option<Run>>;

    /// Runs, newest first.
    fn list_runs(&self, f: &RunFilter) -> anyhow::Result<Vec<Run>>;

    /// Runs, newest first, that both `f` and `more` take. The default reads pages of
    /// [`Self::list_runs`]; a database answers from its indexes.
    fn search_runs(&self, f: &RunFilter, more: &RunSearch) -> anyhow::Result<Vec<Run>> {
        let limit = f.limit.unwrap_or(50).clamp(1, 500) as usize;
        let mut page = RunFilter { limit: Some(500), ..f.clone() };
        let mut out = Vec::new();
        loop {
            let runs = self.list_runs(&page)?;
            let Some(last) = runs.last().map(|r| r.id) else { return Ok(out) };
            out.extend(runs.into_iter().filter(|r| {
                more.git_ref.as_ref().is_none_or(|g| r.git_ref.as_ref() == Some(g))
                    && more.trigger.as_ref().is_none_or(|t| &r.trigger == t)
            }));
            if out.len() >= limit {
                out.truncate(limit);
                return Ok(out);
            }
            page.before = Some(last);
        }
    }

    /// The newest run of `app` for each Git ref it ran (a run without a ref counts as one).
    fn latest_per_ref(&self, app: &str) -> anyhow::Result<Vec<Run>> {
        let runs = self.list_runs(&RunFilter { app: Some(app.into()), limit: Some(500), ..RunFilter::default() })?;
        let mut seen = std::collections::BTreeSet::new();
        Ok(runs.into_iter().filter(|r| seen.insert(r.git_ref.clone())).collect())
    }

    /// How many runs there are (all statuses).
    fn count_runs(&self) -> anyhow::Result<i64>;

    /// Removes at most `limit` of `app`'s runs that ended before `before_ms` (their jobs, steps
    /// and decisions with them; run numbers are not reused); returns their ids, so their logs and
    /// artifacts can go too. Runs in progress are never removed.
    fn prune_runs(&self, app: &str, before_ms: i64, limit: usize) -> anyhow::Result<Vec<i64>>;

    /// The highest attempt of run `number` of `app` (for a rerun's attempt).
    fn max_attempt(&self, app: &str, number: i64) -> anyhow::Result<i64>;

    /// Records a queued run's concurrency group: it is prepared.
    fn set_prepared(&self, id: i64, group: Option<&str>, cancel_in_progress: bool) -> anyhow::Result<()>;

    /// Which of its commit's pipelines a run runs.
    fn set_pipeline(&self, id: i64, pipeline: &str) -> anyhow::Result<()>;

    /// The labels a host needs to take a run (its jobs' `runs-on`), once its pipeline is read;
    /// empty: any host.
    fn set_labels(&self, id: i64, labels: &[String]) -> anyhow::Result<()>;

    /// A manual run's inputs, checked against the pipeline's `workflow_dispatch` and with its
    /// defaults.
    fn set_inputs(&self, id: i64, inputs: &BTreeMap<String, String>) -> anyhow::Result<()>;

    /// Records the commit a run builds, once it is known (a manual run names only a ref), in
    /// its `sha` and in its `event.sha`.
    fn set_sha(&self, id: i64, sha: &str) -> anyhow::Result<()>;

    /// Queued runs of `group` older than `id`.
    fn queued_in_group_before(&self, group: &str, id: i64) -> anyhow::Result<Vec<i64>>;

    /// Ends a run (unless it already ended), whoever holds it, and closes its open jobs and
    /// steps with the same status (`cancelled` when the run succeeded). False if it had already
    /// ended. A run this host is running ends with [`RunQueue::complete`](crate::queue::RunQueue::complete).
    fn finish_run(&self, id: i64, status: RunStatus, error: Option<&str>) -> anyhow::Result<bool>;

    /// A job began.
    fn job_started(&self, run: i64, key: &str, job: &str, name: &str) -> anyhow::Result<()>;

    /// A job ended or was skipped.
    #[allow(clippy::too_many_arguments)]
    fn job_finished(
        &self,
        run: i64,
        key: &str,
        job: &str,
        name: &str,
        status: RunStatus,
        reason: Option<&str>,
        duration_ms: Option<u64>,
        outputs: Option<&BTreeMap<String, String>>,
    ) -> anyhow::Result<()>;

    /// A job waits for a host of the pool to take it, with the reason (the labels it needs). A
    /// job that started or ended already keeps its row.
    fn job_queued(&self, run: i64, key: &str, job: &str, name: &str, reason: &str) -> anyhow::Result<()>;

    /// A job waits before its first step (for an approval of `environment`), with the reason.
    #[allow(clippy::too_many_arguments)]
    fn job_waiting(
        &self,
        run: i64,
        key: &str,
        job: &str,
        name: &str,
        environment: &str,
        reason: &str,
    ) -> anyhow::Result<()>;

    /// A started job's environment, and, at its end, the URL its `environment.url` gave.
    fn job_environment(&self, run: i64, key: &str, environment: &str, url: Option<&str>) -> anyhow::Result<()>;

    /// Records a decision on a waiting job. False, and nothing changes, when the job of that
    /// attempt was already decided.
    fn decide(&self, d: &Decision) -> anyhow::Result<bool>;

    /// The decision on a job of a run's attempt, if any.
    fn decision(&self, run: i64, attempt: i64, key: &str) -> anyhow::Result<Option<Decision>>;

    /// Every decision on a run's jobs, oldest first.
    fn decisions(&self, run: i64) -> anyhow::Result<Vec<Decision>>;

    /// A step began.
    fn step_started(&self, run: i64, job: &str, step: &str, name: &str) -> anyhow::Result<()>;

    /// A step ended (or was skipped, and so never started).
    #[allow(clippy::too_many_arguments)]
    fn step_finished(
        &self,
        run: i64,
        job: &str,
        step: &str,
        name: &str,
        status: RunStatus,
        error: Option<&str>,
        usage: &Usage,
    ) -> anyhow::Result<()>;

    /// A run's jobs with their steps, in order.
    fn jobs(&self, run: i64) -> anyhow::Result<Vec<Job>>;

    /// Startup of a single host: runs left `running` by a stopped host are queued again (once,
    /// with `retry`) or failed with the reason. A run that was only waiting (every job it had
    /// started was over, or waiting for an approval) is queued again as it was, to wait again.
    /// A store that several hosts share ([`PostgresStore`]) leaves the runs that a live lease
    /// holds to their owners.
    fn recover(&self, retry: bool) -> anyhow::Result<Recovered>;

    /// When a cron schedule last fired (Unix seconds).
    fn cron_last_fired(&self, app: &str, cron: &str) -> anyhow::Result<Option<i64>>;

    /// Records when a cron schedule fired.
    fn set_cron_last_fired(&self, app: &str, cron: &str, at: i64) -> anyhow::Result<()>;

    /// Keeps a web console session (`viewer`, as its JSON) under `id` (a digest of the
    /// cookie, never the cookie) until `expires_ms`, with every instance sharing the store.
    /// Expired sessions go; past `max`, the ones closest to expiring go first.
    fn session_save(&self, id: &str, viewer: &str, expires_ms: i64, now_ms: i64, max: usize) -> anyhow::Result<()>;

    /// The viewer of a session that has not expired at `now_ms`.
    fn session(&self, id: &str, now_ms: i64) -> anyhow::Result<Option<String>>;

    /// Ends a session (sign-out).
    fn session_end(&self, id: &str) -> anyhow::Result<()>;
}

/// Whether a host with `have` may take a job needing `needs` (comma-separated `runs-on`).
pub(crate) fn covers(have: &[String], needs: &str) -> bool {
    needs.split(',').filter(|l| !l.is_empty()).all(|l| have.iter().any(|h| h == l))
}

/// A `job_queue` row as a [`JobState`](crate::queue::JobState).
pub(crate) fn job_state(
    state: String,
    owner: Option<String>,
    report: Option<String>,
    tries: i64,
) -> anyhow::Result<crate::queue::JobState> {
    use crate::queue::JobState;
    Ok(match (state.as_str(), owner, report) {
        ("queued", ..) => JobState::Queued,
        ("running", Some(owner), _) => JobState::Running { owner, tries },
        ("done", _, Some(report)) => JobState::Done(report),
        ("cancelled", ..) => JobState::Cancelled,
        ("abandoned", ..) => JobState::Abandoned,
        (other, ..) => anyhow::bail!("the job queue holds a job in a state it does not know: `{other}`"),
    })
}
