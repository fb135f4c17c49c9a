//! The content-addressed store of shared step components: the bytes of each component pulled
//! from a registry or a URL, under its sha256. Bytes are checked against their digest when they
//! go in and again when they come out, so a file changed on disk never runs.

use std::path::{Path, PathBuf};

use crate::pipeline::component_ref::Digest;

/// Why stored bytes cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not in the store.
    #[error("component {0} is not in the local store ({1}): the host fetches it before the run")]
    Missing(Digest, String),
    /// Bytes whose sha256 is not the digest they are filed under.
    #[error("component bytes do not match digest {expected} (their sha256 is {actual}); refusing them")]
    Mismatch {
        /// The digest asked for.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// The file system failed.
    #[error("component store {0}: {1}")]
    Io(String, std::io::Error),
}

/// Components by digest, in `DIR/sha256/HEX.wasm`.
#[derive(Debug, Clone)]
pub struct ComponentStore {
    dir: PathBuf,
}

impl ComponentStore {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The store a runtime with the default cache directory uses (`CACHE_DIR/components`).
    pub fn default_store() -> Self {
        Self::new(crate::cache::default_dir().join("components"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join("sha256").join(format!("{}.wasm", d.hex()))
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// The bytes filed under `d`, checked against it; a file that does not match is removed.
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.path(d);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(d.clone(), self.dir.display().to_string()));
            }
            Err(e) => return Err(StoreError::Io(path.display().to_string(), e)),
        };
        let actual = Digest::of(&bytes);
        if &actual != d {
            let _ = std::fs::remove_file(&path);
            return Err(StoreError::Mismatch { expected: d.clone(), actual });
        }
        Ok(bytes)
    }

    /// Files `bytes` under `expected` after checking that they hash to it.
    pub fn put(&self, expected: &Digest, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let actual = Digest::of(bytes);
        if &actual != expected {
            return Err(StoreError::Mismatch { expected: expected.clone(), actual });
        }
        let path = self.path(expected);
        let io = |e| StoreError::Io(path.display().to_string(), e);
        std::fs::create_dir_all(path.parent().expect("has a parent")).map_err(io)?;
        let tmp = path.with_extension(format!("tmp{}-{:?}", std::process::id(), std::thread::current().id()));
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_come_out_only_under_their_own_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = ComponentStore::new(dir.path().to_path_buf());
        let d = Digest::of(b"component");
        assert!(matches!(store.read(&d), Err(StoreError::Missing(..))));
        assert!(matches!(store.put(&d, b"other"), Err(StoreError::Mismatch { .. })));
        store.put(&d, b"component").unwrap();
        assert_eq!(store.read(&d).unwrap(), b"component");
        std::fs::write(store.path(&d), b"tampered").unwrap();
        let e = store.read(&d).unwrap_err().to_string();
        assert!(e.contains("do not match"), "{e}");
        assert!(!store.contains(&d), "a tampered file is removed");
    }
}
