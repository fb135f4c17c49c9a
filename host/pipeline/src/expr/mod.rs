//! Expressions: `${{ … }}` templates and `if:` conditions, evaluated with CEL
//! plus the GitHub Actions helper functions.
//!
//! Two deliberate departures from plain CEL, both for GitHub compatibility:
//! - A missing key or index (`steps.missing.outputs.x`, `inputs.absent`)
//!   evaluates to the empty string instead of failing with `NoSuchKey`; an
//!   unknown *context* (`stpes.x`) is still an error, and `skiff validate`
//!   rejects references to step ids, jobs and matrix keys that do not exist.
//! - `contains`, `startsWith`, `endsWith`, `format`, `join`, `toJSON`,
//!   `fromJSON`, `hashFiles`, `success()`, `failure()`, `always()` and
//!   `cancelled()` exist as global functions; CEL's own member functions
//!   (`'abc'.startsWith('a')`) keep working.
//!
//! Both are done by rewriting the parsed AST once, at compile time.

mod compile;
mod functions;
mod values;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use cel::common::ast::IdedExpr;
use cel::objects::{Key, Map};
use cel::{Env, Value};

pub use compile::{compile, compile_condition, parse_template};
pub use functions::hash_files;
pub use values::{cel_to_json, json_to_cel, strings_to_cel, to_text, truthy};

use functions::ROOT;
use values::s;

/// The contexts an expression may read.
pub const CONTEXTS: &[&str] = &["event", "body", "env", "secrets", "inputs", "matrix", "run", "steps", "needs", "job"];

/// The GitHub-compatible global functions.
pub const FUNCTIONS: &[&str] = &[
    "contains",
    "startsWith",
    "endsWith",
    "format",
    "join",
    "toJSON",
    "fromJSON",
    "hashFiles",
    "success",
    "failure",
    "always",
    "cancelled",
];

/// An expression that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// What is wrong.
    pub message: String,
    /// Where in the containing string (in characters) the expression starts.
    pub offset: usize,
}

/// A compiled expression.
#[derive(Debug, Clone)]
pub struct Expr {
    /// The expression as written (without `${{ }}`).
    pub source: String,
    /// Where it starts in the containing string, in characters.
    pub offset: usize,
    ast: IdedExpr,
    /// Static references: `["secrets", "TOKEN"]`, `["steps", "build", "outputs", "x"]`; `*` for a dynamic index.
    pub refs: Vec<Vec<String>>,
    /// Calls of the status functions (`success`, `failure`, `always`, `cancelled`).
    pub status_calls: Vec<String>,
    /// The static paths (`steps.build.outputs.v`) replaced by `__refN` variables:
    /// looked up in Rust before evaluation, which is much cheaper than in CEL.
    chains: Vec<Vec<String>>,
}

/// A part of a string value.
#[derive(Debug, Clone)]
pub enum Segment {
    /// Text taken as it is.
    Lit(String),
    /// A `${{ }}` expression.
    Expr(Expr),
}

/// A string value with its `${{ }}` expressions compiled.
#[derive(Debug, Clone, Default)]
pub struct Template {
    /// Text and expressions in order.
    pub segments: Vec<Segment>,
}

fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib()))
}

impl Template {
    /// True when the value holds no expression.
    pub fn is_literal(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Lit(_)))
    }

    /// The expressions in the value.
    pub fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Expr(e) => Some(e),
            Segment::Lit(_) => None,
        })
    }

    /// Evaluates the expressions and joins the parts into a string.
    pub fn render(&self, scope: &Scope) -> Result<String, EvalError> {
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Lit(t) => out.push_str(t),
                Segment::Expr(e) => out.push_str(&to_text(&e.eval(scope)?)),
            }
        }
        Ok(out)
    }
}

/// An expression that failed at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    /// The expression.
    pub expr: String,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "expression `{}` failed: {}", self.expr, self.message)
    }
}

/// What an expression can read.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Contexts by name (`event`, `env`, `steps`, …), already converted to CEL values.
    pub vars: BTreeMap<&'static str, Value>,
    /// A previous step (or needed job) failed.
    pub failed: bool,
    /// The run or job was cancelled.
    pub cancelled: bool,
    /// The job's workspace, for `hashFiles`.
    pub workspace: PathBuf,
}

impl Scope {
    /// Sets a context from JSON.
    pub fn set_json(&mut self, name: &'static str, v: &serde_json::Value) {
        self.vars.insert(name, json_to_cel(v));
    }
}

impl Expr {
    /// Evaluates the expression.
    pub fn eval(&self, scope: &Scope) -> Result<Value, EvalError> {
        ROOT.with(|root| {
            let mut ctx = root.new_inner_scope();
            for (i, chain) in self.chains.iter().enumerate() {
                ctx.add_variable_from_value(format!("__ref{i}"), lookup(scope, chain));
            }
            ctx.add_variable_from_value("__failed", scope.failed);
            ctx.add_variable_from_value("__cancelled", scope.cancelled);
            if self.source.contains("hashFiles") {
                ctx.add_variable_from_value("__workspace", scope.workspace.to_string_lossy().to_string());
            }
            Value::resolve(&self.ast, &ctx).map_err(|e| EvalError { expr: self.source.clone(), message: e.to_string() })
        })
    }

    /// Evaluates a condition with GitHub truthiness.
    pub fn eval_bool(&self, scope: &Scope) -> Result<bool, EvalError> {
        self.eval(scope).map(|v| truthy(&v))
    }

    /// True when the expression calls a status function, so the default `success() &&` is not added.
    pub fn has_status_call(&self) -> bool {
        !self.status_calls.is_empty()
    }
}

fn empty_map() -> Value {
    Value::Map(Map { map: Arc::new(Default::default()) })
}

/// Follows a static path through the scope; a missing key or index is `''`.
fn lookup(scope: &Scope, chain: &[String]) -> Value {
    let Some((root, rest)) = chain.split_first() else { return s("") };
    let mut cur = match scope.vars.get(root.as_str()) {
        Some(v) => v.clone(),
        None if rest.is_empty() => empty_map(),
        None => return s(""),
    };
    for seg in rest {
        let next = match &cur {
            Value::Map(m) => m
                .map
                .get(&Key::String(Arc::new(seg.clone())))
                .or_else(|| seg.parse::<i64>().ok().and_then(|i| m.map.get(&Key::Int(i)))),
            Value::List(l) => seg.parse::<usize>().ok().and_then(|i| l.get(i)),
            _ => None,
        };
        match next {
            Some(v) => cur = v.clone(),
            None => return s(""),
        }
    }
    cur
}

#[cfg(test)]
mod testing {
    use super::*;

    pub(super) fn scope() -> Scope {
        let mut sc = Scope::default();
        sc.set_json(
            "steps",
            &serde_json::json!({"build": {"outputs": {"v": "1.2", "list": "[1,2]"}, "outcome": "success"}}),
        );
        sc.set_json("event", &serde_json::json!({"ref": "refs/heads/main", "labels": ["a", "B"]}));
        sc
    }

    pub(super) fn ev(src: &str) -> Value {
        compile(src).unwrap().eval(&scope()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{ev, scope};
    use super::*;

    #[test]
    fn missing_keys_are_empty_strings() {
        assert_eq!(ev("steps.missing.outputs.x"), s(""));
        assert_eq!(ev("steps.build.outputs.absent == ''"), Value::Bool(true));
        assert_eq!(ev("inputs.absent"), s(""));
        assert_eq!(ev("event.labels[7]"), s(""));
        assert!(compile("stpes.x").unwrap().eval(&scope()).is_err());
    }
}
