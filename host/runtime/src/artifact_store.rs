//! Where a run's artifacts are kept: files a step hands over with `artifacts.upload` (the
//! `upload` step's `target: artifact`), listed and downloaded after the run through the API and
//! the CLI. One trait, so object storage can take the local folder's place.

use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// One stored artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Its name: one path segment of letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// The hex SHA-256 of its bytes.
    pub sha256: String,
    /// The step that stored it.
    pub step: String,
    /// When it was stored (Unix seconds).
    pub created: i64,
}

/// A run's artifact storage.
pub trait ArtifactStore: Send + Sync + std::fmt::Debug {
    /// Stores the file at `from` as artifact `name` of run `run`, stored by `step`, replacing an
    /// artifact of that name. Readers see the old bytes or the new, never a part.
    fn put(&self, run: &str, step: &str, name: &str, from: &Path) -> std::io::Result<Artifact>;
    /// The artifacts of a run, by name (none for a run that stored none).
    fn list(&self, run: &str) -> std::io::Result<Vec<Artifact>>;
    /// An artifact's bytes, or `None` when the run has no artifact of that name.
    fn open(&self, run: &str, name: &str) -> std::io::Result<Option<(Artifact, Box<dyn Read + Send>)>>;
    /// Removes every artifact of a run.
    fn remove_run(&self, run: &str) -> std::io::Result<()>;
}

/// An artifact or run name that can be a path segment: no `/`, no `..`, no leading dot, at
/// most 200 letters, digits, `-`, `_` and `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Artifacts in a local folder: `ROOT/RUN/NAME`, with what is known of each in
/// `ROOT/RUN/.meta/NAME.json` (a name never starts with a dot, so the two never meet).
#[derive(Debug, Clone)]
pub struct LocalArtifacts {
    root: PathBuf,
}

impl LocalArtifacts {
    /// Artifacts under `root` (created when the first one is stored).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalArtifacts { root: root.into() }
    }

    /// The folder a run's artifacts are in.
    pub fn run_dir(&self, run: &str) -> std::io::Result<PathBuf> {
        if !valid_name(run) {
            return Err(invalid(format!("`{run}` is not a run name an artifact folder can have")));
        }
        Ok(self.root.join(run))
    }

    fn paths(&self, run: &str, name: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        if !valid_name(name) {
            return Err(invalid(format!("artifact name `{name}` must be letters, digits, `-`, `_` and `.`")));
        }
        let dir = self.run_dir(run)?;
        Ok((dir.join(name), dir.join(".meta").join(format!("{name}.json"))))
    }
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> std::io::Result<()> {
    let dir = path.parent().expect("artifact paths have a folder");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), path.file_name().unwrap_or_default().display()));
    let mut f = std::fs::File::create(&tmp)?;
    let written = write(&mut f).and_then(|()| f.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

impl ArtifactStore for LocalArtifacts {
    fn put(&self, run: &str, step: &str, name: &str, from: &Path) -> std::io::Result<Artifact> {
        let (data, meta) = self.paths(run, name)?;
        let mut src = std::fs::File::open(from)?;
        let mut hash = Sha256::new();
        let mut size = 0u64;
        write_atomically(&data, |out| {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = src.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                hash.update(&buf[..n]);
                out.write_all(&buf[..n])?;
                size += n as u64;
            }
        })?;
        let created =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let artifact =
            Artifact { name: name.into(), size, sha256: hex::encode(hash.finalize()), step: step.into(), created };
        let json = serde_json::to_vec(&artifact).map_err(std::io::Error::other)?;
        write_atomically(&meta, |f| f.write_all(&json))?;
        Ok(artifact)
    }

    fn list(&self, run: &str) -> std::io::Result<Vec<Artifact>> {
        let meta_dir = self.run_dir(run)?.join(".meta");
        let entries = match std::fs::read_dir(&meta_dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            r => r?,
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json")
                && let Ok(text) = std::fs::read(&path)
                && let Ok(a) = serde_json::from_slice::<Artifact>(&text)
            {
                out.push(a);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn open(&self, run: &str, name: &str) -> std::io::Result<Option<(Artifact, Box<dyn Read + Send>)>> {
        let Ok((data, meta)) = self.paths(run, name) else { return Ok(None) };
        let artifact: Artifact = match std::fs::read(&meta) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            r => serde_json::from_slice(&r?).map_err(std::io::Error::other)?,
        };
        match std::fs::File::open(&data) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            r => Ok(Some((artifact, Box::new(r?)))),
        }
    }

    fn remove_run(&self, run: &str) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.run_dir(run)?) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_stored_listed_read_replaced_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let ws = tempfile::tempdir().unwrap();
        let file = ws.path().join("report.txt");
        std::fs::write(&file, "first").unwrap();
        let store = LocalArtifacts::new(root.path().join("artifacts"));
        assert_eq!(store.list("7").unwrap(), Vec::new());
        let a = store.put("7", "build", "report.txt", &file).unwrap();
        assert_eq!((a.size, a.step.as_str()), (5, "build"));
        assert_eq!(a.sha256, hex::encode(Sha256::digest(b"first")));
        std::fs::write(&file, "second!").unwrap();
        store.put("7", "build", "report.txt", &file).unwrap();
        let listed = store.list("7").unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].size, 7);
        let (meta, mut r) = store.open("7", "report.txt").unwrap().unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!((meta.size, s.as_str()), (7, "second!"));
        assert!(store.open("7", "other").unwrap().is_none());
        assert!(store.open("8", "report.txt").unwrap().is_none());
        // Nothing but the artifact and its record is left behind.
        let names: Vec<_> =
            std::fs::read_dir(root.path().join("artifacts/7")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        store.remove_run("7").unwrap();
        assert_eq!(store.list("7").unwrap(), Vec::new());
        store.remove_run("7").unwrap();
    }

    #[test]
    fn names_that_could_leave_the_folder_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let store = LocalArtifacts::new(root.path().join("a"));
        for bad in ["", "..", "../x", "a/b", ".meta", ".hidden", "x\0y", &"n".repeat(201)] {
            let e = store.put("1", "s", bad, &file).unwrap_err();
            assert!(e.to_string().contains("artifact name"), "{bad:?}: {e}");
            assert!(store.open("1", bad).unwrap().is_none());
        }
        for bad_run in ["..", "a/b", ""] {
            assert!(store.put(bad_run, "s", "ok", &file).is_err(), "{bad_run:?}");
            assert!(store.list(bad_run).is_err());
        }
        assert!(!root.path().join("x").exists());
    }
}
