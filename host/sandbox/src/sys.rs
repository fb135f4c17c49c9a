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
    /// The `cgroup.procs` files the child moves itself into (by writing `0`).
    pub cgroup_procs: Vec<CString>,
    /// An image root to mount before bubblewrap starts (in a user and mount namespace of the
    /// child's own, which bubblewrap's sandbox then nests in).
    pub overlay: Option<Overlay>,
    /// Descriptors handed to bubblewrap (`--args`, `--ro-bind-data`): their
    /// close-on-exec flag is cleared in the child only.
    pub inherit_fds: Vec<RawFd>,
}

/// An overlay filesystem over an image's root: read-only `lower`, the job's writable `upper`.
/// Everything is formatted before the fork, so mounting allocates nothing.
#[derive(Debug)]
pub(super) struct Overlay {
    /// `"UID UID 1"` and `"GID GID 1"`: the child's own ids, mapped to themselves.
    pub uid_map: CString,
    pub gid_map: CString,
    /// The directory the merged root is mounted on.
    pub target: CString,
    /// `lowerdir=…,upperdir=…,workdir=…`.
    pub options: CString,
}

impl Overlay {
    pub fn new(
        lower: &std::path::Path,
        upper: &std::path::Path,
        work: &std::path::Path,
        target: &std::path::Path,
    ) -> std::io::Result<Overlay> {
        use std::os::unix::ffi::OsStrExt as _;
        let c = |s: Vec<u8>| CString::new(s).map_err(|_| std::io::Error::other("a path contains a NUL byte"));
        let escape = |p: &std::path::Path| -> std::io::Result<Vec<u8>> {
            let b = p.as_os_str().as_bytes();
            // The option string separates with `,` and `:`; such paths are refused, not escaped.
            if b.iter().any(|&x| x == b',' || x == b':' || x == b'\\') {
                return Err(std::io::Error::other(format!(
                    "{} contains `,`, `:` or `\\`, which overlayfs options cannot hold",
                    p.display()
                )));
            }
            Ok(b.to_vec())
        };
        let mut options = b"lowerdir=".to_vec();
        options.extend(escape(lower)?);
        options.extend(b",upperdir=");
        options.extend(escape(upper)?);
        options.extend(b",workdir=");
        options.extend(escape(work)?);
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(Overlay {
            uid_map: c(format!("{uid} {uid} 1").into_bytes())?,
            gid_map: c(format!("{gid} {gid} 1").into_bytes())?,
            target: c(target.as_os_str().as_bytes().to_vec())?,
            options: c(options)?,
        })
    }

    /// In the forked child: a user and mount namespace of its own, then the overlay mount.
    fn mount(&self) -> std::io::Result<()> {
        // SAFETY: plain syscall with integer flags.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        write_file(c"/proc/self/setgroups", b"deny")?;
        write_file(c"/proc/self/uid_map", self.uid_map.as_bytes())?;
        write_file(c"/proc/self/gid_map", self.gid_map.as_bytes())?;
        // Nothing mounted here may reach the host's namespace.
        // SAFETY: valid NUL-terminated strings or null pointers, as mount(2) takes them.
        let private = unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        if private != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above; `options` is a NUL-terminated string.
        let mounted = unsafe {
            libc::mount(c"overlay".as_ptr(), self.target.as_ptr(), c"overlay".as_ptr(), 0, self.options.as_ptr().cast())
        };
        if mounted != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Writes `data` to `path` with raw syscalls (async-signal-safe).
fn write_file(path: &std::ffi::CStr, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: `path` is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: writes from a valid buffer to the fd opened above.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closes the fd opened above, exactly once.
    unsafe { libc::close(fd) };
    if n != data.len() as isize {
        return Err(err);
    }
    Ok(())
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
        for path in &plan.cgroup_procs {
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
        // After joining the cgroups: once in a new user namespace the child has no rights left
        // over the host's cgroup files.
        if let Some(overlay) = &plan.overlay {
            overlay.mount()?;
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

/// Installs only `overlay`'s mount as a std command's `pre_exec` hook (the availability probe).
pub(super) fn install_pre_exec_std(cmd: &mut std::process::Command, overlay: Overlay) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the hook only makes async-signal-safe system calls and allocates nothing.
    unsafe { cmd.pre_exec(move || overlay.mount()) };
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
