//! Running native programs confined by bubblewrap: the OS side of the WIT
//! `process` capability.
//!
//! A program runs in new user, pid, ipc, uts and cgroup namespaces (and a new,
//! empty network namespace unless network is granted), sees a read-only `/usr`
//! and the few parts of `/etc` tools need, a private `/tmp`, and the step's
//! workspace read-write at `/workspace`: nothing else of the host. Rlimits (and a
//! per-run cgroup where the host can create one) bound processes, files, CPU and
//! memory; the whole process tree is killed on timeout, cancel or output flood.
//! What is and is not enforced: `docs/process-sandbox.md`.

mod bwrap;
mod cgroup;
mod output;
pub mod relay;
pub mod rootfs;
mod sys;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub use bwrap::WORKSPACE;
pub use cgroup::TreeUsage;

use output::{Budget, Pump};
use sys::{PreExec, Resource, Signal};

/// How long a process tree gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// Resource limits of one process tree. `0` means "no limit" for each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessLimits {
    /// Processes (and threads) in the tree: a per-run `pids` cgroup where the host has one,
    /// and RLIMIT_NPROC (which counts per real uid, and not at all for root).
    pub max_processes: u64,
    /// RLIMIT_NOFILE: open descriptors per process.
    pub max_open_files: u64,
    /// RLIMIT_FSIZE: the largest file a process may write, in bytes.
    pub max_file_size: u64,
    /// CPU seconds: of the whole tree where the host accounts it in a cgroup (the tree is
    /// stopped past it), and RLIMIT_CPU per process (SIGXCPU, then SIGKILL 5 s later) everywhere.
    pub cpu_seconds: u64,
    /// Memory of the whole tree (`memory.max` of a delegated cgroup v2, `memory.limit_in_bytes`
    /// of a writable v1 memory hierarchy: the kernel kills past it), otherwise RLIMIT_AS (virtual
    /// memory per process).
    pub memory_bytes: u64,
    /// stdout and stderr together; past it, output is dropped and the tree is killed.
    pub max_output_bytes: u64,
}

impl Default for ProcessLimits {
    fn default() -> Self {
        Self {
            max_processes: 512,
            max_open_files: 4096,
            max_file_size: 4 << 30,
            cpu_seconds: 3600,
            memory_bytes: 8 << 30,
            max_output_bytes: 64 << 20,
        }
    }
}

/// One program to run.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// A name looked up on the `PATH` of `env`, or a path (inside the sandbox).
    pub program: String,
    pub args: Vec<String>,
    /// The complete environment, plus `PATH` and `HOME` defaults when absent.
    pub env: Vec<(String, String)>,
    /// The host directory mounted read-write at `/workspace`.
    pub workspace: PathBuf,
    /// Relative to the workspace; `..` out of it and symlinks out of it are refused.
    pub cwd: Option<String>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    /// Let the program use the network: only through `egress`, the host's proxy, which
    /// decides where it may go. Unsandboxed, it is the host's whole network.
    pub network: bool,
    /// The host's way out for a sandbox with `network`.
    pub egress: Option<Egress>,
    pub limits: ProcessLimits,
    /// Run without bubblewrap (rlimits and cgroup only). Only for an explicit host flag;
    /// every run then logs a warning line.
    pub unsandboxed: bool,
    /// A container image as the root instead of the host's `/usr`.
    pub image: Option<ImageRoot>,
    /// Host directories bound read-write inside (the job's `$HOME`, the app's tool cache).
    pub binds: Vec<Bind>,
}

/// A host directory bound into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub host: PathBuf,
    /// An absolute path inside the sandbox, outside `/workspace`.
    pub inside: String,
    /// Bound read-only.
    pub read_only: bool,
}

/// A container image as the sandbox's root: the image's unpacked root filesystem, read-only,
/// under an overlay whose writable upper layer belongs to one job (so one step's installs are
/// there for the next step of the job, and gone with the job).
#[derive(Debug, Clone)]
pub struct ImageRoot {
    /// The image's root filesystem (see [`rootfs::build`]); never written.
    pub lower: PathBuf,
    /// The job's directory for the overlay: `upper/`, `work/` and the mount point `root/` are
    /// created in it. It must be on a filesystem that can hold an overlay's upper layer.
    pub job_dir: PathBuf,
    /// The user and group the program runs as inside (the image's `User`).
    pub uid: u32,
    pub gid: u32,
}

impl SandboxSpec {
    /// A spec with defaults: no arguments, no environment, 10 minutes, no network.
    pub fn new(program: impl Into<String>, workspace: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            workspace: workspace.into(),
            cwd: None,
            stdin: None,
            timeout: Duration::from_secs(600),
            network: false,
            egress: None,
            limits: ProcessLimits::default(),
            unsandboxed: false,
            image: None,
            binds: Vec::new(),
        }
    }
}

/// The way out of a sandbox with `network`: the host's proxy on a Unix socket, and the relay
/// program ([`relay`]) that makes it `127.0.0.1:3128` inside. The program sees `HTTP_PROXY`,
/// `HTTPS_PROXY` and `ALL_PROXY` (and their lower-case forms) pointing there.
#[derive(Debug, Clone)]
pub struct Egress {
    /// The proxy's Unix socket on the host.
    pub socket: PathBuf,
    /// The `skiff-egress-relay` program on the host.
    pub relay: PathBuf,
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal. Inside bubblewrap a signal death is reported as exit
    /// code 128+N (like a shell does), and mapped back to `Signal(N)`.
    Signal(i32),
    /// Killed at `timeout`.
    TimedOut,
    /// Killed because the caller cancelled.
    Cancelled,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub exit: Exit,
    /// Captured stdout, up to `Capture::limit` bytes.
    pub stdout: Vec<u8>,
    /// Captured stderr, up to `Capture::limit` bytes.
    pub stderr: Vec<u8>,
    /// True when a capture was cut at its limit, or output was cut at `max_output_bytes`.
    pub truncated: bool,
    pub duration: Duration,
    /// stdout and stderr bytes the process wrote (read by us), kept or not.
    pub output_bytes: u64,
    /// True when the tree was killed for passing `max_output_bytes`.
    pub output_limit_reached: bool,
    /// What the kernel counted for the whole process tree (where the host has cgroups).
    pub usage: TreeUsage,
    /// A limit of the whole tree that ended it: the kernel's OOM killer at `memory_bytes`, or
    /// skiff at `cpu_seconds` of CPU summed over the tree.
    pub limit_exceeded: Option<Limit>,
}

/// A limit that ended a process tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Memory(u64),
    Cpu(Duration),
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Memory(bytes) if bytes % (1 << 20) == 0 => write!(f, "memory limit {} MiB exceeded", bytes >> 20),
            Limit::Memory(bytes) => write!(f, "memory limit {bytes} bytes exceeded"),
            Limit::Cpu(d) => write!(f, "CPU limit {} s exceeded", d.as_secs()),
        }
    }
}

/// What happens to output besides `on_line`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capture {
    /// Deliver each line of stdout/stderr to `on_line`.
    pub log: bool,
    /// Bytes kept of stdout and of stderr each (0: none).
    pub limit: u64,
}

/// Why a process could not be run. Messages say what to fix.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SandboxError {
    /// The host cannot sandbox processes.
    #[error("{0}")]
    Unavailable(String),
    /// The spec is invalid (cwd escapes the workspace, empty program, ...).
    #[error("{0}")]
    Invalid(String),
    /// The program (or bubblewrap) could not be started.
    #[error("{0}")]
    SpawnFailed(String),
}

pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const READ_BUF: usize = 64 * 1024;

/// Whether bubblewrap can run here; checked once per process. The error says how to fix it.
pub fn availability() -> Result<()> {
    static CHECK: OnceLock<Result<()>> = OnceLock::new();
    CHECK.get_or_init(check_availability).clone()
}

fn bwrap_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]).map(|d| d.join("bwrap")).find(|p| p.is_file())
}

fn check_availability() -> Result<()> {
    let bwrap = bwrap_path().ok_or_else(|| {
        SandboxError::Unavailable(
            "bubblewrap (`bwrap`) is not installed, so steps cannot run processes: \
             install bubblewrap (apt-get install bubblewrap)"
                .into(),
        )
    })?;
    let out = std::process::Command::new(&bwrap)
        .args(["--unshare-user", "--unshare-pid", "--unshare-net", "--ro-bind", "/", "/", "--", "/bin/true"])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SandboxError::Unavailable(format!("cannot start {}: {e}", bwrap.display())))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
    let hint = if read("/proc/sys/kernel/unprivileged_userns_clone") == "0" {
        "enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)"
    } else if read("/proc/sys/user/max_user_namespaces") == "0" {
        "enable user namespaces (sysctl user.max_user_namespaces=15000)"
    } else if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1" {
        "allow user namespaces for bwrap (an AppArmor profile for /usr/bin/bwrap, \
         or sysctl kernel.apparmor_restrict_unprivileged_userns=0)"
    } else {
        "enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1); \
         inside a container, allow the unshare/mount syscalls (seccomp) for the host"
    };
    Err(SandboxError::Unavailable(format!("bubblewrap cannot create a sandbox here ({stderr}): {hint}")))
}

/// Checks `cwd` lexically and against symlinks; returns it normalized (`""` for the root).
fn check_cwd(workspace: &Path, cwd: Option<&str>) -> Result<String> {
    let Some(cwd) = cwd else { return Ok(String::new()) };
    let invalid =
        |why: &str| SandboxError::Invalid(format!("cwd `{cwd}` {why}: give a directory inside the workspace"));
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(cwd).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().ok_or_else(|| invalid("is not UTF-8"))?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop().ok_or_else(|| invalid("leaves the workspace"))?;
            }
            Component::RootDir | Component::Prefix(_) => {
                let rel = cwd.strip_prefix(WORKSPACE).filter(|r| r.is_empty() || r.starts_with('/'));
                match rel {
                    // `/workspace/...` as the process sees it is fine too.
                    Some(rel) if parts.is_empty() => return check_cwd(workspace, Some(rel.trim_start_matches('/'))),
                    _ => return Err(invalid("is absolute")),
                }
            }
        }
    }
    let normalized = parts.join("/");
    let host = workspace.join(&normalized);
    let real = host.canonicalize().map_err(|_| invalid("does not exist"))?;
    if !real.starts_with(workspace) {
        return Err(invalid("leaves the workspace through a symlink"));
    }
    if !real.is_dir() {
        return Err(invalid("is not a directory"));
    }
    Ok(normalized)
}

fn check_env(env: &[(String, String)]) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(env.len() + 2);
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(SandboxError::Invalid(format!(
                "environment variable `{k}` is invalid: names must be non-empty without `=`, and no NUL bytes"
            )));
        }
        out.retain(|(x, _)| x != k);
        out.push((k.clone(), v.clone()));
    }
    for (k, v) in [("PATH", DEFAULT_PATH), ("HOME", "/tmp")] {
        if !out.iter().any(|(x, _)| x == k) {
            out.push((k.into(), v.into()));
        }
    }
    // What the kernel takes at exec (`E2BIG` otherwise): each `NAME=value` at most 32 pages,
    // and arguments and environment together at most a quarter of the stack limit.
    if let Some((k, v)) = out.iter().find(|(k, v)| k.len() + v.len() + 1 >= MAX_ARG_STRLEN) {
        return Err(SandboxError::Invalid(format!(
            "environment variable `{k}` is {} bytes; a process takes at most {} bytes in one variable",
            v.len(),
            MAX_ARG_STRLEN - 1
        )));
    }
    let total: usize = out.iter().map(|(k, v)| k.len() + v.len() + 2 + std::mem::size_of::<usize>()).sum();
    let room = sys::arg_max().saturating_sub(ARGS_RESERVE);
    if total > room {
        return Err(SandboxError::Invalid(format!(
            "the environment is {total} bytes in {} variables; a process on this host can be started with at most \
             {room} bytes of environment",
            out.len()
        )));
    }
    Ok(out)
}

fn check_binds(binds: &[Bind]) -> Result<()> {
    for b in binds {
        let p = Path::new(&b.inside);
        let plain = p.is_absolute() && p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !plain || p == Path::new("/") || p.starts_with(WORKSPACE) || p.starts_with("/proc") || p.starts_with("/dev")
        {
            return Err(SandboxError::Invalid(format!(
                "`{}` cannot be a mount point in the sandbox: give an absolute path without `..`, outside /, \
                 /workspace, /proc and /dev",
                b.inside
            )));
        }
    }
    Ok(())
}

/// The kernel's limit on one argument or environment string (`MAX_ARG_STRLEN`).
const MAX_ARG_STRLEN: usize = 32 * 4096;
/// Room kept for the program's own arguments.
const ARGS_RESERVE: usize = 64 << 10;

fn rlimits(limits: &ProcessLimits, memory_in_cgroup: bool) -> Vec<(Resource, u64, u64)> {
    let mut v = Vec::new();
    let mut set = |r, n: u64, hard: u64| {
        if n > 0 {
            v.push((r, n, hard));
        }
    };
    // +2: bubblewrap's own two processes run under the same limit.
    set(Resource::Processes, limits.max_processes + 2, limits.max_processes + 2);
    set(Resource::OpenFiles, limits.max_open_files, limits.max_open_files);
    set(Resource::FileSize, limits.max_file_size, limits.max_file_size);
    set(Resource::CpuSeconds, limits.cpu_seconds, limits.cpu_seconds + 5);
    if !memory_in_cgroup {
        set(Resource::AddressSpace, limits.memory_bytes, limits.memory_bytes);
    }
    if limits.max_processes == 0 {
        v.retain(|(r, ..)| !matches!(r, Resource::Processes));
    }
    v
}

/// A pipe whose read end bubblewrap inherits; the data is written by a thread so
/// that more than a pipe buffer cannot deadlock the spawn.
fn data_pipe(data: Vec<u8>) -> Result<std::io::PipeReader> {
    let (reader, mut writer) =
        std::io::pipe().map_err(|e| SandboxError::SpawnFailed(format!("cannot create a pipe: {e}")))?;
    if data.len() <= 16 * 1024 {
        // Fits in any pipe buffer: no thread needed.
        let _ = writer.write_all(&data);
    } else {
        std::thread::spawn(move || {
            let _ = writer.write_all(&data);
        });
    }
    Ok(reader)
}

/// Runs `spec` to its end (or its timeout, or `cancel`), streaming its output
/// line by line to `on_line` (unmasked: the caller masks secrets).
pub async fn run(
    spec: &SandboxSpec,
    capture: Capture,
    cancel: CancellationToken,
    on_line: &(dyn Fn(Stream, &str) + Send + Sync),
) -> Result<Outcome> {
    if spec.program.is_empty() {
        return Err(SandboxError::Invalid("the program to run is empty".into()));
    }
    let workspace = spec
        .workspace
        .canonicalize()
        .map_err(|e| SandboxError::Invalid(format!("workspace {} is not usable: {e}", spec.workspace.display())))?;
    let cwd = check_cwd(&workspace, spec.cwd.as_deref())?;
    let env = check_env(&spec.env)?;
    check_binds(&spec.binds)?;
    if spec.unsandboxed && spec.image.is_some() {
        return Err(SandboxError::Invalid(
            "a container image needs the process sandbox, and this host runs processes unsandboxed \
             (--unsandboxed-processes): run the job without `container:`, or the host with bubblewrap"
                .into(),
        ));
    }
    if !spec.unsandboxed {
        availability()?;
    }
    if spec.image.is_some() {
        image_roots_available()?;
    }
    let group = cgroup::RunGroup::create(spec.limits.max_processes + 2, spec.limits.memory_bytes);
    let procs_files = group
        .iter()
        .flat_map(|g| g.procs_files())
        .map(|p| std::ffi::CString::new(p.into_os_string().into_encoded_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| SandboxError::SpawnFailed("cgroup path contains NUL".into()))?;
    let mut overlay = None;
    let limits = rlimits(&spec.limits, group.as_ref().is_some_and(|g| g.memory_limited));

    // Kept alive until the spawn is done: bubblewrap reads them after exec.
    let mut keep = Vec::new();
    let mut cmd;
    if spec.unsandboxed {
        on_line(
            Stream::Stderr,
            "WARNING: skiff is running this process WITHOUT a sandbox (--unsandboxed-processes): \
             it can read and write anything the host user can, including other runs' workspaces and secrets",
        );
        // No mount puts the workspace at `/workspace`: paths the step gave in its terms (a
        // script's file, `SKIFF_OUTPUT`) name the workspace where it really is.
        let host = |v: &str| match v.strip_prefix(bwrap::WORKSPACE) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("{}{rest}", workspace.display()),
            _ => v.to_string(),
        };
        cmd = tokio::process::Command::new(host(&spec.program));
        cmd.args(spec.args.iter().map(|a| host(a)))
            .current_dir(workspace.join(&cwd))
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.clone(), host(v))));
    } else {
        let passwd = data_pipe(bwrap::PASSWD.as_bytes().to_vec())?;
        let group_fd = data_pipe(bwrap::GROUP.as_bytes().to_vec())?;
        let fds = bwrap::DataFds { passwd: passwd.as_raw_fd(), group: group_fd.as_raw_fd() };
        // The network is never the host's: a sandbox that may use it gets the host's egress
        // proxy as its only way out, through the relay.
        let egress = match (&spec.egress, spec.network) {
            (_, false) => None,
            (Some(e), true) => Some(e),
            (None, true) => {
                return Err(SandboxError::Invalid(
                    "this process may use the network, but the host gave it no egress proxy to go through".into(),
                ));
            }
        };
        let root = match &spec.image {
            Some(image) => {
                let (merged, o) = prepare_overlay(image)?;
                overlay = Some(o);
                Some(bwrap::ImagePlan { merged, uid: image.uid, gid: image.gid })
            }
            None => None,
        };
        let plan = bwrap::Plan { workspace: &workspace, cwd: &cwd, egress, image: root.as_ref(), binds: &spec.binds };
        let args_fd = data_pipe(bwrap::encode_args(&bwrap::options(&plan, fds)))?;
        let bwrap = bwrap_path().ok_or_else(|| SandboxError::Unavailable("bubblewrap disappeared".into()))?;
        cmd = tokio::process::Command::new(bwrap);
        // Only the program and its arguments are on the command line; options come through
        // `--args`, invisible in the host's `ps`. The environment is bubblewrap's own, which it
        // hands on to the program (readable in /proc only by the host's own user).
        cmd.arg("--args").arg(args_fd.as_raw_fd().to_string()).arg("--");
        let mut env = env;
        if egress.is_some() {
            cmd.args([relay::PROGRAM, relay::LISTEN, relay::SOCKET, "--"]);
            let proxy = format!("http://{}", relay::LISTEN);
            for k in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
                env.retain(|(x, _)| x != k);
                env.push((k.into(), proxy.clone()));
            }
            // Whatever listens inside the sandbox itself stays direct.
            for k in ["NO_PROXY", "no_proxy"] {
                if !env.iter().any(|(x, _)| x == k) {
                    env.push((k.into(), "localhost,127.0.0.1,::1".into()));
                }
            }
        }
        cmd.arg(&spec.program).args(&spec.args);
        cmd.env_clear().envs(env.iter().cloned()).current_dir("/");
        keep.extend([passwd, group_fd, args_fd]);
    }
    cmd.stdin(if spec.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let inherit_fds = keep.iter().map(|r| r.as_raw_fd()).collect();
    sys::install_pre_exec(&mut cmd, PreExec { rlimits: limits, cgroup_procs: procs_files, overlay, inherit_fds });

    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        SandboxError::SpawnFailed(if spec.unsandboxed {
            format!("cannot start `{}`: {e}", spec.program)
        } else {
            format!("cannot start bubblewrap: {e}")
        })
    })?;
    drop(keep);
    let pid = child.id().map(|p| p as i32).unwrap_or(0);

    if let (Some(mut stdin), Some(bytes)) = (child.stdin.take(), spec.stdin.clone()) {
        tokio::spawn(async move {
            // A program that does not read its input is not an error.
            let _ = stdin.write_all(&bytes).await;
        });
    }
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let mut out = Pump::new(Stream::Stdout);
    let mut err = Pump::new(Stream::Stderr);
    let mut budget = Budget {
        log: capture.log,
        capture_limit: capture.limit,
        max_output: spec.limits.max_output_bytes,
        total: 0,
        truncated: false,
        limit_reached: false,
    };
    let (mut buf_out, mut buf_err) = (vec![0u8; READ_BUF], vec![0u8; READ_BUF]);
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let mut ended_by: Option<Exit> = None; // TimedOut / Cancelled, or None
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut killed = false;
    let mut status: Option<ExitStatus> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    // RLIMIT_CPU binds each process; the tree's sum is watched where the host accounts it.
    let cpu_limit = Duration::from_secs(spec.limits.cpu_seconds);
    let watch_cpu = spec.limits.cpu_seconds > 0 && group.as_ref().is_some_and(|g| g.cpu_time().is_some());
    let mut cpu_tick = tokio::time::interval(Duration::from_millis(250));
    let mut limit_exceeded: Option<Limit> = None;
    let stop = |reason: Option<Exit>, kill_at: &mut Option<tokio::time::Instant>| {
        if kill_at.is_none() {
            terminate(pid, spec.unsandboxed);
            *kill_at = Some(tokio::time::Instant::now() + KILL_GRACE);
        }
        reason
    };

    loop {
        if status.is_some() && out.eof && err.eof {
            break;
        }
        tokio::select! {
            r = stdout.read(&mut buf_out), if !out.eof => match r {
                Ok(0) | Err(_) => { out.eof = true; out.finish(on_line) }
                Ok(n) => if out.feed(&buf_out[..n], &mut budget, on_line) {
                    on_line(Stream::Stderr, &limit_line(spec.limits.max_output_bytes));
                    stop(None, &mut kill_at);
                },
            },
            r = stderr.read(&mut buf_err), if !err.eof => match r {
                Ok(0) | Err(_) => { err.eof = true; err.finish(on_line) }
                Ok(n) => if err.feed(&buf_err[..n], &mut budget, on_line) {
                    on_line(Stream::Stderr, &limit_line(spec.limits.max_output_bytes));
                    stop(None, &mut kill_at);
                },
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s.map_err(|e| SandboxError::SpawnFailed(format!("waiting for the process failed: {e}")))?);
                // Whatever still holds the pipes (a daemon left behind unsandboxed) goes now.
                kill_tree(pid, group.as_ref(), true).await;
                drain_until = Some(tokio::time::Instant::now() + KILL_GRACE);
            },
            () = sleep_until_opt(drain_until), if drain_until.is_some() => {
                // Something outside our reach (a `setsid` daemon, unsandboxed, without a
                // cgroup) still holds the pipes: stop reading rather than wait for it.
                out.eof = true;
                err.eof = true;
            },
            () = tokio::time::sleep_until(deadline), if ended_by.is_none() && status.is_none() => {
                ended_by = stop(Some(Exit::TimedOut), &mut kill_at);
            },
            () = cancel.cancelled(), if ended_by.is_none() && status.is_none() => {
                ended_by = stop(Some(Exit::Cancelled), &mut kill_at);
            },
            _ = cpu_tick.tick(), if watch_cpu && limit_exceeded.is_none() && status.is_none() => {
                if group.as_ref().and_then(|g| g.cpu_time()).is_some_and(|t| t > cpu_limit) {
                    limit_exceeded = Some(Limit::Cpu(cpu_limit));
                    stop(None, &mut kill_at);
                }
            },
            () = sleep_until_opt(kill_at), if !killed && kill_at.is_some() => {
                killed = true;
                kill_tree(pid, group.as_ref(), status.is_some()).await;
            },
        }
    }
    // The namespace is gone with bubblewrap; the cgroup (if any) must be empty before removal.
    let mut usage = TreeUsage::default();
    if let Some(g) = &group {
        g.kill_all().await;
        usage = g.usage();
        if usage.oom_killed {
            limit_exceeded = Some(Limit::Memory(spec.limits.memory_bytes));
        }
    }
    let status = status.expect("loop ends after wait");
    let exit = ended_by.unwrap_or_else(|| exit_of(status, spec.unsandboxed));
    Ok(Outcome {
        exit,
        stdout: out.captured,
        stderr: err.captured,
        truncated: budget.truncated,
        duration: started.elapsed(),
        output_bytes: budget.total,
        output_limit_reached: budget.limit_reached,
        usage,
        limit_exceeded,
    })
}

/// The job's overlay directories, created on first use: `(mount point, overlay)`.
fn prepare_overlay(image: &ImageRoot) -> Result<(PathBuf, sys::Overlay)> {
    let [upper, work, merged] = ["upper", "work", "root"].map(|d| image.job_dir.join(d));
    for dir in [&upper, &work, &merged] {
        std::fs::create_dir_all(dir).map_err(|e| {
            SandboxError::SpawnFailed(format!("cannot create the job's image directory {}: {e}", dir.display()))
        })?;
    }
    let overlay = sys::Overlay::new(&image.lower, &upper, &work, &merged)
        .map_err(|e| SandboxError::Invalid(format!("cannot mount the image root: {e}")))?;
    Ok((merged, overlay))
}

fn limit_line(max: u64) -> String {
    format!("skiff: output limit reached ({max} bytes): further output is dropped and the process is stopped")
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn exit_of(status: ExitStatus, unsandboxed: bool) -> Exit {
    match (status.code(), status.signal()) {
        // bubblewrap reports a child killed by signal N as 128+N.
        (Some(code), _) if !unsandboxed && (129..=128 + 64).contains(&code) => Exit::Signal(code - 128),
        (Some(code), _) => Exit::Code(code),
        (None, Some(sig)) => Exit::Signal(sig),
        (None, None) => Exit::Code(-1),
    }
}

/// The descendants of `root` (not `root` itself), from `/proc`.
fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // `pid (comm) state ppid ...`: comm may contain anything, so split after the last `)`.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
            if let Some(ppid) = ppid {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    let mut out = Vec::new();
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(c) {
                out.push(c);
                stack.push(c);
            }
        }
    }
    out
}

/// SIGTERM to the program and everything it started, so it can clean up. Inside
/// bubblewrap, not to bubblewrap itself: killing it would SIGKILL the namespace at once.
fn terminate(pid: i32, unsandboxed: bool) {
    if pid <= 0 {
        return;
    }
    if unsandboxed {
        sys::kill(-pid, Signal::Term);
        sys::kill(pid, Signal::Term);
    }
    for d in descendants(pid) {
        sys::kill(d, Signal::Term);
    }
}

/// SIGKILL to the whole tree: bubblewrap (whose death kills the pid namespace, so
/// every process in it, SIGTERM-ignoring or not), its process group, its descendants
/// (what `setsid` took out of the group when unsandboxed) and the cgroup.
///
/// Once `pid` is reaped its number may be reused, so then only its process group
/// (which keeps the number reserved while any member lives) and the cgroup are killed.
async fn kill_tree(pid: i32, group: Option<&cgroup::RunGroup>, reaped: bool) {
    if pid <= 0 {
        return;
    }
    if reaped {
        sys::kill(-pid, Signal::Kill);
    } else {
        let rest = descendants(pid);
        sys::kill(-pid, Signal::Kill);
        sys::kill(pid, Signal::Kill);
        for d in rest {
            sys::kill(d, Signal::Kill);
        }
    }
    if let Some(g) = group {
        g.kill_all().await;
    }
}

/// Whether container images can be a sandbox's root here: an overlay mounted in a user and
/// mount namespace of the process's own (Linux 5.11+ unprivileged, or root). Checked once.
pub fn image_roots_available() -> Result<()> {
    static CHECK: OnceLock<Result<()>> = OnceLock::new();
    CHECK.get_or_init(check_image_roots).clone()
}

fn check_image_roots() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("skiff-overlay-probe-{}", std::process::id()));
    let unavailable = |why: String| {
        SandboxError::Unavailable(format!(
            "container images cannot be mounted here ({why}): they need overlayfs in an unprivileged user namespace \
             (Linux 5.11 or newer, or a host running as root)"
        ))
    };
    let result = (|| {
        let lower = dir.join("lower");
        std::fs::create_dir_all(&lower).map_err(|e| unavailable(e.to_string()))?;
        let (merged, overlay) = prepare_overlay(&ImageRoot { lower, job_dir: dir.clone(), uid: 0, gid: 0 })?;
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", "exit 0"])
            .current_dir(&merged)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        sys::install_pre_exec_std(&mut cmd, overlay);
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(unavailable(format!("the probe exited with {s}"))),
            Err(e) => Err(unavailable(e.to_string())),
        }
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Whether `ProcessLimits::memory_bytes` binds the whole process tree here (a memory cgroup),
/// and not only each process's address space.
pub fn memory_limit_per_tree() -> bool {
    cgroup::limits_memory()
}

/// Whether the CPU time of a whole process tree is counted (and its `cpu_seconds` enforced) here.
pub fn cpu_metered_per_tree() -> bool {
    cgroup::meters_cpu()
}

/// Whether `ProcessLimits::max_processes` binds here: through a per-run pids cgroup,
/// or through RLIMIT_NPROC, which the kernel does not apply to (real) root.
pub fn process_limit_enforced() -> bool {
    cgroup::limits_pids() || !sys::is_root()
}

/// A line about what this host enforces, for `skiff doctor`-style diagnostics.
pub fn describe() -> String {
    let bwrap = match availability() {
        Ok(()) => "bubblewrap: available".to_string(),
        Err(e) => format!("bubblewrap: unavailable: {e}"),
    };
    let root = if sys::is_root() {
        "; host runs as root: RLIMIT_NPROC is not enforced, the pids cgroup is the process limit"
    } else {
        ""
    };
    format!("{bwrap}; {}{root}", cgroup::describe())
}

/// One line per thing this host enforces or offers to processes, for `skiff doctor`.
pub fn report() -> Vec<(&'static str, String)> {
    let ok = |r: Result<()>, yes: &str| match r {
        Ok(()) => yes.to_string(),
        Err(e) => format!("unavailable: {e}"),
    };
    let yes_no = |b: bool, yes: &str, no: &str| if b { yes.to_string() } else { no.to_string() };
    vec![
        ("bubblewrap", ok(availability(), "available")),
        ("container images", ok(image_roots_available(), "available (overlayfs in a user namespace)")),
        ("cgroups", cgroup::describe()),
        (
            "memory limit",
            yes_no(
                memory_limit_per_tree(),
                "per process tree (cgroup)",
                "per process only (RLIMIT_AS): a tree of processes can use more in total",
            ),
        ),
        (
            "CPU limit and metering",
            yes_no(
                cpu_metered_per_tree(),
                "per process tree (cgroup)",
                "per process only (RLIMIT_CPU); usage does not count processes",
            ),
        ),
        (
            "process count",
            yes_no(
                process_limit_enforced(),
                if cgroup::limits_pids() { "per process tree (pids cgroup)" } else { "RLIMIT_NPROC (per user)" },
                "not enforced (root without a writable pids cgroup)",
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cwd_is_checked() {
        let ws = std::env::temp_dir().canonicalize().unwrap();
        let dir = ws.join(format!("skiff-cwd-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        assert_eq!(check_cwd(&dir, Some("a/./b/..")).unwrap(), "a");
        assert_eq!(check_cwd(&dir, Some("/workspace/a")).unwrap(), "a");
        assert_eq!(check_cwd(&dir, None).unwrap(), "");
        assert!(check_cwd(&dir, Some("../x")).is_err());
        assert!(check_cwd(&dir, Some("a/../../x")).is_err());
        assert!(check_cwd(&dir, Some("/etc")).is_err());
        assert!(check_cwd(&dir, Some("/workspacex")).is_err());
        std::os::unix::fs::symlink("/", dir.join("up")).unwrap();
        assert!(check_cwd(&dir, Some("up")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn env_gets_defaults_and_rejects_bad_names() {
        let env = check_env(&[("A".into(), "1".into()), ("A".into(), "2".into())]).unwrap();
        assert_eq!(env[0], ("A".into(), "2".into()));
        assert!(env.iter().any(|(k, v)| k == "PATH" && v == DEFAULT_PATH));
        assert!(check_env(&[("A=B".into(), "1".into())]).is_err());
        assert!(check_env(&[("A".into(), "x\0".into())]).is_err());
    }

    #[test]
    fn signal_exit_codes_map_back() {
        assert_eq!(exit_of(ExitStatus::from_raw(137 << 8), false), Exit::Signal(9));
        assert_eq!(exit_of(ExitStatus::from_raw(3 << 8), false), Exit::Code(3));
        assert_eq!(exit_of(ExitStatus::from_raw(137 << 8), true), Exit::Code(137));
        assert_eq!(exit_of(ExitStatus::from_raw(9), true), Exit::Signal(9));
    }
}
