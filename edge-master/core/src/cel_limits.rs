//! What a CEL expression may cost, for webhook filters and pipeline expressions alike: both
//! run on the host (or the edge), outside any step's limits.

use cel::IdedExpr;
use cel::common::ast::{EntryExpr, Expr};

/// How long an expression may be. The parser recurses once per operator of a chain
/// (`1 + 1 + … + 1`): about 5,000 of them overflowed a 2 MiB thread stack and aborted the
/// process.
pub const MAX_SOURCE_BYTES: usize = 4096;

/// How deep a syntax tree may nest. The parser bounds its own recursion, but not chains of
/// operators, which evaluation walks recursively: about 1,500 links overflowed a 2 MiB stack.
pub const MAX_DEPTH: usize = 100;

/// How many comprehensions (`map`, `filter`, `exists`, `all`, …) may run inside one another.
/// Each multiplies the work: seven `map`s over ten-element lists, 228 bytes, took 26 s and
/// 600 MB.
pub const MAX_LOOP_NESTING: usize = 2;

/// Why `source` is too long to parse safely, if it is.
///
/// ```
/// assert!(skiff_edge_core::cel_limits::too_long("1 + 1").is_none());
/// assert!(skiff_edge_core::cel_limits::too_long(&"1 + ".repeat(2000)).is_some());
/// ```
pub fn too_long(source: &str) -> Option<String> {
    (source.len() > MAX_SOURCE_BYTES)
        .then(|| format!("it is {} bytes long, more than {MAX_SOURCE_BYTES}", source.len()))
}

/// Why a parsed expression would cost too much to evaluate, if it would: nesting deeper than
/// [`MAX_DEPTH`], or comprehensions inside one another more than [`MAX_LOOP_NESTING`] times.
pub fn too_costly(ast: &IdedExpr) -> Option<String> {
    if nests_deeper(ast, MAX_DEPTH) {
        return Some(format!("it nests more than {MAX_DEPTH} levels deep"));
    }
    (loop_nesting(ast) > MAX_LOOP_NESTING).then(|| {
        format!("it runs more than {MAX_LOOP_NESTING} comprehensions (`map`, `filter`, `exists`, …) inside one another")
    })
}

/// The expressions right under `e`, each with whether it runs once per iteration of `e`.
pub fn children(e: &IdedExpr) -> Vec<(&IdedExpr, bool)> {
    fn entries(entries: &[cel::common::ast::IdedEntryExpr]) -> Vec<(&IdedExpr, bool)> {
        entries
            .iter()
            .flat_map(|en| match &en.expr {
                EntryExpr::MapEntry(me) => vec![(&me.key, false), (&me.value, false)],
                EntryExpr::StructField(f) => vec![(&f.value, false)],
            })
            .collect()
    }
    match &e.expr {
        Expr::Call(c) => c.target.iter().map(|t| &**t).chain(&c.args).map(|a| (a, false)).collect(),
        Expr::Select(s) => vec![(&*s.operand, false)],
        Expr::List(l) => l.elements.iter().map(|x| (x, false)).collect(),
        Expr::Map(m) => entries(&m.entries),
        Expr::Struct(s) => entries(&s.entries),
        Expr::Comprehension(c) => vec![
            (&c.iter_range, false),
            (&c.accu_init, false),
            (&c.loop_cond, true),
            (&c.loop_step, true),
            (&c.result, false),
        ],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

/// Whether the tree under `e` is more than `limit` levels deep (recursing at most `limit`
/// levels itself).
fn nests_deeper(e: &IdedExpr, limit: usize) -> bool {
    let Some(limit) = limit.checked_sub(1) else { return true };
    children(e).into_iter().any(|(c, _)| nests_deeper(c, limit))
}

/// How many comprehensions run inside one another under `e` (for trees checked by
/// [`nests_deeper`]).
fn loop_nesting(e: &IdedExpr) -> usize {
    children(e).into_iter().map(|(c, per_iteration)| loop_nesting(c) + usize::from(per_iteration)).max().unwrap_or(0)
}
