//! Loading: YAML text → [`PipelineDef`] → [`Plan`], collecting every problem
//! (unknown keys, wrong types, bad expressions, unknown `needs`, cycles,
//! unknown plugins, …) with its file, line and column.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_norway::Value as Y;

use super::compat::{BUILTINS, map_plugin};
use super::executor::Permissions;
use super::expr::{self, CONTEXTS, Expr, ExprError};
use super::model::{JobDef, PipelineDef, StepDef, Text};
use super::plan::{Concurrency, Cond, Plan, PlanJob, PlanStep, Uses, Value};
use super::script;
use super::source::{Pos, Seg, SourceMap, YPath};
use crate::ypath;

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as given.
    pub file: String,
    /// Where.
    pub pos: Pos,
    /// What is wrong, and the fix when there is one.
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.pos.line, self.pos.column, self.message)
    }
}

/// Every problem found in a pipeline file, in order of position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl std::fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Reads and plans a pipeline file.
pub fn load_file(path: &Path) -> Result<Plan, Diagnostics> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic { file: file.clone(), pos: Pos { line: 1, column: 1 }, message: e.to_string() }])
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    load_str(&text, &file, &dir)
}

/// Plans a pipeline from its text. `file` names it in messages; `dir` is where relative `uses:` paths start.
pub fn load_str(text: &str, file: &str, dir: &Path) -> Result<Plan, Diagnostics> {
    let mut cx = Cx { file: file.to_string(), map: SourceMap::new(text), diags: Vec::new() };
    let mut value: Y = match serde_norway::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let pos = e.location().map(|l| Pos { line: l.line(), column: l.column() }).unwrap_or_default();
            // The location is already in our prefix; keep only the message.
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            cx.err(pos, format!("invalid YAML: {msg}"));
            return Err(cx.finish());
        }
    };
    if value.is_null() {
        cx.err(Pos { line: 1, column: 1 }, "the pipeline is empty: add `steps:` or `jobs:`");
        return Err(cx.finish());
    }
    check_keys(&mut cx, &mut value);
    let def = typed(&mut cx, value);
    let plan = def.map(|def| build(&mut cx, &def, dir));
    match plan {
        Some(plan) if cx.diags.is_empty() => Ok(plan),
        _ => Err(cx.finish()),
    }
}

struct Cx {
    file: String,
    map: SourceMap,
    diags: Vec<Diagnostic>,
}

impl Cx {
    fn err(&mut self, pos: Pos, message: impl Into<String>) {
        let d = Diagnostic { file: self.file.clone(), pos, message: message.into() };
        if !self.diags.contains(&d) {
            self.diags.push(d);
        }
    }
    fn at_key(&mut self, path: &[Seg], message: impl Into<String>) {
        let pos = self.map.key(path);
        self.err(pos, message);
    }
    fn at_value(&mut self, path: &[Seg], message: impl Into<String>) {
        let pos = self.map.value(path);
        self.err(pos, message);
    }
    fn finish(mut self) -> Diagnostics {
        self.diags.sort_by_key(|d| d.pos);
        Diagnostics(self.diags)
    }
}

// ---------------------------------------------------------------- keys

/// The keys a type accepts, from its JSON Schema (so the types stay the only list).
fn keys_of(def: &str) -> &'static [String] {
    static KEYS: OnceLock<BTreeMap<String, Vec<String>>> = OnceLock::new();
    let all = KEYS.get_or_init(|| {
        let schema = super::schema::schema();
        let mut m = BTreeMap::new();
        let props = |v: &serde_json::Value| -> Vec<String> {
            v.get("properties").and_then(|p| p.as_object()).map(|o| o.keys().cloned().collect()).unwrap_or_default()
        };
        m.insert("PipelineDef".to_string(), props(&schema));
        if let Some(defs) = schema.get("$defs").and_then(|d| d.as_object()) {
            for (k, v) in defs {
                m.insert(k.clone(), props(v));
            }
        }
        m
    });
    all.get(def).map(Vec::as_slice).unwrap_or(&[])
}

/// The closest name within a small edit distance.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn check_map(cx: &mut Cx, v: &mut Y, path: &YPath, def: &str, what: &str) {
    let Y::Mapping(m) = v else { return };
    let keys = keys_of(def);
    let mut remove = Vec::new();
    for (k, val) in m.iter() {
        let Some(name) = k.as_str() else {
            cx.at_value(path, format!("{what} keys must be strings"));
            remove.push(k.clone());
            continue;
        };
        let mut p = path.clone();
        p.push(Seg::Key(name.to_string()));
        if val.is_null() {
            remove.push(k.clone());
            continue;
        }
        if !keys.iter().any(|x| x == name) {
            let msg = match did_you_mean(name, keys.iter().map(String::as_str)) {
                Some(s) => format!("unknown key \"{name}\", did you mean \"{s}\"?"),
                None => format!("unknown key \"{name}\" in {what}; expected one of: {}", keys.join(", ")),
            };
            cx.at_key(&p, msg);
            remove.push(k.clone());
        }
    }
    for k in remove {
        m.remove(&k);
    }
}

fn child<'a>(v: &'a mut Y, key: &str) -> Option<&'a mut Y> {
    match v {
        Y::Mapping(m) => m.get_mut(key),
        _ => None,
    }
}

fn check_steps(cx: &mut Cx, v: &mut Y, path: &YPath) {
    if let Y::Sequence(steps) = v {
        for (i, s) in steps.iter_mut().enumerate() {
            let mut p = path.clone();
            p.push(Seg::Index(i));
            check_map(cx, s, &p, "StepDef", "a step");
            if let Some(perm) = child(s, "permissions") {
                let mut pp = p.clone();
                pp.push(Seg::Key("permissions".into()));
                check_map(cx, perm, &pp, "PermissionsDef", "permissions");
            }
        }
    }
}

fn check_keys(cx: &mut Cx, root: &mut Y) {
    if !root.is_mapping() {
        cx.at_value(&[], "a pipeline is a mapping with `steps:` or `jobs:`");
        return;
    }
    check_map(cx, root, &vec![], "PipelineDef", "the pipeline");
    if let Some(c @ Y::Mapping(_)) = child(root, "concurrency") {
        check_map(cx, c, &ypath!["concurrency"], "ConcurrencyFull", "concurrency");
    }
    if let Some(steps) = child(root, "steps") {
        check_steps(cx, steps, &ypath!["steps"]);
    }
    if let Some(Y::Mapping(jobs)) = child(root, "jobs") {
        for (k, job) in jobs.iter_mut() {
            let Some(id) = k.as_str() else { continue };
            let p = ypath!["jobs", id];
            check_map(cx, job, &p, "JobDef", "a job");
            if let Some(strategy) = child(job, "strategy") {
                let mut sp = p.clone();
                sp.push(Seg::Key("strategy".into()));
                check_map(cx, strategy, &sp, "StrategyDef", "strategy");
            }
            if let Some(steps) = child(job, "steps") {
                let mut sp = p.clone();
                sp.push(Seg::Key("steps".into()));
                check_steps(cx, steps, &sp);
            }
        }
    }
}

// ---------------------------------------------------------------- types

/// Deserializes, reporting each wrong type at its position and retrying without it.
fn typed(cx: &mut Cx, mut value: Y) -> Option<PipelineDef> {
    for _ in 0..50 {
        match serde_path_to_error::deserialize::<_, PipelineDef>(value.clone()) {
            Ok(def) => return Some(def),
            Err(e) => {
                let path: YPath = e
                    .path()
                    .iter()
                    .filter_map(|s| match s {
                        serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                        serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                        _ => None,
                    })
                    .collect();
                let msg = e.inner().to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                let shown = path
                    .iter()
                    .map(|s| match s {
                        Seg::Key(k) => k.clone(),
                        Seg::Index(i) => format!("[{i}]"),
                    })
                    .collect::<Vec<_>>()
                    .join(".")
                    .replace(".[", "[");
                cx.at_value(&path, if shown.is_empty() { msg } else { format!("`{shown}`: {msg}") });
                if path.is_empty() || !remove_at(&mut value, &path) {
                    return None;
                }
            }
        }
    }
    None
}

fn remove_at(v: &mut Y, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let mut cur = v;
    for s in parents {
        cur = match (s, cur) {
            (Seg::Key(k), Y::Mapping(m)) => match m.get_mut(k.as_str()) {
                Some(c) => c,
                None => return false,
            },
            (Seg::Index(i), Y::Sequence(q)) => match q.get_mut(*i) {
                Some(c) => c,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Seg::Key(k), Y::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (Seg::Index(i), Y::Sequence(q)) if *i < q.len() => {
            // Keep indexes stable for the positions of later items.
            q[*i] = Y::Mapping(Default::default());
            true
        }
        _ => false,
    }
}

// ---------------------------------------------------------------- plan

/// What an expression may refer to where it is written.
struct Refs<'a> {
    needs: &'a [String],
    /// Ids of the steps before this one; `None` where `steps` is not available.
    steps: Option<&'a [String]>,
    matrix: &'a BTreeSet<String>,
    secrets: &'a mut BTreeSet<String>,
}

const CEL_TYPES: &[&str] = &["int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"];

fn check_expr(cx: &mut Cx, e: &Expr, pos: Pos, refs: &mut Refs) {
    let err = |cx: &mut Cx, m: String| cx.err(pos, format!("{m} in `{}`", e.source));
    for r in &e.refs {
        let root = r[0].as_str();
        let second = r.get(1).map(String::as_str);
        match root {
            "secrets" => match second {
                Some("*") => err(cx, "secrets must be named (`secrets.NAME`) so that only they are granted".into()),
                Some(name) => {
                    refs.secrets.insert(name.to_string());
                }
                None => err(cx, "the whole `secrets` context cannot be read; name a secret (`secrets.NAME`)".into()),
            },
            "steps" => match (refs.steps, second) {
                (None, _) => err(cx, "`steps` is not available here (only in steps and job outputs)".into()),
                (Some(ids), Some(id)) if id != "*" && !ids.iter().any(|x| x == id) => {
                    let hint = did_you_mean(id, ids.iter().map(String::as_str))
                        .map(|s| format!(", did you mean \"{s}\"?"))
                        .unwrap_or_else(|| " before this one".into());
                    err(cx, format!("no step with id \"{id}\"{hint}"));
                }
                (Some(_), Some(_)) => {
                    if let Some(field) = r.get(2)
                        && !["outputs", "outcome", "conclusion", "*"].contains(&field.as_str())
                    {
                        err(cx, format!("a step has `outputs`, `outcome` and `conclusion`, not \"{field}\""));
                    }
                }
                _ => {}
            },
            "needs" => {
                if let Some(job) = second
                    && job != "*"
                    && !refs.needs.iter().any(|x| x == job)
                {
                    err(cx, format!("job \"{job}\" is not in this job's `needs`"));
                }
            }
            "matrix" => {
                if let Some(k) = second
                    && k != "*"
                    && !refs.matrix.contains(k)
                {
                    err(cx, format!("no matrix key \"{k}\""));
                }
            }
            _ if CONTEXTS.contains(&root) || CEL_TYPES.contains(&root) => {}
            _ => {
                let hint = did_you_mean(root, CONTEXTS.iter().copied())
                    .map(|s| format!(", did you mean \"{s}\"?"))
                    .unwrap_or_else(|| format!("; the contexts are {}", CONTEXTS.join(", ")));
                err(cx, format!("unknown context \"{root}\"{hint}"));
            }
        }
    }
}

fn expr_error(cx: &mut Cx, path: &[Seg], text: &str, e: ExprError) {
    let pos = cx.map.inside(path, text, e.offset);
    cx.err(pos, format!("invalid expression: {}", e.message));
}

fn value(cx: &mut Cx, path: &[Seg], text: &str, refs: &mut Refs) -> Value {
    let pos = cx.map.value(path);
    match expr::parse_template(text) {
        Ok(tpl) => {
            for e in tpl.exprs() {
                let p = cx.map.inside(path, text, e.offset);
                check_expr(cx, e, p, refs);
            }
            Value { raw: text.to_string(), tpl, pos }
        }
        Err(e) => {
            expr_error(cx, path, text, e);
            Value { raw: text.to_string(), tpl: Default::default(), pos }
        }
    }
}

fn values(cx: &mut Cx, path: &YPath, m: &BTreeMap<String, Text>, refs: &mut Refs) -> BTreeMap<String, Value> {
    m.iter()
        .map(|(k, v)| {
            let mut p = path.clone();
            p.push(Seg::Key(k.clone()));
            (k.clone(), value(cx, &p, v.as_str(), refs))
        })
        .collect()
}

fn cond(cx: &mut Cx, path: &[Seg], text: &str, refs: &mut Refs) -> Option<Cond> {
    let pos = cx.map.value(path);
    match expr::compile_condition(text) {
        Ok(e) => {
            let p = cx.map.inside(path, text, e.offset);
            check_expr(cx, &e, p, refs);
            Some(Cond { raw: text.to_string(), expr: e, pos })
        }
        Err(e) => {
            expr_error(cx, path, text, e);
            None
        }
    }
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

fn build(cx: &mut Cx, def: &PipelineDef, dir: &Path) -> Plan {
    let mut pipeline_secrets = BTreeSet::new();
    let no_matrix = BTreeSet::new();
    let mut top = Refs { needs: &[], steps: None, matrix: &no_matrix, secrets: &mut pipeline_secrets };
    let env = values(cx, &ypath!["env"], &def.env, &mut top);
    let concurrency = def.concurrency.as_ref().map(|c| {
        let (group, cancel, path) = match c {
            super::model::ConcurrencyDef::Group(g) => (g.clone(), false, ypath!["concurrency"]),
            super::model::ConcurrencyDef::Full(f) => {
                (f.group.clone(), f.cancel_in_progress, ypath!["concurrency", "group"])
            }
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
        jobs.push(("main".into(), JobDef { steps: steps.clone(), ..Default::default() }, vec![]));
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

    // needs: unknown ids, then cycles.
    let ids: Vec<String> = jobs.iter().map(|(id, ..)| id.clone()).collect();
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, j, p) in &jobs {
        let mut needs = Vec::new();
        for (i, n) in j.needs.as_ref().map(|n| n.to_vec()).unwrap_or_default().into_iter().enumerate() {
            let mut np = p.clone();
            np.push(Seg::Key("needs".into()));
            if matches!(j.needs, Some(super::model::OneOrMany::Many(_))) {
                np.push(Seg::Index(i));
            }
            if n == *id {
                cx.at_value(&np, format!("job \"{id}\" needs itself"));
            } else if !ids.contains(&n) {
                let hint = did_you_mean(&n, ids.iter().map(String::as_str))
                    .map(|s| format!(", did you mean \"{s}\"?"))
                    .unwrap_or_else(|| format!("; the jobs are {}", ids.join(", ")));
                cx.at_value(&np, format!("unknown job \"{n}\" in `needs`{hint}"));
            } else if !needs.contains(&n) {
                needs.push(n);
            }
        }
        deps.insert(id.clone(), needs);
    }
    let order = topo(&deps).unwrap_or_else(|cycle| {
        let first = &cycle[0];
        let path = jobs.iter().find(|(id, ..)| id == first).map(|(.., p)| p.clone()).unwrap_or_default();
        let mut p = path;
        p.push(Seg::Key("needs".into()));
        cx.at_key(&p, format!("jobs form a cycle through `needs`: {} -> {first}", cycle.join(" -> ")));
        ids.clone()
    });

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
    }
}

/// `on:`, read as the edge master reads an app's triggers: unknown keys, bad globs and bad CEL
/// are reported where they are.
fn triggers(cx: &mut Cx, on: &serde_json::Value) -> Option<skiff_edge_core::Triggers> {
    // Each event on its own first, so every mistake is reported, not only the first.
    if let Some(map) = on.as_object().filter(|m| m.len() > 1) {
        let mut ok = true;
        for (k, v) in map {
            let one = serde_json::Value::Object([(k.clone(), v.clone())].into_iter().collect());
            ok &= trigger(cx, &one).is_some();
        }
        if !ok {
            return None;
        }
    }
    trigger(cx, on)
}

fn trigger(cx: &mut Cx, on: &serde_json::Value) -> Option<skiff_edge_core::Triggers> {
    match serde_path_to_error::deserialize::<_, skiff_edge_core::Triggers>(on) {
        Ok(t) => Some(t),
        Err(e) => {
            let mut path: YPath = vec![Seg::Key("on".into())];
            for seg in e.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Map { key } => path.push(Seg::Key(key.clone())),
                    serde_path_to_error::Segment::Seq { index } => path.push(Seg::Index(*index)),
                    _ => {}
                }
            }
            let message = e.inner().to_string();
            // An unknown key is reported where it is written.
            let unknown = message.strip_prefix("unknown field `").and_then(|r| r.split('`').next());
            match unknown {
                Some(k) => {
                    path.push(Seg::Key(k.to_string()));
                    cx.at_key(&path, format!("`on:`: {message}"));
                }
                None => cx.at_value(&path, format!("`on:`: {message}")),
            }
            None
        }
    }
}

/// Kahn's algorithm, ties broken by name; on a cycle, returns one.
fn topo(deps: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>, Vec<String>> {
    let mut done: Vec<String> = Vec::new();
    let mut left: BTreeSet<&String> = deps.keys().collect();
    while !left.is_empty() {
        let ready: Vec<&String> = left.iter().copied().filter(|j| deps[*j].iter().all(|d| done.contains(d))).collect();
        if ready.is_empty() {
            // Walk from any remaining job along remaining deps until a job repeats.
            let mut path: Vec<String> = Vec::new();
            let mut cur = (*left.iter().next().expect("not empty")).clone();
            while !path.contains(&cur) {
                path.push(cur.clone());
                cur = deps[&cur].iter().find(|d| left.contains(d)).cloned().expect("a job in a cycle has a dep in it");
            }
            let start = path.iter().position(|x| *x == cur).unwrap_or(0);
            return Err(path[start..].to_vec());
        }
        for r in ready {
            left.remove(r);
            done.push(r.clone());
        }
    }
    Ok(done)
}

/// The most jobs one matrix may make (GitHub's limit), and the most combinations of its axes
/// before `exclude`: a few lines of axes must not make the loader allocate without end.
const MAX_MATRIX_JOBS: usize = 256;
const MAX_MATRIX_COMBINATIONS: usize = 4096;

fn expand_matrix(cx: &mut Cx, j: &JobDef, p: &YPath) -> Vec<BTreeMap<String, serde_json::Value>> {
    let Some(strategy) = &j.strategy else { return vec![BTreeMap::new()] };
    let m = &strategy.matrix;
    let mut mp = p.clone();
    mp.extend([Seg::Key("strategy".into()), Seg::Key("matrix".into())]);
    let product = m.axes.values().try_fold(1usize, |n, vals| n.checked_mul(vals.len()));
    if product.is_none_or(|n| n > MAX_MATRIX_COMBINATIONS) {
        let n = product.map_or_else(|| "too many".to_string(), |n| n.to_string());
        cx.at_value(
            &mp,
            format!("the matrix's axes make {n} combinations, more than {MAX_MATRIX_COMBINATIONS}; split the job"),
        );
        return Vec::new();
    }
    let mut combos: Vec<BTreeMap<String, serde_json::Value>> = vec![BTreeMap::new()];
    for (axis, vals) in &m.axes {
        if vals.is_empty() {
            let mut ap = mp.clone();
            ap.push(Seg::Key(axis.clone()));
            cx.at_value(&ap, format!("matrix axis \"{axis}\" has no values"));
        }
        combos = combos
            .into_iter()
            .flat_map(|c| {
                vals.iter().map(move |v| {
                    let mut c = c.clone();
                    c.insert(axis.clone(), v.clone());
                    c
                })
            })
            .collect();
    }
    if m.axes.is_empty() {
        combos.clear();
    }
    combos.retain(|c| !m.exclude.iter().any(|ex| ex.iter().all(|(k, v)| c.get(k) == Some(v))));
    for inc in &m.include {
        let mut matched = false;
        for c in combos.iter_mut() {
            let fits = inc.iter().all(|(k, v)| !m.axes.contains_key(k) || c.get(k) == Some(v));
            if fits && !m.axes.is_empty() {
                matched = true;
                for (k, v) in inc {
                    c.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        if !matched {
            combos.push(inc.clone());
        }
    }
    if combos.is_empty() {
        cx.at_value(&mp, "the matrix has no combinations");
    }
    if combos.len() > MAX_MATRIX_JOBS {
        cx.at_value(&mp, format!("the matrix makes {} jobs, more than {MAX_MATRIX_JOBS}; split the job", combos.len()));
    }
    combos
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
    let strategy = j.strategy.clone().unwrap_or_default();
    let many = j.strategy.is_some();
    combos
        .into_iter()
        .enumerate()
        .map(|(n, matrix)| {
            let key = if many { format!("{id}-{}", n + 1) } else { id.to_string() };
            let base = j.name.clone().unwrap_or_else(|| id.to_string());
            let name = if many {
                format!("{base} ({})", matrix.values().map(json_text).collect::<Vec<_>>().join(", "))
            } else {
                base
            };
            PlanJob {
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
                steps: steps.clone(),
            }
        })
        .collect()
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
    let kinds: Vec<&str> = [("run", s.run.is_some()), ("uses", s.uses.is_some()), ("plugin", s.plugin.is_some())]
        .into_iter()
        .filter_map(|(k, b)| b.then_some(k))
        .collect();
    if kinds.len() > 1 {
        cx.at_key(
            &sub(kinds[1]),
            format!("a step has one of `run`, `uses` or `plugin`, not both `{}` and `{}`", kinds[0], kinds[1]),
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
    if let Some(run) = &s.run {
        let shell = s.shell.clone().unwrap_or_else(|| "bash".into());
        if shell.contains("${{") {
            cx.at_value(&sub("shell"), "`shell` is the program that runs the script and cannot hold `${{ }}`");
        }
        default_name = format!("Run {}", run.lines().next().unwrap_or("").trim());
        uses = script_uses(cx, &sub("run"), run, shell, &mut refs);
    } else if let Some(plugin) = &s.plugin {
        match map_plugin(plugin) {
            Ok(m) => {
                plugin_hosts.extend(m.hosts.iter().map(|h| h.to_string()));
                for (k, v) in m.inputs {
                    with_defs.entry(k.to_string()).or_insert_with(|| v.to_string());
                }
                uses = Uses::Builtin(m.builtin.to_string());
            }
            Err(msg) => cx.at_value(&sub("plugin"), msg),
        }
        default_name = plugin.clone();
    } else if let Some(u) = &s.uses {
        default_name = u.clone();
        match resolve_uses(u, dir) {
            Ok(x) => uses = x,
            Err(msg) => cx.at_value(&sub("uses"), msg),
        }
    } else if kinds.is_empty() {
        cx.at_value(sp, "a step needs `run:`, `uses:` or `plugin:`");
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
    // Serverless-cd ran every script with the network (`npm install`, `s deploy`) and has
    // no `permissions`; its file keeps that for `run:` steps that do not say otherwise.
    if s.run.is_some() && s.permissions.is_none() && is_serverless_cd_file(&cx.file) {
        perms.network = true;
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
        permissions: Permissions {
            hosts: perms.hosts,
            secrets: secrets.into_iter().collect(),
            process: perms.process,
            network: perms.network,
            read_only: false,
        },
        post,
        memory: s.memory_mb.map(|m| m * 1024 * 1024),
    }
}

/// A Serverless-cd pipeline, by its file name.
fn is_serverless_cd_file(file: &str) -> bool {
    Path::new(file).file_name().is_some_and(|n| n == "serverless-pipeline.yaml" || n == "serverless-pipeline.yml")
}

fn ypath_push(p: &YPath, k: &str) -> YPath {
    let mut q = p.clone();
    q.push(Seg::Key(k.into()));
    q
}

/// A script that runs as code: each `${{ }}` becomes a variable `SKIFF_EXPR_n`, referenced
/// in the script's language where the expression stood (see [`crate::script`]).
fn script_uses(cx: &mut Cx, path: &[Seg], text: &str, shell: String, refs: &mut Refs) -> Uses {
    let pos = cx.map.value(path);
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

fn resolve_uses(u: &str, dir: &Path) -> Result<Uses, String> {
    let u = u.trim();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing the loader (fuzz/seeds/pipeline/matrix-bomb.yaml): seven axes of ten
    /// values, 307 bytes of YAML, made ten million jobs and over 2 GiB before any check.
    #[test]
    fn a_matrix_cannot_make_the_loader_allocate_without_end() {
        let axes: String = "abcdefg".chars().map(|c| format!("        {c}: [0,1,2,3,4,5,6,7,8,9]\n")).collect();
        let text = format!("jobs:\n  build:\n    strategy:\n      matrix:\n{axes}    steps:\n      - run: echo hi\n");
        let err = load_str(&text, "pipeline.yaml", Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("10000000 combinations, more than 4096"), "{err}");

        let text = "jobs:\n  b:\n    strategy:\n      matrix:\n        a: [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]\n        b: [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]\n    steps:\n      - run: echo hi\n";
        let err = load_str(text, "pipeline.yaml", Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("the matrix makes 289 jobs, more than 256"), "{err}");
        assert!(load_str(&text.replace(",16]", "]"), "pipeline.yaml", Path::new(".")).is_ok());
    }

    /// Found by fuzzing the loader (fuzz/seeds/pipeline/timeout-huge.yaml): a timeout too large
    /// for a `Duration` panicked.
    #[test]
    fn a_timeout_too_large_for_a_duration_is_explained() {
        let text = "steps:\n  - run: echo hi\n    timeout-minutes: 1e300\n";
        let err = load_str(text, "pipeline.yaml", Path::new(".")).unwrap_err().to_string();
        assert_eq!(err, "pipeline.yaml:3:22: timeout-minutes is too large");
    }
}
