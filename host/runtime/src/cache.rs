//! Components compiled once and cached on disk, keyed by the sha256 of the
//! component bytes and by the engine's configuration, so an artifact is never
//! loaded into an engine it was not compiled for.

#![allow(unsafe_code)]

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components live: `$SKIFF_CACHE_DIR`, else `$XDG_CACHE_HOME/skiff`, else `~/.cache/skiff`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SKIFF_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("skiff");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("skiff")
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The on-disk cache of precompiled components.
#[derive(Debug, Clone)]
pub struct DiskCache {
    dir: PathBuf,
    engine_key: String,
}

/// Whether a component came from the cache or was compiled now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Memory,
    Disk,
    Compiled,
}

impl DiskCache {
    pub fn new(engine: &Engine, dir: PathBuf) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        Self { dir, engine_key: format!("{:016x}", h.finish()) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, digest: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}-{}.cwasm", hex::encode(digest), self.engine_key))
    }

    /// Loads the component from the cache, or compiles and stores it.
    /// `bytes` is asked for only when nothing compiled is cached: a shared component whose
    /// compiled form is cached runs without its bytes being read again.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &[u8; 32],
        bytes: impl FnOnce() -> Result<Vec<u8>, crate::LoadError>,
    ) -> Result<(Component, Source), crate::LoadError> {
        let path = self.path(digest);
        if path.exists() {
            // SAFETY: the file was written by `precompile_component` of an
            // engine with this same configuration (the name carries its hash),
            // in a directory only this host writes; a truncated or foreign file
            // fails wasmtime's header checks and is recompiled below.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok((c, Source::Disk)),
                Err(_) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let not_a_component = |e: wasmtime::Error| crate::LoadError::NotAComponent(format!("{e:?}"));
        let compiled = engine.precompile_component(&bytes()?).map_err(not_a_component)?;
        // SAFETY: these bytes were produced by this engine a moment ago.
        let component = unsafe { Component::deserialize(engine, &compiled) }.map_err(not_a_component)?;
        if std::fs::create_dir_all(&self.dir).is_ok() {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, &compiled).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
        Ok((component, Source::Compiled))
    }
}

/// A map that keeps at most `cap` entries, dropping the least recently used: compiled
/// components held in memory stay bounded on a host that runs many distinct ones.
#[derive(Debug)]
pub struct Lru<K, V> {
    cap: usize,
    tick: u64,
    map: std::collections::HashMap<K, (V, u64)>,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Lru<K, V> {
    /// A cache of at most `cap` entries (at least one).
    pub fn new(cap: usize) -> Self {
        Self { cap: cap.max(1), tick: 0, map: Default::default() }
    }

    /// The entry under `k`, marked as used now.
    pub fn get(&mut self, k: &K) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(k).map(|(v, used)| {
            *used = tick;
            v.clone()
        })
    }

    /// Stores `v` under `k`, dropping the least recently used entries past the cap. Eviction
    /// scans the map: caps are small (components, not requests) and inserts rare.
    pub fn insert(&mut self, k: K, v: V) {
        self.tick += 1;
        self.map.insert(k, (v, self.tick));
        while self.map.len() > self.cap {
            let oldest = self.map.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.map.remove(&k),
                None => break,
            };
        }
    }

    pub fn remove(&mut self, k: &K) {
        self.map.remove(k);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }
}

/// What identifies a file's contents without reading it: size, modification and change
/// times, and inode. Trusted only once the file is older than [`FileStamp::SETTLED`] at the
/// time it was hashed, as git trusts its index: a file rewritten within the file system's
/// timestamp granularity of the hash could otherwise keep its stamp with new contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    ctime: (i64, i64),
    ino: (u64, u64),
}

impl FileStamp {
    /// How long a file must have been left alone before its stamp stands for its contents:
    /// Linux stamps files from a clock that lags by at most a tick (10 ms at HZ=100), so a
    /// rewrite 20 ms after the stamp gets another one. A stamp without a sub-second part comes
    /// from a file system with coarse times (FAT, some network ones): two seconds there.
    pub const SETTLED: std::time::Duration = std::time::Duration::from_millis(20);
    const SETTLED_COARSE: std::time::Duration = std::time::Duration::from_secs(2);

    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            ino: (meta.dev(), meta.ino()),
        }
    }

    /// Whether the file had settled when it was hashed at `hashed_at` (see [`FileStamp`]).
    pub fn settled_at(&self, hashed_at: std::time::SystemTime) -> bool {
        let changed = std::time::UNIX_EPOCH + std::time::Duration::new(self.ctime.0.max(0) as u64, self.ctime.1 as u32);
        let newest = self.modified.map_or(changed, |m| m.max(changed));
        let coarse = newest.duration_since(std::time::UNIX_EPOCH).is_ok_and(|d| d.subsec_nanos() == 0);
        newest + if coarse { Self::SETTLED_COARSE } else { Self::SETTLED } <= hashed_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lru_keeps_its_cap_and_drops_the_least_recently_used() {
        let mut lru = Lru::new(3);
        for k in 0..3 {
            lru.insert(k, k * 10);
        }
        assert_eq!(lru.get(&0), Some(0), "0 is now the most recently used");
        lru.insert(3, 30);
        assert_eq!(lru.len(), 3);
        assert!(!lru.contains(&1), "1 was the least recently used");
        assert!(lru.contains(&0) && lru.contains(&2) && lru.contains(&3));
        for k in 10..1000 {
            lru.insert(k, k);
        }
        assert_eq!(lru.len(), 3);
    }

    #[test]
    fn a_stamp_is_trusted_only_for_a_file_that_had_settled() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.wasm");
        std::fs::write(&f, b"one").unwrap();
        let stamp = FileStamp::of(&std::fs::metadata(&f).unwrap());
        let now = std::time::SystemTime::now();
        assert!(!stamp.settled_at(now), "written just now");
        assert!(stamp.settled_at(now + FileStamp::SETTLED + std::time::Duration::from_millis(50)));
        // Whole seconds: a file system with coarse times, trusted only after two seconds.
        let secs = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(secs).unwrap();
        let coarse = FileStamp { ctime: (0, 0), ..FileStamp::of(&std::fs::metadata(&f).unwrap()) };
        assert!(!coarse.settled_at(secs + std::time::Duration::from_secs(1)));
        assert!(coarse.settled_at(secs + std::time::Duration::from_secs(3)));
        std::fs::write(&f, b"two").unwrap();
        let same_len = FileStamp::of(&std::fs::metadata(&f).unwrap());
        assert_eq!(same_len.len, stamp.len);
    }
}
