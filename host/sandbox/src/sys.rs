//! The few raw system calls the sandbox needs.
//!
//! Limits must be set in the forked child between `fork` and `exec` (so they
//! bind bubblewrap and everything it starts, and nothing in the host), which
//! only `pre_exec` can do, and `pre_exec`, `kill`, `setrlimit` and `fcntl` are
//! `unsafe` FFI. Keeping them in this one small module lets the rest of the
//! crate stay under `deny(unsafe_code)`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::RawFd;

/// What the forked child does before it executes bubblewrap (or the program).
#[derive(Debug)]
pub(super) struct PreExec {
    /// `(resource, soft, hard)`, applied with `setrlimit`.
    pub rlimits: Vec<(Resource, u64, u64)>,
    /// A `cgroup.procs` file the child moves itself into (by writing `0`).
    pub cgroup_procs: Option<CString>,
    /// Descriptors handed to bubblewrap (`--args`, `--ro-bind-data`): their
    /// close-on-exec flag is cleared in the child only.
    pub inherit_fds: Vec<RawFd>,
}

/// The rlimits we set; an enum so no `libc` constant leaks out of this module.
#[derive(Debug, Clone, Copy)]
pub(super) enum Resource {
    Processes,
    OpenFiles,
    FileSize,
    CpuSeconds,
    AddressSpace,
}

impl Resource {
    fn raw(self) -> libc::__rlimit_resource_t {
        match self {
            Resource::Processes => libc::RLIMIT_NPROC,
            Resource::OpenFiles => libc::RLIMIT_NOFILE,
            Resource::FileSize => libc::RLIMIT_FSIZE,
            Resource::CpuSeconds => libc::RLIMIT_CPU,
            Resource::AddressSpace => libc::RLIMIT_AS,
        }
    }
}

/// Installs `plan` as the command's `pre_exec` hook.
pub(super) fn install_pre_exec(cmd: &mut tokio::process::Command, plan: PreExec) {
    let hook = move || -> std::io::Result<()> {
        // Only async-signal-safe calls below: no allocation, no locks.
        for &(resource, soft, hard) in &plan.rlimits {
            let lim = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
            // SAFETY: plain syscall with a valid pointer to a stack value.
            if unsafe { libc::setrlimit(resource.raw(), &lim) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(path) = &plan.cgroup_procs {
            // SAFETY: `path` is a valid NUL-terminated string owned by the closure.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: writes one byte from a static buffer to the fd opened above.
            let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            // SAFETY: closes the fd opened above, exactly once.
            unsafe { libc::close(fd) };
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // Descriptors the host itself inherited without close-on-exec (from a shell, a
        // supervisor) must not reach the sandbox: mark every one from 3 up close-on-exec.
        // SAFETY: plain syscall with integer arguments.
        if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) } != 0 {
            // Before Linux 5.11: one descriptor at a time, up to a bound.
            for fd in 3..4096 {
                // SAFETY: fcntl on a descriptor that may be closed just returns EBADF.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
        for &fd in &plan.inherit_fds {
            // SAFETY: `fd` is open in the parent (kept alive across spawn), so in the child too.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe system calls and allocates nothing.
    unsafe { cmd.pre_exec(hook) };
}

/// Sends `sig` to `pid` (a process group when negative). Errors (gone already) are ignored.
pub(super) fn kill(pid: i32, sig: Signal) {
    if pid == 0 || pid == -1 {
        return; // never the caller's own group or every process
    }
    let raw = match sig {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    };
    // SAFETY: plain syscall; `pid` is neither 0 nor -1.
    unsafe { libc::kill(pid, raw) };
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Signal {
    Term,
    Kill,
}

/// Whether the host runs with effective uid 0.
pub(super) fn is_root() -> bool {
    // SAFETY: `geteuid` cannot fail and has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The kernel's limit on arguments and environment together at exec (`ARG_MAX`).
pub(super) fn arg_max() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_ARG_MAX) };
    if n > 0 { n as usize } else { 128 << 10 }
}
