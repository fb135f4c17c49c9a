//! The bodies the API answers about runs: a run, its jobs and steps, and their usage. They
//! are the API's own types, made from the store's rows (`From`), so the store can change
//! without changing a response; the fields, their order and their documentation are the
//! document's (`docs/openapi.json`).

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::store::{self, RunStatus};

/// A run as stored.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Run {
    /// Id, unique on this host.
    pub id: i64,
    /// The app.
    pub app: String,
    /// Number within the app (a rerun keeps it).
    pub number: i64,
    /// 1 for the first attempt; a rerun or a retry after a crash adds one.
    pub attempt: i64,
    /// `queued`, `running`, `success`, `failure`, `cancelled` or `skipped` (its pipeline's `on:` did not take the event).
    #[schema(value_type = String)]
    pub status: RunStatus,
    /// What started it: `push`, `pull_request`, `manual`, `schedule`, `rerun`, …
    pub trigger: String,
    /// Why it runs.
    pub reason: String,
    /// The Git ref.
    #[serde(rename = "ref")]
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
    /// Whether a newer run of its group cancels it while it runs.
    pub cancel_in_progress: bool,
    /// The labels a host needs to take it (its jobs' `runs-on`), once its pipeline was read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runs_on: Vec<String>,
    /// Why a queued run has not started, when a host has read its pipeline: the labels it
    /// waits for a host to have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// Why a queued run that needs `labels` waits (`None` for any other).
pub fn waiting_for(status: RunStatus, labels: &[String]) -> Option<String> {
    (status == RunStatus::Queued && !labels.is_empty())
        .then(|| format!("a host with the labels {}: start one with `skiff serve --labels …`", labels.join(", ")))
}

/// A job of a run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Job {
    /// The job instance (`build`, or `build-2` for a matrix combination).
    pub key: String,
    /// The job id in the pipeline.
    pub job: String,
    /// Display name.
    pub name: String,
    /// `waiting` (for an approval of its environment), `running`, `success`, `failure`,
    /// `cancelled`, `skipped`.
    #[schema(value_type = String)]
    pub status: RunStatus,
    /// Why it waits, was skipped or failed.
    pub reason: Option<String>,
    /// The deployment environment it runs in (`environment:`).
    pub environment: Option<String>,
    /// The URL its `environment.url` gave when it ended.
    pub environment_url: Option<String>,
    /// Unix ms.
    pub started_at: Option<i64>,
    /// Unix ms.
    pub finished_at: Option<i64>,
    /// Wall time in ms.
    pub duration_ms: Option<i64>,
    /// Its outputs (masked).
    pub outputs: BTreeMap<String, String>,
    /// Its steps in order.
    pub steps: Vec<Step>,
}

/// A step of a job, with its usage.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Step {
    /// Step id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `running`, `success`, `failure`, `cancelled`, `skipped`.
    #[schema(value_type = String)]
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

/// What a step (or run) used. Fields the executor does not report are null.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
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

impl From<store::Run> for Run {
    fn from(r: store::Run) -> Self {
        Run {
            id: r.id,
            app: r.app,
            number: r.number,
            attempt: r.attempt,
            status: r.status,
            trigger: r.trigger,
            reason: r.reason,
            git_ref: r.git_ref,
            sha: r.sha,
            dispatch_id: r.dispatch_id,
            inputs: r.inputs,
            job: r.job,
            parent_id: r.parent_id,
            requested_by: r.requested_by,
            pipeline: r.pipeline,
            concurrency_group: r.concurrency_group,
            interruptions: r.interruptions,
            error: r.error,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            duration_ms: r.duration_ms,
            cancel_in_progress: r.cancel_in_progress,
            waiting_for: waiting_for(r.status, &r.labels),
            runs_on: r.labels,
        }
    }
}

impl From<store::Job> for Job {
    fn from(j: store::Job) -> Self {
        Job {
            key: j.key,
            job: j.job,
            name: j.name,
            status: j.status,
            reason: j.reason,
            environment: j.environment,
            environment_url: j.environment_url,
            started_at: j.started_at,
            finished_at: j.finished_at,
            duration_ms: j.duration_ms,
            outputs: j.outputs,
            steps: j.steps.into_iter().map(Step::from).collect(),
        }
    }
}

/// An approval or rejection of a job waiting for its environment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobDecision {
    /// The job instance.
    pub job: String,
    /// The environment.
    pub environment: String,
    /// `approved` or `rejected`.
    pub decision: String,
    /// The name of the token that decided.
    pub by: String,
    /// Unix ms.
    pub at: i64,
    /// The run's attempt it holds for (a retry after a crash asks again).
    pub attempt: i64,
}

impl From<store::Decision> for JobDecision {
    fn from(d: store::Decision) -> Self {
        JobDecision {
            job: d.job_key,
            environment: d.environment,
            decision: if d.approved { "approved" } else { "rejected" }.into(),
            by: d.by,
            at: d.at,
            attempt: d.attempt,
        }
    }
}

impl From<store::Step> for Step {
    fn from(s: store::Step) -> Self {
        Step {
            id: s.id,
            name: s.name,
            status: s.status,
            error: s.error,
            started_at: s.started_at,
            finished_at: s.finished_at,
            usage: s.usage.into(),
        }
    }
}

impl From<store::Usage> for Usage {
    fn from(u: store::Usage) -> Self {
        Usage {
            wall_ms: u.wall_ms,
            cpu_ms: u.cpu_ms,
            peak_memory_bytes: u.peak_memory_bytes,
            egress_bytes: u.egress_bytes,
            log_bytes: u.log_bytes,
        }
    }
}

impl Usage {
    /// The usage of a run: its steps' added up (peak memory: the highest).
    pub fn total(jobs: &[Job]) -> Usage {
        let add = |a: Option<i64>, b: Option<i64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        let mut u = Usage::default();
        for s in jobs.iter().flat_map(|j| &j.steps) {
            u.wall_ms = add(u.wall_ms, s.usage.wall_ms);
            u.cpu_ms = add(u.cpu_ms, s.usage.cpu_ms);
            u.peak_memory_bytes = match (u.peak_memory_bytes, s.usage.peak_memory_bytes) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            u.egress_bytes = add(u.egress_bytes, s.usage.egress_bytes);
            u.log_bytes += s.usage.log_bytes;
        }
        u
    }
}
