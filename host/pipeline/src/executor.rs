//! The contract between the pipeline engine and the step runtime: the engine
//! decides what runs, with which inputs and grants; an executor runs one step.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
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
    /// A shared component, by the digest its host fetched and checked before the run.
    Component {
        /// The reference, for messages.
        reference: String,
        /// What runs: the bytes with this sha256, nothing else.
        digest: crate::component_ref::Digest,
    },
    /// A `run:` script for the built-in `shell` step.
    Shell {
        /// The script, with every `${{ }}` replaced by `${SKIFF_EXPR_n}` (set in `env`).
        script: String,
        /// `bash`, `sh`, …
        shell: String,
    },
}

/// Capabilities granted to a step, decided once when the pipeline is read (what its
/// `permissions:` say, the secrets its values reference, and what the kind of step implies) and
/// shown by `skiff validate --plan`. Nothing else is allowed. The runtime checks the
/// component's own request against them before the step starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Grants {
    /// Hosts the step may reach over HTTP.
    pub hosts: Vec<String>,
    /// Secret names granted (their values are in [`StepRequest::secrets`]).
    pub secrets: Vec<String>,
    /// May start processes.
    pub process: bool,
    /// May open network connections beyond HTTP to `hosts`.
    pub network: bool,
    /// Only reading is allowed (a fork's pull request): HTTP to `hosts` with GET and HEAD,
    /// and processes without network.
    pub read_only: bool,
    /// Grants the pipeline did not write, each with why it was given (a `run:` step's process,
    /// Serverless-cd's network default), so the plan shows them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub implied: Vec<String>,
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
    pub grants: Grants,
    /// The job's workspace root.
    pub workspace: PathBuf,
    /// Relative to `workspace`.
    pub working_directory: Option<String>,
    /// Stop the step after this long.
    pub timeout: Option<Duration>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// The container image the step's processes run in, pinned by digest before the run (see
    /// `skiff_registry::Resolver::prepare`); `None` runs them on the host's `/usr`.
    pub image: Option<crate::component_ref::ComponentRef>,
    /// The event context as JSON.
    pub event_json: String,
    /// PEM certificates the app trusts for HTTPS besides the Web PKI roots.
    pub ca_bundle: Option<Arc<str>>,
    /// The job instances this job waits for, directly or through others (every combination of
    /// a matrix job): the jobs whose artifacts its steps may download.
    pub needs: Vec<String>,
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
    /// The step's request to run once more at job end (its `skiff.post-step` output).
    pub post_step: Option<PostStep>,
    /// Markdown for the run summary.
    pub summary: Option<String>,
    /// How long it ran.
    pub duration: Duration,
    /// What the step consumed, when the executor measures it (the basis for metering).
    pub usage: Option<Usage>,
}

/// A step's request to run once more at the end of its job, as a GitHub action's `post:`
/// (the `cache` step saves this way): the same component with the same grants and secrets, its
/// inputs overlaid with `inputs`. A step asks with the output `skiff.post-step`, a JSON object
/// `{"with": {…}, "if": "success" | "always"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostStep {
    /// Inputs over the step's own.
    #[serde(default, rename = "with")]
    pub inputs: BTreeMap<String, String>,
    /// When it runs: `success` (only if every step of the job so far succeeded) or `always`
    /// (the default, as cleanup scripts).
    #[serde(default, rename = "if")]
    pub when: PostWhen,
}

/// When a [`PostStep`] runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PostWhen {
    /// Whatever happened.
    #[default]
    Always,
    /// Only if the job has succeeded so far.
    Success,
}

/// What a step used: one type from the runtime that meters it to the run store and the API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Usage {
    /// Wall-clock time, in milliseconds.
    pub wall_ms: u64,
    /// CPU time spent executing the step's code and its processes' whole trees, in milliseconds.
    pub cpu_ms: u64,
    /// Peak linear memory, plus the largest peak of its process trees, in bytes.
    pub peak_memory_bytes: u64,
    /// Bytes sent and received over the network (HTTP and processes' connections).
    pub egress_bytes: u64,
    /// Bytes written to the step's log.
    pub log_bytes: u64,
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
            post_step: None,
            summary: None,
            duration: Duration::ZERO,
            usage: None,
        }
    }
}

/// How important a log line is, or where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Stdout,
    Stderr,
    /// Written by the host about the step (denials, limits).
    System,
}

impl Level {
    /// `info`, `stdout`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Stdout => "stdout",
            Level::Stderr => "stderr",
            Level::System => "system",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One log line of a step, masked: the one line type from the runtime's log pipe through
/// the engine to the host's log store (which adds its order and time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// The job instance (empty outside a pipeline: `skiff step run`).
    pub job_id: String,
    /// The step.
    pub step_id: String,
    /// What kind of line.
    pub level: Level,
    /// The text (masked before anyone sees it).
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

    /// The job ended, its cleanup scripts too: what the executor kept for it (its `$HOME`, an
    /// image's writable layer) can go.
    fn job_finished(&self, _run_id: &str, _job_id: &str) {}
}

/// What one step may hand on to the rest of its job. Past a cap the step fails and says
/// which cap: a value that is silently cut or dropped would be worse.
pub mod caps {
    use std::collections::BTreeMap;

    /// One output value.
    pub const OUTPUT_VALUE: usize = 1 << 20;
    /// All outputs of one step, names included.
    pub const OUTPUTS: usize = 4 << 20;
    /// One exported variable, `NAME=value` (the kernel refuses longer strings in a process's
    /// environment).
    pub const ENV_VARIABLE: usize = 128 << 10;
    /// The environment of the job's later steps, everything exported so far included.
    pub const ENV: usize = 1 << 20;
    /// Variables in that environment.
    pub const ENV_COUNT: usize = 1000;
    /// What a step adds to `PATH`.
    pub const PATH: usize = 64 << 10;

    /// A size as people read it.
    pub fn size(n: usize) -> String {
        if n >= 1 << 20 {
            format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
        } else if n >= 1 << 10 {
            format!("{:.1} KiB", n as f64 / 1024.0)
        } else {
            format!("{n} bytes")
        }
    }

    /// Checks what a step hands on; `before` is the environment it ran with.
    pub fn check(
        outputs: &BTreeMap<String, String>,
        env: &BTreeMap<String, String>,
        path: &[String],
        before: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        let mut total = 0;
        for (k, v) in outputs {
            if v.len() > OUTPUT_VALUE {
                return Err(format!(
                    "output `{k}` is {}, over the limit of {} for one output value; put large data in a file \
                     in the workspace or an artifact and pass its path",
                    size(v.len()),
                    size(OUTPUT_VALUE)
                ));
            }
            total += k.len() + v.len();
        }
        if total > OUTPUTS {
            return Err(format!(
                "the step's outputs are {} in all, over the limit of {} per step",
                size(total),
                size(OUTPUTS)
            ));
        }
        for (k, v) in env {
            if k.len() + 1 + v.len() > ENV_VARIABLE {
                return Err(format!(
                    "exported variable `{k}` is {}, over the limit of {} for one variable",
                    size(v.len()),
                    size(ENV_VARIABLE)
                ));
            }
        }
        let mut merged: BTreeMap<&str, &str> = before.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        merged.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let env_total: usize = merged.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        if env_total > ENV {
            return Err(format!(
                "with the variables this step exports, the job's environment would be {}, over the limit of {}",
                size(env_total),
                size(ENV)
            ));
        }
        if merged.len() > ENV_COUNT {
            return Err(format!(
                "with the variables this step exports, the job's environment would hold {} variables, over \
                 the limit of {ENV_COUNT}",
                merged.len()
            ));
        }
        let path_total: usize = path.iter().map(|p| p.len() + 1).sum();
        if path_total > PATH {
            return Err(format!("the step adds {} to PATH, over the limit of {}", size(path_total), size(PATH)));
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn m(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
        }

        #[test]
        fn each_cap_names_itself() {
            let none = BTreeMap::new();
            assert!(check(&m(&[("a", "x".repeat(OUTPUT_VALUE))]), &none, &[], &none).is_ok());
            let e = check(&m(&[("a", "x".repeat(OUTPUT_VALUE + 1))]), &none, &[], &none).unwrap_err();
            assert!(e.contains("output `a` is 1.0 MiB"), "{e}");
            let many: Vec<(String, String)> = (0..5).map(|i| (format!("o{i}"), "x".repeat(OUTPUT_VALUE))).collect();
            let e = check(&many.into_iter().collect(), &none, &[], &none).unwrap_err();
            assert!(e.contains("outputs are 5.0 MiB in all"), "{e}");
            let e = check(&none, &m(&[("V", "x".repeat(ENV_VARIABLE))]), &[], &none).unwrap_err();
            assert!(e.contains("exported variable `V`"), "{e}");
            let before: BTreeMap<String, String> =
                (0..10).map(|i| (format!("B{i}"), "x".repeat(ENV_VARIABLE - 10))).collect();
            let e = check(&none, &m(&[("V", "y".into())]), &[], &before).unwrap_err();
            assert!(e.contains("job's environment would be"), "{e}");
            let lots: BTreeMap<String, String> = (0..ENV_COUNT + 1).map(|i| (format!("V{i}"), String::new())).collect();
            assert!(check(&none, &lots, &[], &none).unwrap_err().contains("variables"));
            assert!(check(&none, &none, &["x".repeat(PATH)], &none).unwrap_err().contains("PATH"));
        }
    }
}
