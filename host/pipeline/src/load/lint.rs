//! The YAML-level pass: unknown keys (with a suggestion) and wrong types, each reported at its
//! position and taken out, so the model can be read and checked further.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_norway::Value as Y;

use super::{Cx, did_you_mean};
use crate::model::PipelineDef;
use crate::source::{Seg, YPath};
use crate::ypath;

/// The keys a type accepts, from its JSON Schema (so the types stay the only list).
fn keys_of(def: &str) -> &'static [String] {
    static KEYS: OnceLock<BTreeMap<String, Vec<String>>> = OnceLock::new();
    let all = KEYS.get_or_init(|| {
        let schema = crate::schema::schema();
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

pub(super) fn check_keys(cx: &mut Cx, root: &mut Y) {
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

/// Deserializes, reporting each wrong type at its position and retrying without it.
pub(super) fn typed(cx: &mut Cx, mut value: Y) -> Option<PipelineDef> {
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
