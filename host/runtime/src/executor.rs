//! The pipeline engine's executor on this host: each step a component run by
//! the [`Runtime`] in a fresh store, with exactly the grants the pipeline gave.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use crate::builtin;
use crate::capabilities::connect::tls_config;
use crate::image_store::ImageStore;
use crate::jobs::{JobSpaces, ProcessSetup};
use crate::limits::Limits;
use crate::pipeline::executor::{
    Level, LogLine, PostStep, StepExecutor, StepOutcome, StepRef, StepRequest, StepResult, caps,
};
use crate::sandbox::ProcessLimits;
use crate::{Runtime, StepInvocation, StepStatus};

/// Output keys the shell step uses to hand env, path and cleanup to the engine.
const ENV_PREFIX: &str = "skiff.env.";
const PATH_KEY: &str = "skiff.path";
const POST_KEY: &str = "skiff.post";
/// Output key a component step asks with to run once more at job end (`PostStep`).
const POST_STEP_KEY: &str = "skiff.post-step";
const RESERVED_PREFIX: &str = "skiff.";

/// Runs pipeline steps on a local [`Runtime`].
pub struct LocalExecutor {
    runtime: Arc<Runtime>,
    /// Default limits; a step's `timeout-minutes` and memory override them.
    pub limits: Limits,
    /// Where `artifacts.upload` stores files, per run.
    pub artifacts: Option<Arc<dyn crate::artifact_store::ArtifactStore>>,
    /// Run processes without bubblewrap (an explicit host flag; logged on every run).
    pub unsandboxed_processes: bool,
    /// The last CA bundle seen and its TLS settings: an app's steps share one bundle, parsed once.
    tls_cache: std::sync::Mutex<Option<(Arc<str>, Arc<rustls::ClientConfig>)>>,
    /// Built-in steps by name, once loaded.
    builtins: std::sync::Mutex<std::collections::HashMap<String, Arc<crate::LoadedStep>>>,
    /// Container images prepared before runs (`container:`, `image:`).
    pub images: ImageStore,
    /// Each job's `$HOME` and image layer, and each app's tool cache.
    pub jobs: JobSpaces,
    /// Limits of a process tree where the step sets none (its memory; CPU follows the step's).
    pub process_limits: ProcessLimits,
}

impl LocalExecutor {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        // Pipeline steps build and test real projects: an hour unless `timeout-minutes` says otherwise.
        let hour = std::time::Duration::from_secs(3600);
        let limits = Limits { timeout: hour, cpu: hour, ..Limits::default() };
        Self {
            runtime,
            limits,
            artifacts: None,
            unsandboxed_processes: false,
            tls_cache: Default::default(),
            builtins: Default::default(),
            images: ImageStore::default_store(),
            jobs: JobSpaces::local(),
            process_limits: ProcessLimits::default(),
        }
    }

    /// What the step's processes get from its job and its limits; an error says what to fix.
    fn process_setup(&self, req: &StepRequest, limits: &Limits) -> Result<(ProcessSetup, ProcessLimits), String> {
        let image = match &req.image {
            None => None,
            Some(r) => {
                let d = r.digest().ok_or_else(|| {
                    format!("image {r} is not pinned: run `skiff lock` (or write it with `@sha256:…`)")
                })?;
                Some(self.images.lookup(d).ok_or_else(|| {
                    format!("image {r} was not prepared on this host before the run; it is pulled when the run starts")
                })?)
            }
        };
        let event: serde_json::Value = serde_json::from_str(&req.event_json).unwrap_or_default();
        let app = event.get("app").and_then(|a| a.as_str());
        let setup = self.jobs.setup(&req.run_id, &req.job_id, app, image.as_ref(), req.grants.read_only)?;
        let mut process = self.process_limits.clone();
        if let Some(m) = req.memory {
            process.memory_bytes = m;
        }
        process.cpu_seconds = limits.cpu.as_secs().max(1);
        Ok((setup, process))
    }

    /// The TLS settings for a CA bundle, parsed once per bundle in a row.
    fn tls_for(&self, pem: &Arc<str>) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut cache = self.tls_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, config)) = cache.as_ref()
            && Arc::ptr_eq(seen, pem)
        {
            return Ok(config.clone());
        }
        let config = tls_config(Some(pem))?;
        *cache = Some((pem.clone(), config.clone()));
        Ok(config)
    }

    /// A built-in step by name, loaded once: no copy and no hash of its bytes per step.
    async fn builtin(&self, name: &str) -> Result<Arc<crate::LoadedStep>, String> {
        if let Some(s) = self.builtins.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(s.clone());
        }
        let Some(bytes) = builtin::get(name) else {
            let names: Vec<_> = builtin::names().collect();
            return Err(format!("there is no built-in step `{name}`; built-in steps are: {}", names.join(", ")));
        };
        let step = self.runtime.load_static(bytes).await.map_err(|e| format!("{e:#}"))?;
        self.builtins.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), step.clone());
        Ok(step)
    }

    async fn execute(&self, req: StepRequest, log: &(dyn Fn(LogLine) + Send + Sync)) -> StepResult {
        let started = Instant::now();
        let fail = |msg: String| {
            log(LogLine {
                job_id: req.job_id.clone(),
                step_id: req.step_id.clone(),
                level: Level::System,
                text: msg.clone(),
            });
            StepResult { duration: started.elapsed(), ..StepResult::outcome(StepOutcome::Failure(msg)) }
        };
        let mut inputs = req.inputs.clone();
        // Decided once, here, from what the pipeline granted (a `run:` step's process included).
        let enforced = match crate::grants::enforce(&req.grants, &req.inputs, self.unsandboxed_processes) {
            Ok(e) => e,
            Err(e) => return fail(e.to_string()),
        };
        let step = match &req.uses {
            // A shared component runs by digest (fetched and checked before the run); the
            // runtime caches it by digest too.
            StepRef::Component { reference, digest } => match self.runtime.load_digest(digest).await {
                Ok(s) => s,
                Err(e) => return fail(format!("{reference}: {e}")),
            },
            // Read and hashed again only when the file changed: never stale, and no sha256 of
            // the whole component per step.
            StepRef::Path(p) => match self.runtime.load_file(p).await {
                Ok(s) => s,
                Err(e) => return fail(format!("{e:#}")),
            },
            StepRef::Builtin(name) => match self.builtin(name).await {
                Ok(s) => s,
                Err(e) => return fail(e),
            },
            StepRef::Shell { script, shell } => {
                inputs.insert("script".into(), script.clone());
                inputs.insert("shell".into(), shell.clone());
                if let Some(dir) = &req.working_directory {
                    inputs.insert("working-directory".into(), dir.clone());
                }
                match self.builtin("shell").await {
                    Ok(s) => s,
                    Err(e) => return fail(e),
                }
            }
        };
        let mut limits = self.limits;
        if let Some(t) = req.timeout {
            limits.timeout = t;
            limits.cpu = limits.cpu.min(t);
        }
        if let Some(m) = req.memory {
            limits.memory = m;
        }
        let mut enforced = enforced;
        if enforced.process.allowed {
            match self.process_setup(&req, &limits) {
                Ok((setup, process_limits)) => {
                    // As GitHub does in containers: the default shell is bash, else sh.
                    if let (StepRef::Shell { shell, .. }, Some(image)) = (&req.uses, &setup.image)
                        && shell == "bash"
                        && !has_program(&image.lower, &["bin/bash", "usr/bin/bash"])
                    {
                        inputs.insert("shell".into(), "sh".into());
                        log(LogLine {
                            job_id: req.job_id.clone(),
                            step_id: req.step_id.clone(),
                            level: Level::System,
                            text: "the image has no bash: the script runs with sh".into(),
                        });
                    }
                    enforced.process.setup = setup;
                    enforced.process.limits = process_limits;
                }
                Err(e) => return fail(e),
            }
        }
        let inv = StepInvocation {
            run_id: req.run_id.clone(),
            job_id: req.job_id.clone(),
            step_id: req.step_id.clone(),
            inputs,
            event_json: req.event_json.clone(),
            workspace: req.workspace.clone(),
            env: req.env.clone(),
            secrets: req.secrets.clone(),
            mask_also: Vec::new(),
            allow_hosts: enforced.allow,
            process: enforced.process,
            limits,
            artifacts: self.artifacts.clone(),
            needs: req.needs.clone(),
            tls: match req.ca_bundle.as_ref().map(|pem| self.tls_for(pem)) {
                None => None,
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => return fail(format!("the app's CA bundle (`ca-file`): {e}")),
            },
        };
        // The runtime's sink must be 'static: lines reach the caller's callback through a channel.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<LogLine>();
        let sink = Arc::new(move |line: LogLine| {
            let _ = tx.send(line);
        });
        let run = self.runtime.run(&step, inv, sink);
        tokio::pin!(run);
        let report = loop {
            tokio::select! {
                biased;
                Some(line) = rx.recv() => log(line),
                report = &mut run => break report,
            }
        };
        while let Ok(line) = rx.try_recv() {
            log(line);
        }
        let mut outputs = BTreeMap::new();
        let mut env = BTreeMap::new();
        let mut path = Vec::new();
        let mut post = None;
        // Environment, `PATH` and cleanup scripts steer later processes (`BASH_ENV` runs a file
        // in every later `run:`): only a step that may run processes itself may hand them on.
        let may_steer = matches!(req.uses, StepRef::Shell { .. }) || req.grants.process;
        let mut refused = None;
        // Running itself again at job end gives a component nothing it did not have: any
        // component step may ask (a `run:` script has `skiff.post`).
        let mut post_step = None;
        let mut bad_post_step = None;
        for (k, v) in report.outputs {
            if k == POST_STEP_KEY && !matches!(req.uses, StepRef::Shell { .. }) {
                match serde_json::from_str::<PostStep>(&v) {
                    Ok(p) => post_step = Some(p),
                    Err(e) => bad_post_step = Some(e.to_string()),
                }
                continue;
            }
            if k.starts_with(RESERVED_PREFIX) && !may_steer {
                refused.get_or_insert(k);
                continue;
            }
            if let Some(name) = k.strip_prefix(ENV_PREFIX) {
                env.insert(name.to_string(), v);
            } else if k == PATH_KEY {
                path.extend(v.lines().filter(|l| !l.is_empty()).map(String::from));
            } else if k == POST_KEY {
                post = Some(v);
            } else {
                outputs.insert(k, v);
            }
        }
        let over_cap = caps::check(&outputs, &env, &path, &req.env).err();
        if over_cap.is_some() {
            // Nothing of what broke a cap goes on to the job.
            outputs.clear();
            env.clear();
            path.clear();
            post = None;
            post_step = None;
        }
        let outcome = match &report.status {
            StepStatus::Succeeded if over_cap.is_some() => StepOutcome::Failure(over_cap.unwrap_or_default()),
            StepStatus::Succeeded if bad_post_step.is_some() => StepOutcome::Failure(format!(
                "the step set output `{POST_STEP_KEY}` to what is not `{{\"with\": {{…}}, \"if\": \"success\" | \"always\"}}`: {}",
                bad_post_step.unwrap_or_default()
            )),
            StepStatus::Succeeded if refused.is_some() => StepOutcome::Failure(format!(
                "the step set output `{}`: names starting with `{RESERVED_PREFIX}` set environment, PATH or \
                 cleanup scripts for later steps, which only a step granted `process` may do",
                refused.unwrap_or_default()
            )),
            StepStatus::Succeeded => StepOutcome::Success,
            StepStatus::TimedOut(_) => StepOutcome::Failure(report.status.to_string()),
            other => StepOutcome::Failure(other.to_string()),
        };
        let usage = report.usage;
        StepResult {
            outcome,
            outputs,
            env,
            path,
            post,
            post_step,
            summary: report.summary,
            duration: started.elapsed(),
            usage: Some(usage),
        }
    }
}

/// Whether any of `paths` is a file in the root filesystem `root` (symlinks resolved inside it).
fn has_program(root: &std::path::Path, paths: &[&str]) -> bool {
    paths.iter().any(|p| {
        crate::sandbox::rootfs::resolve_in_root(root, std::path::Path::new(p)).is_ok_and(|real| real.is_file())
    })
}

impl StepExecutor for LocalExecutor {
    fn run_step<'a>(
        &'a self,
        req: StepRequest,
        log: &'a (dyn Fn(LogLine) + Send + Sync),
    ) -> Pin<Box<dyn Future<Output = StepResult> + Send + 'a>> {
        Box::pin(self.execute(req, log))
    }

    fn job_finished(&self, run_id: &str, job_id: &str) {
        self.jobs.finish(run_id, job_id);
    }
}
