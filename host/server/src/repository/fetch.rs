//! The commit a run builds, fetched by the host before anything runs.
//!
//! Each repository has an object cache on the host (a bare repository under the data folder),
//! so a second run fetches only new objects. The fetch is git in the process sandbox: its one
//! way out is the egress proxy, open to the repository's host alone, and the credential reaches
//! git through its environment (an HTTP header, or an SSH key file that is removed afterwards),
//! never a config file, the workspace's `.git` or a log line. The checkout is local: the
//! cache's objects are hard-linked into the workspace's own `.git`, so the workspace is a
//! self-contained repository that steps' tools (`git describe`, …) can use inside their sandbox.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_sandbox::{Capture, Egress, Exit, SandboxSpec};
use tokio_util::sync::CancellationToken;

use skiff_runtime::capabilities::egress::{self, Destinations, EgressProxy};
use skiff_runtime::capabilities::http::Allowlist;

/// A fetch (or a submodule update) takes at most this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// A pipeline file read from a commit is at most this large.
const MAX_PIPELINE_BYTES: usize = 1 << 20;
/// Inside the fetch's sandbox, the cache is the workspace.
const CA_FILE: &str = "skiff-ca.pem";
const KEY_FILE: &str = "skiff-deploy-key";

/// A repository's address, checked: `https://`, `http://`, `git://`, `ssh://` or scp-style
/// `user@host:path`, with no credential inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    url: String,
    scheme: &'static str,
    host: String,
    port: u16,
}

impl Remote {
    /// Parses and checks a clone URL. The error says what to write instead.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if url.is_empty() || url.starts_with('-') || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("`{url}` is not a clone URL: write https://host/owner/name.git"));
        }
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => {
                // scp style: user@host:path
                let Some((authority, path)) = url.split_once(':') else {
                    return Err(format!("`{url}` is not a clone URL: write https://host/owner/name.git"));
                };
                let host = authority.rsplit('@').next().unwrap_or("");
                if !authority.contains('@')
                    || host.is_empty()
                    || path.is_empty()
                    || path.starts_with('/') && path.len() < 2
                {
                    return Err(format!("`{url}` is not a clone URL: write ssh://git@host/owner/name.git"));
                }
                return Ok(Remote { url: url.into(), scheme: "ssh", host: host.to_ascii_lowercase(), port: 22 });
            }
        };
        let (scheme, default_port): (&'static str, u16) = match scheme.as_str() {
            "https" => ("https", 443),
            "http" => ("http", 80),
            "git" => ("git", 9418),
            "ssh" => ("ssh", 22),
            other => {
                return Err(format!(
                    "clone URLs with `{other}://` are not fetched: use https://, http://, git:// or ssh://"
                ));
            }
        };
        let authority = rest.split('/').next().unwrap_or("");
        if rest.len() <= authority.len() + 1 {
            return Err(format!("`{url}` names no repository path: write {scheme}://host/owner/name.git"));
        }
        let host_port = match authority.rsplit_once('@') {
            Some((user, hp)) => {
                if scheme != "ssh" || user.contains(':') {
                    return Err(format!(
                        "the clone URL `{scheme}://…@{hp}/…` carries a credential: put the token in the app's \
                         `secrets` and name it in `clone-credential`"
                    ));
                }
                hp
            }
            None => authority,
        };
        let (host, port) = if let Some(r) = host_port.strip_prefix('[') {
            let (h, after) = r.split_once(']').ok_or_else(|| format!("`{url}`: an IPv6 address needs a `]`"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match host_port.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (host_port.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("`{url}`: `{p}` is not a port"))?,
            None => default_port,
        };
        if host.is_empty() {
            return Err(format!("`{url}` names no host"));
        }
        Ok(Remote { url: url.into(), scheme, host: host.to_ascii_lowercase(), port })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `host:port`, as the egress allowlist takes it.
    fn destination(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// How the host proves itself to the repository's server.
#[derive(Clone)]
pub enum Credential {
    /// HTTPS: a token, sent as HTTP basic auth with this user name (`x-access-token` on GitHub,
    /// `oauth2` on GitLab).
    Token { user: String, token: String },
    /// SSH: a private deploy key (OpenSSH PEM).
    SshKey(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Token { .. } => "Token(…)",
            Credential::SshKey(_) => "SshKey(…)",
        })
    }
}

impl Credential {
    /// A secret's value as a credential: an OpenSSH private key, or a token.
    pub fn from_secret(value: &str, token_user: &str) -> Self {
        if value.trim_start().starts_with("-----BEGIN") {
            Credential::SshKey(value.trim().to_string() + "\n")
        } else {
            Credential::Token { user: token_user.to_string(), token: value.trim().to_string() }
        }
    }

    /// What must never appear in a message: the token and its encodings.
    fn hidden(&self) -> Vec<String> {
        match self {
            Credential::Token { user, token } => {
                use base64::Engine as _;
                vec![token.clone(), base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))]
            }
            Credential::SshKey(k) => k.lines().filter(|l| l.len() > 16).map(String::from).collect(),
        }
    }
}

/// Where a run's code comes from.
#[derive(Debug, Clone)]
pub struct Source {
    pub remote: Remote,
    pub credential: Option<Credential>,
    /// Commits of history to fetch; 0 for all of it.
    pub depth: u32,
    /// Check out submodules too (from the same host).
    pub submodules: bool,
    /// PEM certificates trusted besides the system's (a self-hosted forge's CA).
    pub ca_bundle: Option<Arc<str>>,
}

/// What a run builds: a commit, found on a ref when the server will not hand out commits by id.
#[derive(Debug, Clone, Default)]
pub struct Want {
    pub sha: Option<String>,
    /// `refs/heads/main`, `refs/pull/7/head`, …; the default branch when neither is given.
    pub git_ref: Option<String>,
}

impl Want {
    /// The branch to check the commit out on: a push's branch; none (detached) otherwise.
    pub fn branch(&self) -> Option<&str> {
        self.git_ref.as_deref().and_then(|r| r.strip_prefix("refs/heads/"))
    }
}

/// The object caches of every repository this host builds.
pub struct RepoCache {
    root: PathBuf,
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    /// Caches whose spare checkout is being made.
    refilling: Mutex<std::collections::HashSet<PathBuf>>,
}

/// Where a cache keeps its spare checkout.
fn spare_of(cache: &Path) -> PathBuf {
    cache.with_extension("spare")
}

fn is_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_ref(r: &str) -> Result<(), String> {
    let ok = !r.is_empty()
        && !r.starts_with('-')
        && !r.contains("..")
        && !r.contains("@{")
        && !r.ends_with('/')
        && !r.ends_with(".lock")
        && r.chars().all(|c| !c.is_control() && !matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'));
    if ok { Ok(()) } else { Err(format!("`{r}` is not a Git ref name")) }
}

impl RepoCache {
    /// Caches live in `root` (created when first needed).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), locks: Mutex::new(HashMap::new()), refilling: Mutex::default() }
    }

    fn dir(&self, remote: &Remote) -> PathBuf {
        use sha2::Digest as _;
        let h = sha2::Sha256::digest(remote.url.as_bytes());
        self.root.join(format!("{}.git", &hex::encode(h)[..24]))
    }

    fn lock(&self, dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(dir.to_path_buf()).or_default().clone()
    }

    /// Makes sure the cache holds the commit; fetches only what it lacks. Returns the commit.
    pub async fn ensure(&self, src: &Source, want: &Want) -> Result<String, String> {
        if let Some(s) = &want.sha
            && !is_sha(s)
        {
            return Err(format!("`{s}` is not a commit id"));
        }
        if let Some(r) = &want.git_ref {
            check_ref(r)?;
        }
        let dir = self.dir(&src.remote);
        let lock = self.lock(&dir);
        let _held = lock.lock().await;
        if !dir.join("HEAD").is_file() {
            std::fs::create_dir_all(&self.root).map_err(|e| format!("creating {}: {e}", self.root.display()))?;
            git_local(&self.root, &["init", "--quiet", "--bare", "--template=", &dir.to_string_lossy()]).await?;
        }
        if let Some(sha) = &want.sha
            && has_commit(&dir, sha).await
        {
            return Ok(sha.to_ascii_lowercase());
        }
        let fetched = match &want.sha {
            Some(sha) => {
                let by_id = fetch(&dir, src, &format!("+{sha}:refs/skiff/{sha}")).await;
                match (by_id, &want.git_ref) {
                    (Ok(()), _) => sha.to_ascii_lowercase(),
                    // Servers that hand out no commit by id still give it on its ref.
                    (Err(first), Some(r)) => {
                        fetch(&dir, src, &format!("+{r}:refs/skiff/fetched"))
                            .await
                            .map_err(|e| format!("{first}; {e}"))?;
                        if !has_commit(&dir, sha).await {
                            return Err(format!(
                                "commit {sha} is not on `{r}` any more (was the branch force-pushed?)"
                            ));
                        }
                        git_local(&dir, &["update-ref", &format!("refs/skiff/{sha}"), sha]).await?;
                        sha.to_ascii_lowercase()
                    }
                    (Err(first), None) => return Err(first),
                }
            }
            None => {
                let r = want.git_ref.as_deref().unwrap_or("HEAD");
                fetch(&dir, src, &format!("+{r}:refs/skiff/fetched")).await?;
                let sha = git_local(&dir, &["rev-parse", "--verify", "refs/skiff/fetched^{commit}"]).await?;
                let sha = sha.trim().to_string();
                git_local(&dir, &["update-ref", &format!("refs/skiff/{sha}"), &sha]).await?;
                sha
            }
        };
        Ok(fetched)
    }

    /// Checks the commit (already in the cache) out into `workspace`, which must be empty or
    /// absent: on `branch` when given, else detached. Submodules follow when the source asks.
    ///
    /// Creating files is most of a large checkout's time, so the cache keeps one spare
    /// checkout per repository, made by the host beside it and never seen by a step: a run
    /// takes it (a rename) and moves it to its commit, which writes only the files that differ;
    /// a new spare is then made in the background.
    pub async fn checkout(
        self: &Arc<Self>,
        src: &Source,
        sha: &str,
        workspace: &Path,
        branch: Option<&str>,
    ) -> Result<(), String> {
        if !is_sha(sha) {
            return Err(format!("`{sha}` is not a commit id"));
        }
        if let Some(b) = branch {
            check_ref(&format!("refs/heads/{b}"))?;
        }
        let dir = self.dir(&src.remote);
        let took = {
            let lock = self.lock(&dir);
            let _held = lock.lock().await;
            // A rename takes it whole, or not at all when another run was first.
            if let Some(parent) = workspace.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
            }
            let took = std::fs::rename(spare_of(&dir), workspace).is_ok();
            if !took {
                std::fs::create_dir_all(workspace).map_err(|e| format!("creating {}: {e}", workspace.display()))?;
                git_local(workspace, &["init", "--quiet", "--template=", "."]).await?;
            }
            let (d, g) = (dir.clone(), workspace.join(".git"));
            tokio::task::spawn_blocking(move || link_objects(&d, &g))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("linking the repository's objects into the workspace: {e}"))?;
            took
        };
        // As many workers as cores write the files.
        let parallel = ["-c", "checkout.workers=0"];
        let target: Vec<&str> = match branch {
            Some(b) => parallel.iter().copied().chain(["checkout", "--quiet", "--force", "-B", b, sha]).collect(),
            None => parallel.iter().copied().chain(["checkout", "--quiet", "--force", "--detach", sha]).collect(),
        };
        git_local(workspace, &target).await?;
        if took {
            git_local(workspace, &["clean", "-ffdxq"]).await?;
            git_local(workspace, &["remote", "set-url", "origin", src.remote.url()]).await?;
        } else {
            git_local(workspace, &["remote", "add", "origin", src.remote.url()]).await?;
        }
        if src.submodules && workspace.join(".gitmodules").is_file() {
            let args = ["-c", "protocol.file.allow=never", "submodule", "update", "--init", "--recursive"];
            let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            if src.depth > 0 {
                args.extend(["--depth".into(), src.depth.to_string()]);
            }
            sandboxed_git(workspace, src, args, "checking out submodules").await?;
        }
        self.refill(src, sha);
        Ok(())
    }

    /// Makes a new spare checkout of `sha` in the background, unless there is one or one is
    /// being made.
    fn refill(self: &Arc<Self>, src: &Source, sha: &str) {
        let dir = self.dir(&src.remote);
        if spare_of(&dir).exists() {
            return;
        }
        {
            let mut making = self.refilling.lock().unwrap_or_else(|e| e.into_inner());
            if !making.insert(dir.clone()) {
                return;
            }
        }
        let (this, sha) = (self.clone(), sha.to_string());
        let plain = Source { submodules: false, ..src.clone() };
        tokio::spawn(async move {
            static N: AtomicU64 = AtomicU64::new(0);
            let tmp = dir.with_extension(format!("spare-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
            let made = async {
                let lock = this.lock(&dir);
                let _held = lock.lock().await;
                std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
                git_local(&tmp, &["init", "--quiet", "--template=", "."]).await?;
                let (d, g) = (dir.clone(), tmp.join(".git"));
                tokio::task::spawn_blocking(move || link_objects(&d, &g))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
            .await;
            let made = match made {
                Ok(()) => git_local(&tmp, &["-c", "checkout.workers=0", "checkout", "--quiet", "--detach", &sha])
                    .await
                    .and(git_local(&tmp, &["remote", "add", "origin", plain.remote.url()]).await)
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            // Files written in the second the index was written are "racily clean": git would
            // hash every one of them again at the run's checkout. Dated two seconds back and
            // refreshed once (here, off the run's path), they are recorded as clean for good.
            let made = match made {
                Ok(()) => {
                    let t = tmp.clone();
                    let _ = tokio::task::spawn_blocking(move || backdate(&t)).await;
                    git_local(&tmp, &["update-index", "-q", "--really-refresh"]).await.map(|_| ())
                }
                Err(e) => Err(e),
            };
            if made.is_err() || std::fs::rename(&tmp, spare_of(&dir)).is_err() {
                let _ = tokio::fs::remove_dir_all(&tmp).await;
            }
            this.refilling.lock().unwrap_or_else(|e| e.into_inner()).remove(&dir);
        });
    }

    /// A file of the commit, if it is there as a regular file (a symlink is not followed).
    /// Whether the cache holds commit `sha` of `src` already (nothing is fetched).
    pub async fn has_commit(&self, src: &Source, sha: &str) -> bool {
        let dir = self.dir(&src.remote);
        dir.exists() && has_commit(&dir, sha).await
    }

    pub async fn read_file(&self, src: &Source, sha: &str, path: &str) -> Result<Option<String>, String> {
        let dir = self.dir(&src.remote);
        let listed = git_local(&dir, &["ls-tree", "-z", sha, "--", path]).await?;
        let Some(entry) = listed.split('\0').find(|e| e.split_once('\t').is_some_and(|(_, p)| p == path)) else {
            return Ok(None);
        };
        let mut meta = entry.split(['\t', ' ']);
        let (mode, kind, oid) = (meta.next().unwrap_or(""), meta.next().unwrap_or(""), meta.next().unwrap_or(""));
        if kind != "blob" || !(mode == "100644" || mode == "100755") {
            return Err(format!("`{path}` in commit {} is not a regular file", &sha[..12.min(sha.len())]));
        }
        let size: usize = git_local(&dir, &["cat-file", "-s", oid]).await?.trim().parse().unwrap_or(usize::MAX);
        if size > MAX_PIPELINE_BYTES {
            return Err(format!("`{path}` is {size} bytes; a pipeline file may have at most {MAX_PIPELINE_BYTES}"));
        }
        let text = git_local(&dir, &["cat-file", "blob", oid]).await?;
        Ok(Some(text))
    }

    /// The regular files directly in a folder of the commit, sorted.
    pub async fn list_dir(&self, src: &Source, sha: &str, folder: &str) -> Result<Vec<String>, String> {
        let dir = self.dir(&src.remote);
        let folder = folder.trim_end_matches('/');
        let listed = git_local(&dir, &["ls-tree", "-z", sha, "--", &format!("{folder}/")]).await?;
        let mut files: Vec<String> = listed
            .split('\0')
            .filter_map(|e| {
                let (meta, p) = e.split_once('\t')?;
                meta.contains(" blob ").then(|| p.to_string())
            })
            .collect();
        files.sort();
        Ok(files)
    }
}

async fn has_commit(dir: &Path, sha: &str) -> bool {
    git_local(dir, &["cat-file", "-e", &format!("{sha}^{{commit}}")]).await.is_ok()
}

/// Git on the host for local work only: no network, no user or system config, no hooks.
async fn git_local(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("git")
        .args(["-c", "core.hooksPath=/dev/null", "-c", "advice.detachedHead=false", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ALLOW_PROTOCOL", "none")
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                "fetching a repository needs `git` on the host: install it (apt-get install git)".to_string()
            } else {
                format!("running git: {e}")
            }
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("git {}: {}", args.first().unwrap_or(&""), last_lines(&err, 4)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

async fn fetch(dir: &Path, src: &Source, refspec: &str) -> Result<(), String> {
    let mut args: Vec<String> = ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if src.depth > 0 {
        args.push(format!("--depth={}", src.depth));
    } else if dir.join("shallow").is_file() {
        args.push("--unshallow".into());
    }
    args.extend(["--end-of-options".into(), src.remote.url().into(), refspec.into()]);
    sandboxed_git(dir, src, args, &format!("fetching {}", src.remote.url())).await
}

/// Git in the process sandbox, `dir` as its workspace, with the network open to the
/// repository's host only.
async fn sandboxed_git(dir: &Path, src: &Source, args: Vec<String>, what: &str) -> Result<(), String> {
    let relay = egress::relay_program()?;
    let refused = Arc::new(Mutex::new(Vec::<String>::new()));
    let r2 = refused.clone();
    let allow = Allowlist::parse(&[src.remote.destination()])?;
    let proxy = EgressProxy::start(
        Destinations::Operator(allow),
        Arc::new(AtomicU64::new(0)),
        Arc::new(move |m| r2.lock().unwrap_or_else(|e| e.into_inner()).push(m)),
    )
    .map_err(|e| format!("starting the egress proxy: {e}"))?;
    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), "/tmp".into()),
        ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
        ("GIT_ALLOW_PROTOCOL".into(), src.remote.scheme.into()),
        ("LC_ALL".into(), "C".into()),
        // Nothing listens in the sandbox: even 127.0.0.1 goes out through the proxy.
        ("NO_PROXY".into(), String::new()),
        ("no_proxy".into(), String::new()),
        ("GIT_PROXY_COMMAND".into(), skiff_sandbox::relay::PROGRAM.into()),
    ];
    let mut written = Vec::new();
    let work = |name: &str| format!("{}/{name}", skiff_sandbox::WORKSPACE);
    if let Some(pem) = &src.ca_bundle {
        let mut bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
        bundle.push('\n');
        bundle.push_str(pem);
        let p = dir.join(CA_FILE);
        std::fs::write(&p, bundle).map_err(|e| format!("writing {}: {e}", p.display()))?;
        written.push(p);
        env.push(("GIT_SSL_CAINFO".into(), work(CA_FILE)));
    }
    match &src.credential {
        Some(Credential::Token { user, token }) => {
            use base64::Engine as _;
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"));
            env.extend([
                ("GIT_CONFIG_COUNT".into(), "1".into()),
                ("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into()),
                ("GIT_CONFIG_VALUE_0".into(), format!("Authorization: Basic {basic}")),
            ]);
        }
        Some(Credential::SshKey(key)) => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let p = dir.join(KEY_FILE);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&p)
                .map_err(|e| format!("writing the deploy key: {e}"))?;
            f.write_all(key.as_bytes()).map_err(|e| format!("writing the deploy key: {e}"))?;
            written.push(p);
        }
        None => {}
    }
    if src.remote.scheme == "ssh" {
        let identity = match &src.credential {
            Some(Credential::SshKey(_)) => format!("-i {} -o IdentitiesOnly=yes ", work(KEY_FILE)),
            _ => String::new(),
        };
        env.push((
            "GIT_SSH_COMMAND".into(),
            format!(
                "ssh {identity}-o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=/tmp/known_hosts \
                 -o ProxyCommand='{} %h %p'",
                skiff_sandbox::relay::PROGRAM
            ),
        ));
    }
    let mut spec = SandboxSpec::new("git", dir);
    spec.args = args;
    spec.env = env;
    spec.timeout = FETCH_TIMEOUT;
    spec.network = true;
    spec.egress = Some(Egress { socket: proxy.socket().to_path_buf(), relay });
    let outcome =
        skiff_sandbox::run(&spec, Capture { log: false, limit: 64 << 10 }, CancellationToken::new(), &|_, _| {}).await;
    for p in written {
        let _ = std::fs::remove_file(p);
    }
    drop(proxy);
    let outcome = outcome.map_err(|e| format!("{what}: {e}"))?;
    let hide = src.credential.as_ref().map(Credential::hidden).unwrap_or_default();
    let clean = |s: &str| hide.iter().fold(s.to_string(), |acc, h| acc.replace(h.as_str(), "***"));
    match outcome.exit {
        Exit::Code(0) => Ok(()),
        Exit::TimedOut => Err(format!("{what}: no answer within {} minutes", FETCH_TIMEOUT.as_secs() / 60)),
        _ => {
            let mut why = last_lines(&String::from_utf8_lossy(&outcome.stderr), 3);
            let refused = refused.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = refused.first() {
                why = format!("{why} ({r})");
            }
            Err(clean(&format!("{what}: {why}")))
        }
    }
}

/// Sets the modification time of every file of a checkout (not of `.git`) two seconds back.
fn backdate(worktree: &Path) {
    let then = std::time::SystemTime::now() - Duration::from_secs(2);
    let files =
        walkdir::WalkDir::new(worktree).follow_links(false).into_iter().filter_entry(|e| e.file_name() != ".git");
    for e in files.flatten().filter(|e| e.file_type().is_file()) {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(e.path()) {
            let _ = f.set_modified(then);
        }
    }
}

/// Hard-links (or copies, across file systems) every object file of the cache into `git_dir`,
/// and the cache's shallow boundary with them.
fn link_objects(cache: &Path, git_dir: &Path) -> std::io::Result<()> {
    let from = cache.join("objects");
    let to = git_dir.join("objects");
    for entry in walkdir::WalkDir::new(&from).follow_links(false) {
        let entry = entry.map_err(std::io::Error::other)?;
        let rel = entry.path().strip_prefix(&from).map_err(std::io::Error::other)?;
        let target = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target)?;
        } else if entry.file_type().is_file() && !target.exists() && std::fs::hard_link(entry.path(), &target).is_err()
        {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    if cache.join("shallow").is_file() {
        std::fs::copy(cache.join("shallow"), git_dir.join("shallow"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_urls_are_checked() {
        let r = Remote::parse("https://github.com/acme/web.git").unwrap();
        assert_eq!((r.scheme, r.host.as_str(), r.port), ("https", "github.com", 443));
        let r = Remote::parse("http://127.0.0.1:8080/web.git").unwrap();
        assert_eq!(r.destination(), "127.0.0.1:8080");
        let r = Remote::parse("git@gitlab.com:acme/web.git").unwrap();
        assert_eq!((r.scheme, r.host.as_str(), r.port), ("ssh", "gitlab.com", 22));
        assert_eq!(Remote::parse("git://[::1]:9418/x").unwrap().destination(), "[::1]:9418");
        for bad in [
            "https://user:tok@github.com/a/b.git",
            "https://tok@github.com/a/b.git",
            "file:///etc",
            "ext::sh -c id",
            "-uhttps://x/y",
            "https://github.com",
            "/srv/repo.git",
            "https://x y/a",
        ] {
            assert!(Remote::parse(bad).is_err(), "{bad} was accepted");
        }
        assert!(Remote::parse("https://u:t@x/y").unwrap_err().contains("secrets"));
    }

    #[test]
    fn refs_and_ids_are_checked() {
        assert!(is_sha(&"a".repeat(40)) && !is_sha("HEAD") && !is_sha(&"g".repeat(40)));
        assert!(check_ref("refs/heads/main").is_ok() && check_ref("refs/pull/7/merge").is_ok());
        for bad in ["--upload-pack=x", "a..b", "x:y", "refs/heads/x.lock", "a b", ""] {
            assert!(check_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_credential_never_prints() {
        let c = Credential::from_secret("tok-123", "x-access-token");
        assert_eq!(format!("{c:?}"), "Token(…)");
        assert!(c.hidden().iter().any(|h| h == "tok-123"));
        assert!(matches!(
            Credential::from_secret("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", "git"),
            Credential::SshKey(_)
        ));
    }
}
