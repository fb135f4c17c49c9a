//! `on: schedule: - cron: …`: the host fires schedules itself. Five fields (a sixth, leading
//! seconds field is accepted too), in UTC.
//!
//! Each schedule remembers when it last fired, in the store; a run's dispatch id is
//! `cron:{app}:{expr}:{unix seconds}`, so a schedule fires once per instant even across
//! restarts. A host that was down fires a missed schedule once when it comes back, not once per
//! missed instant.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use super::Shared;
use crate::request::RunRequest;

/// Parses a schedule.
pub fn parse(expr: &str) -> anyhow::Result<Cron> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .with_context(|| format!("`{expr}` is not a cron expression (five fields: minute hour day month weekday)"))
}

/// Enqueues the runs of every schedule due at `now`; returns their ids.
pub fn fire_due(shared: &Shared, now: DateTime<Utc>) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    for (name, app) in &shared.config.apps {
        for s in &app.edge.on.schedule {
            let cron = parse(&s.cron)?;
            let Some(last) = shared.store.cron_last_fired(name, &s.cron)? else {
                // First sight of this schedule: start counting from now.
                shared.store.set_cron_last_fired(name, &s.cron, now.timestamp())?;
                continue;
            };
            let Ok(prev) = cron.find_previous_occurrence(&now, true) else { continue };
            if prev.timestamp() <= last {
                continue;
            }
            let at = prev.timestamp();
            let repository = app.repo.as_ref().and_then(|r| r.repository.clone());
            let run = RunRequest::schedule(name, &s.cron, &prev.to_rfc3339(), at, repository).into_new_run();
            let inserted = shared.store.insert_run(&run)?;
            shared.store.set_cron_last_fired(name, &s.cron, at)?;
            if !inserted.duplicate {
                ids.push(inserted.id);
            }
        }
    }
    if !ids.is_empty() {
        shared.scheduler.wake();
    }
    Ok(ids)
}

/// When the next schedule is due after `now`.
pub fn next_due(shared: &Shared, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    shared
        .config
        .apps
        .values()
        .flat_map(|a| a.edge.on.schedule.iter())
        .filter_map(|s| parse(&s.cron).ok()?.find_next_occurrence(&now, false).ok())
        .min()
}

/// Fires schedules until the process ends.
pub async fn run(shared: Arc<Shared>) {
    if shared.config.apps.values().all(|a| a.edge.on.schedule.is_empty()) {
        return;
    }
    loop {
        let now = Utc::now();
        if let Err(e) = fire_due(&shared, now) {
            tracing::error!("cron: {e:#}");
        }
        let next = next_due(&shared, Utc::now()).unwrap_or_else(|| now + chrono::Duration::seconds(60));
        let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO).min(Duration::from_secs(60));
        // Wake a little after the instant so `find_previous_occurrence` sees it.
        tokio::time::sleep(wait + Duration::from_millis(5)).await;
    }
}
