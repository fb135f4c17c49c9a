//! `download`: the artifacts stored by the jobs this job needs (`upload` with
//! `target: artifact`), copied into the workspace by the host (the `artifacts` interface).

use skiff_step_sdk::{Context, Manifest, Outputs, Step, StepError, info};

struct Download;

impl Step for Download {
    fn describe() -> Manifest {
        Manifest::new("download", "Copies the artifacts of the jobs this job needs into the workspace.")
            .input("name", "One artifact; all of those jobs' artifacts when empty", false, None)
            .input("path", "The workspace folder to copy them into (created if missing)", false, Some("."))
            .output("names", "The artifacts downloaded, comma-separated")
            .output("count", "How many were downloaded")
            .output("download-path", "The folder they are in")
    }

    fn run(ctx: Context) -> Result<Outputs, StepError> {
        let name = ctx.input("name").map(str::trim).filter(|n| !n.is_empty());
        let path = ctx.input_or("path", ".").trim().to_string();
        let names = skiff_step_sdk::download_artifacts(name, &path).map_err(StepError::Failed)?;
        if names.is_empty() {
            info!("the jobs this job needs stored no artifacts");
        }
        for n in &names {
            info!("downloaded {n} into {path}");
        }
        Ok(Outputs::new()
            .set("names", names.join(","))
            .set("count", names.len().to_string())
            .set("download-path", path))
    }
}

skiff_step_sdk::export!(Download);
