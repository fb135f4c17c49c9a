//! Where a run's artifacts and an app's cache are kept. Artifacts are files a step hands over
//! with `artifacts.upload` (the `upload` step's `target: artifact`), listed and downloaded after
//! the run through the API and the CLI, and fetched by later jobs (`artifacts.download`). Cache
//! entries are archives of workspace paths kept between runs under a key (`cache.restore` and
//! `cache.save`), per app and scope (a branch), within a size cap per app that evicts the least
//! recently used. One trait for both, so object storage can take the local folder's place.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// The job instance that stored it (`build`, `build-2`); empty in records written before
    /// jobs were recorded.
    #[serde(default)]
    pub job: String,
    /// The step that stored it.
    pub step: String,
    /// When it was stored (Unix seconds).
    pub created: i64,
}

/// One entry of an app's cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The key it was saved under.
    pub key: String,
    /// What the entry holds, beside its key: a digest of the paths it was saved for (see
    /// [`cache_version`]). A restore takes only entries of the same version.
    pub version: String,
    /// The scope it belongs to (see [`CacheScope`]).
    pub scope: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was saved (Unix milliseconds).
    pub created_ms: i64,
    /// When it was last saved or restored (Unix milliseconds): the least recently used go first.
    pub used_ms: i64,
}

/// A cache entry being written: its bytes go in through `Write`; `commit` makes it visible
/// (and evicts what the app's cap no longer holds); dropped uncommitted, it leaves nothing.
pub trait CacheWrite: Write + Send {
    /// Makes the entry visible to restores.
    fn commit(self: Box<Self>) -> std::io::Result<CacheEntry>;
}

/// A run's artifact storage, and its app's cache.
pub trait ArtifactStore: Send + Sync + std::fmt::Debug {
    /// Stores the file at `from` as artifact `name` of run `run`, stored by `step` of job `job`,
    /// replacing an artifact of that name. Readers see the old bytes or the new, never a part.
    fn put(&self, run: &str, job: &str, step: &str, name: &str, from: &Path) -> std::io::Result<Artifact>;
    /// The artifacts of a run, by name (none for a run that stored none).
    fn list(&self, run: &str) -> std::io::Result<Vec<Artifact>>;
    /// An artifact's bytes, or `None` when the run has no artifact of that name.
    fn open(&self, run: &str, name: &str) -> std::io::Result<Option<(Artifact, Box<dyn Read + Send>)>>;
    /// Removes every artifact of a run.
    fn remove_run(&self, run: &str) -> std::io::Result<()>;
    /// The runs that have artifacts (for the retention sweep).
    fn runs(&self) -> std::io::Result<Vec<String>>;

    /// The cache entries of one scope of an app.
    fn cache_list(&self, app: &str, scope: &str) -> std::io::Result<Vec<CacheEntry>>;
    /// An entry's bytes, or `None` when there is no such entry; marks it used.
    fn cache_open(
        &self,
        app: &str,
        scope: &str,
        key: &str,
        version: &str,
    ) -> std::io::Result<Option<(CacheEntry, Box<dyn Read + Send>)>>;
    /// Starts writing an entry, which replaces one of the same key and version once committed.
    /// Writing past the app's cap fails.
    fn cache_create(&self, app: &str, scope: &str, key: &str, version: &str) -> std::io::Result<Box<dyn CacheWrite>>;
    /// The most an app's cache holds, in bytes.
    fn cache_limit(&self, app: &str) -> u64;
}

/// An artifact or run name that can be a path segment: no `/`, no `..`, no leading dot, at
/// most 200 letters, digits, `-`, `_` and `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Where a run reads and writes cache entries: the scope it writes, and the scopes it reads in
/// order (its own first).
///
/// A scope is an app's branch (`refs/heads/main`; a tag's ref for a tag; `` for a run without a
/// ref). A run reads its own scope, then its repository's default branch's (as GitHub's cache
/// does). A pull request writes only its own scope, `pull:` and its ref, which no branch push
/// ever reads; it reads that, then its base branch's, then the default branch's. So a pull
/// request, a fork's included, never writes what its base branch restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheScope {
    /// The app (`local` for `skiff run`).
    pub app: String,
    /// The scope saves go to.
    pub write: String,
    /// The scopes restores look in, in order.
    pub read: Vec<String>,
}

impl CacheScope {
    /// The scope of a run from its `event` context: `app`, `ref`, `name`, `kind`, and a pull
    /// request's `pull_request.base_ref`.
    pub fn of_event(event: &serde_json::Value) -> Self {
        let text = |ptr: &str| event.pointer(ptr).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
        let app = text("/app").unwrap_or("local").to_string();
        let git_ref = text("/ref").unwrap_or("").to_string();
        let name = text("/name").unwrap_or("").to_ascii_lowercase();
        let pull_request = text("/kind/type") == Some("pull_request")
            || event.pointer("/pull_request").is_some_and(|p| p.is_object())
            || ["pull_request", "merge_request", "merge request", "pullrequest"].iter().any(|n| name.contains(n));
        let branch = |b: &str| if b.starts_with("refs/") { b.to_string() } else { format!("refs/heads/{b}") };
        let write = if pull_request { format!("pull:{git_ref}") } else { git_ref };
        let mut read = vec![write.clone()];
        let base = text("/pull_request/base_ref").filter(|_| pull_request);
        for other in [base, text("/repository/default_branch")].into_iter().flatten().map(branch) {
            if !read.contains(&other) {
                read.push(other);
            }
        }
        CacheScope { app, write, read }
    }
}

/// The version of an entry saved for `paths`: entries of the same key for other paths do not
/// match (as in `actions/cache`).
pub fn cache_version(paths: &[String]) -> String {
    let mut h = Sha256::new();
    for p in paths {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

/// The entry a restore takes from one scope's `entries`: `key` exactly, else the newest whose
/// key starts with `key`, else, for each of `restore_keys` in order, the newest whose key
/// starts with it. Only entries of `version` count.
pub fn find_entry<'a>(
    entries: &'a [CacheEntry],
    key: &str,
    restore_keys: &[String],
    version: &str,
) -> Option<&'a CacheEntry> {
    let same: Vec<&CacheEntry> = entries.iter().filter(|e| e.version == version).collect();
    if let Some(e) = same.iter().find(|e| e.key == key) {
        return Some(e);
    }
    std::iter::once(key).chain(restore_keys.iter().map(String::as_str)).filter(|p| !p.is_empty()).find_map(|prefix| {
        same.iter().filter(|e| e.key.starts_with(prefix)).max_by_key(|e| (e.created_ms, &e.key)).copied()
    })
}

/// How much an app's cache may hold: a host default and overrides per app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheLimits {
    /// Bytes per app unless the app says otherwise.
    pub default_bytes: u64,
    /// Bytes per app, by app.
    pub apps: HashMap<String, u64>,
}

impl CacheLimits {
    /// 10 GiB per app, as GitHub gives a repository.
    pub const DEFAULT_BYTES: u64 = 10 << 30;

    /// The cap of `app`.
    pub fn of(&self, app: &str) -> u64 {
        self.apps.get(app).copied().unwrap_or(self.default_bytes)
    }
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits { default_bytes: Self::DEFAULT_BYTES, apps: HashMap::new() }
    }
}

/// Artifacts in a local folder: `ROOT/RUN/NAME`, with what is known of each in
/// `ROOT/RUN/.meta/NAME.json` (a name never starts with a dot, so the two never meet). The
/// cache in another: `CACHE/APP/SCOPE/ENTRY.tar` and `ENTRY.json`, the scope and the entry
/// named by digests of their names (keys can hold any character).
#[derive(Debug, Clone)]
pub struct LocalArtifacts {
    root: PathBuf,
    cache: PathBuf,
    limits: Arc<CacheLimits>,
    /// Saves of this process evict one at a time, so two never count the same bytes.
    evicting: Arc<Mutex<()>>,
}

impl LocalArtifacts {
    /// Artifacts under `root` (created when the first one is stored), and the cache in
    /// `step-cache` of the user's cache folder (`$SKIFF_CACHE_DIR`, see
    /// [`crate::cache::default_dir`]), 10 GiB per app.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalArtifacts {
            root: root.into(),
            cache: crate::cache::default_dir().join("step-cache"),
            limits: Arc::new(CacheLimits::default()),
            evicting: Arc::new(Mutex::new(())),
        }
    }

    /// The same artifacts, with the cache in `dir` under `limits`.
    pub fn with_cache(self, dir: impl Into<PathBuf>, limits: CacheLimits) -> Self {
        LocalArtifacts { cache: dir.into(), limits: Arc::new(limits), ..self }
    }

    /// The folder a run's artifacts are in.
    pub fn run_dir(&self, run: &str) -> std::io::Result<PathBuf> {
        if !valid_name(run) {
            return Err(invalid(format!("`{run}` is not a run name an artifact folder can have")));
        }
        Ok(self.root.join(run))
    }

    /// The folder the cache is in.
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    fn paths(&self, run: &str, name: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        if !valid_name(name) {
            return Err(invalid(format!("artifact name `{name}` must be letters, digits, `-`, `_` and `.`")));
        }
        let dir = self.run_dir(run)?;
        Ok((dir.join(name), dir.join(".meta").join(format!("{name}.json"))))
    }

    fn app_dir(&self, app: &str) -> std::io::Result<PathBuf> {
        if !valid_name(app) {
            return Err(invalid(format!("`{app}` is not an app name a cache folder can have")));
        }
        Ok(self.cache.join(app))
    }

    fn scope_dir(&self, app: &str, scope: &str) -> std::io::Result<PathBuf> {
        Ok(self.app_dir(app)?.join(&hex::encode(Sha256::digest(scope.as_bytes()))[..32]))
    }

    /// An entry's archive and record.
    fn entry_paths(&self, app: &str, scope: &str, key: &str, version: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let dir = self.scope_dir(app, scope)?;
        let id = hex::encode(&Sha256::digest(format!("{key}\0{version}").as_bytes())[..20]);
        Ok((dir.join(format!("{id}.tar")), dir.join(format!("{id}.json"))))
    }

    /// Every entry of an app, each with its record's path.
    fn app_entries(&self, app: &str) -> std::io::Result<Vec<(CacheEntry, PathBuf)>> {
        let mut out = Vec::new();
        let scopes = match std::fs::read_dir(self.app_dir(app)?) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            r => r?,
        };
        for scope in scopes {
            let scope = scope?.path();
            if !scope.is_dir() {
                continue;
            }
            out.extend(read_records(&scope)?);
        }
        Ok(out)
    }

    /// Removes the least recently used entries of `app` until it holds at most its cap; never
    /// `keep`, the entry just saved. Leftovers of saves that never finished go too.
    fn evict(&self, app: &str, keep: &Path) -> std::io::Result<()> {
        let _one = self.evicting.lock().unwrap_or_else(|e| e.into_inner());
        let limit = self.limits.of(app);
        let mut entries = self.app_entries(app)?;
        let mut total: u64 = entries.iter().map(|(e, _)| e.size).sum();
        entries.sort_by_key(|(e, _)| (e.used_ms, e.created_ms));
        for (entry, record) in entries {
            if total <= limit {
                break;
            }
            if record == keep {
                continue;
            }
            // The record first: a restore never finds a record whose archive is gone.
            remove_if_there(&record)?;
            remove_if_there(&record.with_extension("tar"))?;
            total = total.saturating_sub(entry.size);
        }
        let stale = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        if let Ok(dir) = std::fs::read_dir(self.app_dir(app)?) {
            for e in dir.flatten() {
                let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < stale);
                if e.file_name().to_string_lossy().starts_with(".tmp-") && old {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The cache records (`*.json`) of one scope folder, with their paths; unreadable ones skipped.
fn read_records(dir: &Path) -> std::io::Result<Vec<(CacheEntry, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r?,
    };
    let mut out = Vec::new();
    for e in entries {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "json")
            && let Ok(bytes) = std::fs::read(&path)
            && let Ok(entry) = serde_json::from_slice::<CacheEntry>(&bytes)
        {
            out.push((entry, path));
        }
    }
    Ok(out)
}

/// A temporary file beside `path`, named so that listings skip it.
fn temp_beside(path: &Path) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path.parent().expect("store paths have a folder");
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!(".tmp-{}-{n}-{}", std::process::id(), path.file_name().unwrap_or_default().display()))
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> std::io::Result<()> {
    let dir = path.parent().expect("artifact paths have a folder");
    std::fs::create_dir_all(dir)?;
    let tmp = temp_beside(path);
    let mut f = std::fs::File::create(&tmp)?;
    let written = write(&mut f).and_then(|()| f.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// A cache entry's bytes on their way to a spool file, refused past the app's cap. Dropped
/// before [`Spool::finish`], the file goes.
pub struct Spool {
    file: Option<std::fs::File>,
    path: PathBuf,
    size: u64,
    limit: u64,
}

impl Spool {
    /// A new spool file at `path`, for at most `limit` bytes.
    pub fn create(path: PathBuf, limit: u64) -> std::io::Result<Self> {
        let file = std::fs::File::create(&path)?;
        Ok(Spool { file: Some(file), path, size: 0, limit })
    }

    /// Bytes written.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file, written whole: from now on its owner removes or keeps it.
    pub fn finish(&mut self) -> std::io::Result<std::fs::File> {
        self.file.take().ok_or_else(|| std::io::Error::other("the entry was committed"))
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.size + buf.len() as u64 > self.limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("the entry is larger than the app's cache cap of {} MiB", self.limit >> 20),
            ));
        }
        let file = self.file.as_mut().ok_or_else(|| std::io::Error::other("the entry was committed"))?;
        let n = file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A cache entry on its way into the local folder: a temporary file in the app's folder,
/// renamed into its scope on commit.
struct LocalCacheWrite {
    store: LocalArtifacts,
    spool: Spool,
    data: PathBuf,
    record: PathBuf,
    entry: CacheEntry,
    app: String,
}

impl Write for LocalCacheWrite {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.spool.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.spool.flush()
    }
}

impl CacheWrite for LocalCacheWrite {
    fn commit(mut self: Box<Self>) -> std::io::Result<CacheEntry> {
        let file = self.spool.finish()?;
        let synced = file.sync_data();
        drop(file);
        let moved = synced.and_then(|()| {
            std::fs::create_dir_all(self.data.parent().expect("entries have a folder"))?;
            std::fs::rename(self.spool.path(), &self.data)
        });
        if let Err(e) = moved {
            let _ = std::fs::remove_file(self.spool.path());
            return Err(e);
        }
        let now = now_ms();
        self.entry.size = self.spool.size();
        self.entry.created_ms = now;
        self.entry.used_ms = now;
        let json = serde_json::to_vec(&self.entry).map_err(std::io::Error::other)?;
        write_atomically(&self.record, |f| f.write_all(&json))?;
        self.store.evict(&self.app, &self.record)?;
        Ok(self.entry.clone())
    }
}

impl ArtifactStore for LocalArtifacts {
    fn put(&self, run: &str, job: &str, step: &str, name: &str, from: &Path) -> std::io::Result<Artifact> {
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
        let artifact = Artifact {
            name: name.into(),
            size,
            sha256: hex::encode(hash.finalize()),
            job: job.into(),
            step: step.into(),
            created,
        };
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

    fn runs(&self) -> std::io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            r => r?,
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if valid_name(&name) && e.file_type()?.is_dir() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn cache_list(&self, app: &str, scope: &str) -> std::io::Result<Vec<CacheEntry>> {
        let dir = self.scope_dir(app, scope)?;
        // Digests of scope names could only collide on purpose; the record says whose it is.
        Ok(read_records(&dir)?.into_iter().map(|(e, _)| e).filter(|e| e.scope == scope).collect())
    }

    fn cache_open(
        &self,
        app: &str,
        scope: &str,
        key: &str,
        version: &str,
    ) -> std::io::Result<Option<(CacheEntry, Box<dyn Read + Send>)>> {
        let (data, record) = self.entry_paths(app, scope, key, version)?;
        let mut entry: CacheEntry = match std::fs::read(&record) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            r => serde_json::from_slice(&r?).map_err(std::io::Error::other)?,
        };
        if (entry.scope.as_str(), entry.key.as_str(), entry.version.as_str()) != (scope, key, version) {
            return Ok(None);
        }
        let file = match std::fs::File::open(&data) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            r => r?,
        };
        entry.used_ms = now_ms();
        let json = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        // Marking it used is worth a write, not a failed restore.
        let _ = write_atomically(&record, |f| f.write_all(&json));
        Ok(Some((entry, Box::new(file))))
    }

    fn cache_create(&self, app: &str, scope: &str, key: &str, version: &str) -> std::io::Result<Box<dyn CacheWrite>> {
        let (data, record) = self.entry_paths(app, scope, key, version)?;
        let app_dir = self.app_dir(app)?;
        std::fs::create_dir_all(&app_dir)?;
        let spool = Spool::create(temp_beside(&app_dir.join("entry.tar")), self.limits.of(app))?;
        Ok(Box::new(LocalCacheWrite {
            store: self.clone(),
            spool,
            data,
            record,
            entry: CacheEntry {
                key: key.into(),
                version: version.into(),
                scope: scope.into(),
                size: 0,
                created_ms: 0,
                used_ms: 0,
            },
            app: app.into(),
        }))
    }

    fn cache_limit(&self, app: &str) -> u64 {
        self.limits.of(app)
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
        let a = store.put("7", "build", "make", "report.txt", &file).unwrap();
        assert_eq!((a.size, a.job.as_str(), a.step.as_str()), (5, "build", "make"));
        assert_eq!(a.sha256, hex::encode(Sha256::digest(b"first")));
        std::fs::write(&file, "second!").unwrap();
        store.put("7", "build", "make", "report.txt", &file).unwrap();
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
        assert_eq!(store.runs().unwrap(), ["7"]);
        store.remove_run("7").unwrap();
        assert_eq!(store.list("7").unwrap(), Vec::new());
        assert!(store.runs().unwrap().is_empty());
        store.remove_run("7").unwrap();
    }

    #[test]
    fn names_that_could_leave_the_folder_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let store = LocalArtifacts::new(root.path().join("a"));
        for bad in ["", "..", "../x", "a/b", ".meta", ".hidden", "x\0y", &"n".repeat(201)] {
            let e = store.put("1", "j", "s", bad, &file).unwrap_err();
            assert!(e.to_string().contains("artifact name"), "{bad:?}: {e}");
            assert!(store.open("1", bad).unwrap().is_none());
        }
        for bad_run in ["..", "a/b", ""] {
            assert!(store.put(bad_run, "j", "s", "ok", &file).is_err(), "{bad_run:?}");
            assert!(store.list(bad_run).is_err());
        }
        assert!(!root.path().join("x").exists());
    }

    #[test]
    fn records_written_before_jobs_were_recorded_are_still_read() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalArtifacts::new(root.path());
        let dir = root.path().join("3/.meta");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(root.path().join("3/old.txt"), "old").unwrap();
        let old = r#"{"name":"old.txt","size":3,"sha256":"x","step":"upload","created":1}"#;
        std::fs::write(dir.join("old.txt.json"), old).unwrap();
        let listed = store.list("3").unwrap();
        assert_eq!((listed[0].name.as_str(), listed[0].job.as_str()), ("old.txt", ""));
        assert!(store.open("3", "old.txt").unwrap().is_some());
    }

    fn entry(key: &str, created_ms: i64) -> CacheEntry {
        CacheEntry { key: key.into(), version: "v".into(), scope: "s".into(), size: 1, created_ms, used_ms: 0 }
    }

    #[test]
    fn a_restore_takes_the_exact_key_then_the_newest_of_each_prefix_in_order() {
        let entries = [entry("npm-linux-aaa", 1), entry("npm-linux-bbb", 3), entry("npm-mac-ccc", 5)];
        let find = |key: &str, restore: &[&str]| {
            let restore: Vec<String> = restore.iter().map(|s| s.to_string()).collect();
            find_entry(&entries, key, &restore, "v").map(|e| e.key.clone())
        };
        assert_eq!(find("npm-linux-aaa", &["npm-"]).as_deref(), Some("npm-linux-aaa"));
        assert_eq!(find("npm-linux-zzz", &["npm-linux-", "npm-"]).as_deref(), Some("npm-linux-bbb"));
        assert_eq!(find("npm-win-zzz", &["npm-win-", "npm-"]).as_deref(), Some("npm-mac-ccc"));
        // The key is a prefix too, before the restore keys.
        assert_eq!(find("npm-linux", &["npm-mac"]).as_deref(), Some("npm-linux-bbb"));
        assert_eq!(find("cargo-1", &["cargo-"]), None);
        // Entries saved for other paths never match.
        assert_eq!(find_entry(&entries, "npm-linux-aaa", &[], "w"), None);
    }

    #[test]
    fn scopes_come_from_the_event_and_a_pull_request_writes_only_its_own() {
        let push = CacheScope::of_event(&serde_json::json!({"app": "web", "name": "push", "ref": "refs/heads/main"}));
        assert_eq!(
            push,
            CacheScope { app: "web".into(), write: "refs/heads/main".into(), read: vec!["refs/heads/main".into()] }
        );
        let pr = CacheScope::of_event(&serde_json::json!({
            "app": "web", "name": "pull_request", "ref": "refs/pull/3/head",
            "kind": {"type": "pull_request", "action": "opened"},
            "pull_request": {"head_ref": "feature", "base_ref": "main"}
        }));
        assert_eq!(pr.write, "pull:refs/pull/3/head");
        assert_eq!(pr.read, ["pull:refs/pull/3/head", "refs/heads/main"]);
        // A fork's branch named like the base, on a forge without pull request refs: still its own.
        let fork = CacheScope::of_event(&serde_json::json!({
            "app": "web", "name": "Merge Request Hook", "ref": "refs/heads/main",
            "pull_request": {"head_ref": "main", "base_ref": "main"}
        }));
        assert_eq!((fork.write.as_str(), fork.read[1].as_str()), ("pull:refs/heads/main", "refs/heads/main"));
        let local = CacheScope::of_event(&serde_json::json!({"app": null, "name": "pull_request_target"}));
        assert_eq!((local.app.as_str(), local.write.as_str(), local.read.len()), ("local", "pull:", 1));
        // Every run falls back to reading the default branch; none writes it but its own pushes.
        let repo = serde_json::json!({"full_name": "acme/web", "default_branch": "main"});
        let dev = CacheScope::of_event(&serde_json::json!({"app": "web", "ref": "refs/heads/dev", "repository": repo}));
        assert_eq!(
            (dev.write.as_str(), dev.read.as_slice()),
            ("refs/heads/dev", &["refs/heads/dev".to_string(), "refs/heads/main".to_string()][..])
        );
        let main =
            CacheScope::of_event(&serde_json::json!({"app": "web", "ref": "refs/heads/main", "repository": repo}));
        assert_eq!(main.read, ["refs/heads/main"]);
        let pr = CacheScope::of_event(&serde_json::json!({
            "app": "web", "name": "pull_request", "ref": "refs/pull/4/head", "repository": repo,
            "pull_request": {"head_ref": "x", "base_ref": "release"}
        }));
        assert_eq!(pr.read, ["pull:refs/pull/4/head", "refs/heads/release", "refs/heads/main"]);
    }

    fn save(store: &LocalArtifacts, app: &str, scope: &str, key: &str, bytes: usize) -> std::io::Result<CacheEntry> {
        let mut w = store.cache_create(app, scope, key, "v")?;
        w.write_all(&vec![7u8; bytes])?;
        w.commit()
    }

    #[test]
    fn cache_entries_are_saved_found_replaced_and_evicted_least_recently_used_first() {
        let root = tempfile::tempdir().unwrap();
        let limits = CacheLimits { default_bytes: 1000, apps: [("big".to_string(), 10_000)].into() };
        let store = LocalArtifacts::new(root.path().join("a")).with_cache(root.path().join("c"), limits);
        let main = "refs/heads/main";
        save(&store, "web", main, "a", 400).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        save(&store, "web", main, "b", 400).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        // Restoring `a` makes `b` the least recently used.
        let (e, mut r) = store.cache_open("web", main, "a", "v").unwrap().unwrap();
        let mut bytes = Vec::new();
        r.read_to_end(&mut bytes).unwrap();
        assert_eq!((e.size, bytes.len()), (400, 400));
        assert!(store.cache_open("web", main, "a", "other").unwrap().is_none());
        assert!(store.cache_open("web", "refs/heads/dev", "a", "v").unwrap().is_none());
        std::thread::sleep(std::time::Duration::from_millis(5));
        save(&store, "web", "refs/heads/dev", "c", 400).unwrap();
        let keys = |scope: &str| {
            let mut k: Vec<String> = store.cache_list("web", scope).unwrap().into_iter().map(|e| e.key).collect();
            k.sort();
            k
        };
        assert_eq!((keys(main), keys("refs/heads/dev")), (vec!["a".to_string()], vec!["c".to_string()]));
        // Replacing an entry keeps one copy; other apps have caps of their own.
        save(&store, "web", main, "a", 300).unwrap();
        assert_eq!(store.cache_list("web", main).unwrap()[0].size, 300);
        save(&store, "big", main, "x", 5000).unwrap();
        assert_eq!(keys("refs/heads/dev"), ["c"]);
        // An entry over the cap is refused, and leaves nothing behind.
        let e = save(&store, "web", main, "huge", 1001).unwrap_err();
        assert!(e.to_string().contains("cache cap"), "{e}");
        assert_eq!(keys(main), ["a"]);
        let left: Vec<_> = std::fs::read_dir(root.path().join("c/web"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // An entry dropped before it is committed is not there.
        let mut w = store.cache_create("web", main, "never", "v").unwrap();
        w.write_all(b"x").unwrap();
        drop(w);
        assert_eq!(keys(main), ["a"]);
        assert!(store.cache_create("../x", main, "k", "v").is_err());
    }
}
