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
    /// When its lease was last taken or renewed.
    renewed: Instant,
    /// Its lease is gone: stopped, it is not completed.
    lost: bool,
}

/// The identity of a leased job: run, attempt, job instance.
pub(super) type JobId = (i64, i64, String);

impl Scheduler {
    /// Takes jobs from the pool while this host has room (`max-concurrent-runs` jobs at once).
    /// A draining host takes jobs only while graphs of its own still run: they may wait for a
    /// job no other host has room for.
    pub(super) async fn lease_jobs(self: Arc<Self>) {
        loop {
            while !(self.draining() && self.running().is_empty())
                && self.jobs_here().len() < self.config.max_concurrent_runs
            {
                match self.queue.lease_job(&self.owner, &self.config.labels, self.config.lease_ttl) {
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
        let this = self.clone();
        let root = self.config.data_dir.join("work").join(format!("job-{}-{}-{}", lease.run, lease.attempt, lease.key));
        let workspace = root.clone();
        let task = tokio::spawn(async move { this.run_leased(lease, workspace).await });
        self.jobs_here()
            .insert(id.clone(), JobHere { abort: task.abort_handle(), renewed: Instant::now(), lost: false });
        let this = self.clone();
        tokio::spawn(async move {
            let report = task.await;
            let here = this.jobs_here().remove(&id);
            // However it ended (a job stopped here goes on elsewhere, in a workspace of its own).
            if !this.config.keep_workspaces {
                let _ = tokio::fs::remove_dir_all(&root).await;
            }
            let (run, attempt, key) = &id;
            match report {
                // Stopped (lease lost, host halted): not this host's to complete.
                Err(_) => {}
                Ok(_) if here.is_some_and(|h| h.lost) || this.halted() => {}
                Ok(report) => {
                    let json = serde_json::to_string(&report).unwrap_or_default();
                    match this.queue.complete_job(*run, *attempt, key, &this.owner, &json) {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(run, job = %key, "the job ended here, but its lease had moved on"),
                        Err(e) => tracing::error!(run, job = %key, "recording the job's end: {e:#}"),
                    }
                }
            }
            // Its graph, if it runs here, looks at once.
            let _ = this.job_done.send(id);
            this.job_wake.notify_one();
        });
    }

    /// The heartbeat of the jobs this host runs: as for runs, a job whose lease is gone (its
    /// run ended or started over, it was called off, another host took it) or could not be
    /// renewed for half its time is stopped.
    pub(super) fn job_heartbeat(&self) {
        let ttl = self.config.lease_ttl;
        let ids: Vec<JobId> = self.jobs_here().keys().cloned().collect();
        for (run, attempt, key) in ids {
            let renewed = self.queue.extend_job(run, attempt, &key, &self.owner, ttl);
            let mut here = self.jobs_here();
            let Some(j) = here.get_mut(&(run, attempt, key.clone())) else { continue };
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
        let ticket: Result<JobTicket, _> = serde_json::from_str(&lease.ticket);
        let report = match ticket {
            Ok(ticket) => self.clone().run_ticket(&lease, ticket, root).await,
            Err(e) => Err(format!("the job's ticket cannot be read ({e}): a host of another version offered it")),
        };
        report.unwrap_or_else(|e| {
            // Its steps never ran: the job's record says why.
            tracing::error!(run = lease.run, job = %lease.key, "the job could not start: {e}");
            let (key, name) = (&lease.key, ticket_name(&lease.ticket).unwrap_or_else(|| lease.key.clone()));
            let why = format!("the job could not start on host {}: {e}", self.owner);
            let r = self.store.job_finished(lease.run, key, key, &name, RunStatus::Failure, Some(&why), None, None);
            if let Err(e) = r {
                tracing::error!(run = lease.run, job = %key, "recording the job's end: {e:#}");
            }
            failed_job(key, &name)
        })
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
        let index = plan.jobs.iter().position(|j| j.key == ticket.key).unwrap_or(0);
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
        // A short outage of the database is waited out, as the run's lease allows.
        let started = Instant::now();
        while let Err(e) = self.queue.offer_job(&offer) {
            if started.elapsed() >= self.config.lease_ttl / 2 {
                return end(Status::Failure, format!("the job could not be offered to the pool: {e:#}"));
            }
            tokio::time::sleep(JOB_POLL).await;
        }
        let why = if ticket.labels.is_empty() {
            "waiting for a host".to_string()
        } else {
            format!("waiting for a host with the labels {}", ticket.labels.join(", "))
        };
        let mine: JobId = (id, attempt, key.clone());
        let mut done_here = self.job_done.subscribe();
        let job_id = sink.job_id(&key).to_string();
        sink.check("a queued job", self.store.job_queued(id, &key, &job_id, &name, &why));
        self.job_wake.notify_one();
        let mut call_off = CallOff { scheduler: self.clone(), run: id, key: Some(key.clone()) };
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
                called_off = self.queue.cancel_jobs(id, Some(&key)).is_ok();
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
    key: Option<String>,
}

impl Drop for CallOff {
    fn drop(&mut self) {
        if let Some(key) = self.key.take()
            && let Err(e) = self.scheduler.queue.cancel_jobs(self.run, Some(&key))
        {
            tracing::error!(run = self.run, job = %key, "calling the job off: {e:#}");
        }
    }
}

/// The display name a ticket carries, when it can be read.
fn ticket_name(ticket: &str) -> Option<String> {
    serde_json::from_str::<JobTicket>(ticket).ok().map(|t| t.name)
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
