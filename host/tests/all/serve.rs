//! `skiff serve`: the API with `oneshot`, and end-to-end runs over a real socket.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Request, StatusCode};
use serde_json::{Value, json};
use skiff_edge_core::{Dispatch, Event, EventKind, Provider, Secret, sign_dispatch};
use skiff_server::config::ServeConfig;
use skiff_server::store::{NewRun, RunStatus, RunStore as _, SqliteStore};
use skiff_server::{Role, Shared, app, start};
use tower::ServiceExt as _;

use crate::support::{Scripted, json_snapshot};

pub(crate) const TOKEN_ALL: &str = "admin-token";
const TOKEN_WEB: &str = "web-token";
pub(crate) const WEBHOOK_SECRET: &str = "webhook-s3cret";
pub(crate) const DISPATCH_KEY: &str = "whsec_c2tpZmYtZGlzcGF0Y2gta2V5";

/// The web app's pipeline: one `diag` step, which `Scripted` drives by its inputs (it logs
/// `message`, and reads `sleep_ms`, `fail`, `hang` and `lines`), and the real executor runs.
const PIPELINE: &str = r#"
name: web
steps:
  - id: greet
    uses: diag
    with:
      message: "hello ${{ event.branch }} token=${{ secrets.DEPLOY_TOKEN }}"
      sleep_ms: "${{ inputs.sleep_ms }}"
      fail: "${{ inputs.fail }}"
      hang: "${{ inputs.hang }}"
      lines: "${{ inputs.lines }}"
    permissions:
      secrets: [DEPLOY_TOKEN]
"#;

pub(crate) fn config_text(data: &Path, extra_app: &str, top: &str) -> String {
    let pipeline = PIPELINE.replace('\n', "\n    ");
    format!(
        r#"
listen = "127.0.0.1:0"
data = "{data}"
dispatch-key = "{DISPATCH_KEY}"
{top}

[[tokens]]
name = "admin"
token = "{TOKEN_ALL}"
apps = ["*"]

[[tokens]]
name = "web-ci"
sha256 = "{web_hash}"
apps = ["web"]

[[apps]]
name = "web"
repository = "acme/web"
provider = "github"
fetch = false
webhook-secret = "{WEBHOOK_SECRET}"
on = {{ push = {{ branches = ["main"] }} }}
secrets = {{ DEPLOY_TOKEN = "tok-9f8e7d" }}
{extra_app}
pipeline-yaml = """
    {pipeline}"""

[[apps]]
name = "other"
pipeline-yaml = """
steps:
  - uses: diag
    with:
      message: other app
"""
"#,
        data = data.display(),
        web_hash = skiff_server::crypto::token_hash(TOKEN_WEB),
    )
}

fn config(data: &Path, extra_app: &str, top: &str) -> ServeConfig {
    ServeConfig::from_toml(&config_text(data, extra_app, top), Path::new("/"), None).unwrap()
}

fn shared(data: &Path, extra_app: &str) -> Arc<Shared> {
    Shared::open(config(data, extra_app, ""), Arc::new(Scripted::new()), Role::All).unwrap()
}

async fn call(s: &Arc<Shared>, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app(s.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn get(path: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::empty()).unwrap()
}

fn post(path: &str, token: Option<&str>, body: Value) -> Request<Body> {
    let mut b = Request::post(path).header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::from(body.to_string())).unwrap()
}

pub(crate) fn push_body(branch: &str, delivery: &str) -> Vec<u8> {
    json!({
        "ref": format!("refs/heads/{branch}"), "before": "0000", "after": "1111",
        "repository": {"full_name": "acme/web"}, "sender": {"login": "octocat"}, "x": delivery
    })
    .to_string()
    .into_bytes()
}

fn github_hook(app: &str, body: &[u8], delivery: &str, secret: &str) -> Request<Body> {
    Request::post(format!("/hooks/{app}"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", skiff_edge_core::github_signature(secret.as_bytes(), body))
        .body(Body::from(body.to_vec()))
        .unwrap()
}

fn dispatch_for(app: &str, id: &str) -> Dispatch {
    let event = Event {
        provider: Provider::StandardWebhooks,
        kind: EventKind::Custom { event_type: "deploy".into(), source: None },
        name: "deploy".into(),
        delivery_id: id.into(),
        repository: None,
        git_ref: Some("refs/heads/main".into()),
        branch: Some("main".into()),
        tag: None,
        before: None,
        after: Some("abc".into()),
        deleted: false,
        pull_request: None,
        changed_paths: None,
        sender: None,
        body: json!({"type": "deploy"}),
    };
    Dispatch { id: format!("{id}:{app}"), app: app.into(), environment: None, reason: "test".into(), event }
}

fn signed(d: &Dispatch, key: &str, at: i64) -> Request<Body> {
    let signed = sign_dispatch(d, &Secret::new(key), at);
    let mut b = Request::post("/v1/dispatch");
    for (k, v) in &signed.headers {
        b = b.header(k, v);
    }
    b.body(Body::from(signed.body)).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn wait_for(s: &Shared, id: i64, want: &[&str]) -> skiff_server::store::Run {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = s.store.run(id).unwrap().unwrap();
        if want.contains(&r.status.as_str()) {
            return r;
        }
        assert!(Instant::now() < deadline, "run {id} stayed {} (wanted {want:?}): {:?}", r.status, r.error);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts the scheduler for state built with `shared` (the `oneshot` tests use no socket).
fn spawn_scheduler(s: &Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(s.scheduler.clone().run())
}

#[test]
fn store_migrates_and_dedupes_dispatch_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("skiff.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), skiff_server::store::MIGRATIONS.len() as i64);
    let run =
        NewRun { app: "web".into(), trigger: "push".into(), dispatch_id: Some("d-1:web".into()), ..NewRun::default() };
    let a = store.insert_run(&run).unwrap();
    let b = store.insert_run(&run).unwrap();
    assert!(!a.duplicate && b.duplicate);
    assert_eq!(a.id, b.id);
    drop(store);
    // Reopening migrates nothing and keeps the run.
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.count_runs().unwrap(), 1);
    let mode: String = rusqlite_journal_mode(&path);
    assert_eq!(mode, "wal");
}

fn rusqlite_journal_mode(path: &Path) -> String {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn dispatch_is_verified_stored_and_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let s = shared(dir.path(), "");
    let d = dispatch_for("web", "msg-1");

    let (st, body) = call(&s, signed(&d, DISPATCH_KEY, now())).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_i64().unwrap();
    // Committed before the answer: a second connection sees it.
    let other = SqliteStore::open(&dir.path().join("skiff.db")).unwrap();
    assert_eq!(other.run(id).unwrap().unwrap().status, RunStatus::Queued);

    let (st, again) = call(&s, signed(&d, DISPATCH_KEY, now())).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(again["id"].as_i64(), Some(id));
    assert_eq!(again["duplicate"], true);
    assert_eq!(s.store.count_runs().unwrap(), 1);

    let (st, err) = call(&s, signed(&d, "whsec_d3Jvbmcta2V5", now())).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(err["error"].as_str().unwrap().contains("does not match"), "{err}");

    let (st, err) = call(&s, signed(&dispatch_for("web", "msg-2"), DISPATCH_KEY, now() - 3600)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(err["error"].as_str().unwrap().contains("timestamp"), "{err}");

    let (st, err) = call(&s, signed(&dispatch_for("nope", "msg-3"), DISPATCH_KEY, now())).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(err["error"].as_str().unwrap().contains("not configured"));

    let big = Request::post("/v1/dispatch").body(Body::from(vec![b'x'; 4 << 20])).unwrap();
    let (st, err) = call(&s, big).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(err["error"].as_str().unwrap().contains("over the limit"), "{err}");
}

/// Rotating the dispatch key: while `dispatch-key-previous` is set, masters that still sign
/// with the old key are accepted; any other key is not.
#[tokio::test]
async fn the_previous_dispatch_key_verifies_during_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let old = "whsec_b2xkLWRpc3BhdGNoLWtleQ==";
    let s = Shared::open(
        config(dir.path(), "", &format!("dispatch-key-previous = \"{old}\"")),
        Arc::new(Scripted::new()),
        Role::All,
    )
    .unwrap();
    let (st, body) = call(&s, signed(&dispatch_for("web", "rot-1"), DISPATCH_KEY, now())).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let (st, body) = call(&s, signed(&dispatch_for("web", "rot-2"), old, now())).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let (st, _) = call(&s, signed(&dispatch_for("web", "rot-3"), "whsec_d3Jvbmcta2V5", now())).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    let text = config_text(dir.path(), "", "").replace(&format!("dispatch-key = \"{DISPATCH_KEY}\""), "");
    let err = ServeConfig::from_toml(&format!("dispatch-key-previous = \"{old}\"\n{text}"), Path::new("/"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("without dispatch-key"), "{err}");
}

#[tokio::test]
async fn webhooks_are_verified_matched_and_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let s = shared(dir.path(), "");
    let body = push_body("main", "a");
    let (st, r) = call(&s, github_hook("web", &body, "gh-1", WEBHOOK_SECRET)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{r}");
    let id = r["runs"][0]["id"].as_i64().unwrap();
    let (st, r) = call(&s, github_hook("web", &body, "gh-1", WEBHOOK_SECRET)).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(r["runs"][0]["id"].as_i64(), Some(id));
    assert!(r["message"].as_str().unwrap().contains("already accepted"));

    let (st, r) = call(&s, github_hook("web", &push_body("feature", "b"), "gh-2", WEBHOOK_SECRET)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(r["message"].as_str().unwrap().starts_with("ignored"), "{r}");

    let (st, _) = call(&s, github_hook("web", &body, "gh-3", "wrong")).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = call(&s, github_hook("missing", &body, "gh-4", WEBHOOK_SECRET)).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let huge = vec![b' '; (1 << 20) + 1];
    let (st, _) = call(&s, github_hook("web", &huge, "gh-5", WEBHOOK_SECRET)).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(s.store.count_runs().unwrap(), 1);

    // `--role host` serves no webhooks.
    let host = Shared::new(
        config(dir.path(), "", ""),
        s.store.clone(),
        s.queue.clone(),
        s.logs.clone(),
        Arc::new(Scripted::new()),
        Role::Host,
    )
    .unwrap();
    let (st, _) = call(&host, github_hook("web", &body, "gh-6", WEBHOOK_SECRET)).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

/// `/hooks/{app}` takes a webhook in through the edge core's `accept`, as both edge masters do:
/// a ping gets the masters' own answer, and no run.
#[tokio::test]
async fn a_ping_is_answered_as_the_edge_masters_answer_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = shared(dir.path(), "");
    let body = br#"{"zen":"Design for failure.","hook_id":7}"#;
    let mut req = github_hook("web", body, "ping-1", WEBHOOK_SECRET);
    req.headers_mut().insert("x-github-event", "ping".parse().unwrap());
    let (st, r) = call(&s, req).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let app: skiff_edge_core::App = serde_json::from_value(json!({"name": "web"})).unwrap();
    let headers = skiff_edge_core::Headers::from_pairs([
        ("x-github-event", "ping"),
        ("x-github-delivery", "ping-1"),
        ("x-hub-signature-256", &skiff_edge_core::github_signature(WEBHOOK_SECRET.as_bytes(), body)),
    ]);
    let edge = skiff_edge_core::accept(
        &skiff_edge_core::Secret::new(WEBHOOK_SECRET),
        &Default::default(),
        std::slice::from_ref(&app),
        &headers,
        body,
        now(),
    );
    assert_eq!(r["message"].as_str(), Some(edge.message().as_str()), "{r}");
    assert!(r["message"].as_str().unwrap().starts_with("pong"), "{r}");
    assert_eq!(r["delivery_id"], "ping-1");
    assert_eq!(r["runs"], json!([]));
    assert_eq!(s.store.count_runs().unwrap(), 0);
}

#[tokio::test]
async fn tokens_are_required_and_scoped_to_apps() {
    let dir = tempfile::tempdir().unwrap();
    let s = shared(dir.path(), "");
    let (st, err) = call(&s, get("/v1/runs", None)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(err["error"].as_str().unwrap().contains("Bearer"));
    let (st, _) = call(&s, get("/v1/runs", Some("guess"))).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    let (st, other) = call(&s, post("/v1/apps/other/runs", Some(TOKEN_ALL), json!({}))).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{other}");
    let other_id = other["id"].as_i64().unwrap();
    let (st, web) =
        call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({"ref": "main", "inputs": {"k": "v"}}))).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{web}");
    let web_id = web["id"].as_i64().unwrap();

    // The web token cannot see, follow, cancel or start the other app's runs.
    for path in [
        format!("/v1/runs/{other_id}"),
        format!("/v1/runs/{other_id}/logs"),
        format!("/v1/runs/{other_id}/logs/stream"),
    ] {
        let (st, _) = call(&s, get(&path, Some(TOKEN_WEB))).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}");
    }
    let (st, _) = call(&s, post(&format!("/v1/runs/{other_id}/cancel"), Some(TOKEN_WEB), json!({}))).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(&s, post("/v1/apps/other/runs", Some(TOKEN_WEB), json!({}))).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let (_, list) = call(&s, get("/v1/runs", Some(TOKEN_WEB))).await;
    let ids: Vec<i64> = list["runs"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![web_id]);
    let (_, list) = call(&s, get("/v1/runs?app=other", Some(TOKEN_WEB))).await;
    assert!(list["runs"].as_array().unwrap().is_empty());
    let (_, list) = call(&s, get("/v1/runs?status=queued", Some(TOKEN_ALL))).await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 2);
    let (st, err) = call(&s, get("/v1/runs?status=bogus", Some(TOKEN_ALL))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(err["error"].as_str().unwrap().contains("unknown status"));
    // Every status the document lists filters, `skipped` included.
    let (st, list) = call(&s, get("/v1/runs?status=skipped", Some(TOKEN_ALL))).await;
    assert_eq!((st, list["runs"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "{list}");

    let (_, run) = call(&s, get(&format!("/v1/runs/{web_id}"), Some(TOKEN_WEB))).await;
    assert_eq!(run["ref"], "refs/heads/main");
    assert_eq!(run["inputs"]["k"], "v");
    assert_eq!(run["requested_by"], "web-ci");

    // Bad bodies are explained.
    let (st, err) = call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({"reff": "x"}))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(err["error"].as_str().unwrap().contains("unknown field `reff`"), "{err}");
    // An Idempotency-Key makes a retried request give the same run.
    let req = || {
        Request::post("/v1/apps/web/runs")
            .header("authorization", format!("Bearer {TOKEN_WEB}"))
            .header("idempotency-key", "k-1")
            .body(Body::from("{}"))
            .unwrap()
    };
    let (st1, a) = call(&s, req()).await;
    let (st2, b) = call(&s, req()).await;
    assert_eq!((st1, st2), (StatusCode::ACCEPTED, StatusCode::OK));
    assert_eq!(a["id"], b["id"]);
}

/// What the API answers about a webhook's run that finished, as `skiff runs` shows it: the
/// webhook's answer, the run with its jobs and steps, its logs, and the list of runs.
#[tokio::test]
async fn snapshot_of_the_api_bodies_of_a_finished_webhook_run() {
    let dir = tempfile::tempdir().unwrap();
    let s = shared(dir.path(), "");
    let _sched = spawn_scheduler(&s);
    let (st, accepted) = call(&s, github_hook("web", &push_body("main", "a"), "gh-1", WEBHOOK_SECRET)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{accepted}");
    let id = accepted["runs"][0]["id"].as_i64().unwrap();
    wait_for(&s, id, &["success"]).await;
    json_snapshot!("api_webhook_accepted", accepted);
    for (name, path) in [
        ("api_run", format!("/v1/runs/{id}")),
        ("api_run_logs", format!("/v1/runs/{id}/logs")),
        ("api_runs", "/v1/runs".to_string()),
    ] {
        let (st, body) = call(&s, get(&path, Some(TOKEN_WEB))).await;
        assert_eq!(st, StatusCode::OK, "{path}: {body}");
        json_snapshot!(name, body);
    }
}

/// Bad requests are answered with a JSON body that says what to fix.
#[tokio::test]
async fn snapshot_of_the_error_bodies_of_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let s = shared(dir.path(), "");
    for (name, req, want) in [
        (
            "api_error_unknown_field",
            post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({"reff": "main"})),
            StatusCode::BAD_REQUEST,
        ),
        ("api_error_bad_id", get("/v1/runs/x", Some(TOKEN_WEB)), StatusCode::BAD_REQUEST),
        ("api_error_no_token", get("/v1/runs", None), StatusCode::UNAUTHORIZED),
    ] {
        let (st, body) = call(&s, req).await;
        assert_eq!(st, want, "{name}: {body}");
        json_snapshot!(name, body);
    }
}

#[tokio::test]
async fn openapi_document_is_current() {
    let dir = tempfile::tempdir().unwrap();
    let s = shared(dir.path(), "");
    let (st, doc) = call(&s, get("/v1/openapi.json", None)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(doc["paths"]["/v1/runs/{id}/logs/stream"].is_object());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let current = skiff_server::openapi::json();
    if std::env::var_os("SKIFF_BLESS").is_some() {
        std::fs::write(&path, &current).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == current,
        "docs/openapi.json is out of date: run `SKIFF_BLESS=1 cargo test -p skiff --test all serve::openapi`"
    );
}

// Found by scripts/api-check.sh (schemathesis): the hook of an app with no webhook secret
// answered 500, as if the host had failed.
#[tokio::test]
async fn a_hook_for_an_app_that_takes_no_webhooks_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let s = shared(dir.path(), "");
    let (st, err) = call(&s, github_hook("other", &push_body("main", "a"), "gh-1", WEBHOOK_SECRET)).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{err}");
    assert!(err["error"].as_str().unwrap().contains("webhook-secret"), "{err}");
}

// Found by scripts/api-check.sh (schemathesis): the document said each event of a log stream
// was a string; it has a name, data and (for log lines) an id.
#[tokio::test]
async fn log_stream_events_are_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let s = shared(dir.path(), "");
    let _sched = spawn_scheduler(&s);
    let (_, r) = call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({"ref": "main"}))).await;
    let id = r["id"].as_i64().unwrap();
    wait_for(&s, id, &["success"]).await;
    // The run is over, so the stream ends after its stored lines and `end`.
    let resp = app(s.clone()).oneshot(get(&format!("/v1/runs/{id}/logs/stream"), Some(TOKEN_WEB))).await.unwrap();
    let text = String::from_utf8(axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap();

    let doc: Value = serde_json::from_str(&skiff_server::openapi::json()).unwrap();
    let documented = &doc["paths"]["/v1/runs/{id}/logs/stream"]["get"]["responses"]["200"]["content"];
    assert_eq!(documented["text/event-stream"]["schema"]["$ref"], "#/components/schemas/StreamEvent");
    let kinds = doc["components"]["schemas"]["StreamEvent"]["oneOf"].as_array().cloned().unwrap_or_default();
    let mut names = Vec::new();
    for event in text.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let fields: serde_json::Map<String, Value> =
            event.lines().filter_map(|l| l.split_once(": ")).map(|(k, v)| (k.to_string(), v.into())).collect();
        let kind = kinds.iter().find(|k| k["properties"]["event"]["enum"][0] == fields["event"]);
        let kind = kind.unwrap_or_else(|| panic!("undocumented event {event:?}"));
        for name in kind["required"].as_array().unwrap() {
            assert!(fields.contains_key(name.as_str().unwrap()), "{event:?} lacks {name}");
        }
        for name in fields.keys() {
            assert!(kind["properties"].get(name).is_some(), "{event:?}: `{name}` is not documented");
        }
        names.push(fields["event"].as_str().unwrap().to_string());
    }
    assert_eq!(names.first().map(String::as_str), Some("log"), "{text}");
    assert_eq!(names.last().map(String::as_str), Some("end"), "{text}");
}

// Found by schemathesis with every check on: a bad id or query string was answered in plain
// text, and 400 and 401 were missing from the document.
#[tokio::test]
async fn bad_ids_and_query_strings_are_explained_in_json_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let s = shared(dir.path(), "");
    for path in ["/v1/runs/x", "/v1/runs/99999999999999999999/logs", "/v1/runs?limit=x", "/v1/runs/1/logs?after=-1"] {
        let (st, err) = call(&s, get(path, Some(TOKEN_ALL))).await;
        assert_eq!((st, &err["status"]), (StatusCode::BAD_REQUEST, &json!(400)), "{path}: {err}");
    }
    let doc: Value = serde_json::from_str(&skiff_server::openapi::json()).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let answers = |code: &str| op["responses"].get(code).is_some();
            assert!(op.get("security").is_none() || answers("401"), "{method} {path} does not list 401");
            assert!(!path.contains("{id}") || answers("400"), "{method} {path} does not list 400");
        }
    }
}

/// A GitHub push to `main`, signed, posted to `/hooks/web` over the socket; the new run's id.
async fn push_over_socket(http: &reqwest::Client, base: &str, tag: &str) -> i64 {
    let body = push_body("main", tag);
    let resp = http
        .post(format!("{base}/hooks/web"))
        .header("x-github-event", "push")
        .header("x-github-delivery", format!("{tag}-1"))
        .header("x-hub-signature-256", skiff_edge_core::github_signature(WEBHOOK_SECRET.as_bytes(), &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["runs"][0]["id"].as_i64().unwrap()
}

#[tokio::test]
async fn webhook_to_run_to_live_logs_over_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path(), "", ""), Arc::new(Scripted::new()), Role::All).await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();

    let id = push_over_socket(&http, &base, "e2e").await;

    // Follow the logs over SSE until the run ends.
    let mut stream = http
        .get(format!("{base}/v1/runs/{id}/logs/stream"))
        .bearer_auth(TOKEN_WEB)
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let mut parser = skiff_server::sse::SseParser::default();
    let (mut logs, mut end) = (Vec::new(), None);
    use futures::StreamExt as _;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while end.is_none() {
        let chunk =
            tokio::time::timeout_at(deadline, stream.next()).await.expect("the stream ended in time").unwrap().unwrap();
        for (event, data) in parser.feed(&chunk) {
            let v: Value = serde_json::from_str(&data).unwrap();
            match event.as_str() {
                "log" => logs.push(v["text"].as_str().unwrap().to_string()),
                "end" => end = Some(v["status"].as_str().unwrap().to_string()),
                _ => {}
            }
        }
    }
    assert_eq!(end.as_deref(), Some("success"));
    assert!(logs.iter().any(|l| l.starts_with("hello main token=")), "{logs:?}");
    // The secret is masked before it is stored or streamed.
    assert!(!logs.iter().any(|l| l.contains("tok-9f8e7d")), "{logs:?}");

    let run: Value =
        http.get(format!("{base}/v1/runs/{id}")).bearer_auth(TOKEN_WEB).send().await.unwrap().json().await.unwrap();
    assert_eq!(run["status"], "success");
    assert_eq!(run["trigger"], "push");
    assert_eq!(run["jobs"][0]["steps"][0]["id"], "greet");
    assert_eq!(run["jobs"][0]["steps"][0]["status"], "success");
    assert!(run["jobs"][0]["steps"][0]["usage"]["wall_ms"].is_i64());
    assert!(run["usage"]["log_bytes"].as_i64().unwrap() > 0);
    let stored: Value = http
        .get(format!("{base}/v1/runs/{id}/logs"))
        .bearer_auth(TOKEN_WEB)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["complete"], true);
    assert_eq!(stored["lines"].as_array().unwrap().len(), logs.len());
    // The workspace is removed after the run; the database files are in the data directory.
    assert!(!dir.path().join("work").join(id.to_string()).exists());
    server.halt();
}

#[tokio::test]
async fn concurrency_group_cancels_the_run_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "";
    let text = config_text(dir.path(), extra, "").replace(
        "name: web\n",
        "name: web\n    concurrency:\n      group: deploy-${{ event.ref }}\n      cancel-in-progress: true\n",
    );
    let s = Shared::open(
        ServeConfig::from_toml(&text, Path::new("/"), None).unwrap(),
        Arc::new(Scripted::new()),
        Role::All,
    )
    .unwrap();
    let _sched = spawn_scheduler(&s);
    let (_, a) =
        call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({"ref": "main", "inputs": {"hang": "true"}}))).await;
    let a = a["id"].as_i64().unwrap();
    wait_for(&s, a, &["running"]).await;
    let (_, b) = call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({"ref": "main"}))).await;
    let b = b["id"].as_i64().unwrap();
    let ra = wait_for(&s, a, &["cancelled"]).await;
    assert!(ra.error.as_deref().unwrap().contains("superseded"), "{:?}", ra.error);
    assert_eq!(ra.concurrency_group.as_deref(), Some("web/deploy-refs/heads/main"));
    wait_for(&s, b, &["success"]).await;
    // Another ref is another group: both run.
    let (_, c) =
        call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({"ref": "dev", "inputs": {"sleep_ms": "50"}}))).await;
    let (_, d) = call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({"ref": "main"}))).await;
    wait_for(&s, c["id"].as_i64().unwrap(), &["success"]).await;
    wait_for(&s, d["id"].as_i64().unwrap(), &["success"]).await;
}

#[tokio::test]
async fn limits_queue_runs_and_cancel_and_rerun_work() {
    let dir = tempfile::tempdir().unwrap();
    let s = shared(dir.path(), "max-concurrent-runs = 1");
    let _sched = spawn_scheduler(&s);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (_, r) = call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({"inputs": {"sleep_ms": "100"}}))).await;
        ids.push(r["id"].as_i64().unwrap());
    }
    // One at a time: while the first runs, the others wait.
    wait_for(&s, ids[0], &["running"]).await;
    assert_eq!(s.store.run(ids[1]).unwrap().unwrap().status, RunStatus::Queued);
    // Cancel a queued run.
    let (st, r) = call(&s, post(&format!("/v1/runs/{}/cancel", ids[2]), Some(TOKEN_WEB), json!({}))).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(r["status"], "cancelled");
    for id in &ids[..2] {
        wait_for(&s, *id, &["success"]).await;
    }
    let (st, _) = call(&s, post(&format!("/v1/runs/{}/cancel", ids[0]), Some(TOKEN_WEB), json!({}))).await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (a, b) = (s.store.run(ids[0]).unwrap().unwrap(), s.store.run(ids[1]).unwrap().unwrap());
    assert!(b.started_at.unwrap() >= a.finished_at.unwrap(), "the app limit of 1 was not kept");

    // Cancel a running run.
    let (_, r) = call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({"inputs": {"hang": "true"}}))).await;
    let hang = r["id"].as_i64().unwrap();
    wait_for(&s, hang, &["running"]).await;
    let (st, r) = call(&s, post(&format!("/v1/runs/{hang}/cancel"), Some(TOKEN_ALL), json!({}))).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["status"], "cancelled");
    assert_eq!(r["error"], "cancelled by `admin`");

    // A failed run, rerun: whole, or only its failed jobs.
    let (_, r) = call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({"inputs": {"fail": "true"}}))).await;
    let failed = r["id"].as_i64().unwrap();
    let run = wait_for(&s, failed, &["failure"]).await;
    assert!(run.error.as_deref().unwrap().contains("failing on purpose"), "{:?}", run.error);
    let (st, r) =
        call(&s, post(&format!("/v1/runs/{failed}/rerun"), Some(TOKEN_WEB), json!({"failed_only": true}))).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{r}");
    let again = s.store.run(r["id"].as_i64().unwrap()).unwrap().unwrap();
    assert_eq!((again.number, again.attempt, again.parent_id), (run.number, 2, Some(failed)));
    assert!(again.job.is_some(), "only the failed job runs again");
    wait_for(&s, again.id, &["failure"]).await;
    let (st, err) =
        call(&s, post(&format!("/v1/runs/{}/rerun", ids[0]), Some(TOKEN_WEB), json!({"failed_only": true}))).await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert!(err["error"].as_str().unwrap().contains("no failed jobs"));
    let (st, _) = call(&s, post(&format!("/v1/runs/{}/rerun", ids[0]), Some(TOKEN_WEB), json!({}))).await;
    assert_eq!(st, StatusCode::ACCEPTED);
}

/// The scheduler takes runs through the queue's leases: a run left running under a lease that
/// expired (its host died) is taken over and run again as its next attempt, once; one
/// interrupted twice fails with the reason; a completed one stays as it ended.
#[tokio::test]
async fn runs_whose_lease_expired_are_taken_over_once_and_completed_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let s = shared(dir.path(), "");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (_, r) = call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({}))).await;
        let id = r["id"].as_i64().unwrap();
        s.store.set_prepared(id, None, false).unwrap();
        ids.push(id);
    }
    let (died, twice, done) = (ids[0], ids[1], ids[2]);
    // Hosts that took a run and died at once: their leases have expired.
    s.queue.lease(died, "a host that died", Duration::ZERO).unwrap().unwrap();
    s.queue.lease(twice, "a host that died", Duration::ZERO).unwrap().unwrap();
    s.queue.lease(twice, "another that died", Duration::ZERO).unwrap().unwrap();
    s.queue.lease(done, "a host that finished", Duration::ZERO).unwrap().unwrap();
    assert!(s.queue.complete(done, "a host that finished", RunStatus::Failure, Some("it failed there")).unwrap());

    let _sched = spawn_scheduler(&s);
    let run = wait_for(&s, died, &["success"]).await;
    assert_eq!((run.attempt, run.interruptions), (2, 1));
    let run = wait_for(&s, twice, &["failure"]).await;
    assert!(run.error.as_deref().unwrap().contains("second time"), "{:?}", run.error);
    let run = s.store.run(done).unwrap().unwrap();
    assert_eq!((run.status, run.attempt, run.error.as_deref()), (RunStatus::Failure, 1, Some("it failed there")));
    // This host completed the run it took over: the lease is gone with it.
    assert!(!s.queue.extend(died, s.scheduler.owner(), Duration::from_secs(60)).unwrap());
}

#[tokio::test]
async fn logs_are_capped_per_step_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let top = "log-bytes-per-step = 600";
    let s = Shared::open(config(dir.path(), "", top), Arc::new(Scripted::new()), Role::All).unwrap();
    let _sched = spawn_scheduler(&s);
    let (_, r) = call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({"inputs": {"lines": "100"}}))).await;
    let id = r["id"].as_i64().unwrap();
    wait_for(&s, id, &["success"]).await;
    let (_, logs) = call(&s, get(&format!("/v1/runs/{id}/logs"), Some(TOKEN_WEB))).await;
    let lines = logs["lines"].as_array().unwrap();
    assert!(lines.len() < 20, "{} lines kept", lines.len());
    assert!(lines.last().unwrap()["text"].as_str().unwrap().contains("over the limit of 600 bytes"));
    let (_, run) = call(&s, get(&format!("/v1/runs/{id}"), Some(TOKEN_WEB))).await;
    assert_eq!(run["usage"]["log_bytes"], 600);
    // A new process reads the same logs.
    let fresh = skiff_server::logs::FsLogStore::new(dir.path().join("logs"));
    use skiff_server::logs::LogStore as _;
    assert_eq!(fresh.read(id, 0).unwrap().len(), lines.len());
    assert_eq!(fresh.read(id, 2).unwrap()[0].seq, 3);
}

#[tokio::test]
async fn a_crash_leaves_runs_that_are_retried_once_and_queued_runs_that_start() {
    let dir = tempfile::tempdir().unwrap();
    // First life: one run hangs, one waits behind it (limit 1); then the host "dies".
    let server =
        start(config(dir.path(), "max-concurrent-runs = 1", ""), Arc::new(Scripted::new()), Role::All).await.unwrap();
    let s = server.shared.clone();
    let (_, a) = call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({"inputs": {"sleep_ms": "60000"}}))).await;
    let (_, b) = call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({}))).await;
    let (a, b) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());
    wait_for(&s, a, &["running"]).await;
    server.halt();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.store.run(a).unwrap().unwrap().status, RunStatus::Running);
    assert_eq!(s.store.run(b).unwrap().unwrap().status, RunStatus::Queued);
    drop(s);

    // Second life: the running run is retried (attempt 2) and the queued one starts. The
    // retried run hangs again, and the host dies again.
    let text = config_text(dir.path(), "max-concurrent-runs = 1", "");
    let server =
        start(ServeConfig::from_toml(&text, Path::new("/"), None).unwrap(), Arc::new(Scripted::new()), Role::All)
            .await
            .unwrap();
    let s = server.shared.clone();
    let ra = wait_for(&s, a, &["running"]).await;
    assert_eq!((ra.attempt, ra.interruptions), (2, 1));
    server.halt();
    drop(s);

    // Third life: retried once already, so it fails with the reason; the queued run runs.
    let server =
        start(ServeConfig::from_toml(&text, Path::new("/"), None).unwrap(), Arc::new(Scripted::new()), Role::All)
            .await
            .unwrap();
    let s = server.shared.clone();
    let ra = wait_for(&s, a, &["failure"]).await;
    assert!(ra.error.as_deref().unwrap().contains("second time"), "{:?}", ra.error);
    wait_for(&s, b, &["success"]).await;
    server.halt();
}

/// Ctrl-C or SIGTERM drains: the run in progress finishes, nothing new starts (a run
/// accepted meanwhile waits, stored, for the next start), and `/healthz` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_lets_runs_in_progress_finish_and_starts_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path(), "", ""), Arc::new(Scripted::new()), Role::All).await.unwrap();
    let s = server.shared.clone();
    let (_, a) = call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({"inputs": {"sleep_ms": "1500"}}))).await;
    let a = a["id"].as_i64().unwrap();
    wait_for(&s, a, &["running"]).await;
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (health, _) = call(&s, get("/healthz", None)).await;
        let (status, b) = call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({}))).await;
        assert!(status.is_success(), "{status}: {b}");
        (health, b["id"].as_i64().unwrap())
    };
    let (left, (health, b)) = tokio::join!(server.drain(Duration::from_secs(60)), meanwhile);
    assert_eq!(left, 0);
    assert_eq!(health, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(s.store.run(a).unwrap().unwrap().status, RunStatus::Success);
    assert_eq!(s.store.run(b).unwrap().unwrap().status, RunStatus::Queued);
    server.stop().await;
    drop(s);

    // A run that outlasts the drain is left for the next start, as after a crash.
    let server = start(config(dir.path(), "", ""), Arc::new(Scripted::new()), Role::All).await.unwrap();
    let s = server.shared.clone();
    wait_for(&s, b, &["success"]).await;
    let (_, c) = call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({"inputs": {"hang": "true"}}))).await;
    let c = c["id"].as_i64().unwrap();
    wait_for(&s, c, &["running"]).await;
    assert_eq!(server.drain(Duration::from_millis(300)).await, 1);
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.store.run(c).unwrap().unwrap().status, RunStatus::Running);
}

/// The real binary on SIGTERM: drains (nothing runs here), says so, and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_skiff_serve_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServeProcess::start(dir.path(), "").await;
    let status = server.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn cron_schedules_fire_once_per_instant() {
    use chrono::TimeZone as _;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), "", "").replace(
        r#"on = { push = { branches = ["main"] } }"#,
        r#"on = { push = {}, schedule = [{ cron = "0 3 * * *" }] }"#,
    );
    let cfg = ServeConfig::from_toml(&text, Path::new("/"), None).unwrap();
    let s = Shared::open(cfg, Arc::new(Scripted::new()), Role::All).unwrap();
    let t0 = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 2, 0, 0).unwrap();
    let fire = |t| skiff_server::cron::fire_due(&s, t).unwrap();
    assert!(fire(t0).is_empty(), "the first sight only starts the clock");
    assert!(fire(t0 + chrono::Duration::minutes(59)).is_empty());
    let ids = fire(t0 + chrono::Duration::minutes(61));
    assert_eq!(ids.len(), 1);
    assert!(fire(t0 + chrono::Duration::minutes(62)).is_empty());
    // Down for three days: one catch-up run, not three.
    assert_eq!(fire(t0 + chrono::Duration::days(3) + chrono::Duration::hours(2)).len(), 1);
    let run = s.store.run(ids[0]).unwrap().unwrap();
    assert_eq!(run.trigger, "schedule");
    assert_eq!(run.dispatch_id.as_deref(), Some("cron:web:0 3 * * *:1767236400"));
    assert_eq!(
        skiff_server::cron::next_due(&s, t0).unwrap(),
        chrono::Utc.with_ymd_and_hms(2026, 1, 1, 3, 0, 0).unwrap()
    );
    let bad = config_text(dir.path(), "", "")
        .replace(r#"on = { push = { branches = ["main"] } }"#, r#"on = { schedule = [{ cron = "61 * * * *" }] }"#);
    let err = ServeConfig::from_toml(&bad, Path::new("/"), None).unwrap_err();
    assert!(format!("{err:#}").contains("not a cron expression"), "{err:#}");
}

#[test]
fn sealed_config_values_open_with_the_master_key_only() {
    use skiff_server::crypto::MasterKey;
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = MasterKey::generate();
    let sealed = key.seal(b"tok-9f8e7d");
    let text = config_text(dir.path(), "", "").replace("\"tok-9f8e7d\"", &format!("\"{sealed}\""));
    let cfg = ServeConfig::from_toml(&text, Path::new("/"), Some(&key)).unwrap();
    assert_eq!(cfg.apps["web"].secrets["DEPLOY_TOKEN"], "tok-9f8e7d");
    assert!(!format!("{:?}", cfg.apps["web"].webhook_secret).contains(WEBHOOK_SECRET));
    let (other, _) = MasterKey::generate();
    let err = ServeConfig::from_toml(&text, Path::new("/"), Some(&other)).unwrap_err();
    assert!(format!("{err:#}").contains("does not open"), "{err:#}");
    let err = ServeConfig::from_toml(&text, Path::new("/"), None).unwrap_err();
    assert!(format!("{err:#}").contains("no master key"), "{err:#}");
}

#[test]
fn example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/skiff.toml");
    // Its `env:` values are read at startup; here they are replaced by plain stand-ins.
    let text = std::fs::read_to_string(&path).unwrap().replace("\"env:", "\"stand-in-for-");
    let cfg = ServeConfig::from_toml(&text, path.parent().unwrap(), None).unwrap();
    assert!(cfg.apps.contains_key("hello"));
}

/// Reads an SSE stream until `end`; returns the log texts and the final status.
async fn follow_sse(http: &reqwest::Client, base: &str, id: i64, token: &str) -> (Vec<String>, String) {
    use futures::StreamExt as _;
    let mut stream =
        http.get(format!("{base}/v1/runs/{id}/logs/stream")).bearer_auth(token).send().await.unwrap().bytes_stream();
    let mut parser = skiff_server::sse::SseParser::default();
    let mut logs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let chunk =
            tokio::time::timeout_at(deadline, stream.next()).await.expect("the run ended in time").unwrap().unwrap();
        for (event, data) in parser.feed(&chunk) {
            let v: Value = serde_json::from_str(&data).unwrap();
            match event.as_str() {
                "log" => logs.push(v["text"].as_str().unwrap().to_string()),
                "end" => return (logs, v["status"].as_str().unwrap().to_string()),
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builtin_diag_step_runs_for_a_webhook_with_the_local_executor() {
    use skiff_runtime::{EngineOptions, Runtime};
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let runtime =
        Runtime::new(EngineOptions { pool_size: 8, ..Default::default() }, Some(cache.path().to_path_buf())).unwrap();
    let executor = Arc::new(skiff_runtime::executor::LocalExecutor::new(Arc::new(runtime)));
    let text = config_text(dir.path(), "", "");
    let server =
        start(ServeConfig::from_toml(&text, Path::new("/"), None).unwrap(), executor, Role::All).await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let id = push_over_socket(&http, &base, "diag").await;
    let (logs, status) = follow_sse(&http, &base, id, TOKEN_WEB).await;
    let run: Value =
        http.get(format!("{base}/v1/runs/{id}")).bearer_auth(TOKEN_WEB).send().await.unwrap().json().await.unwrap();
    assert_eq!(status, "success", "{logs:?}\n{run:#}");
    assert!(logs.iter().any(|l| l.contains("wrote") && l.contains("skiff-diag.txt")), "{logs:?}");
    assert!(!logs.iter().any(|l| l.contains("tok-9f8e7d")), "{logs:?}");
    assert_eq!(run["jobs"][0]["steps"][0]["status"], "success");
    // Metering: the runtime's measurements reach the API.
    assert!(run["usage"]["peak_memory_bytes"].as_i64().unwrap_or(0) > 0, "{run:#}");
    assert!(run["usage"]["cpu_ms"].as_i64().is_some(), "{run:#}");
    assert!(run["usage"]["egress_bytes"].as_i64().is_some(), "{run:#}");
    server.halt();
}

/// The real `skiff serve` binary on a free port, with the test configuration.
pub(crate) struct ServeProcess {
    pub base: String,
    cfg: std::path::PathBuf,
    child: std::process::Child,
}

impl ServeProcess {
    pub async fn start(data: &Path, top: &str) -> Self {
        Self::start_with(data, |port| {
            config_text(data, "", top).replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""))
        })
        .await
    }

    /// The server with the config `config(port)` gives for a free port.
    pub async fn start_with(data: &Path, config: impl FnOnce(u16) -> String) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let text = config(port);
        std::fs::create_dir_all(data).unwrap();
        let cfg = data.join("skiff.toml");
        std::fs::write(&cfg, text).unwrap();
        let child = Self::spawn(&cfg);
        let me = Self { base: format!("http://127.0.0.1:{port}"), cfg, child };
        me.wait_up().await;
        me
    }

    fn spawn(cfg: &Path) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["serve", "--config"])
            .arg(cfg)
            .stdout(std::process::Stdio::null())
            // Beside its config, for a failing test to be read.
            .stderr(std::fs::File::create(cfg.with_file_name("serve.log")).unwrap())
            .spawn()
            .unwrap()
    }

    async fn wait_up(&self) {
        let http = reqwest::Client::new();
        for _ in 0..600 {
            if http.get(format!("{}/healthz", self.base)).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("skiff serve did not come up");
    }

    /// SIGKILL, then wait for the process to be gone.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait (at most 30 s) for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "skiff serve did not stop within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub async fn restart(&mut self) {
        self.child = Self::spawn(&self.cfg);
        self.wait_up().await;
    }

    /// Every run the server has, as the API lists them.
    pub async fn runs(&self) -> Vec<Value> {
        let list: Value = reqwest::Client::new()
            .get(format!("{}/v1/runs?limit=500", self.base))
            .bearer_auth(TOKEN_ALL)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list["runs"].as_array().unwrap().clone()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill -9` of the real `skiff serve` after it accepted a burst of dispatches: after a
/// restart every accepted run is there and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_accepted_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServeProcess::start(dir.path(), "max-concurrent-runs = 1").await;
    let http = reqwest::Client::new();
    let n = 40;
    for i in 0..n {
        let signed = sign_dispatch(&dispatch_for("web", &format!("kill-{i}")), &Secret::new(DISPATCH_KEY), now());
        let mut req = http.post(format!("{}/v1/dispatch", server.base)).body(signed.body);
        for (k, v) in &signed.headers {
            req = req.header(k, v);
        }
        assert_eq!(req.send().await.unwrap().status(), 202);
    }
    server.kill();
    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let runs = server.runs().await;
        assert_eq!(runs.len(), n, "every accepted run is stored");
        if runs.iter().all(|r| r["status"] == "success") {
            break;
        }
        assert!(Instant::now() < deadline && runs.iter().all(|r| r["status"] != "failure"), "{runs:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn logs_as_text_carry_no_control_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let s = shared(dir.path(), "");
    let _sched = spawn_scheduler(&s);
    let evil = "x\u{1b}[2J\u{1b}]0;title\u{7}\ry";
    let (_, r) = call(&s, post("/v1/apps/web/runs", Some(TOKEN_WEB), json!({"ref": evil}))).await;
    let id = r["id"].as_i64().unwrap();
    wait_for(&s, id, &["success"]).await;
    // JSON keeps the data as it was (escaped by JSON); text is safe for a terminal.
    let (_, logs) = call(&s, get(&format!("/v1/runs/{id}/logs"), Some(TOKEN_WEB))).await;
    assert!(logs["lines"].to_string().contains("\\u001b[2J"), "{logs}");
    for req in [
        get(&format!("/v1/runs/{id}/logs?format=text"), Some(TOKEN_WEB)),
        Request::get(format!("/v1/runs/{id}/logs"))
            .header("authorization", format!("Bearer {TOKEN_WEB}"))
            .header("accept", "text/plain")
            .body(Body::empty())
            .unwrap(),
    ] {
        let resp = app(s.clone()).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
        let text =
            String::from_utf8(axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap();
        assert!(text.contains("y token=***"), "{text:?}");
        assert!(!text.contains(['\u{1b}', '\u{7}', '\r']), "{text:?}");
        assert!(text.lines().all(|l| l.starts_with('[')), "{text:?}");
    }
}

#[test]
fn an_app_s_ca_file_is_read_and_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let text = config_text(dir.path(), &format!("ca-file = \"{}\"", bad.display()), "");
    let err = format!("{:#}", ServeConfig::from_toml(&text, Path::new("/"), None).unwrap_err());
    assert!(err.contains("`ca-file`") && err.contains("no PEM certificate"), "{err}");
    let missing = config_text(dir.path(), "ca-file = \"/nonexistent/ca.pem\"", "");
    let err = format!("{:#}", ServeConfig::from_toml(&missing, Path::new("/"), None).unwrap_err());
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}

/// `skiff serve --log-format json` writes one JSON object per line, for log collectors; the
/// default is text; `RUST_LOG` chooses what is written.
#[test]
fn the_server_logs_json_lines_on_request() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("skiff.toml");
    std::fs::write(&cfg, config_text(dir.path(), "", "")).unwrap();
    let first_line = |format: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["serve", "--log-format", format, "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let line = stderr.lines().map_while(Result::ok).find(|l| l.contains("listening on")).unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        line
    };
    let json: Value = serde_json::from_str(&first_line("json")).expect("a JSON line");
    assert_eq!(json["level"], "INFO", "{json}");
    assert!(json["message"].as_str().unwrap_or_default().starts_with("listening on http://127.0.0.1:"), "{json}");
    assert!(json["timestamp"].is_string(), "{json}");
    let text = first_line("text");
    assert!(text.contains("INFO") && text.contains("listening on http://127.0.0.1:"), "{text}");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
}
