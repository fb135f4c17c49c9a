//! Repository-driven runs from forges other than GitHub, and from the edge master: a GitLab or
//! Gitea push, or a master's signed dispatch, builds the pushed commit with that commit's
//! pipeline, reports statuses in the forge's own API, and never shows the clone credential.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use serde_json::{Value, json};
use skiff_edge_core::{App, Headers, MasterConfig, Secret, handle_webhook};

use crate::plugins::Req;
use crate::repository::{Repo, Serve, eventually, finished, forge_api, http_git, serve_app};
use crate::serve::{DISPATCH_KEY, TOKEN_ALL, WEBHOOK_SECRET};

/// `skiff serve` with the app `web` for `provider`, fetching from `clone_url`.
async fn serve(data: &Path, provider: &str, clone_url: &str, app: &str, top: &str) -> skiff_server::Server {
    let app = format!("clone-url = \"{clone_url}\"\n{app}");
    serve_app(data, Serve { provider, top, app: &app, ..Serve::default() }).await
}

/// A delivery id no other request of this test process has used.
fn delivery() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("d-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// POSTs a webhook to `/hooks/web`; the run's id (a run must have been created).
async fn send(base: &str, headers: Vec<(&str, String)>, body: Vec<u8>) -> i64 {
    let mut req = reqwest::Client::new().post(format!("{base}/hooks/web")).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.body(body).send().await.unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, 202, "{v:#}");
    v["runs"][0]["id"].as_i64().unwrap()
}

fn hex_hmac(body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A GitLab push of `sha` to `main`, headers and body as GitLab documents them
/// (<https://docs.gitlab.com/user/project/integrations/webhook_events/#push-events>).
async fn gitlab_push(base: &str, sha: &str) -> i64 {
    let body = json!({
        "object_kind": "push", "event_name": "push",
        "before": "0".repeat(40), "after": sha, "ref": "refs/heads/main", "ref_protected": true,
        "checkout_sha": sha,
        "user_id": 4, "user_name": "Dev", "user_username": "dev", "user_email": "dev@example.com",
        "project_id": 15,
        "project": {
            "id": 15, "name": "web", "namespace": "acme", "path_with_namespace": "acme/web",
            "default_branch": "main", "web_url": "https://gitlab.example/acme/web",
            "git_http_url": "https://gitlab.example/acme/web.git", "git_ssh_url": "git@gitlab.example:acme/web.git"
        },
        "repository": {
            "name": "web", "url": "git@gitlab.example:acme/web.git", "homepage": "https://gitlab.example/acme/web",
            "git_http_url": "https://gitlab.example/acme/web.git", "git_ssh_url": "git@gitlab.example:acme/web.git",
            "visibility_level": 0
        },
        "commits": [{
            "id": sha, "message": "v\n", "title": "v", "timestamp": "2024-01-01T00:00:00+00:00",
            "url": format!("https://gitlab.example/acme/web/-/commit/{sha}"),
            "author": {"name": "Dev", "email": "dev@example.com"},
            "added": [], "modified": ["version.txt"], "removed": []
        }],
        "total_commits_count": 1
    });
    let id = delivery();
    let headers = vec![
        ("x-gitlab-event", "Push Hook".to_string()),
        ("x-gitlab-token", WEBHOOK_SECRET.to_string()),
        ("x-gitlab-event-uuid", id.clone()),
        ("x-gitlab-webhook-uuid", id),
        ("x-gitlab-instance", "https://gitlab.example".to_string()),
    ];
    send(base, headers, serde_json::to_vec(&body).unwrap()).await
}

/// A Gitea push of `sha` to `main`, as Gitea sends it: its own headers plus the GitHub- and
/// Gogs-compatible ones, which must not make it look like GitHub.
async fn gitea_push(base: &str, sha: &str) -> i64 {
    let user = json!({"id": 1, "login": "dev", "username": "dev", "full_name": "", "email": "dev@example.com"});
    let commit = json!({
        "id": sha, "message": "v\n", "url": format!("https://gitea.example/acme/web/commit/{sha}"),
        "author": {"name": "Dev", "email": "dev@example.com", "username": "dev"},
        "committer": {"name": "Dev", "email": "dev@example.com", "username": "dev"},
        "verification": null, "timestamp": "2024-01-01T00:00:00Z",
        "added": [], "removed": [], "modified": ["version.txt"]
    });
    let body = json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": sha,
        "compare_url": "https://gitea.example/acme/web/compare/0000000000...",
        "commits": [commit], "total_commits": 1, "head_commit": commit,
        "repository": {
            "id": 1, "owner": {"id": 2, "login": "acme", "username": "acme"}, "name": "web", "full_name": "acme/web",
            "private": false, "fork": false, "html_url": "https://gitea.example/acme/web",
            "clone_url": "https://gitea.example/acme/web.git", "ssh_url": "git@gitea.example:acme/web.git",
            "default_branch": "main"
        },
        "pusher": user, "sender": user
    });
    // Gitea signs the exact bytes sent.
    let bytes = serde_json::to_vec(&body).unwrap();
    let id = delivery();
    let headers = vec![
        ("x-gitea-signature", hex_hmac(&bytes)),
        ("x-gitea-event", "push".to_string()),
        ("x-gitea-event-type", "push".to_string()),
        ("x-gitea-delivery", id.clone()),
        ("x-github-event", "push".to_string()),
        ("x-github-delivery", id.clone()),
        ("x-gogs-event", "push".to_string()),
        ("x-gogs-delivery", id),
    ];
    send(base, headers, bytes).await
}

/// Each recorded request's path and JSON `state`.
fn states(seen: &[Req]) -> Vec<(String, String)> {
    seen.iter().map(|r| (r.target.clone(), r.json()["state"].as_str().unwrap_or("").to_string())).collect()
}

#[tokio::test]
async fn a_gitlab_push_builds_the_pushed_commit_and_reports_to_gitlab_s_status_api() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let git = http_git(repo.bare_root(), None, None);
    let (api, seen) = forge_api();
    let data = tempfile::tempdir().unwrap();
    let clone_url = format!("http://127.0.0.1:{}/acme/web.git", git.port);
    let app = format!("status-token = \"GIT_TOKEN\"\napi-url = \"http://127.0.0.1:{api}\"");
    let server = serve(data.path(), "gitlab", &clone_url, &app, "").await;
    let base = format!("http://{}", server.addr);

    let id = gitlab_push(&base, &repo.commits[1]).await;
    let (run, log) = finished(&base, id).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert_eq!(run["sha"], repo.commits[1], "{run:#}");
    assert!(log.contains("built v2 with pipeline two"), "{log}");
    // The final status is queued just after the run is recorded as ended.
    eventually("three statuses", || seen.lock().unwrap().len() >= 3).await;
    server.shared.statuses.flush().await;

    let seen = seen.lock().unwrap().clone();
    // GitLab, unlike GitHub and Gitea, has a `running` state.
    let path = format!("/projects/acme%2Fweb/statuses/{}", repo.commits[1]);
    let want: Vec<(String, String)> =
        ["pending", "running", "success"].iter().map(|s| (path.clone(), s.to_string())).collect();
    assert_eq!(states(&seen), want, "{seen:#?}");
    for r in &seen {
        assert_eq!(r.method, "POST", "{r:#?}");
        assert_eq!(r.header("private-token"), Some("git-tok-5e4d3c"), "{r:#?}");
        assert_eq!(r.header("authorization"), None, "GitLab's token goes in PRIVATE-TOKEN only: {r:#?}");
        assert_eq!(r.json()["name"], "skiff/web", "GitLab calls the context `name`: {r:#?}");
    }
    server.halt();
}

#[tokio::test]
async fn a_gitea_push_builds_the_pushed_commit_and_reports_to_gitea_s_status_api() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let git = http_git(repo.bare_root(), None, None);
    let (api, seen) = forge_api();
    let data = tempfile::tempdir().unwrap();
    let clone_url = format!("http://127.0.0.1:{}/acme/web.git", git.port);
    let app = format!("status-token = \"GIT_TOKEN\"\napi-url = \"http://127.0.0.1:{api}\"");
    let server = serve(data.path(), "gitea", &clone_url, &app, "").await;
    let base = format!("http://{}", server.addr);

    let id = gitea_push(&base, &repo.commits[1]).await;
    let (run, log) = finished(&base, id).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert_eq!(run["sha"], repo.commits[1], "{run:#}");
    assert!(log.contains("built v2 with pipeline two"), "{log}");
    // The final status is queued just after the run is recorded as ended.
    eventually("three statuses", || seen.lock().unwrap().len() >= 3).await;
    server.shared.statuses.flush().await;

    let seen = seen.lock().unwrap().clone();
    // Gitea has no `running`: queued and running are both `pending`.
    let path = format!("/repos/acme/web/statuses/{}", repo.commits[1]);
    let want: Vec<(String, String)> =
        ["pending", "pending", "success"].iter().map(|s| (path.clone(), s.to_string())).collect();
    assert_eq!(states(&seen), want, "{seen:#?}");
    for r in &seen {
        assert_eq!(r.header("authorization"), Some("token git-tok-5e4d3c"), "{r:#?}");
        assert_eq!(r.header("private-token"), None, "{r:#?}");
        assert_eq!(r.json()["context"], "skiff/web", "{r:#?}");
    }
    server.halt();
}

#[tokio::test]
async fn a_push_through_the_master_s_dispatch_builds_the_pushed_commit() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let git = http_git(repo.bare_root(), None, None);
    let data = tempfile::tempdir().unwrap();
    let clone_url = format!("http://127.0.0.1:{}/acme/web.git", git.port);
    let top = format!("dispatch-key = \"{DISPATCH_KEY}\"");
    let server = serve(data.path(), "github", &clone_url, "", &top).await;
    let base = format!("http://{}", server.addr);

    // The master's side, as its adapters run it: verify, normalize, decide and sign in one call.
    let sha = &repo.commits[1];
    let body = serde_json::to_vec(&json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": sha,
        "repository": {"full_name": "acme/web", "clone_url": "https://github.com/acme/web.git", "default_branch": "main"},
        "head_commit": {"id": sha, "modified": ["version.txt"]},
        "commits": [{"id": sha, "added": [], "removed": [], "modified": ["version.txt"]}],
        "sender": {"login": "dev"}
    }))
    .unwrap();
    let headers = Headers::from_pairs([
        ("X-GitHub-Event", "push".to_string()),
        ("X-GitHub-Delivery", delivery()),
        ("X-Hub-Signature-256", skiff_edge_core::github_signature(WEBHOOK_SECRET.as_bytes(), &body)),
    ]);
    let apps: Vec<App> = serde_json::from_value(
        json!([{"name": "web", "repository": "acme/web", "on": {"push": {"branches": ["main"]}}}]),
    )
    .unwrap();
    let master = MasterConfig::new(Secret::new(WEBHOOK_SECRET), Secret::new(DISPATCH_KEY), apps);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let outcome = handle_webhook(&master, &headers, &body, now);
    assert_eq!(outcome.status(), 202, "{}", outcome.message());
    let [request] = outcome.requests() else { panic!("one dispatch: {outcome:#?}") };

    let mut post = reqwest::Client::new().post(format!("{base}/v1/dispatch"));
    for (k, v) in &request.headers {
        post = post.header(k, v);
    }
    let resp = post.body(request.body.clone()).send().await.unwrap();
    let status = resp.status();
    let accepted: Value = resp.json().await.unwrap();
    assert_eq!(status, 202, "{accepted:#}");
    let id = accepted["id"].as_i64().unwrap();
    let (run, log) = finished(&base, id).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert_eq!(run["sha"], *sha, "{run:#}");
    assert!(log.contains("built v2 with pipeline two"), "{log}");
    server.halt();
}

#[tokio::test]
async fn a_pipeline_changed_in_a_commit_applies_to_that_commit_only() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    let git = http_git(repo.bare_root(), None, None);
    let data = tempfile::tempdir().unwrap();
    let clone_url = format!("http://127.0.0.1:{}/acme/web.git", git.port);
    let server = serve(data.path(), "gitea", &clone_url, "", "").await;
    let base = format!("http://{}", server.addr);

    // The newer commit first: the older one's run must not pick up the pipeline just seen.
    let newer = gitea_push(&base, &repo.commits[1]).await;
    let (run, log) = finished(&base, newer).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert!(log.contains("built v2 with pipeline two") && !log.contains("pipeline one"), "{log}");

    let older = gitea_push(&base, &repo.commits[0]).await;
    let (run, log) = finished(&base, older).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert_eq!(run["sha"], repo.commits[0], "{run:#}");
    assert!(log.contains("built v1 with pipeline one") && !log.contains("pipeline two"), "{log}");
    server.halt();
}

/// Every regular file under `dir`, as text.
fn files_text(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_symlink() {
            continue;
        }
        if path.is_dir() {
            out += &files_text(&path);
        } else {
            out += &String::from_utf8_lossy(&std::fs::read(&path).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn a_clone_credential_reaches_the_forge_and_nothing_else() {
    if !crate::sandbox::available() {
        return;
    }
    let repo = Repo::new();
    // GitLab takes a token as the password of user `oauth2`.
    let basic = base64::engine::general_purpose::STANDARD.encode("oauth2:git-tok-5e4d3c");
    let want = format!("Basic {basic}");
    let git = http_git(repo.bare_root(), Some(want.clone()), None);
    let data = tempfile::tempdir().unwrap();
    let clone_url = format!("http://127.0.0.1:{}/acme/web.git", git.port);
    let server =
        serve(data.path(), "gitlab", &clone_url, "clone-credential = \"GIT_TOKEN\"", "keep-workspaces = true").await;
    let base = format!("http://{}", server.addr);

    let id = gitlab_push(&base, &repo.commits[1]).await;
    let (run, log) = finished(&base, id).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert!(log.contains("built v2 with pipeline two"), "{log}");
    let auth = git.auth_seen.lock().unwrap().clone();
    assert!(!auth.is_empty() && auth.iter().all(|a| *a == want), "every request carried the token: {auth:?}");

    let list = reqwest::Client::new()
        .get(format!("{base}/v1/runs"))
        .bearer_auth(TOKEN_ALL)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains(&repo.commits[1]), "the list holds the run: {list}");
    let ws = data.path().join("work").join(id.to_string());
    assert!(ws.join(".git/config").is_file(), "keep-workspaces keeps {}", ws.display());
    let workspace = files_text(&ws);
    let token_b64 = base64::engine::general_purpose::STANDARD.encode("git-tok-5e4d3c");
    for (place, text) in [("run", run.to_string()), ("list", list), ("log", log), ("workspace", workspace)] {
        for secret in ["git-tok-5e4d3c", basic.as_str(), token_b64.as_str()] {
            let at = text.find(secret);
            let around = at.map(|i| {
                String::from_utf8_lossy(&text.as_bytes()[i.saturating_sub(200)..]).chars().take(400).collect::<String>()
            });
            assert!(at.is_none(), "the {place} shows `{secret}`: …{}…", around.unwrap_or_default());
        }
    }
    server.halt();
}
