//! Per-run control groups, where the host may create them.
//!
//! A cgroup gives what rlimits cannot: a process count for the whole tree
//! (RLIMIT_NPROC counts per real uid, and not at all for root) and, on cgroup
//! v2, a real memory limit. We use:
//! - cgroup v2, when our own cgroup is delegated to us (writable, with the
//!   `memory`/`pids` controllers enabled for children): `pids.max` and `memory.max`;
//! - otherwise a writable cgroup v1 `pids` hierarchy: `pids.max` only;
//! - otherwise nothing (rlimits only), which `docs/process-sandbox.md` explains.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::sys::{self, Signal};

#[derive(Debug, Clone)]
enum Base {
    /// A delegated v2 cgroup directory; whether `memory` / `pids` are available to children.
    V2 { dir: PathBuf, memory: bool, pids: bool },
    /// A writable directory of the v1 `pids` hierarchy.
    V1Pids { dir: PathBuf },
}

/// One run's cgroup; removed on drop, after its processes are killed.
#[derive(Debug)]
pub(super) struct RunGroup {
    dir: PathBuf,
    /// Whether `memory.max` was set (then RLIMIT_AS is not needed).
    pub memory_limited: bool,
}

static BASE: OnceLock<Option<Base>> = OnceLock::new();
static SEQ: AtomicU64 = AtomicU64::new(0);

fn base() -> Option<&'static Base> {
    BASE.get_or_init(detect).as_ref()
}

/// Our own cgroup path in the hierarchy named `controller` (`""` for v2) per `/proc/self/cgroup`.
fn own_path(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() { ctrls.is_empty() } else { ctrls.split(',').any(|c| c == controller) };
        matches.then(|| path.to_string())
    })
}

/// Mount points by filesystem type and (for v1) controller, from `/proc/self/mountinfo`.
fn mount_point(v2: bool, controller: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split(' ');
        let fstype = r.next()?;
        let _source = r.next()?;
        let opts = r.next().unwrap_or("");
        let mount = left.split(' ').nth(4)?;
        let ok = if v2 { fstype == "cgroup2" } else { fstype == "cgroup" && opts.split(',').any(|o| o == controller) };
        ok.then(|| PathBuf::from(mount))
    })
}

fn join(mount: &Path, cgroup_path: &str) -> PathBuf {
    mount.join(cgroup_path.trim_start_matches('/'))
}

fn detect() -> Option<Base> {
    if let Some(base) = detect_v2() {
        return Some(base);
    }
    let dir = join(&mount_point(false, "pids")?, &own_path("pids")?).join("skiff");
    probe_dir(&dir).then_some(Base::V1Pids { dir })
}

fn detect_v2() -> Option<Base> {
    let dir = join(&mount_point(true, "")?, &own_path("")?);
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if !has("memory") && !has("pids") {
        return None; // e.g. the empty unified hierarchy of a v1/v2 hybrid host
    }
    // Delegation: we may create children under our cgroup and enable controllers for them.
    // A cgroup with processes in it cannot enable controllers for children (no internal
    // processes), so runs go into `skiff/<run>`, and `skiff` enables them for its own children.
    let skiff = dir.join("skiff");
    if !probe_dir(&skiff) {
        return None;
    }
    let want: Vec<&str> = ["memory", "pids"].into_iter().filter(|c| has(c)).collect();
    let enable = want.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
    let _ = std::fs::write(dir.join("cgroup.subtree_control"), &enable);
    let _ = std::fs::write(skiff.join("cgroup.subtree_control"), &enable);
    let enabled = std::fs::read_to_string(skiff.join("cgroup.subtree_control")).unwrap_or_default();
    let on = |c: &str| enabled.split_whitespace().any(|x| x == c);
    let (memory, pids) = (on("memory"), on("pids"));
    (memory || pids).then_some(Base::V2 { dir: skiff, memory, pids })
}

/// Creates `dir` if needed and checks that we can create and remove a child in it.
fn probe_dir(dir: &Path) -> bool {
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join(format!("probe-{}", std::process::id()));
    let ok = std::fs::create_dir(&probe).is_ok();
    let _ = std::fs::remove_dir(&probe);
    ok
}

/// Whether each run gets a `pids.max`.
pub fn limits_pids() -> bool {
    matches!(base(), Some(Base::V1Pids { .. } | Base::V2 { pids: true, .. }))
}

/// A human-readable line about what cgroups give this host, for docs and diagnostics.
pub fn describe() -> &'static str {
    match base() {
        Some(Base::V2 { memory: true, pids: true, .. }) => "cgroup v2 (delegated): pids.max and memory.max per run",
        Some(Base::V2 { memory: true, .. }) => "cgroup v2 (delegated): memory.max per run",
        Some(Base::V2 { .. }) => "cgroup v2 (delegated): pids.max per run",
        Some(Base::V1Pids { .. }) => "cgroup v1 pids hierarchy: pids.max per run (memory: RLIMIT_AS)",
        None => "no writable cgroup: rlimits only",
    }
}

impl RunGroup {
    /// A fresh cgroup for one run, or `None` when the host has none to give.
    pub fn create(max_processes: u64, memory_bytes: u64) -> Option<RunGroup> {
        let base = base()?;
        let name = format!("run-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let (parent, memory, pids) = match base {
            Base::V2 { dir, memory, pids } => (dir, *memory, *pids),
            Base::V1Pids { dir } => (dir, false, true),
        };
        let dir = parent.join(name);
        std::fs::create_dir(&dir).ok()?;
        let mut group = RunGroup { dir, memory_limited: false };
        if pids && max_processes > 0 && std::fs::write(group.dir.join("pids.max"), max_processes.to_string()).is_err() {
            return None; // dropping removes the directory
        }
        group.memory_limited = memory
            && memory_bytes > 0
            && std::fs::write(group.dir.join("memory.max"), memory_bytes.to_string()).is_ok();
        if group.memory_limited {
            let _ = std::fs::write(group.dir.join("memory.swap.max"), "0");
        }
        Some(group)
    }

    /// The `cgroup.procs` file a process writes `0` into to join.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// The processes still in the group.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// SIGKILLs every process in the group until it is empty (or about a second passes).
    pub async fn kill_all(&self) {
        let mut pause = Duration::from_millis(1);
        let give_up = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            let pids = self.pids();
            if pids.is_empty() || std::time::Instant::now() > give_up {
                return;
            }
            // `cgroup.kill` (v2, Linux 5.14+) kills atomically, racing no fork.
            let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
            for pid in pids {
                sys::kill(pid, Signal::Kill);
            }
            // Exiting processes leave the list a moment after they die.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

impl Drop for RunGroup {
    fn drop(&mut self) {
        // Fails (EBUSY) only if a process survived `kill_all`; the empty directory then stays.
        let _ = std::fs::remove_dir(&self.dir);
    }
}
