//! The console through the router with `oneshot`: sign-in, scopes, CSRF, inert logs, badges,
//! artifacts.
//! Runs and logs are written to the stores directly; the browser tests (`host/tests/all/
//! console.rs`) run real ones.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt as _;

use crate::config::ServeConfig;
use crate::logs::LogRecord;
use crate::store::{NewRun, RunStatus};
use crate::{Role, Shared};

/// Never asked to run anything: no scheduler runs in these tests.
struct Idle;

impl skiff_pipeline::StepExecutor for Idle {
    fn run_step<'a>(
        &'a self,
        _: skiff_pipeline::StepRequest,
        _: &'a (dyn Fn(skiff_pipeline::LogLine) + Send + Sync),
    ) -> Pin<Box<dyn Future<Output = skiff_pipeline::StepResult> + Send + 'a>> {
        Box::pin(std::future::pending())
    }
}

fn setup(dir: &Path) -> (Arc<Shared>, axum::Router) {
    setup_with(dir, |t| t)
}

/// [`setup`] with its configuration's text changed by `edit`.
fn setup_with(dir: &Path, edit: impl Fn(String) -> String) -> (Arc<Shared>, axum::Router) {
    let hash = super::hash_password("pw-alice").unwrap();
    let text = format!(
        r#"
data = "{data}"
[[tokens]]
name = "admin"
token = "tok-admin"
apps = ["*"]
[[tokens]]
name = "a-only"
token = "tok-a"
apps = ["a"]
[[tokens]]
name = "b-only"
token = "tok-b"
apps = ["b"]
[[users]]
name = "alice"
password-hash = "{hash}"
apps = ["a"]
[[apps]]
name = "a"
badge = "public"
secrets = {{ DEPLOY_KEY = "super-secret-value" }}
pipeline-yaml = """
steps:
  - id: s
    uses: diag
"""
[[apps]]
name = "b"
pipeline-yaml = """
steps:
  - id: s
    uses: diag
"""
"#,
        data = dir.display()
    );
    let config = ServeConfig::from_toml(&edit(text), Path::new("/"), None).unwrap();
    let s = Shared::open(config, Arc::new(Idle), Role::All).unwrap();
    let router = crate::app(s.clone());
    (s, router)
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn send(router: &axum::Router, req: Request<Body>) -> Answer {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    Answer { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

fn set_cookie(a: &Answer, name: &str) -> Option<String> {
    a.headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_string())
}

/// Signs in with a form; returns the session cookie (`skiff_session=…`).
async fn sign_in(router: &axum::Router, fields: &str) -> String {
    let page = send(router, Request::get("/sign-in").body(Body::empty()).unwrap()).await;
    let pre = set_cookie(&page, "skiff_signin").unwrap();
    let csrf = pre.split_once('=').unwrap().1.to_string();
    let resp = send(
        router,
        Request::post("/sign-in")
            .header(header::COOKIE, &pre)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={csrf}&next=%2Fruns&{fields}")))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.body);
    assert_eq!(resp.headers[header::LOCATION], "/runs");
    let cookie = resp.headers.get(header::SET_COOKIE).unwrap().to_str().unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    set_cookie(&resp, "skiff_session").unwrap()
}

async fn get(router: &axum::Router, path: &str, cookie: &str) -> Answer {
    send(router, Request::get(path).header(header::COOKIE, cookie).body(Body::empty()).unwrap()).await
}

fn csrf_of(page: &str) -> String {
    let i = page.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    page[i..i + 64].to_string()
}

fn run(s: &Shared, app: &str) -> i64 {
    let r = NewRun {
        app: app.into(),
        trigger: "push".into(),
        git_ref: Some("refs/heads/main".into()),
        ..NewRun::default()
    };
    s.store.insert_run(&r).unwrap().id
}

#[tokio::test]
async fn pages_need_a_session_and_sign_in_takes_tokens_and_users() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, router) = setup(dir.path());
    let anon = get(&router, "/runs", "").await;
    assert_eq!(anon.status, StatusCode::SEE_OTHER);
    assert_eq!(anon.headers[header::LOCATION], "/sign-in?next=%2Fruns");

    let admin = sign_in(&router, "token=tok-admin").await;
    let page = get(&router, "/", &admin).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("token admin") && page.body.contains("/apps/a") && page.body.contains("/apps/b"));
    assert!(page.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'"));
    assert!(page.body.len() < 100 * 1024);

    let alice = sign_in(&router, "name=alice&password=pw-alice").await;
    let page = get(&router, "/", &alice).await;
    assert!(page.body.contains("/apps/a") && !page.body.contains("/apps/b"), "{}", page.body);

    // A wrong password is refused, and says nothing about which part was wrong.
    let pre = send(&router, Request::get("/sign-in").body(Body::empty()).unwrap()).await;
    let pre = set_cookie(&pre, "skiff_signin").unwrap();
    let wrong = send(
        &router,
        Request::post("/sign-in")
            .header(header::COOKIE, &pre)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={}&name=alice&password=nope", pre.split_once('=').unwrap().1)))
            .unwrap(),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&wrong, "skiff_session").is_none());
}

#[tokio::test]
async fn another_apps_pages_answer_404_and_forms_need_their_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let (s, router) = setup(dir.path());
    let a = run(&s, "a");
    let b = run(&s, "b");
    let cookie = sign_in(&router, "token=tok-a").await;
    assert_eq!(get(&router, &format!("/runs/{a}"), &cookie).await.status, StatusCode::OK);
    for path in [
        format!("/runs/{b}"),
        format!("/runs/{b}/jobs/j/steps/s"),
        format!("/runs/{b}/jobs/j/steps/s/raw"),
        format!("/runs/{b}/events"),
        format!("/runs/{b}/artifacts/x"),
        "/apps/b".into(),
        "/runs?app=b".into(),
        "/badge/b.svg".into(),
        "/runs/999999".into(),
    ] {
        assert_eq!(get(&router, &path, &cookie).await.status, StatusCode::NOT_FOUND, "{path}");
    }
    let list = get(&router, "/runs", &cookie).await;
    assert!(list.body.contains(&format!("/runs/{a}\"")) && !list.body.contains(&format!("/runs/{b}\"")));

    // Cancel without the token: refused, and the run is untouched.
    let page = get(&router, &format!("/runs/{a}"), &cookie).await;
    let post = |body: String| {
        Request::post(format!("/runs/{a}/cancel"))
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap()
    };
    assert_eq!(send(&router, post(String::new())).await.status, StatusCode::FORBIDDEN);
    assert_eq!(send(&router, post("csrf=0000".into())).await.status, StatusCode::FORBIDDEN);
    assert_eq!(s.store.run(a).unwrap().unwrap().status, RunStatus::Queued);
    let ok = send(&router, post(format!("csrf={}", csrf_of(&page.body)))).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    assert_eq!(s.store.run(a).unwrap().unwrap().status, RunStatus::Cancelled);

    // A form of another app cannot start its runs either.
    let start = Request::post("/apps/b/runs")
        .header(header::COOKIE, &cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("csrf={}", csrf_of(&page.body))))
        .unwrap();
    assert_eq!(send(&router, start).await.status, StatusCode::NOT_FOUND);

    // Signed out, the session is gone.
    let out = Request::post("/sign-out")
        .header(header::COOKIE, &cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("csrf={}", csrf_of(&page.body))))
        .unwrap();
    assert_eq!(send(&router, out).await.status, StatusCode::SEE_OTHER);
    assert_eq!(get(&router, "/runs", &cookie).await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn logs_are_inert_text_and_settings_show_secret_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let (s, router) = setup(dir.path());
    let id = run(&s, "a");
    let texts = [
        "<script>alert(1)</script>",
        "\u{1b}]0;pwned title\u{7}after title",
        "50%\r100% done",
        "\u{1b}[31mred\u{1b}[0m",
    ];
    for (i, text) in texts.iter().enumerate() {
        let rec = LogRecord {
            seq: i as u64 + 1,
            ts: 0,
            job: "j".into(),
            step: "s".into(),
            level: "info".into(),
            text: text.to_string(),
        };
        s.logs.append(id, &rec).unwrap();
    }
    let cookie = sign_in(&router, "token=tok-admin").await;
    let page = get(&router, &format!("/runs/{id}/jobs/j/steps/s"), &cookie).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!page.body.contains("<script>alert"));
    assert!(!page.body.contains("pwned") && page.body.contains("after title"));
    assert!(page.body.contains("100% done") && !page.body.contains("50%"));
    assert!(page.body.contains("<span class=\"fg-1\">red</span>"));
    assert!(page.body.contains("id=\"L4\""));
    // The search box is a form too: `?q=` hides the other lines (any case), numbers kept.
    let found = get(&router, &format!("/runs/{id}/jobs/j/steps/s?q=DONE"), &cookie).await;
    assert!(found.body.contains("<li id=\"L3\"><a"), "{}", found.body);
    for hidden in ["L1", "L2", "L4"] {
        assert!(found.body.contains(&format!("<li id=\"{hidden}\" class=\"hidden\">")), "{hidden}");
    }
    assert!(found.body.contains("name=\"q\" value=\"DONE\""));
    // Only what is shown is searched: the OSC title's text is not there to find.
    let title = get(&router, &format!("/runs/{id}/jobs/j/steps/s?q=pwned"), &cookie).await;
    assert!(title.body.contains("<li id=\"L2\" class=\"hidden\">"));
    let raw = get(&router, &format!("/runs/{id}/jobs/j/steps/s/raw"), &cookie).await;
    assert_eq!(raw.body, "<script>alert(1)</script>\nafter title\n100% done\nred\n");
    assert!(raw.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));

    let settings = get(&router, "/apps/a", &cookie).await;
    assert!(settings.body.contains("DEPLOY_KEY") && !settings.body.contains("super-secret-value"));
}

#[tokio::test]
async fn badges_are_public_only_where_the_app_says() {
    let dir = tempfile::tempdir().unwrap();
    let (s, router) = setup(dir.path());
    let id = run(&s, "a");
    s.store.finish_run(id, RunStatus::Failure, None).unwrap();
    let a = get(&router, "/badge/a.svg?branch=main", "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers[header::CONTENT_TYPE], "image/svg+xml");
    assert!(a.body.contains(">failing<"));
    assert!(get(&router, "/badge/a.svg?branch=other", "").await.body.contains(">no runs<"));
    assert_eq!(get(&router, "/badge/b.svg", "").await.status, StatusCode::NOT_FOUND);
    let cookie = sign_in(&router, "token=tok-admin").await;
    assert_eq!(get(&router, "/badge/b.svg", &cookie).await.status, StatusCode::OK);
}

#[tokio::test]
async fn run_lists_filter_by_branch_and_event_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let (s, router) = setup(dir.path());
    for i in 0..60 {
        let r = NewRun {
            app: "a".into(),
            trigger: if i % 2 == 0 { "push".into() } else { "manual".into() },
            git_ref: Some(if i % 3 == 0 { "refs/heads/dev".into() } else { "refs/heads/main".into() }),
            ..NewRun::default()
        };
        s.store.insert_run(&r).unwrap();
    }
    let cookie = sign_in(&router, "token=tok-admin").await;
    let page = get(&router, "/runs?app=a&branch=dev&event=push", &cookie).await;
    // i in 0..60 with i % 6 == 0: 10 runs.
    assert_eq!(page.body.matches("<tr><td><a href=\"/runs/").count(), 10, "{}", page.body);
    let first = get(&router, "/runs", &cookie).await;
    assert_eq!(first.body.matches("<tr><td><a href=\"/runs/").count(), 50);
    assert!(first.body.contains("rel=\"next\""));
    let latest = s.store.latest_per_ref("a").unwrap();
    assert_eq!(latest.len(), 2);
}

#[tokio::test]
async fn artifacts_are_listed_and_downloaded_by_a_viewer_of_their_app_only() {
    let dir = tempfile::tempdir().unwrap();
    let (s, router) = setup(dir.path());
    let id = run(&s, "a");
    // Bytes that are not UTF-8 text, to see them come back as they were stored.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let file = dir.path().join("dist.tar.gz");
    std::fs::write(&file, &bytes).unwrap();
    // Where the executor stores a step's artifacts: the host's store, opened on its data dir.
    let stored = crate::artifact_store(&s.config).put(&id.to_string(), "build", "pack", "dist.tar.gz", &file).unwrap();

    let cookie = sign_in(&router, "token=tok-a").await;
    let page = get(&router, &format!("/runs/{id}"), &cookie).await;
    assert_eq!(page.status, StatusCode::OK);
    // Its row: a download link, the size, the digest's start, the job and step that stored it.
    let start = page.body.find("<h2>Artifacts</h2>").expect("an Artifacts section");
    let section = &page.body[start..];
    assert!(!section.contains("None."), "{section}");
    let href_at = section.find("href=\"").unwrap() + "href=\"".len();
    let href = &section[href_at..href_at + section[href_at..].find('"').unwrap()];
    assert!(href.starts_with(&format!("/runs/{id}/artifacts/")), "{href}");
    assert!(section.contains("download>dist.tar.gz</a>"), "{section}");
    assert!(section.contains("2.9 KiB"), "{section}");
    assert!(section.contains(&stored.sha256[..12]), "{section}");
    assert!(section.contains("build/pack"), "{section}");

    // The link downloads the bytes, as an attachment.
    let resp = router
        .clone()
        .oneshot(Request::get(href).header(header::COOKIE, &cookie).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let headers = resp.headers().clone();
    assert_eq!(headers[header::CONTENT_DISPOSITION], "attachment; filename=\"dist.tar.gz\"");
    assert_eq!(headers[header::CONTENT_TYPE], "application/octet-stream");
    assert_eq!(headers[header::CACHE_CONTROL], "private, no-store");
    let got = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    assert_eq!(got.as_ref(), bytes.as_slice());
    // A name the run did not store is not there.
    assert_eq!(get(&router, &format!("/runs/{id}/artifacts/other.zip"), &cookie).await.status, StatusCode::NOT_FOUND);

    // A viewer of app `b` reaches neither the run nor its artifact, and learns nothing of them.
    let other = sign_in(&router, "token=tok-b").await;
    for path in [format!("/runs/{id}"), href.to_string(), format!("/runs/{id}/artifacts/dist.tar.gz")] {
        let a = get(&router, &path, &other).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert!(!a.body.contains("dist.tar.gz") && a.headers.get(header::CONTENT_DISPOSITION).is_none(), "{path}");
    }
    // Signed out, the download sends to sign-in.
    let anon = get(&router, href, "").await;
    assert_eq!(anon.status, StatusCode::SEE_OTHER);
}

/// Sessions outlive a restart, but not the token or user they were made with: each request
/// reads the viewer's scope from the configuration as it is now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_a_restart_but_not_its_token_s_removal_or_a_narrower_scope() {
    let dir = tempfile::tempdir().unwrap();
    let (s, router) = setup(dir.path());
    let admin = sign_in(&router, "token=tok-admin").await;
    let a_only = sign_in(&router, "token=tok-a").await;
    let alice = sign_in(&router, "name=alice&password=pw-alice").await;
    assert_eq!(get(&router, "/apps/a", &alice).await.status, StatusCode::OK);
    drop((s, router));

    // Restarted with the token `a-only` gone and alice moved from app a to app b.
    let (_s, router) = setup_with(dir.path(), |t| {
        t.replace("[[tokens]]\nname = \"a-only\"\ntoken = \"tok-a\"\napps = [\"a\"]\n", "")
            .replace("password-hash = ", "apps = [\"b\"]\npassword-hash = ")
            .replace("\"\napps = [\"a\"]\n[[apps]]", "\"\n[[apps]]")
    });
    assert_eq!(get(&router, "/runs", &admin).await.status, StatusCode::OK, "the session outlived the restart");
    let gone = get(&router, "/runs", &a_only).await;
    assert_eq!(gone.status, StatusCode::SEE_OTHER, "the token was removed: its session is over");
    assert!(gone.headers[header::LOCATION].to_str().unwrap().starts_with("/sign-in"));
    assert_eq!(get(&router, "/apps/a", &alice).await.status, StatusCode::NOT_FOUND, "alice no longer sees a");
    assert_eq!(get(&router, "/apps/b", &alice).await.status, StatusCode::OK);
}
