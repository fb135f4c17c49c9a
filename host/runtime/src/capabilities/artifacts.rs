//! The `artifacts` interface: copies a workspace file into the run's artifact store
//! ([`crate::artifact_store`]).

use std::path::{Component, Path, PathBuf};

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::log::LogPipe;
use crate::artifact_store::{ArtifactStore, valid_name};
use crate::bindings::skiff::step::artifacts as wit;

/// Largest single artifact.
pub const MAX_ARTIFACT: u64 = 1 << 30;

/// A file of the workspace, refusing anything that leaves it (`..`, absolute
/// paths, symlinks pointing out).
pub fn resolve_in_workspace(workspace: &Path, rel: &str) -> Result<PathBuf, String> {
    let rel = rel.trim_start_matches("/workspace/");
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("`{rel}` is outside the workspace: give a path relative to it without `..`"));
    }
    let root = workspace.canonicalize().map_err(|e| format!("workspace unavailable: {e}"))?;
    let full = root.join(p).canonicalize().map_err(|e| format!("`{rel}`: {e}"))?;
    if !full.starts_with(&root) {
        return Err(format!("`{rel}` leads outside the workspace (through a symlink)"));
    }
    Ok(full)
}

/// What the `artifacts` interface of one step holds: the run's store, and where files come from.
pub struct ArtifactsHost {
    /// The run's artifact store; none refuses uploads.
    pub store: Option<Arc<dyn ArtifactStore>>,
    /// The run and step an artifact is stored under.
    pub run_id: String,
    pub step_id: String,
    /// The step's workspace: the only place files are taken from.
    pub workspace: PathBuf,
    /// Where what was stored is said.
    pub log: Arc<LogPipe>,
}

impl ArtifactsHost {
    /// Adds the interface to a linker whose store data holds an `ArtifactsHost`.
    pub fn add_to_linker<T: 'static>(linker: &mut Linker<T>, get: fn(&mut T) -> &mut Self) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<Self>>(linker, get)
    }
}

impl wit::Host for ArtifactsHost {
    fn upload(&mut self, name: String, path: String) -> wasmtime::Result<Result<u64, String>> {
        let Some(store) = self.store.clone() else {
            return Ok(Err("this run has no artifact store; `skiff step run` takes `--artifacts DIR`".into()));
        };
        if !valid_name(&name) {
            return Ok(Err(format!("artifact name `{name}` must be letters, digits, `-`, `_` and `.`")));
        }
        let src = match resolve_in_workspace(&self.workspace, &path) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let size = match std::fs::metadata(&src) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Ok(Err(format!("`{path}` is not a file"))),
            Err(e) => return Ok(Err(format!("`{path}`: {e}"))),
        };
        if size > MAX_ARTIFACT {
            return Ok(Err(format!("`{path}` is larger than the 1 GiB artifact limit")));
        }
        if let Err(e) = store.put(&self.run_id, &self.step_id, &name, &src) {
            return Ok(Err(format!("storing artifact `{name}` failed: {e}")));
        }
        self.log.system(format!("stored artifact `{name}` ({size} bytes)"));
        Ok(Ok(size))
    }
}
