//! Loading: YAML text → [`PipelineDef`] → [`Plan`], collecting every problem
//! (unknown keys, wrong types, bad expressions, unknown `needs`, cycles,
//! unknown plugins, …) with its file, line and column.
//!
//! The passes, in order: `lint` checks the YAML against the format's keys and types;
//! `compile` turns the model into the plan, job by job and step by step, with `references`
//! checking what each expression and `needs:` refers to, `matrix` expanding a job's
//! combinations and `triggers` reading `on:` as the edge master will.
//!
//! [`PipelineDef`]: crate::model::PipelineDef

mod compile;
mod lint;
mod matrix;
mod references;
mod triggers;

use std::path::Path;

use serde_norway::Value as Y;

pub use compile::JS;
use compile::build;
use lint::{check_keys, typed};

use crate::plan::Plan;
use crate::source::{Pos, Seg, SourceMap};

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
    let mut cx = Cx { file: file.to_string(), compat: None, map: SourceMap::new(text), diags: Vec::new(), lock: None };
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
    /// The compatibility mode, once the pipeline's `compat:` is read.
    compat: Option<crate::compat::Compat>,
    map: SourceMap,
    diags: Vec<Diagnostic>,
    /// The lock file beside the pipeline, read at the first registry reference.
    lock: Option<Result<crate::lock::Lock, String>>,
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

/// The closest name within a small edit distance.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
