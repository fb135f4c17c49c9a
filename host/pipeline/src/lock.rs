//! `.skiff/lock.yaml`: every registry tag a pipeline uses, pinned to a manifest digest by
//! `skiff lock`. Loading a pipeline pins its tags from the lock file beside it, so a tag moved
//! in the registry afterwards changes nothing until someone locks again (and commits it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::component_ref::{ComponentRef, Digest};

/// The lock file's path for a pipeline in `dir`: `dir/.skiff/lock.yaml`, or `dir/lock.yaml`
/// when the pipeline itself lives in a `.skiff` folder.
pub fn path_for(dir: &Path) -> PathBuf {
    if dir.file_name().is_some_and(|n| n == ".skiff") {
        dir.join("lock.yaml")
    } else {
        dir.join(".skiff").join("lock.yaml")
    }
}

/// Pins by reference (`registry/repository:tag`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lock {
    /// Reference without digest → digest.
    pub components: BTreeMap<String, Digest>,
    /// Container images (`container:`, `image:`), the same way.
    pub images: BTreeMap<String, Digest>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    #[serde(default)]
    components: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    images: BTreeMap<String, String>,
}

const HEADER: &str = "# Written by `skiff lock`: each registry tag the pipeline uses, pinned to the digest it had.\n# Commit this file. Run `skiff lock` again to move the pins.\n";

impl Lock {
    /// Reads a lock file; a missing file is an empty lock.
    pub fn read(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Parses a lock file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let f: File = serde_norway::from_str(text)
            .map_err(|e| format!("not a lock file ({e}); run `skiff lock` to rewrite it"))?;
        if f.version != 1 {
            return Err(format!("lock file version {} is not supported (this Skiff writes version 1)", f.version));
        }
        Ok(Self { components: entries(f.components)?, images: entries(f.images)? })
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let f = File { version: 1, components: texts(&self.components), images: texts(&self.images) };
        format!("{HEADER}{}", serde_norway::to_string(&f).expect("strings serialize"))
    }

    /// Writes the file atomically, creating its folder.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("yaml.tmp{}", std::process::id()));
        std::fs::write(&tmp, self.render())?;
        std::fs::rename(&tmp, path)
    }

    /// The reference pinned by this lock (unchanged when it is pinned already or not locked).
    pub fn pin(&self, r: &ComponentRef) -> ComponentRef {
        pin(&self.components, r)
    }

    /// An image reference pinned by this lock, as [`Self::pin`].
    pub fn pin_image(&self, r: &ComponentRef) -> ComponentRef {
        pin(&self.images, r)
    }

    /// Whether nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.components.is_empty() && self.images.is_empty()
    }
}

fn pin(map: &BTreeMap<String, Digest>, r: &ComponentRef) -> ComponentRef {
    match (r.digest(), map.get(&r.lock_key())) {
        (None, Some(d)) => r.pinned(d.clone()),
        _ => r.clone(),
    }
}

fn entries(map: BTreeMap<String, String>) -> Result<BTreeMap<String, Digest>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let r = ComponentRef::parse(&k).map_err(|e| format!("lock entry `{k}`: {e}"))?;
        if r.digest().is_some() || r.lock_key() != k {
            return Err(format!("lock entry `{k}` must be written `registry/repository:tag`"));
        }
        let d = Digest::parse(&v).map_err(|e| format!("lock entry `{k}`: {e}"))?;
        out.insert(k, d);
    }
    Ok(out)
}

fn texts(map: &BTreeMap<String, Digest>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_round_trips_and_pins_only_unpinned_tags() {
        let d = Digest::of(b"component");
        let mut lock = Lock::default();
        lock.components.insert("127.0.0.1:5000/acme/notify:1".into(), d.clone());
        lock.images.insert("docker.io/library/node:20".into(), Digest::of(b"image"));
        let text = lock.render();
        assert!(text.contains("images:"), "{text}");
        assert!(text.starts_with("# Written by `skiff lock`"), "{text}");
        assert_eq!(Lock::parse(&text).unwrap(), lock);
        let r = ComponentRef::parse("127.0.0.1:5000/acme/notify:1").unwrap();
        assert_eq!(lock.pin(&r).digest(), Some(&d));
        let other = Digest::of(b"other");
        let pinned = r.pinned(other.clone());
        assert_eq!(lock.pin(&pinned).digest(), Some(&other));
        assert_eq!(path_for(Path::new("repo")), Path::new("repo/.skiff/lock.yaml"));
        assert_eq!(path_for(Path::new("repo/.skiff")), Path::new("repo/.skiff/lock.yaml"));
    }

    #[test]
    fn bad_lock_files_say_what_to_fix() {
        for (text, says) in [
            ("version: 2\n", "version 2"),
            ("version: 1\ncomponents:\n  x: sha256:00\n", "lock entry `x`"),
            ("version: 1\ncomponents:\n  ghcr.io/a/b:1: md5:00\n", "not a digest"),
            ("version: 1\nextra: 1\n", "skiff lock"),
            ("[", "skiff lock"),
        ] {
            let e = Lock::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
