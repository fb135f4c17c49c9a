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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use cel::common::ast::{CallExpr, Expr as Ast, IdedExpr, LiteralValue, operators};
use cel::common::types::CelString;
use cel::extractors::Arguments;
use cel::objects::{Key, Map};
use cel::{Context, Env, ExecutionError, Value};
use skiff_edge_core::cel_limits;

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

/// Compiles a bare expression.
pub fn compile(source: &str) -> Result<Expr, ExprError> {
    compile_at(source, 0)
}

fn compile_at(source: &str, offset: usize) -> Result<Expr, ExprError> {
    let trimmed = source.trim();
    if trimmed.is_empty() {
        return Err(ExprError { message: "empty expression".into(), offset });
    }
    if let Some(why) = cel_limits::too_long(trimmed) {
        return Err(ExprError {
            message: format!("the expression is too long: {why}; split it into smaller ones"),
            offset,
        });
    }
    let ast = env().parser().parse(trimmed).map_err(|e| ExprError {
        message: e
            .errors
            .iter()
            .map(|e| {
                let col = e.pos.1.max(0) as usize;
                format!("{} (at column {} of the expression)", e.msg, col + 1)
            })
            .collect::<Vec<_>>()
            .join("; "),
        offset,
    })?;
    if let Some(why) = cel_limits::too_costly(&ast) {
        return Err(ExprError {
            message: format!("the expression costs too much: {why}; split it into smaller ones"),
            offset,
        });
    }
    // Names with `__` are the engine's own (`__workspace`, `__gh_hashFiles`): written by hand
    // they would reach past the helpers' checks, e.g. hash a file outside the workspace.
    if let Some(name) = reserved_name(&ast) {
        return Err(ExprError {
            message: format!("`{name}` is not a name an expression may use: names starting with `__` are Skiff's own"),
            offset,
        });
    }
    let mut refs = Vec::new();
    let mut status_calls = Vec::new();
    collect_refs(&ast, &mut Vec::new(), &mut refs, &mut status_calls);
    let mut rw = Rewriter { next_id: 1_000_000, bound: Vec::new(), chains: Vec::new() };
    let ast = rw.rewrite(ast);
    Ok(Expr { source: trimmed.to_string(), offset, ast, refs, status_calls, chains: rw.chains })
}

/// The first name under `e` (a variable, a function, a comprehension's variable) that starts
/// with `__` (for trees checked by [`cel_limits::too_costly`]).
fn reserved_name(e: &IdedExpr) -> Option<String> {
    let own = match &e.expr {
        Ast::Ident(n) => Some(n.as_str()),
        Ast::Call(c) => Some(c.func_name.as_str()),
        Ast::Comprehension(c) => Some(c.iter_var.as_str()).filter(|v| v.starts_with("__")).or(c.iter_var2.as_deref()),
        _ => None,
    };
    if let Some(n) = own.filter(|n| n.starts_with("__")) {
        return Some(n.to_string());
    }
    cel_limits::children(e).into_iter().find_map(|(c, _)| reserved_name(c))
}

/// Compiles a condition (`if:`): a bare expression, or one `${{ }}` around it.
pub fn compile_condition(source: &str) -> Result<Expr, ExprError> {
    let t = source.trim();
    if let Some(inner) = t.strip_prefix("${{").and_then(|s| s.strip_suffix("}}"))
        && !inner.contains("${{")
    {
        let lead = source.find("${{").unwrap_or(0) + 3;
        return compile_at(inner, lead);
    }
    if t.contains("${{") {
        return Err(ExprError {
            message: "a condition mixes `${{ }}` with other text; write it as one expression".into(),
            offset: 0,
        });
    }
    compile_at(source, source.len() - source.trim_start().len())
}

/// Splits a string value into text and `${{ }}` expressions.
pub fn parse_template(s: &str) -> Result<Template, ExprError> {
    let mut segments = Vec::new();
    let mut rest = s;
    let mut consumed = 0; // bytes of `s` before `rest`
    while let Some(start) = rest.find("${{") {
        if start > 0 {
            segments.push(Segment::Lit(rest[..start].to_string()));
        }
        let body_start = start + 3;
        let body = &rest[body_start..];
        let end = find_close(body).ok_or_else(|| ExprError {
            message: "`${{` is not closed by `}}`".into(),
            offset: s[..consumed + start].chars().count(),
        })?;
        let inner = &body[..end];
        let offset = s[..consumed + body_start].chars().count();
        segments.push(Segment::Expr(compile_at(inner, offset)?));
        let advance = body_start + end + 2;
        consumed += advance;
        rest = &rest[advance..];
    }
    if !rest.is_empty() {
        segments.push(Segment::Lit(rest.to_string()));
    }
    Ok(Template { segments })
}

/// The first `}}` outside a quoted string.
fn find_close(body: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => {
                if b == b'\'' || b == b'"' {
                    quote = Some(b);
                } else if b == b'}' && bytes.get(i + 1) == Some(&b'}') {
                    return Some(i);
                }
            }
        }
        i += 1;
    }
    None
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

/// A JSON value as a CEL value.
pub fn json_to_cel(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(0.0))
            }
        }
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(a) => Value::List(Arc::new(a.iter().map(json_to_cel).collect())),
        serde_json::Value::Object(o) => {
            let map: std::collections::HashMap<Key, Value> =
                o.iter().map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v))).collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// A map of strings as a CEL map.
pub fn strings_to_cel<'a>(m: impl IntoIterator<Item = (&'a String, &'a String)>) -> Value {
    let map: std::collections::HashMap<Key, Value> =
        m.into_iter().map(|(k, v)| (Key::String(Arc::new(k.clone())), Value::String(Arc::new(v.clone())))).collect();
    Value::Map(Map { map: Arc::new(map) })
}

/// A CEL value as JSON (for `toJSON` and outputs that are not strings).
pub fn cel_to_json(v: &Value) -> serde_json::Value {
    v.json().unwrap_or(serde_json::Value::Null)
}

/// The text GitHub Actions would substitute for a value: strings as they are,
/// null as empty, lists and maps as JSON.
pub fn to_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        other => cel_to_json(other).to_string(),
    }
}

/// GitHub truthiness: `false`, `0`, `''` and null are false.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Int(i) => *i != 0,
        Value::UInt(u) => *u != 0,
        Value::Float(f) => *f != 0.0,
        _ => true,
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

/// Collects static reference chains and status calls, outside comprehension variables.
fn collect_refs(e: &IdedExpr, bound: &mut Vec<String>, refs: &mut Vec<Vec<String>>, status: &mut Vec<String>) {
    if let Some(chain) = chain_of(e, refs, bound, status) {
        if !bound.contains(&chain[0]) {
            refs.push(chain);
        }
        return;
    }
    match &e.expr {
        Ast::Call(c) => {
            if c.target.is_none()
                && c.args.is_empty()
                && ["success", "failure", "always", "cancelled"].contains(&c.func_name.as_str())
            {
                status.push(c.func_name.clone());
            }
            if let Some(t) = &c.target {
                collect_refs(t, bound, refs, status);
            }
            for a in &c.args {
                collect_refs(a, bound, refs, status);
            }
        }
        Ast::Select(s) => collect_refs(&s.operand, bound, refs, status),
        Ast::List(l) => l.elements.iter().for_each(|x| collect_refs(x, bound, refs, status)),
        Ast::Map(m) => {
            for en in &m.entries {
                if let cel::common::ast::EntryExpr::MapEntry(me) = &en.expr {
                    collect_refs(&me.key, bound, refs, status);
                    collect_refs(&me.value, bound, refs, status);
                }
            }
        }
        Ast::Struct(s) => {
            for en in &s.entries {
                if let cel::common::ast::EntryExpr::StructField(f) = &en.expr {
                    collect_refs(&f.value, bound, refs, status);
                }
            }
        }
        Ast::Comprehension(c) => {
            collect_refs(&c.iter_range, bound, refs, status);
            let n = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v) = &c.iter_var2 {
                bound.push(v.clone());
            }
            bound.push(c.accu_var.clone());
            collect_refs(&c.accu_init, bound, refs, status);
            collect_refs(&c.loop_cond, bound, refs, status);
            collect_refs(&c.loop_step, bound, refs, status);
            collect_refs(&c.result, bound, refs, status);
            bound.truncate(n);
        }
        _ => {}
    }
}

/// `a.b['c'][x]` as `["a", "b", "c", "*"]` (collecting refs inside dynamic indexes).
fn chain_of(
    e: &IdedExpr,
    refs: &mut Vec<Vec<String>>,
    bound: &mut Vec<String>,
    status: &mut Vec<String>,
) -> Option<Vec<String>> {
    match &e.expr {
        Ast::Ident(n) => Some(vec![n.clone()]),
        Ast::Select(s) if !s.test => {
            let mut c = chain_of(&s.operand, refs, bound, status)?;
            c.push(s.field.clone());
            Some(c)
        }
        Ast::Call(c) if c.func_name == operators::INDEX && c.args.len() == 2 && c.target.is_none() => {
            let mut ch = chain_of(&c.args[0], refs, bound, status)?;
            match &c.args[1].expr {
                Ast::Literal(LiteralValue::String(s)) => ch.push(s.inner().to_string()),
                Ast::Literal(LiteralValue::Int(i)) => ch.push(i.inner().to_string()),
                _ => {
                    collect_refs(&c.args[1], bound, refs, status);
                    ch.push("*".into());
                }
            }
            Some(ch)
        }
        _ => None,
    }
}

/// Field access and indexing that yield `''` when missing; static paths into
/// the contexts replaced by variables; GitHub functions renamed to their
/// implementations, with the status and workspace passed in.
struct Rewriter {
    next_id: u64,
    bound: Vec<String>,
    chains: Vec<Vec<String>>,
}

impl Rewriter {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn lit_str(&mut self, s: &str) -> IdedExpr {
        IdedExpr { id: self.id(), expr: Ast::Literal(LiteralValue::String(CelString::from(s.to_string()))) }
    }

    fn ident(&mut self, s: &str) -> IdedExpr {
        IdedExpr { id: self.id(), expr: Ast::Ident(s.to_string()) }
    }

    /// `a.b['c'][0]` rooted in a context (not a comprehension variable), as its segments.
    fn static_chain(&self, e: &IdedExpr) -> Option<Vec<String>> {
        match &e.expr {
            Ast::Ident(n) if CONTEXTS.contains(&n.as_str()) && !self.bound.contains(n) => Some(vec![n.clone()]),
            Ast::Select(s) if !s.test => {
                let mut c = self.static_chain(&s.operand)?;
                c.push(s.field.clone());
                Some(c)
            }
            Ast::Call(c) if c.func_name == operators::INDEX && c.args.len() == 2 && c.target.is_none() => {
                let mut ch = self.static_chain(&c.args[0])?;
                match &c.args[1].expr {
                    Ast::Literal(LiteralValue::String(s)) => ch.push(s.inner().to_string()),
                    Ast::Literal(LiteralValue::Int(i)) => ch.push(i.inner().to_string()),
                    _ => return None,
                }
                Some(ch)
            }
            _ => None,
        }
    }

    fn rewrite(&mut self, e: IdedExpr) -> IdedExpr {
        if let Some(chain) = self.static_chain(&e) {
            let n = match self.chains.iter().position(|c| *c == chain) {
                Some(n) => n,
                None => {
                    self.chains.push(chain);
                    self.chains.len() - 1
                }
            };
            return IdedExpr { id: e.id, expr: Ast::Ident(format!("__ref{n}")) };
        }
        let id = e.id;
        let expr = match e.expr {
            Ast::Select(s) if !s.test => {
                let operand = self.rewrite(*s.operand);
                let field = self.lit_str(&s.field);
                Ast::Call(CallExpr { func_name: "__get".into(), target: None, args: vec![operand, field] })
            }
            Ast::Select(mut s) => {
                s.operand = Box::new(self.rewrite(*s.operand));
                Ast::Select(s)
            }
            Ast::Call(c) if c.func_name == operators::INDEX && c.target.is_none() && c.args.len() == 2 => {
                Ast::Call(CallExpr {
                    func_name: "__get".into(),
                    target: None,
                    args: c.args.into_iter().map(|a| self.rewrite(a)).collect(),
                })
            }
            Ast::Call(c) => {
                let mut args: Vec<IdedExpr> = c.args.into_iter().map(|a| self.rewrite(a)).collect();
                let target = c.target.map(|t| Box::new(self.rewrite(*t)));
                let mut func_name = c.func_name;
                if target.is_none() && FUNCTIONS.contains(&func_name.as_str()) {
                    match func_name.as_str() {
                        "success" | "failure" | "cancelled" | "always" => {
                            args = vec![self.ident("__failed"), self.ident("__cancelled")];
                        }
                        "hashFiles" => args.insert(0, self.ident("__workspace")),
                        _ => {}
                    }
                    func_name = format!("__gh_{func_name}");
                }
                Ast::Call(CallExpr { func_name, target, args })
            }
            Ast::List(mut l) => {
                l.elements = l.elements.into_iter().map(|x| self.rewrite(x)).collect();
                Ast::List(l)
            }
            Ast::Map(mut m) => {
                for en in &mut m.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(me) = &mut en.expr {
                        me.key = self.rewrite(std::mem::take(&mut me.key));
                        me.value = self.rewrite(std::mem::take(&mut me.value));
                    }
                }
                Ast::Map(m)
            }
            Ast::Struct(mut s) => {
                for en in &mut s.entries {
                    if let cel::common::ast::EntryExpr::StructField(f) = &mut en.expr {
                        f.value = self.rewrite(std::mem::take(&mut f.value));
                    }
                }
                Ast::Struct(s)
            }
            Ast::Comprehension(mut c) => {
                c.iter_range = self.rewrite(std::mem::take(&mut c.iter_range));
                let n = self.bound.len();
                self.bound.push(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    self.bound.push(v.clone());
                }
                self.bound.push(c.accu_var.clone());
                c.accu_init = self.rewrite(std::mem::take(&mut c.accu_init));
                c.loop_cond = self.rewrite(std::mem::take(&mut c.loop_cond));
                c.loop_step = self.rewrite(std::mem::take(&mut c.loop_step));
                c.result = self.rewrite(std::mem::take(&mut c.result));
                self.bound.truncate(n);
                Ast::Comprehension(c)
            }
            other => other,
        };
        IdedExpr { id, expr }
    }
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

thread_local! {
    static ROOT: Context<'static, 'static> = root_context();
}

fn s(v: impl Into<String>) -> Value {
    Value::String(Arc::new(v.into()))
}

fn fn_err(name: &str, msg: impl ToString) -> ExecutionError {
    ExecutionError::function_error(name, msg)
}

fn root_context() -> Context<'static, 'static> {
    let mut ctx = Context::with_env(env().clone());
    let add = |ctx: &mut Context<'static, 'static>, name: &str, f: fn(&[Value]) -> Result<Value, ExecutionError>| {
        ctx.add_function(name, move |Arguments(args): Arguments| f(args.as_slice()))
            .expect("the helper functions have names of their own");
    };
    add(&mut ctx, "__get", |a| {
        let [obj, key] = a else { return Err(fn_err("get", "expects two arguments")) };
        Ok(match (obj, key) {
            (Value::Map(m), Value::String(k)) => m.map.get(&Key::String(k.clone())).cloned().unwrap_or_else(|| s("")),
            (Value::Map(m), Value::Int(i)) => m.map.get(&Key::Int(*i)).cloned().unwrap_or_else(|| s("")),
            (Value::List(l), Value::Int(i)) => {
                usize::try_from(*i).ok().and_then(|i| l.get(i)).cloned().unwrap_or_else(|| s(""))
            }
            (Value::List(l), Value::UInt(i)) => l.get(*i as usize).cloned().unwrap_or_else(|| s("")),
            _ => s(""),
        })
    });
    add(&mut ctx, "__gh_contains", |a| {
        let [hay, needle] = a else { return Err(fn_err("contains", "expects (search, item)")) };
        Ok(Value::Bool(match hay {
            Value::List(l) => {
                let n = to_text(needle).to_lowercase();
                l.iter().any(|x| x == needle || to_text(x).to_lowercase() == n)
            }
            other => to_text(other).to_lowercase().contains(&to_text(needle).to_lowercase()),
        }))
    });
    add(&mut ctx, "__gh_startsWith", |a| {
        let [x, p] = a else { return Err(fn_err("startsWith", "expects (string, prefix)")) };
        Ok(Value::Bool(to_text(x).to_lowercase().starts_with(&to_text(p).to_lowercase())))
    });
    add(&mut ctx, "__gh_endsWith", |a| {
        let [x, p] = a else { return Err(fn_err("endsWith", "expects (string, suffix)")) };
        Ok(Value::Bool(to_text(x).to_lowercase().ends_with(&to_text(p).to_lowercase())))
    });
    add(&mut ctx, "__gh_format", |a| {
        let Some((f, rest)) = a.split_first() else { return Err(fn_err("format", "expects a format string")) };
        format_github(&to_text(f), rest).map(s).map_err(|m| fn_err("format", m))
    });
    add(&mut ctx, "__gh_join", |a| {
        let (list, sep) = match a {
            [l] => (l, ",".to_string()),
            [l, sep] => (l, to_text(sep)),
            _ => return Err(fn_err("join", "expects (list, separator)")),
        };
        Ok(s(match list {
            Value::List(l) => l.iter().map(to_text).collect::<Vec<_>>().join(&sep),
            other => to_text(other),
        }))
    });
    add(&mut ctx, "__gh_toJSON", |a| {
        let [v] = a else { return Err(fn_err("toJSON", "expects one argument")) };
        Ok(s(serde_json::to_string_pretty(&cel_to_json(v)).unwrap_or_default()))
    });
    add(&mut ctx, "__gh_fromJSON", |a| {
        let [v] = a else { return Err(fn_err("fromJSON", "expects one argument")) };
        let j: serde_json::Value = serde_json::from_str(&to_text(v)).map_err(|e| fn_err("fromJSON", e))?;
        Ok(json_to_cel(&j))
    });
    add(&mut ctx, "__gh_hashFiles", |a| {
        let Some((ws, patterns)) = a.split_first() else { return Err(fn_err("hashFiles", "expects patterns")) };
        let patterns: Vec<String> = patterns.iter().map(to_text).collect();
        hash_files(Path::new(&to_text(ws)), &patterns).map(s).map_err(|m| fn_err("hashFiles", m))
    });
    fn status(a: &[Value]) -> (bool, bool) {
        match a {
            [Value::Bool(f), Value::Bool(c)] => (*f, *c),
            _ => (false, false),
        }
    }
    add(&mut ctx, "__gh_success", |a| {
        let (f, c) = status(a);
        Ok(Value::Bool(!f && !c))
    });
    add(&mut ctx, "__gh_failure", |a| Ok(Value::Bool(status(a).0)));
    add(&mut ctx, "__gh_cancelled", |a| Ok(Value::Bool(status(a).1)));
    add(&mut ctx, "__gh_always", |_| Ok(Value::Bool(true)));
    ctx
}

/// GitHub's `format('{0} and {1}', a, b)`, with `{{` and `}}` for braces.
fn format_github(f: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = f.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut n = String::new();
                for d in chars.by_ref() {
                    if d == '}' {
                        break;
                    }
                    n.push(d);
                }
                let i: usize = n.parse().map_err(|_| format!("`{{{n}}}` is not an argument index"))?;
                let v = args.get(i).ok_or_else(|| format!("argument {{{i}}} is missing"))?;
                out.push_str(&to_text(v));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// SHA-256 over the SHA-256 of every workspace file matching one of the
/// patterns, in path order (as GitHub's `hashFiles`); empty when none match.
pub fn hash_files(workspace: &Path, patterns: &[String]) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    let mut include = globset::GlobSetBuilder::new();
    let mut exclude = globset::GlobSetBuilder::new();
    for p in patterns {
        let (set, p) = match p.strip_prefix('!') {
            Some(rest) => (&mut exclude, rest),
            None => (&mut include, p.as_str()),
        };
        set.add(globset::Glob::new(p).map_err(|e| e.to_string())?);
    }
    let include = include.build().map_err(|e| e.to_string())?;
    let exclude = exclude.build().map_err(|e| e.to_string())?;
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(workspace)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.path().strip_prefix(workspace).ok().map(Path::to_path_buf))
        .filter(|rel| include.is_match(rel) && !exclude.is_match(rel))
        .collect();
    if files.is_empty() {
        return Ok(String::new());
    }
    files.sort();
    let mut outer = Sha256::new();
    for rel in files {
        let bytes = std::fs::read(workspace.join(&rel)).map_err(|e| format!("{}: {e}", rel.display()))?;
        outer.update(Sha256::digest(&bytes));
    }
    Ok(hex::encode(outer.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        let mut sc = Scope::default();
        sc.set_json(
            "steps",
            &serde_json::json!({"build": {"outputs": {"v": "1.2", "list": "[1,2]"}, "outcome": "success"}}),
        );
        sc.set_json("event", &serde_json::json!({"ref": "refs/heads/main", "labels": ["a", "B"]}));
        sc
    }

    fn ev(src: &str) -> Value {
        compile(src).unwrap().eval(&scope()).unwrap()
    }

    #[test]
    fn github_style_comparisons_and_functions() {
        assert_eq!(ev("steps.build.outputs.v == '1.2'"), Value::Bool(true));
        assert_eq!(ev("startsWith(event.ref, 'refs/heads/')"), Value::Bool(true));
        assert_eq!(ev("event.ref.startsWith('refs/heads/')"), Value::Bool(true));
        assert_eq!(ev("contains(event.labels, 'b')"), Value::Bool(true));
        assert_eq!(ev("contains('Hello', 'ELL')"), Value::Bool(true));
        assert_eq!(ev("endsWith(event.ref, 'MAIN')"), Value::Bool(true));
        assert_eq!(to_text(&ev("format('{0}-{1}{{x}}', 'a', 2)")), "a-2{x}");
        assert_eq!(to_text(&ev("join(event.labels, '+')")), "a+B");
        assert_eq!(ev("fromJSON(steps.build.outputs.list)[1] == 2"), Value::Bool(true));
        assert_eq!(to_text(&ev("toJSON(event.labels)")), "[\n  \"a\",\n  \"B\"\n]");
        assert_eq!(ev("event.ref in ['refs/heads/main']"), Value::Bool(true));
        assert_eq!(ev("size(event.labels) == 2 && event.labels.exists(l, l == 'a')"), Value::Bool(true));
    }

    #[test]
    fn missing_keys_are_empty_strings() {
        assert_eq!(ev("steps.missing.outputs.x"), s(""));
        assert_eq!(ev("steps.build.outputs.absent == ''"), Value::Bool(true));
        assert_eq!(ev("inputs.absent"), s(""));
        assert_eq!(ev("event.labels[7]"), s(""));
        assert!(compile("stpes.x").unwrap().eval(&scope()).is_err());
    }

    #[test]
    fn status_functions() {
        let mut sc = scope();
        let e = compile("success()").unwrap();
        assert!(e.eval_bool(&sc).unwrap());
        sc.failed = true;
        assert!(!e.eval_bool(&sc).unwrap());
        assert!(compile("failure()").unwrap().eval_bool(&sc).unwrap());
        assert!(compile("always()").unwrap().eval_bool(&sc).unwrap());
        assert!(!compile("cancelled()").unwrap().eval_bool(&sc).unwrap());
        assert_eq!(compile("always() && x").unwrap().status_calls, vec!["always"]);
    }

    #[test]
    fn templates_and_refs() {
        let t = parse_template("v=${{ steps.build.outputs.v }} s=${{ secrets['TOKEN'] }} ${{ '}}' }}").unwrap();
        assert_eq!(t.render(&scope()).unwrap(), "v=1.2 s= }}");
        let refs: Vec<_> = t.exprs().flat_map(|e| e.refs.clone()).collect();
        assert_eq!(
            refs,
            vec![vec!["steps", "build", "outputs", "v"], vec!["secrets", "TOKEN"]]
                .into_iter()
                .map(|v| v.into_iter().map(String::from).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        assert!(parse_template("${{ a ").is_err());
        let e = parse_template("x ${{ 1 + }}").unwrap_err();
        assert_eq!(e.offset, 5);
        assert!(compile_condition("${{ success() }}").is_ok());
        assert!(compile_condition("${{ a }} && b").is_err());
    }

    /// Found by fuzzing (fuzz/seeds/expr/operator-chain): `1+1+…+1` passes the parser's own
    /// depth limit, but the parser (from about 5,000 links) and the evaluator (from about
    /// 1,500) recurse once per link, overflow the stack and abort the process.
    #[test]
    fn chains_too_long_or_deep_to_evaluate_are_refused() {
        let chain = |n: usize| format!("1{}", " + 1".repeat(n));
        assert_eq!(to_text(&compile(&chain(cel_limits::MAX_DEPTH - 1)).unwrap().eval(&scope()).unwrap()), "100");
        let e = parse_template(&format!("x ${{{{ {} }}}}", chain(500))).unwrap_err();
        assert!(e.message.contains("nests more than 100 levels"), "{}", e.message);
        assert_eq!(e.offset, 5);
        let e = compile(&chain(6000)).unwrap_err();
        assert!(e.message.contains("24001 bytes long, more than 4096"), "{}", e.message);
    }

    /// Found by fuzzing (fuzz/seeds/expr/nested-maps): each nested comprehension multiplies
    /// the work, on the host; seven `map`s over ten-element lists took 26 s and 600 MB.
    #[test]
    fn comprehensions_nest_at_most_twice() {
        assert_eq!(ev("event.labels.exists(l, event.labels.exists(m, l != m && l.size() == 1))"), Value::Bool(true));
        assert_eq!(ev("[[1, 2], [3]].map(l, l.filter(x, x > 1)) == [[2], [3]]"), Value::Bool(true));
        // A comprehension over the result of another is not nested in it.
        assert_eq!(ev("[1, 2].map(x, x * 2).map(x, [x].map(y, y + 1)).size()"), Value::Int(2));
        let e = compile("[1, 2].map(a, [1, 2].map(b, [1, 2].map(c, a + b + c)))").unwrap_err();
        assert!(e.message.contains("more than 2 comprehensions"), "{}", e.message);
    }

    #[test]
    fn the_engines_own_names_cannot_be_written() {
        for src in [
            "__gh_hashFiles('/etc', 'passwd')",
            "['/etc'].exists(__workspace, hashFiles('passwd') != '')",
            "__workspace",
            "__ref0",
        ] {
            let e = compile(src).unwrap_err();
            assert!(e.message.contains("names starting with `__` are Skiff's own"), "{src}: {e:?}");
        }
        assert!(compile("hashFiles('**/*.lock') != ''").is_ok());
        assert!(compile("['a'].exists(x, x == 'a')").is_ok());
    }

    #[test]
    fn hash_files_over_matching_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.lock"), "1").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.lock"), "2").unwrap();
        let h = hash_files(dir.path(), &["**/*.lock".into()]).unwrap();
        assert_eq!(h.len(), 64);
        assert_eq!(hash_files(dir.path(), &["*.none".into()]).unwrap(), "");
        let mut sc = scope();
        sc.workspace = dir.path().to_path_buf();
        assert_eq!(to_text(&compile("hashFiles('**/*.lock')").unwrap().eval(&sc).unwrap()), h);
    }
}
