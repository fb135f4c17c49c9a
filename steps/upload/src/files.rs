//! Which workspace files a `source` names, and their content types.

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

/// A source must stay in the workspace.
pub fn check_inside(source: &str) -> Result<(), String> {
    let p = Path::new(source.trim_start_matches("/workspace/"));
    if p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("source `{source}` must be a path inside the workspace"));
    }
    Ok(())
}

/// The content type for a file name.
pub fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" | "md" | "log" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        _ => "application/octet-stream",
    }
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
    fn sources_stay_inside_and_types_follow_extensions() {
        assert!(check_inside("../etc").is_err() && check_inside("/etc/passwd").is_err());
        assert!(check_inside("dist/app.js").is_ok());
        assert_eq!(content_type("index.HTML"), "text/html; charset=utf-8");
        assert_eq!(content_type("blob"), "application/octet-stream");
    }
}
