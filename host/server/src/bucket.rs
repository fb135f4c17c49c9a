//! Artifacts and caches in an S3-compatible bucket (Amazon S3, Cloudflare R2, Alibaba OSS,
//! MinIO and the like), through the `object_store` crate: `[objects]` in `skiff.toml`. Every
//! host and API instance that shares a run store shares the bucket too, so any of them lists
//! and serves any run's artifacts, and any host restores what another saved in an app's cache.
//!
//! Under the configured prefix:
//! - `artifacts/<run>/<name>/<sha256>`: an artifact's bytes, named by their digest, so that a
//!   replacement never shows half of itself; `artifact-records/<run>/<name>.json` says which
//!   bytes are current (an [`Artifact`]), and is written after them.
//! - `cache/<app>/<entry>/<sha256>` and `cache-records/<app>/<entry>.json`: a cache entry,
//!   where `<entry>` is the digest of its scope, key and version (names from a pipeline never
//!   become paths as written).
//! - `logs/<run>/<job>/<step>.jsonl`: a finished run's log, one object per step
//!   ([`BucketLogs`]); the lines of a run in progress stay in the run store's own log store.
//!
//! The artifact store's interface is synchronous (steps call it from blocking code); the
//! bucket's client is async, so calls run on a small runtime of the bucket's own and the
//! caller's thread waits. Reads stream: a download never holds a whole artifact in memory.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload, WriteMultipart};
use sha2::{Digest as _, Sha256};
use skiff_runtime::artifact_store::{Artifact, ArtifactStore, CacheEntry, CacheLimits, CacheWrite, Spool, valid_name};

use crate::logs::{LogRecord, LogStore, file_part};

/// Bytes read from a file per upload request part.
const CHUNK: usize = 8 << 20;

/// Where the bucket is and how to reach it (`[objects]`, resolved).
#[derive(Debug, Clone)]
pub struct BucketConfig {
    /// The bucket.
    pub bucket: String,
    /// Keys start with this (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// An endpoint other than Amazon's (R2, OSS, MinIO): `https://…`, or `http://` with
    /// `allow_http`.
    pub endpoint: Option<String>,
    /// The region (`auto` for R2; default `us-east-1`).
    pub region: String,
    /// Credentials (opened); without them, the environment's (`AWS_ACCESS_KEY_ID`, …).
    pub access_key_id: Option<String>,
    /// See `access_key_id`.
    pub secret_access_key: Option<String>,
    /// Plain HTTP to the endpoint.
    pub allow_http: bool,
}

/// Artifacts and caches in a bucket.
#[derive(Debug)]
pub struct Bucket(Arc<Inner>);

impl std::ops::Deref for Bucket {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The client, shared with the cache entries being written.
pub struct Inner {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    shown: String,
    limits: CacheLimits,
    /// Where cache entries are written before they are uploaded whole.
    spool: PathBuf,
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("at", &self.shown).finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropped inside an async context too (tests): never block there.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn hex_digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

impl Bucket {
    /// A client for the bucket `config` names; `spool` is a local folder for cache entries
    /// being written. Nothing is sent until the first call.
    pub fn new(config: &BucketConfig, limits: CacheLimits, spool: PathBuf) -> anyhow::Result<Self> {
        // The client's reqwest has no crypto provider of its own: ring, as the rest of Skiff.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_allow_http(config.allow_http);
        if let Some(e) = &config.endpoint {
            b = b.with_endpoint(e);
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        }
        let store = b.build().map_err(|e| anyhow::anyhow!("the bucket `{}`: {e}", config.bucket))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("skiff-objects")
            .enable_all()
            .build()?;
        let at = config.endpoint.clone().unwrap_or_else(|| "s3".into());
        let shown = format!("s3://{}/{} at {at}", config.bucket, config.prefix);
        Ok(Bucket(Arc::new(Inner {
            store: Arc::new(store),
            prefix: config.prefix.clone(),
            shown,
            limits,
            spool,
            rt: Some(rt),
        })))
    }
}

impl Inner {
    /// Where it is, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Runs `f` on the bucket's runtime; the calling thread waits.
    fn block<T: Send + 'static>(
        &self,
        f: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> std::io::Result<T> {
        let rt = self.rt.as_ref().ok_or_else(|| io("the bucket's client has stopped"))?;
        let task = rt.spawn(f);
        futures::executor::block_on(task).map_err(io)?.map_err(|e| io(format!("{}: {e}", self.shown)))
    }

    fn key(&self, parts: &[&str]) -> Key {
        let mut all: Vec<&str> = self.prefix.split('/').filter(|p| !p.is_empty()).collect();
        all.extend_from_slice(parts);
        Key::from_iter(all)
    }

    /// An object's bytes, or `None` when there is none.
    fn get_bytes(&self, key: Key) -> std::io::Result<Option<Bytes>> {
        let store = self.store.clone();
        self.block(async move {
            match store.get(&key).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn put_bytes(&self, key: Key, bytes: Vec<u8>) -> std::io::Result<()> {
        let store = self.store.clone();
        self.block(async move { store.put(&key, PutPayload::from(bytes)).await.map(|_| ()) })
    }

    fn delete(&self, key: Key) -> std::io::Result<()> {
        let store = self.store.clone();
        self.block(async move {
            match store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    /// Every key under `prefix`.
    fn keys(&self, prefix: Key) -> std::io::Result<Vec<Key>> {
        let store = self.store.clone();
        self.block(async move {
            let mut out = Vec::new();
            let mut s = store.list(Some(&prefix));
            while let Some(m) = s.next().await {
                out.push(m?.location);
            }
            Ok(out)
        })
    }

    /// Uploads the file at `from` as `key` (in parts past [`CHUNK`]), with its sha256 and size.
    fn upload(&self, from: &Path, key: Key) -> std::io::Result<(String, u64)> {
        let mut file = std::fs::File::open(from)?;
        let mut hash = Sha256::new();
        let mut first = vec![0u8; CHUNK];
        let n = read_full(&mut file, &mut first)?;
        first.truncate(n);
        hash.update(&first);
        if n < CHUNK {
            self.put_bytes(key, first)?;
            return Ok((hex::encode(hash.finalize()), n as u64));
        }
        // Large: a multipart upload fed from this thread, a chunk at a time.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
        let store = self.store.clone();
        let rt = self.rt.as_ref().ok_or_else(|| io("the bucket's client has stopped"))?;
        let task = rt.spawn(async move {
            let mut w = WriteMultipart::new(store.put_multipart(&key).await?);
            while let Some(chunk) = rx.recv().await {
                w.wait_for_capacity(4).await?;
                w.write(&chunk);
            }
            w.finish().await.map(|_| ())
        });
        let mut size = n as u64;
        let mut chunk = first;
        loop {
            if tx.blocking_send(chunk).is_err() {
                break;
            }
            let mut next = vec![0u8; CHUNK];
            let n = read_full(&mut file, &mut next)?;
            if n == 0 {
                break;
            }
            next.truncate(n);
            hash.update(&next);
            size += n as u64;
            chunk = next;
        }
        drop(tx);
        futures::executor::block_on(task).map_err(io)?.map_err(|e| io(format!("{}: {e}", self.shown)))?;
        Ok((hex::encode(hash.finalize()), size))
    }

    /// A streaming reader of `key`'s bytes, or `None` when there is no such object.
    fn reader(&self, key: Key) -> std::io::Result<Option<Box<dyn Read + Send>>> {
        let store = self.store.clone();
        let got = self.block(async move {
            match store.get(&key).await {
                Ok(r) => Ok(Some(r)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        let Some(got) = got else { return Ok(None) };
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Bytes>>(4);
        let rt = self.rt.as_ref().ok_or_else(|| io("the bucket's client has stopped"))?;
        rt.spawn(async move {
            let mut s = got.into_stream();
            while let Some(chunk) = s.next().await {
                let stop = chunk.is_err();
                let sent = tokio::task::block_in_place(|| tx.send(chunk.map_err(io)));
                if sent.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Some(Box::new(Stream { rx, buf: Bytes::new() })))
    }

    fn record<T: serde::de::DeserializeOwned>(&self, key: Key) -> std::io::Result<Option<T>> {
        match self.get_bytes(key)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(io),
        }
    }

    fn cache_records(&self, app: &str) -> std::io::Result<Vec<(Key, StoredEntry)>> {
        let mut out = Vec::new();
        for key in self.keys(self.key(&["cache-records", app]))? {
            if let Some(r) = self.record::<StoredEntry>(key.clone())? {
                out.push((key, r));
            }
        }
        Ok(out)
    }

    /// Removes the least recently used entries of `app` until the rest fit its cap; `keep` is
    /// the entry just saved.
    fn evict(&self, app: &str, keep: &Key) -> std::io::Result<()> {
        let mut all = self.cache_records(app)?;
        let limit = self.limits.of(app);
        let mut total: u64 = all.iter().map(|(_, r)| r.entry.size).sum();
        all.sort_by_key(|(_, r)| r.entry.used_ms);
        for (key, r) in all {
            if total <= limit {
                break;
            }
            if &key == keep {
                continue;
            }
            self.delete(key)?;
            self.delete(Key::from(r.object))?;
            total = total.saturating_sub(r.entry.size);
        }
        Ok(())
    }
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// An object's bytes as they arrive.
struct Stream {
    rx: std::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    buf: Bytes,
}

impl Read for Stream {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.buf = chunk?,
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf.split_to(n));
        Ok(n)
    }
}

/// What an artifact's record holds: the artifact and the object with its bytes.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredArtifact {
    #[serde(flatten)]
    artifact: Artifact,
    object: String,
}

/// What a cache entry's record holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredEntry {
    #[serde(flatten)]
    entry: CacheEntry,
    object: String,
}

fn check(what: &str, name: &str) -> std::io::Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what} `{name}` is not a valid name")))
    }
}

impl ArtifactStore for Bucket {
    fn put(&self, run: &str, job: &str, step: &str, name: &str, from: &Path) -> std::io::Result<Artifact> {
        check("run", run)?;
        check("artifact", name)?;
        // Uploaded under a name of its own, then made current by its record.
        let spool = self.key(&["artifacts", run, name, &format!("upload-{}", uuid_like())]);
        let (sha256, size) = self.upload(from, spool.clone())?;
        let object = self.key(&["artifacts", run, name, &sha256]);
        let store = self.store.clone();
        let (src, dst) = (spool.clone(), object.clone());
        self.block(async move { store.rename(&src, &dst).await })?;
        let record_key = self.key(&["artifact-records", run, &format!("{name}.json")]);
        let before: Option<StoredArtifact> = self.record(record_key.clone())?;
        let artifact =
            Artifact { name: name.into(), size, sha256, job: job.into(), step: step.into(), created: now_ms() / 1000 };
        let stored = StoredArtifact { artifact: artifact.clone(), object: object.to_string() };
        self.put_bytes(record_key, serde_json::to_vec(&stored).map_err(io)?)?;
        if let Some(old) = before.filter(|b| b.object != stored.object) {
            self.delete(Key::from(old.object))?;
        }
        Ok(artifact)
    }

    fn list(&self, run: &str) -> std::io::Result<Vec<Artifact>> {
        check("run", run)?;
        let mut out = Vec::new();
        for key in self.keys(self.key(&["artifact-records", run]))? {
            if let Some(r) = self.record::<StoredArtifact>(key)? {
                out.push(r.artifact);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn open(&self, run: &str, name: &str) -> std::io::Result<Option<(Artifact, Box<dyn Read + Send>)>> {
        check("run", run)?;
        if !valid_name(name) {
            return Ok(None);
        }
        let Some(r) = self.record::<StoredArtifact>(self.key(&["artifact-records", run, &format!("{name}.json")]))?
        else {
            return Ok(None);
        };
        Ok(self.reader(Key::from(r.object))?.map(|read| (r.artifact, read)))
    }

    fn remove_run(&self, run: &str) -> std::io::Result<()> {
        check("run", run)?;
        for top in ["artifact-records", "artifacts"] {
            for key in self.keys(self.key(&[top, run]))? {
                self.delete(key)?;
            }
        }
        Ok(())
    }

    fn runs(&self) -> std::io::Result<Vec<String>> {
        let store = self.store.clone();
        let prefix = self.key(&["artifact-records"]);
        let listed = self.block(async move { store.list_with_delimiter(Some(&prefix)).await })?;
        Ok(listed.common_prefixes.iter().filter_map(|p| p.filename().map(String::from)).collect())
    }

    fn cache_list(&self, app: &str, scope: &str) -> std::io::Result<Vec<CacheEntry>> {
        check("app", app)?;
        Ok(self.cache_records(app)?.into_iter().map(|(_, r)| r.entry).filter(|e| e.scope == scope).collect())
    }

    fn cache_open(
        &self,
        app: &str,
        scope: &str,
        key: &str,
        version: &str,
    ) -> std::io::Result<Option<(CacheEntry, Box<dyn Read + Send>)>> {
        check("app", app)?;
        let id = hex_digest(&[scope, key, version]);
        let record_key = self.key(&["cache-records", app, &format!("{id}.json")]);
        let Some(mut r) = self.record::<StoredEntry>(record_key.clone())? else { return Ok(None) };
        if (r.entry.scope.as_str(), r.entry.key.as_str(), r.entry.version.as_str()) != (scope, key, version) {
            return Ok(None);
        }
        let Some(read) = self.reader(Key::from(r.object.clone()))? else { return Ok(None) };
        r.entry.used_ms = now_ms();
        // Marking it used is worth a write, not a failed restore.
        if let Ok(json) = serde_json::to_vec(&r) {
            let _ = self.put_bytes(record_key, json);
        }
        Ok(Some((r.entry, read)))
    }

    fn cache_create(&self, app: &str, scope: &str, key: &str, version: &str) -> std::io::Result<Box<dyn CacheWrite>> {
        check("app", app)?;
        std::fs::create_dir_all(&self.spool)?;
        let spool = Spool::create(self.spool.join(format!("cache-{}", uuid_like())), self.limits.of(app))?;
        Ok(Box::new(BucketCacheWrite {
            bucket: self.0.clone(),
            app: app.into(),
            id: hex_digest(&[scope, key, version]),
            entry: CacheEntry {
                key: key.into(),
                version: version.into(),
                scope: scope.into(),
                size: 0,
                created_ms: 0,
                used_ms: 0,
            },
            spool,
        }))
    }

    fn cache_limit(&self, app: &str) -> u64 {
        self.limits.of(app)
    }
}

/// Logs written to `live` (the data directory, or PostgreSQL) while their run goes, and kept
/// as one object per step in the bucket once it ends ([`LogStore::archive`]), so that the
/// database holds only what is in progress and any instance reads any finished log.
pub struct BucketLogs {
    live: Arc<dyn LogStore>,
    bucket: Arc<Bucket>,
}

impl BucketLogs {
    /// Finished logs in `bucket`, the rest in `live`.
    pub fn new(live: Arc<dyn LogStore>, bucket: Arc<Bucket>) -> Self {
        BucketLogs { live, bucket }
    }

    fn run_prefix(&self, run: i64) -> Key {
        self.bucket.key(&["logs", &run.to_string()])
    }

    /// The lines of one step's log object (none when there is no such object).
    fn object(&self, key: Key) -> std::io::Result<Vec<LogRecord>> {
        let Some(bytes) = self.bucket.get_bytes(key.clone())? else { return Ok(Vec::new()) };
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|line| serde_json::from_slice(line).map_err(|e| io(format!("the log object {key}: {e}"))))
            .collect()
    }
}

impl LogStore for BucketLogs {
    fn append(&self, run: i64, rec: &LogRecord) -> std::io::Result<()> {
        self.live.append(run, rec)
    }

    fn read(&self, run: i64, after: u64) -> std::io::Result<Vec<LogRecord>> {
        // The live store first: a log archived meanwhile is then in the bucket whole (it is
        // uploaded before the live copy goes), and a line seen in both counts once.
        let mut lines: BTreeMap<u64, LogRecord> = self.live.read(run, after)?.into_iter().map(|r| (r.seq, r)).collect();
        let archived = (|| {
            let mut out = Vec::new();
            for key in self.bucket.keys(self.run_prefix(run))? {
                out.extend(self.object(key)?.into_iter().filter(|r| r.seq > after));
            }
            Ok::<_, std::io::Error>(out)
        })();
        match archived {
            Ok(recs) => {
                for rec in recs {
                    lines.entry(rec.seq).or_insert(rec);
                }
            }
            // The bucket out of reach: a log still in the live store has every line there (its
            // copy goes only once the bucket has it all), so a run in progress stays readable.
            Err(e) if !lines.is_empty() => {
                tracing::warn!(run, "reading its archived log: {e}; showing the live copy");
            }
            Err(e) => return Err(e),
        }
        Ok(lines.into_values().collect())
    }

    fn close(&self, run: i64) {
        self.live.close(run);
    }

    fn archive(&self, run: i64) -> std::io::Result<()> {
        let lines = self.live.read(run, 0)?;
        if lines.is_empty() {
            return Ok(());
        }
        // One object per step; ids that read alike as file names share one, in order.
        let mut steps: BTreeMap<(String, String), BTreeMap<u64, LogRecord>> = BTreeMap::new();
        for rec in lines {
            steps.entry((file_part(&rec.job), file_part(&rec.step))).or_default().insert(rec.seq, rec);
        }
        let run_id = run.to_string();
        for ((job, step), mut lines) in steps {
            let key = self.bucket.key(&["logs", &run_id, &job, &format!("{step}.jsonl")]);
            // A run archived before (it waited for an approval, then went on) keeps those lines.
            for rec in self.object(key.clone())? {
                lines.entry(rec.seq).or_insert(rec);
            }
            let mut out = Vec::new();
            for rec in lines.values() {
                serde_json::to_writer(&mut out, rec).map_err(io)?;
                out.push(b'\n');
            }
            self.bucket.put_bytes(key, out)?;
        }
        // Uploaded whole: the live copy can go.
        self.live.remove(run)
    }

    fn remove(&self, run: i64) -> std::io::Result<()> {
        self.live.remove(run)?;
        for key in self.bucket.keys(self.run_prefix(run))? {
            self.bucket.delete(key)?;
        }
        Ok(())
    }
}

/// A name no two uploads share.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}-{}", std::process::id(), now_ms(), N.fetch_add(1, Ordering::Relaxed))
}

/// A cache entry spooled to a local file, uploaded whole on commit.
struct BucketCacheWrite {
    bucket: Arc<Inner>,
    app: String,
    id: String,
    entry: CacheEntry,
    spool: Spool,
}

impl Write for BucketCacheWrite {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.spool.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.spool.flush()
    }
}

impl CacheWrite for BucketCacheWrite {
    fn commit(mut self: Box<Self>) -> std::io::Result<CacheEntry> {
        drop(self.spool.finish()?);
        self.entry.size = self.spool.size();
        let tmp = self.spool.path().to_path_buf();
        let bucket = self.bucket.clone();
        let result = (|| {
            let (sha256, _) = bucket.upload(&tmp, bucket.key(&["cache", &self.app, &self.id, "upload"]))?;
            let object = bucket.key(&["cache", &self.app, &self.id, &sha256]);
            let store = bucket.store.clone();
            let src = bucket.key(&["cache", &self.app, &self.id, "upload"]);
            let dst = object.clone();
            bucket.block(async move { store.rename(&src, &dst).await })?;
            let record_key = bucket.key(&["cache-records", &self.app, &format!("{}.json", self.id)]);
            let before: Option<StoredEntry> = bucket.record(record_key.clone())?;
            let now = now_ms();
            self.entry.created_ms = now;
            self.entry.used_ms = now;
            let stored = StoredEntry { entry: self.entry.clone(), object: object.to_string() };
            bucket.put_bytes(record_key.clone(), serde_json::to_vec(&stored).map_err(io)?)?;
            if let Some(old) = before.filter(|b| b.object != stored.object) {
                bucket.delete(Key::from(old.object))?;
            }
            bucket.evict(&self.app, &record_key)?;
            Ok(self.entry.clone())
        })();
        let _ = std::fs::remove_file(&tmp);
        result
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::testing::s3::{ACCESS_KEY, S3Server, SECRET_KEY};

    pub fn bucket(s3: &S3Server, prefix: &str, limit: u64, spool: &Path) -> Bucket {
        let config = BucketConfig {
            bucket: "bucket".into(),
            prefix: prefix.into(),
            endpoint: Some(s3.endpoint()),
            region: "us-east-1".into(),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            allow_http: true,
        };
        let limits = CacheLimits { default_bytes: limit, apps: Default::default() };
        Bucket::new(&config, limits, spool.to_path_buf()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::bucket;
    use super::*;
    use crate::testing::s3::S3Server;
    use std::time::Duration;

    fn read_all(mut r: Box<dyn Read + Send>) -> Vec<u8> {
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn artifacts_are_stored_listed_streamed_replaced_and_removed_in_a_real_bucket() {
        let s3 = S3Server::start();
        let dir = tempfile::tempdir().unwrap();
        let b = bucket(&s3, "ci/skiff", CacheLimits::DEFAULT_BYTES, dir.path());
        let small = dir.path().join("small");
        std::fs::write(&small, b"site v1").unwrap();
        // Past one request part: a multipart upload, streamed back.
        let big: Vec<u8> = (0..(CHUNK + CHUNK / 2) as u32).map(|i| (i % 251) as u8).collect();
        let big_file = dir.path().join("big");
        std::fs::write(&big_file, &big).unwrap();

        let a = b.put("7", "build", "pack", "site.txt", &small).unwrap();
        assert_eq!((a.size, a.sha256.as_str()), (7, hex::encode(Sha256::digest(b"site v1")).as_str()));
        let l = b.put("7", "build-2", "pack", "big.bin", &big_file).unwrap();
        assert_eq!(l.size, big.len() as u64);
        let names: Vec<String> = b.list("7").unwrap().into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["big.bin", "site.txt"]);
        let (meta, read) = b.open("7", "big.bin").unwrap().unwrap();
        assert_eq!((meta.job.as_str(), meta.step.as_str()), ("build-2", "pack"));
        assert!(read_all(read) == big, "the large artifact comes back whole");
        assert!(s3.root.path().join("bucket/ci/skiff/artifact-records/7/site.txt.json").is_file());

        // A replacement: the new bytes, and the old object goes.
        std::fs::write(&small, b"site v2!").unwrap();
        let v2 = b.put("7", "build", "pack", "site.txt", &small).unwrap();
        assert_eq!(read_all(b.open("7", "site.txt").unwrap().unwrap().1), b"site v2!");
        let objects: Vec<_> = std::fs::read_dir(s3.root.path().join("bucket/ci/skiff/artifacts/7/site.txt"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(objects, [v2.sha256.as_str()]);

        // Another instance sees the same.
        let other = bucket(&s3, "ci/skiff/", CacheLimits::DEFAULT_BYTES, dir.path());
        assert_eq!(other.list("7").unwrap(), b.list("7").unwrap());
        b.put("9", "", "provenance", "p.jsonl", &small).unwrap();
        let mut runs = other.runs().unwrap();
        runs.sort();
        assert_eq!(runs, ["7", "9"]);

        assert!(b.open("7", "nope").unwrap().is_none());
        assert!(b.open("7", "../9/p.jsonl").unwrap().is_none());
        assert!(b.put("7", "", "", "../escape", &small).is_err());
        b.remove_run("7").unwrap();
        assert!(b.list("7").unwrap().is_empty() && b.open("7", "site.txt").unwrap().is_none());
        assert_eq!(b.runs().unwrap(), ["9"]);
    }

    #[test]
    fn cache_entries_are_saved_restored_replaced_and_evicted_least_recently_used_first() {
        let s3 = S3Server::start();
        let dir = tempfile::tempdir().unwrap();
        let b = bucket(&s3, "", 1000, dir.path());
        let save = |scope: &str, key: &str, bytes: &[u8]| {
            let mut w = b.cache_create("web", scope, key, "v1").unwrap();
            w.write_all(bytes).unwrap();
            w.commit().unwrap()
        };
        save("refs/heads/main", "deps-1", &[1u8; 400]);
        std::thread::sleep(Duration::from_millis(5));
        save("refs/heads/main", "deps-2", &[2u8; 400]);
        assert_eq!(b.cache_list("web", "refs/heads/main").unwrap().len(), 2);
        assert!(b.cache_list("web", "refs/heads/dev").unwrap().is_empty());
        assert!(b.cache_open("web", "refs/heads/main", "deps-1", "v2").unwrap().is_none(), "another version");
        // Restoring deps-1 makes deps-2 the least recently used.
        std::thread::sleep(Duration::from_millis(5));
        let (e, read) = b.cache_open("web", "refs/heads/main", "deps-1", "v1").unwrap().unwrap();
        assert_eq!((e.size, read_all(read)), (400, vec![1u8; 400]));
        std::thread::sleep(Duration::from_millis(5));
        save("refs/heads/main", "deps-3", &[3u8; 400]);
        let mut keys: Vec<String> =
            b.cache_list("web", "refs/heads/main").unwrap().into_iter().map(|e| e.key).collect();
        keys.sort();
        assert_eq!(keys, ["deps-1", "deps-3"], "deps-2 was evicted");
        // A replacement of the same key and version.
        save("refs/heads/main", "deps-3", &[4u8; 10]);
        let (e, read) = b.cache_open("web", "refs/heads/main", "deps-3", "v1").unwrap().unwrap();
        assert_eq!((e.size, read_all(read)), (10, vec![4u8; 10]));
        // Past the cap: refused, and nothing is left behind.
        let mut w = b.cache_create("web", "refs/heads/main", "huge", "v1").unwrap();
        let err = w.write_all(&[0u8; 1001]).unwrap_err();
        assert!(err.to_string().contains("cache cap"), "{err}");
        drop(w);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("cache-"))
        );
        assert!(b.cache_open("web", "refs/heads/main", "huge", "v1").unwrap().is_none());
    }
}

#[cfg(test)]
mod log_tests {
    use super::tests_support::bucket;
    use super::*;
    use crate::logs::FsLogStore;
    use crate::testing::s3::S3Server;

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.path().is_dir() { out.extend(files(&e.path())) } else { out.push(e.path()) }
        }
        out
    }

    #[test]
    fn a_finished_log_moves_to_the_bucket_one_object_per_step_and_reads_the_same_everywhere() {
        let s3 = S3Server::start();
        let dir = tempfile::tempdir().unwrap();
        let b = Arc::new(bucket(&s3, "ci", CacheLimits::DEFAULT_BYTES, dir.path()));
        let live: Arc<dyn LogStore> = Arc::new(FsLogStore::new(dir.path().join("logs")));
        let logs = BucketLogs::new(live.clone(), b.clone());
        let rec = |seq, job: &str, step: &str, text: &str| LogRecord {
            seq,
            ts: 1,
            job: job.into(),
            step: step.into(),
            level: "stdout".into(),
            text: text.into(),
        };
        let lines = vec![
            rec(1, "build", "make", "one"),
            rec(2, "build", "pack", "two"),
            rec(3, "build", "make", "three"),
            rec(4, "test/x", "../up", "four\nlines"),
        ];
        for l in &lines {
            logs.append(5, l).unwrap();
        }
        // In progress: from the live store.
        assert_eq!(logs.read(5, 0).unwrap(), lines);
        logs.close(5);
        logs.archive(5).unwrap();
        assert!(live.read(5, 0).unwrap().is_empty(), "the live copy goes once the bucket has it");
        assert_eq!(logs.read(5, 0).unwrap(), lines);
        assert_eq!(logs.read(5, 2).unwrap(), lines[2..]);
        let mut objects: Vec<String> = files(&s3.root.path().join("bucket/ci/logs/5"))
            .iter()
            .map(|p| p.strip_prefix(s3.root.path().join("bucket/ci/logs/5")).unwrap().display().to_string())
            .collect();
        objects.sort();
        assert_eq!(objects, ["build/make.jsonl", "build/pack.jsonl", "test_x/_.._up.jsonl"]);
        // Another instance, with a live store of its own, reads the same.
        let other = BucketLogs::new(Arc::new(FsLogStore::new(dir.path().join("other"))), b.clone());
        assert_eq!(other.read(5, 0).unwrap(), lines);
        // A line in both places (a reader between the upload and the live copy's removal)
        // counts once.
        logs.append(5, &lines[0]).unwrap();
        assert_eq!(logs.read(5, 0).unwrap(), lines);
        // A run that went on after it was archived (an approval): the second part joins the
        // first, also in a step object that both parts wrote to.
        let more = vec![rec(5, "build", "make", "after the wait"), rec(6, "deploy", "", "approved")];
        for l in &more {
            logs.append(5, l).unwrap();
        }
        logs.archive(5).unwrap();
        let all: Vec<LogRecord> = lines.iter().chain(&more).cloned().collect();
        assert_eq!(logs.read(5, 0).unwrap(), all);
        assert_eq!(other.read(5, 4).unwrap(), more);
        // Nothing to archive: nothing written.
        logs.archive(6).unwrap();
        assert!(!s3.root.path().join("bucket/ci/logs/6").exists());
        logs.remove(5).unwrap();
        assert!(logs.read(5, 0).unwrap().is_empty());
        assert!(files(&s3.root.path().join("bucket/ci/logs")).is_empty());

        // The bucket out of reach: a log still in the live store reads from there; a log only
        // in the bucket is an error, never an empty log.
        logs.append(9, &lines[0]).unwrap();
        logs.archive(9).unwrap();
        logs.append(8, &lines[1]).unwrap();
        drop(s3);
        assert_eq!(logs.read(8, 0).unwrap(), lines[1..2]);
        assert!(logs.read(9, 0).is_err(), "run 9's log is only in the bucket");
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::ServeConfig;

    fn err(objects: &str) -> String {
        let text = format!("data = \"/tmp/skiff-objects-test\"\n[objects]\n{objects}\n");
        format!("{:#}", ServeConfig::from_toml(&text, std::path::Path::new("/"), None).unwrap_err())
    }

    #[test]
    fn objects_mistakes_are_explained_and_a_good_bucket_is_resolved() {
        assert!(err("url = \"https://bucket.s3.amazonaws.com\"").contains("s3://BUCKET"));
        assert!(err("url = \"s3:///prefix\"").contains("names no bucket"));
        assert!(
            err("url = \"s3://b\"\naccess-key-id = \"AK\"").contains("both `access-key-id` and `secret-access-key`")
        );
        assert!(err("url = \"s3://b\"\nendpoint = \"minio:9000\"").contains("give a URL"));
        assert!(err("url = \"s3://b\"\nbucket = \"b\"").contains("unknown field `bucket`"));
        let ok = ServeConfig::from_toml(
            "data = \"/tmp/skiff-objects-test\"\n[objects]\nurl = \"s3://ci/skiff/\"\nendpoint = \"http://127.0.0.1:9000\"\n",
            std::path::Path::new("/"),
            None,
        )
        .unwrap();
        let o = ok.objects.as_ref().unwrap();
        assert_eq!((o.bucket.as_str(), o.prefix.as_str(), o.allow_http), ("ci", "skiff", true));
        assert!(ok.bucket.is_some());
    }
}
