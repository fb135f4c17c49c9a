//! [`SqliteStore`]: the runs of a single host in SQLite, in WAL mode. Accepting a run commits
//! with `synchronous=FULL`, so a run answered 202 survives a crash, even a power cut. The
//! schema is migrated with `PRAGMA user_version` and the [`MIGRATIONS`] list.
//!
//! One connection behind a mutex: every statement here is short, and SQLite serializes
//! writers anyway.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension as _, Row, params};

use super::{
    Decision, Inserted, Job, NewRun, Recovered, Run, RunFilter, RunSearch, RunStatus, RunStore, Step, Usage, now_ms,
};
use crate::queue::{Admission, JobLease, JobOffer, JobQueue, JobState, Lease, RunQueue};

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
    // 5: the lease of a running run: who runs it, and until when unless renewed.
    "ALTER TABLE runs ADD COLUMN lease_owner TEXT;
    ALTER TABLE runs ADD COLUMN lease_expires_at INTEGER;",
    // 6: deployment environments: a job's, the URL it gave, and who approved or rejected it.
    "ALTER TABLE jobs ADD COLUMN environment TEXT;
    ALTER TABLE jobs ADD COLUMN environment_url TEXT;
    CREATE TABLE decisions (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        attempt INTEGER NOT NULL,
        job_key TEXT NOT NULL,
        environment TEXT NOT NULL,
        approved INTEGER NOT NULL,
        decided_by TEXT NOT NULL,
        decided_at INTEGER NOT NULL,
        PRIMARY KEY (run_id, attempt, job_key)
    );",
    // 7: each app's next run number, so accepting a run does not scan the app's runs
    // (`MAX(number)` slowed accepts fourfold at 12,000 runs); numbers never repeat, even after
    // retention prunes runs.
    "CREATE TABLE run_numbers (app TEXT PRIMARY KEY, next INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO run_numbers (app, next) SELECT app, MAX(number) + 1 FROM runs GROUP BY app;
    CREATE INDEX runs_app_number ON runs(app, number);",
    // 8: the labels a host needs to take the run (its jobs' `runs-on`), comma-separated; known
    // once the run's pipeline is read. The leased runs of an app, which a lease counts for its
    // app's limit and concurrency group whatever the number of runs stored.
    "ALTER TABLE runs ADD COLUMN labels TEXT;
    CREATE INDEX runs_leased ON runs(app) WHERE lease_owner IS NOT NULL;",
    // 9: the web console's sessions, under the digest of their cookie.
    "CREATE TABLE console_sessions (id TEXT PRIMARY KEY, viewer TEXT NOT NULL, expires_at INTEGER NOT NULL);
    CREATE INDEX console_sessions_expiry ON console_sessions(expires_at);",
    // 10: job instances offered to a pool of hosts (see `queue::JobQueue`).
    "CREATE TABLE job_queue (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        attempt INTEGER NOT NULL,
        job_key TEXT NOT NULL,
        labels TEXT NOT NULL,
        ticket TEXT NOT NULL,
        state TEXT NOT NULL,
        owner TEXT,
        expires_at INTEGER,
        tries INTEGER NOT NULL DEFAULT 0,
        report TEXT,
        offered_at INTEGER NOT NULL,
        PRIMARY KEY (run_id, attempt, job_key)
    );
    CREATE INDEX job_queue_open ON job_queue(state) WHERE state IN ('queued', 'running');",
];

impl ToSql for RunStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for RunStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str()?.parse().map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

const DECISION_COLS: &str = "run_id, attempt, job_key, environment, approved, decided_by, decided_at";

fn decision_row(r: &Row<'_>) -> rusqlite::Result<Decision> {
    Ok(Decision {
        run: r.get(0)?,
        attempt: r.get(1)?,
        job_key: r.get(2)?,
        environment: r.get(3)?,
        approved: r.get(4)?,
        by: r.get(5)?,
        at: r.get(6)?,
    })
}

/// The run store and run queue of a single host, in one SQLite database.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const RUN_COLS: &str = "id, app, number, attempt, status, trigger, reason, git_ref, sha, dispatch_id, inputs, job, parent_id, requested_by, concurrency_group, interruptions, error, created_at, started_at, finished_at, event, body, prepared, cancel_in_progress, pipeline, labels";

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
        labels: r.get::<_, Option<String>>(25)?.map(|l| l.split(',').map(String::from).collect()).unwrap_or_default(),
    })
}

impl SqliteStore {
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
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL for progress (steps, jobs): in WAL mode it survives a killed process, and a
        // run whose progress is lost to a power cut is recovered anyway. Accepting a run
        // switches to FULL, so it is on disk before the 202 leaves.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(SqliteStore { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The schema version.
    pub fn schema_version(&self) -> anyhow::Result<i64> {
        Ok(self.conn().query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }
}

impl RunStore for SqliteStore {
    fn insert_runs(&self, runs: &[NewRun]) -> anyhow::Result<Vec<anyhow::Result<Inserted>>> {
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

    fn run(&self, id: i64) -> anyhow::Result<Option<Run>> {
        let sql = format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1");
        Ok(self.conn().query_row(&sql, [id], run_row).optional()?)
    }

    fn list_runs(&self, f: &RunFilter) -> anyhow::Result<Vec<Run>> {
        self.search_runs(f, &RunSearch::default())
    }

    fn latest_per_ref(&self, app: &str) -> anyhow::Result<Vec<Run>> {
        // One row per ref, each the ref's highest id: SQLite reads the `runs_app` index once.
        let sql = format!(
            "SELECT {RUN_COLS} FROM runs WHERE id IN (SELECT MAX(id) FROM runs WHERE app = ?1 GROUP BY git_ref) ORDER BY id DESC"
        );
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![app], run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn search_runs(&self, f: &RunFilter, more: &RunSearch) -> anyhow::Result<Vec<Run>> {
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
            args.push(s.as_str().to_string().into());
            sql.push_str(&format!(" AND status = ?{}", args.len()));
        }
        if let Some(b) = f.before {
            args.push(b.into());
            sql.push_str(&format!(" AND id < ?{}", args.len()));
        }
        if let Some(g) = &more.git_ref {
            args.push(g.clone().into());
            sql.push_str(&format!(" AND git_ref = ?{}", args.len()));
        }
        if let Some(t) = &more.trigger {
            args.push(t.clone().into());
            sql.push_str(&format!(" AND trigger = ?{}", args.len()));
        }
        args.push(f.limit.unwrap_or(50).clamp(1, 500).into());
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn set_prepared(&self, id: i64, group: Option<&str>, cancel_in_progress: bool) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE runs SET prepared = 1, concurrency_group = ?2, cancel_in_progress = ?3 WHERE id = ?1",
            params![id, group, cancel_in_progress],
        )?;
        Ok(())
    }

    fn set_pipeline(&self, id: i64, pipeline: &str) -> anyhow::Result<()> {
        self.conn().execute("UPDATE runs SET pipeline = ?2 WHERE id = ?1", params![id, pipeline])?;
        Ok(())
    }

    fn set_labels(&self, id: i64, labels: &[String]) -> anyhow::Result<()> {
        let labels = (!labels.is_empty()).then(|| labels.join(","));
        self.conn().execute("UPDATE runs SET labels = ?2 WHERE id = ?1", params![id, labels])?;
        Ok(())
    }

    fn set_inputs(&self, id: i64, inputs: &BTreeMap<String, String>) -> anyhow::Result<()> {
        let json = serde_json::to_string(inputs)?;
        self.conn().execute("UPDATE runs SET inputs = ?2 WHERE id = ?1", params![id, json])?;
        Ok(())
    }

    fn set_sha(&self, id: i64, sha: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE runs SET sha = ?2, event = json_set(event, '$.sha', ?2) WHERE id = ?1",
            params![id, sha],
        )?;
        Ok(())
    }

    fn queued_in_group_before(&self, group: &str, id: i64) -> anyhow::Result<Vec<i64>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT id FROM runs WHERE status = 'queued' AND concurrency_group = ?1 AND id < ?2")?;
        let rows = stmt.query_map(params![group, id], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn finish_run(&self, id: i64, status: RunStatus, error: Option<&str>) -> anyhow::Result<bool> {
        // NORMAL: a killed process keeps it (WAL); after a power cut the run is recovered.
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let ended = end_run(&tx, id, status, error, None)?;
        tx.commit()?;
        Ok(ended)
    }

    fn job_started(&self, run: i64, key: &str, job: &str, name: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO jobs (run_id, job_key, job, name, status, started_at) VALUES (?1, ?2, ?3, ?4, 'running', ?5)",
            params![run, key, job, name, now_ms()],
        )?;
        Ok(())
    }

    fn job_finished(
        &self,
        run: i64,
        key: &str,
        job: &str,
        name: &str,
        status: RunStatus,
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

    fn job_queued(&self, run: i64, key: &str, job: &str, name: &str, reason: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO jobs (run_id, job_key, job, name, status, reason) VALUES (?1, ?2, ?3, ?4, 'queued', ?5)
             ON CONFLICT (run_id, job_key) DO UPDATE SET status = 'queued', reason = ?5
             WHERE jobs.status IN ('queued', 'waiting')",
            params![run, key, job, name, reason],
        )?;
        Ok(())
    }

    fn job_waiting(
        &self,
        run: i64,
        key: &str,
        job: &str,
        name: &str,
        environment: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO jobs (run_id, job_key, job, name, status, reason, environment) VALUES (?1, ?2, ?3, ?4, 'waiting', ?5, ?6)
             ON CONFLICT (run_id, job_key) DO UPDATE SET status = 'waiting', reason = ?5, environment = ?6",
            params![run, key, job, name, reason, environment],
        )?;
        Ok(())
    }

    fn job_environment(&self, run: i64, key: &str, environment: &str, url: Option<&str>) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE jobs SET environment = ?3, environment_url = COALESCE(?4, environment_url) WHERE run_id = ?1 AND job_key = ?2",
            params![run, key, environment, url],
        )?;
        Ok(())
    }

    fn decide(&self, d: &Decision) -> anyhow::Result<bool> {
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO decisions (run_id, attempt, job_key, environment, approved, decided_by, decided_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![d.run, d.attempt, d.job_key, d.environment, d.approved, d.by, d.at],
        )?;
        Ok(n == 1)
    }

    fn decision(&self, run: i64, attempt: i64, key: &str) -> anyhow::Result<Option<Decision>> {
        let sql = format!("SELECT {DECISION_COLS} FROM decisions WHERE run_id = ?1 AND attempt = ?2 AND job_key = ?3");
        Ok(self.conn().query_row(&sql, params![run, attempt, key], decision_row).optional()?)
    }

    fn decisions(&self, run: i64) -> anyhow::Result<Vec<Decision>> {
        let conn = self.conn();
        let sql = format!("SELECT {DECISION_COLS} FROM decisions WHERE run_id = ?1 ORDER BY decided_at, rowid");
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([run], decision_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn step_started(&self, run: i64, job: &str, step: &str, name: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO steps (run_id, job_key, step_id, seq, name, status, started_at)
             VALUES (?1, ?2, ?3, (SELECT COUNT(*) FROM steps WHERE run_id = ?1 AND job_key = ?2), ?4, 'running', ?5)",
            params![run, job, step, name, now_ms()],
        )?;
        Ok(())
    }

    fn step_finished(
        &self,
        run: i64,
        job: &str,
        step: &str,
        name: &str,
        status: RunStatus,
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

    fn jobs(&self, run: i64) -> anyhow::Result<Vec<Job>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT job_key, job, name, status, reason, started_at, finished_at, duration_ms, outputs, environment, environment_url
             FROM jobs WHERE run_id = ?1
             ORDER BY COALESCE(started_at, finished_at) IS NULL, COALESCE(started_at, finished_at), rowid",
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
                    environment: r.get(9)?,
                    environment_url: r.get(10)?,
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

    fn recover(&self, retry: bool) -> anyhow::Result<Recovered> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let running: Vec<(i64, i64)> = {
            let mut stmt = tx.prepare("SELECT id, interruptions FROM runs WHERE status = 'running'")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
        };
        let mut out = Recovered::default();
        let now = now_ms();
        for (id, interruptions) in running {
            // Only waiting (every job it started is over, or waits for an approval): nothing was
            // lost, so it waits again, as the same attempt with its finished jobs.
            let parked: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE run_id = ?1 AND status = 'waiting')
                    AND NOT EXISTS (SELECT 1 FROM jobs WHERE run_id = ?1 AND status = 'running')",
                [id],
                |r| r.get(0),
            )?;
            if parked {
                tx.execute(
                    "UPDATE runs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL WHERE id = ?1",
                    [id],
                )?;
                out.resumed.push(id);
                continue;
            }
            if retry && interruptions == 0 {
                tx.execute(
                    "UPDATE runs SET status = 'queued', interruptions = interruptions + 1, attempt = attempt + 1, started_at = NULL,
                        error = 'the host stopped while this run was running; it was queued again',
                        lease_owner = NULL, lease_expires_at = NULL WHERE id = ?1",
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
                    "UPDATE runs SET status = 'failure', interruptions = interruptions + 1, error = ?2, finished_at = ?3,
                        lease_owner = NULL, lease_expires_at = NULL WHERE id = ?1",
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

    fn cron_last_fired(&self, app: &str, cron: &str) -> anyhow::Result<Option<i64>> {
        Ok(self
            .conn()
            .query_row("SELECT last_fired FROM cron_state WHERE app = ?1 AND cron = ?2", params![app, cron], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn set_cron_last_fired(&self, app: &str, cron: &str, at: i64) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO cron_state (app, cron, last_fired) VALUES (?1, ?2, ?3)
             ON CONFLICT (app, cron) DO UPDATE SET last_fired = ?3",
            params![app, cron, at],
        )?;
        Ok(())
    }

    fn session_save(&self, id: &str, viewer: &str, expires_ms: i64, now_ms: i64, max: usize) -> anyhow::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM console_sessions WHERE expires_at <= ?1", [now_ms])?;
        let keep = i64::try_from(max.saturating_sub(1)).unwrap_or(i64::MAX);
        tx.execute(
            "DELETE FROM console_sessions WHERE id IN
                 (SELECT id FROM console_sessions ORDER BY expires_at DESC LIMIT -1 OFFSET ?1)",
            [keep],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO console_sessions (id, viewer, expires_at) VALUES (?1, ?2, ?3)",
            params![id, viewer, expires_ms],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn session(&self, id: &str, now_ms: i64) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT viewer FROM console_sessions WHERE id = ?1 AND expires_at > ?2",
                params![id, now_ms],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn session_end(&self, id: &str) -> anyhow::Result<()> {
        self.conn().execute("DELETE FROM console_sessions WHERE id = ?1", [id])?;
        Ok(())
    }

    fn max_attempt(&self, app: &str, number: i64) -> anyhow::Result<i64> {
        Ok(self.conn().query_row(
            "SELECT COALESCE(MAX(attempt), 1) FROM runs WHERE app = ?1 AND number = ?2",
            params![app, number],
            |r| r.get(0),
        )?)
    }

    fn count_runs(&self) -> anyhow::Result<i64> {
        Ok(self.conn().query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))?)
    }

    fn prune_runs(&self, app: &str, before_ms: i64, limit: usize) -> anyhow::Result<Vec<i64>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let ids: Vec<i64> = {
            let mut q = tx.prepare(
                "SELECT id FROM runs WHERE app = ?1 AND finished_at < ?2
                 AND status IN ('success', 'failure', 'cancelled', 'skipped') ORDER BY id LIMIT ?3",
            )?;
            q.query_map(params![app, before_ms, limit as i64], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        for id in &ids {
            // Jobs, steps and decisions go with it (ON DELETE CASCADE).
            tx.execute("DELETE FROM runs WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(ids)
    }
}

impl RunQueue for SqliteStore {
    fn available(&self, limit: usize) -> anyhow::Result<Vec<Run>> {
        // Two scans, each along the `(status, id)` index: the queued runs are the many, and
        // an `OR` would sort them all on every pass.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = self.conn();
        let queued = format!("SELECT {RUN_COLS} FROM runs WHERE status = 'queued' ORDER BY id LIMIT ?1");
        let mut runs: Vec<Run> =
            conn.prepare_cached(&queued)?.query_map([limit], run_row)?.collect::<Result<_, _>>()?;
        let expired = format!(
            "SELECT {RUN_COLS} FROM runs WHERE status = 'running' AND lease_expires_at <= ?1 ORDER BY id LIMIT ?2"
        );
        let mut stmt = conn.prepare_cached(&expired)?;
        for run in stmt.query_map(params![now_ms(), limit], run_row)? {
            runs.push(run?);
        }
        runs.sort_by_key(|r| r.id);
        runs.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(runs)
    }

    fn lease_within(
        &self,
        id: i64,
        owner: &str,
        ttl: Duration,
        admission: &Admission,
    ) -> anyhow::Result<Option<Lease>> {
        let mut conn = self.conn();
        // IMMEDIATE: the write lock from the start, so two processes on one file cannot both
        // see the run available, nor admit two runs past a limit.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = now_ms();
        if !admission.is_empty() {
            // Runs held by a live lease: running, or ended by someone else and not yet stopped.
            let running =
                "SELECT COUNT(*) FROM runs r WHERE r.app = (SELECT app FROM runs WHERE id = ?1) AND r.id <> ?1
                AND r.lease_owner IS NOT NULL AND r.lease_expires_at > ?2";
            if let Some(group) = &admission.group {
                let n: i64 =
                    tx.query_row(&format!("{running} AND r.concurrency_group = ?3"), params![id, now, group], |r| {
                        r.get(0)
                    })?;
                if n > 0 {
                    return Ok(None);
                }
            }
            if let Some(max) = admission.app_max {
                let sql = format!(
                    "{running} AND (EXISTS (SELECT 1 FROM jobs j WHERE j.run_id = r.id AND j.status = 'running')
                        OR NOT EXISTS (SELECT 1 FROM jobs j WHERE j.run_id = r.id AND j.status = 'waiting'))"
                );
                let n: i64 = tx.query_row(&sql, params![id, now], |r| r.get(0))?;
                if usize::try_from(n).unwrap_or(usize::MAX) >= max {
                    return Ok(None);
                }
            }
        }
        let expires_at = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let queued = tx.execute(
            "UPDATE runs SET status = 'running', started_at = ?2, error = NULL, lease_owner = ?3, lease_expires_at = ?4,
                prepared = 1
             WHERE id = ?1 AND status = 'queued'",
            params![id, now, owner, expires_at],
        )?;
        let taken_over = queued == 0;
        if taken_over {
            // Its owner stopped renewing the lease: the run starts over here, as its next attempt.
            let n = tx.execute(
                "UPDATE runs SET attempt = attempt + 1, interruptions = interruptions + 1, started_at = ?2, error = NULL,
                    lease_owner = ?3, lease_expires_at = ?4
                 WHERE id = ?1 AND status = 'running' AND lease_expires_at <= ?2",
                params![id, now, owner, expires_at],
            )?;
            if n == 0 {
                return Ok(None);
            }
            tx.execute("DELETE FROM steps WHERE run_id = ?1", [id])?;
            tx.execute("DELETE FROM jobs WHERE run_id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(Some(Lease { run: id, owner: owner.to_string(), expires_at, taken_over }))
    }

    fn extend(&self, id: i64, owner: &str, ttl: Duration) -> anyhow::Result<bool> {
        let expires_at = now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let n = self.conn().execute(
            "UPDATE runs SET lease_expires_at = ?3 WHERE id = ?1 AND lease_owner = ?2 AND status = 'running'",
            params![id, owner, expires_at],
        )?;
        Ok(n == 1)
    }

    fn release(&self, id: i64, owner: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ?1 AND lease_owner = ?2 AND status <> 'running'",
            params![id, owner],
        )?;
        Ok(())
    }

    fn complete(&self, id: i64, owner: &str, status: RunStatus, error: Option<&str>) -> anyhow::Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let ended = end_run(&tx, id, status, error, Some(owner))?;
        tx.commit()?;
        Ok(ended)
    }
}

/// Ends run `id` with `status` unless it is over (with `owner`: only while `owner` holds its
/// lease) and releases its lease; its open jobs and steps end with it, as `cancelled` when the
/// run succeeded. False when the run was not ended here; without `owner`, its open jobs and
/// steps are closed anyway.
fn end_run(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    status: RunStatus,
    error: Option<&str>,
    owner: Option<&str>,
) -> rusqlite::Result<bool> {
    let now = now_ms();
    let n = tx.execute(
        // Ended by someone else than the host running it, a run keeps that host's lease until
        // the host stops it and releases it ([`RunQueue::release`]), or the lease lapses.
        "UPDATE runs SET status = ?2, error = ?3, finished_at = ?4,
            lease_owner = CASE WHEN ?5 IS NULL AND status = 'running' THEN lease_owner END,
            lease_expires_at = CASE WHEN ?5 IS NULL AND status = 'running' THEN lease_expires_at END
         WHERE id = ?1 AND status IN ('queued', 'running') AND (?5 IS NULL OR (status = 'running' AND lease_owner = ?5))",
        params![id, status, error, now, owner],
    )?;
    if n == 0 && owner.is_some() {
        return Ok(false);
    }
    let open = if status == RunStatus::Success { RunStatus::Cancelled } else { status };
    tx.execute(
        "UPDATE steps SET status = ?2, finished_at = ?3, wall_ms = ?3 - started_at WHERE run_id = ?1 AND status = 'running'",
        params![id, open, now],
    )?;
    tx.execute(
        "UPDATE jobs SET status = ?2, finished_at = ?3, duration_ms = ?3 - started_at WHERE run_id = ?1 AND status IN ('running', 'waiting', 'queued')",
        params![id, open, now],
    )?;
    Ok(n == 1)
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
            let n: i64 = tx.query_row(
                "INSERT INTO run_numbers (app, next) VALUES (?1, 2)
                 ON CONFLICT (app) DO UPDATE SET next = next + 1 RETURNING next - 1",
                [&run.app],
                |r| r.get(0),
            )?;
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

impl JobQueue for SqliteStore {
    fn offer_job(&self, o: &JobOffer) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO job_queue (run_id, attempt, job_key, labels, ticket, state, offered_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6)
             ON CONFLICT (run_id, attempt, job_key) DO UPDATE SET labels = excluded.labels, ticket = excluded.ticket,
                state = 'queued', owner = NULL, expires_at = NULL, tries = 0, report = NULL, offered_at = excluded.offered_at
             WHERE job_queue.state <> 'running'",
            params![o.run, o.attempt, o.key, o.labels.join(","), o.ticket, now_ms()],
        )?;
        Ok(())
    }

    fn lease_job(
        &self,
        owner: &str,
        labels: &[String],
        ttl: Duration,
        only_runs: Option<&[i64]>,
    ) -> anyhow::Result<Option<JobLease>> {
        let mut conn = self.conn();
        // IMMEDIATE: two processes on one file never take the same job.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = now_ms();
        // As PostgreSQL's: jobs of runs that ended or started over are called off; jobs whose
        // host stopped renewing them are offered again, or abandoned after two tries.
        tx.execute(
            "UPDATE job_queue SET state = 'cancelled' WHERE state IN ('queued', 'running')
                AND EXISTS (SELECT 1 FROM runs r WHERE r.id = job_queue.run_id
                    AND (r.status <> 'running' OR r.attempt <> job_queue.attempt))",
            [],
        )?;
        tx.execute(
            "UPDATE job_queue SET state = CASE WHEN tries >= 2 THEN 'abandoned' ELSE 'queued' END
             WHERE state = 'running' AND expires_at <= ?1",
            [now],
        )?;
        // One host owns a SQLite file: every open job is read, its labels checked here.
        type Candidate = (i64, i64, String, String, String, i64);
        let rows: Vec<Candidate> = tx
            .prepare_cached(
                "SELECT q.run_id, q.attempt, q.job_key, q.labels, q.ticket, q.tries
                 FROM job_queue q JOIN runs r ON r.id = q.run_id
                 WHERE q.state = 'queued' AND r.status = 'running' AND r.attempt = q.attempt
                    AND r.lease_expires_at > ?1
                    AND (q.tries = 0 OR r.lease_expires_at - ?2 > q.expires_at)
                    AND NOT EXISTS (SELECT 1 FROM job_queue o WHERE o.run_id = q.run_id AND o.job_key = q.job_key
                        AND o.attempt < q.attempt AND o.state IN ('running', 'cancelled') AND o.expires_at > ?1)
                 ORDER BY q.rowid",
            )?
            .query_map(params![now, i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?
            .collect::<Result<_, _>>()?;
        let pick = rows.into_iter().find(|(run, _, _, needs, _, _)| {
            super::covers(labels, needs) && only_runs.is_none_or(|only| only.contains(run))
        });
        let found = match pick {
            None => None,
            Some((run, attempt, key, _, ticket, tries)) => {
                let expires_at = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
                tx.execute(
                    "UPDATE job_queue SET state = 'running', owner = ?4, expires_at = ?5, tries = ?6
                     WHERE run_id = ?1 AND attempt = ?2 AND job_key = ?3",
                    params![run, attempt, key, owner, expires_at, tries + 1],
                )?;
                Some(JobLease { run, attempt, key, ticket, tries: tries + 1 })
            }
        };
        tx.commit()?;
        Ok(found)
    }

    fn extend_job(&self, l: &JobLease, owner: &str, ttl: Duration) -> anyhow::Result<bool> {
        let expires_at = now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let n = self.conn().execute(
            "UPDATE job_queue SET expires_at = ?6
             WHERE run_id = ?1 AND attempt = ?2 AND job_key = ?3 AND tries = ?4 AND owner = ?5 AND state = 'running'
                AND EXISTS (SELECT 1 FROM runs r WHERE r.id = job_queue.run_id AND r.attempt = job_queue.attempt
                    AND r.status = 'running')",
            params![l.run, l.attempt, l.key, l.tries, owner, expires_at],
        )?;
        Ok(n == 1)
    }

    fn complete_job(&self, l: &JobLease, owner: &str, report: &str) -> anyhow::Result<bool> {
        let n = self.conn().execute(
            "UPDATE job_queue SET state = 'done', report = ?6, expires_at = NULL
             WHERE run_id = ?1 AND attempt = ?2 AND job_key = ?3 AND tries = ?4 AND owner = ?5 AND state = 'running'",
            params![l.run, l.attempt, l.key, l.tries, owner, report],
        )?;
        Ok(n == 1)
    }

    fn job_state(&self, run: i64, attempt: i64, key: &str) -> anyhow::Result<Option<JobState>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT state, owner, report, tries FROM job_queue WHERE run_id = ?1 AND attempt = ?2 AND job_key = ?3",
                params![run, attempt, key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        row.map(|(state, owner, report, tries)| super::job_state(state, owner, report, tries)).transpose()
    }

    fn cancel_jobs(&self, run: i64, attempt: i64, key: Option<&str>) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE job_queue SET state = 'cancelled'
             WHERE run_id = ?1 AND attempt = ?2 AND (?3 IS NULL OR job_key = ?3) AND state IN ('queued', 'running')",
            params![run, attempt, key],
        )?;
        Ok(())
    }

    fn forget_jobs(&self, run: i64, attempt: i64) -> anyhow::Result<()> {
        self.conn().execute("DELETE FROM job_queue WHERE run_id = ?1 AND attempt = ?2", params![run, attempt])?;
        Ok(())
    }

    fn clock_ms(&self) -> anyhow::Result<i64> {
        Ok(now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_from_before_leases_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skiff.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            for (i, sql) in MIGRATIONS[..4].iter().enumerate() {
                let tx = conn.transaction().unwrap();
                tx.execute_batch(sql).unwrap();
                tx.pragma_update(None, "user_version", (i + 1) as i64).unwrap();
                tx.commit().unwrap();
            }
            conn.execute(
                "INSERT INTO runs (app, number, status, trigger, created_at, started_at) VALUES ('web', 1, 'running', 'push', 1, 2)",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        // Running with no lease: not available until recovery queues it again.
        assert!(store.available(10).unwrap().is_empty());
        assert_eq!(store.recover(true).unwrap().retried, vec![1]);
        assert_eq!(store.available(10).unwrap()[0].id, 1);
    }

    #[test]
    fn run_numbers_count_per_app_from_where_a_migrated_store_left_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skiff.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            for (i, sql) in MIGRATIONS[..6].iter().enumerate() {
                let tx = conn.transaction().unwrap();
                tx.execute_batch(sql).unwrap();
                tx.pragma_update(None, "user_version", (i + 1) as i64).unwrap();
                tx.commit().unwrap();
            }
            for (app, number) in [("web", 1), ("web", 41), ("api", 7)] {
                conn.execute(
                    "INSERT INTO runs (app, number, status, trigger, created_at) VALUES (?1, ?2, 'success', 'push', 1)",
                    params![app, number],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path).unwrap();
        let number = |app: &str| {
            store.insert_run(&NewRun { app: app.into(), trigger: "push".into(), ..NewRun::default() }).unwrap().number
        };
        assert_eq!((number("web"), number("web"), number("api"), number("new")), (42, 43, 8, 1));
    }
}
