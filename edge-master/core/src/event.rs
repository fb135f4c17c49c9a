//! The one event shape every provider's webhook is normalized into.

use serde::{Deserialize, Serialize};

use crate::verify::Provider;

/// What happened, in one vocabulary for every provider.
///
/// Pull request actions use GitHub's words: GitLab's `open`/`update`/`reopen`/`close`/`merge`,
/// Gitee's, Gitea's `synchronized` and Bitbucket's `pullrequest:*` keys are mapped to
/// `opened`/`synchronize`/`edited`/`reopened`/`closed` (a merge is `closed` with
/// [`PullRequest::merged`] set).
///
/// ```
/// use skiff_edge_core::EventKind;
///
/// let kind = EventKind::PullRequest { action: "opened".into() };
/// assert_eq!(serde_json::to_string(&kind).unwrap(), r#"{"type":"pull_request","action":"opened"}"#);
/// assert_eq!(kind.to_string(), "pull_request (opened)");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// Commits pushed to a branch (or a branch created or deleted).
    Push,
    /// A tag pushed (or deleted).
    Tag,
    /// A pull request (merge request) changed.
    PullRequest {
        /// GitHub's name for the action: `opened`, `synchronize`, `reopened`, `closed`, …
        action: String,
    },
    /// A release was published, created, edited, …
    Release {
        /// The provider's action, e.g. `published`.
        action: String,
    },
    /// The sender checking that the webhook works.
    Ping,
    /// A Standard Webhooks or CloudEvents event.
    Custom {
        /// The event's type, e.g. `com.example.image.pushed`.
        event_type: String,
        /// The CloudEvents `source`, where there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
    /// An event of the provider that Skiff does not act on (issues, comments, stars, …).
    Other {
        /// The provider's event name.
        name: String,
    },
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventKind::Push => f.write_str("push"),
            EventKind::Tag => f.write_str("tag"),
            EventKind::PullRequest { action } => write!(f, "pull_request ({action})"),
            EventKind::Release { action } => write!(f, "release ({action})"),
            EventKind::Ping => f.write_str("ping"),
            EventKind::Custom { event_type, .. } => write!(f, "custom event `{event_type}`"),
            EventKind::Other { name } => write!(f, "event `{name}`"),
        }
    }
}

/// The repository an event belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    /// `owner/name` (GitLab: `group/subgroup/name`).
    pub full_name: String,
    /// The HTTPS clone URL, where the payload has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_url: Option<String>,
    /// The SSH clone URL, where the payload has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_url: Option<String>,
    /// The repository's web page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html_url: Option<String>,
    /// The default branch, where the payload says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_branch: Option<String>,
}

/// The pull request (merge request) of a `pull_request` event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// The number (GitLab: the `iid`) shown to people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u64>,
    /// The title.
    #[serde(default)]
    pub title: String,
    /// The provider's own action word, before mapping (`open`, `update`, `pullrequest:fulfilled`).
    #[serde(default)]
    pub raw_action: String,
    /// The source branch.
    pub head_ref: String,
    /// The source commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_sha: Option<String>,
    /// The target branch.
    pub base_ref: String,
    /// The target commit, where the payload has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_sha: Option<String>,
    /// Whether the pull request was merged (the action is then `closed`).
    #[serde(default)]
    pub merged: bool,
    /// Whether it is a draft.
    #[serde(default)]
    pub draft: bool,
    /// Its web page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html_url: Option<String>,
}

/// A webhook, whatever its sender, in one shape: what triggers match against and what a host
/// receives in a dispatch.
///
/// ```
/// use skiff_edge_core::{normalize, EventKind, Headers, Provider};
///
/// let headers = Headers::from_pairs([("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "abc")]);
/// let body = br#"{"ref":"refs/tags/v1.2.0","before":"0","after":"1","repository":{"full_name":"acme/web"}}"#;
/// let event = normalize(Provider::Github, &headers, body).unwrap();
/// assert_eq!(event.kind, EventKind::Tag);
/// assert_eq!(event.tag.as_deref(), Some("v1.2.0"));
/// assert_eq!(event.delivery_id, "abc");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Who sent it.
    pub provider: Provider,
    /// What happened.
    pub kind: EventKind,
    /// The provider's event name as sent (`push`, `Push Hook`, `repo:push`, a CloudEvent type).
    pub name: String,
    /// The provider's delivery id (`X-GitHub-Delivery`, `X-Gitlab-Event-UUID`, `webhook-id`,
    /// `ce-id`, …), or, for senders without one, `sha256:` and the hex SHA-256 of the body, so
    /// that redelivering the same body can be deduplicated.
    pub delivery_id: String,
    /// The repository, for Git events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<Repository>,
    /// The full ref (`refs/heads/main`, `refs/tags/v1`). For a pull request, a ref the head
    /// commit can be fetched from: `refs/pull/{n}/head` (GitHub, Gitea, Forgejo, Gitee),
    /// `refs/merge-requests/{iid}/head` (GitLab), else `refs/heads/{head branch}`.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// The branch name for a branch push; the head branch for a pull request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The tag name for a tag push or a release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The commit the ref pointed at before a push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// The commit the ref points at after a push (the head commit of a pull request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Whether the push deleted the branch or tag.
    #[serde(default)]
    pub deleted: bool,
    /// The pull request, for `pull_request` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequest>,
    /// Paths added, modified or removed by the pushed commits, without repeats, in order.
    /// `None` when the payload does not list them or lists only some commits: path filters then
    /// cannot exclude the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_paths: Option<Vec<String>>,
    /// Who caused the event (login or user name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The payload as sent, for CEL filters and for steps that need more. For CloudEvents in
    /// binary mode this is the structured form: the `ce-*` attributes plus `data`.
    pub body: serde_json::Value,
}

impl Event {
    /// A short description for logs and reasons: "push to `main` of acme/web".
    pub fn summary(&self) -> String {
        let repo = self.repository.as_ref().map(|r| format!(" of {}", r.full_name)).unwrap_or_default();
        match &self.kind {
            EventKind::Push => format!("push to `{}`{repo}", self.branch.as_deref().unwrap_or("?")),
            EventKind::Tag => format!("tag `{}`{repo}", self.tag.as_deref().unwrap_or("?")),
            EventKind::PullRequest { action } => {
                let pr = self.pull_request.as_ref();
                format!(
                    "pull request {action} from `{}` into `{}`{repo}",
                    pr.map_or("?", |p| p.head_ref.as_str()),
                    pr.map_or("?", |p| p.base_ref.as_str())
                )
            }
            other => format!("{other} from {}{repo}", self.provider),
        }
    }
}
