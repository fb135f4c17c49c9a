//! `skiff validate [PIPELINE]`: every problem of a pipeline file at once.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use skiff_pipeline::load_file;

/// Arguments of `skiff validate`.
#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// The pipeline file (default: `.skiff/pipeline.yaml`, then `serverless-pipeline.yaml`).
    pub pipeline: Option<PathBuf>,
    /// Also print the plan: jobs in order, steps, resolved `uses`, grants.
    #[arg(long)]
    pub plan: bool,
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
pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let path = find_pipeline(args.pipeline)?;
    match load_file(&path) {
        Ok(plan) => {
            let steps: usize = plan.jobs.iter().map(|j| j.steps.len()).sum();
            crate::outln!("{}: ok ({} job(s), {} step(s))", path.display(), plan.jobs.len(), steps);
            if args.plan {
                print!("{}", plan.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(d) => {
            eprintln!("{d}");
            eprintln!("{}: {} problem(s)", path.display(), d.0.len());
            Ok(ExitCode::from(1))
        }
    }
}
