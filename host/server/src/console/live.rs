//! What the console's script follows, as Server-Sent Events: a run's log lines and step
//! changes (`/runs/{id}/events`), and changes to the runs a list shows (`/runs/watch`).
//!
//! Log lines go out already cut into styled [`Segment`](super::Segment)s; the script makes
//! text nodes of them, never HTML.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::auth::Viewer;
use super::{Result, visible_run};
use crate::Shared;
use crate::config::AppScope;
use crate::logs::{LiveEvent, LogRecord};
use crate::store::RunFilter;

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    /// Only this job's lines…
    job: Option<String>,
    /// …and this step's.
    step: Option<String>,
    /// Lines after this `seq`.
    after: Option<u64>,
    /// `1`: no lines, only step changes and the end (the run page).
    quiet: Option<u8>,
}

fn sse(rx: mpsc::Receiver<Event>) -> Response {
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// A log record as the `line` event: `{"seq", "lines": [[segment…]…]}`.
fn line_event(r: &LogRecord) -> Event {
    let lines: Vec<Vec<super::Segment>> = r.text.lines().map(super::segments).collect();
    let data = serde_json::json!({ "seq": r.seq, "lines": lines });
    Event::default().event("line").id(r.seq.to_string()).data(data.to_string())
}

pub(super) async fn run_events(
    State(s): State<Arc<Shared>>,
    viewer: Viewer,
    axum::extract::Path(id): axum::extract::Path<i64>,
    Query(q): Query<EventsQuery>,
) -> Result<Response> {
    visible_run(&s, &viewer.scope, id)?;
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(follow(s, id, q, tx));
    Ok(sse(rx))
}

/// Stored lines first, then live ones, without gaps or repeats; the end once the run is over.
async fn follow(s: Arc<Shared>, id: i64, q: EventsQuery, tx: mpsc::Sender<Event>) {
    let wanted = |r: &LogRecord| {
        (q.job.as_ref().is_none_or(|j| &r.job == j) && q.step.as_ref().is_none_or(|st| &r.step == st))
            .then(|| line_event(r))
    };
    let step = |e: &LiveEvent| match e {
        LiveEvent::Step { job, step, status, .. } => Event::default()
            .event("step")
            .data(serde_json::json!({ "job": job, "step": step, "status": status.as_str() }).to_string()),
        _ => Event::default(),
    };
    let lines: Option<crate::api::logs::ShowLine<'_>> = if q.quiet == Some(1) { None } else { Some(&wanted) };
    crate::api::logs::follow_run(s, id, q.after.unwrap_or(0), tx, lines, &step).await;
}

#[derive(Deserialize)]
pub(super) struct WatchQuery {
    app: Option<String>,
    /// The [`fingerprint`] of the runs when the page was made.
    seen: Option<String>,
}

/// The filter a watched list is compared by: the 50 newest runs the viewer reaches, of `app`.
pub(super) fn watch_filter(scope: &AppScope, app: Option<String>) -> RunFilter {
    let apps = match scope {
        AppScope::All => None,
        AppScope::Only(a) => Some(a.clone()),
    };
    RunFilter { apps, app, limit: Some(50), ..RunFilter::default() }
}

/// A short digest of runs' ids and statuses.
pub(super) fn fingerprint(s: &Shared, f: &RunFilter) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for r in s.store.list_runs(f).unwrap_or_default() {
        h.update(format!("{}:{};", r.id, r.status.as_str()));
    }
    hex::encode(&h.finalize()[..8])
}

/// `changed` whenever the newest runs the viewer reaches (of `app`, if given) are not what they
/// were when the stream opened, or change again: the script then fetches the page anew. The
/// store is read once a second per open page; a stream ends after an hour (the browser
/// reconnects).
pub(super) async fn watch_runs(
    State(s): State<Arc<Shared>>,
    viewer: Viewer,
    Query(q): Query<WatchQuery>,
) -> Result<Response> {
    let filter = watch_filter(&viewer.scope, q.app);
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let look = |f: &RunFilter| fingerprint(&s, f);
        let mut seen = q.seen.unwrap_or_else(|| look(&filter));
        for _ in 0..3600 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if tx.is_closed() {
                return;
            }
            let now = look(&filter);
            if now != seen {
                seen = now;
                if tx.send(Event::default().event("changed").data("{}")).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(sse(rx))
}
