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
