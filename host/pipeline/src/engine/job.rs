//! One job instance: its workspace, env and steps in order (each step's `if:`, expressions,
//! request and result), its post scripts, and its outputs.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::events::{Emit, JobReport, RunEvent, Status, StepReport, ms};
use super::{DEFAULT_PATH, RunOptions};
use crate::component_ref::ComponentRef;
use crate::executor::{Level, LogLine, StepExecutor, StepOutcome, StepRef, StepRequest, StepResult, Usage};
use crate::expr::{Scope, json_to_cel, strings_to_cel};
use crate::plan::{Plan, PlanJob, PlanStep, Uses, Value};

fn eval_value(plan: &Plan, v: &Value, scope: &Scope) -> Result<String, String> {
    v.tpl.render(scope).map_err(|e| format!("{}:{}:{}: {e}", plan.file, v.pos.line, v.pos.column))
}

pub(super) fn eval_map(
    plan: &Plan,
    m: &BTreeMap<String, Value>,
    scope: &Scope,
) -> Result<BTreeMap<String, String>, String> {
    m.iter().map(|(k, v)| Ok((k.clone(), eval_value(plan, v, scope)?))).collect()
}

/// A job instance ready to run.
pub(super) struct JobRun {
    pub(super) plan: Arc<Plan>,
    pub(super) index: usize,
    pub(super) opts: Arc<RunOptions>,
    pub(super) scope: Scope,
    pub(super) pipeline_env: Arc<BTreeMap<String, String>>,
    pub(super) workspace: PathBuf,
    pub(super) executor: Arc<dyn StepExecutor>,
    pub(super) emit: Emit,
    pub(super) cancel: Arc<AtomicBool>,
    /// The secrets this job's steps may be granted: the run's, and its environment's.
    pub(super) secrets: Arc<BTreeMap<String, String>>,
}

/// What a step left for the rest of the job.
struct StepState {
    /// The `steps` context, kept as CEL values so a step costs the same at step 1 and step 200.
    steps: HashMap<cel::objects::Key, cel::Value>,
    exported_env: BTreeMap<String, String>,
    path: Vec<String>,
    posts: Vec<Post>,
}

/// What runs at job end for a step, last registered first.
struct Post {
    /// The step's name.
    of: String,
    what: PostRun,
    env: BTreeMap<String, String>,
    /// It runs where its step's processes ran.
    image: Option<ComponentRef>,
}

enum PostRun {
    /// A cleanup script (`post:`, or a step's `skiff.post` output): bash, a process and nothing
    /// more, whatever happened.
    Script(String),
    /// The step's component again (its `skiff.post-step` output), with its grants and secrets.
    Step {
        uses: StepRef,
        inputs: BTreeMap<String, String>,
        secrets: BTreeMap<String, String>,
        grants: crate::executor::Grants,
        working_directory: Option<String>,
        /// Only when the job has succeeded so far.
        if_success: bool,
    },
}

impl JobRun {
    fn job(&self) -> &PlanJob {
        &self.plan.jobs[self.index]
    }

    pub(super) async fn run(mut self) -> JobReport {
        let started = Instant::now();
        let job = self.job().clone();
        self.emit.emit(RunEvent::JobStarted { job_id: job.key.clone(), name: job.name.clone() });
        if let Some(e) = &job.environment {
            let (job_id, environment) = (job.key.clone(), e.name.clone());
            self.emit.emit(RunEvent::JobEnvironment { job_id, environment, url: None });
        }
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
            self.log(
                &job.key,
                "",
                Level::Error,
                &format!("cannot create the workspace {}: {e}", self.workspace.display()),
            );
        } else if self.workspace != self.opts.workspace
            && let Some(setup) = self.opts.job_setup.clone()
            && let Err(e) = (setup.0)(self.workspace.clone()).await
        {
            // No job depends on another's folder: without its own, it does not start.
            self.scope.failed = true;
            self.log(&job.key, "", Level::Error, &format!("preparing the job's workspace: {e}"));
        }
        match eval_map(&self.plan, &job.env, &self.scope) {
            Ok(e) => job_env.extend(e),
            Err(e) => {
                self.log(&job.key, "", Level::Error, &e);
                self.scope.failed = true;
            }
        }

        for step in &job.steps {
            let cancelled = self.cancel.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d);
            self.scope.cancelled |= cancelled;
            let r = self.step(step, &job_env, &mut st, deadline).await;
            reports.push(r);
        }

        // Posts, last registered first: cleanup scripts whatever happened, a component's own
        // post as it asked (the cache's save only after a job that has succeeded so far).
        let posts = std::mem::take(&mut st.posts);
        for (n, Post { of, what, env, image }) in posts.into_iter().rev().enumerate() {
            let id = format!("post-{}", n + 1);
            let name = format!("Post {of}");
            let req = match what {
                PostRun::Script(script) => {
                    let mut req =
                        self.request(&id, &name, StepRef::Shell { script, shell: "bash".into() }, BTreeMap::new(), env);
                    // A cleanup script is a process, and nothing more: no network, no secrets.
                    req.grants.process = true;
                    req.grants.read_only = self.opts.read_only;
                    req
                }
                PostRun::Step { if_success, .. } if if_success && (self.scope.failed || self.scope.cancelled) => {
                    reports.push(self.finished(
                        &id,
                        &name,
                        Status::Skipped,
                        Duration::ZERO,
                        &BTreeMap::new(),
                        None,
                        None,
                        None,
                    ));
                    continue;
                }
                PostRun::Step { uses, inputs, secrets, grants, working_directory, .. } => {
                    let mut req = self.request(&id, &name, uses, inputs, env);
                    req.secrets = secrets;
                    req.grants = grants;
                    req.working_directory = working_directory;
                    req
                }
            };
            let req = StepRequest { image, ..req };
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

        self.executor.job_finished(&self.opts.run_id, &job.key);

        let mut scope = self.scope.clone();
        scope.vars.insert("steps", steps_value(&st.steps));
        let outputs = match eval_map(&self.plan, &job.outputs, &scope) {
            Ok(o) => o,
            Err(e) => {
                self.log(&job.key, "", Level::Error, &e);
                self.scope.failed = true;
                BTreeMap::new()
            }
        };
        // `environment.url` reads the steps as the outputs do; a bad one is logged, and does not
        // fail a deployment that has happened.
        if let Some(e) = &job.environment
            && let Some(u) = &e.url
        {
            match eval_value(&self.plan, u, &scope) {
                Ok(url) => {
                    let (job_id, environment) = (job.key.clone(), e.name.clone());
                    self.emit.emit(RunEvent::JobEnvironment { job_id, environment, url: Some(url) });
                }
                Err(err) => self.log(&job.key, "", Level::Warn, &format!("`environment.url`: {err}")),
            }
        }
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

    fn log(&self, job: &str, step: &str, level: Level, text: &str) {
        self.emit.emit(RunEvent::Log(LogLine { job_id: job.into(), step_id: step.into(), level, text: text.into() }));
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
        usage: Option<Usage>,
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
            grants: Default::default(),
            workspace: self.workspace.clone(),
            working_directory: None,
            timeout: None,
            memory: None,
            image: None,
            event_json: serde_json::to_string(&self.opts.event).unwrap_or_else(|_| "null".into()),
            ca_bundle: self.opts.ca_bundle.clone(),
            needs: self.needed_jobs(),
        }
    }

    /// Every instance of the jobs this one waits for, directly or through others: all of them
    /// have finished when it starts.
    fn needed_jobs(&self) -> Vec<String> {
        let mut ids: Vec<&str> = self.job().needs.iter().map(String::as_str).collect();
        let mut i = 0;
        while let Some(&id) = ids.get(i) {
            for j in self.plan.jobs.iter().filter(|j| j.job == id) {
                for n in &j.needs {
                    if !ids.contains(&n.as_str()) {
                        ids.push(n);
                    }
                }
            }
            i += 1;
        }
        self.plan.jobs.iter().filter(|j| ids.contains(&j.job.as_str())).map(|j| j.key.clone()).collect()
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
            |pos: crate::source::Pos, e: String| format!("{}:{}:{}: {e}", self.plan.file, pos.line, pos.column);

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
            let mut inputs = eval_map(&self.plan, &step.with, &scope)?;
            let wd = step.working_directory.as_ref().map(|w| eval_value(&self.plan, w, &scope)).transpose()?;
            let uses = match &step.uses {
                Uses::Builtin(b) => StepRef::Builtin(b.clone()),
                Uses::Path { path, .. } => StepRef::Path(path.clone()),
                Uses::Component { reference, content, .. } => match content {
                    Some(d) => StepRef::Component { reference: reference.to_string(), digest: d.clone() },
                    None => {
                        return Err(format!(
                            "`{reference}` was not fetched before the run: a host resolves shared components when the run starts"
                        ));
                    }
                },
                Uses::Shell { script, shell, exprs, pos } => {
                    for (var, e) in exprs {
                        let v = e.eval(&scope).map_err(|e| fail_at(*pos, e.to_string()))?;
                        env.insert(var.clone(), crate::expr::to_text(&v));
                    }
                    if shell == crate::load::JS {
                        // JavaScript runs in the built-in `script` component; its errors point
                        // into the pipeline file.
                        inputs.insert("script".into(), script.clone());
                        inputs.insert("origin".into(), format!("{}:{}:{}", self.plan.file, pos.line, pos.column));
                        StepRef::Builtin("script".into())
                    } else {
                        StepRef::Shell { script: script.clone(), shell: shell.clone() }
                    }
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
        req.secrets =
            step.grants.secrets.iter().filter_map(|n| self.secrets.get(n).map(|v| (n.clone(), v.clone()))).collect();
        req.grants = step.grants.clone();
        req.grants.read_only = self.opts.read_only;
        req.working_directory = wd;
        req.memory = step.memory;
        req.image = step.image.as_ref().map(|i| i.reference.clone());
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        req.timeout = match (step.timeout, remaining) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(post) = &step.post {
            st.posts.push(Post {
                of: step.name.clone(),
                what: PostRun::Script(post.raw.clone()),
                env: env.clone(),
                image: req.image.clone(),
            });
        }
        let image = req.image.clone();
        // What a component runs again at job end if it asks (`run:` scripts have `skiff.post`).
        let again = (!matches!(req.uses, StepRef::Shell { .. })).then(|| {
            (
                req.uses.clone(),
                req.inputs.clone(),
                req.secrets.clone(),
                req.grants.clone(),
                req.working_directory.clone(),
            )
        });
        let r = self.execute(req, deadline).await;
        if let Some(post) = &r.post {
            st.posts.push(Post {
                of: step.name.clone(),
                what: PostRun::Script(post.clone()),
                env: env.clone(),
                image: image.clone(),
            });
        }
        if let Some(p) = &r.post_step
            && let Some((uses, mut inputs, secrets, grants, working_directory)) = again
            && r.outcome == StepOutcome::Success
        {
            inputs.extend(p.inputs.clone());
            st.posts.push(Post {
                of: step.name.clone(),
                what: PostRun::Step {
                    uses,
                    inputs,
                    secrets,
                    grants,
                    working_directory,
                    if_success: p.when == crate::executor::PostWhen::Success,
                },
                env: env.clone(),
                image,
            });
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
