//! The run store: SQLite in WAL mode; accepting a run commits with `synchronous=FULL`, so a
//! run answered 202 survives a crash, even a power cut. The schema is migrated with
//! `PRAGMA user_version` and the [`MIGRATIONS`] list.
//!
//! One connection behind a mutex: every statement here is short, and SQLite serializes
//! writers anyway.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension as _, Row, params};
use serde::Serialize;
use utoipa::ToSchema;

/// The schema, one step per entry; entry `n` moves `user_version` from `n` to `n + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: runs, jobs, steps.
    "CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        app TEXT NOT NULL,
        number INTEGER NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 1,
        status TEXT NOT NULL,
        trigger TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        git_ref TEXT,
        sha TEXT,
        dispatch_id TEXT UNIQUE,
        inputs TEXT NOT NULL DEFAULT '{}',
        event TEXT NOT NULL DEFAULT '{}',
        body TEXT NOT NULL DEFAULT 'null',
        job TEXT,
        parent_id INTEGER,
        requested_by TEXT,
        concurrency_group TEXT,
        cancel_in_progress INTEGER NOT NULL DEFAULT 0,
        prepared INTEGER NOT NULL DEFAULT 0,
        interruptions INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER
    );
    CREATE INDEX runs_app ON runs(app, id);
    CREATE INDEX runs_status ON runs(status, id);
    CREATE TABLE jobs (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        job_key TEXT NOT NULL,
        job TEXT NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        started_at INTEGER,
        finished_at INTEGER,
        duration_ms INTEGER,
        PRIMARY KEY (run_id, job_key)
    );
    CREATE TABLE steps (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        job_key TEXT NOT NULL,
        step_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        started_at INTEGER,
        finished_at INTEGER,
        wall_ms INTEGER,
        cpu_ms INTEGER,
        peak_memory_bytes INTEGER,
        egress_bytes INTEGER,
        log_bytes INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, job_key, step_id)
    );",
    // 2: the last time each cron schedule fired.
    "CREATE TABLE cron_state (
        app TEXT NOT NULL,
        cron TEXT NOT NULL,
        last_fired INTEGER NOT NULL,
        PRIMARY KEY (app, cron)
    );",
    // 3: which of a commit's pipelines a run runs (`.skiff/pipelines/*`: a run each).
    "ALTER TABLE runs ADD COLUMN pipeline TEXT;",
    // 4: a job's outputs, which a rerun of the failed jobs hands on from the jobs it reuses.
    "ALTER TABLE jobs ADD COLUMN outputs TEXT;",
];

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A run's state.
pub mod status {
    /// Waiting for a slot.
    pub const QUEUED: &str = "queued";
    /// Running.
    pub const RUNNING: &str = "running";
    /// Succeeded.
    pub const SUCCESS: &str = "success";
    /// Failed.
    pub const FAILURE: &str = "failure";
    /// Cancelled.
    pub const CANCELLED: &str = "cancelled";
    /// Not run: its pipeline's `on:` does not take the event (the reason is its error).
    pub const SKIPPED: &str = "skipped";

    /// Whether a run in `s` is over.
    pub fn is_terminal(s: &str) -> bool {
        matches!(s, SUCCESS | FAILURE | CANCELLED | SKIPPED)
    }
}

/// A run to store.
#[derive(Debug, Clone, Default)]
pub struct NewRun {
    /// The app.
    pub app: String,
    /// `push`, `pull_request`, `manual`, `schedule`, `rerun`, …
    pub trigger: String,
    /// Why it runs.
    pub reason: String,
    /// The Git ref.
    pub git_ref: Option<String>,
    /// The commit.
    pub sha: Option<String>,
    /// Dedupe key (the dispatch id); a second run with the same key is not created.
    pub dispatch_id: Option<String>,
    /// `inputs` context.
    pub inputs: BTreeMap<String, String>,
    /// `event` context.
    pub event: serde_json::Value,
    /// `body` context.
    pub body: serde_json::Value,
    /// Run only this job (and what it needs).
    pub job: Option<String>,
    /// For a rerun: the run it repeats (same number, next attempt).
    pub parent: Option<(i64, i64, i64)>,
    /// The token (or `webhook`, `cron`) that asked for it.
    pub requested_by: Option<String>,
    /// The pipeline file of the commit it runs, when the commit has several.
    pub pipeline: Option<String>,
}

/// What [`Store::insert_run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// The run's id.
    pub id: i64,
    /// Its number within the app.
    pub number: i64,
    /// True when the dispatch id was already known: no new run was created.
    pub duplicate: bool,
}

/// A run as stored.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Run {
    /// Id, unique on this host.
    pub id: i64,
    /// The app.
    pub app: String,
    /// Number within the app (a rerun keeps it).
    pub number: i64,
    /// 1 for the first attempt; a rerun or a retry after a crash adds one.
    pub attempt: i64,
    /// `queued`, `running`, `success`, `failure`, `cancelled` or `skipped` (its pipeline's `on:` did not take the event).
    pub status: String,
    /// What started it: `push`, `pull_request`, `manual`, `schedule`, `rerun`, …
    pub trigger: String,
    /// Why it runs.
    pub reason: String,
    /// The Git ref.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// The commit.
    pub sha: Option<String>,
    /// The dispatch id it was created for (redeliveries of it create no run).
    pub dispatch_id: Option<String>,
    /// Inputs.
    pub inputs: BTreeMap<String, String>,
    /// Only this job (and what it needs) runs.
    pub job: Option<String>,
    /// The run this one repeats.
    pub parent_id: Option<i64>,
    /// Who asked for it.
    pub requested_by: Option<String>,
    /// The pipeline file of the commit it runs (`.skiff/pipelines/deploy.yaml`), when the
    /// commit has several: each runs as a run of its own.
    pub pipeline: Option<String>,
    /// The evaluated `concurrency.group`.
    pub concurrency_group: Option<String>,
    /// How often the host stopped while this run was running.
    pub interruptions: i64,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub started_at: Option<i64>,
    /// Unix ms.
    pub finished_at: Option<i64>,
    /// Wall time of the run so far, in ms.
    pub duration_ms: Option<i64>,
    #[serde(skip)]
    pub(crate) event: serde_json::Value,
    #[serde(skip)]
    pub(crate) body: serde_json::Value,
    #[serde(skip)]
    pub(crate) prepared: bool,
    /// Whether a newer run of its group cancels it while it runs.
    pub cancel_in_progress: bool,
}

/// A job of a run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Job {
    /// The job instance (`build`, or `build-2` for a matrix combination).
    pub key: String,
    /// The job id in the pipeline.
    pub job: String,
    /// Display name.
    pub name: String,
    /// `running`, `success`, `failure`, `cancelled`, `skipped`.
    pub status: String,
    /// Why it was skipped or failed.
    pub reason: Option<String>,
    /// Unix ms.
    pub started_at: Option<i64>,
    /// Unix ms.
    pub finished_at: Option<i64>,
    /// Wall time in ms.
    pub duration_ms: Option<i64>,
    /// Its outputs (masked).
    pub outputs: BTreeMap<String, String>,
    /// Its steps in order.
    pub steps: Vec<Step>,
}

/// A step of a job, with its usage.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Step {
    /// Step id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `running`, `success`, `failure`, `cancelled`, `skipped`.
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Unix ms.
    pub started_at: Option<i64>,
    /// Unix ms.
    pub finished_at: Option<i64>,
    /// Usage.
    pub usage: Usage,
}

/// What a step (or run) used. Fields the executor does not report are null.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Usage {
    /// Wall time in ms.
    pub wall_ms: Option<i64>,
    /// CPU time in ms.
    pub cpu_ms: Option<i64>,
    /// Peak memory in bytes.
    pub peak_memory_bytes: Option<i64>,
    /// Bytes sent and received over HTTP.
    pub egress_bytes: Option<i64>,
    /// Log bytes kept.
    pub log_bytes: i64,
}

/// Filters for [`Store::list_runs`].
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only these apps (`None`: all).
    pub apps: Option<Vec<String>>,
    /// Only this app.
    pub app: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// Ids below this (paging).
    pub before: Option<i64>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<i64>,
}

/// What startup recovery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Runs put back in the queue.
    pub retried: Vec<i64>,
    /// Runs failed.
    pub failed: Vec<i64>,
}

/// The run store.
pub struct Store {
    conn: Mutex<Connection>,
}

const RUN_COLS: &str = "id, app, number, attempt, status, trigger, reason, git_ref, sha, dispatch_id, inputs, job, parent_id, requested_by, concurrency_group, interruptions, error, created_at, started_at, finished_at, event, body, prepared, cancel_in_progress, pipeline";

fn run_row(r: &Row<'_>) -> rusqlite::Result<Run> {
    let inputs: String = r.get(10)?;
    let event: String = r.get(20)?;
    let body: String = r.get(21)?;
    let started_at: Option<i64> = r.get(18)?;
    let finished_at: Option<i64> = r.get(19)?;
    Ok(Run {
        id: r.get(0)?,
        app: r.get(1)?,
        number: r.get(2)?,
        attempt: r.get(3)?,
        status: r.get(4)?,
        trigger: r.get(5)?,
        reason: r.get(6)?,
        git_ref: r.get(7)?,
        sha: r.get(8)?,
        dispatch_id: r.get(9)?,
        inputs: serde_json::from_str(&inputs).unwrap_or_default(),
        job: r.get(11)?,
        parent_id: r.get(12)?,
        requested_by: r.get(13)?,
        concurrency_group: r.get(14)?,
        interruptions: r.get(15)?,
        error: r.get(16)?,
        created_at: r.get(17)?,
        started_at,
        finished_at,
        duration_ms: started_at.map(|s| finished_at.unwrap_or_else(now_ms) - s),
        event: serde_json::from_str(&event).unwrap_or_default(),
        body: serde_json::from_str(&body).unwrap_or_default(),
        prepared: r.get(22)?,
        cancel_in_progress: r.get(23)?,
        pipeline: r.get(24)?,
    })
}

impl Store {
    /// Opens (or creates) the store at `path` and migrates it.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let conn = Connection::open(path).with_context(|| format!("opening the run store {}", path.display()))?;
        Self::with_connection(conn).with_context(|| format!("the run store {}", path.display()))
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> anyhow::Result<Self> {
        Self::with_connection(Connection::open_in_memory()?)
    }

    fn with_connection(mut conn: Connection) -> anyhow::Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL for progress (steps, jobs): in WAL mode it survives a killed process, and a
        // run whose progress is lost to a power cut is recovered anyway. Accepting a run
        // switches to FULL, so it is on disk before the 202 leaves.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Store { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The schema version.
    pub fn schema_version(&self) -> anyhow::Result<i64> {
        Ok(self.conn().query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Stores a queued run, committed (and synced) before this returns. With a known
    /// `dispatch_id` nothing is written and the existing run is returned.
    pub fn insert_run(&self, run: &NewRun) -> anyhow::Result<Inserted> {
        let mut out = self.insert_runs(std::slice::from_ref(run))?;
        out.pop().context("no run inserted")?
    }

    /// Stores several runs in one transaction and one sync (group commit); one result per run,
    /// in order. A run that cannot be stored gets its error without failing the others.
    pub fn insert_runs(&self, runs: &[NewRun]) -> anyhow::Result<Vec<anyhow::Result<Inserted>>> {
        let mut conn = self.conn();
        conn.pragma_update(None, "synchronous", "FULL")?;
        let result = (|| {
            let tx = conn.transaction()?;
            let mut out = Vec::with_capacity(runs.len());
            for run in runs {
                tx.execute_batch("SAVEPOINT one")?;
                let r = insert_one(&tx, run);
                tx.execute_batch(if r.is_ok() { "RELEASE one" } else { "ROLLBACK TO one; RELEASE one" })?;
                out.push(r);
            }
            tx.commit()?;
            Ok(out)
        })();
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        result
    }

    /// One run.
    pub fn run(&self, id: i64) -> anyhow::Result<Option<Run>> {
        let sql = format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1");
        Ok(self.conn().query_row(&sql, [id], run_row).optional()?)
    }

    /// Runs, newest first.
    pub fn list_runs(&self, f: &RunFilter) -> anyhow::Result<Vec<Run>> {
        let mut sql = format!("SELECT {RUN_COLS} FROM runs WHERE 1=1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(apps) = &f.apps {
            if apps.is_empty() {
                return Ok(Vec::new());
            }
            let marks: Vec<String> = apps
                .iter()
                .map(|a| {
                    args.push(a.clone().into());
                    format!("?{}", args.len())
                })
                .collect();
            sql.push_str(&format!(" AND app IN ({})", marks.join(",")));
        }
        if let Some(app) = &f.app {
            args.push(app.clone().into());
            sql.push_str(&format!(" AND app = ?{}", args.len()));
        }
        if let Some(s) = &f.status {
            args.push(s.clone().into());
            sql.push_str(&format!(" AND status = ?{}", args.len()));
        }
        if let Some(b) = f.before {
            args.push(b.into());
            sql.push_str(&format!(" AND id < ?{}", args.len()));
        }
        args.push(f.limit.unwrap_or(50).clamp(1, 500).into());
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The oldest queued runs (at most 256: the scheduler looks no further in one pass).
    pub fn queued(&self) -> anyhow::Result<Vec<Run>> {
        let sql = format!("SELECT {RUN_COLS} FROM runs WHERE status = 'queued' ORDER BY id LIMIT 256");
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([], run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a queued run's concurrency group.
    pub fn set_prepared(&self, id: i64, group: Option<&str>, cancel_in_progress: bool) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE runs SET prepared = 1, concurrency_group = ?2, cancel_in_progress = ?3 WHERE id = ?1",
            params![id, group, cancel_in_progress],
        )?;
        Ok(())
    }

    /// Which of its commit's pipelines a run runs.
    pub fn set_pipeline(&self, id: i64, pipeline: &str) -> anyhow::Result<()> {
        self.conn().execute("UPDATE runs SET pipeline = ?2 WHERE id = ?1", params![id, pipeline])?;
        Ok(())
    }

    /// A manual run's inputs, checked against the pipeline's `workflow_dispatch` and with its
    /// defaults.
    pub fn set_inputs(&self, id: i64, inputs: &BTreeMap<String, String>) -> anyhow::Result<()> {
        let json = serde_json::to_string(inputs)?;
        self.conn().execute("UPDATE runs SET inputs = ?2 WHERE id = ?1", params![id, json])?;
        Ok(())
    }

    /// Records the commit a run builds, once it is known (a manual run names only a ref), in
    /// its `sha` and in its `event.sha`.
    pub fn set_sha(&self, id: i64, sha: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE runs SET sha = ?2, event = json_set(event, '$.sha', ?2) WHERE id = ?1",
            params![id, sha],
        )?;
        Ok(())
    }

    /// Queued runs of `group` older than `id`.
    pub fn queued_in_group_before(&self, group: &str, id: i64) -> anyhow::Result<Vec<i64>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT id FROM runs WHERE status = 'queued' AND concurrency_group = ?1 AND id < ?2")?;
        let rows = stmt.query_map(params![group, id], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks a queued run as running. False if it was no longer queued.
    pub fn start_run(&self, id: i64) -> anyhow::Result<bool> {
        let n = self.conn().execute(
            "UPDATE runs SET status = 'running', started_at = ?2, error = NULL WHERE id = ?1 AND status = 'queued'",
            params![id, now_ms()],
        )?;
        Ok(n == 1)
    }

    /// Ends a run (unless it already ended) and closes its open jobs and steps with the same
    /// status. False if it had already ended.
    pub fn finish_run(&self, id: i64, status: &str, error: Option<&str>) -> anyhow::Result<bool> {
        // NORMAL: a killed process keeps it (WAL); after a power cut the run is recovered.
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        let n = tx.execute(
            "UPDATE runs SET status = ?2, error = ?3, finished_at = ?4 WHERE id = ?1 AND status IN ('queued', 'running')",
            params![id, status, error, now],
        )?;
        let open = if status == status::SUCCESS { status::CANCELLED } else { status };
        tx.execute(
            "UPDATE steps SET status = ?2, finished_at = ?3, wall_ms = ?3 - started_at WHERE run_id = ?1 AND status = 'running'",
            params![id, open, now],
        )?;
        tx.execute(
            "UPDATE jobs SET status = ?2, finished_at = ?3, duration_ms = ?3 - started_at WHERE run_id = ?1 AND status = 'running'",
            params![id, open, now],
        )?;
        tx.commit()?;
        Ok(n == 1)
    }

    /// A job began.
    pub fn job_started(&self, run: i64, key: &str, job: &str, name: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO jobs (run_id, job_key, job, name, status, started_at) VALUES (?1, ?2, ?3, ?4, 'running', ?5)",
            params![run, key, job, name, now_ms()],
        )?;
        Ok(())
    }

    /// A job ended or was skipped.
    #[allow(clippy::too_many_arguments)]
    pub fn job_finished(
        &self,
        run: i64,
        key: &str,
        job: &str,
        name: &str,
        status: &str,
        reason: Option<&str>,
        duration_ms: Option<u64>,
        outputs: Option<&BTreeMap<String, String>>,
    ) -> anyhow::Result<()> {
        let now = now_ms();
        let outputs = outputs.filter(|o| !o.is_empty()).map(serde_json::to_string).transpose()?;
        self.conn().execute(
            "INSERT INTO jobs (run_id, job_key, job, name, status, reason, finished_at, duration_ms, outputs) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (run_id, job_key) DO UPDATE SET status = ?5, reason = ?6, finished_at = ?7, duration_ms = ?8, outputs = ?9",
            params![run, key, job, name, status, reason, now, duration_ms.map(|d| d as i64), outputs],
        )?;
        Ok(())
    }

    /// A step began.
    pub fn step_started(&self, run: i64, job: &str, step: &str, name: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO steps (run_id, job_key, step_id, seq, name, status, started_at)
             VALUES (?1, ?2, ?3, (SELECT COUNT(*) FROM steps WHERE run_id = ?1 AND job_key = ?2), ?4, 'running', ?5)",
            params![run, job, step, name, now_ms()],
        )?;
        Ok(())
    }

    /// A step ended (or was skipped, and so never started).
    #[allow(clippy::too_many_arguments)]
    pub fn step_finished(
        &self,
        run: i64,
        job: &str,
        step: &str,
        name: &str,
        status: &str,
        error: Option<&str>,
        usage: &Usage,
    ) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO steps (run_id, job_key, step_id, seq, name, status, error, finished_at, wall_ms, cpu_ms, peak_memory_bytes, egress_bytes, log_bytes)
             VALUES (?1, ?2, ?3, (SELECT COUNT(*) FROM steps WHERE run_id = ?1 AND job_key = ?2), ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (run_id, job_key, step_id) DO UPDATE SET status = ?5, error = ?6, finished_at = ?7, wall_ms = ?8,
                cpu_ms = ?9, peak_memory_bytes = ?10, egress_bytes = ?11, log_bytes = ?12",
            params![
                run,
                job,
                step,
                name,
                status,
                error,
                now_ms(),
                usage.wall_ms,
                usage.cpu_ms,
                usage.peak_memory_bytes,
                usage.egress_bytes,
                usage.log_bytes
            ],
        )?;
        Ok(())
    }

    /// A run's jobs with their steps, in order.
    pub fn jobs(&self, run: i64) -> anyhow::Result<Vec<Job>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT job_key, job, name, status, reason, started_at, finished_at, duration_ms, outputs FROM jobs WHERE run_id = ?1
             ORDER BY COALESCE(started_at, finished_at), rowid",
        )?;
        let mut jobs: Vec<Job> = stmt
            .query_map([run], |r| {
                Ok(Job {
                    key: r.get(0)?,
                    job: r.get(1)?,
                    name: r.get(2)?,
                    status: r.get(3)?,
                    reason: r.get(4)?,
                    started_at: r.get(5)?,
                    finished_at: r.get(6)?,
                    duration_ms: r.get(7)?,
                    outputs: r
                        .get::<_, Option<String>>(8)?
                        .and_then(|o| serde_json::from_str(&o).ok())
                        .unwrap_or_default(),
                    steps: Vec::new(),
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut stmt = conn.prepare_cached(
            "SELECT job_key, step_id, name, status, error, started_at, finished_at, wall_ms, cpu_ms, peak_memory_bytes, egress_bytes, log_bytes
             FROM steps WHERE run_id = ?1 ORDER BY job_key, seq",
        )?;
        let steps = stmt.query_map([run], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Step {
                    id: r.get(1)?,
                    name: r.get(2)?,
                    status: r.get(3)?,
                    error: r.get(4)?,
                    started_at: r.get(5)?,
                    finished_at: r.get(6)?,
                    usage: Usage {
                        wall_ms: r.get(7)?,
                        cpu_ms: r.get(8)?,
                        peak_memory_bytes: r.get(9)?,
                        egress_bytes: r.get(10)?,
                        log_bytes: r.get(11)?,
                    },
                },
            ))
        })?;
        for s in steps {
            let (key, step) = s?;
            if let Some(j) = jobs.iter_mut().find(|j| j.key == key) {
                j.steps.push(step);
            }
        }
        Ok(jobs)
    }

    /// Startup: runs left `running` by a stopped host are queued again (once, with
    /// `retry`) or failed with the reason.
    pub fn recover(&self, retry: bool) -> anyhow::Result<Recovered> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let running: Vec<(i64, i64)> = {
            let mut stmt = tx.prepare("SELECT id, interruptions FROM runs WHERE status = 'running'")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
        };
        let mut out = Recovered::default();
        let now = now_ms();
        for (id, interruptions) in running {
            if retry && interruptions == 0 {
                tx.execute(
                    "UPDATE runs SET status = 'queued', interruptions = interruptions + 1, attempt = attempt + 1, started_at = NULL,
                        error = 'the host stopped while this run was running; it was queued again' WHERE id = ?1",
                    [id],
                )?;
                tx.execute("DELETE FROM steps WHERE run_id = ?1", [id])?;
                tx.execute("DELETE FROM jobs WHERE run_id = ?1", [id])?;
                out.retried.push(id);
            } else {
                let why = if retry {
                    "the host stopped while this run was running, for the second time; it was not retried again"
                } else {
                    "the host stopped while this run was running (recovery = \"fail\" in the config)"
                };
                tx.execute(
                    "UPDATE runs SET status = 'failure', interruptions = interruptions + 1, error = ?2, finished_at = ?3 WHERE id = ?1",
                    params![id, why, now],
                )?;
                tx.execute(
                    "UPDATE steps SET status = 'failure', error = 'the host stopped', finished_at = ?2 WHERE run_id = ?1 AND status = 'running'",
                    params![id, now],
                )?;
                tx.execute(
                    "UPDATE jobs SET status = 'failure', finished_at = ?2 WHERE run_id = ?1 AND status = 'running'",
                    params![id, now],
                )?;
                out.failed.push(id);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// When a cron schedule last fired (Unix seconds).
    pub fn cron_last_fired(&self, app: &str, cron: &str) -> anyhow::Result<Option<i64>> {
        Ok(self
            .conn()
            .query_row("SELECT last_fired FROM cron_state WHERE app = ?1 AND cron = ?2", params![app, cron], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Records when a cron schedule fired.
    pub fn set_cron_last_fired(&self, app: &str, cron: &str, at: i64) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO cron_state (app, cron, last_fired) VALUES (?1, ?2, ?3)
             ON CONFLICT (app, cron) DO UPDATE SET last_fired = ?3",
            params![app, cron, at],
        )?;
        Ok(())
    }

    /// The highest attempt of run `number` of `app` (for a rerun's attempt).
    pub fn max_attempt(&self, app: &str, number: i64) -> anyhow::Result<i64> {
        Ok(self.conn().query_row(
            "SELECT COALESCE(MAX(attempt), 1) FROM runs WHERE app = ?1 AND number = ?2",
            params![app, number],
            |r| r.get(0),
        )?)
    }

    /// How many runs there are (all statuses).
    pub fn count_runs(&self) -> anyhow::Result<i64> {
        Ok(self.conn().query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))?)
    }
}

fn insert_one(tx: &rusqlite::Transaction<'_>, run: &NewRun) -> anyhow::Result<Inserted> {
    if let Some(d) = &run.dispatch_id {
        let existing: Option<(i64, i64)> = tx
            .query_row("SELECT id, number FROM runs WHERE dispatch_id = ?1", [d], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((id, number)) = existing {
            return Ok(Inserted { id, number, duplicate: true });
        }
    }
    let (number, attempt, parent) = match run.parent {
        Some((parent, number, attempt)) => (number, attempt + 1, Some(parent)),
        None => {
            let n: i64 =
                tx.query_row("SELECT COALESCE(MAX(number), 0) + 1 FROM runs WHERE app = ?1", [&run.app], |r| r.get(0))?;
            (n, 1, None)
        }
    };
    tx.execute(
            "INSERT INTO runs (app, number, attempt, status, trigger, reason, git_ref, sha, dispatch_id, inputs, event, body, job, parent_id, requested_by, created_at, pipeline)
             VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                run.app,
                number,
                attempt,
                run.trigger,
                run.reason,
                run.git_ref,
                run.sha,
                run.dispatch_id,
                serde_json::to_string(&run.inputs)?,
                serde_json::to_string(&run.event)?,
                serde_json::to_string(&run.body)?,
                run.job,
                parent,
                run.requested_by,
                now_ms(),
                run.pipeline,
            ],
        )?;
    let id = tx.last_insert_rowid();
    Ok(Inserted { id, number, duplicate: false })
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(0);
    if version > MIGRATIONS.len() {
        anyhow::bail!(
            "the run store has schema version {version}, newer than this skiff knows ({}); use a newer skiff",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql).with_context(|| format!("migrating the run store to version {}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
