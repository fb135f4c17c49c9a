//! The bubblewrap command line: which namespaces, which mounts, which environment.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The directory the workspace is mounted at inside the sandbox.
pub const WORKSPACE: &str = "/workspace";

/// The parts of `/etc` that tools, the dynamic loader, DNS and TLS need. Nothing
/// with secrets (`shadow`, `gshadow`, `ssh/`), nothing user-specific (`npmrc`,
/// `pip.conf` may hold tokens). `passwd` and `group` are replaced by minimal ones.
const ETC: &[&str] = &[
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "gai.conf",
    "gitconfig",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "protocols",
    "resolv.conf",
    "services",
    "ssl",
    "timezone",
];

/// Top-level entries that are symlinks into `/usr` on merged-/usr systems and
/// directories elsewhere; recreated as the host has them.
const ROOT_LINKS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// The user the program runs as inside the sandbox (mapped to the host's own uid).
pub const SANDBOX_UID: u32 = 1000;

pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
skiff:x:1000:1000:skiff:/tmp:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
pub const GROUP: &str = "root:x:0:\nskiff:x:1000:\nnogroup:x:65534:\n";

#[derive(Debug, Clone)]
enum RootEntry {
    Symlink(String, PathBuf),
    Dir(String),
}

fn root_layout() -> &'static [RootEntry] {
    static LAYOUT: OnceLock<Vec<RootEntry>> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        ROOT_LINKS
            .iter()
            .filter_map(|name| {
                let path = Path::new("/").join(name);
                if let Ok(target) = std::fs::read_link(&path) {
                    Some(RootEntry::Symlink(name.to_string(), target))
                } else if path.is_dir() {
                    Some(RootEntry::Dir(name.to_string()))
                } else {
                    None
                }
            })
            .collect()
    })
}

/// Where the data for generated files comes from: descriptors readable by bubblewrap.
#[derive(Debug, Clone, Copy)]
pub struct DataFds {
    pub passwd: i32,
    pub group: i32,
}

/// Everything `run` decided, in the shape bubblewrap wants.
#[derive(Debug)]
pub struct Plan<'a> {
    pub workspace: &'a Path,
    /// Relative, already checked not to escape.
    pub cwd: &'a str,
    /// The way out, for a sandbox that may use the network; its namespace is new either way.
    pub egress: Option<&'a super::Egress>,
    /// An image root (already mounted by the child before bubblewrap starts) instead of the host's.
    pub image: Option<&'a ImagePlan>,
    /// Host directories bound at the given places.
    pub binds: &'a [super::Bind],
}

/// An image root as bubblewrap sees it: the merged overlay, and the image's user.
#[derive(Debug)]
pub struct ImagePlan {
    pub merged: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// The options (passed through `--args FD`, so nothing of the step's shows up in the host's
/// process list), ending before the command.
pub fn options(plan: &Plan<'_>, fds: DataFds) -> Vec<String> {
    let mut a: Vec<String> = Vec::with_capacity(64);
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]);
    push(&["--unshare-net"]);
    push(&["--die-with-parent", "--new-session", "--cap-drop", "ALL"]);
    if let Some(image) = plan.image {
        // The image's own `/etc` (passwd, os-release, certificates) comes with its root.
        push(&["--uid", &image.uid.to_string(), "--gid", &image.gid.to_string(), "--hostname", "skiff"]);
        push(&["--bind", &image.merged.to_string_lossy(), "/"]);
        push(&["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
    } else {
        host_root(&mut a, fds);
    }
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["--bind", &plan.workspace.to_string_lossy(), WORKSPACE]);
    for bind in plan.binds {
        let how = if bind.read_only { "--ro-bind" } else { "--bind" };
        push(&[how, &bind.host.to_string_lossy(), &bind.inside]);
    }
    if let Some(e) = plan.egress {
        push(&["--dir", "/run/skiff"]);
        push(&["--bind", &e.socket.to_string_lossy(), super::relay::SOCKET]);
        push(&["--ro-bind", &e.relay.to_string_lossy(), super::relay::PROGRAM]);
    }
    if plan.image.is_none() {
        // The root itself is a tmpfs bubblewrap made; nothing may be created in it.
        push(&["--remount-ro", "/"]);
    }
    let cwd = if plan.cwd.is_empty() { WORKSPACE.to_string() } else { format!("{WORKSPACE}/{}", plan.cwd) };
    // The environment is bubblewrap's own (set when it is started), which it hands on as it is:
    // `--setenv` would count three arguments a variable against bubblewrap's limit of 9000.
    push(&["--chdir", &cwd]);
    a
}

/// The host's `/usr` and the few parts of `/etc` tools need, read-only, under an empty root.
fn host_root(a: &mut Vec<String>, fds: DataFds) {
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["--uid", &SANDBOX_UID.to_string(), "--gid", &SANDBOX_UID.to_string(), "--hostname", "skiff"]);
    push(&["--ro-bind", "/usr", "/usr"]);
    for entry in root_layout() {
        match entry {
            RootEntry::Symlink(name, target) => {
                push(&["--symlink", &target.to_string_lossy(), &format!("/{name}")]);
            }
            RootEntry::Dir(name) => push(&["--ro-bind", &format!("/{name}"), &format!("/{name}")]),
        }
    }
    for name in ETC {
        let path = format!("/etc/{name}");
        push(&["--ro-bind-try", &path, &path]);
    }
    push(&["--perms", "0644", "--ro-bind-data", &fds.passwd.to_string(), "/etc/passwd"]);
    push(&["--perms", "0644", "--ro-bind-data", &fds.group.to_string(), "/etc/group"]);
    push(&["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
}

/// NUL-separated, as `--args` reads them.
pub fn encode_args(args: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for arg in args {
        out.extend_from_slice(arg.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_deny_network_and_keep_secrets_out_of_etc() {
        let plan = Plan { workspace: Path::new("/ws"), cwd: "sub", egress: None, image: None, binds: &[] };
        let args = options(&plan, DataFds { passwd: 7, group: 8 });
        let joined = args.join(" ");
        assert!(joined.contains("--unshare-net"));
        assert!(joined.contains("--bind /ws /workspace"));
        assert!(joined.contains("--chdir /workspace/sub"));
        assert!(!joined.contains("--setenv") && !joined.contains("--clearenv"), "the environment is bubblewrap's own");
        assert!(!joined.contains("shadow"));
        let egress = crate::Egress { socket: "/h/egress.sock".into(), relay: "/h/relay".into() };
        let plan = Plan { egress: Some(&egress), ..plan };
        let joined = options(&plan, DataFds { passwd: 7, group: 8 }).join(" ");
        assert!(joined.contains("--unshare-net"), "the host's network is never shared");
        assert!(joined.contains("--bind /h/egress.sock /run/skiff/egress.sock"), "{joined}");
    }
}
