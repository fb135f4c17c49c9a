//! Per-run control groups, where the host may create them.
//!
//! A cgroup gives what rlimits cannot: limits and accounting for a whole process
//! tree. RLIMIT_NPROC counts per real uid (and not at all for root), RLIMIT_AS is
//! virtual memory per process, and RLIMIT_CPU is CPU time per process. We use:
//! - cgroup v2, when our own cgroup is delegated to us (writable, with the
//!   `memory`/`pids` controllers enabled for children): `pids.max`, `memory.max`,
//!   and for metering `cpu.stat` and `memory.peak`;
//! - otherwise each writable cgroup v1 hierarchy on its own: `pids` (`pids.max`),
//!   `memory` (`memory.limit_in_bytes`, `memory.max_usage_in_bytes`) and `cpuacct`
//!   (`cpuacct.usage`);
//! - otherwise nothing (rlimits only, no tree metering), which `describe` says.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::sys::{self, Signal};

#[derive(Debug, Clone, Default)]
struct Base {
    /// A delegated v2 cgroup directory (`…/skiff`), with the controllers enabled for children.
    v2: Option<V2>,
    /// Writable `skiff` directories in v1 hierarchies, one per controller.
    v1_pids: Option<PathBuf>,
    v1_memory: Option<PathBuf>,
    v1_cpuacct: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct V2 {
    dir: PathBuf,
    memory: bool,
    pids: bool,
}

/// One run's cgroups (one per v1 hierarchy, or one v2 group); removed on drop, after
/// their processes are killed.
#[derive(Debug)]
pub(super) struct RunGroup {
    dirs: Vec<PathBuf>,
    /// Where CPU time is read: v2 `cpu.stat` or v1 `cpuacct.usage`.
    cpu: Option<Cpu>,
    /// The group whose memory is limited and metered, and how.
    memory: Option<Memory>,
    /// Whether the memory limit was set (then RLIMIT_AS is not needed).
    pub memory_limited: bool,
}

#[derive(Debug)]
enum Cpu {
    V2(PathBuf),
    V1(PathBuf),
}

#[derive(Debug)]
enum Memory {
    V2(PathBuf),
    V1(PathBuf),
}

/// What the kernel counted for one run's process tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeUsage {
    /// CPU time of every process of the tree, user and system, when the host accounts it.
    pub cpu: Option<Duration>,
    /// The tree's peak memory (resident and page cache charged to it), when the host accounts it.
    pub peak_memory_bytes: Option<u64>,
    /// The kernel killed a process of the tree for passing the memory limit.
    pub oom_killed: bool,
}

static BASE: OnceLock<Base> = OnceLock::new();
static SEQ: AtomicU64 = AtomicU64::new(0);

fn base() -> &'static Base {
    BASE.get_or_init(detect)
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

fn detect() -> Base {
    if let Some(v2) = detect_v2() {
        return Base { v2: Some(v2), ..Base::default() };
    }
    let v1 = |controller: &str| {
        let dir = join(&mount_point(false, controller)?, &own_path(controller)?).join("skiff");
        probe_dir(&dir).then_some(dir)
    };
    Base { v2: None, v1_pids: v1("pids"), v1_memory: v1("memory"), v1_cpuacct: v1("cpuacct") }
}

fn detect_v2() -> Option<V2> {
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
    (memory || pids).then_some(V2 { dir: skiff, memory, pids })
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
    let b = base();
    b.v1_pids.is_some() || b.v2.as_ref().is_some_and(|v| v.pids)
}

/// Whether each run's memory is limited (and metered) for the whole tree.
pub fn limits_memory() -> bool {
    let b = base();
    b.v1_memory.is_some() || b.v2.as_ref().is_some_and(|v| v.memory)
}

/// Whether each run's CPU time is counted for the whole tree.
pub fn meters_cpu() -> bool {
    let b = base();
    b.v2.is_some() || b.v1_cpuacct.is_some()
}

/// A human-readable line about what cgroups give this host, for `skiff doctor`.
pub fn describe() -> String {
    let b = base();
    let on = |yes: bool, what: &str| yes.then(|| what.to_string());
    let (kind, parts): (&str, Vec<Option<String>>) = match &b.v2 {
        Some(v) => {
            ("cgroup v2 (delegated)", vec![on(v.pids, "pids.max"), on(v.memory, "memory.max"), Some("cpu.stat".into())])
        }
        None => (
            "cgroup v1",
            vec![
                on(b.v1_pids.is_some(), "pids.max"),
                on(b.v1_memory.is_some(), "memory.limit_in_bytes"),
                on(b.v1_cpuacct.is_some(), "cpuacct.usage"),
            ],
        ),
    };
    let parts: Vec<String> = parts.into_iter().flatten().collect();
    let mut line = if parts.is_empty() {
        "no writable cgroup: rlimits only, per process (no process-tree memory limit or metering)".to_string()
    } else {
        format!("{kind}: {} per run", parts.join(", "))
    };
    if !limits_memory() && !parts.is_empty() {
        line.push_str("; memory: RLIMIT_AS per process");
    }
    line
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (`cpu.stat`, `memory.events`, `memory.oom_control`): the value of `key`.
fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

impl RunGroup {
    /// Fresh cgroups for one run, or `None` when the host has none to give.
    pub fn create(max_processes: u64, memory_bytes: u64) -> Option<RunGroup> {
        let b = base();
        let name = format!("run-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let mut group = RunGroup { dirs: Vec::new(), cpu: None, memory: None, memory_limited: false };
        let mut make = |parent: &Path| -> Option<PathBuf> {
            let dir = parent.join(&name);
            std::fs::create_dir(&dir).ok()?;
            group.dirs.push(dir.clone());
            Some(dir)
        };
        // Any step that fails leaves `group` to be dropped, which removes what was made.
        let mut pids_dir = None;
        let mut memory_dir = None;
        if let Some(v) = &b.v2 {
            let dir = make(&v.dir)?;
            group.cpu = Some(Cpu::V2(dir.clone()));
            pids_dir = v.pids.then(|| dir.clone());
            memory_dir = v.memory.then(|| dir.clone()).map(Memory::V2);
        } else {
            if let Some(parent) = &b.v1_pids {
                pids_dir = Some(make(parent)?);
            }
            if let Some(parent) = &b.v1_memory {
                memory_dir = Some(Memory::V1(make(parent)?));
            }
            if let Some(parent) = &b.v1_cpuacct {
                group.cpu = Some(Cpu::V1(make(parent)?));
            }
        }
        if group.dirs.is_empty() {
            return None;
        }
        if let Some(dir) = pids_dir
            && max_processes > 0
            && std::fs::write(dir.join("pids.max"), max_processes.to_string()).is_err()
        {
            return None;
        }
        if memory_bytes > 0 {
            group.memory_limited = match &memory_dir {
                Some(Memory::V2(dir)) => {
                    let ok = std::fs::write(dir.join("memory.max"), memory_bytes.to_string()).is_ok();
                    // No swapping past the limit: the limit is what the step may use.
                    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                    ok
                }
                Some(Memory::V1(dir)) => {
                    let ok = std::fs::write(dir.join("memory.limit_in_bytes"), memory_bytes.to_string()).is_ok();
                    // Where swap is accounted, memory+swap gets the same limit: no swapping past it.
                    let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), memory_bytes.to_string());
                    ok
                }
                None => false,
            };
        }
        group.memory = memory_dir;
        Some(group)
    }

    /// The `cgroup.procs` files a process writes `0` into to join every group of the run.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The processes still in the group.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .flat_map(|d| {
                std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// CPU time the tree has used so far, when the host accounts it.
    pub fn cpu_time(&self) -> Option<Duration> {
        match self.cpu.as_ref()? {
            Cpu::V2(dir) => read_key(&dir.join("cpu.stat"), "usage_usec").map(Duration::from_micros),
            Cpu::V1(dir) => read_u64(&dir.join("cpuacct.usage")).map(Duration::from_nanos),
        }
    }

    /// What the kernel counted for the tree; read before the group is removed.
    pub fn usage(&self) -> TreeUsage {
        let (peak, oom) = match &self.memory {
            Some(Memory::V2(dir)) => (
                read_u64(&dir.join("memory.peak")),
                read_key(&dir.join("memory.events"), "oom_kill").is_some_and(|n| n > 0),
            ),
            Some(Memory::V1(dir)) => (
                read_u64(&dir.join("memory.max_usage_in_bytes")),
                read_key(&dir.join("memory.oom_control"), "oom_kill").is_some_and(|n| n > 0),
            ),
            None => (None, false),
        };
        TreeUsage { cpu: self.cpu_time(), peak_memory_bytes: peak, oom_killed: oom && self.memory_limited }
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
            if let Some(dir) = self.dirs.first() {
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            }
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
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
