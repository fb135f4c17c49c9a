//! `skiff step …`: run and inspect one step, create a step project (`new`), share steps
//! through registries (`publish`, `pull`, `sign`, `keygen`).

mod new;
mod share;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use skiff_runtime::artifact_store::ArtifactStore;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use skiff_runtime::builtin;
use skiff_runtime::capabilities::http::Allowlist;
use skiff_runtime::capabilities::log::{Level, LogLine};
use skiff_runtime::capabilities::process::ProcessGrant;
use skiff_runtime::limits::{Limits, parse_duration, parse_size};
use skiff_runtime::{EngineOptions, Runtime, StepInvocation};

#[derive(Subcommand)]
pub enum StepCommand {
    /// Run one step in a fresh sandbox, print its log live, then its outputs.
    Run(Box<RunArgs>),
    /// Print what a step declares: inputs, outputs, capabilities.
    Inspect {
        /// A built-in step name, a path to a component (.wasm), or a registry reference (read
        /// from its manifest: nothing is run).
        step: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        registry: crate::cli::registry::RegistryArgs,
    },
    /// Publish a component to an OCI registry as a Wasm artifact, with what it declares.
    Publish(share::PublishArgs),
    /// Fetch a published component (its digest checked) into a file.
    Pull(share::PullArgs),
    /// Sign a published component in cosign's format (`cosign verify --key` agrees).
    Sign(share::SignArgs),
    /// Create a signing key pair in cosign's format.
    Keygen(share::KeygenArgs),
    /// Create a step project that builds with one command (Rust, JavaScript or Python).
    New(new::NewArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// A built-in step name (`diag`, `shell`, …) or a path to a component (.wasm).
    step: String,
    /// An input, `KEY=VALUE` (repeatable).
    #[arg(long = "with", value_name = "KEY=VALUE")]
    with: Vec<String>,
    /// An environment variable the step sees, `KEY=VALUE` (repeatable). Nothing else is inherited.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A secret granted to the step, `NAME=VALUE` (repeatable). Masked in the log.
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    secret: Vec<String>,
    /// A host the step may call: `example.com`, `*.example.com`, `host:port` (repeatable).
    #[arg(long = "allow-host", value_name = "HOST")]
    allow_host: Vec<String>,
    /// PEM certificates the step trusts for HTTPS besides the Web PKI roots.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Grant the `process` capability (programs run in the bubblewrap sandbox).
    #[arg(long)]
    allow_process: bool,
    /// Let granted processes use the network.
    #[arg(long)]
    allow_process_network: bool,
    /// Run granted processes WITHOUT the bubblewrap sandbox (rlimits only). Dangerous; logged on every run.
    #[arg(long)]
    unsandboxed_processes: bool,
    /// The workspace directory (created if missing; default: the current directory).
    #[arg(long = "dir", value_name = "WORKSPACE")]
    dir: Option<PathBuf>,
    /// Where `artifacts.upload` stores files: `DIR/RUN-ID/NAME`.
    #[arg(long, value_name = "DIR")]
    artifacts: Option<PathBuf>,
    /// Linear memory limit, like `256MiB`.
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Wall-clock limit, like `30s` or `5m`.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// CPU-time limit, like `10s`.
    #[arg(long, value_name = "DURATION")]
    cpu: Option<String>,
    /// Log size limit, like `10MiB`.
    #[arg(long, value_name = "SIZE")]
    log_limit: Option<String>,
    /// Deterministic instruction budget (runs on a fuel-metered engine).
    #[arg(long, value_name = "INSTRUCTIONS")]
    fuel: Option<u64>,
    /// Print outputs as JSON.
    #[arg(long)]
    json: bool,
}

fn pairs(items: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("{what} `{s}` must be written KEY=VALUE"),
        })
        .collect()
}

/// Component bytes for a built-in name or a file path.
pub fn component_bytes(step: &str) -> anyhow::Result<Vec<u8>> {
    if let Some(bytes) = builtin::get(step) {
        return Ok(bytes.to_vec());
    }
    let path = PathBuf::from(step);
    if !path.exists() {
        let names: Vec<_> = builtin::names().collect();
        bail!("`{step}` is neither a built-in step ({}) nor a component file", names.join(", "));
    }
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

pub async fn run(cmd: StepCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        StepCommand::Inspect { step, json, registry } => {
            if skiff_pipeline::component_ref::looks_like_reference(&step) {
                share::inspect(&step, json, &registry).await
            } else {
                inspect(&step, json).await
            }
        }
        StepCommand::Publish(args) => share::publish(args).await,
        StepCommand::Pull(args) => share::pull(args).await,
        StepCommand::Sign(args) => share::sign(args).await,
        StepCommand::Keygen(args) => share::keygen(args),
        StepCommand::Run(args) => run_step(*args).await,
        StepCommand::New(args) => new::run(args),
    }
}

async fn inspect(step: &str, json: bool) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::new(EngineOptions { pooling: false, ..Default::default() }, None)?;
    let loaded = runtime.load(&component_bytes(step)?).await?;
    let m = &loaded.manifest;
    if json {
        let v = serde_json::json!({
            "name": m.name, "version": m.version, "description": m.description,
            "sha256": hex::encode(loaded.digest),
            "inputs": m.inputs.iter().map(|i| serde_json::json!({"name": i.name, "description": i.description, "required": i.required, "default": i.default})).collect::<Vec<_>>(),
            "outputs": m.outputs.iter().map(|o| serde_json::json!({"name": o.name, "description": o.description})).collect::<Vec<_>>(),
            "capabilities": {"hosts": m.capabilities.hosts, "secrets": m.capabilities.secrets, "process": m.capabilities.process},
        });
        crate::outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let inert = crate::cli::out::inert;
    crate::outln!("{} {} — {}", inert(&m.name), inert(&m.version), inert(&m.description));
    crate::outln!("sha256: {}", hex::encode(loaded.digest));
    crate::outln!("inputs:");
    for i in &m.inputs {
        let req = if i.required { " (required)" } else { "" };
        let def = i.default.as_deref().map(|d| format!(" [default: {d}]")).unwrap_or_default();
        crate::outln!("  {:<12} {}{req}{}", inert(&i.name), inert(&i.description), inert(&def));
    }
    crate::outln!("outputs:");
    for o in &m.outputs {
        crate::outln!("  {:<12} {}", inert(&o.name), inert(&o.description));
    }
    let c = &m.capabilities;
    crate::outln!("capabilities:");
    crate::outln!(
        "  hosts:   {}",
        if c.hosts.is_empty() { "none".into() } else { inert(&c.hosts.join(", ")).into_owned() }
    );
    crate::outln!(
        "  secrets: {}",
        if c.secrets.is_empty() { "none".into() } else { inert(&c.secrets.join(", ")).into_owned() }
    );
    crate::outln!("  process: {}", if c.process { "yes" } else { "no" });
    Ok(ExitCode::SUCCESS)
}

async fn run_step(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut limits = Limits::default();
    if let Some(m) = &args.memory {
        limits.memory = parse_size(m).map_err(anyhow::Error::msg)?;
    }
    if let Some(t) = &args.timeout {
        limits.timeout = parse_duration(t).map_err(anyhow::Error::msg)?;
    }
    if let Some(c) = &args.cpu {
        limits.cpu = parse_duration(c).map_err(anyhow::Error::msg)?;
    }
    if let Some(l) = &args.log_limit {
        limits.log_bytes = parse_size(l).map_err(anyhow::Error::msg)?;
    }
    limits.fuel = args.fuel;
    let workspace = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating workspace {}", d.display()))?;
            d.clone()
        }
        None => std::env::current_dir()?,
    };
    let options = EngineOptions { pooling: false, fuel: args.fuel.is_some(), ..Default::default() };
    anyhow::ensure!(
        limits.memory <= options.max_memory,
        "--memory {} is above this host's largest slot of 4 GiB",
        limits.memory
    );
    let runtime = Runtime::new(options, None)?;
    let loaded = runtime.load(&component_bytes(&args.step)?).await?;
    let inv = StepInvocation {
        run_id: format!("local-{}", std::process::id()),
        job_id: String::new(),
        step_id: loaded.manifest.name.clone(),
        inputs: pairs(&args.with, "--with")?,
        event_json: "{}".into(),
        workspace,
        env: pairs(&args.env, "--env")?,
        secrets: pairs(&args.secret, "--secret")?,
        mask_also: Vec::new(),
        allow_hosts: Allowlist::parse(&args.allow_host).map_err(anyhow::Error::msg)?,
        process: ProcessGrant {
            allowed: args.allow_process,
            network: args.allow_process_network,
            unsandboxed: args.unsandboxed_processes,
            ..ProcessGrant::default()
        },
        limits,
        needs: Vec::new(),
        artifacts: args
            .artifacts
            .as_ref()
            .map(|dir| Arc::new(skiff_runtime::artifact_store::LocalArtifacts::new(dir)) as Arc<dyn ArtifactStore>),
        tls: match &args.ca_file {
            None => None,
            Some(f) => Some(
                skiff_runtime::capabilities::connect::tls_config(Some(&skiff_server::config::read_ca_bundle(f)?))
                    .map_err(anyhow::Error::msg)?,
            ),
        },
    };
    let masker = skiff_pipeline::mask::Masker::new(inv.secrets.values());
    let sink = Arc::new(|rec: LogLine| print_log(&rec));
    let report = runtime.run(&loaded, inv, sink).await;
    if args.json {
        crate::outln!("{}", masker.mask(&serde_json::to_string_pretty(&report)?));
    } else {
        if let Some(s) = &report.summary {
            crate::outln!("── summary ──\n{}", s.trim_end());
        }
        crate::outln!("── outputs ──");
        for (k, v) in &report.outputs {
            crate::outln!("{k}={}", masker.mask(v));
        }
        let u = &report.usage;
        crate::outln!(
            "── {} in {} ms (cpu {} ms, peak memory {} KiB, http {} B, log {} B)",
            report.status,
            u.wall_ms,
            u.cpu_ms,
            u.peak_memory_bytes / 1024,
            u.egress_bytes,
            u.log_bytes
        );
    }
    Ok(if report.status.succeeded() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One log line on the terminal: stdout plain, everything else tagged.
pub fn print_log(rec: &LogLine) {
    let mut out = std::io::stdout().lock();
    let _ = match rec.level {
        Level::Stdout | Level::Info => writeln!(out, "  {}", rec.text),
        Level::System => writeln!(out, "  [skiff] {}", rec.text),
        other => writeln!(out, "  [{}] {}", other.as_str(), rec.text),
    };
}
