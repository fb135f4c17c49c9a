//! `skiff validate [PIPELINE]`: every problem of a pipeline file at once.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use skiff_pipeline::plan::Uses;
use skiff_pipeline::{Plan, load_file};
use skiff_runtime::{EngineOptions, LoadedStep, Runtime, builtin, grants};

/// Arguments of `skiff validate`.
#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// The pipeline file (default: `.skiff/pipeline.yaml`, then `serverless-pipeline.yaml`).
    pub pipeline: Option<PathBuf>,
    /// Also print the plan: jobs in order, steps, resolved `uses`, grants, and what each
    /// step's component asks for; a step whose component would be refused is a problem.
    #[arg(long)]
    pub plan: bool,
    #[command(flatten)]
    pub registry: super::registry::RegistryArgs,
}

/// The pipeline file to use: the one given, or the first default that exists.
pub fn find_pipeline(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    for p in [".skiff/pipeline.yaml", ".skiff/pipeline.yml", "serverless-pipeline.yaml", "serverless-pipeline.yml"] {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!("no pipeline file given, and neither .skiff/pipeline.yaml nor serverless-pipeline.yaml exists here")
}

/// Runs `skiff validate`: exit 0 when the pipeline is valid, 1 with every problem listed otherwise.
pub async fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let path = find_pipeline(args.pipeline)?;
    match load_file(&path) {
        Ok(plan) => {
            let steps: usize = plan.jobs.iter().map(|j| j.steps.len()).sum();
            crate::outln!("{}: ok ({} job(s), {} step(s))", path.display(), plan.jobs.len(), steps);
            if !args.plan {
                return Ok(ExitCode::SUCCESS);
            }
            print!("{}", plan.render());
            let mut plan = plan;
            let problems = components(&mut plan, &args.registry).await?;
            if problems.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            for p in &problems {
                eprintln!("{}: {p}", path.display());
            }
            eprintln!("{}: {} problem(s)", path.display(), problems.len());
            Ok(ExitCode::from(1))
        }
        Err(d) => {
            eprintln!("{d}");
            eprintln!("{}: {} problem(s)", path.display(), d.0.len());
            Ok(ExitCode::from(1))
        }
    }
}

/// Prints what each step's component asks for, checked against what the step is granted the
/// way the runtime checks it before the step starts; returns the steps that would be refused.
/// A host asked for through an input that holds an expression is known only when the run
/// starts, so it is not checked here.
async fn components(plan: &mut Plan, registry: &super::registry::RegistryArgs) -> anyhow::Result<Vec<String>> {
    let runtime = Runtime::new(EngineOptions { pooling: false, ..Default::default() }, None)?;
    let mut loaded: HashMap<String, Arc<LoadedStep>> = HashMap::new();
    let mut problems = Vec::new();
    // Shared components are fetched (or found in the store) to be asked what they need.
    if plan.jobs.iter().flat_map(|j| &j.steps).any(|s| matches!(s.uses, Uses::Component { .. })) {
        let policy = skiff_registry::Policy { allow_unpinned: true, ..Default::default() };
        if let Err(e) = registry.resolver()?.prepare(plan, &policy).await {
            problems.push(e.to_string());
        }
    }
    crate::outln!("components:");
    for job in &plan.jobs {
        for step in &job.steps {
            let (key, bytes) = match &step.uses {
                Uses::Builtin(name) => (name.clone(), builtin::get(name).map(<[u8]>::to_vec)),
                // A `script:` step runs in the built-in `script` component, a `run:` in `shell`.
                Uses::Shell { shell, .. } => {
                    let name = if shell == skiff_pipeline::load::JS { "script" } else { "shell" };
                    (name.to_string(), builtin::get(name).map(<[u8]>::to_vec))
                }
                Uses::Path { written, path } => (written.clone(), std::fs::read(path).ok()),
                Uses::Component { reference, content, .. } => {
                    let bytes = content.as_ref().and_then(|d| runtime.components().read(d).ok());
                    (reference.to_string(), bytes)
                }
            };
            let component = match loaded.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let Some(bytes) = bytes else {
                        // A shared component that could not be fetched is one problem, said above.
                        if !matches!(step.uses, Uses::Component { content: None, .. }) {
                            problems.push(format!(
                                "job `{}` step `{}`: cannot read the component `{key}`",
                                job.key, step.id
                            ));
                        }
                        continue;
                    };
                    match runtime.load(&bytes).await {
                        Ok(c) => loaded.entry(key.clone()).or_insert(c).clone(),
                        Err(e) => {
                            problems.push(format!(
                                "job `{}` step `{}`: `{key}` is not a step component: {e:#}",
                                job.key, step.id
                            ));
                            continue;
                        }
                    }
                }
            };
            let asks = &component.manifest.capabilities;
            crate::outln!(
                "  {}/{} ({key}) asks: secrets [{}] hosts [{}] process={}",
                job.key,
                step.id,
                asks.secrets.join(", "),
                asks.hosts.join(", "),
                asks.process
            );
            // Inputs whose value is known now; one holding `${{ }}` is known only at run time.
            let inputs: BTreeMap<String, String> =
                step.with.iter().filter(|(_, v)| v.tpl.is_literal()).map(|(k, v)| (k.clone(), v.raw.clone())).collect();
            let checked = grants::enforce(&step.grants, &inputs, false)
                .and_then(|e| grants::check(&component.manifest.name, asks, &e.allow, &e.process, &inputs));
            if let Err(e) = checked {
                problems.push(format!("job `{}` step `{}` would be refused: {e}", job.key, step.id));
            }
        }
    }
    Ok(problems)
}
