//! `strategy.matrix`: axes, `exclude` and `include` expanded into the job's combinations,
//! within limits.

use std::collections::BTreeMap;

use super::Cx;
use crate::model::JobDef;
use crate::source::{Seg, YPath};

/// The most jobs one matrix may make (GitHub's limit), and the most combinations of its axes
/// before `exclude`: a few lines of axes must not make the loader allocate without end.
const MAX_MATRIX_JOBS: usize = 256;
const MAX_MATRIX_COMBINATIONS: usize = 4096;

pub(super) fn expand_matrix(cx: &mut Cx, j: &JobDef, p: &YPath) -> Vec<BTreeMap<String, serde_json::Value>> {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::load_str;

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
}
