//! Compiling: `${{ }}` templates split into text and expressions, each expression parsed,
//! held to CEL's limits, its references collected and its AST rewritten once for evaluation.

use cel::common::ast::{CallExpr, Expr as Ast, IdedExpr, LiteralValue, operators};
use cel::common::types::CelString;
use skiff_edge_core::cel_limits;

use super::{CONTEXTS, Expr, ExprError, FUNCTIONS, Segment, Template, env};

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
    let github = github_names(trimmed);
    let ast = env().parser().parse(&github).map_err(|e| ExprError {
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

/// GitHub's property names may hold `-` (`steps.cache.outputs.cache-hit`, as actions/cache
/// documents it); CEL's may not. After a `.`, a name that goes on with `-` and a letter or `_`
/// becomes an index, `["cache-hit"]`. Anywhere else (`a - b`, `x.n-1`) `-` stays minus, and
/// string literals are left alone.
fn github_names(src: &str) -> std::borrow::Cow<'_, str> {
    let b = src.as_bytes();
    let name_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let starts_name = |c: u8| c.is_ascii_alphabetic() || c == b'_';
    // Fast path: nothing to rewrite without a `-` between two name characters.
    if !b.windows(3).any(|w| name_char(w[0]) && w[1] == b'-' && starts_name(w[2])) {
        return std::borrow::Cow::Borrowed(src);
    }
    let mut out = String::with_capacity(src.len() + 8);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' || c == b'"' {
            // A string literal, to its closing quote (raw or triple-quoted forms included).
            let start = i;
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
            out.push_str(&src[start..i]);
            continue;
        }
        if c == b'.' && i + 1 < b.len() && starts_name(b[i + 1]) {
            let start = i + 1;
            let mut j = start;
            while j < b.len() && (name_char(b[j]) || (b[j] == b'-' && j + 1 < b.len() && starts_name(b[j + 1]))) {
                j += 1;
            }
            let name = &src[start..j];
            if name.contains('-') {
                out.push_str("[\"");
                out.push_str(name);
                out.push_str("\"]");
            } else {
                out.push('.');
                out.push_str(name);
            }
            i = j;
            continue;
        }
        out.push(c as char);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
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

#[cfg(test)]
mod tests {
    use super::super::testing::{ev, scope};
    use super::super::to_text;
    use super::*;
    use cel::Value;

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

    #[test]
    fn github_names_may_hold_hyphens_after_a_dot() {
        assert_eq!(github_names("steps.cache.outputs.cache-hit"), r#"steps.cache.outputs["cache-hit"]"#);
        assert_eq!(github_names("steps.a-b.outputs.x-y == 'x.a-b'"), r#"steps["a-b"].outputs["x-y"] == 'x.a-b'"#);
        assert_eq!(github_names("a-b"), "a-b", "bare names: minus");
        assert_eq!(github_names("matrix.n-1 + x.y - z"), "matrix.n-1 + x.y - z", "minus a number, or with spaces");
        assert_eq!(github_names(r#"format("{0}.a-b", x)"#), r#"format("{0}.a-b", x)"#);
        let e = compile("steps.cache.outputs.cache-hit == 'true'").unwrap();
        assert_eq!(e.refs, vec![vec!["steps", "cache", "outputs", "cache-hit"]]);
        assert_eq!(e.source, "steps.cache.outputs.cache-hit == 'true'", "messages show what was written");
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
}
