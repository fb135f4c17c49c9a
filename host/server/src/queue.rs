//! The run queue: which queued runs a host takes, and the lease by which it holds one while it
//! runs it. Modelled on Woodpecker's `server/queue` (`Poll`, `Extend`, `Done`): a host leases a
//! run for a while, renews the lease while the run goes on (its heartbeat), and completes it
//! with how it ended. A lease that expires (the host died, or stalled) makes the run available
//! again, for any host, as a new attempt.
//!
//! The scheduler decides *which* available run to lease under its limits (the host's, the
//! app's, the concurrency group's); the queue makes taking it atomic, so that two owners never
//! hold the same run. The single-host SQLite store also recovers, at start, every run its own
//! previous life left running (see [`RunStore::recover`](crate::store::RunStore::recover)).

use std::time::Duration;

use crate::store::{Run, RunStatus};

/// A run held by an owner until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The run.
    pub run: i64,
    /// Who holds it (a host).
    pub owner: String,
    /// Unix ms; renewed by [`RunQueue::extend`].
    pub expires_at: i64,
    /// The run was running under an expired lease of another owner: it starts over as its
    /// next attempt (its jobs and steps so far are dropped).
    pub taken_over: bool,
}

/// What must hold, over the runs every host runs, for a run to be leased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// No other run of the app's concurrency group of this name holds a live lease (one
    /// waiting for approvals holds its group too, and so does one ended through another host
    /// until its own host has stopped it).
    pub group: Option<String>,
    /// Fewer than this many runs of the app run (those that only wait for approvals do not
    /// count): the app's `max-concurrent-runs`.
    pub app_max: Option<usize>,
}

impl Admission {
    /// Whether there is anything to check.
    pub fn is_empty(&self) -> bool {
        self.group.is_none() && self.app_max.is_none()
    }
}

/// Runs waiting to run, and the leases of those that run.
pub trait RunQueue: Send + Sync + 'static {
    /// The runs that can be leased, oldest first, at most `limit`: queued runs, and running
    /// runs whose lease has expired.
    fn available(&self, limit: usize) -> anyhow::Result<Vec<Run>>;

    /// Takes run `id` for `owner` until `ttl` from now: the run is `running` from here. `None`
    /// when it cannot be taken: it is not queued, and not running under an expired lease
    /// (another owner holds it, or it is over).
    fn lease(&self, id: i64, owner: &str, ttl: Duration) -> anyhow::Result<Option<Lease>> {
        self.lease_within(id, owner, ttl, &Admission::default())
    }

    /// [`Self::lease`], if `admission` holds at that moment across every host sharing the
    /// queue; leases of one app are decided one at a time, so two hosts racing cannot both
    /// admit a run past a limit.
    fn lease_within(&self, id: i64, owner: &str, ttl: Duration, admission: &Admission)
    -> anyhow::Result<Option<Lease>>;

    /// The heartbeat: `owner` still runs `id`, until `ttl` from now. A lease that expired but
    /// that nobody took is still `owner`'s (a host that stalled resumes). False when the lease
    /// is no longer `owner`'s (another owner took it, or the run ended): the owner should stop
    /// running it.
    fn extend(&self, id: i64, owner: &str, ttl: Duration) -> anyhow::Result<bool>;

    /// `owner` stopped running `id`, which someone else ended (a cancel through another
    /// host): its lease, which held the run's group and app slot until now, is released.
    /// Nothing changes when the lease is not `owner`'s or the run still runs.
    fn release(&self, id: i64, owner: &str) -> anyhow::Result<()>;

    /// `owner` finished running `id`: the run ends with `status` (its open jobs and steps too)
    /// and the lease is released. False, and nothing changes, when the lease is not `owner`'s.
    fn complete(&self, id: i64, owner: &str, status: RunStatus, error: Option<&str>) -> anyhow::Result<bool>;
}

/// A job instance offered to the pool: the host running its run's graph puts it here, any
/// host with its labels leases it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOffer {
    /// The run.
    pub run: i64,
    /// The run's attempt: a job of an earlier attempt is never leased.
    pub attempt: i64,
    /// The job instance.
    pub key: String,
    /// The labels a host needs to take it.
    pub labels: Vec<String>,
    /// What the host needs to run it ([`skiff_pipeline::JobTicket`] as JSON).
    pub ticket: String,
}

/// A job instance held by a host until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLease {
    /// The run.
    pub run: i64,
    /// The run's attempt.
    pub attempt: i64,
    /// The job instance.
    pub key: String,
    /// [`JobOffer::ticket`].
    pub ticket: String,
    /// Which time the job is taken, from 1: 2 when its first host stopped renewing its lease.
    pub tries: i64,
}

/// Where an offered job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// No host has taken it yet.
    Queued,
    /// `owner` runs it.
    Running {
        /// The host.
        owner: String,
        /// Which time it is taken, from 1.
        tries: i64,
    },
    /// It ended: its report ([`skiff_pipeline::JobReport`] as JSON).
    Done(String),
    /// It was called off (its run ended or was cancelled).
    Cancelled,
    /// It was taken twice and its host stopped both times: it is not taken again, and its run
    /// fails it.
    Abandoned,
}

/// Jobs, rather than whole runs, leased across a pool of hosts: the host that leased a run runs
/// its graph and offers each job instance here when its `needs` are done; a host whose labels
/// cover the job's leases it with `FOR UPDATE SKIP LOCKED`, renews the lease while it runs it
/// and completes it with the job's report, which the graph reads back. A job whose lease
/// expires (its host died or lost the database) is leased again by another host, once.
pub trait JobQueue: Send + Sync + 'static {
    /// Offers a job instance; an offer of the same job of the same attempt replaces one not
    /// taken yet.
    fn offer_job(&self, offer: &JobOffer) -> anyhow::Result<()>;

    /// Leases for `owner` the oldest offered job whose labels are all in `labels`, of a run
    /// still running at that attempt on a live host (of `only_runs`, when given). Jobs whose
    /// lease expired are offered again first (their second try), or, taken twice already,
    /// abandoned; jobs of runs that ended or started over are called off. `None` when there
    /// is nothing to take.
    fn lease_job(
        &self,
        owner: &str,
        labels: &[String],
        ttl: Duration,
        only_runs: Option<&[i64]>,
    ) -> anyhow::Result<Option<JobLease>>;

    /// The heartbeat of a job: false when the lease is no longer `owner`'s (another try took
    /// it over, it was called off, or its run ended): the owner should stop running it.
    fn extend_job(&self, lease: &JobLease, owner: &str, ttl: Duration) -> anyhow::Result<bool>;

    /// `owner` finished the job with `report`. False, and nothing changes, when the lease is
    /// no longer `owner`'s.
    fn complete_job(&self, lease: &JobLease, owner: &str, report: &str) -> anyhow::Result<bool>;

    /// Where an offered job is; `None` when it was never offered.
    fn job_state(&self, run: i64, attempt: i64, key: &str) -> anyhow::Result<Option<JobState>>;

    /// Calls off the jobs of a run's attempt not done: every one (`key` `None`) or one. Their
    /// hosts stop them at their next heartbeat.
    fn cancel_jobs(&self, run: i64, attempt: i64, key: Option<&str>) -> anyhow::Result<()>;

    /// The run's attempt is over: its jobs leave the queue (a host still running one finds its
    /// lease gone).
    fn forget_jobs(&self, run: i64, attempt: i64) -> anyhow::Result<()>;

    /// Unix ms by the clock every host sharing the queue agrees on (the database's).
    fn clock_ms(&self) -> anyhow::Result<i64>;
}

/// Both queues, as one store keeps them: runs, and the jobs of runs spread over a pool.
pub trait Queue: RunQueue + JobQueue {}
impl<T: RunQueue + JobQueue> Queue for T {}
