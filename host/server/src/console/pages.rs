//! The console's pages and the forms that change something (start, cancel, rerun). Every page
//! reads only what the viewer's scope reaches; everything shown is escaped by maud, and log
//! lines by [`super::to_html`].

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Form;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::auth::Viewer;
use super::{ConsoleError, Result, visible_app, visible_run};
use crate::Shared;
use crate::config::{AppConfig, AppScope, PipelineSource};
use crate::store::{self, RunFilter, RunSearch, RunStatus};

const PAGE: i64 = 50;

fn page(viewer: Option<&Viewer>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · Skiff" }
                link rel="stylesheet" href="/console/console.css";
                script src="/console/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    nav aria-label="Main" {
                        a.brand href="/" { "Skiff" }
                        @if viewer.is_some() {
                            a href="/" { "Apps" }
                            a href="/runs" { "Runs" }
                        }
                    }
                    @if let Some(v) = viewer {
                        form.signout method="post" action="/sign-out" {
                            span.who { "Signed in as " strong { (v.name) } }
                            input type="hidden" name="csrf" value=(v.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" { (body) }
            }
        }
    }
}

/// An error page.
pub(super) fn error_page(code: StatusCode, msg: &str) -> Markup {
    let title = code.canonical_reason().unwrap_or("Error");
    page(
        None,
        title,
        html! { h1 { (code.as_u16()) " " (title) } p { (msg) } p { a href="/" { "Back to the console" } } },
    )
}

/// The sign-in page.
pub(super) fn sign_in(next: &str, csrf: &str, users: bool, error: Option<&str>) -> Markup {
    page(
        None,
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.card method="post" action="/sign-in" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                h2 { "With an API token" }
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="off";
                button type="submit" { "Sign in" }
            }
            @if users {
                form.card method="post" action="/sign-in" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="next" value=(next);
                    h2 { "With a name and password" }
                    label for="name" { "Name" }
                    input #name type="text" name="name" autocomplete="username";
                    label for="password" { "Password" }
                    input #password type="password" name="password" autocomplete="current-password";
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

fn html_response(m: Markup) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], m.into_string())
        .into_response()
}

fn status(st: RunStatus) -> Markup {
    let sign = match st {
        RunStatus::Success => "✓",
        RunStatus::Failure => "✗",
        RunStatus::Running => "●",
        RunStatus::Queued => "…",
        RunStatus::Cancelled => "⊘",
        RunStatus::Skipped => "–",
        _ => "⏸",
    };
    html! { span class={"st st-" (st.as_str())} { span aria-hidden="true" { (sign) } " " (st.as_str()) } }
}

fn when(ms: i64) -> Markup {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => html! { time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M:%S UTC")) } },
        None => html! { "—" },
    }
}

fn duration(ms: Option<i64>) -> String {
    match ms {
        None => "—".into(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m {}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

fn bytes(n: i64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
    }
}

fn branch(git_ref: Option<&str>) -> String {
    match git_ref {
        None => "—".into(),
        Some(r) => r.strip_prefix("refs/heads/").unwrap_or(r).to_string(),
    }
}

fn full_ref(b: &str) -> String {
    if b.starts_with("refs/") { b.to_string() } else { format!("refs/heads/{b}") }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn visible_apps<'a>(s: &'a Shared, scope: &AppScope) -> Vec<&'a Arc<AppConfig>> {
    s.config.apps.iter().filter(|(name, _)| scope.allows(name)).map(|(_, a)| a).collect()
}

fn latest_table(runs: &[store::Run]) -> Markup {
    html! {
        @if runs.is_empty() {
            p.muted { "No runs yet." }
        } @else {
            table {
                thead { tr { th scope="col" { "Branch" } th scope="col" { "Last run" } th scope="col" { "Status" } th scope="col" { "Started" } } }
                tbody {
                    @for r in runs.iter().take(10) {
                        tr {
                            td { code { (branch(r.git_ref.as_deref())) } }
                            td { a href={"/runs/" (r.id)} { "#" (r.number) @if r.attempt > 1 { "." (r.attempt) } } }
                            td { (status(r.status)) }
                            td { (when(r.created_at)) }
                        }
                    }
                }
            }
        }
    }
}

/// `/`: the apps the viewer reaches, each with its newest run per branch.
pub(super) async fn apps(State(s): State<Arc<Shared>>, viewer: Viewer) -> Result<Response> {
    let seen = super::live::fingerprint(&s, &super::live::watch_filter(&viewer.scope, None));
    let mut sections = Vec::new();
    for a in visible_apps(&s, &viewer.scope) {
        sections.push((a.name().to_string(), s.store.latest_per_ref(a.name())?));
    }
    let body = html! {
        h1 { "Apps" }
        div #live data-watch={"/runs/watch?seen=" (seen)} {
            @if sections.is_empty() { p { "Your account reaches no app on this host." } }
            @for (name, runs) in &sections {
                section.card aria-labelledby={"app-" (name)} {
                    h2 #{"app-" (name)} { a href={"/apps/" (enc(name))} { (name) } }
                    (latest_table(runs))
                    p { a href={"/runs?app=" (enc(name))} { "All runs of " (name) } }
                }
            }
        }
    };
    Ok(html_response(page(Some(&viewer), "Apps", body)))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RunsQuery {
    app: Option<String>,
    status: Option<String>,
    branch: Option<String>,
    event: Option<String>,
    before: Option<i64>,
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_ref().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// `/runs`: runs the viewer reaches, newest first, filtered and paged.
pub(super) async fn runs(State(s): State<Arc<Shared>>, viewer: Viewer, Query(q): Query<RunsQuery>) -> Result<Response> {
    let app = nonempty(&q.app);
    if let Some(a) = &app
        && !viewer.scope.allows(a)
    {
        return Err(ConsoleError::NotFound);
    }
    let st = match nonempty(&q.status) {
        None => None,
        Some(v) => Some(v.parse::<RunStatus>().map_err(|_| ConsoleError::BadRequest(format!("No status `{v}`.")))?),
    };
    let apps = match &viewer.scope {
        AppScope::All => None,
        AppScope::Only(a) => Some(a.clone()),
    };
    let f = RunFilter { apps, app: app.clone(), status: st, before: q.before, limit: Some(PAGE) };
    let more = RunSearch { git_ref: nonempty(&q.branch).map(|b| full_ref(&b)), trigger: nonempty(&q.event) };
    let runs = s.store.search_runs(&f, &more)?;
    let seen = super::live::fingerprint(&s, &super::live::watch_filter(&viewer.scope, app.clone()));
    let qs = |before: Option<i64>| {
        let mut parts = Vec::new();
        for (k, v) in [("app", &q.app), ("status", &q.status), ("branch", &q.branch), ("event", &q.event)] {
            if let Some(v) = nonempty(v) {
                parts.push(format!("{k}={}", enc(&v)));
            }
        }
        if let Some(b) = before {
            parts.push(format!("before={b}"));
        }
        parts.join("&")
    };
    let body = html! {
        h1 { "Runs" }
        form.filters method="get" action="/runs" role="search" aria-label="Filter runs" {
            label { "App " select name="app" {
                option value="" { "any" }
                @for a in visible_apps(&s, &viewer.scope) {
                    option value=(a.name()) selected[app.as_deref() == Some(a.name())] { (a.name()) }
                }
            } }
            label { "Status " select name="status" {
                option value="" { "any" }
                @for x in RunStatus::ALL {
                    option value=(x.as_str()) selected[st == Some(x)] { (x.as_str()) }
                }
            } }
            label { "Branch " input type="text" name="branch" value=[nonempty(&q.branch)] size="12"; }
            label { "Event " input type="text" name="event" value=[nonempty(&q.event)] size="10" placeholder="push, manual…"; }
            button type="submit" { "Filter" }
        }
        div #live data-watch=[q.before.is_none().then(|| format!("/runs/watch?seen={seen}{}", app.as_ref().map(|a| format!("&app={}", enc(a))).unwrap_or_default()))] {
            @if runs.is_empty() { p.muted { "No runs match." } } @else {
                table.runs {
                    thead { tr {
                        th scope="col" { "Run" } th scope="col" { "App" } th scope="col" { "Status" } th scope="col" { "Event" }
                        th scope="col" { "Branch" } th scope="col" { "Commit" } th scope="col" { "Started" } th scope="col" { "Duration" }
                    } }
                    tbody {
                        @for r in &runs {
                            tr {
                                td { a href={"/runs/" (r.id)} { "#" (r.number) @if r.attempt > 1 { "." (r.attempt) } } }
                                td { (r.app) }
                                td { (status(r.status)) }
                                td { (r.trigger) }
                                td { code { (branch(r.git_ref.as_deref())) } }
                                td { code { (r.sha.as_deref().map(|s| &s[..s.len().min(8)]).unwrap_or("—")) } }
                                td { (when(r.created_at)) }
                                td { (duration(r.duration_ms)) }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if q.before.is_some() { a href={"/runs?" (qs(None))} { "Newest runs" } }
            @if runs.len() as i64 == PAGE && let Some(last) = runs.last() {
                a href={"/runs?" (qs(Some(last.id)))} rel="next" { "Older runs" }
            }
        }
    };
    Ok(html_response(page(Some(&viewer), "Runs", body)))
}

/// The app's pipeline when the host has it at hand (inline or a file in its workspace); a
/// pipeline of a commit is read only when a run fetches it.
fn plan_of(app: &AppConfig) -> Option<skiff_pipeline::Plan> {
    if matches!(app.pipeline, PipelineSource::Commit(_)) {
        return None;
    }
    crate::scheduler::load_plan(app, &app.workspace.clone().unwrap_or_default()).ok()
}

/// A job on the run page: as planned and as it went.
struct JobView<'a> {
    key: String,
    name: String,
    needs: Vec<String>,
    matrix: Vec<(String, String)>,
    run: Option<&'a store::Job>,
    plan: Option<&'a skiff_pipeline::plan::PlanJob>,
}

/// Jobs in columns: a job stands one column right of the last job it needs.
fn columns<'a>(plan: Option<&'a skiff_pipeline::Plan>, jobs: &'a [store::Job]) -> Vec<Vec<JobView<'a>>> {
    let mut depth: BTreeMap<String, usize> = BTreeMap::new();
    let mut cols: Vec<Vec<JobView<'a>>> = Vec::new();
    let place = |cols: &mut Vec<Vec<JobView<'a>>>, d: usize, v: JobView<'a>| {
        while cols.len() <= d {
            cols.push(Vec::new());
        }
        cols[d].push(v);
    };
    let mut shown = std::collections::BTreeSet::new();
    if let Some(p) = plan {
        // The plan lists a job's needs before it.
        for j in &p.jobs {
            let d = j.needs.iter().filter_map(|n| depth.get(n)).map(|d| d + 1).max().unwrap_or(0);
            depth.entry(j.job.clone()).and_modify(|x| *x = (*x).max(d)).or_insert(d);
            let run = jobs.iter().find(|r| r.key == j.key);
            shown.insert(j.key.clone());
            let matrix = j
                .matrix
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or(v.to_string())))
                .collect();
            let name = run.map(|r| r.name.clone()).unwrap_or_else(|| j.name.clone());
            place(
                &mut cols,
                d,
                JobView { key: j.key.clone(), name, needs: j.needs.clone(), matrix, run, plan: Some(j) },
            );
        }
    }
    for r in jobs.iter().filter(|r| !shown.contains(&r.key)) {
        let d = depth.get(&r.job).copied().unwrap_or(0);
        place(
            &mut cols,
            d,
            JobView {
                key: r.key.clone(),
                name: r.name.clone(),
                needs: vec![],
                matrix: vec![],
                run: Some(r),
                plan: None,
            },
        );
    }
    cols
}

fn grants(g: &skiff_pipeline::Grants) -> Markup {
    html! {
        ul.grants aria-label="Granted capabilities" {
            @if g.network { li { "network" } }
            @for h in &g.hosts { li { "http: " code { (h) } } }
            @for sname in &g.secrets { li { "secret: " code { (sname) } } }
            @if g.process { li { "process" } }
            @if g.read_only { li { "read-only" } }
            @if !g.network && g.hosts.is_empty() && g.secrets.is_empty() && !g.process { li.muted { "no capabilities" } }
        }
    }
}

fn usage(u: &store::Usage) -> Markup {
    html! {
        span.usage {
            @if let Some(c) = u.cpu_ms { "cpu " (duration(Some(c))) " · " }
            @if let Some(m) = u.peak_memory_bytes { "mem " (bytes(m)) " · " }
            @if let Some(e) = u.egress_bytes { "net " (bytes(e)) " · " }
            "log " (bytes(u.log_bytes))
        }
    }
}

fn csrf(v: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(v.csrf); }
}

/// `/runs/{id}`: a run, its jobs as a graph, its steps, artifacts, and what can be done to it.
pub(super) async fn run_page(State(s): State<Arc<Shared>>, viewer: Viewer, Path(id): Path<i64>) -> Result<Response> {
    let run = visible_run(&s, &viewer.scope, id)?;
    let jobs = s.store.jobs(id)?;
    let app = s.config.apps.get(&run.app).cloned();
    let plan = match app.as_deref().and_then(plan_of) {
        Some(p) => Some(p),
        // A run of a repository-driven app: its pipeline at its commit, from the repository cache.
        None => s.scheduler.commit_plan_of(&run).await,
    };
    let cols = columns(plan.as_ref(), &jobs);
    let store = s.artifacts.clone();
    let artifacts = tokio::task::spawn_blocking(move || store.list(&id.to_string()))
        .await
        .map_err(|e| anyhow::anyhow!("listing artifacts: {e}"))?
        .unwrap_or_default();
    let failed = jobs.iter().any(|j| j.status.is_failed());
    let title = format!("{} #{}", run.app, run.number);
    let body = html! {
        nav aria-label="Breadcrumb" { a href={"/runs?app=" (enc(&run.app))} { (run.app) } " › run #" (run.number) }
        h1 { (title) @if run.attempt > 1 { " (attempt " (run.attempt) ")" } " " (status(run.status)) }
        @if !run.status.is_terminal() {
            noscript { p.muted { "Without JavaScript this page does not follow the run: reload it to see its progress." } }
        }
        div #live data-events=[(!run.status.is_terminal()).then(|| format!("/runs/{id}/events?quiet=1"))] {
            dl.facts {
                dt { "Event" } dd { (run.trigger) }
                dt { "Branch" } dd { code { (branch(run.git_ref.as_deref())) } }
                dt { "Commit" } dd { code { (run.sha.as_deref().unwrap_or("—")) } }
                dt { "Why" } dd { (run.reason) }
                @if let Some(by) = &run.requested_by { dt { "Asked by" } dd { (by) } }
                dt { "Created" } dd { (when(run.created_at)) }
                dt { "Duration" } dd { (duration(run.duration_ms)) }
                @if let Some(p) = run.parent_id { dt { "Repeats" } dd { a href={"/runs/" (p)} { "run " (p) } } }
                @if !run.labels.is_empty() { dt { "Runs on" } dd { code { (run.labels.join(", ")) } } }
            }
            @if let Some(w) = crate::api::waiting_for(run.status, &run.labels) { p.muted role="status" { "Waiting for " (w) } }
            @if let Some(e) = &run.error { p.error { (e) } }
            @if !run.inputs.is_empty() {
                h2 { "Inputs" }
                dl.facts { @for (k, v) in &run.inputs { dt { code { (k) } } dd { code { (v) } } } }
            }
            div.actions {
                @if !run.status.is_terminal() {
                    form method="post" action={"/runs/" (id) "/cancel"} { (csrf(&viewer)) button type="submit" { "Cancel run" } }
                } @else {
                    form method="post" action={"/runs/" (id) "/rerun"} { (csrf(&viewer)) button type="submit" { "Rerun all jobs" } }
                    @if failed {
                        form method="post" action={"/runs/" (id) "/rerun"} {
                            (csrf(&viewer)) input type="hidden" name="failed_only" value="1";
                            button type="submit" { "Rerun failed jobs" }
                        }
                    }
                }
            }
            h2 { "Jobs" }
            @if cols.is_empty() { p.muted { "No job has started yet." } }
            ol.graph aria-label="Jobs, in the order their needs allow" {
                @for (i, col) in cols.iter().enumerate() {
                    li.stage {
                        span.stage-label { "Stage " (i + 1) }
                        @for j in col {
                            section.job id={"job-" (j.key)} aria-label={"Job " (j.name)} {
                                h3 {
                                    (j.name) " "
                                    @if let Some(r) = j.run { (status(r.status)) " " span.muted { (duration(r.duration_ms)) } }
                                    @else { span class="st st-waiting" { "waiting" } }
                                }
                                @if !j.matrix.is_empty() {
                                    ul.matrix aria-label="Matrix cell" { @for (k, v) in &j.matrix { li { (k) "=" (v) } } }
                                }
                                @if !j.needs.is_empty() {
                                    p.needs { "needs " @for (n, need) in j.needs.iter().enumerate() { @if n > 0 { ", " } a href={"#job-" (need)} { (need) } } }
                                }
                                @if let Some(reason) = j.run.and_then(|r| r.reason.as_ref()) { p.muted { (reason) } }
                                @if j.run.is_some_and(|r| r.status == RunStatus::Waiting) {
                                    div.actions {
                                        @for (verdict, label) in [("approve", "Approve"), ("reject", "Reject")] {
                                            form method="post" action={"/runs/" (id) "/" (verdict)} {
                                                (csrf(&viewer)) input type="hidden" name="job" value=(j.key);
                                                button type="submit" { (label) " " (j.name) }
                                            }
                                        }
                                    }
                                }
                                ol.steps {
                                    @let planned: Vec<&skiff_pipeline::plan::PlanStep> = j.plan.map(|p| p.steps.iter().collect()).unwrap_or_default();
                                    @let ran: Vec<&store::Step> = j.run.map(|r| r.steps.iter().collect()).unwrap_or_default();
                                    @for st in &ran {
                                        li {
                                            a href={"/runs/" (id) "/jobs/" (enc(&j.key)) "/steps/" (enc(&st.id))} { (st.name) }
                                            " " (status(st.status)) " "
                                            span.muted { (duration(st.usage.wall_ms.or(st.finished_at.zip(st.started_at).map(|(f, s)| f - s)))) }
                                            br; (usage(&st.usage))
                                            @if let Some(e) = &st.error { br; span.error { (e) } }
                                            @if let Some(p) = planned.iter().find(|p| p.id == st.id) { (grants(&p.grants)) }
                                        }
                                    }
                                    @for p in planned.iter().filter(|p| !ran.iter().any(|r| r.id == p.id)) {
                                        li.pending { (p.name) " " span class="st st-waiting" { "not started" } (grants(&p.grants)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Artifacts" }
            @if artifacts.is_empty() { p.muted { "None." } } @else {
                table {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Size" } th scope="col" { "SHA-256" } th scope="col" { "Stored by" } } }
                    tbody { @for a in &artifacts {
                        tr {
                            td { a href={"/runs/" (id) "/artifacts/" (enc(&a.name))} download { (a.name) } }
                            td { (bytes(a.size as i64)) }
                            td { code { (a.sha256.get(..12).unwrap_or(&a.sha256)) "…" } }
                            td { (a.job) "/" (a.step) }
                        }
                    } }
                }
            }
        }
    };
    Ok(html_response(page(Some(&viewer), &title, body)))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct LogQuery {
    /// Show only the lines that hold this text (any case).
    q: Option<String>,
}

/// `/runs/{id}/jobs/{job}/steps/{step}`: a step's log, live while the run runs. `?q=` hides the
/// lines without that text, so the search box works as a plain form without the script (which
/// filters as one types).
pub(super) async fn log_page(
    State(s): State<Arc<Shared>>,
    viewer: Viewer,
    Path((id, job, step)): Path<(i64, String, String)>,
    Query(query): Query<LogQuery>,
) -> Result<Response> {
    let run = visible_run(&s, &viewer.scope, id)?;
    let jobs = s.store.jobs(id)?;
    let st = jobs.iter().find(|j| j.key == job).and_then(|j| j.steps.iter().find(|x| x.id == step));
    let lines: Vec<_> = s
        .logs
        .read(id, 0)
        .map_err(|e| anyhow::anyhow!("reading the logs of run {id}: {e}"))?
        .into_iter()
        .filter(|r| r.job == job && r.step == step)
        .collect();
    if st.is_none() && lines.is_empty() && run.status.is_terminal() {
        return Err(ConsoleError::NotFound);
    }
    let last = lines.last().map(|l| l.seq).unwrap_or(0);
    let live = !run.status.is_terminal();
    let base = format!("/runs/{id}/jobs/{}/steps/{}", enc(&job), enc(&step));
    let q = nonempty(&query.q);
    let needle = q.as_deref().map(str::to_lowercase);
    let mut n = 0;
    let mut rendered = String::new();
    for r in &lines {
        for text in r.text.lines() {
            n += 1;
            // Hidden, not left out: line numbers and the live script's count stay whole.
            let hidden = needle
                .as_deref()
                .is_some_and(|q| !skiff_pipeline::inert::terminal_text(text, false).to_lowercase().contains(q));
            let _ = std::fmt::Write::write_fmt(
                &mut rendered,
                format_args!(
                    "<li id=\"L{n}\"{}><a class=\"ln\" href=\"#L{n}\" aria-label=\"Line {n}\">{n}</a><span class=\"t\">{}</span></li>",
                    if hidden { " class=\"hidden\"" } else { "" },
                    super::to_html(text)
                ),
            );
        }
    }
    let name = st.map(|x| x.name.clone()).unwrap_or_else(|| step.clone());
    let title = format!("{name} · {} #{}", run.app, run.number);
    let body = html! {
        nav aria-label="Breadcrumb" {
            a href={"/runs?app=" (enc(&run.app))} { (run.app) } " › "
            a href={"/runs/" (id)} { "run #" (run.number) } " › " (job) " › " (name)
        }
        h1 { (name) " " @if let Some(x) = st { (status(x.status)) } }
        div.logbar {
            form method="get" action=(base) role="search" {
                label for="log-filter" { "Search this log" } " "
                input #log-filter type="search" name="q" value=[q.as_deref()] placeholder="Filter lines" data-log="log";
                " " button type="submit" { "Filter" }
            }
            a href={(base) "/raw"} download { "Download raw log" }
            @if live { span #log-live role="status" { "Live" } }
        }
        @if live {
            noscript { p.muted { "Without JavaScript this log does not follow the run: reload the page for new lines." } }
        }
        ol #log class="log" data-events=[live.then(|| format!("/runs/{id}/events?job={}&step={}&after={last}", enc(&job), enc(&step)))] {
            (PreEscaped(rendered))
        }
        @if lines.is_empty() && !live { p.muted { "This step logged nothing." } }
    };
    Ok(html_response(page(Some(&viewer), &title, body)))
}

/// The step's log as plain text, every control sequence removed.
pub(super) async fn raw_log(
    State(s): State<Arc<Shared>>,
    viewer: Viewer,
    Path((id, job, step)): Path<(i64, String, String)>,
) -> Result<Response> {
    visible_run(&s, &viewer.scope, id)?;
    let mut text = String::new();
    for r in s.logs.read(id, 0).map_err(|e| anyhow::anyhow!("reading the logs of run {id}: {e}"))? {
        if r.job == job && r.step == step {
            for line in r.text.lines() {
                text.push_str(&skiff_pipeline::inert::terminal_text(line, false));
                text.push('\n');
            }
        }
    }
    let file: String = format!("run-{id}-{job}-{step}.log")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{file}\"")),
        ],
        text,
    )
        .into_response())
}

/// An artifact of a run, for a viewer who reaches its app.
pub(super) async fn artifact(
    State(s): State<Arc<Shared>>,
    viewer: Viewer,
    Path((id, name)): Path<(i64, String)>,
) -> Result<Response> {
    visible_run(&s, &viewer.scope, id)?;
    let store = s.artifacts.clone();
    let opened = tokio::task::spawn_blocking(move || store.open(&id.to_string(), &name))
        .await
        .map_err(|e| anyhow::anyhow!("opening an artifact: {e}"))?
        .map_err(|e| anyhow::anyhow!("opening an artifact of run {id}: {e}"))?;
    let Some((a, reader)) = opened else { return Err(ConsoleError::NotFound) };
    let body = Body::from_stream(crate::api::artifacts::read_in_chunks(reader));
    let file: String =
        a.name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, a.size.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{file}\"")),
        ],
        body,
    )
        .into_response())
}

/// `/apps/{app}`: settings (read-only; secret names, never values), newest runs per branch,
/// and the manual-run form.
pub(super) async fn app_page(
    State(s): State<Arc<Shared>>,
    viewer: Viewer,
    Path(name): Path<String>,
) -> Result<Response> {
    let app = visible_app(&s, &viewer.scope, &name)?;
    let latest = s.store.latest_per_ref(&name)?;
    let plan = plan_of(&app);
    let dispatch = plan.as_ref().and_then(|p| p.triggers.as_ref()).and_then(|t| t.workflow_dispatch.clone());
    let pipeline = match &app.pipeline {
        PipelineSource::Inline(_) => "inline (`pipeline-yaml`)".to_string(),
        PipelineSource::Path(p) => format!("{p} in the workspace"),
        PipelineSource::Commit(p) => {
            format!("{} of each commit", p.as_deref().unwrap_or(".skiff/pipeline.yaml (or pipelines/)"))
        }
    };
    let triggers = serde_json::to_string_pretty(&app.edge.on).unwrap_or_default();
    let public = s.config.console.public_badges.contains(&name);
    let body = html! {
        h1 { (name) }
        img src={"/badge/" (enc(&name)) ".svg"} alt="Status of the newest run";
        h2 { "Newest runs per branch" }
        (latest_table(&latest))
        p { a href={"/runs?app=" (enc(&name))} { "All runs" } }
        h2 #run-form { "Run by hand" }
        form.card method="post" action={"/apps/" (enc(&name)) "/runs"} {
            (csrf(&viewer))
            label for="ref" { "Branch or ref" }
            input #ref type="text" name="ref" placeholder="main";
            @if let Some(w) = &dispatch {
                @for (k, input) in &w.inputs {
                    @let id = format!("input-{k}");
                    @let default = input.default.as_ref().map(|d| d.as_str().map(str::to_string).unwrap_or(d.to_string()));
                    label for=(id) { (k) @if input.required { " (required)" } @if let Some(d) = &input.description { span.muted { " — " (d) } } }
                    @match input.kind {
                        skiff_edge_core::InputKind::Boolean => {
                            select #(id) name={"input." (k)} {
                                option value="false" selected[default.as_deref() != Some("true")] { "false" }
                                option value="true" selected[default.as_deref() == Some("true")] { "true" }
                            }
                        }
                        skiff_edge_core::InputKind::Choice => {
                            select #(id) name={"input." (k)} {
                                @for o in &input.options { option value=(o) selected[default.as_deref() == Some(o.as_str())] { (o) } }
                            }
                        }
                        skiff_edge_core::InputKind::Number => {
                            input #(id) type="number" step="any" name={"input." (k)} value=[default] required[input.required && input.default.is_none()];
                        }
                        _ => { input #(id) type="text" name={"input." (k)} value=[default] required[input.required && input.default.is_none()]; }
                    }
                }
            } @else {
                label for="extra" { "Inputs, one " code { "NAME=value" } " a line" }
                textarea #extra name="extra" rows="4" {}
            }
            button type="submit" { "Start run" }
        }
        h2 { "Settings" }
        dl.facts {
            dt { "Webhook" } dd { code { "POST /hooks/" (name) } }
            @if let Some(r) = &app.edge.repository { dt { "Repository" } dd { code { (serde_json::to_string(r).unwrap_or_default()) } } }
            @if let Some(p) = &app.provider { dt { "Provider" } dd { (format!("{p:?}").to_lowercase()) } }
            dt { "Pipeline" } dd { (pipeline) }
            dt { "Runs at once" } dd { (app.max_concurrent_runs) }
            dt { "Run timeout" } dd { (app.run_timeout.map(|t| duration(Some(t.as_millis() as i64))).unwrap_or_else(|| "none".into())) }
            dt { "Artifacts kept" } dd { (app.artifact_retention_days) " days" }
            dt { "Badge" } dd { @if public { "public" } @else { "signed-in viewers only" } }
            dt { "Secrets" } dd {
                @if app.secrets.is_empty() { "none" }
                @for (i, k) in app.secrets.keys().enumerate() { @if i > 0 { ", " } code { (k) } }
            }
        }
        h3 { "Triggers" }
        pre.triggers { (triggers) }
    };
    Ok(html_response(page(Some(&viewer), &name, body)))
}

/// Starts a manual run from the form; the inputs are checked as the API checks them.
pub(super) async fn start_run(
    State(s): State<Arc<Shared>>,
    viewer: Viewer,
    Path(name): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response> {
    viewer.check_csrf(&form)?;
    let app = visible_app(&s, &viewer.scope, &name)?;
    let mut inputs = BTreeMap::new();
    let mut git_ref = None;
    for (k, v) in &form {
        if let Some(input) = k.strip_prefix("input.") {
            inputs.insert(input.to_string(), v.clone());
        } else if k == "ref" && !v.trim().is_empty() {
            git_ref = Some(full_ref(v.trim()));
        } else if k == "extra" {
            for line in v.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let (k, v) = line
                    .split_once('=')
                    .ok_or_else(|| ConsoleError::BadRequest(format!("The input line `{line}` is not `NAME=value`.")))?;
                inputs.insert(k.trim().to_string(), v.to_string());
            }
        }
    }
    // As `POST /v1/apps/{app}/runs` does: the pipeline at hand checks the inputs now; a
    // repository's is fetched at the ref and checks them.
    if app.repo.is_none()
        && let Some(w) = plan_of(&app).and_then(|p| p.triggers).and_then(|t| t.workflow_dispatch)
    {
        inputs = w.resolve(&inputs).map_err(ConsoleError::BadRequest)?;
    }
    let mut sha = None;
    if let Some((commit, dispatch)) = s.scheduler.manual_commit(&app, git_ref.as_deref()).await {
        if let Some(w) = dispatch {
            inputs = w.resolve(&inputs).map_err(ConsoleError::BadRequest)?;
        }
        sha = Some(commit);
    }
    let repository = app.repo.as_ref().and_then(|r| r.repository.clone());
    let mut run =
        crate::request::RunRequest::manual(&name, &viewer.name, git_ref, sha, repository, inputs, None).into_new_run();
    run.reason = format!("started by `{}` in the console", viewer.name);
    let inserted = s.enqueue(run).await?;
    Ok(Redirect::to(&format!("/runs/{}", inserted.id)).into_response())
}

/// Cancels a queued or running run.
pub(super) async fn cancel(
    State(s): State<Arc<Shared>>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response> {
    viewer.check_csrf(&form)?;
    visible_run(&s, &viewer.scope, id)?;
    s.scheduler.cancel(id, &format!("cancelled by `{}` in the console", viewer.name)).await?;
    Ok(Redirect::to(&format!("/runs/{id}")).into_response())
}

/// Approves (`approve`) or rejects a job waiting for its environment, as `POST
/// /v1/runs/{id}/approve|reject` does: only for a viewer signed in with a token among the
/// environment's `approvers`.
pub(super) async fn approve(
    State(s): State<Arc<Shared>>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response> {
    decide(&s, &viewer, id, &form, true)
}

/// Rejects a job waiting for its environment: see [`approve`].
pub(super) async fn reject(
    State(s): State<Arc<Shared>>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response> {
    decide(&s, &viewer, id, &form, false)
}

fn decide(s: &Shared, viewer: &Viewer, id: i64, form: &[(String, String)], approved: bool) -> Result<Response> {
    viewer.check_csrf(form)?;
    let run = visible_run(s, &viewer.scope, id)?;
    let Some(token) = viewer.name.strip_prefix("token ") else {
        return Err(ConsoleError::Forbidden(
            "Approvals are given by tokens: sign in with a token among the environment's approvers.".into(),
        ));
    };
    let job = form.iter().find(|(k, _)| k == "job").map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
    crate::scheduler::decide_waiting(s, &run, job, token, approved).map_err(|e| match e {
        crate::scheduler::Undecidable::NotWaiting(m) => ConsoleError::Conflict(m),
        crate::scheduler::Undecidable::NotAnApprover(m) => ConsoleError::Forbidden(m),
        crate::scheduler::Undecidable::Store(e) => ConsoleError::Internal(e),
    })?;
    Ok(Redirect::to(&format!("/runs/{id}")).into_response())
}

/// Runs a finished run again, whole or only its failed jobs, as `POST /v1/runs/{id}/rerun` does.
pub(super) async fn rerun(
    State(s): State<Arc<Shared>>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response> {
    viewer.check_csrf(&form)?;
    let run = visible_run(&s, &viewer.scope, id)?;
    if !run.status.is_terminal() {
        return Err(ConsoleError::Conflict(format!("Run {id} is still {}: cancel it or wait.", run.status)));
    }
    let failed_only = form.iter().any(|(k, v)| k == "failed_only" && v == "1");
    let job = if failed_only {
        crate::scheduler::rerun_job(&s.store.jobs(id)?).map_err(|e| ConsoleError::Conflict(format!("Run {id}: {e}")))?
    } else {
        None
    };
    let attempt = s.store.max_attempt(&run.app, run.number)?;
    let what = match &job {
        Some(j) => format!("job(s) `{j}` of run {id}"),
        None => format!("run {id}"),
    };
    let new = store::NewRun::rerun_of(
        &run,
        job,
        attempt,
        format!("{what} again, asked by `{}` in the console", viewer.name),
        &viewer.name,
    );
    let inserted = s.enqueue(new).await?;
    Ok(Redirect::to(&format!("/runs/{}", inserted.id)).into_response())
}
