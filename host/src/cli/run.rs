//! `skiff run [PIPELINE]`: runs a pipeline here, with live terminal output
//! (or JSON lines with `--json`), and exits 0 only if the run succeeded.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

use skiff_pipeline::inert;
use skiff_pipeline::{RunEvent, RunObserver, RunOptions, RunReport, Status, StepExecutor, load_file, run_pipeline};
use skiff_runtime::artifact_store::{ArtifactStore as _, LocalArtifacts};
use skiff_server::request::RunRequest;

/// Arguments of `skiff run`.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// The pipeline file (default: `.skiff/pipeline.yaml`, then `serverless-pipeline.yaml`).
    pub pipeline: Option<PathBuf>,
    /// Run only this job, or these comma-separated jobs, and the jobs they need.
    #[arg(long)]
    pub job: Option<String>,
    /// A webhook payload (JSON) to run for: the `body` context; `event` is derived from it.
    #[arg(long, value_name = "FILE")]
    pub event: Option<PathBuf>,
    /// PEM certificates the steps trust for HTTPS besides the Web PKI roots.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// The event's name (`push`, `pull_request`, `manual`, …).
    #[arg(long, value_name = "NAME")]
    pub event_name: Option<String>,
    /// The Git ref (`refs/heads/main`, or `main`).
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    /// A secret, repeatable.
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    pub secrets: Vec<String>,
    /// A dotenv file of secrets.
    #[arg(long, value_name = "FILE")]
    pub secrets_file: Option<PathBuf>,
    /// An input (`inputs` context), repeatable.
    #[arg(long = "input", value_name = "KEY=VALUE")]
    pub inputs: Vec<String>,
    /// The run's workspace, used as it is (default: a new folder under the temp dir
    /// holding a copy of the project: the folder of `.skiff/`, or of the pipeline file).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Keep the temporary workspace after a run that succeeds (a failed run's is always kept,
    /// so what went wrong can be looked at).
    #[arg(long, conflicts_with = "workspace")]
    pub keep_workspace: bool,
    /// Print run events as JSON lines instead of the terminal view.
    #[arg(long)]
    pub json: bool,
    /// Show each step's CPU time and peak memory (its component's and its processes' trees).
    #[arg(long)]
    pub usage: bool,
    /// Where the steps' artifacts (`upload` with `target: artifact`) are kept: `DIR/RUN-ID/NAME`
    /// (default: `skiff-artifacts` under the temp dir). The run's folder is printed at the end.
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// Run the processes of steps granted `process` WITHOUT the bubblewrap sandbox: they see
    /// this machine as the user running `skiff` does (rlimits only). For trusted pipelines on
    /// your own machine that need its tools (a Rust toolchain under `~/.cargo`); said on every
    /// step.
    #[arg(long)]
    pub unsandboxed_processes: bool,
    #[command(flatten)]
    pub policy: super::registry::PolicyArgs,
    #[command(flatten)]
    pub registry: super::registry::RegistryArgs,
}

fn pair(s: &str, what: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s.split_once('=').with_context(|| format!("{what} `{s}` is not NAME=VALUE"))?;
    anyhow::ensure!(!k.trim().is_empty(), "{what} `{s}` has no name");
    Ok((k.trim().to_string(), v.to_string()))
}

/// Parses a dotenv file: `NAME=value`, optional `export `, `#` comments, single or double quotes.
pub fn parse_dotenv(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line.split_once('=').with_context(|| format!("line {}: expected NAME=VALUE", n + 1))?;
        let v = v.trim();
        let v = if let Some(inner) = v.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
            inner.replace("\\n", "\n").replace("\\\"", "\"").replace("\\\\", "\\")
        } else if let Some(inner) = v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
            inner.to_string()
        } else {
            // An unquoted value ends at ` #`.
            v.split(" #").next().unwrap_or("").trim_end().to_string()
        };
        out.insert(k.trim().to_string(), v);
    }
    Ok(out)
}

/// Runs `skiff run`.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let path = super::validate::find_pipeline(args.pipeline.clone())?;
    let mut plan = match load_file(&path) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("{d}");
            eprintln!("{}: {} problem(s); nothing was run", path.display(), d.0.len());
            return Ok(ExitCode::from(2));
        }
    };
    for j in args.job.iter().flat_map(|j| j.split(',')).map(str::trim) {
        if plan.instances(j).next().is_none() {
            let jobs: Vec<&str> = plan.jobs.iter().map(|j| j.job.as_str()).collect();
            anyhow::bail!("no job `{j}` in {}; the jobs are {}", path.display(), jobs.join(", "));
        }
    }

    // Shared components are fetched and checked, and images pulled, before anything runs.
    if plan.fetches() {
        let resolver = args.registry.resolver()?;
        let ready = resolver.prepare(&mut plan, &args.policy.policy()?).await?;
        for f in &ready.components {
            eprintln!("{}", super::registry::describe(f));
        }
        for f in &ready.images {
            eprintln!("{}", super::registry::describe_image(f));
        }
    }

    let mut secrets = BTreeMap::new();
    if let Some(f) = &args.secrets_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        secrets.extend(parse_dotenv(&text).with_context(|| format!("in {}", f.display()))?);
    }
    for s in &args.secrets {
        let (k, v) = pair(s, "--secret")?;
        secrets.insert(k, v);
    }
    let inputs = args.inputs.iter().map(|s| pair(s, "--input")).collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    let body = match &args.event {
        Some(f) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", f.display()))?
        }
        None => serde_json::json!({}),
    };
    let default_name = if args.event.is_some() { "push" } else { "manual" };
    // The same constructor as a webhook's, a manual or a scheduled run's: one `event` shape.
    let request = RunRequest::local(args.event_name.as_deref().unwrap_or(default_name), args.git_ref.as_deref(), body);
    let event = request.event_json();
    let body = request.body;

    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let run_id = format!("local-{millis}-{}", std::process::id());
    let artifacts_root = args.artifacts.clone().unwrap_or_else(|| std::env::temp_dir().join("skiff-artifacts"));
    let artifacts = Arc::new(LocalArtifacts::new(&artifacts_root));
    let executor: Arc<dyn StepExecutor> = crate::local_executor(artifacts.clone(), None, args.unsandboxed_processes)?;
    let workspace = match &args.workspace {
        Some(w) => w.clone(),
        None => std::env::temp_dir().join(format!("skiff-{run_id}")),
    };
    std::fs::create_dir_all(&workspace).with_context(|| format!("creating the workspace {}", workspace.display()))?;
    if args.workspace.is_none() {
        // Like a checkout: the steps see the project, and the project is not changed.
        let project = project_dir(&path);
        skiff_runtime::workspace::copy_tree(&project, &workspace, NOT_COPIED)
            .with_context(|| format!("copying {} into the workspace {}", project.display(), workspace.display()))?;
    }
    let this_run = run_id.clone();
    let opts = RunOptions {
        run_id,
        run_number: 1,
        run_attempt: 1,
        event,
        body,
        secrets,
        inputs,
        workspace: workspace.clone(),
        job: args.job.clone(),
        ca_bundle: args.ca_file.as_deref().map(skiff_server::config::read_ca_bundle).transpose()?,
        job_setup: None,
        read_only: false,
        reuse: Default::default(),
        // Locally there are no environments' secrets and no rules: jobs run as in an
        // environment nobody configured.
        environment_secrets: Default::default(),
        gate: None,
        dispatch: None,
    };

    let report = if args.json {
        let obs = Arc::new(JsonObserver);
        run_pipeline(&plan, opts, executor, obs).await
    } else {
        let multi = plan.jobs.len() > 1;
        let term = Arc::new(Terminal { usage: args.usage, ..Terminal::new(multi) });
        eprintln!("workspace: {}", workspace.display());
        let ticker = {
            let term = term.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    term.progress();
                }
            })
        };
        let report = run_pipeline(&plan, opts, executor, term.clone()).await;
        ticker.abort();
        print_summary(&report);
        report
    };
    match artifacts.list(&this_run) {
        Ok(stored) if !stored.is_empty() && !args.json => {
            eprintln!("artifacts: {} stored in {}", stored.len(), artifacts_root.join(&this_run).display())
        }
        Err(e) => eprintln!("the artifacts in {} could not be listed: {e}", artifacts_root.display()),
        _ => {}
    }
    if args.workspace.is_none() {
        if report.success() && !args.keep_workspace {
            if let Err(e) = std::fs::remove_dir_all(&workspace) {
                eprintln!("the workspace {} could not be removed: {e}", workspace.display());
            }
        } else if !args.json {
            eprintln!("workspace kept: {}", workspace.display());
        }
    }
    Ok(if report.success() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// JSON lines on stdout.
struct JsonObserver;

impl RunObserver for JsonObserver {
    fn event(&self, e: &RunEvent) {
        if let Ok(line) = serde_json::to_string(e) {
            crate::outln!("{line}");
        }
    }
}

/// The live terminal view.
pub struct Terminal {
    multi: bool,
    colours: bool,
    /// Step lines show CPU time and peak memory.
    pub usage: bool,
    running: Mutex<HashMap<(String, String), (String, Instant)>>,
}

fn secs(ms: u64) -> String {
    if ms < 1000 { format!("{ms}ms") } else { format!("{:.1}s", ms as f64 / 1000.0) }
}

fn mark(s: Status) -> &'static str {
    match s {
        Status::Success => "✓",
        Status::Failure => "✗",
        Status::Cancelled => "⊘",
        Status::Skipped => "↷",
    }
}

impl Terminal {
    /// A view; `multi` prefixes lines with the job, as jobs run in parallel.
    pub fn new(multi: bool) -> Self {
        Terminal { multi, colours: inert::colours_on_stdout(), usage: false, running: Mutex::new(HashMap::new()) }
    }

    fn prefix(&self, job: &str) -> String {
        if self.multi { format!("[{job}] ") } else { String::new() }
    }

    fn line(&self, s: &str) {
        crate::outln!("{s}");
    }

    /// Text from the run (names, reasons, errors, log lines) made inert for the terminal.
    fn t<'a>(&self, s: &'a str) -> std::borrow::Cow<'a, str> {
        inert::terminal_text(s, self.colours)
    }

    /// Prints "still running" for every step running longer than 10 s.
    pub fn progress(&self) {
        let running = self.running.lock().expect("not poisoned");
        for ((job, _), (name, since)) in running.iter() {
            let s = since.elapsed().as_secs();
            if s >= 10 {
                self.line(&format!("{}  … {name} still running ({s}s)", self.prefix(job)));
            }
        }
    }
}

impl RunObserver for Terminal {
    fn event(&self, e: &RunEvent) {
        match e {
            RunEvent::RunStarted { run_id, pipeline, jobs } => {
                self.line(&format!("▶ {} (run {run_id}, {} job(s))", self.t(pipeline), jobs.len()))
            }
            RunEvent::JobStarted { job_id, name } => {
                self.line(&format!("{}● job {}", self.prefix(job_id), self.t(name)))
            }
            RunEvent::JobSkipped { job_id, name, status, reason } => {
                let how = match status {
                    Status::Failure => "failed",
                    Status::Cancelled => "cancelled",
                    _ => "skipped",
                };
                self.line(&format!("{}↷ job {} {how}: {}", self.prefix(job_id), self.t(name), self.t(reason)))
            }
            RunEvent::JobEnvironment { job_id, environment, url } => match url {
                Some(u) => {
                    self.line(&format!("{}  environment {}: {}", self.prefix(job_id), self.t(environment), self.t(u)))
                }
                None => self.line(&format!("{}  environment {}", self.prefix(job_id), self.t(environment))),
            },
            RunEvent::StepStarted { job_id, step_id, name } => {
                self.running
                    .lock()
                    .expect("not poisoned")
                    .insert((job_id.clone(), step_id.clone()), (name.clone(), Instant::now()));
                self.line(&format!("{}  ▶ {}", self.prefix(job_id), self.t(name)));
            }
            RunEvent::Log(l) => {
                let tag = match l.level.as_str() {
                    "stdout" | "info" => String::new(),
                    other => format!("{}: ", self.t(other)),
                };
                for t in l.text.lines() {
                    self.line(&format!("{}  │ {tag}{}", self.prefix(&l.job_id), self.t(t)));
                }
            }
            RunEvent::StepFinished { job_id, step_id, name, status, duration_ms, error, usage, .. } => {
                self.running.lock().expect("not poisoned").remove(&(job_id.clone(), step_id.clone()));
                let mut s = format!("{}  {} {}", self.prefix(job_id), mark(*status), self.t(name));
                match usage {
                    _ if *status == Status::Skipped => s.push_str(" (skipped)"),
                    Some(u) if self.usage => s.push_str(&format!(
                        " ({}, cpu {}, peak memory {} MiB)",
                        secs(*duration_ms),
                        secs(u.cpu_ms),
                        u.peak_memory_bytes >> 20
                    )),
                    _ => s.push_str(&format!(" ({})", secs(*duration_ms))),
                }
                if let Some(e) = error {
                    for (i, l) in e.lines().enumerate() {
                        s.push_str(if i == 0 { ": " } else { " " });
                        s.push_str(&self.t(l));
                    }
                }
                self.line(&s);
            }
            RunEvent::JobFinished { job_id, name, status, duration_ms, .. } => self.line(&format!(
                "{}{} job {}: {} ({})",
                self.prefix(job_id),
                mark(*status),
                self.t(name),
                status.as_str(),
                secs(*duration_ms)
            )),
            RunEvent::RunFinished { status, duration_ms, .. } => {
                self.line(&format!("{} run {} in {}", mark(*status), status.as_str(), secs(*duration_ms)))
            }
        }
    }
}

/// The table at the end: one row per step.
pub fn print_summary(report: &RunReport) {
    let mut rows: Vec<[String; 4]> = vec![["JOB".into(), "STEP".into(), "STATUS".into(), "TIME".into()]];
    for j in &report.jobs {
        if j.steps.is_empty() {
            rows.push([j.key.clone(), "-".into(), j.status.as_str().into(), "-".into()]);
        }
        for s in &j.steps {
            let name = inert::terminal_text(&s.name, false).into_owned();
            rows.push([j.key.clone(), name, s.status.as_str().into(), secs(s.duration.as_millis() as u64)]);
        }
    }
    let widths: Vec<usize> =
        (0..4).map(|c| rows.iter().map(|r| r[c].chars().count().min(60)).max().unwrap_or(0)).collect();
    crate::outln!();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| {
                let c: String = c.chars().take(60).collect();
                format!("{c:<w$}")
            })
            .collect();
        crate::outln!("{}", cells.join("  ").trim_end());
    }
    let summaries: Vec<&str> =
        report.jobs.iter().flat_map(|j| j.steps.iter().filter_map(|s| s.summary.as_deref())).collect();
    let colours = inert::colours_on_stdout();
    for s in summaries {
        crate::outln!();
        for l in s.lines() {
            crate::outln!("{}", inert::terminal_text(l, colours));
        }
    }
}

/// The project a pipeline belongs to: the folder holding `.skiff/`, else the pipeline's own folder.
fn project_dir(pipeline: &std::path::Path) -> PathBuf {
    let abs = std::path::absolute(pipeline).unwrap_or_else(|_| pipeline.to_path_buf());
    let dir = abs.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == ".skiff") {
        return dir.parent().map(std::path::Path::to_path_buf).unwrap_or(dir);
    }
    dir
}

/// Build output and dependency folders are not copied: steps rebuild them.
const NOT_COPIED: &[&str] = &["target", "node_modules"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_values() {
        let m = parse_dotenv("# c\nA=1\nexport B=\"x\\ny\"\nC='a b' \nD=v # note\n").unwrap();
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "x\ny");
        assert_eq!(m["C"], "a b");
        assert_eq!(m["D"], "v");
        assert!(parse_dotenv("nope").is_err());
    }

    #[test]
    fn event_from_ref() {
        let e = RunRequest::local("push", Some("main"), serde_json::json!({"after": "abc"})).event_json();
        assert_eq!(e["ref"], "refs/heads/main");
        assert_eq!(e["branch"], "main");
        assert_eq!(e["sha"], "abc");
    }
}
