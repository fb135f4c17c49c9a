//! The paths a script may touch through `fs` and `cd`: those under the workspace.
//!
//! A path is resolved against the script's working directory (kept by the script,
//! relative to the workspace) without touching the file system, refused if it is
//! absolute outside `/workspace` or climbs out with `..`, and then every existing
//! component is checked for a symlink that leads out. The WASI preopen is the real
//! boundary (it refuses to follow a link out of the workspace); these checks are
//! here so that a script gets an error that says what happened instead of a bare
//! "operation not permitted".

use std::path::{Path, PathBuf};

/// Where the workspace is for the script: WASI preopens it as `/workspace` (and `.`),
/// and processes see it there too.
pub const WORKSPACE: &str = "/workspace";

/// How many symlinks a path may pass through before it is refused as a loop.
const MAX_LINKS: usize = 40;

/// `path` (relative to `cwd`, a workspace-relative directory, or absolute under
/// `/workspace`) as a normalized workspace-relative path; `""` is the workspace itself.
pub fn resolve(cwd: &str, path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("an empty path names no file".into());
    }
    if path.contains('\0') {
        return Err(format!("path `{}` contains a NUL character", path.escape_default()));
    }
    let (base, rest) = if let Some(abs) = path.strip_prefix('/') {
        match abs.strip_prefix(&WORKSPACE[1..]) {
            Some(r) if r.is_empty() || r.starts_with('/') => ("", r),
            _ => {
                return Err(format!(
                    "`{path}` is outside the workspace: a script reaches only files under {WORKSPACE} \
                     (or paths relative to it)"
                ));
            }
        }
    } else {
        (cwd, path)
    };
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!(
                        "`{path}` leads out of the workspace: a script reaches only files under {WORKSPACE}"
                    ));
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Checks that following the symlinks along workspace-relative `rel` (under `root`, the
/// workspace as this process sees it) stays inside the workspace.
pub fn check_links(root: &Path, rel: &str, shown: &str) -> Result<(), String> {
    let mut pending: Vec<String> = rel.split('/').filter(|p| !p.is_empty()).rev().map(String::from).collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            if done.pop().is_none() {
                return Err(escape(shown));
            }
            continue;
        }
        done.push(part);
        let here: PathBuf = root.join(done.join("/"));
        let Ok(meta) = std::fs::symlink_metadata(&here) else {
            // What does not exist yet cannot lead anywhere; creating it happens inside.
            continue;
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(format!("`{shown}` passes through too many symlinks (a loop?)"));
        }
        // WASI refuses to read a link whose target is absolute or climbs out of the preopen:
        // that refusal is itself the answer.
        let target = std::fs::read_link(&here).map_err(|_| escape(shown))?;
        let target = target.to_string_lossy().into_owned();
        done.pop();
        let mut next: Vec<String> = if let Some(abs) = target.strip_prefix('/') {
            match abs.strip_prefix(&WORKSPACE[1..]) {
                Some(r) if r.is_empty() || r.starts_with('/') => {
                    done.clear();
                    r.split('/').filter(|p| !p.is_empty()).map(String::from).collect()
                }
                _ => return Err(escape(shown)),
            }
        } else {
            target.split('/').filter(|p| !p.is_empty() && *p != ".").map(String::from).collect()
        };
        next.reverse();
        pending.extend(next);
    }
    Ok(())
}

fn escape(shown: &str) -> String {
    format!(
        "`{shown}` goes through a symlink that leads out of the workspace: a script reaches only files under {WORKSPACE}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_inside_the_workspace() {
        assert_eq!(resolve("", "a/b.txt").unwrap(), "a/b.txt");
        assert_eq!(resolve("sub", "./x/../y").unwrap(), "sub/y");
        assert_eq!(resolve("sub", "..").unwrap(), "");
        assert_eq!(resolve("sub/dir", "/workspace/z").unwrap(), "z");
        assert_eq!(resolve("", "/workspace").unwrap(), "");
        assert_eq!(resolve("", ".").unwrap(), "");
        assert_eq!(resolve("", "a//b/").unwrap(), "a/b");
    }

    #[test]
    fn refuses_ways_out() {
        for (cwd, p) in [("", "../x"), ("a", "../../x"), ("", "/etc/passwd"), ("", "/workspacex/y"), ("", "/")] {
            let e = resolve(cwd, p).unwrap_err();
            assert!(e.contains("workspace"), "{p}: {e}");
        }
        assert!(resolve("", "").is_err());
        assert!(resolve("", "a\0b").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn refuses_symlinks_out_and_follows_those_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/inner")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("real/up")).unwrap();
        std::os::unix::fs::symlink("inner", root.join("real/in")).unwrap();
        std::os::unix::fs::symlink("/workspace/real", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();

        assert!(check_links(root, "etc/passwd", "etc/passwd").unwrap_err().contains("symlink"));
        assert!(check_links(root, "etc", "etc").is_err());
        assert!(check_links(root, "real/up/x", "real/up/x").is_err());
        assert!(check_links(root, "loop", "loop").unwrap_err().contains("too many"));
        check_links(root, "real/in/file", "real/in/file").unwrap();
        check_links(root, "abs/in", "abs/in").unwrap();
        check_links(root, "new/dir/file", "new/dir/file").unwrap();
    }
}
