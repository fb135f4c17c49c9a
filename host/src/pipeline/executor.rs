//! The contract between the pipeline engine and the step runtime: the engine
//! decides what runs, with which inputs and grants; an executor runs one step.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;

/// What a step runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepRef {
    /// A built-in step component (`diag`, `shell`, `checkout`, `notify`, `upload`).
    Builtin(String),
    /// A component file, already resolved against the pipeline file's folder.
    Path(PathBuf),
    /// A `run:` script for the built-in `shell` step.
    Shell {
        /// The script, with every `${{ }}` replaced by `${SKIFF_EXPR_n}` (set in `env`).
        script: String,
        /// `bash`, `sh`, …
        shell: String,
    },
}

/// Capabilities granted to a step. Nothing else is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Permissions {
    /// Hosts the step may reach over HTTP.
    pub hosts: Vec<String>,
    /// Secret names granted (their values are in [`StepRequest::secrets`]).
    pub secrets: Vec<String>,
    /// May start processes.
    pub process: bool,
    /// May open network connections beyond HTTP to `hosts`.
    pub network: bool,
}

/// One step to run.
#[derive(Debug, Clone)]
pub struct StepRequest {
    /// The run's id.
    pub run_id: String,
    /// The job instance (`build`, or `build-2` for a matrix combination).
    pub job_id: String,
    /// The step's `id:`, or `step-N` (1-based), or `post-N` for a cleanup script.
    pub step_id: String,
    /// A display name.
    pub step_name: String,
    /// What to run.
    pub uses: StepRef,
    /// `with:` after evaluating expressions.
    pub inputs: BTreeMap<String, String>,
    /// Environment: pipeline, job and step `env:` plus what earlier steps exported.
    pub env: BTreeMap<String, String>,
    /// Only the secrets granted to this step.
    pub secrets: BTreeMap<String, String>,
    /// The capabilities granted.
    pub permissions: Permissions,
    /// The job's workspace root.
    pub workspace: PathBuf,
    /// Relative to `workspace`.
    pub working_directory: Option<String>,
    /// Stop the step after this long.
    pub timeout: Option<Duration>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// The event context as JSON.
    pub event_json: String,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepOutcome {
    /// It succeeded.
    Success,
    /// It failed, with a reason a user can act on.
    Failure(String),
    /// It was stopped (timeout or cancellation).
    Cancelled,
}

/// What a step produced.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// How it ended.
    pub outcome: StepOutcome,
    /// Outputs (`steps.<id>.outputs`); a shell step's come from `$SKIFF_OUTPUT`.
    pub outputs: BTreeMap<String, String>,
    /// Variables for later steps (from `$SKIFF_ENV`).
    pub env: BTreeMap<String, String>,
    /// Entries prepended to `PATH` for later steps (from `$SKIFF_PATH`).
    pub path: Vec<String>,
    /// A cleanup shell script to run at job end, as `always()`.
    pub post: Option<String>,
    /// Markdown for the run summary.
    pub summary: Option<String>,
    /// How long it ran.
    pub duration: Duration,
    /// What the step consumed, when the executor measures it (the basis for metering).
    pub usage: Option<StepUsage>,
}

/// Resources one step consumed beyond its wall time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StepUsage {
    /// CPU time spent executing the step's code, in milliseconds.
    pub cpu_ms: u64,
    /// Peak linear memory, in bytes.
    pub peak_memory_bytes: u64,
    /// Bytes sent and received over HTTP.
    pub egress_bytes: u64,
}

impl StepResult {
    /// A result with only an outcome.
    pub fn outcome(outcome: StepOutcome) -> Self {
        StepResult {
            outcome,
            outputs: BTreeMap::new(),
            env: BTreeMap::new(),
            path: Vec::new(),
            post: None,
            summary: None,
            duration: Duration::ZERO,
            usage: None,
        }
    }
}

/// One line of a step's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// The job instance.
    pub job_id: String,
    /// The step.
    pub step_id: String,
    /// `trace|debug|info|warn|error|stdout|stderr`.
    pub level: String,
    /// The text (masked by the engine before anyone sees it).
    pub text: String,
}

/// Runs steps. Implemented by the wasmtime runtime; tests use their own.
pub trait StepExecutor: Send + Sync {
    /// Runs one step to the end. Log lines go to `log` as they come.
    fn run_step<'a>(
        &'a self,
        req: StepRequest,
        log: &'a (dyn Fn(LogLine) + Send + Sync),
    ) -> Pin<Box<dyn Future<Output = StepResult> + Send + 'a>>;
}
