//! A run's logs: stored lines (JSON or plain text) and a live Server-Sent Events stream.

use super::*;
use std::collections::{BTreeSet, HashMap};

/// Where to start reading logs.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Only lines with a larger `seq`.
    pub after: Option<u64>,
    /// `text`: plain text, a line each as `[job/step] text`, every control sequence removed
    /// (also chosen by `Accept: text/plain`).
    pub format: Option<LogFormat>,
}

/// Where to resume a log stream.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Only lines with a larger `seq`.
    pub after: Option<u64>,
}

/// How stored logs are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// The JSON body (`Logs`).
    Json,
    /// Plain text, safe to print on a terminal.
    Text,
}

/// Stored log lines.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Logs {
    /// The run's status when read (`complete` once it is over).
    #[schema(value_type = String)]
    pub status: RunStatus,
    /// True when the run is over: no more lines will come.
    pub complete: bool,
    /// Lines in order, secrets masked.
    pub lines: Vec<LogRecord>,
}

/// A run's stored logs.
#[utoipa::path(get, path = "/v1/runs/{id}/logs", tag = "logs", params(("id" = i64, Path, description = "Run id"), LogQuery),
    responses((status = 200, description = "The stored lines: JSON, or with `format=text` (or `Accept: text/plain`) plain text whose every control sequence is removed",
               content((Logs = "application/json"), (String = "text/plain"))),
              (status = 400, description = "The id or the query string is malformed", body = ErrorBody),
              (status = 404, description = "No such run, or the token does not reach its app", body = ErrorBody)),
    security(("token" = [])))]
pub(crate) async fn get_logs(
    State(s): State<Arc<Shared>>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<LogQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let run = visible_run(&s, &caller, id)?;
    let lines = s.logs.read(id, q.after.unwrap_or(0)).map_err(|e| anyhow::anyhow!("reading logs of run {id}: {e}"))?;
    let accepts_text = || {
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| {
            v.split(',').any(|t| t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain")))
        })
    };
    if q.format == Some(LogFormat::Text) || (q.format.is_none() && accepts_text()) {
        // Logs are data: what a step printed cannot move a terminal's cursor or title.
        let mut text = String::new();
        for l in &lines {
            let clean = |s: &str| skiff_pipeline::inert::terminal_text(s, false).into_owned();
            for line in l.text.lines() {
                text.push_str(&format!("[{}/{}] {}\n", clean(&l.job), clean(&l.step), clean(line)));
            }
        }
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response());
    }
    Ok(Json(Logs { complete: run.status.is_terminal(), status: run.status, lines }).into_response())
}

/// One Server-Sent Event of a log stream, as an OpenAPI 3.2 `itemSchema` describes events: its
/// name (`event`), its `id` and its `data`, which is JSON. Only the document uses this type
/// (`follow` writes the events); OpenAPI 3.1 tools, schemathesis among them, read the `schema`
/// of `text/event-stream` as the schema of each event.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum StreamEvent {
    /// A log line.
    Log {
        /// Its `seq`: reconnect with it as `Last-Event-ID` to resume after it.
        id: String,
        /// A `LogRecord`, as JSON.
        data: String,
    },
    /// A step or job changed state.
    Step {
        /// `{"event": "step", "job", "step", "name", "status"}`, as JSON.
        data: String,
    },
    /// The run is over; the last event of the stream.
    End {
        /// `{"status"}`: the run's final status, as JSON.
        data: String,
    },
}

/// Follows a run's logs as Server-Sent Events: `log` events (data: a log line, id: its `seq`),
/// `step` events when a step or job changes state, and one `end` event when the run is over.
/// Reconnect with `Last-Event-ID` (or `?after=`) to resume.
#[utoipa::path(get, path = "/v1/runs/{id}/logs/stream", tag = "logs", params(("id" = i64, Path, description = "Run id"), StreamQuery),
    responses((status = 200, description = "An event stream; each event is one `StreamEvent`",
               content_type = "text/event-stream", body = StreamEvent),
              (status = 400, description = "The id or the query string is malformed", body = ErrorBody),
              (status = 404, description = "No such run, or the token does not reach its app", body = ErrorBody)),
    security(("token" = [])))]
pub(crate) async fn stream_logs(
    State(s): State<Arc<Shared>>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    visible_run(&s, &caller, id)?;
    let after = headers.get("last-event-id").and_then(|v| v.to_str().ok()?.parse().ok()).or(q.after).unwrap_or(0);
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(256);
    tokio::spawn(follow(s.clone(), id, after, tx));
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

pub(crate) fn log_event(r: &LogRecord) -> SseEvent {
    SseEvent::default().event("log").id(r.seq.to_string()).data(serde_json::to_string(r).unwrap_or_default())
}

/// Feeds one follower: stored lines first, then live ones, without gaps or repeats.
async fn follow(s: Arc<Shared>, id: i64, last: u64, tx: tokio::sync::mpsc::Sender<SseEvent>) {
    let step = |e: &LiveEvent| SseEvent::default().event("step").data(serde_json::to_string(e).unwrap_or_default());
    follow_run(s, id, last, tx, Some(&|r: &LogRecord| Some(log_event(r))), &step).await;
}

/// How often a follower reads the store for a run this host does not run.
const REMOTE_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// How a follower shows a log line (`None`: not this follower's), and a step's change.
pub(crate) type ShowLine<'a> = &'a (dyn Fn(&LogRecord) -> Option<SseEvent> + Sync);
pub(crate) type ShowStep<'a> = &'a (dyn Fn(&LiveEvent) -> SseEvent + Sync);

/// A run's events for one follower (the API's log stream, the console's): stored lines after
/// `last` first, then live ones, without gaps or repeats; step changes; `end` with the run's
/// status once it is over. `lines: None` follows steps only (no log is read). Ends as soon as
/// the follower leaves, even while nothing happens (a run waiting days for an approval).
pub(crate) async fn follow_run(
    s: Arc<Shared>,
    id: i64,
    last: u64,
    tx: tokio::sync::mpsc::Sender<SseEvent>,
    lines: Option<ShowLine<'_>>,
    step: ShowStep<'_>,
) {
    use tokio::sync::broadcast::error::RecvError;
    // Subscribe before reading what is stored, so nothing falls between the two.
    let mut rx = s.hub.subscribe(id);
    // With jobs leased across hosts, several hosts write the run's log, and a line may reach
    // the store after a later one from another host: the follower looks back a while.
    let window = if s.config.leases_jobs() { LOG_LOOKBACK } else { 0 };
    let mut last = Seen { floor: last, last, window, recent: BTreeSet::new() };
    let catch_up = |seen: &mut Seen| -> Vec<SseEvent> {
        let Some(show) = lines else { return Vec::new() };
        let stored = s.logs.read(id, seen.read_from()).unwrap_or_default();
        stored.iter().filter(|r| seen.fresh(r.seq)).filter_map(show).collect()
    };
    for e in catch_up(&mut last) {
        if tx.send(e).await.is_err() {
            return;
        }
    }
    let end = |st: &str| SseEvent::default().event("end").data(serde_json::json!({"status": st}).to_string());
    if let Ok(Some(run)) = s.store.run(id)
        && run.status.is_terminal()
    {
        for e in catch_up(&mut last) {
            let _ = tx.send(e).await;
        }
        s.hub.forget_if_idle(id);
        let _ = tx.send(end(run.status.as_str())).await;
        return;
    }
    // A run on another host (instances sharing a PostgreSQL store) sends nothing through this
    // host's hub: its lines, its jobs' and steps' changes and its end are read from the store
    // every so often.
    let mut poll = tokio::time::interval(REMOTE_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut states: HashMap<(String, String), RunStatus> = HashMap::new();
    loop {
        let got = tokio::select! {
            got = rx.recv() => got,
            () = tx.closed() => return,
            _ = poll.tick() => {
                if s.scheduler.runs_here(id) && window == 0 {
                    continue;
                }
                for e in catch_up(&mut last) {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                for e in changed_steps(&*s.store, id, &mut states) {
                    if tx.send(step(&e)).await.is_err() {
                        return;
                    }
                }
                if let Ok(Some(run)) = s.store.run(id)
                    && run.status.is_terminal()
                {
                    for e in catch_up(&mut last) {
                        let _ = tx.send(e).await;
                    }
                    for e in changed_steps(&*s.store, id, &mut states) {
                        let _ = tx.send(step(&e)).await;
                    }
                    let _ = tx.send(end(run.status.as_str())).await;
                    return;
                }
                continue;
            }
        };
        let e = match got {
            Ok(LiveEvent::Log(r)) if !last.fresh(r.seq) => continue,
            Ok(LiveEvent::Log(r)) => match lines.and_then(|show| show(&r)) {
                Some(e) => e,
                None => continue,
            },
            Ok(e @ LiveEvent::Step { .. }) => {
                if let LiveEvent::Step { job, step, status, .. } = &e {
                    states.insert((job.clone(), step.clone()), *status);
                }
                step(&e)
            }
            Ok(LiveEvent::End { status }) => {
                for e in catch_up(&mut last) {
                    let _ = tx.send(e).await;
                }
                let _ = tx.send(end(status.as_str())).await;
                return;
            }
            Err(RecvError::Lagged(_)) => {
                for e in catch_up(&mut last) {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Err(RecvError::Closed) => {
                let st = s.store.run(id).ok().flatten().map(|r| r.status.as_str()).unwrap_or_default();
                let _ = tx.send(end(st)).await;
                return;
            }
        };
        if tx.send(e).await.is_err() {
            return;
        }
    }
}

/// How far back (in clock-numbered log lines: 5 s) a follower of a run whose jobs several
/// hosts write reads again, for lines that reached the store after later ones.
pub(crate) const LOG_LOOKBACK: u64 = 5_000 << 16;

/// The lines a follower has sent: every one up to `floor` (what it asked to resume after), and
/// those of the last `window` seqs by number.
struct Seen {
    floor: u64,
    last: u64,
    window: u64,
    recent: BTreeSet<u64>,
}

impl Seen {
    /// Where to read the store from.
    fn read_from(&self) -> u64 {
        self.floor.max(self.last.saturating_sub(self.window))
    }

    /// Whether line `seq` is still to be sent; it counts as sent from here.
    fn fresh(&mut self, seq: u64) -> bool {
        if seq <= self.read_from() || !self.recent.insert(seq) {
            return false;
        }
        self.last = self.last.max(seq);
        let keep = self.last.saturating_sub(self.window);
        if self.recent.first().is_some_and(|&f| f <= keep) {
            self.recent = self.recent.split_off(&(keep + 1));
        }
        true
    }
}

/// The jobs and steps of run `id` whose state differs from `seen` (all of them the first
/// time), as the events the host running it sends, with `seen` brought up to date.
fn changed_steps(
    store: &dyn crate::store::RunStore,
    id: i64,
    seen: &mut HashMap<(String, String), RunStatus>,
) -> Vec<LiveEvent> {
    let Ok(jobs) = store.jobs(id) else { return Vec::new() };
    let mut out = Vec::new();
    let mut note = |job: &str, step: &str, name: &str, status: RunStatus| {
        if seen.insert((job.to_string(), step.to_string()), status) != Some(status) {
            out.push(LiveEvent::Step { job: job.into(), step: step.into(), name: name.into(), status });
        }
    };
    for j in &jobs {
        note(&j.key, "", &j.name, j.status);
        for st in &j.steps {
            note(&j.key, &st.id, &st.name, st.status);
        }
    }
    out
}
