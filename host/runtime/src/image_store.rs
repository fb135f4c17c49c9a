//! Container images on this host, ready to be a process sandbox's root: each image's layers
//! unpacked once into a read-only root filesystem (`skiff_sandbox::rootfs`), and what its
//! config says processes get (`Env`, `WorkingDir`, `User`). The registry side
//! (`skiff_registry::image`) pulls and fills it before a run; steps only read it.
//!
//! Layout under `DIR`: `blobs/sha256/HEX` (layer blobs, checked), `rootfs/sha256-HEX/rootfs`
//! (by the platform manifest's digest), and `refs/sha256-HEX.json` (by the digest a pipeline
//! pins, which may be a multi-platform index): the [`PreparedImage`] to use for it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pipeline::component_ref::Digest;

/// An image whose root filesystem is on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedImage {
    /// The reference as pinned (`registry/repository:tag@sha256:…`), for messages.
    pub reference: String,
    /// The linux/amd64 manifest's digest (the pinned digest may be an index's).
    pub manifest: String,
    /// The unpacked root filesystem.
    pub rootfs: PathBuf,
    /// The config's `Env` (`NAME=value`).
    #[serde(default)]
    pub env: Vec<String>,
    /// The config's `WorkingDir` (informational: steps start in the workspace).
    #[serde(default)]
    pub working_dir: String,
    /// The config's `User` (`name`, `uid`, `uid:gid`, `name:group`; empty is root).
    #[serde(default)]
    pub user: String,
}

/// Who processes run as in an image, and their home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUser {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// Images by digest, in `DIR`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The store a host with the default cache directory uses (`CACHE_DIR/images`).
    pub fn default_store() -> Self {
        Self::new(crate::cache::default_dir().join("images"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a layer blob with digest `d` is kept.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(d.hex())
    }

    /// The directory `skiff_sandbox::rootfs::build` builds root filesystems in.
    pub fn rootfs_dir(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    fn ref_path(&self, pinned: &Digest) -> PathBuf {
        self.dir.join("refs").join(format!("sha256-{}.json", pinned.hex()))
    }

    /// Records that `pinned` runs as `image` (written atomically).
    pub fn record(&self, pinned: &Digest, image: &PreparedImage) -> std::io::Result<()> {
        let path = self.ref_path(pinned);
        std::fs::create_dir_all(path.parent().expect("refs/ has a parent"))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(image).expect("serializes"))?;
        std::fs::rename(&tmp, &path)
    }

    /// The prepared image for a pinned digest, when its root filesystem is still there.
    pub fn lookup(&self, pinned: &Digest) -> Option<PreparedImage> {
        let bytes = std::fs::read(self.ref_path(pinned)).ok()?;
        let image: PreparedImage = serde_json::from_slice(&bytes).ok()?;
        image.rootfs.is_dir().then_some(image)
    }
}

impl PreparedImage {
    /// The config's `Env` as pairs (entries without `=` are ignored, as Docker does).
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env.iter().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// `User` resolved against the image's own `/etc/passwd` and `/etc/group`.
    pub fn user(&self) -> Result<ImageUser, String> {
        resolve_user(&self.rootfs, &self.user)
    }
}

/// Resolves a Docker `User` (`""`, `name`, `uid`, `name:group`, `uid:gid`) in a root filesystem.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<ImageUser, String> {
    // Only regular files are read: a symlinked `/etc/passwd` could point anywhere on the host.
    let read = |name: &str| -> String {
        let path = rootfs.join("etc").join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() <= 4 << 20 => std::fs::read_to_string(&path).unwrap_or_default(),
            _ => String::new(),
        }
    };
    let passwd = read("passwd");
    let group = read("group");
    // name:x:uid:gid:gecos:home:shell
    let by = |pick: &dyn Fn(&[&str]) -> bool| -> Option<Vec<String>> {
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 7 && pick(f))
            .map(|f| f.into_iter().map(String::from).collect())
    };
    let (u, g) = match user.trim().split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user.trim(), None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let entry = match u.parse::<u32>() {
        Ok(uid) => by(&|f| f[2].parse() == Ok(uid)),
        Err(_) => Some(by(&|f| f[0] == u).ok_or_else(|| {
            format!("the image's user `{u}` is not in its /etc/passwd: set `User` to a numeric uid, or add the user")
        })?),
    };
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => entry.as_ref().and_then(|f| f[2].parse().ok()).unwrap_or(0),
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("the image's group `{g}` is not in its /etc/group"))?,
        },
        None => entry.as_ref().and_then(|f| f[3].parse().ok()).unwrap_or(uid),
    };
    let home = entry
        .map(|f| f[5].clone())
        .filter(|h| h.starts_with('/'))
        .unwrap_or_else(|| if uid == 0 { "/root".into() } else { "/".into() });
    Ok(ImageUser { uid, gid, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_against_the_images_own_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nnode:x:1000:\nstaff:x:50:\n").unwrap();
        let user = |u: &str| resolve_user(dir.path(), u);
        assert_eq!(user("").unwrap(), ImageUser { uid: 0, gid: 0, home: "/root".into() });
        assert_eq!(user("node").unwrap(), ImageUser { uid: 1000, gid: 1000, home: "/home/node".into() });
        assert_eq!(user("node:staff").unwrap().gid, 50);
        assert_eq!(user("1000:7").unwrap(), ImageUser { uid: 1000, gid: 7, home: "/home/node".into() });
        assert_eq!(user("4242").unwrap(), ImageUser { uid: 4242, gid: 4242, home: "/".into() });
        assert!(user("nobody").unwrap_err().contains("not in its /etc/passwd"));
        assert!(user("node:wheel").unwrap_err().contains("/etc/group"));
        // A passwd that is a symlink out of the image is not read.
        std::fs::remove_file(dir.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("etc/passwd")).unwrap();
        assert!(user("root").is_err());
    }
}
