//! Every recorded webhook, replayed: verified, normalized, matched and dispatched.

use skiff_edge_core::{
    EventKind, Outcome, Provider, Secret, VerifyOptions, handle_webhook, normalize, verify, verify_dispatch,
};

use crate::fixtures::{DISPATCH_KEY, NOW, SECRET, apps, load, master, secret_for};

fn replay(provider_dir: &str, name: &str) -> (Provider, skiff_edge_core::Event) {
    let rec = load(provider_dir, name);
    let provider = verify(&rec.headers, &rec.body, &secret_for(provider_dir), NOW, &VerifyOptions::default())
        .unwrap_or_else(|e| panic!("{provider_dir}/{name}: {e}"));
    let event = normalize(provider, &rec.headers, &rec.body).unwrap();
    (provider, event)
}

const ALL_APP: &str = r#"
- name: all
  on: [push, pull_request, release, tag, custom]
"#;

#[test]
fn every_fixture_verifies_and_normalizes() {
    let cases = [
        ("github", "push", Provider::Github),
        ("github", "push-large", Provider::Github),
        ("github", "push-tag", Provider::Github),
        ("github", "pull_request", Provider::Github),
        ("github", "ping", Provider::Github),
        ("github", "issues", Provider::Github),
        ("gitlab", "push", Provider::Gitlab),
        ("gitlab", "tag_push", Provider::Gitlab),
        ("gitlab", "merge_request", Provider::Gitlab),
        ("gitee", "push", Provider::Gitee),
        ("gitea", "push", Provider::Gitea),
        ("forgejo", "push", Provider::Forgejo),
        ("codeup", "push", Provider::Codeup),
        ("bitbucket", "repo-push", Provider::Bitbucket),
        ("standard-webhooks", "image-pushed", Provider::StandardWebhooks),
        ("cloudevents", "binary", Provider::CloudEvents),
        ("cloudevents", "structured", Provider::CloudEvents),
    ];
    for (dir, name, expected) in cases {
        let (provider, event) = replay(dir, name);
        assert_eq!(provider, expected, "{dir}/{name}");
        assert_eq!(event.provider, expected);
        assert!(!event.delivery_id.is_empty());
        // The event survives a JSON round trip (it travels in dispatches).
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<skiff_edge_core::Event>(&json).unwrap(), event);
    }
}

#[test]
fn github_push() {
    let (_, e) = replay("github", "push");
    assert_eq!(e.kind, EventKind::Push);
    assert_eq!(e.name, "push");
    assert_eq!(e.delivery_id, "0b5c8e40-f8d1-11ef-9a3c-5a1f2b8c4d7e");
    assert_eq!(e.git_ref.as_deref(), Some("refs/heads/main"));
    assert_eq!(e.branch.as_deref(), Some("main"));
    assert_eq!(e.tag, None);
    assert_eq!(e.before.as_deref(), Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246"));
    assert_eq!(e.after.as_deref(), e.body["head_commit"]["id"].as_str());
    assert_eq!(e.sender.as_deref(), Some("monalisa"));
    let repo = e.repository.as_ref().unwrap();
    assert_eq!(repo.full_name, "acme/web");
    assert_eq!(repo.clone_url.as_deref(), Some("https://github.com/acme/web.git"));
    assert_eq!(repo.ssh_url.as_deref(), Some("git@github.com:acme/web.git"));
    assert_eq!(repo.html_url.as_deref(), Some("https://github.com/acme/web"));
    assert_eq!(repo.default_branch.as_deref(), Some("main"));
    assert_eq!(
        e.changed_paths,
        Some(vec![
            "src/features/f0/index.ts".to_string(),
            "src/app/page.tsx".into(),
            "src/app/layout.tsx".into(),
            "src/lib/cart.ts".into()
        ])
    );
    assert!(!e.deleted);
}

#[test]
fn github_push_large_lists_paths_of_all_19_commits() {
    let (_, e) = replay("github", "push-large");
    let paths = e.changed_paths.unwrap();
    assert!(paths.contains(&"src/features/f18/index.ts".to_string()), "{paths:?}");
    assert!(paths.contains(&"src/legacy/old15.ts".to_string()));
}

#[test]
fn github_tag_push() {
    let (_, e) = replay("github", "push-tag");
    assert_eq!(e.kind, EventKind::Tag);
    assert_eq!(e.tag.as_deref(), Some("v2.4.0"));
    assert_eq!(e.branch, None);
    assert_eq!(e.before.as_deref(), Some("0000000000000000000000000000000000000000"));
}

#[test]
fn github_pull_request() {
    let (_, e) = replay("github", "pull_request");
    assert_eq!(e.kind, EventKind::PullRequest { action: "opened".into() });
    let pr = e.pull_request.as_ref().unwrap();
    assert_eq!(pr.number, Some(128));
    assert_eq!(pr.head_ref, "feature/edge-images");
    assert_eq!(pr.base_ref, "main");
    assert_eq!(pr.base_sha.as_deref(), Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246"));
    assert_eq!(pr.head_sha, e.after);
    assert_eq!(pr.title, "Cache product images at the edge");
    assert_eq!(e.git_ref.as_deref(), Some("refs/pull/128/head"));
    assert_eq!(e.branch.as_deref(), Some("feature/edge-images"));
}

#[test]
fn github_ping_is_answered_with_pong() {
    let rec = load("github", "ping");
    let out = handle_webhook(&master("github", apps(ALL_APP)), &rec.headers, &rec.body, NOW);
    assert_eq!(out.status(), 200);
    assert!(out.message().starts_with("pong"), "{}", out.message());
    assert!(out.requests().is_empty());
}

#[test]
fn gitlab_push_tag_and_merge_request() {
    let (_, e) = replay("gitlab", "push");
    assert_eq!(e.kind, EventKind::Push);
    assert_eq!(e.branch.as_deref(), Some("release/2025.03"));
    assert_eq!(e.delivery_id, "9cfb1e4a-3c21-4c4e-a1f5-0e8e6f1d2b47");
    assert_eq!(e.sender.as_deref(), Some("jsmith"));
    let repo = e.repository.as_ref().unwrap();
    assert_eq!(repo.full_name, "acme/backend/api");
    assert_eq!(repo.clone_url.as_deref(), Some("https://gitlab.example.com/acme/backend/api.git"));
    assert_eq!(
        e.changed_paths.unwrap(),
        ["src/export.rs", "src/main.rs", "Cargo.toml", "src/db.rs", "migrations/0007_tmp.sql"]
    );

    let (_, e) = replay("gitlab", "tag_push");
    assert_eq!(e.kind, EventKind::Tag);
    assert_eq!(e.tag.as_deref(), Some("v3.1.0"));

    let (_, e) = replay("gitlab", "merge_request");
    assert_eq!(e.kind, EventKind::PullRequest { action: "synchronize".into() });
    let pr = e.pull_request.unwrap();
    assert_eq!((pr.head_ref.as_str(), pr.base_ref.as_str(), pr.number), ("feature/export", "main", Some(17)));
    assert_eq!(pr.raw_action, "update");
    assert_eq!(e.git_ref.as_deref(), Some("refs/merge-requests/17/head"));
    assert_eq!(e.sender.as_deref(), Some("jsmith"));
}

#[test]
fn gitee_push_in_signature_and_password_modes() {
    let (_, e) = replay("gitee", "push");
    assert_eq!(e.kind, EventKind::Push);
    assert_eq!(e.branch.as_deref(), Some("master"));
    assert_eq!(e.repository.as_ref().unwrap().full_name, "acme-cn/shop-mini");
    assert_eq!(
        e.changed_paths.as_deref(),
        Some(&["pages/cart/cart.js".to_string(), "pages/cart/cart.wxml".into()][..])
    );
    assert!(e.delivery_id.starts_with("sha256:"), "Gitee sends no delivery id: {}", e.delivery_id);

    // Password mode: the token is the secret itself.
    let rec = load("gitee", "push");
    let headers = crate::fixtures::with_header(&rec, "X-Gitee-Token", SECRET);
    assert_eq!(verify(&headers, &rec.body, &Secret::new(SECRET), NOW, &VerifyOptions::default()), Ok(Provider::Gitee));
}

#[test]
fn gitea_and_forgejo_are_not_mistaken_for_github() {
    let (p, e) = replay("gitea", "push");
    assert_eq!(p, Provider::Gitea);
    assert_eq!(e.delivery_id, "8c1f2e9a-7d61-4f0b-b4f2-93a6e1c0d5b7");
    assert_eq!(e.repository.as_ref().unwrap().clone_url.as_deref(), Some("https://gitea.acme.example/ops/infra.git"));
    assert_eq!(e.changed_paths.as_deref(), Some(&["envs/staging/main.tf".to_string()][..]));

    let (p, e) = replay("forgejo", "push");
    assert_eq!(p, Provider::Forgejo);
    assert_eq!(e.repository.as_ref().unwrap().full_name, "acme/infra");
    assert_eq!(e.sender.as_deref(), Some("ana"));
}

#[test]
fn codeup_push_is_read_like_gitlab() {
    let (_, e) = replay("codeup", "push");
    assert_eq!(e.kind, EventKind::Push);
    assert_eq!(e.branch.as_deref(), Some("master"));
    let repo = e.repository.unwrap();
    assert_eq!(repo.full_name, "6412a0c2e5f1b3d4a7c8e9f0/acme/order-service");
    assert_eq!(
        repo.clone_url.as_deref(),
        Some("https://codeup.aliyun.com/6412a0c2e5f1b3d4a7c8e9f0/acme/order-service.git")
    );
    assert_eq!(e.changed_paths, None, "Codeup commits do not list files");
    assert_eq!(e.sender.as_deref(), Some("zhangsan"));
}

#[test]
fn bitbucket_push() {
    let (_, e) = replay("bitbucket", "repo-push");
    assert_eq!(e.kind, EventKind::Push);
    assert_eq!(e.branch.as_deref(), Some("develop"));
    assert_eq!(e.delivery_id, "e1d2c3b4-a596-4788-9a0b-1c2d3e4f5a6b");
    assert_eq!(e.before.as_deref(), Some("5b2e7c9f1d3a4e6b8c0d2f4a6b8c0e2f4a6b8d0c"));
    assert_eq!(e.sender.as_deref(), Some("samlee"));
    let repo = e.repository.unwrap();
    assert_eq!(repo.full_name, "acme/mobile-app");
    assert_eq!(repo.clone_url.as_deref(), Some("https://bitbucket.org/acme/mobile-app.git"));
}

#[test]
fn standard_webhooks_and_cloudevents_are_custom_events() {
    let (_, e) = replay("standard-webhooks", "image-pushed");
    assert_eq!(e.kind, EventKind::Custom { event_type: "registry.image.pushed".into(), source: None });
    assert_eq!(e.delivery_id, "msg_2mXvFQFkX0fd5Y3N8b7Jw4yTq9R");

    let (_, e) = replay("cloudevents", "binary");
    assert_eq!(
        e.kind,
        EventKind::Custom {
            event_type: "com.acme.storage.object.created".into(),
            source: Some("/storage/acme-artifacts".into())
        }
    );
    assert_eq!(e.body["data"]["bucket"], "acme-artifacts");
    assert_eq!(e.body["subject"], "builds/web/2025.03.04-1.tar.gz");
    assert_eq!(e.delivery_id, "/storage/acme-artifacts#b25e2717-a470-45a0-8231-985a99aa9416");

    let (_, e) = replay("cloudevents", "structured");
    assert_eq!(e.name, "com.acme.deploy.requested");
    assert_eq!(e.body["data"]["environment"], "production");
}

/// The full path for each Git host: a matching app gets a signed dispatch the host accepts.
#[test]
fn every_git_push_is_dispatched_and_the_host_accepts_it() {
    let cases = [
        ("github", "push"),
        ("gitlab", "push"),
        ("gitee", "push"),
        ("gitea", "push"),
        ("forgejo", "push"),
        ("codeup", "push"),
        ("bitbucket", "repo-push"),
        ("standard-webhooks", "image-pushed"),
        ("cloudevents", "binary"),
        ("cloudevents", "structured"),
        ("github", "pull_request"),
        ("gitlab", "merge_request"),
        ("gitlab", "tag_push"),
    ];
    for (dir, name) in cases {
        let rec = load(dir, name);
        let out = handle_webhook(&master(dir, apps(ALL_APP)), &rec.headers, &rec.body, NOW);
        assert_eq!(out.status(), 202, "{dir}/{name}: {}", out.message());
        let Outcome::Dispatched { event, requests, .. } = &out else { panic!() };
        assert_eq!(requests.len(), 1);
        let req = &requests[0];
        assert_eq!(req.id, format!("{}:all", event.delivery_id));
        let headers = skiff_edge_core::Headers::from_pairs(req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let dispatch = verify_dispatch(&headers, &req.body, &Secret::new(DISPATCH_KEY), NOW + 2, 300).unwrap();
        assert_eq!(dispatch.app, "all");
        assert_eq!(&dispatch.event, event.as_ref());
        let body: serde_json::Value = serde_json::from_slice(&out.response_body()).unwrap();
        assert_eq!(body["status"], 202);
        assert_eq!(body["decisions"][0]["decision"], "dispatch");
    }
}
