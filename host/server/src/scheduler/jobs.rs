//! Jobs leased across a pool of hosts (`lease-jobs`, on with PostgreSQL): the host that leased
//! a run runs its graph and offers each job instance to the [`JobQueue`](crate::queue::JobQueue)
//! once its `needs` are done ([`Scheduler::job_dispatch`]); every host leases the jobs its
//! labels cover, runs them in a workspace of its own, renews their leases with its heartbeat
//! and completes them with the job's report, which the graph reads back.
//!
//! A job whose host dies or loses the database loses its lease after `lease-timeout-secs` and
//! is taken by another host (its second try, as a run is retried once); its first host, if it
//! comes back, finds the lease gone at its next heartbeat and stops without completing it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use skiff_pipeline::{JobDispatch, JobReport, JobTicket, RunEvent, RunObserver, RunOptions, Status, StepExecutor};
use tokio::task::AbortHandle;

use super::{JobLease, JobOffer, JobState, Scheduler, Sink, from_fork, load_plan};
use crate::config::AppConfig;
use crate::store::{Run, RunStatus};

/// How often an idle host asks the queue for a job, and a graph for its jobs' ends (a job that
/// ends on this host wakes its graph at once).
const JOB_POLL: Duration = Duration::from_millis(200);

/// A job this host runs for a run whose graph may run elsewhere.
pub(super) struct JobHere {
    pub(super) abort: AbortHandle,
    /// Its lease (with the try it is, the lease's token).
    lease: JobLease,
    /// When its lease was last taken or renewed.
    renewed: Instant,
    /// Its lease is gone: stopped, it is not completed.
    lost: bool,
}

/// The identity of a leased job: run, attempt, job instance.
pub(super) type JobId = (i64, i64, String);

/// How often this host renews the leases of the jobs it runs, at most: a job called off (its
/// run cancelled, a fail-fast sibling failed) stops within this long.
const JOB_BEAT: Duration = Duration::from_secs(2);

impl Scheduler {
    /// Takes jobs from the pool while this host has room (`max-concurrent-runs` jobs at once),
    /// and renews the leases of those it runs. A draining host takes only jobs of the runs whose
    /// graph it runs (they may wait for a job no other host has room for); a halted one none.
    pub(super) async fn lease_jobs(self: Arc<Self>) {
        let beat = JOB_BEAT.min(self.config.lease_ttl / 4);
        let mut last_beat = Instant::now();
        while !self.halted() {
            if last_beat.elapsed() >= beat {
                self.job_heartbeat();
                last_beat = Instant::now();
            }
            loop {
                let mine: Option<Vec<i64>> = self.draining().then(|| self.running().keys().copied().collect());
                if mine.as_ref().is_some_and(Vec::is_empty)
                    || self.jobs_here().len() >= self.config.max_concurrent_runs
                    || self.halted()
                {
                    break;
                }
                let leased =
                    self.queue.lease_job(&self.owner, &self.config.labels, self.config.lease_ttl, mine.as_deref());
                match leased {
                    Ok(Some(lease)) => self.start_job(lease),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!("taking a job from the pool: {e:#}");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = self.job_wake.notified() => {}
                _ = tokio::time::sleep(JOB_POLL) => {}
            }
        }
    }

    pub(super) fn jobs_here(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<JobId, JobHere>> {
        self.jobs_here.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start_job(self: &Arc<Self>, lease: JobLease) {
        let id: JobId = (lease.run, lease.attempt, lease.key.clone());
        tracing::info!(run = lease.run, job = %lease.key, tries = lease.tries, "job taken from the pool");
        let folder = format!("job-{}-{}-{}-{}", lease.run, lease.attempt, lease.key, lease.tries);
        let root = self.config.data_dir.join("work").join(folder);
        let this = self.clone();
        let (taken, workspace) = (lease.clone(), root.clone());
        let task = tokio::spawn(async move { this.run_leased(taken, workspace).await });
        let here = JobHere { abort: task.abort_handle(), lease: lease.clone(), renewed: Instant::now(), lost: false };
        if let Some(before) = self.jobs_here().insert(id.clone(), here) {
            // This host's own earlier try, whose lease lapsed while it ran (a stalled host):
            // it stops, and its end is not recorded.
            before.abort.abort();
        }
        let this = self.clone();
        tokio::spawn(async move {
            let ended = task.await;
            let lost = this.jobs_here().get(&id).is_none_or(|h| h.lost || h.lease.tries != lease.tries);
            let report = match ended {
                // Stopped: its lease is gone, or the host halted.
                Err(e) if e.is_cancelled() => None,
                Err(e) => {
                    tracing::error!(run = lease.run, job = %lease.key, "the job's task panicked: {e}");
                    Some(failed_job(&lease.key, &lease.key))
                }
                Ok(report) => Some(report),
            };
            if let Some(report) = report.filter(|_| !lost && !this.halted()) {
                // Recorded while the heartbeat still renews the lease; a short outage of the
                // database is waited out.
                let json = serde_json::to_string(&report).unwrap_or_default();
                let started = Instant::now();
                loop {
                    match this.queue.complete_job(&lease, &this.owner, &json) {
                        Ok(true) => break,
                        Ok(false) => {
                            tracing::warn!(run = lease.run, job = %lease.key, "the job ended here, but its lease had moved on");
                            break;
                        }
                        Err(e) if started.elapsed() < this.config.lease_ttl / 2 => {
                            tracing::warn!(run = lease.run, job = %lease.key, "recording the job's end (retrying): {e:#}");
                            tokio::time::sleep(JOB_POLL).await;
                        }
                        Err(e) => {
                            tracing::error!(run = lease.run, job = %lease.key, "recording the job's end: {e:#}");
                            break;
                        }
                    }
                }
            }
            {
                let mut here = this.jobs_here();
                if here.get(&id).is_some_and(|h| h.lease.tries == lease.tries) {
                    here.remove(&id);
                }
            }
            if !this.config.keep_workspaces {
                let _ = tokio::fs::remove_dir_all(&root).await;
            }
            // Its graph, if it runs here, looks at once.
            let _ = this.job_done.send(id);
            this.job_wake.notify_one();
        });
    }

    /// The heartbeat of the jobs this host runs: as for runs, a job whose lease is gone (its
    /// run ended or started over, it was called off, another host took it) or could not be
    /// renewed for half its time is stopped.
    fn job_heartbeat(&self) {
        let ttl = self.config.lease_ttl;
        let leases: Vec<JobLease> = self.jobs_here().values().filter(|h| !h.lost).map(|h| h.lease.clone()).collect();
        for lease in leases {
            let renewed = self.queue.extend_job(&lease, &self.owner, ttl);
            let mut here = self.jobs_here();
            let (run, key) = (lease.run, &lease.key);
            let Some(j) = here.get_mut(&(run, lease.attempt, key.clone())).filter(|j| j.lease.tries == lease.tries)
            else {
                continue;
            };
            match renewed {
                Ok(true) => {
                    j.renewed = Instant::now();
                    continue;
                }
                Ok(false) => {
                    tracing::warn!(run, job = %key, "job {key} of run {run} is no longer this host's; stopping it")
                }
                Err(e) if j.renewed.elapsed() >= ttl / 2 => tracing::error!(
                    run,
                    job = %key,
                    "its lease could not be renewed for {:?} ({e:#}); stopping it before another host takes it",
                    j.renewed.elapsed()
                ),
                Err(e) => {
                    tracing::error!(run, job = %key, "renewing its lease: {e:#}");
                    continue;
                }
            }
            j.lost = true;
            j.abort.abort();
        }
    }

    /// Runs a leased job: the run's pipeline read here, in `root`, a workspace of its own.
    async fn run_leased(self: Arc<Self>, lease: JobLease, root: PathBuf) -> JobReport {
        let ticket: JobTicket = match serde_json::from_str(&lease.ticket) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(run = lease.run, job = %lease.key, "the job's ticket cannot be read ({e}): a host of another version offered it");
                return failed_job(&lease.key, &lease.key);
            }
        };
        let (key, job, name) = (ticket.key.clone(), ticket.job.clone(), ticket.name.clone());
        match self.clone().run_ticket(&lease, ticket, root).await {
            Ok(report) => report,
            Err(e) => {
                // Its steps never ran: the job's record says why, if the run is still at this
                // attempt (a later attempt's record is not this one's to write).
                tracing::error!(run = lease.run, job = %key, "the job could not start: {e}");
                let why = format!("the job could not start on host {}: {e}", self.owner);
                let current = matches!(self.store.run(lease.run), Ok(Some(r)) if r.attempt == lease.attempt);
                if current
                    && let Err(e) = self.store.job_finished(
                        lease.run,
                        &key,
                        &job,
                        &name,
                        RunStatus::Failure,
                        Some(&why),
                        None,
                        None,
                    )
                {
                    tracing::error!(run = lease.run, job = %key, "recording the job's end: {e:#}");
                }
                failed_job(&key, &name)
            }
        }
    }

    async fn run_ticket(
        self: Arc<Self>,
        lease: &JobLease,
        ticket: JobTicket,
        root: PathBuf,
    ) -> Result<JobReport, String> {
        let run = self.store.run(lease.run).map_err(|e| format!("reading the run: {e:#}"))?.ok_or("the run is gone")?;
        if run.attempt != lease.attempt || run.status != RunStatus::Running {
            return Err("the run has ended or started over".into());
        }
        let app = self
            .config
            .apps
            .get(&run.app)
            .cloned()
            .ok_or_else(|| format!("app `{}` is not configured on this host", run.app))?;
        // The run's code and pipeline, as the host running its graph read them.
        let (mut plan, job_setup) = if app.repo.is_some() {
            let sha = self.check_out(&app, &run, &root).await?;
            let plan = self.commit_plan(&app, &run, &sha, &root).await?;
            (plan, Some(self.job_checkouts(&app, &run, &sha)?))
        } else {
            self.prepare_folder(run.id, app.workspace.clone(), root.clone(), true).await?;
            (load_plan(&app, &root)?, None)
        };
        if plan.fetches() {
            self.resolver.prepare(&mut plan, &app.components).await.map_err(|e| e.to_string())?;
        }
        let index = plan
            .jobs
            .iter()
            .position(|j| j.key == ticket.key)
            .ok_or_else(|| format!("the pipeline read on this host has no job `{}`", ticket.key))?;
        // The environment's rules were passed on the graph's host; this host gives the job that
        // environment's secrets only if its own reading agrees, and an environment with
        // approvers only with an approval on record.
        let environment = plan.jobs[index].environment.as_ref().map(|e| e.name.clone());
        if environment != ticket.environment {
            return Err(format!(
                "the job's environment on this host ({}) is not the one its run's graph checked ({}): the hosts read \
                 different pipelines or configurations",
                environment.as_deref().unwrap_or("none"),
                ticket.environment.as_deref().unwrap_or("none")
            ));
        }
        if let Some(env) = &environment
            && app.environments.get(env).is_some_and(|e| !e.approvers.is_empty())
        {
            let decision = self.store.decision(run.id, run.attempt, &ticket.key).map_err(|e| format!("{e:#}"))?;
            if !decision.is_some_and(|d| d.approved) {
                return Err(format!("environment `{env}` needs an approval, and none is on record for this job"));
            }
        }
        let sink = Arc::new(Sink::new(&self, &run, &plan, Default::default(), Some(1 + index as u64 % 511)));
        if lease.tries > 1 {
            let text = format!(
                "[skiff] the host that ran this job before stopped; try {} of it, on host {}",
                lease.tries, self.owner
            );
            sink.write_line(&ticket.key, "", "system", text);
        }
        let materials = crate::provenance::Materials::collect(&app, &plan, &root)
            .map_err(|e| format!("recording the run's provenance: {e}"))?;
        let executor: Arc<dyn StepExecutor> = match materials {
            Some(m) => Arc::new(crate::provenance::Attesting::new(
                self.executor.clone(),
                self.provenance.clone(),
                self.config.clone(),
                self.store.clone(),
                run.id,
                m,
            )),
            None => self.executor.clone(),
        };
        let opts = self.run_options(&run, &app, root, job_setup);
        let cancel = Arc::new(AtomicBool::new(false));
        Ok(skiff_pipeline::run_job(&plan, opts, ticket, executor, sink, cancel).await)
    }

    /// What the run's jobs see, on whichever host they run: its event, its secrets (none for a
    /// fork's pull request, unless the app trusts forks), its environments' secrets.
    pub(super) fn run_options(
        &self,
        run: &Run,
        app: &AppConfig,
        workspace: PathBuf,
        job_setup: Option<skiff_pipeline::JobSetup>,
    ) -> RunOptions {
        let untrusted = from_fork(&run.body) && !app.trust_fork_pull_requests;
        RunOptions {
            run_id: run.id.to_string(),
            run_number: run.number as u64,
            run_attempt: run.attempt as u32,
            event: run.event.clone(),
            body: run.body.clone(),
            // A fork's pull request runs code from anyone: it gets no secrets and may only read
            // unless the app trusts forks (as on GitHub).
            secrets: if untrusted { BTreeMap::new() } else { app.secrets.clone() },
            read_only: untrusted,
            inputs: run.inputs.clone(),
            workspace,
            ca_bundle: app.ca_bundle.clone(),
            job_setup,
            // An environment's secrets go to its jobs only; a fork's pull request gets none.
            environment_secrets: if untrusted {
                BTreeMap::new()
            } else {
                app.environments.iter().map(|(n, e)| (n.clone(), e.secrets.clone())).collect()
            },
            ..RunOptions::default()
        }
    }

    /// How the graph of run `run` (this host's) sends its jobs to the pool.
    pub(super) fn job_dispatch(self: &Arc<Self>, run: &Run, sink: Arc<Sink>) -> JobDispatch {
        let this = self.clone();
        let (id, attempt) = (run.id, run.attempt);
        JobDispatch(Arc::new(move |ticket, cancel| {
            let (this, sink) = (this.clone(), sink.clone());
            Box::pin(async move { this.dispatched(id, attempt, ticket, cancel, sink).await })
        }))
    }

    /// Offers a job to the pool and waits for its report. Dropped (the run was cancelled, or
    /// its lease lost), it calls the job off.
    async fn dispatched(
        self: Arc<Self>,
        id: i64,
        attempt: i64,
        ticket: JobTicket,
        cancel: Arc<AtomicBool>,
        sink: Arc<Sink>,
    ) -> JobReport {
        let (key, name) = (ticket.key.clone(), ticket.name.clone());
        let end = |status: Status, reason: String| {
            sink.event(&RunEvent::JobSkipped {
                job_id: key.clone(),
                name: name.clone(),
                status,
                reason: reason.clone(),
            });
            JobReport { status, ..failed_job(&key, &name) }
        };
        let offer = JobOffer {
            run: id,
            attempt,
            key: key.clone(),
            labels: ticket.labels.clone(),
            ticket: serde_json::to_string(&ticket).unwrap_or_default(),
        };
        // Its record says what it waits for before any host can take it (a host that starts it
        // writes over this, never the other way round).
        let why = if ticket.labels.is_empty() {
            "waiting for a host".to_string()
        } else {
            format!("waiting for a host with the labels {}", ticket.labels.join(", "))
        };
        sink.check("a queued job", self.store.job_queued(id, &key, &ticket.job, &name, &why));
        let mine: JobId = (id, attempt, key.clone());
        let mut done_here = self.job_done.subscribe();
        // A short outage of the database is waited out, as the run's lease allows.
        let started = Instant::now();
        while let Err(e) = self.queue.offer_job(&offer) {
            if started.elapsed() >= self.config.lease_ttl / 2 {
                return end(Status::Failure, format!("the job could not be offered to the pool: {e:#}"));
            }
            tokio::time::sleep(JOB_POLL).await;
        }
        self.job_wake.notify_one();
        let mut call_off = CallOff { scheduler: self.clone(), run: id, attempt, key: Some(key.clone()) };
        let mut called_off = false;
        let mut poll = tokio::time::interval(JOB_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ended = done_here.recv() => match ended {
                    Ok(job) if job != mine => continue,
                    // Its own, or too many ends to tell: look.
                    _ => {}
                },
                _ = poll.tick() => {}
            }
            if cancel.load(Ordering::SeqCst) && !called_off {
                // Fail-fast: another combination of its matrix failed.
                called_off = self.queue.cancel_jobs(id, attempt, Some(&key)).is_ok();
            }
            match self.queue.job_state(id, attempt, &key) {
                Ok(Some(JobState::Done(report))) => {
                    call_off.key = None;
                    return serde_json::from_str(&report).unwrap_or_else(|e| {
                        end(Status::Failure, format!("the job's report from the host that ran it cannot be read: {e}"))
                    });
                }
                Ok(Some(JobState::Cancelled)) => {
                    call_off.key = None;
                    return end(Status::Cancelled, "the job was called off".into());
                }
                Ok(Some(JobState::Abandoned)) => {
                    call_off.key = None;
                    return end(
                        Status::Failure,
                        "the hosts that took this job stopped twice while running it; it was not taken a third time"
                            .into(),
                    );
                }
                Ok(Some(JobState::Queued | JobState::Running { .. })) => {}
                Ok(None) => {
                    call_off.key = None;
                    return end(Status::Failure, "the job left the pool's queue without an end".into());
                }
                // The run's own lease stops the run if the database stays out of reach.
                Err(e) => tracing::warn!(run = id, job = %key, "reading the job's state: {e:#}"),
            }
        }
    }
}

/// Calls a dispatched job off when its graph stops waiting for it (the run was cancelled).
struct CallOff {
    scheduler: Arc<Scheduler>,
    run: i64,
    attempt: i64,
    key: Option<String>,
}

impl Drop for CallOff {
    fn drop(&mut self) {
        if let Some(key) = self.key.take()
            && let Err(e) = self.scheduler.queue.cancel_jobs(self.run, self.attempt, Some(&key))
        {
            tracing::error!(run = self.run, job = %key, "calling the job off: {e:#}");
        }
    }
}

/// A job that failed before any step ran.
fn failed_job(key: &str, name: &str) -> JobReport {
    JobReport {
        key: key.to_string(),
        name: name.to_string(),
        status: Status::Failure,
        duration: Duration::ZERO,
        steps: Vec::new(),
        outputs: BTreeMap::new(),
    }
}
