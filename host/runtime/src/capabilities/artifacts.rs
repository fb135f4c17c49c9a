//! The `artifacts` interface: copies a workspace file into the run's artifact store
//! ([`crate::artifact_store`]), and the artifacts of the jobs a job needs back into its
//! workspace.

use std::io::{Read as _, Write as _};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use wasmtime::component::{HasSelf, Linker};

use super::log::LogPipe;
use crate::artifact_store::{Artifact, ArtifactStore, valid_name};
use crate::bindings::skiff::step::artifacts as wit;

/// Largest single artifact.
pub const MAX_ARTIFACT: u64 = 1 << 30;

/// A path a step gave, relative to the workspace: `/workspace/` and `./` dropped; refused when
/// absolute or with `..`, so it cannot name anything outside.
pub fn relative_path(rel: &str) -> Result<PathBuf, String> {
    let trimmed = rel.trim();
    // The workspace is also preopened as `/workspace`: a path under it is a path in it.
    let rel = match trimmed.strip_prefix("/workspace").filter(|r| r.is_empty() || r.starts_with('/')) {
        Some(inside) => inside.trim_start_matches('/'),
        None if trimmed.starts_with('/') => {
            return Err(format!("`{trimmed}` is outside the workspace: give a path relative to it"));
        }
        None => trimmed,
    };
    let mut out = PathBuf::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return Err(format!("`{trimmed}` is outside the workspace: give a path relative to it without `..`")),
        }
    }
    Ok(out)
}

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

/// Folder `rel` of the workspace, created where missing. A symbolic link or a file on the way
/// is refused, so nothing written into the folder can land outside the workspace.
pub fn workspace_dir(workspace: &Path, rel: &Path) -> Result<PathBuf, String> {
    let mut dir = workspace.canonicalize().map_err(|e| format!("workspace unavailable: {e}"))?;
    for c in rel.components() {
        dir.push(c);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("`{}` is a symbolic link: nothing is written through one", rel.display()));
            }
            Ok(_) => return Err(format!("`{}` is a file, not a folder", rel.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir).map_err(|e| format!("creating `{}`: {e}", rel.display()))?;
            }
            Err(e) => return Err(format!("`{}`: {e}", rel.display())),
        }
    }
    Ok(dir)
}

/// What the `artifacts` interface of one step holds: the run's store, and where files come from.
pub struct ArtifactsHost {
    /// The run's artifact store; none refuses uploads.
    pub store: Option<Arc<dyn ArtifactStore>>,
    /// The run, job and step an artifact is stored under.
    pub run_id: String,
    pub job_id: String,
    pub step_id: String,
    /// The job instances this job waits for, directly or through others: whose artifacts it
    /// may download.
    pub needs: Vec<String>,
    /// The step's workspace: the only place files are taken from and written to.
    pub workspace: PathBuf,
    /// Where what was stored is said.
    pub log: Arc<LogPipe>,
}

impl ArtifactsHost {
    /// Adds the interface to a linker whose store data holds an `ArtifactsHost`.
    pub fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
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
        if let Err(e) = store.put(&self.run_id, &self.job_id, &self.step_id, &name, &src) {
            return Ok(Err(format!("storing artifact `{name}` failed: {e}")));
        }
        self.log.system(format!("stored artifact `{name}` ({size} bytes)"));
        Ok(Ok(size))
    }

    async fn download(&mut self, name: Option<String>, path: String) -> wasmtime::Result<Result<Vec<String>, String>> {
        let Some(store) = self.store.clone() else {
            return Ok(Err("this run has no artifact store: artifacts are downloaded in pipeline runs".into()));
        };
        let job = Download {
            store,
            run: self.run_id.clone(),
            job: self.job_id.clone(),
            needs: self.needs.clone(),
            workspace: self.workspace.clone(),
        };
        let got = tokio::task::spawn_blocking(move || job.run(name.as_deref(), &path))
            .await
            .unwrap_or_else(|e| Err(format!("the download stopped: {e}")));
        if let Ok(names) = &got {
            let bytes: u64 = names.iter().map(|(_, size)| size).sum();
            self.log.system(format!("downloaded {} artifact(s), {bytes} bytes", names.len()));
        }
        Ok(got.map(|names| names.into_iter().map(|(n, _)| n).collect()))
    }
}

/// One `artifacts.download`, run on a blocking thread.
struct Download {
    store: Arc<dyn ArtifactStore>,
    run: String,
    job: String,
    needs: Vec<String>,
    workspace: PathBuf,
}

impl Download {
    /// The names written, with their sizes.
    fn run(&self, name: Option<&str>, path: &str) -> Result<Vec<(String, u64)>, String> {
        if self.needs.is_empty() {
            return Err(format!(
                "job `{}` needs no other job, so no artifacts are there for it to download: list the jobs \
                 that upload them in its `needs:`",
                self.job
            ));
        }
        let all = self.store.list(&self.run).map_err(|e| format!("listing the run's artifacts failed: {e}"))?;
        let (ours, others): (Vec<Artifact>, Vec<Artifact>) = all.into_iter().partition(|a| self.needs.contains(&a.job));
        let chosen: Vec<Artifact> = match name {
            None => ours,
            Some(n) if !valid_name(n) => {
                return Err(format!("artifact name `{n}` must be letters, digits, `-`, `_` and `.`"));
            }
            Some(n) => match (ours.iter().find(|a| a.name == n), others.iter().find(|a| a.name == n)) {
                (Some(a), _) => vec![a.clone()],
                (None, Some(a)) if !a.job.is_empty() => {
                    return Err(format!(
                        "artifact `{n}` was stored by job `{}`, which job `{}` does not need: add it to `needs:`",
                        a.job, self.job
                    ));
                }
                _ => {
                    let names: Vec<&str> = ours.iter().map(|a| a.name.as_str()).collect();
                    let stored =
                        if names.is_empty() { "none".to_string() } else { format!("only {}", names.join(", ")) };
                    return Err(format!("the jobs this job needs stored no artifact `{n}` ({stored})"));
                }
            },
        };
        let dir = workspace_dir(&self.workspace, &relative_path(path)?)?;
        chosen.iter().map(|a| self.fetch(a, &dir).map(|size| (a.name.clone(), size))).collect()
    }

    /// Copies one artifact to `dir/NAME` through a temporary file and a rename (which replaces
    /// a symbolic link there rather than writing through it), checking its digest.
    fn fetch(&self, artifact: &Artifact, dir: &Path) -> Result<u64, String> {
        let name = &artifact.name;
        let fail = |e: std::io::Error| format!("downloading artifact `{name}` failed: {e}");
        let Some((meta, mut reader)) = self.store.open(&self.run, name).map_err(fail)? else {
            return Err(format!("artifact `{name}` is gone from the store"));
        };
        let target = dir.join(name);
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            return Err(format!("artifact `{name}` would replace a folder of the same name in the workspace"));
        }
        let tmp = dir.join(format!(".skiff-download-{name}"));
        let copied = (|| {
            let mut out = std::fs::File::create(&tmp)?;
            let mut hash = Sha256::new();
            let mut size = 0u64;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                if size > MAX_ARTIFACT {
                    return Err(std::io::Error::other("it is larger than the 1 GiB artifact limit"));
                }
                hash.update(&buf[..n]);
                out.write_all(&buf[..n])?;
            }
            if hex::encode(hash.finalize()) != meta.sha256 {
                return Err(std::io::Error::other("its bytes do not match the digest it was stored with"));
            }
            std::fs::rename(&tmp, &target)?;
            Ok(size)
        })();
        if copied.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        copied.map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact_store::LocalArtifacts;

    fn store_with(run: &str, files: &[(&str, &str, &str)]) -> (tempfile::TempDir, Arc<dyn ArtifactStore>) {
        let root = tempfile::tempdir().unwrap();
        let store = LocalArtifacts::new(root.path().join("artifacts"));
        for (job, name, text) in files {
            let f = root.path().join("src");
            std::fs::write(&f, text).unwrap();
            store.put(run, job, "s", name, &f).unwrap();
        }
        (root, Arc::new(store))
    }

    fn download(store: &Arc<dyn ArtifactStore>, ws: &Path, needs: &[&str]) -> Download {
        Download {
            store: store.clone(),
            run: "1".into(),
            job: "test".into(),
            needs: needs.iter().map(|s| s.to_string()).collect(),
            workspace: ws.to_path_buf(),
        }
    }

    #[test]
    fn a_job_downloads_what_the_jobs_it_needs_stored_and_nothing_else() {
        let (_root, store) = store_with("1", &[("build", "app.bin", "app"), ("lint", "lint.txt", "ok")]);
        let ws = tempfile::tempdir().unwrap();
        let d = download(&store, ws.path(), &["build"]);
        assert_eq!(d.run(None, "out/bin").unwrap(), [("app.bin".to_string(), 3)]);
        assert_eq!(std::fs::read_to_string(ws.path().join("out/bin/app.bin")).unwrap(), "app");
        assert!(!ws.path().join("out/bin/lint.txt").exists());
        let e = d.run(Some("lint.txt"), ".").unwrap_err();
        assert!(e.contains("stored by job `lint`, which job `test` does not need"), "{e}");
        let e = d.run(Some("nope.txt"), ".").unwrap_err();
        assert!(e.contains("no artifact `nope.txt` (only app.bin)"), "{e}");
        assert_eq!(d.run(Some("app.bin"), "/workspace/").unwrap().len(), 1);
        assert!(ws.path().join("app.bin").exists());
        let e = download(&store, ws.path(), &[]).run(None, ".").unwrap_err();
        assert!(e.contains("needs no other job"), "{e}");
        // Nothing is left of the temporary files.
        let names: Vec<_> = std::fs::read_dir(ws.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_download_never_writes_outside_the_workspace() {
        let (_root, store) = store_with("1", &[("build", "passwd", "pwned")]);
        let ws = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let d = download(&store, ws.path(), &["build"]);
        for bad in ["..", "../x", "a/../../x", "/etc", "/workspace/../x"] {
            let e = d.run(None, bad).unwrap_err();
            assert!(e.contains("outside the workspace"), "{bad}: {e}");
        }
        // A folder on the way that is a symbolic link out.
        std::os::unix::fs::symlink(outside.path(), ws.path().join("link")).unwrap();
        let e = d.run(None, "link/sub").unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        // A symbolic link where the file goes is replaced, not written through.
        std::fs::write(outside.path().join("passwd"), "root").unwrap();
        std::os::unix::fs::symlink(outside.path().join("passwd"), ws.path().join("passwd")).unwrap();
        d.run(None, ".").unwrap();
        assert_eq!(std::fs::read_to_string(outside.path().join("passwd")).unwrap(), "root");
        assert_eq!(std::fs::read_to_string(ws.path().join("passwd")).unwrap(), "pwned");
        assert!(!std::fs::symlink_metadata(ws.path().join("passwd")).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    }

    #[test]
    fn relative_paths_drop_the_workspace_prefix_and_refuse_the_rest() {
        assert_eq!(relative_path("./a/b").unwrap(), Path::new("a/b"));
        assert_eq!(relative_path("/workspace/a").unwrap(), Path::new("a"));
        assert_eq!(relative_path("/workspace").unwrap(), Path::new(""));
        assert_eq!(relative_path(".").unwrap(), Path::new(""));
        for bad in ["/etc/passwd", "/workspacex/a", "a/../../b", ".."] {
            assert!(relative_path(bad).is_err(), "{bad}");
        }
    }
}
