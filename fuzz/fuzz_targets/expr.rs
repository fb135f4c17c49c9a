//! Expressions: `${{ }}` templates, bare expressions and `if:` conditions, compiled and
//! evaluated with arbitrary contexts and GitHub's helper functions.
//!
//! Input, in NUL-separated parts: the source text, the contexts (a JSON object whose keys are
//! context names: `event`, `steps`, `matrix`, …), and a byte whose low bits say whether an
//! earlier step failed or the run was cancelled.
//!
//! Nothing may panic, and error offsets must fall inside the text.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use skiff_pipeline::expr::{self, CONTEXTS, Scope};

/// An empty workspace for `hashFiles`, so that it reads nothing.
static WORKSPACE: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("skiff-fuzz-expr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    dir
});

fuzz_target!(|data: &[u8]| {
    let p = skiff_fuzz::parts(data, 3);
    let Ok(source) = std::str::from_utf8(p[0]) else { return };
    let chars = source.chars().count();

    let mut scope = Scope { workspace: WORKSPACE.clone(), ..Scope::default() };
    if let Some(serde_json::Value::Object(contexts)) = p.get(1).and_then(|c| serde_json::from_slice(c).ok()) {
        for name in CONTEXTS {
            if let Some(v) = contexts.get(*name) {
                scope.set_json(name, v);
                // The value as CEL and back: every JSON value converts.
                let _ = expr::cel_to_json(&expr::json_to_cel(v));
            }
        }
    }
    let flags = p.get(2).and_then(|f| f.first()).copied().unwrap_or(0);
    scope.failed = flags & 1 != 0;
    scope.cancelled = flags & 2 != 0;

    match expr::parse_template(source) {
        Ok(template) => {
            let _ = template.is_literal();
            for e in template.exprs() {
                assert!(e.offset <= chars, "offset {} past the end ({chars} chars)", e.offset);
                let _ = e.has_status_call();
            }
            if let Ok(text) = template.render(&scope) {
                let _ = text.len();
            }
        }
        Err(e) => assert!(e.offset <= chars, "offset {} past the end ({chars} chars)", e.offset),
    }
    match expr::compile(source) {
        Ok(e) => {
            if let Ok(v) = e.eval(&scope) {
                let _ = (expr::to_text(&v), expr::truthy(&v), expr::cel_to_json(&v));
            }
            let _ = e.eval_bool(&scope);
        }
        Err(e) => assert!(e.offset <= chars),
    }
    match expr::compile_condition(source) {
        Ok(e) => {
            let _ = e.eval_bool(&scope);
        }
        Err(e) => assert!(e.offset <= chars, "offset {} past the end ({chars} chars)", e.offset),
    }
});
