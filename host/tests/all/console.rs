//! The web console in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`, which `scripts/setup.sh` installs) against a server on a
//! real socket, started by the test. Without them the test fails under `CI=true` and is skipped,
//! loudly, elsewhere.
//!
//! Beside the walk through the console, a test each for what must hold without JavaScript, in
//! the dark theme, and by keyboard alone. Screenshots of the main pages go to
//! `target/console-screenshots/`.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::actions::{InputSource as _, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use skiff_server::config::ServeConfig;
use skiff_server::{Role, start};

use crate::support::Scripted;

const ADMIN: &str = "console-admin";
const TOKEN_A: &str = "console-team-a";
const SECRET: &str = "console-hook-secret";

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether Chromium and its WebDriver are installed; fails under `CI=true` when not.
fn browser_present() -> bool {
    let found = ["chromium", "chromedriver"].iter().all(|b| {
        Command::new(b).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    });
    assert!(found || !under_ci(), "chromium and chromedriver are missing under CI=true: run scripts/setup.sh");
    if !found {
        eprintln!("SKIPPED: chromium or chromedriver is missing (scripts/setup.sh installs them)");
    }
    found
}

fn config(data: &Path) -> ServeConfig {
    let text = format!(
        r#"
listen = "127.0.0.1:0"
data = "{data}"

[[tokens]]
name = "admin"
token = "{ADMIN}"
apps = ["*"]

[[tokens]]
name = "team-a"
token = "{TOKEN_A}"
apps = ["web", "flaky", "evil", "manual"]

[[apps]]
name = "web"
repository = "acme/web"
provider = "github"
fetch = false
webhook-secret = "{SECRET}"
on = {{ push = {{ branches = ["main"] }} }}
secrets = {{ DEPLOY_TOKEN = "tok-console-1" }}
pipeline-yaml = """
name: web
jobs:
  build:
    steps:
      - id: slow
        uses: diag
        permissions:
          secrets: [DEPLOY_TOKEN]
          hosts: [api.example.com]
  test:
    needs: [build]
    strategy:
      matrix:
        os: [linux, mac]
    steps:
      - id: check
        uses: diag
"""

[[apps]]
name = "flaky"
pipeline-yaml = """
steps:
  - id: flaky
    uses: diag
"""

[[apps]]
name = "evil"
pipeline-yaml = """
steps:
  - id: evil
    uses: diag
"""

[[apps]]
name = "manual"
badge = "public"
pipeline-yaml = """
on:
  workflow_dispatch:
    inputs:
      greeting:
        type: string
        default: hello
      mode:
        type: choice
        options: [fast, slow]
        default: fast
steps:
  - id: echo
    uses: diag
    with:
      message: "greeting=${{{{ inputs.greeting }}}} mode=${{{{ inputs.mode }}}}"
"""

[[apps]]
name = "other"
pipeline-yaml = """
steps:
  - id: private
    uses: diag
    with:
      message: other app
"""
"#,
        data = data.display()
    );
    ServeConfig::from_toml(&text, Path::new("/"), None).unwrap()
}

fn executor() -> Scripted {
    Scripted::new()
        .step("slow", "log tick 1\nsleep 700\nlog tick 2\nsleep 700\nlog tick 3\nhang")
        .step("flaky", "log about to break\nfail broken on purpose")
        .step("evil", "log <script>alert(1)</script>\nlog \u{1b}]0;pwned\u{7}after the title\nlog 50%\r100% done\nlog \u{1b}[31mred\u{1b}[0m plain")
}

/// chromedriver on a free port of 127.0.0.1, in a process group of its own with its own temp
/// dir: on drop the group (chromedriver and every Chromium process it started) is killed and the
/// browser's profiles go with the dir.
struct Driver {
    child: Child,
    url: String,
    _tmp: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

async fn driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .env("TMPDIR", tmp.path())
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    // Owned by the guard at once: killed and waited for on every path, a panic's included.
    let d = Driver { child, url: format!("http://127.0.0.1:{port}"), _tmp: tmp };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not listen on {port}");
}

async fn browser(d: &Driver) -> Client {
    browser_with(d, json!({})).await
}

/// A session with Chromium preferences (`prefs` of `goog:chromeOptions`).
async fn browser_with(d: &Driver, prefs: Value) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"],
            "prefs": prefs,
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(caps).connect(&d.url).await.expect("a WebDriver session")
}

fn shots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.unwrap()
}

async fn wait_for(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait().at_most(Duration::from_secs(15)).for_element(Locator::Css(css)).await.unwrap_or_else(|e| {
        panic!("{css} did not appear: {e}");
    })
}

/// The page's text; empty while a navigation has no `body` yet.
async fn body_text(c: &Client) -> String {
    match c.find(Locator::Css("body")).await {
        Ok(body) => body.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the page's text holds `what` (a form just sent may still be loading the next).
async fn wait_text(c: &Client, what: &str) {
    for _ in 0..150 {
        if body_text(c).await.contains(what) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the page never said {what:?}; it says:\n{}", body_text(c).await);
}

async fn api_run(http: &reqwest::Client, base: &str, app: &str, inputs: Value) -> i64 {
    let v: Value = http
        .post(format!("{base}/v1/apps/{app}/runs"))
        .bearer_auth(ADMIN)
        .json(&json!({ "inputs": inputs }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["id"].as_i64().unwrap_or_else(|| panic!("{v}"))
}

async fn push(http: &reqwest::Client, base: &str) -> i64 {
    let body = json!({
        "ref": "refs/heads/main", "before": "0000", "after": "2222",
        "repository": {"full_name": "acme/web"}, "sender": {"login": "octocat"}
    })
    .to_string();
    let resp = http
        .post(format!("{base}/hooks/web"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", "console-1")
        .header("x-hub-signature-256", skiff_edge_core::github_signature(SECRET.as_bytes(), body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.unwrap()["runs"][0]["id"].as_i64().unwrap()
}

async fn status_of(http: &reqwest::Client, base: &str, id: i64) -> Value {
    http.get(format!("{base}/v1/runs/{id}")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap()
}

async fn wait_status(http: &reqwest::Client, base: &str, id: i64, want: &[&str]) -> Value {
    for _ in 0..300 {
        let r = status_of(http, base, id).await;
        if want.contains(&r["status"].as_str().unwrap_or_default()) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {id} never became {want:?}: {}", status_of(http, base, id).await);
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().starts_with("/sign-in"));
    wait_for(c, "#token").await.send_keys(token).await.unwrap();
    c.find(Locator::Css("form.card button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_text(c, "Signed in as").await;
}

/// One browser session walks the console: each step below needs the ones before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_browser() {
    if !browser_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path()), Arc::new(executor()), Role::All).await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let other = api_run(&http, &base, "other", json!({})).await;
    wait_status(&http, &base, other, &["success"]).await;

    let d = driver().await;
    let c = browser(&d).await;

    // Sign in with team A's token.
    c.goto(&format!("{base}/")).await.unwrap();
    wait_for(&c, "#token").await;
    shot(&c, "sign-in").await;
    sign_in(&c, &base, TOKEN_A).await;
    assert_eq!(c.current_url().await.unwrap().path(), "/");

    // A run started by a signed webhook appears on the open runs page without a reload.
    c.goto(&format!("{base}/runs?app=web")).await.unwrap();
    wait_for(&c, "#live").await;
    c.execute("window.__notReloaded = true; return null;", vec![]).await.unwrap();
    let run = push(&http, &base).await;
    wait_for(&c, &format!("a[href=\"/runs/{run}\"]")).await;
    assert_eq!(c.execute("return window.__notReloaded === true;", vec![]).await.unwrap(), json!(true));
    shot(&c, "runs").await;

    // Its log streams live: lines arrive on the open page.
    wait_status(&http, &base, run, &["running"]).await;
    c.goto(&format!("{base}/runs/{run}/jobs/build/steps/slow")).await.unwrap();
    wait_for(&c, "#log-live").await;
    c.execute("window.__notReloaded = true; return null;", vec![]).await.unwrap();
    wait_text(&c, "tick 3").await;
    assert_eq!(c.execute("return window.__notReloaded === true;", vec![]).await.unwrap(), json!(true));
    assert_eq!(text_of(&c, "#L3 .t").await, "tick 3");
    shot(&c, "log-live").await;

    // The run page: jobs in stages, the matrix cells, the step's grants; then cancel it.
    c.goto(&format!("{base}/runs/{run}")).await.unwrap();
    let graph = text_of(&c, ".graph").await;
    for want in ["build", "needs build", "os=linux", "os=mac", "secret: DEPLOY_TOKEN", "http: api.example.com"] {
        assert!(graph.contains(want), "{want:?} not in {graph}");
    }
    shot(&c, "run").await;
    c.find(Locator::Css("form[action$=\"/cancel\"] button")).await.unwrap().click().await.unwrap();
    wait_status(&http, &base, run, &["cancelled"]).await;
    wait_text(&c, "cancelled").await;

    // A failed run is rerun (its failed jobs) from its page.
    let flaky = api_run(&http, &base, "flaky", json!({})).await;
    wait_status(&http, &base, flaky, &["failure"]).await;
    c.goto(&format!("{base}/runs/{flaky}")).await.unwrap();
    c.find(Locator::Css("form[action$=\"/rerun\"] input[name=failed_only]")).await.unwrap();
    c.find(Locator::Css("form:has(input[name=failed_only]) button")).await.unwrap().click().await.unwrap();
    wait_text(&c, "attempt 2").await;
    let again: i64 = c.current_url().await.unwrap().path().trim_start_matches("/runs/").parse().unwrap();
    assert_ne!(again, flaky);
    assert_eq!(status_of(&http, &base, again).await["attempt"], 2);

    // A form posted without its CSRF token is refused.
    c.goto(&format!("{base}/runs/{flaky}")).await.unwrap();
    c.execute(
        "const f = document.querySelector('form[action$=\"/rerun\"]'); f.querySelector('input[name=csrf]').remove(); f.submit(); return null;",
        vec![],
    )
    .await
    .unwrap();
    wait_text(&c, "403").await;
    assert_eq!(status_of(&http, &base, again).await["attempt"], 2);

    // A manual run with typed inputs from the pipeline's workflow_dispatch.
    c.goto(&format!("{base}/apps/manual")).await.unwrap();
    shot(&c, "app").await;
    let greeting = wait_for(&c, "#input-greeting").await;
    greeting.clear().await.unwrap();
    greeting.send_keys("bonjour").await.unwrap();
    c.find(Locator::Css("#input-mode option[value=slow]")).await.unwrap().click().await.unwrap();
    c.find(Locator::Css("form[action$=\"/runs\"] button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_text(&c, "manual #1").await;
    let manual: i64 = c.current_url().await.unwrap().path().trim_start_matches("/runs/").parse().unwrap();
    let done = wait_status(&http, &base, manual, &["success", "failure"]).await;
    assert_eq!(done["inputs"], json!({"greeting": "bonjour", "mode": "slow"}));
    c.goto(&format!("{base}/runs/{manual}/jobs/main/steps/echo")).await.unwrap();
    wait_text(&c, "greeting=bonjour mode=slow").await;

    // What a step prints is inert text: markup, an OSC title, carriage returns.
    let evil = api_run(&http, &base, "evil", json!({})).await;
    wait_status(&http, &base, evil, &["success"]).await;
    c.goto(&format!("{base}/runs/{evil}/jobs/main/steps/evil")).await.unwrap();
    assert_eq!(text_of(&c, "#L1 .t").await, "<script>alert(1)</script>");
    assert_eq!(text_of(&c, "#L2 .t").await, "after the title");
    assert_eq!(text_of(&c, "#L3 .t").await, "100% done");
    assert_eq!(text_of(&c, "#L4 .t .fg-1").await, "red");
    assert_eq!(c.execute("return document.querySelectorAll('#log script').length;", vec![]).await.unwrap(), json!(0));
    let title = c.title().await.unwrap();
    assert!(!title.contains("pwned"), "{title}");
    // The line anchors and the search filter.
    c.goto(&format!("{base}/runs/{evil}/jobs/main/steps/evil#L3")).await.unwrap();
    wait_for(&c, "#L3:target").await;
    shot(&c, "log").await;
    wait_for(&c, "#log-filter").await.send_keys("done").await.unwrap();
    wait_for(&c, "#L1.hidden").await;

    // Team A's token reaches nothing of app `other`: not through links, not typed.
    c.goto(&format!("{base}/runs")).await.unwrap();
    let list = c.source().await.unwrap();
    assert!(!list.contains(&format!("href=\"/runs/{other}\"")) && !list.contains(">other<"));
    for path in [
        format!("/runs/{other}"),
        format!("/runs/{other}/jobs/main/steps/private"),
        "/apps/other".into(),
        "/runs?app=other".into(),
    ] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        wait_text(&c, "404").await;
        assert!(!c.source().await.unwrap().contains("other app"), "{path}");
    }

    // The apps page, for the record; then sign out.
    c.goto(&format!("{base}/")).await.unwrap();
    shot(&c, "apps").await;
    c.find(Locator::Css(".signout button")).await.unwrap().click().await.unwrap();
    wait_for(&c, "#token").await;
    c.goto(&format!("{base}/runs")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().starts_with("/sign-in"));

    c.close().await.unwrap();
    server.stop().await;
}

/// A server with the console's config, one failed run (`flaky`, its log stored) and one that
/// runs until cancelled (`web`, its step hanging after three ticks).
async fn two_runs(data: &Path) -> (skiff_server::Server, String, i64, i64) {
    let server = start(config(data), Arc::new(executor()), Role::All).await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let flaky = api_run(&http, &base, "flaky", json!({})).await;
    wait_status(&http, &base, flaky, &["failure"]).await;
    let web = push(&http, &base).await;
    wait_status(&http, &base, web, &["running"]).await;
    (server, base, flaky, web)
}

async fn cancel_by_api(base: &str, id: i64) {
    let http = reqwest::Client::new();
    let resp = http.post(format!("{base}/v1/runs/{id}/cancel")).bearer_auth(ADMIN).send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    wait_status(&http, base, id, &["cancelled"]).await;
}

/// Without JavaScript (Chromium's content setting off: page scripts do not run, WebDriver's
/// own still do) every read-only page shows its content, the log's search works as a form, and
/// cancel and rerun are plain forms with their CSRF field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_without_javascript() {
    if !browser_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (server, base, flaky, web) = two_runs(dir.path()).await;
    let http = reqwest::Client::new();
    let d = driver().await;
    let c = browser_with(&d, json!({ "profile.managed_default_content_settings.javascript": 2 })).await;

    // Sign-in is a form: it needs no script.
    sign_in(&c, &base, TOKEN_A).await;
    assert_eq!(c.current_url().await.unwrap().path(), "/");

    // The apps page: each app of the token with its newest run, none of another app.
    let apps = text_of(&c, "main").await;
    for want in ["web", "flaky", "evil", "manual", "All runs of flaky"] {
        assert!(apps.contains(want), "{want:?} not in {apps}");
    }
    assert!(!apps.contains("other"), "{apps}");
    c.find(Locator::Css(&format!("a[href=\"/runs/{flaky}\"]"))).await.unwrap();

    // The runs list, and its filter as a GET form.
    c.goto(&format!("{base}/runs")).await.unwrap();
    for id in [flaky, web] {
        c.find(Locator::Css(&format!("table.runs a[href=\"/runs/{id}\"]"))).await.unwrap();
    }
    c.find(Locator::Css("form.filters select[name=app] option[value=flaky]")).await.unwrap().click().await.unwrap();
    c.find(Locator::Css("form.filters button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_for(&c, "form.filters option[value=flaky][selected]").await;
    assert_eq!(c.current_url().await.unwrap().query_pairs().find(|(k, _)| k == "app").unwrap().1, "flaky");
    c.find(Locator::Css(&format!("table.runs a[href=\"/runs/{flaky}\"]"))).await.unwrap();
    assert!(c.find(Locator::Css(&format!("table.runs a[href=\"/runs/{web}\"]"))).await.is_err());

    // A finished run's page: its status, its job and step, its rerun forms.
    c.goto(&format!("{base}/runs/{flaky}")).await.unwrap();
    let h1 = text_of(&c, "h1").await;
    assert!(h1.contains("flaky #1") && h1.contains("failure"), "{h1}");
    let graph = text_of(&c, ".graph").await;
    assert!(graph.contains("broken on purpose") && graph.contains("no capabilities"), "{graph}");
    // Nothing on it is live: the note for scriptless viewers is only on pages that are.
    assert!(c.find(Locator::Css("noscript p")).await.is_err());

    // Its stored log, line by line.
    c.find(Locator::Css(&format!("a[href=\"/runs/{flaky}/jobs/main/steps/flaky\"]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&c, "#L1").await;
    assert_eq!(text_of(&c, "#L1 .t").await, "about to break");
    let lines = c.find_all(Locator::Css("#log li")).await.unwrap().len();
    // Typing filters nothing here (that is the script's part, and it does not run) ...
    let filter = wait_for(&c, "#log-filter").await;
    filter.send_keys("no such text").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(c.find(Locator::Css("#log li.hidden")).await.is_err(), "a script filtered the lines: JavaScript is on");
    // ... but the search is a form: submitted, the host hides the lines without the text.
    filter.send_keys(&Key::Enter.to_string()).await.unwrap();
    wait_for(&c, "#L1.hidden").await;
    assert_eq!(c.find_all(Locator::Css("#log li.hidden")).await.unwrap().len(), lines);
    assert!(!c.find(Locator::Css("#L1")).await.unwrap().is_displayed().await.unwrap());
    assert_eq!(c.current_url().await.unwrap().query(), Some("q=no+such+text"));
    let filter = wait_for(&c, "#log-filter").await;
    filter.clear().await.unwrap();
    filter.send_keys("BREAK").await.unwrap();
    c.find(Locator::Css("form[role=search] button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_for(&c, "#L1:not(.hidden)").await;
    assert!(c.find(Locator::Css("#L1")).await.unwrap().is_displayed().await.unwrap());
    shot(&c, "log-nojs").await;

    // A live run's page says it will not follow the run, and its cancel is a plain form.
    c.goto(&format!("{base}/runs/{web}")).await.unwrap();
    let note = wait_for(&c, "noscript p").await;
    assert!(note.is_displayed().await.unwrap());
    assert!(note.text().await.unwrap().contains("reload it"));
    let csrf = c.find(Locator::Css("form[action$=\"/cancel\"] input[type=hidden][name=csrf]")).await.unwrap();
    assert_eq!(csrf.attr("value").await.unwrap().unwrap_or_default().len(), 64);
    c.find(Locator::Css("form[action$=\"/cancel\"] button")).await.unwrap().click().await.unwrap();
    wait_status(&http, &base, web, &["cancelled"]).await;
    assert_eq!(c.current_url().await.unwrap().path(), format!("/runs/{web}"));
    wait_text(&c, "cancelled").await;
    // The live log page says so too, once, under its lines so far.
    let web2 = api_run(&http, &base, "web", json!({})).await;
    wait_status(&http, &base, web2, &["running"]).await;
    c.goto(&format!("{base}/runs/{web2}/jobs/build/steps/slow")).await.unwrap();
    assert!(wait_for(&c, "noscript p").await.text().await.unwrap().contains("reload the page"));
    cancel_by_api(&base, web2).await;

    // Rerun, as a form.
    c.goto(&format!("{base}/runs/{flaky}")).await.unwrap();
    c.find(Locator::Css("form[action$=\"/rerun\"]:not(:has(input[name=failed_only])) button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "attempt 2").await;
    let again: i64 = c.current_url().await.unwrap().path().trim_start_matches("/runs/").parse().unwrap();
    assert_ne!(again, flaky);
    assert_eq!(status_of(&http, &base, again).await["attempt"], 2);
    wait_status(&http, &base, again, &["failure"]).await;

    c.close().await.unwrap();
    server.stop().await;
}

/// Sends a Chrome DevTools command through chromedriver's `goog/cdp/execute`.
async fn cdp(d: &Driver, c: &Client, cmd: &str, params: Value) {
    let session = c.session_id().await.unwrap().expect("a session id");
    let resp = reqwest::Client::new()
        .post(format!("{}/session/{session}/goog/cdp/execute", d.url))
        .json(&json!({ "cmd": cmd, "params": params }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{cmd}: {}", resp.text().await.unwrap_or_default());
}

/// The sum of the red, green and blue of a computed CSS colour (`rgb(13, 17, 23)`).
fn rgb_sum(css: &Value) -> u32 {
    let s = css.as_str().unwrap_or_else(|| panic!("{css}"));
    let inner = s.split_once('(').and_then(|(_, r)| r.strip_suffix(')')).unwrap_or_else(|| panic!("{s}"));
    inner.split(',').take(3).map(|p| p.trim().parse::<f64>().unwrap_or_else(|_| panic!("{s}")) as u32).sum()
}

async fn colours(c: &Client, css: &str) -> (u32, u32) {
    let v = c
        .execute(
            "const s = getComputedStyle(document.querySelector(arguments[0])); return [s.backgroundColor, s.color];",
            vec![json!(css)],
        )
        .await
        .unwrap();
    (rgb_sum(&v[0]), rgb_sum(&v[1]))
}

/// With `prefers-color-scheme: dark` the pages turn dark, their text light; screenshots of a
/// run and a log in that theme.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_the_dark_theme() {
    if !browser_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (server, base, _flaky, web) = two_runs(dir.path()).await;
    let http = reqwest::Client::new();
    let evil = api_run(&http, &base, "evil", json!({})).await;
    wait_status(&http, &base, evil, &["success"]).await;
    let d = driver().await;
    let c = browser(&d).await;
    c.set_window_size(1100, 820).await.unwrap();
    sign_in(&c, &base, TOKEN_A).await;

    // Light first, so that the dark below is the emulation's doing.
    let (bg, fg) = colours(&c, "body").await;
    assert!(bg > 600 && fg < 200, "light theme: background {bg}, text {fg}");
    cdp(
        &d,
        &c,
        "Emulation.setEmulatedMedia",
        json!({ "features": [{ "name": "prefers-color-scheme", "value": "dark" }] }),
    )
    .await;

    c.goto(&format!("{base}/runs/{web}")).await.unwrap();
    wait_for(&c, ".graph").await;
    assert_eq!(
        c.execute("return matchMedia('(prefers-color-scheme: dark)').matches;", vec![]).await.unwrap(),
        json!(true)
    );
    let (bg, fg) = colours(&c, "body").await;
    assert!(bg < 200 && fg > 500, "dark theme: background {bg}, text {fg}");
    let (card, _) = colours(&c, ".job").await;
    assert!(card < 200, "a job's card is light in the dark theme: {card}");
    shot(&c, "run-dark").await;

    c.goto(&format!("{base}/runs/{evil}/jobs/main/steps/evil")).await.unwrap();
    wait_for(&c, "#L4").await;
    let (log_bg, _) = colours(&c, "#log").await;
    assert!(log_bg < 200, "the log is light in the dark theme: {log_bg}");
    // The colours a step prints are the dark theme's: red is light enough to read there.
    let (_, red) = colours(&c, "#L4 .fg-1").await;
    assert!(red > 300, "red text on the dark log: {red}");
    shot(&c, "log-dark").await;

    cancel_by_api(&base, web).await;
    c.close().await.unwrap();
    server.stop().await;
}

async fn press(c: &Client, key: Key) {
    let k: char = key.into();
    let keys = KeyActions::new("keyboard".into()).then(KeyAction::Down { value: k }).then(KeyAction::Up { value: k });
    c.perform_actions(keys).await.unwrap();
}

/// What has the focus: its tag, id, class, text, its form's action, whether it shows a focus
/// ring, and whether it is inside `main` (not `main` itself).
async fn focused(c: &Client) -> Value {
    c.execute(
        "const e = document.activeElement; const f = e.closest('form'); const s = getComputedStyle(e); \
         const r = e.getBoundingClientRect(); \
         return { tag: e.tagName.toLowerCase(), id: e.id, cls: e.className, text: (e.textContent || '').trim(), \
           form: f ? f.getAttribute('action') : null, focusVisible: e.matches(':focus-visible'), \
           outline: s.outlineStyle, outlineWidth: parseFloat(s.outlineWidth), \
           onScreen: r.width > 0 && r.height > 0 && r.right > 0 && r.left < innerWidth, \
           inMain: e.id !== 'main' && document.getElementById('main').contains(e) };",
        vec![],
    )
    .await
    .unwrap()
}

/// Presses Tab until `want` has the focus (at most `max` times); the element focused then must
/// show a focus ring.
async fn tab_to(c: &Client, max: usize, want: impl Fn(&Value) -> bool) -> Value {
    let mut seen = Vec::new();
    for _ in 0..max {
        press(c, Key::Tab).await;
        let f = focused(c).await;
        if want(&f) {
            assert_visible_focus(&f);
            return f;
        }
        seen.push(f);
    }
    panic!("Tab never reached it; focus went to:\n{}", serde_json::to_string_pretty(&seen).unwrap());
}

fn assert_visible_focus(f: &Value) {
    assert_eq!(f["focusVisible"], true, "{f}");
    assert!(f["outline"] != "none" && f["outlineWidth"].as_f64().unwrap_or(0.0) >= 2.0, "no focus ring: {f}");
    assert_eq!(f["onScreen"], true, "focused but off screen: {f}");
}

/// By keyboard alone: the first Tab reaches "Skip to content", which moves on to the page's
/// main content; Tab reaches sign-out, cancel and rerun, each with a visible focus ring, and
/// Enter uses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_by_keyboard() {
    if !browser_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (server, base, flaky, web) = two_runs(dir.path()).await;
    let http = reqwest::Client::new();
    let d = driver().await;
    let c = browser(&d).await;
    sign_in(&c, &base, TOKEN_A).await;

    // The run's step is quiet now (it hangs after its ticks): no live refresh moves the focus.
    for _ in 0..100 {
        let logs = http.get(format!("{base}/v1/runs/{web}/logs")).bearer_auth(ADMIN).send().await.unwrap();
        if logs.text().await.unwrap().contains("tick 3") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.goto(&format!("{base}/runs/{web}")).await.unwrap();
    wait_for(&c, ".graph").await;

    // The first Tab: the skip link, shown now that it has the focus.
    let skip = tab_to(&c, 1, |f| f["cls"] == "skip").await;
    assert_eq!(skip["text"], "Skip to content");
    // Enter follows it: the focus is on main, and the next Tab goes into the content, past
    // the header's links and sign-out.
    press(&c, Key::Enter).await;
    let on_main = focused(&c).await;
    assert_eq!(on_main["id"], "main", "{on_main}");
    assert_eq!(c.current_url().await.unwrap().fragment(), Some("main"));
    let next = tab_to(&c, 1, |_| true).await;
    assert_eq!(next["inMain"], true, "{next}");

    // From the top again: Tab reaches sign-out, then the run's cancel, and Enter cancels.
    c.goto(&format!("{base}/runs/{web}")).await.unwrap();
    wait_for(&c, ".graph").await;
    let out = tab_to(&c, 10, |f| f["form"] == "/sign-out").await;
    assert_eq!((out["tag"].as_str(), out["text"].as_str()), (Some("button"), Some("Sign out")));
    let cancel = tab_to(&c, 20, |f| f["form"] == json!(format!("/runs/{web}/cancel"))).await;
    assert_eq!(cancel["text"], "Cancel run");
    press(&c, Key::Enter).await;
    wait_status(&http, &base, web, &["cancelled"]).await;

    // A failed run: Tab reaches both rerun buttons; Enter on "Rerun failed jobs" reruns.
    c.goto(&format!("{base}/runs/{flaky}")).await.unwrap();
    wait_for(&c, ".graph").await;
    let all = tab_to(&c, 20, |f| f["text"] == "Rerun all jobs").await;
    assert_eq!(all["form"], json!(format!("/runs/{flaky}/rerun")));
    let failed = tab_to(&c, 1, |f| f["text"] == "Rerun failed jobs").await;
    assert_eq!(failed["form"], json!(format!("/runs/{flaky}/rerun")));
    press(&c, Key::Enter).await;
    wait_text(&c, "attempt 2").await;
    let again: i64 = c.current_url().await.unwrap().path().trim_start_matches("/runs/").parse().unwrap();
    assert_ne!(again, flaky);
    wait_status(&http, &base, again, &["failure"]).await;

    // The stylesheet gives every kind of control a ring on :focus-visible.
    let css = http.get(format!("{base}/console/console.css")).send().await.unwrap().text().await.unwrap();
    for sel in ["a:focus-visible", "button:focus-visible", "input:focus-visible", "main:focus-visible"] {
        assert!(css.contains(sel), "{sel}");
    }

    c.close().await.unwrap();
    server.stop().await;
}
