//! Repository-driven runs: the commit a run builds, and its status back on the forge.

pub mod fetch;
pub mod status;

use std::sync::Arc;

use fetch::{Credential, Remote, Source, Want};
use skiff_edge_core::Provider;

/// How an app's runs get their code: from `repository` (and `provider` or `clone-url`) in
/// `skiff.toml`, resolved.
#[derive(Debug, Clone)]
pub struct RepoSettings {
    /// `clone-url`, when given: used as it is.
    pub clone_url: Option<Remote>,
    /// The forge's web address, where `owner/name.git` is found (`provider-url`, or the
    /// provider's public site).
    pub web_url: Option<String>,
    /// The app's `repository`, when it names one repository (not a glob).
    pub repository: Option<String>,
    pub credential: Option<Credential>,
    /// Commits of history (`fetch-depth`; 0 = all).
    pub depth: u32,
    pub submodules: bool,
    /// Pull requests build `refs/pull/N/merge` (GitHub's test merge) instead of the head.
    pub merge_ref: bool,
    pub ca_bundle: Option<Arc<str>>,
}

/// The public site of a forge, where `owner/name.git` lives.
pub fn provider_site(p: Provider) -> Option<&'static str> {
    Some(match p {
        Provider::Github => "https://github.com",
        Provider::Gitlab => "https://gitlab.com",
        Provider::Gitee => "https://gitee.com",
        Provider::Codeup => "https://codeup.aliyun.com",
        Provider::Bitbucket => "https://bitbucket.org",
        Provider::Gitea | Provider::Forgejo | Provider::StandardWebhooks | Provider::CloudEvents => return None,
    })
}

/// The user name a forge takes with a token over HTTPS.
pub fn token_user(p: Option<Provider>) -> &'static str {
    match p {
        Some(Provider::Github) => "x-access-token",
        Some(Provider::Gitlab) => "oauth2",
        Some(Provider::Bitbucket) => "x-token-auth",
        _ => "git",
    }
}

fn check_full_name(name: &str) -> Result<&str, String> {
    let ok = !name.is_empty()
        && name.split('/').count() >= 2
        && name.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if ok { Ok(name) } else { Err(format!("`{name}` is not a repository name like owner/name")) }
}

impl RepoSettings {
    /// Where the run's code comes from, for its `event`.
    pub fn source(&self, event: &serde_json::Value) -> Result<Source, String> {
        let remote = match &self.clone_url {
            Some(r) => r.clone(),
            None => {
                let name = match &self.repository {
                    Some(n) => n.clone(),
                    None => event
                        .pointer("/repository/full_name")
                        .and_then(|v| v.as_str())
                        .map(String::from)
                        .ok_or("the event names no repository, and the app has no single `repository` to fetch")?,
                };
                let web = self.web_url.as_deref().ok_or(
                    "the app names no forge to fetch from: set `provider-url` (a self-hosted forge) or `clone-url`",
                )?;
                Remote::parse(&format!("{}/{}.git", web.trim_end_matches('/'), check_full_name(&name)?))?
            }
        };
        Ok(Source {
            remote,
            credential: self.credential.clone(),
            depth: self.depth,
            submodules: self.submodules,
            ca_bundle: self.ca_bundle.clone(),
        })
    }

    /// The commit (and the ref it is on) a run with this `event` builds: a pull request's head
    /// (or its merge ref), a push's `after`; the event's ref, or the default branch.
    pub fn want(&self, event: &serde_json::Value, sha: Option<&str>, git_ref: Option<&str>) -> Want {
        let pr = event.get("pull_request").filter(|p| !p.is_null());
        if let Some(pr) = pr {
            let number = pr.get("number").and_then(|n| n.as_u64());
            if self.merge_ref
                && let Some(n) = number
            {
                return Want { sha: None, git_ref: Some(format!("refs/pull/{n}/merge")) };
            }
            let head = pr.get("head_sha").and_then(|s| s.as_str()).map(String::from);
            let r = number.map(|n| format!("refs/pull/{n}/head"));
            return Want { sha: head.or(sha.map(String::from)), git_ref: r };
        }
        let sha = sha.filter(|s| !s.is_empty() && s.bytes().any(|b| b != b'0')).map(String::from);
        let git_ref = git_ref
            .filter(|r| !r.is_empty())
            .map(|r| if r.starts_with("refs/") { r.to_string() } else { format!("refs/heads/{r}") });
        Want { sha, git_ref }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(provider: Option<Provider>, repository: Option<&str>) -> RepoSettings {
        RepoSettings {
            clone_url: None,
            web_url: provider.and_then(provider_site).map(String::from),
            repository: repository.map(String::from),
            credential: None,
            depth: 1,
            submodules: false,
            merge_ref: false,
            ca_bundle: None,
        }
    }

    #[test]
    fn clone_urls_come_from_the_provider_and_the_repository() {
        let event = serde_json::json!({"repository": {"full_name": "acme/api"}});
        for (p, want) in [
            (Provider::Github, "https://github.com/acme/web.git"),
            (Provider::Gitlab, "https://gitlab.com/acme/web.git"),
            (Provider::Gitee, "https://gitee.com/acme/web.git"),
            (Provider::Codeup, "https://codeup.aliyun.com/acme/web.git"),
            (Provider::Bitbucket, "https://bitbucket.org/acme/web.git"),
        ] {
            assert_eq!(settings(Some(p), Some("acme/web")).source(&event).unwrap().remote.url(), want);
        }
        // A glob (or no repository) takes the event's repository.
        assert_eq!(
            settings(Some(Provider::Github), None).source(&event).unwrap().remote.url(),
            "https://github.com/acme/api.git"
        );
        // A self-hosted forge.
        let mut s = settings(Some(Provider::Gitea), Some("team/app"));
        assert!(s.source(&event).unwrap_err().contains("provider-url"));
        s.web_url = Some("https://git.example.com/".into());
        assert_eq!(s.source(&event).unwrap().remote.url(), "https://git.example.com/team/app.git");
        // Names that would steer the URL are refused.
        for bad in ["../etc", "acme", "acme/web?x=1", "acme/ web"] {
            let e = serde_json::json!({"repository": {"full_name": bad}});
            assert!(settings(Some(Provider::Github), None).source(&e).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_commit_comes_from_the_event() {
        let s = settings(Some(Provider::Github), Some("acme/web"));
        let sha = "a".repeat(40);
        let push = s.want(&serde_json::json!({}), Some(&sha), Some("refs/heads/main"));
        assert_eq!(
            (push.sha.as_deref(), push.git_ref.as_deref(), push.branch()),
            (Some(sha.as_str()), Some("refs/heads/main"), Some("main"))
        );
        // A branch deletion's zero sha, or a manual run's bare branch name: the ref's head.
        let manual = s.want(&serde_json::json!({}), Some(&"0".repeat(40)), Some("release"));
        assert_eq!((manual.sha, manual.git_ref.as_deref()), (None, Some("refs/heads/release")));
        let pr = serde_json::json!({"pull_request": {"number": 7, "head_sha": "b".repeat(40)}});
        let head = s.want(&pr, Some(&sha), Some("refs/pull/7/head"));
        assert_eq!(
            (head.sha.clone(), head.git_ref.as_deref(), head.branch()),
            (Some("b".repeat(40)), Some("refs/pull/7/head"), None)
        );
        let merged = RepoSettings { merge_ref: true, ..s }.want(&pr, Some(&sha), None);
        assert_eq!((merged.sha, merged.git_ref.as_deref()), (None, Some("refs/pull/7/merge")));
    }
}
