//! `checkout`: puts the triggering commit in the workspace.
//!
//! `mode: archive` (the default) is pure Wasm: it downloads the commit's
//! archive from the forge's API (GitHub, GitLab, Gitee, Gitea/Forgejo), checks
//! its sha256 when one is given, and unpacks it with every entry checked
//! ([`extract`]). `mode: git` runs `git` in the process sandbox for a shallow
//! fetch of the one commit, passing the token in the environment so that it
//! is never written to `.git/config`.

pub mod extract;
pub mod source;

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};
use skiff_step_sdk::http::Request;
use skiff_step_sdk::process::{Command, Exit};
use skiff_step_sdk::{Context, Manifest, Outputs, Step, StepError, info, warn};

use extract::{Format, Limits, Strip};
use source::Forge;

struct Checkout;

fn invalid(m: impl Into<String>) -> StepError {
    StepError::InvalidInput(m.into())
}

fn event_str(ev: &Value, path: &[&str]) -> Option<String> {
    let mut v = ev;
    for p in path {
        v = v.get(p)?;
    }
    v.as_str().filter(|s| !s.is_empty()).map(String::from)
}

fn number(ctx: &Context, name: &str, default: u64) -> Result<u64, StepError> {
    match ctx.input(name).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| invalid(format!("input `{name}` must be a whole number, not `{v}`"))),
    }
}

/// The token: from the secret named by `token-secret`, or the `token` input.
fn token(ctx: &Context) -> Result<Option<String>, StepError> {
    match ctx.input("token-secret").filter(|s| !s.is_empty()) {
        Some(name) => skiff_step_sdk::secret(name).map(Some).ok_or_else(|| {
            StepError::Denied(format!(
                "secret `{name}` (input `token-secret`) was not granted: add it to `permissions.secrets`"
            ))
        }),
        None => Ok(ctx.input("token").filter(|s| !s.is_empty()).map(String::from)),
    }
}

/// The destination folder, relative to the workspace, checked for escapes.
fn dest(ctx: &Context) -> Result<std::path::PathBuf, StepError> {
    let p = ctx.input_or("path", ".");
    let mut out = std::path::PathBuf::from(".");
    for c in std::path::Path::new(p).components() {
        match c {
            std::path::Component::Normal(x) => out.push(x),
            std::path::Component::CurDir => {}
            _ => return Err(invalid(format!("input `path` must stay inside the workspace, not `{p}`"))),
        }
    }
    Ok(out)
}

fn archive(ctx: &Context, ev: &Value, repo: &str, rev: &str) -> Result<Outputs, StepError> {
    let provider =
        ctx.input("provider").filter(|s| !s.is_empty()).map(String::from).or_else(|| event_str(ev, &["provider"]));
    let forge = Forge::parse(provider.as_deref().unwrap_or("github")).map_err(invalid)?;
    let api = ctx
        .input("api-url")
        .or(ctx.input("server"))
        .filter(|s| !s.is_empty())
        .or(forge.default_api())
        .ok_or_else(|| invalid("input `server` is required for Gitea/Forgejo: the instance's URL"))?
        .to_string();
    let zip = matches!(ctx.input_or("format", "tar.gz"), "zip");
    let token = token(ctx)?;
    let limits = Limits {
        total_bytes: number(ctx, "max-bytes", Limits::default().total_bytes)?,
        files: number(ctx, "max-files", Limits::default().files)?,
        file_bytes: number(ctx, "max-file-bytes", Limits::default().file_bytes)?,
        ratio: number(ctx, "max-ratio", Limits::default().ratio)?,
    };
    let (mut url, mut headers) = source::archive_request(forge, &api, repo, rev, zip, token.as_deref());
    let first_origin = source::origin(&url).to_string();
    let mut hops = 0;
    let resp = loop {
        let mut req = Request::get(&url).max_response_bytes(limits.total_bytes);
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        let resp = req.send()?;
        if matches!(resp.status, 301 | 302 | 303 | 307 | 308) && hops < 5 {
            let Some(loc) = resp.header("location") else { break resp };
            url = if loc.starts_with('/') { format!("{}{loc}", source::origin(&url)) } else { loc.to_string() };
            // Never hand the token to another host (GitHub redirects to codeload with a signed URL).
            if source::origin(&url) != first_origin {
                headers.retain(|(k, _)| k != "authorization" && k != "private-token");
            }
            hops += 1;
            continue;
        }
        break resp;
    };
    if resp.status >= 400 {
        let hint = match resp.status {
            401 | 403 => " (is the token granted and allowed to read the repository?)",
            404 => " (check `repo` and `sha`; a private repository needs a token)",
            _ => "",
        };
        return Err(StepError::failed(format!(
            "downloading the archive of `{repo}` at `{rev}` failed: HTTP {}{hint}",
            resp.status
        )));
    }
    let digest = hex::encode(Sha256::digest(&resp.body));
    if let Some(want) = ctx.input("sha256").filter(|s| !s.is_empty())
        && !want.trim().eq_ignore_ascii_case(&digest)
    {
        return Err(StepError::failed(format!(
            "the archive's sha256 is {digest}, not the expected {want}; refusing it"
        )));
    }
    let format = Format::sniff(&resp.body).ok_or_else(|| {
        StepError::failed("the forge answered with something that is not a tar.gz, tar or zip archive")
    })?;
    let strip = match ctx.input_or("strip", "auto") {
        "auto" => Strip::Auto,
        "true" | "yes" | "1" => Strip::Yes,
        "false" | "no" | "0" => Strip::No,
        other => return Err(invalid(format!("input `strip` is `{other}`; use auto, true or false"))),
    };
    let dest = dest(ctx)?;
    std::fs::create_dir_all(&dest).map_err(|e| StepError::failed(format!("creating `{}`: {e}", dest.display())))?;
    let stats = extract::extract(&resp.body, format, &dest, strip, limits).map_err(StepError::Failed)?;
    for l in &stats.skipped_links {
        warn!("skipped link `{l}`: links inside the tree are not created in archive mode (use `mode: git`)");
    }
    info!("checked out {repo}@{rev}: {} files, {} bytes", stats.files, stats.bytes);
    Ok(Outputs::new()
        .set("sha", rev)
        .set("files", stats.files.to_string())
        .set("bytes", stats.bytes.to_string())
        .set("archive-sha256", digest)
        .set("path", dest.display().to_string()))
}

fn git(args: &[&str], dest: &str, env: &[(String, String)], capture: bool) -> Result<Vec<u8>, StepError> {
    let mut cmd = Command::new("git").args(args.iter().copied()).cwd(dest);
    for (k, v) in env {
        cmd = cmd.env(k.clone(), v.clone());
    }
    if capture {
        cmd = cmd.capture(1 << 16);
    } else {
        cmd = cmd.log_and_capture(1 << 14);
    }
    let out = cmd.run().map_err(|e| match e {
        skiff_step_sdk::process::Error::Denied(m) => StepError::Denied(m),
        other => StepError::failed(format!("running git: {other}")),
    })?;
    match out.exit {
        Exit::Code(0) => Ok(out.stdout),
        other => Err(StepError::failed(format!(
            "`git {}` failed ({other:?}): {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

fn git_mode(ctx: &Context, ev: &Value, rev: &str) -> Result<Outputs, StepError> {
    let url = ctx
        .input("clone-url")
        .filter(|s| !s.is_empty())
        .map(String::from)
        .or_else(|| event_str(ev, &["repository", "clone_url"]))
        .ok_or_else(|| {
            invalid("input `clone-url` is required in git mode when the event has no repository.clone_url")
        })?;
    if url.contains('@')
        && url.contains("://")
        && url.split("://").nth(1).is_some_and(|r| r.split('/').next().unwrap_or("").contains('@'))
    {
        return Err(invalid("input `clone-url` must not carry credentials: grant a token with `token-secret`"));
    }
    let dest = dest(ctx)?;
    std::fs::create_dir_all(&dest).map_err(|e| StepError::failed(format!("creating `{}`: {e}", dest.display())))?;
    let dest = dest.display().to_string();
    let mut env = vec![
        ("PATH".to_string(), "/usr/local/bin:/usr/bin:/bin".to_string()),
        ("HOME".into(), "/tmp".into()),
        ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
    ];
    if let Some(t) = token(ctx)? {
        // In the environment only: git reads GIT_CONFIG_* per command and never writes them out.
        let user = ctx.input_or("token-user", "x-access-token");
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{t}"));
        env.push(("GIT_CONFIG_COUNT".into(), "1".into()));
        env.push(("GIT_CONFIG_KEY_0".into(), "http.extraheader".into()));
        env.push(("GIT_CONFIG_VALUE_0".into(), format!("Authorization: Basic {basic}")));
    }
    git(&["init", "-q"], &dest, &env, false)?;
    git(&["remote", "add", "origin", &url], &dest, &env, false)?;
    git(&["fetch", "-q", "--no-tags", "--depth", "1", "origin", rev], &dest, &env, false)?;
    git(&["checkout", "-q", "--detach", "FETCH_HEAD"], &dest, &env, false)?;
    let head = String::from_utf8_lossy(&git(&["rev-parse", "HEAD"], &dest, &env, true)?).trim().to_string();
    info!("checked out {url} at {head}");
    Ok(Outputs::new().set("sha", head).set("path", dest))
}

impl Step for Checkout {
    fn describe() -> Manifest {
        Manifest::new(
            "checkout",
            "Puts the triggering commit in the workspace: a forge archive (pure Wasm) or a shallow git fetch.",
        )
        .input("mode", "archive (download and unpack, no processes) or git (needs `process`)", false, Some("archive"))
        .input("provider", "github, gitlab, gitee, gitea or forgejo (default: the event's provider)", false, None)
        .input("repo", "owner/name, or a GitLab project path or id (default: the event's repository)", false, None)
        .input("sha", "The commit (default: the event's `after`)", false, None)
        .input("ref", "A ref to check out when there is no sha", false, None)
        .input(
            "api-url",
            "The forge API's base URL (default per provider; for tests, http://127.0.0.1:PORT)",
            false,
            None,
        )
        .input("server", "Same as `api-url` (Gitea/Forgejo instance URL)", false, None)
        .input("token-secret", "Name of a granted secret holding the access token", false, None)
        .input("token", "The token itself (Serverless-cd style; prefer `token-secret`)", false, None)
        .input("token-user", "git mode: the user name sent with the token", false, Some("x-access-token"))
        .input("format", "tar.gz or zip", false, Some("tar.gz"))
        .input("sha256", "Expected sha256 of the archive", false, None)
        .input("strip", "Drop the top-level folder: auto, true or false", false, Some("auto"))
        .input("path", "Folder in the workspace to check out into", false, Some("."))
        .input("clone-url", "git mode: the URL to fetch (default: the event's clone_url)", false, None)
        .input("max-bytes", "Largest total size unpacked", false, Some("2147483648"))
        .input("max-files", "Most entries", false, Some("200000"))
        .input("max-file-bytes", "Largest single file", false, Some("536870912"))
        .input("max-ratio", "Largest unpacked/compressed ratio", false, Some("200"))
        .output("sha", "The commit checked out")
        .output("path", "Where it was put")
        .output("files", "archive mode: files written")
        .output("bytes", "archive mode: bytes written")
        .output("archive-sha256", "archive mode: the archive's sha256")
        .host("${inputs.api-url}")
        .host("${inputs.server}")
    }

    fn run(ctx: Context) -> Result<Outputs, StepError> {
        let ev = ctx.event();
        let rev = ctx
            .input("sha")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .or_else(|| event_str(&ev, &["after"]))
            .or_else(|| event_str(&ev, &["sha"]))
            .or_else(|| ctx.input("ref").filter(|s| !s.is_empty()).map(String::from))
            .or_else(|| event_str(&ev, &["ref"]))
            .ok_or_else(|| invalid("input `sha` is required when the run has no triggering event"))?;
        if rev.starts_with('-') || (rev.contains(['/', '?', '#', ' ']) && !rev.starts_with("refs/")) {
            return Err(invalid(format!("`{rev}` is not a commit sha or ref")));
        }
        match ctx.input_or("mode", "archive") {
            "archive" => {
                let repo = ctx
                    .input("repo")
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .or_else(|| event_str(&ev, &["repository", "full_name"]))
                    .ok_or_else(|| invalid("input `repo` is required when the event has no repository"))?;
                if repo.split('/').any(|p| p == ".." || p.is_empty()) {
                    return Err(invalid(format!("input `repo` is `{repo}`; write owner/name")));
                }
                archive(&ctx, &ev, &repo, &rev)
            }
            "git" => git_mode(&ctx, &ev, &rev),
            other => Err(invalid(format!("input `mode` is `{other}`; use archive or git"))),
        }
    }
}

skiff_step_sdk::export!(Checkout);
