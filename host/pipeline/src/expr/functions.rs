//! The GitHub-compatible functions (`contains`, `format`, `hashFiles`, `success()`, …) and
//! the `__get` that makes a missing key `''`: the CEL functions compiled expressions call.

use std::path::{Path, PathBuf};

use cel::extractors::Arguments;
use cel::objects::Key;
use cel::{Context, ExecutionError, Value};

use super::env;
use super::values::{cel_to_json, json_to_cel, s, to_text};

thread_local! {
    /// The context every evaluation starts from, with the functions registered; built once
    /// per thread.
    pub(super) static ROOT: Context<'static, 'static> = root_context();
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
    use super::super::compile;
    use super::super::testing::{ev, scope};
    use super::*;

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
