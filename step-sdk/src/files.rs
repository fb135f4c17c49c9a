//! Workspace paths as steps name them: globs, and the rule that a path stays inside.
//!
//! ```
//! use skiff_step_sdk::files::{check_inside, glob_match};
//! assert!(glob_match("dist/**/*.js", "dist/a/b.js"));
//! assert!(check_inside("../etc/passwd").is_err());
//! ```

use std::path::{Component, Path};

/// Matches `path` (with `/`) against a glob: `*` and `?` within a segment, `**` across segments.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn seg(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => seg(&p[1..], s) || (!s.is_empty() && seg(p, &s[1..])),
            (Some(b'?'), Some(_)) => seg(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => seg(&p[1..], &s[1..]),
            _ => false,
        }
    }
    fn parts(p: &[&str], s: &[&str]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(&"**"), _) => parts(&p[1..], s) || (!s.is_empty() && parts(p, &s[1..])),
            (Some(a), Some(b)) if seg(a.as_bytes(), b.as_bytes()) => parts(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.trim_start_matches("./").split('/').filter(|x| !x.is_empty()).collect();
    let s: Vec<&str> = path.split('/').filter(|x| !x.is_empty()).collect();
    parts(&p, &s)
}

/// A path a step was given must stay in the workspace: not absolute (`/workspace/…` aside), no `..`.
pub fn check_inside(source: &str) -> Result<(), String> {
    let p = Path::new(source.trim_start_matches("/workspace/"));
    if p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("`{source}` must be a path inside the workspace"));
    }
    Ok(())
}

/// Calls `f` with every regular file under `dir` (as `dir/…`, or bare names for `.`), in name
/// order, descending into folders. Symbolic links are not followed.
pub fn walk(dir: &str, f: &mut dyn FnMut(&str)) -> std::io::Result<()> {
    walk_in(std::path::Path::new("."), dir, &|_| false, f)
}

/// [`walk`] under `root`: paths are relative to `root` (`dir` `""` or `.` is its top), and a
/// folder whose name `skip` accepts is not entered (a tool's own state, as wrangler's
/// `.wrangler`). Entries come in name order, as libuv's scandir lists them.
pub fn walk_in(
    root: &std::path::Path,
    dir: &str,
    skip: &dyn Fn(&str) -> bool,
    f: &mut dyn FnMut(&str),
) -> std::io::Result<()> {
    let dir = if dir == "." { "" } else { dir.trim_end_matches('/') };
    let full = if dir.is_empty() { root.to_path_buf() } else { root.join(dir) };
    let mut entries: Vec<_> = std::fs::read_dir(full)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e.file_type()?;
        let rel = if dir.is_empty() { name.clone() } else { format!("{dir}/{name}") };
        if ft.is_dir() {
            if !skip(&name) {
                walk_in(root, &rel, skip, f)?;
            }
        } else if ft.is_file() {
            f(&rel);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_within_and_across_folders() {
        assert!(glob_match("dist/*.js", "dist/app.js"));
        assert!(!glob_match("dist/*.js", "dist/sub/app.js"));
        assert!(glob_match("dist/**/*.js", "dist/sub/deep/app.js"));
        assert!(glob_match("**/*.txt", "a.txt"));
        assert!(glob_match("./out/?.bin", "out/a.bin"));
        assert!(!glob_match("*.md", "README.txt"));
    }

    #[test]
    fn paths_stay_inside() {
        assert!(check_inside("../etc").is_err() && check_inside("/etc/passwd").is_err());
        assert!(check_inside("a/../../b").is_err());
        assert!(check_inside("dist/app.js").is_ok() && check_inside("/workspace/dist").is_ok());
    }
}
