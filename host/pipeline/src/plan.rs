//! The plan: a validated pipeline, ready to run. Jobs in dependency order with
//! matrix combinations expanded, every step's `uses` resolved, every string
//! value's expressions compiled, and every step's grants computed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::executor::Grants;
use super::expr::{Expr, Template};
use super::source::Pos;

/// A string value of the pipeline with its expressions compiled and its position for errors.
#[derive(Debug, Clone)]
pub struct Value {
    /// As written.
    pub raw: String,
    /// Compiled.
    pub tpl: Template,
    /// Where it is.
    pub pos: Pos,
}

/// An `if:` condition.
#[derive(Debug, Clone)]
pub struct Cond {
    /// As written.
    pub raw: String,
    /// Compiled.
    pub expr: Expr,
    /// Where it is.
    pub pos: Pos,
}

/// `concurrency:`.
#[derive(Debug, Clone)]
pub struct Concurrency {
    /// The group (may hold expressions).
    pub group: Value,
    /// Cancel the run in progress.
    pub cancel_in_progress: bool,
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The pipeline file, as given (for messages).
    pub file: String,
    /// Its folder: relative `uses:` paths are resolved against it.
    pub dir: PathBuf,
    /// `name:`.
    pub name: Option<String>,
    /// `on:`, as written.
    pub on: Option<serde_json::Value>,
    /// `on:`, read: what starts the pipeline (checked by the host for each run).
    pub triggers: Option<skiff_edge_core::Triggers>,
    /// `concurrency:`.
    pub concurrency: Option<Concurrency>,
    /// Pipeline `env:`.
    pub env: BTreeMap<String, Value>,
    /// Job instances in dependency order (a job's needs come before it).
    pub jobs: Vec<PlanJob>,
    /// The compatibility mode (`compat:`, or Serverless-cd's by the file name).
    pub compat: Option<crate::compat::Compat>,
}

/// One job instance (one per matrix combination).
#[derive(Debug, Clone)]
pub struct PlanJob {
    /// Unique in the run: the job id, or `<job>-<n>` for a matrix combination. Also its workspace folder.
    pub key: String,
    /// The job id in the file.
    pub job: String,
    /// A display name.
    pub name: String,
    /// Job ids it waits for.
    pub needs: Vec<String>,
    /// This combination.
    pub matrix: BTreeMap<String, serde_json::Value>,
    /// `if:`.
    pub if_: Option<Cond>,
    /// `env:`.
    pub env: BTreeMap<String, Value>,
    /// `outputs:`.
    pub outputs: BTreeMap<String, Value>,
    /// `timeout-minutes:`.
    pub timeout: Option<Duration>,
    /// Cancel sibling combinations when one fails.
    pub fail_fast: bool,
    /// At most this many combinations of the job at once.
    pub max_parallel: Option<u32>,
    /// `environment:`: the host gives the job this environment's secrets and holds it to
    /// the environment's rules before its first step.
    pub environment: Option<Environment>,
    /// `runs-on:`: the labels a host needs to take the job ([`label`]ed, sorted, each once;
    /// empty: any host).
    pub runs_on: Vec<String>,
    /// The steps.
    pub steps: Vec<PlanStep>,
}

/// A `runs-on` label as hosts are matched on it: trimmed, lower case (labels are
/// case-insensitive, as on GitHub), GitHub's hosted Linux images (`ubuntu-latest`,
/// `ubuntu-24.04`) as `linux`. `Err` says what is wrong with it.
pub fn label(written: &str) -> Result<String, String> {
    let l = written.trim().to_ascii_lowercase();
    if l.is_empty() {
        return Err("a `runs-on` label is empty".into());
    }
    if !l.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("`runs-on` label \"{written}\" may hold only letters, digits, `-`, `_` and `.`"));
    }
    Ok(if l.starts_with("ubuntu-") { "linux".into() } else { l })
}

/// A job's deployment environment.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Its name (fixed: no expressions, so the pipeline alone says which secrets a job can get).
    pub name: String,
    /// `url:`, evaluated when the job ends (it may read `steps`).
    pub url: Option<Value>,
}

/// A container image processes run in (`container:` of a job, `image:` of a step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUse {
    /// As written.
    pub written: String,
    /// Parsed (Docker's short names made whole), with the lock's digest.
    pub reference: crate::component_ref::ComponentRef,
    /// The digest came from the lock file.
    pub locked: bool,
}

/// What a step runs, before expressions are evaluated.
#[derive(Debug, Clone)]
pub enum Uses {
    /// A built-in step.
    Builtin(String),
    /// A component file (resolved against the pipeline's folder).
    Path {
        /// As written.
        written: String,
        /// Resolved.
        path: PathBuf,
    },
    /// A shared component in a registry or at a URL; pinned when written with a digest or
    /// locked in `.skiff/lock.yaml` (a host fills in the rest before the run, or refuses).
    Component {
        /// As written.
        written: String,
        /// Parsed, with the lock's digest.
        reference: crate::component_ref::ComponentRef,
        /// The digest came from the lock file.
        locked: bool,
        /// The sha256 of the component's bytes, once a host fetched and checked it
        /// (`skiff_registry::Resolver::prepare`); the step runs exactly these bytes.
        content: Option<crate::component_ref::Digest>,
    },
    /// A `run:` script.
    Shell {
        /// The script with `${{ }}` replaced by environment variable references.
        script: String,
        /// The shell.
        shell: String,
        /// `SKIFF_EXPR_n` → expression, set in the step's environment.
        exprs: Vec<(String, Expr)>,
        /// Where the script is.
        pos: Pos,
    },
}

/// One step.
#[derive(Debug, Clone)]
pub struct PlanStep {
    /// `id:` or `step-N`.
    pub id: String,
    /// True when the pipeline gave the id.
    pub has_id: bool,
    /// A display name.
    pub name: String,
    /// What it runs.
    pub uses: Uses,
    /// Written as a Serverless-cd `plugin:`.
    pub plugin: Option<String>,
    /// `with:` (or `inputs:`).
    pub with: BTreeMap<String, Value>,
    /// `env:`.
    pub env: BTreeMap<String, Value>,
    /// `if:`.
    pub if_: Option<Cond>,
    /// `continue-on-error:`.
    pub continue_on_error: bool,
    /// `timeout-minutes:`.
    pub timeout: Option<Duration>,
    /// `working-directory:`.
    pub working_directory: Option<Value>,
    /// Grants: explicit permissions plus every secret the step's values reference.
    pub grants: Grants,
    /// `post:` cleanup script.
    pub post: Option<Value>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// The image the step's processes run in: its own `image:`, else the job's `container:`.
    pub image: Option<ImageUse>,
}

fn kv(out: &mut String, indent: &str, label: &str, m: &BTreeMap<String, Value>) {
    if m.is_empty() {
        return;
    }
    let _ = writeln!(out, "{indent}{label}:");
    for (k, v) in m {
        let _ = writeln!(out, "{indent}  {k} = {}", quote(&v.raw));
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn minutes(d: Duration) -> String {
    format!("{}m", d.as_secs_f64() / 60.0)
}

impl Plan {
    /// The labels a host needs to take the whole run: those of every job's `runs-on`, sorted,
    /// each once (a host leases runs, not jobs, so one host takes them all).
    pub fn labels(&self) -> Vec<String> {
        let set: std::collections::BTreeSet<&String> = self.jobs.iter().flat_map(|j| &j.runs_on).collect();
        set.into_iter().cloned().collect()
    }

    /// Whether a host must fetch anything before the run: shared components or container images.
    pub fn fetches(&self) -> bool {
        self.jobs.iter().flat_map(|j| &j.steps).any(|s| matches!(s.uses, Uses::Component { .. }) || s.image.is_some())
    }

    /// A stable text rendering, for golden tests and `skiff validate --plan`.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "pipeline {}", quote(self.name.as_deref().unwrap_or("")));
        if let Some(c) = self.compat {
            let _ = writeln!(o, "compat: {} ({})", c.name(), c.network_default());
        }
        if let Some(on) = &self.on {
            let _ = writeln!(o, "on: {on}");
        }
        if let Some(c) = &self.concurrency {
            let _ = writeln!(o, "concurrency: {} cancel-in-progress={}", quote(&c.group.raw), c.cancel_in_progress);
        }
        kv(&mut o, "", "env", &self.env);
        for j in &self.jobs {
            let _ = write!(o, "job {} ({})", j.key, quote(&j.name));
            if !j.needs.is_empty() {
                let _ = write!(o, " needs [{}]", j.needs.join(", "));
            }
            let _ = writeln!(o);
            if !j.matrix.is_empty() {
                let _ = writeln!(o, "  matrix: {}", serde_json::to_string(&j.matrix).unwrap_or_default());
                let mp = j.max_parallel.map(|m| m.to_string()).unwrap_or_else(|| "all".into());
                let _ = writeln!(o, "  fail-fast: {} max-parallel: {mp}", j.fail_fast);
            }
            if let Some(c) = &j.if_ {
                let _ = writeln!(o, "  if: {}", quote(&c.raw));
            }
            if let Some(t) = j.timeout {
                let _ = writeln!(o, "  timeout: {}", minutes(t));
            }
            if let Some(e) = &j.environment {
                let _ = write!(o, "  environment: {}", quote(&e.name));
                if let Some(u) = &e.url {
                    let _ = write!(o, " url {}", quote(&u.raw));
                }
                let _ = writeln!(o);
            }
            if !j.runs_on.is_empty() {
                let _ = writeln!(o, "  runs-on: [{}]", j.runs_on.join(", "));
            }
            kv(&mut o, "  ", "env", &j.env);
            kv(&mut o, "  ", "outputs", &j.outputs);
            for s in &j.steps {
                let _ = writeln!(o, "  step {} ({})", s.id, quote(&s.name));
                match &s.uses {
                    Uses::Builtin(b) => {
                        let _ = write!(o, "    uses: builtin {b}");
                    }
                    Uses::Path { written, .. } => {
                        let _ = write!(o, "    uses: component {written}");
                    }
                    Uses::Component { reference, locked, .. } => {
                        let how = match (reference.digest().is_some(), locked) {
                            (true, true) => " (pinned by .skiff/lock.yaml)",
                            (true, false) => "",
                            (false, _) => " (NOT pinned: run `skiff lock`)",
                        };
                        let _ = write!(o, "    uses: shared component {reference}{how}");
                    }
                    Uses::Shell { script, shell, exprs, .. } => {
                        if shell == crate::load::JS {
                            let _ = writeln!(o, "    uses: builtin script (JavaScript in the WebAssembly sandbox)");
                        } else {
                            let _ = writeln!(o, "    uses: shell {shell}");
                        }
                        let _ = write!(o, "    script: {}", quote(script));
                        for (k, e) in exprs {
                            let _ = write!(o, "\n    {k} = ${{{{ {} }}}}", e.source);
                        }
                    }
                }
                if let Some(p) = &s.plugin {
                    let _ = write!(o, " (plugin {p})");
                }
                let _ = writeln!(o);
                if let Some(c) = &s.if_ {
                    let _ = writeln!(o, "    if: {}", quote(&c.raw));
                }
                kv(&mut o, "    ", "with", &s.with);
                kv(&mut o, "    ", "env", &s.env);
                if let Some(w) = &s.working_directory {
                    let _ = writeln!(o, "    working-directory: {}", quote(&w.raw));
                }
                if s.continue_on_error {
                    let _ = writeln!(o, "    continue-on-error: true");
                }
                if let Some(t) = s.timeout {
                    let _ = writeln!(o, "    timeout: {}", minutes(t));
                }
                if let Some(m) = s.memory {
                    let _ = writeln!(o, "    memory: {m}");
                }
                if let Some(i) = &s.image {
                    let _ = writeln!(o, "    image: {}", quote(&i.reference.to_string()));
                }
                let p = &s.grants;
                let _ = writeln!(
                    o,
                    "    grants: secrets [{}] hosts [{}] process={} network={}",
                    p.secrets.join(", "),
                    p.hosts.join(", "),
                    p.process,
                    p.network
                );
                for why in &p.implied {
                    let _ = writeln!(o, "      implied: {why}");
                }
                if let Some(post) = &s.post {
                    let _ = writeln!(o, "    post: {}", quote(&post.raw));
                }
            }
        }
        o
    }

    /// The jobs with this job id (several for a matrix).
    pub fn instances<'a>(&'a self, job: &'a str) -> impl Iterator<Item = &'a PlanJob> + 'a {
        self.jobs.iter().filter(move |j| j.job == job)
    }
}
