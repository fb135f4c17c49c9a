//! [`Scripted`]: the one step executor the host's tests and benchmarks run pipelines with when
//! they test the engine or the server, not the wasmtime runtime.
//!
//! It depends on nothing of the test binary (the benchmarks include this file with
//! `#[path = "../tests/all/support/executor.rs"]`).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use skiff_pipeline::{Level, LogLine, StepExecutor, StepOutcome, StepRef, StepRequest, StepResult};

/// Runs steps from scripts in a language of its own, one command a line:
///
/// | line | what the step does |
/// | --- | --- |
/// | `log TEXT` | logs a line |
/// | `out K=V` | sets an output |
/// | `env K=V` | exports a variable to later steps |
/// | `path P` | puts `P` in front of later steps' `PATH` |
/// | `post SCRIPT` | leaves a cleanup script (itself in this language) |
/// | `summary TEXT` | adds to the run summary |
/// | `sleep MS` | sleeps |
/// | `hang` | never ends (until the engine or server stops it) |
/// | `fail REASON` | fails, and stops |
/// | `cancel` | ends as cancelled, and stops |
///
/// `${NAME}` in `TEXT`, `V` and `REASON` is the step's variable, as a shell expands it, and
/// `"${NAME}"` (how the engine puts an expression into a script) is the bare value. A line it does
/// not know fails the step, so a typo in a test cannot pass as a step that did nothing.
///
/// Which script a step runs: the first rule that matches it ([`Scripted::step`],
/// [`Scripted::uses`], [`Scripted::every`]); else a `run:` step's own script; else, for any
/// other step, what its inputs ask for, as the built-in `diag` step reads them: it logs and
/// outputs `message`, logs `lines` more lines, sleeps `sleep_ms`, hangs on `hang: "true"` and
/// fails on `fail: "true"`. A `run:` step logs at level `stdout`, any other at `info`.
///
/// Every request is recorded ([`Scripted::calls`]) unless [`Scripted::without_recording`].
#[derive(Default)]
pub struct Scripted {
    rules: Vec<(Match, String)>,
    on_start: Option<Box<OnStart>>,
    unrecorded: bool,
    calls: Mutex<Vec<StepRequest>>,
}

type OnStart = dyn Fn(&StepRequest) + Send + Sync;

enum Match {
    Step(String),
    Uses(String),
    Every,
}

impl Match {
    fn matches(&self, req: &StepRequest) -> bool {
        match self {
            Match::Step(id) => req.step_id == *id,
            Match::Uses(name) => match &req.uses {
                StepRef::Builtin(b) => b == name,
                StepRef::Shell { .. } => name == "shell",
                StepRef::Path(p) => p.file_stem().is_some_and(|s| s == name.as_str()),
                StepRef::Component { reference, .. } => reference == name,
            },
            Match::Every => true,
        }
    }
}

/// One command of a script.
#[derive(Debug, Clone, PartialEq)]
enum Act {
    Log(String),
    Out(String, String),
    Env(String, String),
    Path(String),
    Post(String),
    Summary(String),
    Sleep(Duration),
    Hang,
    Fail(String),
    Cancel,
}

impl Scripted {
    /// Every step follows its own script or inputs.
    pub fn new() -> Self {
        Self::default()
    }

    /// The step with this id (in any job) runs `script` instead.
    pub fn step(self, id: &str, script: &str) -> Self {
        self.rule(Match::Step(id.into()), script)
    }

    /// Steps that use this built-in (`diag`, `checkout`; `shell` for `run:` steps), or a
    /// component file of this name without its extension, run `script` instead.
    pub fn uses(self, name: &str, script: &str) -> Self {
        self.rule(Match::Uses(name.into()), script)
    }

    /// Every step no earlier rule matched runs `script` instead (`""`: succeeds at once).
    pub fn every(self, script: &str) -> Self {
        self.rule(Match::Every, script)
    }

    fn rule(mut self, m: Match, script: &str) -> Self {
        if let Err(e) = parse(script, &BTreeMap::new()) {
            panic!("{e}");
        }
        self.rules.push((m, script.into()));
        self
    }

    /// Calls `f` with each request as its step starts, before anything else happens.
    #[allow(dead_code)] // The serve benchmark's use.
    pub fn on_start(mut self, f: impl Fn(&StepRequest) + Send + Sync + 'static) -> Self {
        self.on_start = Some(Box::new(f));
        self
    }

    /// Keeps no requests: for benchmarks, which would pile up millions.
    #[allow(dead_code)] // The benchmarks' use.
    pub fn without_recording(mut self) -> Self {
        self.unrecorded = true;
        self
    }

    /// Every request so far, in the order the steps started.
    pub fn calls(&self) -> Vec<StepRequest> {
        self.calls.lock().unwrap().clone()
    }

    /// The first request for the step with this id.
    pub fn call(&self, step_id: &str) -> StepRequest {
        let calls = self.calls.lock().unwrap();
        match calls.iter().find(|r| r.step_id == step_id) {
            Some(r) => r.clone(),
            None => {
                let ran: Vec<&str> = calls.iter().map(|r| r.step_id.as_str()).collect();
                panic!("step `{step_id}` did not run; these did: {ran:?}")
            }
        }
    }

    /// What `req` does: its rule's script, its own, or its inputs'.
    fn acts(&self, req: &StepRequest) -> Result<Vec<Act>, String> {
        if let Some((_, script)) = self.rules.iter().find(|(m, _)| m.matches(req)) {
            return parse(script, &req.env);
        }
        if let StepRef::Shell { script, .. } = &req.uses {
            return parse(script, &req.env);
        }
        Ok(from_inputs(&req.inputs))
    }
}

/// Expands `${NAME}` as a shell would, and `"${NAME}"` (how an expression stands in a script)
/// to the bare value, as the shell's word would be.
fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = s.to_string();
    for (k, v) in env {
        out = out.replace(&format!("\"${{{k}}}\""), v).replace(&format!("${{{k}}}"), v);
    }
    out
}

fn parse(script: &str, env: &BTreeMap<String, String>) -> Result<Vec<Act>, String> {
    let mut acts = Vec::new();
    for (n, line) in script.lines().enumerate().map(|(n, l)| (n + 1, l.trim())) {
        if line.is_empty() {
            continue;
        }
        let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
        let kv = || match arg.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), expand(v, env))),
            None => Err(format!("line {n} of the script: `{cmd}` takes K=V, not `{arg}`")),
        };
        acts.push(match cmd {
            "log" => Act::Log(expand(arg, env)),
            "out" => kv().map(|(k, v)| Act::Out(k, v))?,
            "env" => kv().map(|(k, v)| Act::Env(k, v))?,
            "path" => Act::Path(arg.into()),
            "post" => Act::Post(arg.into()),
            "summary" => Act::Summary(expand(arg, env)),
            "sleep" => Act::Sleep(Duration::from_millis(
                arg.parse().map_err(|_| format!("line {n} of the script: `sleep` takes milliseconds, not `{arg}`"))?,
            )),
            "hang" => Act::Hang,
            "fail" => Act::Fail(expand(arg, env)),
            "cancel" => Act::Cancel,
            _ => {
                return Err(format!(
                    "line {n} of the script: the scripted executor has no command `{cmd}` (log, out, env, path, \
                     post, summary, sleep, hang, fail, cancel)"
                ));
            }
        });
    }
    Ok(acts)
}

/// What a step that is not a `run:` script does, read from its inputs as `diag` reads them,
/// plus the test-only `lines`, `sleep_ms` and `hang`.
fn from_inputs(inputs: &BTreeMap<String, String>) -> Vec<Act> {
    let input = |k: &str| inputs.get(k).map(String::as_str).unwrap_or_default();
    let message = inputs.get("message").map(String::as_str).unwrap_or("hello from skiff");
    let mut acts = vec![Act::Log(message.into()), Act::Out("message".into(), message.into())];
    for i in 0..input("lines").parse().unwrap_or(0) {
        acts.push(Act::Log(format!("line {i} of many, padded to be long enough to matter")));
    }
    if let Ok(ms) = input("sleep_ms").parse() {
        acts.push(Act::Sleep(Duration::from_millis(ms)));
    }
    if input("hang") == "true" {
        acts.push(Act::Hang);
    }
    if input("fail") == "true" {
        acts.push(Act::Fail("failing on purpose because input `fail` is `true`".into()));
    }
    acts
}

impl StepExecutor for Scripted {
    fn run_step<'a>(
        &'a self,
        req: StepRequest,
        log: &'a (dyn Fn(LogLine) + Send + Sync),
    ) -> Pin<Box<dyn Future<Output = StepResult> + Send + 'a>> {
        Box::pin(async move {
            let started = Instant::now();
            if let Some(f) = &self.on_start {
                f(&req);
            }
            if !self.unrecorded {
                self.calls.lock().unwrap().push(req.clone());
            }
            let level = if matches!(req.uses, StepRef::Shell { .. }) { Level::Stdout } else { Level::Info };
            let mut r = StepResult::outcome(StepOutcome::Success);
            match self.acts(&req) {
                Err(e) => r.outcome = StepOutcome::Failure(format!("step `{}`: {e}", req.step_id)),
                Ok(acts) => {
                    for act in acts {
                        match act {
                            Act::Log(text) => {
                                log(LogLine { job_id: req.job_id.clone(), step_id: req.step_id.clone(), level, text })
                            }
                            Act::Out(k, v) => {
                                r.outputs.insert(k, v);
                            }
                            Act::Env(k, v) => {
                                r.env.insert(k, v);
                            }
                            Act::Path(p) => r.path.push(p),
                            Act::Post(script) => r.post = Some(script),
                            Act::Summary(text) => r.summary = Some(text),
                            Act::Sleep(d) => tokio::time::sleep(d).await,
                            Act::Hang => std::future::pending::<()>().await,
                            Act::Fail(reason) => {
                                r.outcome = StepOutcome::Failure(reason);
                                break;
                            }
                            Act::Cancel => {
                                r.outcome = StepOutcome::Cancelled;
                                break;
                            }
                        }
                    }
                }
            }
            r.duration = started.elapsed();
            r
        })
    }
}
