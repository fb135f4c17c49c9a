//! `skiff`: run pipelines and steps locally, or serve webhooks and runs. Every command and its
//! arguments live in `cli/`; the work is done by the library crates (`skiff-runtime`,
//! `skiff-server`, `skiff-spin-host`, `skiff-pipeline`, `skiff-sandbox`).

mod cli;

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use cli::step;
use skiff_runtime::artifact_store::ArtifactStore;
use skiff_runtime::executor::LocalExecutor;
use skiff_runtime::{EngineOptions, Runtime};

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Serverless CI/CD where every step is a capability-limited WebAssembly component."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline locally, the way the host runs it for a webhook.
    Run(cli::run::RunArgs),
    /// Check a pipeline and report every problem at once.
    Validate(cli::validate::ValidateArgs),
    /// Show what this host enforces for steps' processes (sandbox, images, limits) and where it caches.
    Doctor,
    /// Pin every registry tag the pipeline uses to its digest, in .skiff/lock.yaml.
    Lock(cli::lock::LockArgs),
    /// Write a skiff.toml for `skiff serve`, with an admin token and a webhook secret.
    Init(cli::init::InitArgs),
    /// Serve webhooks, dispatches, the Open API and runs.
    Serve(Box<cli::serve::ServeArgs>),
    /// Start a run of an app on a server.
    Trigger(cli::client::TriggerArgs),
    /// List, show, follow and cancel runs on a server.
    Runs {
        #[command(subcommand)]
        cmd: cli::client::RunsCommand,
    },
    /// Run or inspect a single step component.
    #[command(subcommand)]
    Step(step::StepCommand),
    /// Run the edge master's Spin component locally, as Fermyon would.
    #[command(subcommand)]
    Edge(EdgeCommand),
    /// Check a run's signed provenance (`provenance.intoto.jsonl`) against its host's public key.
    VerifyProvenance(cli::provenance::VerifyProvenanceArgs),
}

#[derive(Subcommand)]
enum EdgeCommand {
    /// Serve a Spin application (`spin.toml`) whose components are `wasi:http@0.3` handlers.
    Up(cli::edge::EdgeUpArgs),
}

/// The executor for `skiff run` and `skiff serve`: one shared runtime, components cached on
/// disk, artifacts stored in `artifacts`, jobs' directories in `jobs` (default: a temporary
/// folder of this process, and the cache directory's tool caches).
fn local_executor(
    artifacts: Arc<dyn ArtifactStore>,
    jobs: Option<skiff_runtime::jobs::JobSpaces>,
    unsandboxed_processes: bool,
) -> anyhow::Result<Arc<LocalExecutor>> {
    let runtime = Runtime::new(EngineOptions { pool_size: 64, ..Default::default() }, None)?;
    let mut executor = LocalExecutor::new(Arc::new(runtime));
    executor.artifacts = Some(artifacts);
    executor.unsandboxed_processes = unsandboxed_processes;
    if let Some(jobs) = jobs {
        executor.jobs = jobs;
    }
    Ok(Arc::new(executor))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Each running step holds descriptors: the usual soft limit of 1,024 would cap a host.
    skiff_runtime::engine::raise_open_file_limit();
    let result = match cli.command {
        Command::Step(cmd) => step::run(cmd).await,
        Command::Run(args) => cli::run::run(args).await,
        Command::Validate(args) => cli::validate::run(args).await,
        Command::Doctor => cli::doctor::run(),
        Command::Lock(args) => cli::lock::run(args).await,
        Command::Init(args) => cli::init::run(args),
        Command::Serve(args) => cli::serve::serve(*args).await.map(|()| ExitCode::SUCCESS),
        Command::Trigger(args) => cli::client::trigger(args).await,
        Command::Runs { cmd } => cli::client::runs(cmd).await,
        Command::Edge(EdgeCommand::Up(args)) => cli::edge::up(args).await.map(|()| ExitCode::SUCCESS),
        Command::VerifyProvenance(args) => cli::provenance::run(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
