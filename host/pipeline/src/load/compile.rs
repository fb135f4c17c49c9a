//! The model → plan pass: jobs in `needs` order, one per matrix combination, and their steps,
//! with every value's expressions compiled and checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::matrix::expand_matrix;
use super::references::{Refs, check_expr, cond, expr_error, job_needs, value, values};
use super::triggers::triggers;
use super::{Cx, did_you_mean};
use crate::compat::{BUILTINS, Compat, map_plugin};
use crate::executor::Grants;
use crate::expr;
use crate::model::{ConcurrencyDef, JobDef, PipelineDef, StepDef};
use crate::plan::{Concurrency, ImageUse, Plan, PlanJob, PlanStep, Uses};
use crate::script;
use crate::source::{Seg, YPath};
use crate::ypath;

pub(super) fn build(cx: &mut Cx, def: &PipelineDef, dir: &Path) -> Plan {
    cx.compat = Compat::of(&cx.file, def.compat);
    let mut pipeline_secrets = BTreeSet::new();
    let no_matrix = BTreeSet::new();
    let mut top = Refs { needs: &[], steps: None, matrix: &no_matrix, secrets: &mut pipeline_secrets };
    let env = values(cx, &ypath!["env"], &def.env, &mut top);
    let concurrency = def.concurrency.as_ref().map(|c| {
        let (group, cancel, path) = match c {
            ConcurrencyDef::Group(g) => (g.clone(), false, ypath!["concurrency"]),
            ConcurrencyDef::Full(f) => (f.group.clone(), f.cancel_in_progress, ypath!["concurrency", "group"]),
        };
        Concurrency { group: value(cx, &path, &group, &mut top), cancel_in_progress: cancel }
    });

    // `steps:` at the top is a single job called `main`.
    let mut jobs: Vec<(String, JobDef, YPath)> = Vec::new();
    match (&def.steps, def.jobs.is_empty()) {
        (Some(_), false) => {
            cx.at_key(&ypath!["steps"], "a pipeline has either `steps:` (one job) or `jobs:`, not both")
        }
        (None, true) => cx.at_value(&[], "the pipeline has no `steps:` and no `jobs:`"),
        _ => {}
    }
    if let Some(steps) = &def.steps {
        let container = def.container.clone();
        jobs.push(("main".into(), JobDef { steps: steps.clone(), container, ..Default::default() }, vec![]));
    } else if def.container.is_some() {
        cx.at_key(
            &ypath!["container"],
            "a top-level `container:` goes with top-level `steps:`; with `jobs:`, give each job its `container:`",
        );
    }
    for (id, j) in &def.jobs {
        let p = ypath!["jobs", id];
        if !is_id(id) {
            cx.at_key(
                &p,
                format!("job id \"{id}\" must start with a letter or `_` and hold only letters, digits, `-` and `_`"),
            );
        }
        jobs.push((id.clone(), j.clone(), p));
    }

    let (deps, order) = job_needs(cx, &jobs);

    let mut out_jobs = Vec::new();
    for id in &order {
        let Some((_, j, p)) = jobs.iter().find(|(x, ..)| x == id) else { continue };
        out_jobs.extend(build_job(cx, id, j, p, &deps[id], dir));
    }
    let triggers = def.on.as_ref().and_then(|on| triggers(cx, on));
    Plan {
        file: cx.file.clone(),
        dir: dir.to_path_buf(),
        name: def.name.clone(),
        on: def.on.clone(),
        triggers,
        concurrency,
        env,
        jobs: out_jobs,
        compat: cx.compat,
    }
}

fn build_job(cx: &mut Cx, id: &str, j: &JobDef, p: &YPath, needs: &[String], dir: &Path) -> Vec<PlanJob> {
    let combos = expand_matrix(cx, j, p);
    let matrix_keys: BTreeSet<String> = combos.iter().flat_map(|c| c.keys().cloned()).collect();
    let sub = |k: &str| {
        let mut q = p.clone();
        q.push(Seg::Key(k.into()));
        q
    };
    let mut unused = BTreeSet::new();
    let mut job_refs = Refs { needs, steps: None, matrix: &matrix_keys, secrets: &mut unused };
    let if_ = j.if_.as_ref().and_then(|c| cond(cx, &sub("if"), c.as_str(), &mut job_refs));
    let mut job_env_secrets = BTreeSet::new();
    let env = values(cx, &sub("env"), &j.env, &mut Refs { secrets: &mut job_env_secrets, ..job_refs });
    let timeout = minutes(cx, &sub("timeout-minutes"), j.timeout_minutes);
    if j.steps.is_empty() {
        cx.at_key(p, format!("job \"{id}\" has no steps"));
    }
    let mut steps = Vec::new();
    let mut seen_ids: Vec<String> = Vec::new();
    let steps_path = if p.is_empty() { ypath!["steps"] } else { sub("steps") };
    for (i, s) in j.steps.iter().enumerate() {
        let mut sp = steps_path.clone();
        sp.push(Seg::Index(i));
        let step = build_step(cx, s, i, &sp, &seen_ids, needs, &matrix_keys, &job_env_secrets, dir);
        if step.has_id {
            if seen_ids.contains(&step.id) {
                let mut ip = sp.clone();
                ip.push(Seg::Key("id".into()));
                cx.at_value(&ip, format!("step id \"{}\" is used twice in job \"{id}\"", step.id));
            }
            seen_ids.push(step.id.clone());
        }
        steps.push(step);
    }
    let mut unused2 = BTreeSet::new();
    let outputs = values(
        cx,
        &sub("outputs"),
        &j.outputs,
        &mut Refs { needs, steps: Some(&seen_ids), matrix: &matrix_keys, secrets: &mut unused2 },
    );
    if !unused2.is_empty() {
        cx.at_value(&sub("outputs"), "job outputs cannot read secrets: they are passed to other jobs in the clear");
    }
    // `container:` may name the image through `matrix` (one image per combination); nothing
    // else is known before the run, and the image is pulled before it.
    let container = j.container.as_ref().and_then(|c| {
        let mut cp = sub("container");
        if matches!(c, crate::model::ContainerDef::Spec(_)) {
            cp.push(Seg::Key("image".into()));
        }
        let mut no_secrets = BTreeSet::new();
        let v = value(
            cx,
            &cp,
            c.image(),
            &mut Refs { needs: &[], steps: None, matrix: &matrix_keys, secrets: &mut no_secrets },
        );
        // Only `matrix` is known when the image is pulled, before the run.
        let outside = v.tpl.exprs().find_map(|e| e.refs.iter().find(|r| r[0] != "matrix").map(|r| (e, r[0].clone())));
        if let Some((e, root)) = outside {
            let p = cx.map.inside(&cp, c.image(), e.offset);
            cx.err(
                p,
                format!(
                    "`container:` can use only `matrix` (the image is pulled before the run), not `{root}` in `{}`",
                    e.source
                ),
            );
            return None;
        }
        Some((cp, v))
    });
    let environment =
        j.environment.as_ref().and_then(|e| environment(cx, &sub("environment"), e, needs, &seen_ids, &matrix_keys));
    let runs_on = j.runs_on.as_ref().map(|r| runs_on(cx, &sub("runs-on"), r, &matrix_keys)).unwrap_or_default();
    let strategy = j.strategy.clone().unwrap_or_default();
    let many = j.strategy.is_some();
    let mut jobs = Vec::with_capacity(combos.len());
    let mut images: BTreeMap<String, Option<ImageUse>> = BTreeMap::new();
    for (n, matrix) in combos.into_iter().enumerate() {
        let key = if many { format!("{id}-{}", n + 1) } else { id.to_string() };
        let base = j.name.clone().unwrap_or_else(|| id.to_string());
        let name = if many {
            format!("{base} ({})", matrix.values().map(json_text).collect::<Vec<_>>().join(", "))
        } else {
            base
        };
        let mut steps = steps.clone();
        if let Some((cp, v)) = &container {
            let mut scope = expr::Scope::default();
            scope.set_json("matrix", &serde_json::to_value(&matrix).unwrap_or_default());
            let image = match v.tpl.render(&scope) {
                // Each image once, however many combinations use it (and each error once).
                Ok(text) => match images.get(&text) {
                    Some(known) => known.clone(),
                    None => {
                        let image = image_use(cx, cp, &text, dir);
                        images.insert(text, image.clone());
                        image
                    }
                },
                Err(e) => {
                    cx.at_value(cp, format!("`container:` can use only `matrix` values: {e}"));
                    None
                }
            };
            for step in steps.iter_mut().filter(|s| s.image.is_none() && runs_the_users_code(&s.uses)) {
                step.image = image.clone();
            }
        }
        let mut labels: Vec<String> = Vec::new();
        for (lp, v) in &runs_on {
            let mut scope = expr::Scope::default();
            scope.set_json("matrix", &serde_json::to_value(&matrix).unwrap_or_default());
            match v.tpl.render(&scope).map_err(|e| e.to_string()).and_then(|t| crate::plan::label(&t)) {
                Ok(l) => labels.push(l),
                Err(e) => cx.at_value(lp, e),
            }
        }
        labels.sort();
        labels.dedup();
        jobs.push(PlanJob {
            runs_on: labels,
            key,
            job: id.to_string(),
            name,
            needs: needs.to_vec(),
            matrix,
            if_: if_.clone(),
            env: env.clone(),
            outputs: outputs.clone(),
            timeout,
            fail_fast: strategy.fail_fast.unwrap_or(true),
            max_parallel: strategy.max_parallel,
            environment: environment.clone(),
            steps,
        });
    }
    jobs
}

/// `runs-on:`: each label, which may use `matrix` and nothing else (a host is chosen before
/// the run), compiled; rendered per combination by the caller.
fn runs_on(
    cx: &mut Cx,
    p: &YPath,
    r: &crate::model::RunsOnDef,
    matrix: &BTreeSet<String>,
) -> Vec<(YPath, crate::plan::Value)> {
    let written = r.labels();
    if written.is_empty() {
        cx.at_value(p, "`runs-on` names no label: leave it out to let any host take the job");
    }
    let mut out = Vec::new();
    for (i, l) in written.iter().enumerate() {
        let mut lp = p.clone();
        if matches!(r, crate::model::RunsOnDef::Spec { .. }) {
            lp.push(Seg::Key("labels".into()));
        }
        if !matches!(r, crate::model::RunsOnDef::One(_))
            && !matches!(r, crate::model::RunsOnDef::Spec { labels: crate::model::OneOrMany::One(_) })
        {
            lp.push(Seg::Index(i));
        }
        let mut no_secrets = BTreeSet::new();
        let v = value(cx, &lp, l, &mut Refs { needs: &[], steps: None, matrix, secrets: &mut no_secrets });
        let outside = v.tpl.exprs().find_map(|e| e.refs.iter().find(|r| r[0] != "matrix").map(|r| (e, r[0].clone())));
        if let Some((e, root)) = outside {
            let at = cx.map.inside(&lp, l, e.offset);
            cx.err(
                at,
                format!(
                    "`runs-on` can use only `matrix` (a host is chosen before the run), not `{root}` in `{}`",
                    e.source
                ),
            );
            continue;
        }
        out.push((lp, v));
    }
    out
}

/// `environment:`: a fixed name (the host's config decides what it grants, so the event must
/// not choose it) and a `url` that may read the job's steps, but no secret (it is shown).
fn environment(
    cx: &mut Cx,
    p: &YPath,
    e: &crate::model::EnvironmentDef,
    needs: &[String],
    steps: &[String],
    matrix: &BTreeSet<String>,
) -> Option<crate::plan::Environment> {
    let name = e.name();
    let mut np = p.clone();
    if matches!(e, crate::model::EnvironmentDef::Spec(_)) {
        np.push(Seg::Key("name".into()));
    }
    if name.contains("${{") {
        cx.at_value(
            &np,
            format!(
                "the environment's name must be written out (`production`), not computed (`{name}`): it decides \
                 which secrets and rules the job gets, so the event must not choose it"
            ),
        );
        return None;
    }
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        cx.at_value(&np, format!("environment name \"{name}\" may hold only letters, digits, `-`, `_` and `.`"));
        return None;
    }
    let url = e.url().map(|u| {
        let mut up = p.clone();
        up.push(Seg::Key("url".into()));
        let mut secrets = BTreeSet::new();
        let v = value(cx, &up, u.as_str(), &mut Refs { needs, steps: Some(steps), matrix, secrets: &mut secrets });
        if !secrets.is_empty() {
            cx.at_value(&up, "`environment.url` cannot read secrets: it is shown with the run");
        }
        v
    });
    Some(crate::plan::Environment { name: name.to_string(), url })
}

#[allow(clippy::too_many_arguments)]
fn build_step(
    cx: &mut Cx,
    s: &StepDef,
    i: usize,
    sp: &YPath,
    earlier: &[String],
    needs: &[String],
    matrix: &BTreeSet<String>,
    inherited_secrets: &BTreeSet<String>,
    dir: &Path,
) -> PlanStep {
    let sub = |k: &str| {
        let mut q = sp.clone();
        q.push(Seg::Key(k.into()));
        q
    };
    let mut secrets = inherited_secrets.clone();
    let mut refs = Refs { needs, steps: Some(earlier), matrix, secrets: &mut secrets };

    let (has_id, id) = match &s.id {
        Some(id) => {
            if !is_id(id) {
                cx.at_value(
                    &sub("id"),
                    format!(
                        "step id \"{id}\" must start with a letter or `_` and hold only letters, digits, `-` and `_`"
                    ),
                );
            }
            (true, id.clone())
        }
        None => (false, format!("step-{}", i + 1)),
    };

    let mut plugin_hosts: Vec<String> = Vec::new();
    // Serverless-cd documented `run: "@serverless-cd/dingding"` as a way to call a plugin: in
    // its compatibility mode that is `plugin:`; elsewhere it would run as a shell command.
    let run_plugin = s
        .run
        .as_deref()
        .map(str::trim)
        .filter(|r| r.starts_with("@serverless-cd/") && !r.contains(char::is_whitespace));
    if let Some(name) = run_plugin
        && cx.compat != Some(Compat::ServerlessCd)
    {
        cx.at_value(
            &sub("run"),
            format!("`{name}` is a Serverless-cd plugin, not a command: write `plugin: '{name}'`"),
        );
    }
    let kinds: Vec<&str> = [
        ("run", s.run.is_some()),
        ("script", s.script.is_some()),
        ("uses", s.uses.is_some()),
        ("plugin", s.plugin.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, b)| b.then_some(k))
    .collect();
    if kinds.len() > 1 {
        cx.at_key(
            &sub(kinds[1]),
            format!(
                "a step has one of `run`, `script`, `uses` or `plugin`, not both `{}` and `{}`",
                kinds[0], kinds[1]
            ),
        );
    }
    if s.with.is_some() && s.inputs.is_some() {
        cx.at_key(&sub("inputs"), "`inputs` is the Serverless-cd spelling of `with`; use one of them");
    }
    if s.shell.is_some() && s.run.is_none() {
        cx.at_key(&sub("shell"), "`shell` only applies to a `run:` step");
    }

    let mut with_defs: BTreeMap<String, String> =
        s.with.iter().chain(s.inputs.iter()).flatten().map(|(k, v)| (k.clone(), json_text(v))).collect();
    let with_key = if s.inputs.is_some() && s.with.is_none() { "inputs" } else { "with" };
    let mut uses = Uses::Builtin("shell".into());
    let mut default_name = String::new();
    let plugin = s.plugin.as_deref().or(run_plugin.filter(|_| cx.compat == Some(Compat::ServerlessCd)));
    if let Some(script) = &s.script {
        default_name = format!("Script {}", script.lines().next().unwrap_or("").trim());
        uses = script_uses(cx, &sub("script"), script, JS.into(), &mut refs);
    } else if let (Some(run), None) = (&s.run, run_plugin) {
        let shell = s.shell.clone().unwrap_or_else(|| "bash".into());
        if shell.contains("${{") {
            cx.at_value(&sub("shell"), "`shell` is the program that runs the script and cannot hold `${{ }}`");
        }
        default_name = format!("Run {}", run.lines().next().unwrap_or("").trim());
        uses = script_uses(cx, &sub("run"), run, shell, &mut refs);
    } else if let Some(plugin) = plugin {
        match map_plugin(plugin) {
            Ok(m) => {
                plugin_hosts.extend(m.hosts.iter().map(|h| h.to_string()));
                for (k, v) in m.inputs {
                    with_defs.entry(k.to_string()).or_insert_with(|| v.to_string());
                }
                uses = Uses::Builtin(m.builtin.to_string());
            }
            Err(msg) => cx.at_value(&sub(if s.plugin.is_some() { "plugin" } else { "run" }), msg),
        }
        default_name = plugin.to_string();
    } else if let Some(u) = &s.uses {
        default_name = u.clone();
        match resolve_uses(cx, u, dir) {
            Ok(x) => uses = x,
            Err(msg) => cx.at_value(&sub("uses"), msg),
        }
    } else if kinds.is_empty() {
        cx.at_value(sp, "a step needs `run:`, `script:`, `uses:` or `plugin:`");
    }

    if matches!(&uses, Uses::Builtin(b) if b == "shell") {
        // `uses: shell` runs its `script` input as code: it gets `run:`'s treatment, so an
        // expression reaches it as a variable and never as source.
        if let Some(script) = with_defs.remove("script") {
            let shell = with_defs.remove("shell").unwrap_or_else(|| "bash".into());
            if shell.contains("${{") {
                cx.at_value(
                    &ypath_push(&sub(with_key), "shell"),
                    "`shell` is the program that runs the script and cannot hold `${{ }}`",
                );
            }
            uses = script_uses(cx, &ypath_push(&sub(with_key), "script"), &script, shell, &mut refs);
        }
    }
    let with =
        with_defs.iter().map(|(k, v)| (k.clone(), value(cx, &ypath_push(&sub(with_key), k), v, &mut refs))).collect();
    let env = values(cx, &sub("env"), &s.env, &mut refs);
    let if_ = s.if_.as_ref().and_then(|c| cond(cx, &sub("if"), c.as_str(), &mut refs));
    let working_directory = s.working_directory.as_ref().map(|w| value(cx, &sub("working-directory"), w, &mut refs));
    let post = s.post.as_ref().map(|w| {
        let mut none = BTreeSet::new();
        let v = value(cx, &sub("post"), w, &mut Refs { needs, steps: Some(earlier), matrix, secrets: &mut none });
        if !v.tpl.is_literal() {
            cx.at_value(&sub("post"), "a `post:` script cannot hold `${{ }}` expressions; use the step's `env:`");
        }
        v
    });
    let mut perms = s.permissions.clone().unwrap_or_default();
    perms.hosts.extend(plugin_hosts);
    let mut implied = Vec::new();
    // A script step (`run:`, or `uses: shell`) is the user asking for a process: its script runs
    // in the OS sandbox.
    // A JavaScript step (`script:`) runs in the WebAssembly sandbox: its `$` needs `process`
    // granted like any component's.
    if matches!(&uses, Uses::Shell { shell, .. } if shell != JS) && !perms.process {
        perms.process = true;
        implied.push("process: a `run:` step's script runs as a process (in the OS sandbox)".to_string());
    }
    // Serverless-cd ran every script with the network (`npm install`, `s deploy`) and has
    // no `permissions`; its compatibility mode keeps that for `run:` steps that do not say
    // otherwise.
    let shell_step = matches!(&uses, Uses::Shell { shell, .. } if shell != JS);
    if s.run.is_some() && shell_step && s.permissions.is_none() && cx.compat == Some(Compat::ServerlessCd) {
        perms.network = true;
        implied.push(format!(
            "network: {} (give the step `permissions:` to narrow it)",
            Compat::ServerlessCd.network_default()
        ));
    }
    secrets.extend(perms.secrets.iter().cloned());
    PlanStep {
        id,
        has_id,
        name: s.name.clone().unwrap_or(default_name),
        uses,
        plugin: s.plugin.clone(),
        with,
        env,
        if_,
        continue_on_error: s.continue_on_error.unwrap_or(false),
        timeout: minutes(cx, &sub("timeout-minutes"), s.timeout_minutes),
        working_directory,
        grants: Grants {
            hosts: perms.hosts,
            secrets: secrets.into_iter().collect(),
            process: perms.process,
            network: perms.network,
            read_only: false,
            implied,
        },
        post,
        memory: s.memory_mb.map(|m| m * 1024 * 1024),
        image: s.image.as_deref().and_then(|i| image_use(cx, &sub("image"), i, dir)),
    }
}

/// Whether a job's `container:` applies to the step: scripts and components run the user's code
/// in it; the other built-in steps (`checkout`, `upload`, …) run their own tools (git) on the
/// host as they do without a container, so a slim image without git still checks out. A step's
/// own `image:` applies whatever it is.
fn runs_the_users_code(uses: &Uses) -> bool {
    match uses {
        Uses::Shell { .. } | Uses::Path { .. } | Uses::Component { .. } => true,
        Uses::Builtin(name) => name == "shell" || name == "script",
    }
}

/// `container:` or `image:`: parsed as Docker names images, pinned by the lock beside the pipeline.
fn image_use(cx: &mut Cx, path: &[Seg], written: &str, dir: &Path) -> Option<ImageUse> {
    let parsed = crate::component_ref::ComponentRef::parse_image(written).map_err(|e| e.to_string());
    let pinned = parsed.and_then(|reference| {
        let lock = cx.lock.get_or_insert_with(|| crate::lock::Lock::read(&crate::lock::path_for(dir)));
        Ok(lock.as_ref().map_err(Clone::clone)?.pin_image(&reference))
    });
    match pinned {
        Ok(reference) => {
            let locked = reference.digest().is_some() && !written.contains('@');
            Some(ImageUse { written: written.trim().to_string(), reference, locked })
        }
        Err(e) => {
            cx.at_value(path, format!("image `{written}`: {e}"));
            None
        }
    }
}

fn ypath_push(p: &YPath, k: &str) -> YPath {
    let mut q = p.clone();
    q.push(Seg::Key(k.into()));
    q
}

/// A script that runs as code: each `${{ }}` becomes a variable `SKIFF_EXPR_n`, referenced
/// in the script's language where the expression stood (see [`crate::script`]).
/// The `shell` of a `script:` step (or `run:` with `shell: js`): the built-in `script` step's
/// JavaScript engine.
pub const JS: &str = "js";

fn script_uses(cx: &mut Cx, path: &[Seg], text: &str, shell: String, refs: &mut Refs) -> Uses {
    // JavaScript reports its errors by line and column of the script: where its first
    // character is in the file (the line after `|` for a block).
    let pos = if shell == JS { cx.map.inside(path, text, 0) } else { cx.map.value(path) };
    let tpl = match expr::parse_template(text) {
        Ok(tpl) => tpl,
        Err(e) => {
            expr_error(cx, path, text, e);
            return Uses::Shell { script: text.to_string(), shell, exprs: Vec::new(), pos };
        }
    };
    let mut exprs = Vec::new();
    let mut vars = Vec::new();
    for e in tpl.exprs() {
        let p = cx.map.inside(path, text, e.offset);
        check_expr(cx, e, p, refs);
        vars.push(format!("SKIFF_EXPR_{}", vars.len() + 1));
        exprs.push(e.clone());
    }
    let mut n = 0;
    let pieces: Vec<script::Piece> = tpl
        .segments
        .iter()
        .map(|seg| match seg {
            expr::Segment::Lit(t) => script::Piece::Text(t),
            expr::Segment::Expr(_) => {
                n += 1;
                script::Piece::Var(&vars[n - 1])
            }
        })
        .collect();
    let script = if exprs.is_empty() {
        text.to_string()
    } else {
        let rendered = match script::Lang::of_shell(&shell) {
            Some(lang) => script::render(lang, &pieces).map_err(|m| {
                let at = pieces[..m.piece].iter().filter(|p| matches!(p, script::Piece::Var(_))).count();
                (at, m.message)
            }),
            None => Err((
                0,
                format!(
                    "`${{{{ }}}}` in a script for `{shell}` would be pasted into its code; Skiff knows how to \
                     pass values to bash, sh, python, node and pwsh scripts. Set the value in the step's \
                     `env:` and read it from the environment"
                ),
            )),
        };
        match rendered {
            Ok(s) => s,
            Err((at, message)) => {
                let p = cx.map.inside(path, text, exprs[at].offset);
                cx.err(p, message);
                text.to_string()
            }
        }
    };
    Uses::Shell { script, shell, exprs: vars.into_iter().zip(exprs).collect(), pos }
}

fn resolve_uses(cx: &mut Cx, u: &str, dir: &Path) -> Result<Uses, String> {
    let u = u.trim();
    if crate::component_ref::looks_like_reference(u) {
        let reference = crate::component_ref::ComponentRef::parse(u).map_err(|e| e.to_string())?;
        let lock = cx.lock.get_or_insert_with(|| crate::lock::Lock::read(&crate::lock::path_for(dir)));
        let lock = lock.as_ref().map_err(Clone::clone)?;
        let pinned = lock.pin(&reference);
        let locked = pinned != reference;
        return Ok(Uses::Component { written: u.to_string(), reference: pinned, locked, content: None });
    }
    let name = u.strip_prefix("builtin://");
    if let Some(n) = name.or(Some(u)).filter(|n| BUILTINS.contains(n)) {
        return Ok(Uses::Builtin(n.to_string()));
    }
    if name.is_none() && (u.ends_with(".wasm") || u.contains('/') || u.starts_with('.')) {
        let path: PathBuf = dir.join(u);
        if !u.ends_with(".wasm") {
            return Err(format!("`uses: {u}` is not a built-in step; a component path must end in `.wasm`"));
        }
        if !path.is_file() {
            return Err(format!("component `{u}` not found (paths are relative to the pipeline file)"));
        }
        return Ok(Uses::Path { written: u.to_string(), path });
    }
    let n = name.unwrap_or(u);
    let hint =
        did_you_mean(n, BUILTINS.iter().copied()).map(|s| format!(", did you mean \"{s}\"?")).unwrap_or_else(|| {
            format!("; the built-in steps are {}, or give a path to a `.wasm` component", BUILTINS.join(", "))
        });
    Err(format!("unknown built-in step \"{n}\"{hint}"))
}

fn is_id(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
}

fn minutes(cx: &mut Cx, path: &[Seg], m: Option<f64>) -> Option<Duration> {
    let m = m?;
    if !(m > 0.0 && m.is_finite()) {
        cx.at_value(path, "timeout-minutes must be a positive number");
        return None;
    }
    let d = Duration::try_from_secs_f64(m * 60.0);
    if d.is_err() {
        cx.at_value(path, "timeout-minutes is too large");
    }
    d.ok()
}

fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::load_str;
    use super::*;

    /// Found by fuzzing the loader (fuzz/seeds/pipeline/timeout-huge.yaml): a timeout too large
    /// for a `Duration` panicked.
    #[test]
    fn a_timeout_too_large_for_a_duration_is_explained() {
        let text = "steps:\n  - run: echo hi\n    timeout-minutes: 1e300\n";
        let err = load_str(text, "pipeline.yaml", Path::new(".")).unwrap_err().to_string();
        assert_eq!(err, "pipeline.yaml:3:22: timeout-minutes is too large");
    }
}
