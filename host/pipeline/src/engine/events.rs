//! What a run reports: [`RunEvent`]s to a [`RunObserver`] as it goes, masked on the way out,
//! and a [`RunReport`] at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::executor::{LogLine, Usage};
use crate::mask::Masker;

/// How a step, job or run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// It succeeded.
    Success,
    /// It failed.
    Failure,
    /// It was cancelled.
    Cancelled,
    /// It did not run: its condition was false.
    Skipped,
}

impl Status {
    /// `success`, `failure`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Cancelled => "cancelled",
            Status::Skipped => "skipped",
        }
    }
}

/// What happens during a run, in order. Serialized as JSON lines by `skiff run --json`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum RunEvent {
    /// The run began.
    RunStarted {
        /// Run id.
        run_id: String,
        /// Pipeline name (or file).
        pipeline: String,
        /// Job instance keys in plan order.
        jobs: Vec<String>,
    },
    /// A job began.
    JobStarted {
        /// Job instance.
        job_id: String,
        /// Display name.
        name: String,
    },
    /// A job did not run.
    JobSkipped {
        /// Job instance.
        job_id: String,
        /// Display name.
        name: String,
        /// How it ended: `skipped` (its condition), `failure` (an error, a rule refused it),
        /// `cancelled` (fail-fast, a rejected approval).
        status: Status,
        /// Why.
        reason: String,
    },
    /// A job in a deployment environment: at its start (no URL yet), and at its end with the
    /// URL its `environment.url` gave.
    JobEnvironment {
        /// Job instance.
        job_id: String,
        /// The environment.
        environment: String,
        /// `environment.url`, evaluated.
        #[serde(skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    /// A step began.
    StepStarted {
        /// Job instance.
        job_id: String,
        /// Step id.
        step_id: String,
        /// Display name.
        name: String,
    },
    /// A log line of a step.
    Log(LogLine),
    /// A step ended (or was skipped).
    StepFinished {
        /// Job instance.
        job_id: String,
        /// Step id.
        step_id: String,
        /// Display name.
        name: String,
        /// How it ended (`continue-on-error` failures are `failure` here, and do not fail the job).
        status: Status,
        /// Wall time in milliseconds.
        duration_ms: u64,
        /// Its outputs.
        outputs: BTreeMap<String, String>,
        /// CPU, memory and egress, when the executor measured them.
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// Why it failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A job ended.
    JobFinished {
        /// Job instance.
        job_id: String,
        /// Display name.
        name: String,
        /// How it ended.
        status: Status,
        /// Wall time in milliseconds.
        duration_ms: u64,
        /// Job outputs.
        outputs: BTreeMap<String, String>,
    },
    /// The run ended.
    RunFinished {
        /// Run id.
        run_id: String,
        /// How it ended.
        status: Status,
        /// Wall time in milliseconds.
        duration_ms: u64,
    },
}

/// Receives run events. Already masked.
pub trait RunObserver: Send + Sync {
    /// One event.
    fn event(&self, e: &RunEvent);
}

/// An observer that ignores everything.
pub struct NoObserver;
impl RunObserver for NoObserver {
    fn event(&self, _: &RunEvent) {}
}

/// A step's result, for the summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    /// Step id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// How it ended.
    pub status: Status,
    /// Wall time.
    pub duration: Duration,
    /// Why it failed.
    pub error: Option<String>,
    /// Markdown the step left for the summary.
    pub summary: Option<String>,
}

/// A job's result (a job run on another host sends it back as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobReport {
    /// Job instance key.
    pub key: String,
    /// Display name.
    pub name: String,
    /// How it ended.
    pub status: Status,
    /// Wall time.
    pub duration: Duration,
    /// Steps in order (post scripts at the end).
    pub steps: Vec<StepReport>,
    /// Job outputs.
    pub outputs: BTreeMap<String, String>,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Run id.
    pub run_id: String,
    /// How it ended: success only when no job failed or was cancelled.
    pub status: Status,
    /// Wall time.
    pub duration: Duration,
    /// Jobs in plan order.
    pub jobs: Vec<JobReport>,
}

impl RunReport {
    /// True when the run succeeded.
    pub fn success(&self) -> bool {
        self.status == Status::Success
    }
}

/// Masks and forwards events.
#[derive(Clone)]
pub(super) struct Emit {
    pub(super) obs: Arc<dyn RunObserver>,
    pub(super) masker: Arc<Masker>,
}

impl Emit {
    pub(super) fn m(&self, s: &str) -> String {
        self.masker.mask(s).into_owned()
    }
    fn mm(&self, m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        m.iter().map(|(k, v)| (k.clone(), self.m(v))).collect()
    }
    pub(super) fn emit(&self, e: RunEvent) {
        let e = match e {
            RunEvent::Log(mut l) => {
                l.text = self.m(&l.text);
                RunEvent::Log(l)
            }
            RunEvent::JobSkipped { job_id, name, status, reason } => {
                RunEvent::JobSkipped { job_id, name, status, reason: self.m(&reason) }
            }
            RunEvent::JobEnvironment { job_id, environment, url } => {
                RunEvent::JobEnvironment { job_id, environment, url: url.map(|u| self.m(&u)) }
            }
            RunEvent::StepFinished { job_id, step_id, name, status, duration_ms, outputs, usage, error } => {
                RunEvent::StepFinished {
                    job_id,
                    step_id,
                    name,
                    status,
                    duration_ms,
                    usage,
                    outputs: self.mm(&outputs),
                    error: error.map(|e| self.m(&e)),
                }
            }
            RunEvent::JobFinished { job_id, name, status, duration_ms, outputs } => {
                RunEvent::JobFinished { job_id, name, status, duration_ms, outputs: self.mm(&outputs) }
            }
            other => other,
        };
        self.obs.event(&e);
    }
}

pub(super) fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}
