//! The engine: runs a [`Plan`] through a [`StepExecutor`], jobs in parallel
//! as their `needs` allow, and reports [`RunEvent`]s (masked) to an observer.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::executor::{LogLine, StepExecutor, StepOutcome, StepRef, StepRequest, StepResult, StepUsage};
use super::expr::{Scope, json_to_cel, strings_to_cel};
use super::plan::{Plan, PlanJob, PlanStep, Uses, Value};
use crate::mask::Masker;

/// The `PATH` a process gets when its environment names none (as the process sandbox,
/// `skiff-sandbox`, sets it); `$SKIFF_PATH` entries go in front of it.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

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
    /// Steps may only read (a pull request from a fork): see [`Permissions::read_only`].
    pub read_only: bool,
    /// Job instances not run again (a rerun of failed jobs): how they ended in the earlier
    /// attempt, and their outputs, which their dependents see as if they had just run.
    pub reuse: BTreeMap<String, (Status, BTreeMap<String, String>)>,
    /// Fills each job's own folder before its steps run (the host's checkout of the run's
    /// commit), when the run has several jobs.
    pub job_setup: Option<JobSetup>,
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

/// How a step, job or run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
        /// Why.
        reason: String,
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
        usage: Option<StepUsage>,
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
#[derive(Debug, Clone, Serialize)]
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

/// A job's result.
#[derive(Debug, Clone, Serialize)]
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
struct Emit {
    obs: Arc<dyn RunObserver>,
    masker: Arc<Masker>,
}

impl Emit {
    fn m(&self, s: &str) -> String {
        self.masker.mask(s).into_owned()
    }
    fn mm(&self, m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        m.iter().map(|(k, v)| (k.clone(), self.m(v))).collect()
    }
    fn emit(&self, e: RunEvent) {
        let e = match e {
            RunEvent::Log(mut l) => {
                l.text = self.m(&l.text);
                RunEvent::Log(l)
            }
            RunEvent::JobSkipped { job_id, name, reason } => {
                RunEvent::JobSkipped { job_id, name, reason: self.m(&reason) }
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

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// The result of one job instance, for its dependents.
#[derive(Debug, Clone)]
struct Done {
    status: Status,
    outputs: BTreeMap<String, String>,
}

/// Runs a plan to the end.
pub async fn run_pipeline(
    plan: &Plan,
    opts: RunOptions,
    executor: Arc<dyn StepExecutor>,
    observer: Arc<dyn RunObserver>,
) -> RunReport {
    let started = Instant::now();
    let plan = Arc::new(plan.clone());
    let masker = Arc::new(Masker::new(opts.secrets.values()));
    let emit = Emit { obs: observer, masker };

    // `--job`: that job and what it needs, transitively.
    let selected: Vec<usize> = match &opts.job {
        None => (0..plan.jobs.len()).collect(),
        Some(j) => {
            // One job, or several separated by commas (a rerun of failed jobs).
            let mut want: Vec<String> =
                j.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
            let mut i = 0;
            while i < want.len() {
                for pj in plan.instances(&want[i].clone()) {
                    for n in &pj.needs {
                        if !want.contains(n) {
                            want.push(n.clone());
                        }
                    }
                }
                i += 1;
            }
            (0..plan.jobs.len()).filter(|i| want.contains(&plan.jobs[*i].job)).collect()
        }
    };
    emit.emit(RunEvent::RunStarted {
        run_id: opts.run_id.clone(),
        pipeline: plan.name.clone().unwrap_or_else(|| plan.file.clone()),
        jobs: selected.iter().map(|i| plan.jobs[*i].key.clone()).collect(),
    });

    // The contexts every expression sees.
    let mut base = Scope::default();
    base.set_json("event", &opts.event);
    base.set_json("body", &opts.body);
    base.vars.insert("secrets", strings_to_cel(&opts.secrets));
    base.vars.insert("inputs", strings_to_cel(&opts.inputs));
    base.set_json(
        "run",
        &serde_json::json!({"id": opts.run_id, "number": opts.run_number, "attempt": opts.run_attempt.max(1)}),
    );
    let mut reports: Vec<Option<JobReport>> = vec![None; plan.jobs.len()];
    let pipeline_env = match eval_map(&plan, &plan.env, &base) {
        Ok(e) => e,
        Err(err) => {
            // Nothing can run without the pipeline's env: every job fails with the reason.
            for i in &selected {
                let j = &plan.jobs[*i];
                emit.emit(RunEvent::JobSkipped { job_id: j.key.clone(), name: j.name.clone(), reason: err.clone() });
                reports[*i] = Some(JobReport {
                    key: j.key.clone(),
                    name: j.name.clone(),
                    status: Status::Failure,
                    duration: Duration::ZERO,
                    steps: Vec::new(),
                    outputs: BTreeMap::new(),
                });
            }
            return finish(&opts, &emit, started, reports);
        }
    };
    base.vars.insert("env", strings_to_cel(&pipeline_env));

    let single = selected.len() == 1;
    let base = Arc::new(base);
    let pipeline_env = Arc::new(pipeline_env);
    let opts = Arc::new(opts);
    let mut done: HashMap<usize, Done> = HashMap::new();
    let mut started_set: Vec<bool> = vec![false; plan.jobs.len()];
    let mut running_per_job: HashMap<String, u32> = HashMap::new();
    let cancel_flags: HashMap<String, Arc<AtomicBool>> =
        plan.jobs.iter().map(|j| (j.job.clone(), Arc::new(AtomicBool::new(false)))).collect();
    let mut set: tokio::task::JoinSet<(usize, JobReport)> = tokio::task::JoinSet::new();

    loop {
        // Start every job whose needs are all done.
        for &i in &selected {
            if started_set[i] {
                continue;
            }
            let j = &plan.jobs[i];
            let need_idx: Vec<usize> =
                selected.iter().copied().filter(|k| j.needs.contains(&plan.jobs[*k].job)).collect();
            if !need_idx.iter().all(|k| done.contains_key(k)) {
                continue;
            }
            if let Some((status, outputs)) = opts.reuse.get(&j.key) {
                started_set[i] = true;
                emit.emit(RunEvent::JobStarted { job_id: j.key.clone(), name: j.name.clone() });
                emit.emit(RunEvent::JobFinished {
                    job_id: j.key.clone(),
                    name: j.name.clone(),
                    status: *status,
                    duration_ms: 0,
                    outputs: outputs.clone(),
                });
                let r = JobReport {
                    key: j.key.clone(),
                    name: j.name.clone(),
                    status: *status,
                    duration: Duration::ZERO,
                    steps: Vec::new(),
                    outputs: outputs.clone(),
                };
                done.insert(i, Done { status: *status, outputs: outputs.clone() });
                reports[i] = Some(r);
                continue;
            }
            let flag = cancel_flags[&j.job].clone();
            if flag.load(Ordering::SeqCst) {
                started_set[i] = true;
                let reason = "cancelled: another combination of the matrix failed (fail-fast)".to_string();
                emit.emit(RunEvent::JobSkipped { job_id: j.key.clone(), name: j.name.clone(), reason });
                let r = JobReport {
                    key: j.key.clone(),
                    name: j.name.clone(),
                    status: Status::Cancelled,
                    duration: Duration::ZERO,
                    steps: Vec::new(),
                    outputs: BTreeMap::new(),
                };
                done.insert(i, Done { status: r.status, outputs: BTreeMap::new() });
                reports[i] = Some(r);
                continue;
            }
            if let Some(max) = j.max_parallel
                && running_per_job.get(&j.job).copied().unwrap_or(0) >= max
            {
                continue;
            }
            // needs context: outputs merged over the combinations, result the worst.
            let mut needs = serde_json::Map::new();
            let (mut failed, mut cancelled) = (false, false);
            for n in &j.needs {
                let inst: Vec<&Done> =
                    need_idx.iter().filter(|k| plan.jobs[**k].job == *n).filter_map(|k| done.get(k)).collect();
                let mut outputs = serde_json::Map::new();
                let mut result = Status::Success;
                for d in &inst {
                    for (k, v) in &d.outputs {
                        outputs.insert(k.clone(), serde_json::Value::String(v.clone()));
                    }
                    match d.status {
                        Status::Failure => result = Status::Failure,
                        Status::Cancelled if result != Status::Failure => result = Status::Cancelled,
                        Status::Skipped if result == Status::Success => result = Status::Skipped,
                        _ => {}
                    }
                }
                match result {
                    Status::Failure | Status::Skipped => failed = true,
                    Status::Cancelled => cancelled = true,
                    Status::Success => {}
                }
                needs.insert(n.clone(), serde_json::json!({"outputs": outputs, "result": result.as_str()}));
            }
            let mut scope = (*base).clone();
            scope.set_json("needs", &serde_json::Value::Object(needs));
            scope.set_json("matrix", &serde_json::to_value(&j.matrix).unwrap_or_default());
            scope.failed = failed;
            scope.cancelled = cancelled;
            started_set[i] = true;
            let run = match &j.if_ {
                None => Ok(!failed && !cancelled),
                Some(c) => c
                    .expr
                    .eval_bool(&scope)
                    .map(|b| b && (c.expr.has_status_call() || (!failed && !cancelled)))
                    .map_err(|e| format!("{}:{}:{}: {e}", plan.file, c.pos.line, c.pos.column)),
            };
            match run {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    let (status, reason) = match run {
                        Err(e) => (Status::Failure, e),
                        _ if failed || cancelled => (Status::Skipped, "a job it needs did not succeed".to_string()),
                        _ => (Status::Skipped, "its `if:` condition is false".to_string()),
                    };
                    emit.emit(RunEvent::JobSkipped { job_id: j.key.clone(), name: j.name.clone(), reason });
                    let r = JobReport {
                        key: j.key.clone(),
                        name: j.name.clone(),
                        status,
                        duration: Duration::ZERO,
                        steps: Vec::new(),
                        outputs: BTreeMap::new(),
                    };
                    done.insert(i, Done { status, outputs: BTreeMap::new() });
                    reports[i] = Some(r);
                    continue;
                }
            }
            *running_per_job.entry(j.job.clone()).or_default() += 1;
            let workspace = if single { opts.workspace.clone() } else { opts.workspace.join(&j.key) };
            let job = JobRun {
                plan: plan.clone(),
                index: i,
                opts: opts.clone(),
                scope,
                pipeline_env: pipeline_env.clone(),
                workspace,
                executor: executor.clone(),
                emit: emit.clone(),
                cancel: flag,
            };
            set.spawn(async move { (i, job.run().await) });
        }
        let Some(joined) = set.join_next().await else { break };
        let (i, report) = match joined {
            Ok(x) => x,
            Err(e) => {
                // A panic in a job task is a bug; the run fails rather than hangs.
                tracing_panic(&emit, &e.to_string());
                break;
            }
        };
        let j = &plan.jobs[i];
        if let Some(n) = running_per_job.get_mut(&j.job) {
            *n = n.saturating_sub(1);
        }
        if report.status == Status::Failure && j.fail_fast && !j.matrix.is_empty() {
            cancel_flags[&j.job].store(true, Ordering::SeqCst);
        }
        done.insert(i, Done { status: report.status, outputs: report.outputs.clone() });
        reports[i] = Some(report);
    }
    finish(&opts, &emit, started, reports)
}

fn tracing_panic(emit: &Emit, msg: &str) {
    emit.emit(RunEvent::Log(LogLine {
        job_id: String::new(),
        step_id: String::new(),
        level: "error".into(),
        text: format!("internal error: a job task panicked: {msg}"),
    }));
}

fn finish(opts: &RunOptions, emit: &Emit, started: Instant, reports: Vec<Option<JobReport>>) -> RunReport {
    let jobs: Vec<JobReport> = reports.into_iter().flatten().collect();
    let status = if jobs.iter().any(|j| j.status == Status::Failure) {
        Status::Failure
    } else if jobs.iter().any(|j| j.status == Status::Cancelled) {
        Status::Cancelled
    } else {
        Status::Success
    };
    let duration = started.elapsed();
    emit.emit(RunEvent::RunFinished { run_id: opts.run_id.clone(), status, duration_ms: ms(duration) });
    RunReport { run_id: opts.run_id.clone(), status, duration, jobs }
}

fn eval_value(plan: &Plan, v: &Value, scope: &Scope) -> Result<String, String> {
    v.tpl.render(scope).map_err(|e| format!("{}:{}:{}: {e}", plan.file, v.pos.line, v.pos.column))
}

fn eval_map(plan: &Plan, m: &BTreeMap<String, Value>, scope: &Scope) -> Result<BTreeMap<String, String>, String> {
    m.iter().map(|(k, v)| Ok((k.clone(), eval_value(plan, v, scope)?))).collect()
}

struct JobRun {
    plan: Arc<Plan>,
    index: usize,
    opts: Arc<RunOptions>,
    scope: Scope,
    pipeline_env: Arc<BTreeMap<String, String>>,
    workspace: PathBuf,
    executor: Arc<dyn StepExecutor>,
    emit: Emit,
    cancel: Arc<AtomicBool>,
}

/// What a step left for the rest of the job.
struct StepState {
    /// The `steps` context, kept as CEL values so a step costs the same at step 1 and step 200.
    steps: HashMap<cel::objects::Key, cel::Value>,
    exported_env: BTreeMap<String, String>,
    path: Vec<String>,
    posts: Vec<(String, String, BTreeMap<String, String>)>, // (step id, script, env)
}

impl JobRun {
    fn job(&self) -> &PlanJob {
        &self.plan.jobs[self.index]
    }

    async fn run(mut self) -> JobReport {
        let started = Instant::now();
        let job = self.job().clone();
        self.emit.emit(RunEvent::JobStarted { job_id: job.key.clone(), name: job.name.clone() });
        let deadline = job.timeout.map(|t| started + t);
        // The needs' status does not carry into the job's own steps.
        self.scope.failed = false;
        self.scope.cancelled = false;
        self.scope.workspace = self.workspace.clone();
        let mut reports = Vec::new();
        let mut st =
            StepState { steps: HashMap::new(), exported_env: BTreeMap::new(), path: Vec::new(), posts: Vec::new() };
        let mut job_env = (*self.pipeline_env).clone();
        if let Err(e) = std::fs::create_dir_all(&self.workspace) {
            self.scope.failed = true;
            self.log(&job.key, "", "error", &format!("cannot create the workspace {}: {e}", self.workspace.display()));
        } else if self.workspace != self.opts.workspace
            && let Some(setup) = self.opts.job_setup.clone()
            && let Err(e) = (setup.0)(self.workspace.clone()).await
        {
            // No job depends on another's folder: without its own, it does not start.
            self.scope.failed = true;
            self.log(&job.key, "", "error", &format!("preparing the job's workspace: {e}"));
        }
        match eval_map(&self.plan, &job.env, &self.scope) {
            Ok(e) => job_env.extend(e),
            Err(e) => {
                self.log(&job.key, "", "error", &e);
                self.scope.failed = true;
            }
        }

        for step in &job.steps {
            let cancelled = self.cancel.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d);
            self.scope.cancelled |= cancelled;
            let r = self.step(step, &job_env, &mut st, deadline).await;
            reports.push(r);
        }

        // Cleanup scripts, last registered first, whatever happened.
        let posts = std::mem::take(&mut st.posts);
        for (n, (of, script, env)) in posts.into_iter().rev().enumerate() {
            let id = format!("post-{}", n + 1);
            let name = format!("Post {of}");
            let req = self.request(&id, &name, StepRef::Shell { script, shell: "bash".into() }, BTreeMap::new(), env);
            let r = self.execute(req, None).await;
            let status = match r.outcome {
                StepOutcome::Success => Status::Success,
                _ => {
                    self.scope.failed = true;
                    Status::Failure
                }
            };
            reports.push(self.finished(
                &id,
                &name,
                status,
                r.duration,
                &r.outputs,
                failure_text(&r.outcome),
                r.summary,
                r.usage,
            ));
        }

        let mut scope = self.scope.clone();
        scope.vars.insert("steps", steps_value(&st.steps));
        let outputs = match eval_map(&self.plan, &job.outputs, &scope) {
            Ok(o) => o,
            Err(e) => {
                self.log(&job.key, "", "error", &e);
                self.scope.failed = true;
                BTreeMap::new()
            }
        };
        let status = if self.scope.failed {
            Status::Failure
        } else if self.scope.cancelled {
            Status::Cancelled
        } else {
            Status::Success
        };
        let duration = started.elapsed();
        self.emit.emit(RunEvent::JobFinished {
            job_id: job.key.clone(),
            name: job.name.clone(),
            status,
            duration_ms: ms(duration),
            outputs: outputs.clone(),
        });
        JobReport { key: job.key, name: job.name, status, duration, steps: reports, outputs }
    }

    fn log(&self, job: &str, step: &str, level: &str, text: &str) {
        self.emit.emit(RunEvent::Log(LogLine {
            job_id: job.into(),
            step_id: step.into(),
            level: level.into(),
            text: text.into(),
        }));
    }

    #[allow(clippy::too_many_arguments)]
    fn finished(
        &self,
        id: &str,
        name: &str,
        status: Status,
        duration: Duration,
        outputs: &BTreeMap<String, String>,
        error: Option<String>,
        summary: Option<String>,
        usage: Option<StepUsage>,
    ) -> StepReport {
        self.emit.emit(RunEvent::StepFinished {
            job_id: self.job().key.clone(),
            step_id: id.into(),
            name: name.into(),
            status,
            duration_ms: ms(duration),
            usage,
            outputs: outputs.clone(),
            error: error.clone(),
        });
        StepReport {
            id: id.into(),
            name: name.into(),
            status,
            duration,
            error: error.map(|e| self.emit.m(&e)),
            summary,
        }
    }

    fn request(
        &self,
        id: &str,
        name: &str,
        uses: StepRef,
        inputs: BTreeMap<String, String>,
        env: BTreeMap<String, String>,
    ) -> StepRequest {
        // What every CI step may rely on knowing about its run (the step's own `env` wins).
        let mut all = self.run_env();
        all.extend(env);
        StepRequest {
            run_id: self.opts.run_id.clone(),
            job_id: self.job().key.clone(),
            step_id: id.into(),
            step_name: name.into(),
            uses,
            inputs,
            env: all,
            secrets: BTreeMap::new(),
            permissions: Default::default(),
            workspace: self.workspace.clone(),
            working_directory: None,
            timeout: None,
            memory: None,
            event_json: serde_json::to_string(&self.opts.event).unwrap_or_else(|_| "null".into()),
            ca_bundle: self.opts.ca_bundle.clone(),
        }
    }

    /// `CI=true` and the run's `SKIFF_*` variables: its id, number and attempt, the job, and
    /// the event's name, ref, commit, repository and environment.
    fn run_env(&self) -> BTreeMap<String, String> {
        let e = &self.opts.event;
        let text = |ptr: &str| e.pointer(ptr).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(String::from);
        let mut env = BTreeMap::from([
            ("CI".to_string(), "true".to_string()),
            ("SKIFF".into(), "true".into()),
            ("SKIFF_RUN_ID".into(), self.opts.run_id.clone()),
            ("SKIFF_RUN_NUMBER".into(), self.opts.run_number.to_string()),
            ("SKIFF_RUN_ATTEMPT".into(), self.opts.run_attempt.max(1).to_string()),
            ("SKIFF_JOB".into(), self.job().key.clone()),
        ]);
        for (k, v) in [
            ("SKIFF_EVENT_NAME", text("/name")),
            ("SKIFF_REF", text("/ref").or_else(|| text("/git_ref"))),
            ("SKIFF_SHA", text("/sha").or_else(|| text("/after"))),
            ("SKIFF_REPOSITORY", text("/repository/full_name")),
            ("SKIFF_ENVIRONMENT", text("/environment")),
        ] {
            if let Some(v) = v {
                env.insert(k.into(), v);
            }
        }
        env
    }

    async fn execute(&self, req: StepRequest, _deadline: Option<Instant>) -> StepResult {
        let emit = self.emit.clone();
        let (job_id, step_id, name) = (req.job_id.clone(), req.step_id.clone(), req.step_name.clone());
        emit.emit(RunEvent::StepStarted { job_id, step_id, name });
        let log = move |l: LogLine| emit.emit(RunEvent::Log(l));
        let started = Instant::now();
        let mut r = self.executor.run_step(req, &log).await;
        if r.duration.is_zero() {
            r.duration = started.elapsed();
        }
        r
    }

    async fn step(
        &mut self,
        step: &PlanStep,
        job_env: &BTreeMap<String, String>,
        st: &mut StepState,
        deadline: Option<Instant>,
    ) -> StepReport {
        let mut scope = self.scope.clone();
        scope.vars.insert("steps", steps_value(&st.steps));
        let mut env = job_env.clone();
        env.extend(st.exported_env.clone());
        scope.vars.insert("env", strings_to_cel(&env));

        let skip = |this: &mut Self, st: &mut StepState, status: Status, error: Option<String>| {
            st.steps.insert(
                step_key(&step.id),
                json_to_cel(
                    &serde_json::json!({"outputs": {}, "outcome": status.as_str(), "conclusion": status.as_str()}),
                ),
            );
            if status == Status::Failure {
                this.scope.failed = true;
            }
            this.finished(&step.id, &step.name, status, Duration::ZERO, &BTreeMap::new(), error, None, None)
        };
        let fail_at =
            |pos: super::source::Pos, e: String| format!("{}:{}:{}: {e}", self.plan.file, pos.line, pos.column);

        // if: default success(); a condition without a status function means `success() && (…)`.
        let run = match &step.if_ {
            None => Ok(!scope.failed && !scope.cancelled),
            Some(c) => c
                .expr
                .eval_bool(&scope)
                .map(|b| b && (c.expr.has_status_call() || (!scope.failed && !scope.cancelled)))
                .map_err(|e| fail_at(c.pos, e.to_string())),
        };
        match run {
            Ok(true) => {}
            Ok(false) => return skip(self, st, Status::Skipped, None),
            Err(e) => return skip(self, st, Status::Failure, Some(e)),
        }

        // Evaluate everything before running, so a bad expression fails the step cleanly.
        let prepared = (|| -> Result<_, String> {
            let step_env = eval_map(&self.plan, &step.env, &scope)?;
            env.extend(step_env);
            scope.vars.insert("env", strings_to_cel(&env));
            let inputs = eval_map(&self.plan, &step.with, &scope)?;
            let wd = step.working_directory.as_ref().map(|w| eval_value(&self.plan, w, &scope)).transpose()?;
            let uses = match &step.uses {
                Uses::Builtin(b) => StepRef::Builtin(b.clone()),
                Uses::Path { path, .. } => StepRef::Path(path.clone()),
                Uses::Shell { script, shell, exprs, pos } => {
                    for (var, e) in exprs {
                        let v = e.eval(&scope).map_err(|e| fail_at(*pos, e.to_string()))?;
                        env.insert(var.clone(), super::expr::to_text(&v));
                    }
                    StepRef::Shell { script: script.clone(), shell: shell.clone() }
                }
            };
            Ok((inputs, wd, uses))
        })();
        let (inputs, wd, uses) = match prepared {
            Ok(x) => x,
            Err(e) => return skip(self, st, Status::Failure, Some(e)),
        };
        if !st.path.is_empty() {
            // In front of the PATH the step would have had: its env's, else the sandbox's default.
            let old = env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
            let p = format!("{}:{old}", st.path.join(":"));
            env.insert("PATH".into(), p);
        }
        let mut req = self.request(&step.id, &step.name, uses, inputs, env.clone());
        req.secrets = step
            .permissions
            .secrets
            .iter()
            .filter_map(|n| self.opts.secrets.get(n).map(|v| (n.clone(), v.clone())))
            .collect();
        req.permissions = step.permissions.clone();
        req.permissions.read_only = self.opts.read_only;
        req.working_directory = wd;
        req.memory = step.memory;
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        req.timeout = match (step.timeout, remaining) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(post) = &step.post {
            st.posts.push((step.name.clone(), post.raw.clone(), env.clone()));
        }
        let r = self.execute(req, deadline).await;
        if let Some(post) = &r.post {
            st.posts.push((step.name.clone(), post.clone(), env.clone()));
        }
        let (outcome, error) = match &r.outcome {
            StepOutcome::Success => (Status::Success, None),
            StepOutcome::Failure(m) => (Status::Failure, Some(m.clone())),
            StepOutcome::Cancelled => {
                (Status::Cancelled, Some("the step was stopped (timeout or cancellation)".into()))
            }
        };
        let conclusion = if outcome != Status::Success && step.continue_on_error { Status::Success } else { outcome };
        if conclusion != Status::Success {
            let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
            if outcome == Status::Cancelled && (timed_out || self.cancel.load(Ordering::SeqCst)) {
                self.scope.cancelled = true;
                if timed_out {
                    self.scope.failed = true;
                }
            } else {
                self.scope.failed = true;
            }
        }
        let outputs = r.outputs.clone();
        st.steps.insert(
            step_key(&step.id),
            json_to_cel(
                &serde_json::json!({"outputs": outputs, "outcome": outcome.as_str(), "conclusion": conclusion.as_str()}),
            ),
        );
        if outcome == Status::Success || step.continue_on_error {
            st.exported_env.extend(r.env.clone());
            st.path.splice(0..0, r.path.iter().cloned());
        }
        self.finished(&step.id, &step.name, outcome, r.duration, &outputs, error, r.summary, r.usage)
    }
}

fn failure_text(o: &StepOutcome) -> Option<String> {
    match o {
        StepOutcome::Success => None,
        StepOutcome::Failure(m) => Some(m.clone()),
        StepOutcome::Cancelled => Some("cancelled".into()),
    }
}

fn step_key(id: &str) -> cel::objects::Key {
    cel::objects::Key::String(Arc::new(id.to_string()))
}

fn steps_value(steps: &HashMap<cel::objects::Key, cel::Value>) -> cel::Value {
    cel::Value::Map(cel::objects::Map { map: Arc::new(steps.clone()) })
}
