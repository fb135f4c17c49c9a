//! Where a forge serves the archive of a commit, and how it wants the token.

/// The forges with an archive API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    /// GitHub and GitHub Enterprise.
    GitHub,
    /// GitLab.
    GitLab,
    /// Gitee.
    Gitee,
    /// Gitea and Forgejo.
    Gitea,
}

impl Forge {
    /// From the `provider` input or the event's `provider`.
    pub fn parse(name: &str) -> Result<Self, String> {
        Ok(match name.trim().to_ascii_lowercase().as_str() {
            "github" | "" => Self::GitHub,
            "gitlab" => Self::GitLab,
            "gitee" => Self::Gitee,
            "gitea" | "forgejo" | "codeberg" => Self::Gitea,
            other => {
                return Err(format!(
                    "provider `{other}` has no archive API here; use github, gitlab, gitee, gitea or forgejo, or `mode: git`"
                ));
            }
        })
    }

    /// The default API base URL.
    pub fn default_api(self) -> Option<&'static str> {
        match self {
            Self::GitHub => Some("https://api.github.com"),
            Self::GitLab => Some("https://gitlab.com"),
            Self::Gitee => Some("https://gitee.com"),
            Self::Gitea => None,
        }
    }
}

/// The archive URL and request headers for `repo` at `sha`; `zip` picks the zip format.
pub fn archive_request(
    forge: Forge,
    api: &str,
    repo: &str,
    sha: &str,
    zip: bool,
    token: Option<&str>,
) -> (String, Vec<(String, String)>) {
    let api = api.trim_end_matches('/');
    let mut headers = vec![("user-agent".to_string(), "skiff-checkout".to_string())];
    let url = match forge {
        Forge::GitHub => {
            if let Some(t) = token {
                headers.push(("authorization".into(), format!("Bearer {t}")));
            }
            headers.push(("accept".into(), "application/vnd.github+json".into()));
            format!("{api}/repos/{repo}/{}/{sha}", if zip { "zipball" } else { "tarball" })
        }
        Forge::GitLab => {
            if let Some(t) = token {
                headers.push(("private-token".into(), t.to_string()));
            }
            let id = encode(repo);
            format!("{api}/api/v4/projects/{id}/repository/archive.{}?sha={sha}", if zip { "zip" } else { "tar.gz" })
        }
        Forge::Gitee => {
            let token = token.map(|t| format!("&access_token={}", encode(t))).unwrap_or_default();
            format!("{api}/api/v5/repos/{repo}/{}?ref={sha}{token}", if zip { "zipball" } else { "tarball" })
        }
        Forge::Gitea => {
            if let Some(t) = token {
                headers.push(("authorization".into(), format!("token {t}")));
            }
            format!("{api}/api/v1/repos/{repo}/archive/{sha}.{}", if zip { "zip" } else { "tar.gz" })
        }
    };
    (url, headers)
}

/// Percent-encodes everything but unreserved characters (GitLab's `group%2Fproject` ids).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The `scheme://host[:port]` part of a URL.
pub fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    let end = url[after..].find(['/', '?']).map_or(url.len(), |i| after + i);
    &url[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_forge_has_its_own_archive_url_and_token_header() {
        let (u, h) = archive_request(Forge::GitHub, "https://api.github.com/", "acme/web", "abc", false, Some("t"));
        assert_eq!(u, "https://api.github.com/repos/acme/web/tarball/abc");
        assert!(h.contains(&("authorization".into(), "Bearer t".into())));
        let (u, h) = archive_request(Forge::GitLab, "https://gitlab.com", "group/sub/proj", "abc", false, Some("t"));
        assert_eq!(u, "https://gitlab.com/api/v4/projects/group%2Fsub%2Fproj/repository/archive.tar.gz?sha=abc");
        assert!(h.contains(&("private-token".into(), "t".into())));
        let (u, _) = archive_request(Forge::Gitea, "http://127.0.0.1:3000", "o/r", "abc", true, None);
        assert_eq!(u, "http://127.0.0.1:3000/api/v1/repos/o/r/archive/abc.zip");
        let (u, _) = archive_request(Forge::Gitee, "https://gitee.com", "o/r", "abc", false, Some("t"));
        assert_eq!(u, "https://gitee.com/api/v5/repos/o/r/tarball?ref=abc&access_token=t");
        assert_eq!(origin("http://127.0.0.1:9/x/y?z"), "http://127.0.0.1:9");
        assert!(Forge::parse("bitbucket").is_err());
    }
}
