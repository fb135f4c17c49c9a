//! Step logs: stored per step behind [`LogStore`] (the data directory, or PostgreSQL; once a
//! run ends, one object per step in the bucket when there is one: `bucket::BucketLogs`),
//! capped per step, and broadcast live to followers ([`Hub`]).
//!
//! Lines arrive already masked by the pipeline engine; nothing here sees a secret.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::ToSchema;

use crate::store::RunStatus;

/// One stored log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogRecord {
    /// Order within the run, from 1.
    pub seq: u64,
    /// Unix ms.
    pub ts: i64,
    /// Job instance.
    pub job: String,
    /// Step id.
    pub step: String,
    /// `info`, `stdout`, `stderr`, …
    pub level: String,
    /// The text, masked.
    pub text: String,
}

/// Where logs are kept. The host writes each line once, in `seq` order within a step.
pub trait LogStore: Send + Sync + 'static {
    /// Appends a line to its step's log.
    fn append(&self, run: i64, rec: &LogRecord) -> std::io::Result<()>;
    /// The run's lines with `seq > after`, in `seq` order.
    fn read(&self, run: i64, after: u64) -> std::io::Result<Vec<LogRecord>>;
    /// This host writes no more of the run's logs (files can be closed).
    fn close(&self, run: i64);
    /// The run's logs are complete and this host wrote their last line: where a store keeps
    /// finished logs elsewhere (a bucket), they move there now. Blocking.
    fn archive(&self, _run: i64) -> std::io::Result<()> {
        Ok(())
    }
    /// Drops a run's logs (before a retry).
    fn remove(&self, run: i64) -> std::io::Result<()>;
}

/// Logs as JSON lines in `<dir>/<run>/<job>/<step>.jsonl`.
pub struct FsLogStore {
    dir: PathBuf,
    open: Mutex<HashMap<(i64, String, String), File>>,
}

impl FsLogStore {
    /// Logs under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FsLogStore { dir: dir.into(), open: Mutex::new(HashMap::new()) }
    }

    fn run_dir(&self, run: i64) -> PathBuf {
        self.dir.join(run.to_string())
    }
}

/// A job or step id as a file name: ids come from the pipeline, so anything unusual is replaced.
pub(crate) fn file_part(s: &str) -> String {
    let clean: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    if clean.is_empty() || clean.starts_with('.') { format!("_{clean}") } else { clean }
}

impl LogStore for FsLogStore {
    fn append(&self, run: i64, rec: &LogRecord) -> std::io::Result<()> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let key = (run, rec.job.clone(), rec.step.clone());
        if !open.contains_key(&key) {
            let dir = self.run_dir(run).join(file_part(&rec.job));
            std::fs::create_dir_all(&dir)?;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{}.jsonl", file_part(&rec.step))))?;
            open.insert(key.clone(), f);
        }
        let mut line = serde_json::to_vec(rec)?;
        line.push(b'\n');
        // One write per line: a follower reading the file sees whole lines.
        open.get_mut(&key).map(|f| f.write_all(&line)).unwrap_or(Ok(()))
    }

    fn read(&self, run: i64, after: u64) -> std::io::Result<Vec<LogRecord>> {
        let dir = self.run_dir(run);
        let mut out = Vec::new();
        if !dir.exists() {
            return Ok(out);
        }
        for job in std::fs::read_dir(&dir)? {
            let job = job?.path();
            if !job.is_dir() {
                continue;
            }
            for step in std::fs::read_dir(&job)? {
                read_file(&step?.path(), after, &mut out)?;
            }
        }
        out.sort_by_key(|r| r.seq);
        Ok(out)
    }

    fn close(&self, run: i64) {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| k.0 != run);
    }

    fn remove(&self, run: i64) -> std::io::Result<()> {
        self.close(run);
        match std::fs::remove_dir_all(self.run_dir(run)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn read_file(path: &Path, after: u64, out: &mut Vec<LogRecord>) -> std::io::Result<()> {
    let f = std::io::BufReader::new(File::open(path)?);
    for line in f.lines() {
        let line = line?;
        // A torn last line (the host was killed mid-write) is skipped.
        if let Ok(rec) = serde_json::from_str::<LogRecord>(&line)
            && rec.seq > after
        {
            out.push(rec);
        }
    }
    Ok(())
}

/// What followers of a run receive.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum LiveEvent {
    /// A log line.
    Log(LogRecord),
    /// A step or job changed state.
    Step {
        /// Job instance.
        job: String,
        /// Step id.
        step: String,
        /// Display name.
        name: String,
        /// `running`, `success`, …
        status: RunStatus,
    },
    /// The run ended.
    End {
        /// Its final status.
        status: RunStatus,
    },
}

/// Live channels per run.
#[derive(Default)]
pub struct Hub {
    runs: Mutex<HashMap<i64, broadcast::Sender<LiveEvent>>>,
}

impl Hub {
    /// Follows a run.
    pub fn subscribe(&self, run: i64) -> broadcast::Receiver<LiveEvent> {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.entry(run).or_insert_with(|| broadcast::channel(1024).0).subscribe()
    }

    /// Sends to the run's followers, if any.
    pub fn send(&self, run: i64, e: LiveEvent) {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = runs.get(&run) {
            let _ = tx.send(e);
        }
    }

    /// The run ended: tells followers and drops the channel.
    pub fn end(&self, run: i64, status: RunStatus) {
        let tx = self.runs.lock().unwrap_or_else(|e| e.into_inner()).remove(&run);
        if let Some(tx) = tx {
            let _ = tx.send(LiveEvent::End { status });
        }
    }

    /// Drops a channel nobody needs (a follower of a run that had already ended).
    pub fn forget_if_idle(&self, run: i64) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if runs.get(&run).is_some_and(|tx| tx.receiver_count() <= 1) {
            runs.remove(&run);
        }
    }
}
