//! Retention. A run's artifacts are removed once the run is older than its app's
//! `artifact-retention-days` (the host's `artifact-retention-days` for a run whose app is no
//! longer configured, or that the run store does not know, aged by its newest artifact). With
//! `run-retention-days`, finished runs older than that go whole: their record, jobs, steps,
//! decisions, logs and artifacts. `skiff serve` sweeps once at start and then every hour.

use std::sync::Arc;
use std::time::Duration;

use skiff_runtime::artifact_store::ArtifactStore;

use crate::Shared;
use crate::config::ServeConfig;
use crate::store::{RunStore, now_ms};

/// How often `skiff serve` sweeps.
pub const EVERY: Duration = Duration::from_secs(3600);

const DAY_MS: i64 = 24 * 3600 * 1000;

/// Removes the artifacts of every run older than its retention at `now_ms`; returns the runs
/// whose artifacts went.
pub fn sweep(
    store: &dyn RunStore,
    artifacts: &dyn ArtifactStore,
    config: &ServeConfig,
    now_ms: i64,
) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    for run in artifacts.runs()? {
        let known = match run.parse::<i64>() {
            Ok(id) => store.run(id)?,
            Err(_) => None,
        };
        let (days, born_ms) = match known {
            Some(r) => {
                let days =
                    config.apps.get(&r.app).map_or(config.artifact_retention_days, |a| a.artifact_retention_days);
                (days, r.created_at)
            }
            None => {
                let newest = artifacts.list(&run)?.iter().map(|a| a.created).max().unwrap_or(0);
                (config.artifact_retention_days, newest.saturating_mul(1000))
            }
        };
        if now_ms.saturating_sub(born_ms) > i64::from(days) * DAY_MS {
            artifacts.remove_run(&run)?;
            removed.push(run);
        }
    }
    Ok(removed)
}

/// Runs pruned per store call: a large backlog goes in short transactions.
const PRUNE_BATCH: usize = 500;

/// Removes every finished run older than its app's `run-retention-days` at `now_ms`, with its
/// logs and artifacts; returns the runs removed.
pub fn prune(
    store: &dyn RunStore,
    logs: &dyn crate::logs::LogStore,
    artifacts: &dyn ArtifactStore,
    config: &ServeConfig,
    now_ms: i64,
) -> anyhow::Result<Vec<i64>> {
    let mut removed = Vec::new();
    for app in config.apps.values() {
        let Some(days) = app.run_retention_days else { continue };
        let before = now_ms.saturating_sub(i64::from(days) * DAY_MS);
        loop {
            let ids = store.prune_runs(app.name(), before, PRUNE_BATCH)?;
            for id in &ids {
                logs.remove(*id)?;
                artifacts.remove_run(&id.to_string())?;
            }
            let done = ids.len() < PRUNE_BATCH;
            removed.extend(ids);
            if done {
                break;
            }
        }
    }
    Ok(removed)
}

/// Sweeps until the process ends.
pub async fn run(shared: Arc<Shared>) {
    loop {
        let s = shared.clone();
        let pruned = move || prune(s.store.as_ref(), s.logs.as_ref(), s.artifacts.as_ref(), &s.config, now_ms());
        sweep_once("run retention", "removed {} run(s)", pruned).await;
        let s = shared.clone();
        let swept = move || sweep(s.store.as_ref(), s.artifacts.as_ref(), &s.config, now_ms());
        sweep_once("artifact retention", "removed the artifacts of {} run(s)", swept).await;
        tokio::time::sleep(EVERY).await;
    }
}

/// One sweep off the async workers; what it removed (`done`, with `{}` for the number of
/// runs) or why it failed goes to the server's log under `what`.
async fn sweep_once<T: Send + 'static>(
    what: &str,
    done: &str,
    f: impl FnOnce() -> anyhow::Result<Vec<T>> + Send + 'static,
) {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(runs)) if !runs.is_empty() => tracing::info!("{what}: {}", done.replace("{}", &runs.len().to_string())),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!("{what}: {e:#}"),
        Err(e) => tracing::error!("{what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewRun, SqliteStore};
    use skiff_runtime::artifact_store::LocalArtifacts;

    #[test]
    fn artifacts_of_runs_older_than_their_app_s_retention_go_and_the_rest_stay() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServeConfig::from_toml(
            r#"
artifact-retention-days = 30

[[apps]]
name = "web"
pipeline-yaml = "steps: [{uses: diag}]"
artifact-retention-days = 7

[[apps]]
name = "docs"
pipeline-yaml = "steps: [{uses: diag}]"
"#,
            dir.path(),
            None,
        )
        .unwrap();
        let store = SqliteStore::open(&dir.path().join("skiff.db")).unwrap();
        let artifacts = LocalArtifacts::new(dir.path().join("artifacts"));
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let mut runs = Vec::new();
        for app in ["web", "docs", "gone"] {
            let id = store.insert_run(&NewRun { app: app.into(), ..NewRun::default() }).unwrap().id;
            artifacts.put(&id.to_string(), "build", "upload", "a.txt", &file).unwrap();
            runs.push(id.to_string());
        }
        // Not a run of this store (a `skiff run` folder copied in): aged by its artifacts.
        artifacts.put("local-1-2", "build", "upload", "a.txt", &file).unwrap();
        let created = store.run(runs[0].parse().unwrap()).unwrap().unwrap().created_at;
        let at = |days: i64| created + days * DAY_MS + 1000;

        assert!(sweep(&store, &artifacts, &config, at(6)).unwrap().is_empty());
        assert_eq!(sweep(&store, &artifacts, &config, at(8)).unwrap(), [runs[0].clone()]);
        assert!(artifacts.list(&runs[0]).unwrap().is_empty());
        assert_eq!(artifacts.list(&runs[1]).unwrap().len(), 1);
        // The host's default for the app that is gone and the run nobody knows.
        let mut left = sweep(&store, &artifacts, &config, at(31)).unwrap();
        left.sort();
        let mut want = vec![runs[1].clone(), runs[2].clone(), "local-1-2".to_string()];
        want.sort();
        assert_eq!(left, want);
        assert!(artifacts.runs().unwrap().is_empty());
    }

    #[test]
    fn finished_runs_older_than_their_app_s_run_retention_go_whole() {
        use crate::logs::{FsLogStore, LogRecord, LogStore as _};
        let dir = tempfile::tempdir().unwrap();
        let config = ServeConfig::from_toml(
            r#"
run-retention-days = 30

[[apps]]
name = "web"
pipeline-yaml = "steps: [{uses: diag}]"
run-retention-days = 3

[[apps]]
name = "docs"
pipeline-yaml = "steps: [{uses: diag}]"
"#,
            dir.path(),
            None,
        )
        .unwrap();
        let store = SqliteStore::open(&dir.path().join("skiff.db")).unwrap();
        let logs = FsLogStore::new(dir.path().join("logs"));
        let artifacts = LocalArtifacts::new(dir.path().join("artifacts"));
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let mut ids = Vec::new();
        for app in ["web", "docs"] {
            let id = store.insert_run(&NewRun { app: app.into(), ..NewRun::default() }).unwrap().id;
            let line = LogRecord {
                seq: 1,
                ts: 0,
                job: "main".into(),
                step: "s".into(),
                level: "info".into(),
                text: "hello".into(),
            };
            logs.append(id, &line).unwrap();
            logs.close(id);
            artifacts.put(&id.to_string(), "main", "s", "a.txt", &file).unwrap();
            store.finish_run(id, crate::store::RunStatus::Success, None).unwrap();
            ids.push(id);
        }
        let ended = store.run(ids[0]).unwrap().unwrap().finished_at.unwrap();
        let at = |days: i64| ended + days * DAY_MS + 1000;
        assert!(prune(&store, &logs, &artifacts, &config, at(2)).unwrap().is_empty());
        assert_eq!(prune(&store, &logs, &artifacts, &config, at(4)).unwrap(), [ids[0]]);
        assert!(store.run(ids[0]).unwrap().is_none());
        assert!(logs.read(ids[0], 0).unwrap().is_empty() && artifacts.list(&ids[0].to_string()).unwrap().is_empty());
        assert_eq!(logs.read(ids[1], 0).unwrap().len(), 1);
        // `docs` follows the host's 30 days.
        assert_eq!(prune(&store, &logs, &artifacts, &config, at(31)).unwrap(), [ids[1]]);
    }

    #[test]
    fn retention_and_cache_settings_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"
[cache]
max-size-mb = 5

[[apps]]
name = "web"
pipeline-yaml = "steps: [{uses: diag}]"
cache-max-size-mb = 2
"#;
        let c = ServeConfig::from_toml(text, dir.path(), None).unwrap();
        assert_eq!((c.cache.of("web"), c.cache.of("other")), (2 << 20, 5 << 20));
        assert_eq!((c.artifact_retention_days, c.apps["web"].artifact_retention_days), (90, 90));
        let e = ServeConfig::from_toml("artifact-retention-days = 0", dir.path(), None).unwrap_err();
        assert!(format!("{e:#}").contains("at least 1"), "{e:#}");
        let e = ServeConfig::from_toml("[cache]\nmax-size-mb = 0", dir.path(), None).unwrap_err();
        assert!(format!("{e:#}").contains("at least 1"), "{e:#}");
    }
}
