//! What expressions and `needs:` refer to: each `${{ }}` compiled and its contexts, steps,
//! jobs, matrix keys and secrets checked where it is written; jobs' `needs` checked and
//! ordered.

use std::collections::{BTreeMap, BTreeSet};

use super::{Cx, did_you_mean};
use crate::expr::{self, CONTEXTS, Expr, ExprError};
use crate::model::{JobDef, OneOrMany, Text};
use crate::plan::{Cond, Value};
use crate::source::{Pos, Seg, YPath};

/// What an expression may refer to where it is written.
pub(super) struct Refs<'a> {
    pub(super) needs: &'a [String],
    /// Ids of the steps before this one; `None` where `steps` is not available.
    pub(super) steps: Option<&'a [String]>,
    pub(super) matrix: &'a BTreeSet<String>,
    pub(super) secrets: &'a mut BTreeSet<String>,
}

const CEL_TYPES: &[&str] = &["int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"];

pub(super) fn check_expr(cx: &mut Cx, e: &Expr, pos: Pos, refs: &mut Refs) {
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

pub(super) fn expr_error(cx: &mut Cx, path: &[Seg], text: &str, e: ExprError) {
    let pos = cx.map.inside(path, text, e.offset);
    cx.err(pos, format!("invalid expression: {}", e.message));
}

pub(super) fn value(cx: &mut Cx, path: &[Seg], text: &str, refs: &mut Refs) -> Value {
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

pub(super) fn values(
    cx: &mut Cx,
    path: &YPath,
    m: &BTreeMap<String, Text>,
    refs: &mut Refs,
) -> BTreeMap<String, Value> {
    m.iter()
        .map(|(k, v)| {
            let mut p = path.clone();
            p.push(Seg::Key(k.clone()));
            (k.clone(), value(cx, &p, v.as_str(), refs))
        })
        .collect()
}

pub(super) fn cond(cx: &mut Cx, path: &[Seg], text: &str, refs: &mut Refs) -> Option<Cond> {
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

/// Each job's `needs`, checked (unknown jobs, a job that needs itself), and the job ids in an
/// order where each comes after what it needs. On a cycle, the cycle is reported and the ids
/// keep the order of `jobs`.
pub(super) fn job_needs(cx: &mut Cx, jobs: &[(String, JobDef, YPath)]) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
    let ids: Vec<String> = jobs.iter().map(|(id, ..)| id.clone()).collect();
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, j, p) in jobs {
        let mut needs = Vec::new();
        for (i, n) in j.needs.as_ref().map(|n| n.to_vec()).unwrap_or_default().into_iter().enumerate() {
            let mut np = p.clone();
            np.push(Seg::Key("needs".into()));
            if matches!(j.needs, Some(OneOrMany::Many(_))) {
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
    (deps, order)
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
