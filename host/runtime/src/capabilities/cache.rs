//! The `cache` interface: workspace paths archived by the host into the app's cache
//! ([`crate::artifact_store`]) under a key, and restored from it, as `actions/cache` does.
//!
//! Where entries are read and written is the run's [`CacheScope`] (its app and branch; a pull
//! request writes only its own scope and reads its base branch's). The archive is a plain tar,
//! written and read natively: the guest names paths, never host files. Nothing crosses the
//! workspace's edge either way: paths with `..` or absolute ones are refused, a symbolic link
//! leading out is never archived, and an entry is restored only if every member stays inside
//! the paths it was saved for, writes through no symbolic link, and holds nothing but files,
//! folders and links that stay inside.

use std::collections::HashSet;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use wasmtime::component::{HasSelf, Linker};

use super::artifacts::relative_path;
use super::log::{Level, LogPipe};
use crate::artifact_store::{ArtifactStore, CacheScope, cache_version, find_entry};
use crate::bindings::skiff::step::cache as wit;

/// Longest key, as in `actions/cache`.
pub const MAX_KEY: usize = 512;
/// Most paths one entry is saved for.
pub const MAX_PATHS: usize = 100;

/// What the `cache` interface of one step holds.
pub struct CacheHost {
    /// The app's cache; none refuses both calls.
    pub store: Option<Arc<dyn ArtifactStore>>,
    /// The run's `event` context, which says where it reads and writes ([`CacheScope`]): read
    /// only by a step that uses the cache.
    pub event_json: String,
    /// The step's workspace: archived from, restored into, never left.
    pub workspace: PathBuf,
    /// Where restores and saves are reported.
    pub log: Arc<LogPipe>,
}

impl CacheHost {
    fn scope(&self) -> CacheScope {
        CacheScope::of_event(&serde_json::from_str(&self.event_json).unwrap_or(serde_json::Value::Null))
    }

    /// Adds the interface to a linker whose store data holds a `CacheHost`.
    pub fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<Self>>(linker, get)
    }
}

/// Set when the step's call is dropped (its time ran out): the blocking work stops at the next
/// file rather than writing into a workspace whose step has ended.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce(&AtomicBool) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let flag = stop.0.clone();
    let out = tokio::task::spawn_blocking(move || work(&flag)).await;
    drop(stop);
    out.unwrap_or_else(|e| Err(format!("the cache operation stopped: {e}")))
}

impl wit::Host for CacheHost {
    async fn restore(
        &mut self,
        key: String,
        restore_keys: Vec<String>,
        paths: Vec<String>,
    ) -> wasmtime::Result<Result<Option<String>, String>> {
        let Some(store) = self.store.clone() else {
            return Ok(Err("this run has no cache: caches are kept for pipeline runs".into()));
        };
        let (scope, ws) = (self.scope(), self.workspace.clone());
        let looked: Vec<String> = scope.read.iter().map(|s| format!("`{}`", scope_name(s))).collect();
        let found = blocking(move |stop| {
            check_key(&key)?;
            let restore_keys: Vec<String> = restore_keys.into_iter().filter(|k| !k.trim().is_empty()).collect();
            if restore_keys.len() > MAX_PATHS {
                return Err(format!("{} restore keys, over the limit of {MAX_PATHS}", restore_keys.len()));
            }
            for k in &restore_keys {
                check_key(k).map_err(|e| format!("restore key: {e}"))?;
            }
            let paths = cache_paths(&paths)?;
            let version = cache_version(&path_texts(&paths));
            for read in &scope.read {
                let entries =
                    store.cache_list(&scope.app, read).map_err(|e| format!("reading the cache failed: {e}"))?;
                let Some(e) = find_entry(&entries, &key, &restore_keys, &version) else { continue };
                let opened = store
                    .cache_open(&scope.app, read, &e.key, &version)
                    .map_err(|e| format!("opening the cache entry failed: {e}"))?;
                // Evicted meanwhile: the next scope may have one.
                let Some((entry, reader)) = opened else { continue };
                let got = unpack(reader, &ws, &paths, stop)
                    .map_err(|e| format!("cache entry `{}` (from `{read}`) was not restored: {e}", entry.key))?;
                return Ok(Some((entry, read.clone(), got)));
            }
            Ok(None)
        })
        .await;
        Ok(match found {
            Ok(Some((entry, from, got))) => {
                self.log.system(format!(
                    "restored cache `{}` from `{}`: {} file(s), {} bytes",
                    entry.key,
                    scope_name(&from),
                    got.files,
                    got.bytes
                ));
                Ok(Some(entry.key))
            }
            Ok(None) => {
                self.log.system(format!("no cache entry matched (looked in {})", looked.join(", then ")));
                Ok(None)
            }
            // The step says what failed.
            Err(e) => Err(e),
        })
    }

    async fn save(&mut self, key: String, paths: Vec<String>) -> wasmtime::Result<Result<u64, String>> {
        let Some(store) = self.store.clone() else {
            return Ok(Err("this run has no cache: caches are kept for pipeline runs".into()));
        };
        let (scope, ws, log) = (self.scope(), self.workspace.clone(), self.log.clone());
        let saved = blocking(move |stop| {
            check_key(&key)?;
            let paths = cache_paths(&paths)?;
            let version = cache_version(&path_texts(&paths));
            let there =
                store.cache_list(&scope.app, &scope.write).map_err(|e| format!("reading the cache failed: {e}"))?;
            if there.iter().any(|e| e.key == key && e.version == version) {
                log.system(format!(
                    "cache `{key}` is saved in `{}` already; it is kept as it is",
                    scope_name(&scope.write)
                ));
                return Ok(0);
            }
            let limit = store.cache_limit(&scope.app);
            let writer = store
                .cache_create(&scope.app, &scope.write, &key, &version)
                .map_err(|e| format!("starting the cache entry failed: {e}"))?;
            let mut out = BufWriter::with_capacity(1 << 20, writer);
            let packed = pack(&ws, &paths, &mut out, stop).map_err(|e| match e {
                PackError::TooLarge => format!(
                    "the paths are larger than the app's cache cap of {} MiB; cache less, or raise the cap \
                     (`[cache] max-size-mb` or the app's `cache-max-size-mb` in skiff.toml)",
                    limit >> 20
                ),
                PackError::Other(e) => e,
            })?;
            if packed.missing == paths.len() {
                log.write(Level::Warn, "none of the cache's paths exists: nothing was saved").ok();
                return Ok(0);
            }
            let writer = out.into_inner().map_err(|e| format!("writing the cache entry failed: {}", e.error()))?;
            let entry = writer.commit().map_err(|e| format!("storing the cache entry failed: {e}"))?;
            log.system(format!(
                "saved cache `{key}` in `{}`: {} file(s), {} bytes ({} stored)",
                scope_name(&scope.write),
                packed.files,
                packed.bytes,
                entry.size
            ));
            Ok(entry.size)
        })
        .await;
        Ok(saved)
    }
}

/// A scope as messages show it.
fn scope_name(scope: &str) -> &str {
    if scope.is_empty() { "(no ref)" } else { scope }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.trim().is_empty() {
        return Err("the cache key is empty: give `key` a value, e.g. `deps-${{ hashFiles('Cargo.lock') }}`".into());
    }
    if key.len() > MAX_KEY {
        return Err(format!("the cache key is {} bytes, over the limit of {MAX_KEY}", key.len()));
    }
    if key.chars().any(char::is_control) {
        return Err(format!("the cache key `{}` holds a control character (a newline?)", key.escape_debug()));
    }
    Ok(())
}

/// The paths of an entry, relative to the workspace, without repeats or paths inside another.
pub fn cache_paths(paths: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        if p.starts_with('~') {
            return Err(format!(
                "`{p}` is in a home folder, not the workspace: cache a folder of the workspace instead (point \
                 the tool there, e.g. `npm ci --cache .npm` with `path: .npm`)"
            ));
        }
        let rel = relative_path(p)?;
        out.push(rel);
    }
    if out.is_empty() {
        return Err("no paths to cache: give `path` one workspace path per line".into());
    }
    if out.len() > MAX_PATHS {
        return Err(format!("{} paths to cache, over the limit of {MAX_PATHS}", out.len()));
    }
    out.sort();
    out.dedup();
    let all = out.clone();
    out.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q)));
    Ok(out)
}

fn path_texts(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

/// What an archive held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Packed {
    /// Files and links archived (folders are not counted).
    pub files: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Paths that did not exist.
    pub missing: usize,
}

/// Why an archive was not written.
#[derive(Debug)]
pub enum PackError {
    /// The store refused more bytes (the app's cap).
    TooLarge,
    /// A sentence that says what to fix.
    Other(String),
}

impl From<String> for PackError {
    fn from(s: String) -> Self {
        PackError::Other(s)
    }
}

fn write_error(e: std::io::Error) -> PackError {
    if e.kind() == std::io::ErrorKind::FileTooLarge {
        PackError::TooLarge
    } else {
        PackError::Other(format!("writing the cache entry failed: {e}"))
    }
}

/// Whether a symbolic link at `link` (relative to the workspace) pointing at `target` stays
/// inside it, resolved lexically: absolute targets never do.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    let mut depth = link.parent().map_or(0, |p| p.components().count()) as i64;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// A file's bytes, exactly `left` of them: a file that shrank while it was archived is an
/// error rather than a broken archive, and one that grew is cut at its size when it was seen.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::other("the file shrank while it was archived"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Archives `paths` of `workspace` into `out` as a tar: files (with their mode and modification
/// time), folders, and symbolic links that stay inside the workspace. A path that does not
/// exist is skipped; a symbolic link on the way to a path, or one leading out, is refused.
pub fn pack(workspace: &Path, paths: &[PathBuf], out: &mut impl Write, stop: &AtomicBool) -> Result<Packed, PackError> {
    let root = workspace.canonicalize().map_err(|e| format!("workspace unavailable: {e}"))?;
    let mut tar = tar::Builder::new(out);
    let mut packed = Packed::default();
    for rel in paths {
        // Only the path itself may be a link: one on the way would archive another folder.
        let mut on_the_way = root.clone();
        let mut missing = false;
        for c in rel.parent().into_iter().flat_map(|p| p.components()) {
            on_the_way.push(c);
            match std::fs::symlink_metadata(&on_the_way) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(format!(
                        "`{}` is reached through the symbolic link `{}`: cache the folder it points to instead",
                        rel.display(),
                        on_the_way.strip_prefix(&root).unwrap_or(&on_the_way).display()
                    )
                    .into());
                }
                Ok(_) => {}
                Err(_) => missing = true,
            }
        }
        if missing || std::fs::symlink_metadata(root.join(rel)).is_err() {
            packed.missing += 1;
            continue;
        }
        for entry in walkdir::WalkDir::new(root.join(rel)).follow_links(false).sort_by_file_name() {
            if stop.load(Ordering::Relaxed) {
                return Err("the step's time ran out while the cache was saved".to_string().into());
            }
            let entry = entry.map_err(|e| format!("reading `{}`: {e}", rel.display()))?;
            let name = entry.path().strip_prefix(&root).expect("walked under the root").to_path_buf();
            let meta = entry.metadata().map_err(|e| format!("reading `{}`: {e}", name.display()))?;
            let mut header = tar::Header::new_gnu();
            header.set_mode(meta.permissions().mode() & 0o7777);
            header.set_mtime(
                meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs()),
            );
            let ft = entry.file_type();
            if ft.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, &name, std::io::empty()).map_err(write_error)?;
                continue;
            } else if ft.is_file() {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(meta.len());
                let file =
                    std::fs::File::open(entry.path()).map_err(|e| format!("reading `{}`: {e}", name.display()))?;
                tar.append_data(&mut header, &name, Exact { inner: file, left: meta.len() }).map_err(write_error)?;
                packed.bytes += meta.len();
            } else if ft.is_symlink() {
                let target =
                    std::fs::read_link(entry.path()).map_err(|e| format!("reading `{}`: {e}", name.display()))?;
                if !link_stays_inside(&name, &target) {
                    return Err(format!(
                        "`{}` is a symbolic link to `{}`, outside the workspace: a cache keeps only what is \
                         inside it; leave the link out of `path`",
                        name.display(),
                        target.display()
                    )
                    .into());
                }
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, &name, &target).map_err(write_error)?;
            } else {
                // Sockets and pipes are not content.
                continue;
            }
            packed.files += 1;
        }
    }
    tar.finish().map_err(write_error)?;
    Ok(packed)
}

/// What a restore wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    /// Files and links written (folders are not counted).
    pub files: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Restores a tar written by [`pack`] into `workspace`. Every member must be under one of
/// `paths`, be a file, a folder or a symbolic link that stays inside, and be reached through
/// real folders only (a symbolic link on the way, even one the entry itself made, is refused).
/// Whatever is in the way of a file or link is replaced, never written through.
pub fn unpack(reader: impl Read, workspace: &Path, paths: &[PathBuf], stop: &AtomicBool) -> Result<Unpacked, String> {
    let root = workspace.canonicalize().map_err(|e| format!("workspace unavailable: {e}"))?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, reader));
    let mut real_dirs: HashSet<PathBuf> = HashSet::new();
    let mut done = Unpacked::default();
    let mut buf = vec![0u8; 256 << 10];
    let broken = |e: std::io::Error| format!("the entry is not a readable archive: {e}");
    for member in archive.entries().map_err(broken)? {
        if stop.load(Ordering::Relaxed) {
            return Err("the step's time ran out while the cache was restored".into());
        }
        let mut member = member.map_err(broken)?;
        let kind = member.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            continue;
        }
        let raw = member.path().map_err(broken)?.into_owned();
        let mut rel = PathBuf::new();
        for c in raw.components() {
            match c {
                Component::Normal(n) => rel.push(n),
                Component::CurDir => {}
                _ => return Err(hostile(format!("it holds `{}`, which is outside the workspace", raw.display()))),
            }
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        if !paths.iter().any(|p| rel.starts_with(p)) {
            return Err(hostile(format!(
                "it holds `{}`, which is not under the paths it was saved for",
                rel.display()
            )));
        }
        if let Some(parent) = rel.parent() {
            real_dir(&root, parent, &mut real_dirs)?;
        }
        let dst = root.join(&rel);
        match kind {
            tar::EntryType::Directory => {
                real_dir(&root, &rel, &mut real_dirs)?;
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mode = member.header().mode().unwrap_or(0o644) & 0o777;
                // `create_new` never follows a link: whatever is there is replaced, not written through.
                let create = || std::fs::OpenOptions::new().write(true).create_new(true).mode(mode | 0o600).open(&dst);
                let mut f = replacing(&dst, &rel, create)?;
                loop {
                    let n = member.read(&mut buf).map_err(broken)?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&buf[..n]).map_err(|e| format!("writing `{}`: {e}", rel.display()))?;
                    done.bytes += n as u64;
                }
                if mode & 0o600 != 0o600 {
                    let _ = f.set_permissions(std::fs::Permissions::from_mode(mode));
                }
                if let Ok(secs) = member.header().mtime() {
                    let _ = f.set_modified(UNIX_EPOCH + Duration::from_secs(secs));
                }
            }
            tar::EntryType::Symlink => {
                let target = member.link_name().map_err(broken)?.unwrap_or_default().into_owned();
                if !link_stays_inside(&rel, &target) {
                    return Err(hostile(format!(
                        "it holds `{}`, a symbolic link to `{}`, outside the workspace",
                        rel.display(),
                        target.display()
                    )));
                }
                replacing(&dst, &rel, || std::os::unix::fs::symlink(&target, &dst))?;
            }
            other => {
                return Err(hostile(format!(
                    "it holds `{}`, a {}: cache entries hold files, folders and symbolic links only",
                    rel.display(),
                    kind_name(other)
                )));
            }
        }
        done.files += 1;
    }
    Ok(done)
}

/// What an entry Skiff saved never holds: it was written by something else, and is matched again
/// until the key changes.
fn hostile(what: String) -> String {
    format!("{what}; Skiff never saves such an entry, so change `key` and `restore-keys` to stop matching it")
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "named pipe",
        _ => "kind of member Skiff does not restore",
    }
}

/// `create()` of something new at `dst`; a file or link in the way is removed first (a folder
/// there is an error). Trying first saves a look at what is there when nothing is, as mostly.
fn replacing<T>(dst: &Path, rel: &Path, create: impl Fn() -> std::io::Result<T>) -> Result<T, String> {
    let writing = |e: std::io::Error| format!("writing `{}`: {e}", rel.display());
    match create() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::symlink_metadata(dst).is_ok_and(|m| m.is_dir()) {
                return Err(format!("`{}` is a folder in the workspace; the entry has a file there", rel.display()));
            }
            std::fs::remove_file(dst).map_err(|e| format!("replacing `{}`: {e}", rel.display()))?;
            create().map_err(writing)
        }
        r => r.map_err(writing),
    }
}

/// Makes sure `rel` is a real folder of the workspace, creating what is missing, refusing a
/// symbolic link or a file on the way. Folders seen once are remembered.
fn real_dir(root: &Path, rel: &Path, known: &mut HashSet<PathBuf>) -> Result<(), String> {
    if rel.as_os_str().is_empty() || known.contains(rel) {
        return Ok(());
    }
    if let Some(parent) = rel.parent() {
        real_dir(root, parent, known)?;
    }
    let dir = root.join(rel);
    // `mkdir` never follows a link; only when something is there is it looked at.
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("`{}` is a symbolic link: nothing is restored through one", rel.display()));
            }
            _ => return Err(format!("`{}` is a file in the workspace; the entry has a folder there", rel.display())),
        },
        Err(e) => return Err(format!("creating `{}`: {e}", rel.display())),
    }
    known.insert(rel.to_path_buf());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[&str]) -> Vec<PathBuf> {
        s.iter().map(PathBuf::from).collect()
    }

    fn never() -> AtomicBool {
        AtomicBool::new(false)
    }

    #[test]
    fn paths_are_packed_and_restored_with_modes_times_and_inner_links() {
        let ws = tempfile::tempdir().unwrap();
        let deps = ws.path().join("deps/bin");
        std::fs::create_dir_all(&deps).unwrap();
        std::fs::write(deps.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(deps.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(ws.path().join("deps/lib.txt"), "x".repeat(300)).unwrap();
        std::os::unix::fs::symlink("../lib.txt", deps.join("lib")).unwrap();
        std::fs::create_dir_all(ws.path().join("deps/empty")).unwrap();
        let long = format!("deps/{}", "n".repeat(150));
        std::fs::write(ws.path().join(&long), "long").unwrap();
        let mut tar = Vec::new();
        let packed = pack(ws.path(), &p(&["deps", "missing"]), &mut tar, &never()).unwrap();
        assert_eq!((packed.missing, packed.bytes), (1, 10 + 300 + 4));

        let to = tempfile::tempdir().unwrap();
        let got = unpack(&tar[..], to.path(), &p(&["deps"]), &never()).unwrap();
        assert_eq!((got.files, got.bytes), (packed.files, packed.bytes));
        let tool = to.path().join("deps/bin/tool");
        assert_eq!(std::fs::metadata(&tool).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(
            std::fs::metadata(&tool).unwrap().modified().unwrap().duration_since(UNIX_EPOCH).unwrap().as_secs(),
            std::fs::metadata(deps.join("tool"))
                .unwrap()
                .modified()
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        );
        assert_eq!(std::fs::read_to_string(to.path().join("deps/bin/lib")).unwrap().len(), 300);
        assert!(to.path().join("deps/empty").is_dir());
        assert_eq!(std::fs::read_to_string(to.path().join(&long)).unwrap(), "long");
        // Restoring over what is there replaces it.
        unpack(&tar[..], to.path(), &p(&["deps"]), &never()).unwrap();
    }

    #[test]
    fn nothing_outside_the_workspace_is_archived() {
        let ws = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::fs::create_dir(ws.path().join("deps")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), ws.path().join("deps/secret")).unwrap();
        let mut tar = Vec::new();
        let e = pack(ws.path(), &p(&["deps"]), &mut tar, &never()).unwrap_err();
        assert!(matches!(&e, PackError::Other(m) if m.contains("outside the workspace")), "{e:?}");
        std::fs::remove_file(ws.path().join("deps/secret")).unwrap();
        std::os::unix::fs::symlink("../../x", ws.path().join("deps/up")).unwrap();
        assert!(pack(ws.path(), &p(&["deps"]), &mut Vec::new(), &never()).is_err());
        // A folder reached through a link is not archived either.
        std::fs::remove_file(ws.path().join("deps/up")).unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.path().join("out")).unwrap();
        let e = pack(ws.path(), &p(&["out/secret"]), &mut Vec::new(), &never()).unwrap_err();
        assert!(matches!(&e, PackError::Other(m) if m.contains("through the symbolic link `out`")), "{e:?}");
        for bad in ["../x", "/etc", "a/../../b", "~/.npm"] {
            assert!(cache_paths(&[bad.to_string()]).is_err(), "{bad}");
        }
        assert_eq!(cache_paths(&["a".into(), "./a/b".into(), " c ".into(), "".into()]).unwrap(), p(&["a", "c"]));
    }

    /// One tar member: its name, kind, and content (a link's target).
    type Member<'a> = (&'a str, tar::EntryType, &'a str);

    /// A tar with these members, as an attacker would write it: names and link targets as given.
    fn crafted(members: &[Member]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, body) in members {
            let mut h = tar::Header::new_old();
            let bytes = h.as_old_mut();
            bytes.name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            if *kind == tar::EntryType::Regular {
                h.set_size(body.len() as u64);
            } else {
                h.set_size(0);
                let link = &mut h.as_old_mut().linkname;
                link[..body.len()].copy_from_slice(body.as_bytes());
            }
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            if *kind == tar::EntryType::Regular {
                out.extend_from_slice(body.as_bytes());
                out.resize(out.len().div_ceil(512) * 512, 0);
            }
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    #[test]
    fn a_hostile_entry_writes_nothing_outside_the_workspace() {
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        let parent = tempfile::tempdir().unwrap();
        let ws = parent.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let cases: &[(&[Member], &str)] = &[
            (&[("deps/../../escaped", Regular, "x")], "outside the workspace"),
            (&[("/tmp/escaped", Regular, "x")], "outside the workspace"),
            (&[("deps/link", Symlink, "../../"), ("deps/link/escaped", Regular, "x")], "outside the workspace"),
            (&[("deps/abs", Symlink, "/etc/passwd")], "outside the workspace"),
            (&[("deps/in", Symlink, "."), ("deps/in/escaped", Regular, "x")], "symbolic link"),
            (&[("deps/hard", Link, "../escaped")], "hard link"),
            (&[("other/file", Regular, "x")], "not under the paths"),
            (
                &[("deps", Directory, ""), ("deps/ok", Regular, "x"), ("deps/x/../../../escaped", Regular, "x")],
                "outside",
            ),
        ];
        for (members, want) in cases {
            let e = unpack(&crafted(members)[..], &ws, &p(&["deps"]), &never()).unwrap_err();
            assert!(e.contains(want), "{members:?}: {e}");
            assert!(!parent.path().join("escaped").exists() && !Path::new("/tmp/escaped").exists());
            let _ = std::fs::remove_dir_all(ws.join("deps"));
        }
        // A link the workspace already has on the way is not written through either.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.join("deps")).unwrap();
        let e = unpack(&crafted(&[("deps/f", Regular, "x")])[..], &ws, &p(&["deps"]), &never()).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // A link where a file goes is replaced, not followed.
        std::fs::remove_file(ws.join("deps")).unwrap();
        std::fs::create_dir(ws.join("deps")).unwrap();
        std::fs::write(outside.path().join("target"), "keep").unwrap();
        std::os::unix::fs::symlink(outside.path().join("target"), ws.join("deps/f")).unwrap();
        unpack(&crafted(&[("deps/f", Regular, "new")])[..], &ws, &p(&["deps"]), &never()).unwrap();
        assert_eq!(std::fs::read_to_string(outside.path().join("target")).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(ws.join("deps/f")).unwrap(), "new");
    }

    #[test]
    fn an_entry_over_the_app_s_cap_is_refused_and_leaves_nothing() {
        use crate::artifact_store::{ArtifactStore as _, CacheLimits, LocalArtifacts};
        let root = tempfile::tempdir().unwrap();
        let limits = CacheLimits { default_bytes: 4096, ..CacheLimits::default() };
        let store = LocalArtifacts::new(root.path().join("a")).with_cache(root.path().join("c"), limits);
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join("deps")).unwrap();
        std::fs::write(ws.path().join("deps/big"), vec![1u8; 8192]).unwrap();
        let mut out = BufWriter::new(store.cache_create("web", "main", "k", "v").unwrap());
        let e = pack(ws.path(), &p(&["deps"]), &mut out, &never()).unwrap_err();
        assert!(matches!(e, PackError::TooLarge), "{e:?}");
        drop(out);
        assert!(store.cache_list("web", "main").unwrap().is_empty());
        assert_eq!(std::fs::read_dir(root.path().join("c/web")).unwrap().count(), 0);
    }

    #[test]
    fn a_stopped_restore_stops() {
        let ws = tempfile::tempdir().unwrap();
        let tar = crafted(&[("deps/a", tar::EntryType::Regular, "x")]);
        let e = unpack(&tar[..], ws.path(), &p(&["deps"]), &AtomicBool::new(true)).unwrap_err();
        assert!(e.contains("time ran out"), "{e}");
    }
}
