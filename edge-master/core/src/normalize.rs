//! Turning each provider's payload into one [`Event`].

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::event::{Event, EventKind, PullRequest, Repository};
use crate::headers::Headers;
use crate::verify::{Provider, media_type};

/// GitHub lists at most this many commits in a push payload; with that many, the list may be
/// cut short and the changed paths are reported as unknown.
const GITHUB_COMMIT_LIST_LIMIT: usize = 20;

/// How deep a payload may nest arrays and objects. serde_json reads at most 128 levels, and a
/// run request carries the body two levels down (the dispatch, its event), the run store and the
/// API a few more: a deeper body would be accepted here, then refused on the way to the host.
const MAX_BODY_DEPTH: usize = 100;

/// Why a verified payload could not be read. Answered with HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NormalizeError {
    /// The body is not JSON.
    #[error(
        "the {provider} webhook body is not valid JSON ({message}); set the webhook's content type to `application/json`"
    )]
    MalformedJson {
        /// The sender.
        provider: Provider,
        /// serde_json's description, with line and column.
        message: String,
    },
    /// The body is JSON but not an object.
    #[error("the {provider} webhook body should be a JSON object, not {found}")]
    NotAnObject {
        /// The sender.
        provider: Provider,
        /// What it is instead.
        found: &'static str,
    },
    /// A field that this kind of event always has is missing.
    #[error("the {provider} `{event}` payload has no `{field}`, which this event always carries")]
    MissingField {
        /// The sender.
        provider: Provider,
        /// The provider's event name.
        event: String,
        /// The field, as a dotted path.
        field: &'static str,
    },
    /// The body nests arrays and objects deeper than a run request can carry.
    #[error("the {provider} webhook body nests arrays and objects more than {limit} levels deep")]
    TooDeep {
        /// The sender.
        provider: Provider,
        /// The deepest nesting accepted.
        limit: usize,
    },
    /// A header that names the event is missing.
    #[error("the {provider} request has no `{header}` header naming its event")]
    MissingEventHeader {
        /// The sender.
        provider: Provider,
        /// The header.
        header: &'static str,
    },
}

impl NormalizeError {
    /// The HTTP status to answer with: always 400.
    pub fn status(&self) -> u16 {
        400
    }
}

/// Reads a verified webhook into an [`Event`].
///
/// Events Skiff does not act on (issues, comments, stars, …) are not errors: they come back as
/// [`EventKind::Other`] so that the sender gets a polite "ignored". Malformed JSON, or a push
/// without a `ref`, is an error.
///
/// ```
/// use skiff_edge_core::{normalize, EventKind, Headers, NormalizeError, Provider};
///
/// let headers = Headers::from_pairs([("X-Gitlab-Event", "Push Hook")]);
/// let body = br#"{"object_kind":"push","ref":"refs/heads/dev","before":"a","after":"b",
///     "project":{"path_with_namespace":"group/app"},"commits":[{"added":["x.rs"],"modified":[],"removed":[]}],
///     "total_commits_count":1}"#;
/// let event = normalize(Provider::Gitlab, &headers, body).unwrap();
/// assert_eq!(event.branch.as_deref(), Some("dev"));
/// assert_eq!(event.changed_paths, Some(vec!["x.rs".to_string()]));
///
/// let err = normalize(Provider::Gitlab, &headers, b"{not json").unwrap_err();
/// assert!(matches!(err, NormalizeError::MalformedJson { .. }));
/// assert_eq!(err.status(), 400);
/// ```
pub fn normalize(provider: Provider, headers: &Headers, body: &[u8]) -> Result<Event, NormalizeError> {
    let event = match provider {
        Provider::Github | Provider::Gitea | Provider::Forgejo => github_like(provider, headers, body),
        Provider::Gitee => gitee(headers, body),
        Provider::Gitlab | Provider::Codeup => gitlab_like(provider, headers, body),
        Provider::Bitbucket => bitbucket(headers, body),
        Provider::StandardWebhooks => standard_webhooks(headers, body),
        Provider::CloudEvents => cloudevents(headers, body),
    }?;
    if nests_deeper(&event.body, MAX_BODY_DEPTH) {
        return Err(NormalizeError::TooDeep { provider, limit: MAX_BODY_DEPTH });
    }
    Ok(event)
}

/// Whether `v` nests arrays and objects more than `limit` levels deep.
fn nests_deeper(v: &Value, limit: usize) -> bool {
    match v {
        Value::Array(a) => limit == 0 || a.iter().any(|c| nests_deeper(c, limit - 1)),
        Value::Object(o) => limit == 0 || o.values().any(|c| nests_deeper(c, limit - 1)),
        _ => false,
    }
}

fn parse_object(provider: Provider, body: &[u8]) -> Result<Value, NormalizeError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| NormalizeError::MalformedJson { provider, message: e.to_string() })?;
    if value.is_object() { Ok(value) } else { Err(NormalizeError::NotAnObject { provider, found: kind_of(&value) }) }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn event_name(provider: Provider, headers: &Headers) -> Result<String, NormalizeError> {
    let header = provider.event_header().unwrap_or("x-event");
    headers.get_nonempty(header).map(str::to_owned).ok_or(NormalizeError::MissingEventHeader { provider, header })
}

fn delivery_id(headers: &Headers, names: &[&str], body: &[u8]) -> String {
    names
        .iter()
        .find_map(|n| headers.get_nonempty(n))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(body))))
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k)).filter(|v| !v.is_null())
}

/// A string at `path`; numbers are written out (ids are numbers in some payloads).
fn text(v: &Value, path: &[&str]) -> Option<String> {
    match at(v, path)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn first_text(v: &Value, paths: &[&[&str]]) -> Option<String> {
    paths.iter().find_map(|p| text(v, p))
}

fn number(v: &Value, path: &[&str]) -> Option<u64> {
    match at(v, path)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn flag(v: &Value, path: &[&str]) -> bool {
    at(v, path).and_then(Value::as_bool).unwrap_or(false)
}

fn is_zero_sha(sha: Option<&str>) -> bool {
    sha.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b == b'0'))
}

fn require(
    provider: Provider,
    name: &str,
    value: Option<String>,
    field: &'static str,
) -> Result<String, NormalizeError> {
    value.ok_or_else(|| NormalizeError::MissingField { provider, event: name.to_owned(), field })
}

/// Paths from `commits[].added/modified/removed`, or `None` when some commit lacks them or the
/// list is known (or likely) to be cut short.
fn changed_paths(v: &Value, maybe_truncated: bool) -> Option<Vec<String>> {
    let commits = at(v, &["commits"])?.as_array()?;
    if maybe_truncated {
        return None;
    }
    let mut paths: Vec<String> = Vec::new();
    for commit in commits {
        let mut any = false;
        for key in ["added", "modified", "removed"] {
            if let Some(list) = commit.get(key).and_then(Value::as_array) {
                any = true;
                for p in list.iter().filter_map(Value::as_str) {
                    if !paths.iter().any(|q| q == p) {
                        paths.push(p.to_owned());
                    }
                }
            }
        }
        if !any {
            return None;
        }
    }
    Some(paths)
}

/// Whether a `total_commits_count`-style field says there were more commits than listed.
fn more_commits_than_listed(v: &Value, total_field: &str) -> bool {
    let listed = at(v, &["commits"]).and_then(Value::as_array).map_or(0, Vec::len) as u64;
    number(v, &[total_field]).is_some_and(|total| total > listed)
}

fn split_ref(git_ref: &str) -> (Option<String>, Option<String>) {
    if let Some(b) = git_ref.strip_prefix("refs/heads/") {
        (Some(b.to_owned()), None)
    } else if let Some(t) = git_ref.strip_prefix("refs/tags/") {
        (None, Some(t.to_owned()))
    } else {
        (None, None)
    }
}

fn new_event(provider: Provider, name: String, delivery_id: String, body: Value) -> Event {
    Event {
        provider,
        kind: EventKind::Other { name: name.clone() },
        name,
        delivery_id,
        repository: None,
        git_ref: None,
        branch: None,
        tag: None,
        before: None,
        after: None,
        deleted: false,
        pull_request: None,
        changed_paths: None,
        sender: None,
        body,
    }
}

/// Fills ref, branch/tag, before/after and kind of a push.
fn fill_push(event: &mut Event, git_ref: String, before: Option<String>, after: Option<String>, deleted: bool) {
    let (branch, tag) = split_ref(&git_ref);
    event.kind = if tag.is_some() { EventKind::Tag } else { EventKind::Push };
    event.deleted = deleted || is_zero_sha(after.as_deref());
    event.branch = branch;
    event.tag = tag;
    event.git_ref = Some(git_ref);
    event.before = before;
    event.after = after;
}

/// `repository` in the GitHub shape, which Gitea, Forgejo and Gitee share (Gitee with a few
/// GitLab-style aliases).
fn github_repository(v: &Value) -> Option<Repository> {
    let repo = at(v, &["repository"])?;
    Some(Repository {
        full_name: first_text(repo, &[&["full_name"], &["path_with_namespace"], &["name"]])?,
        clone_url: first_text(repo, &[&["clone_url"], &["git_http_url"]]),
        ssh_url: first_text(repo, &[&["ssh_url"], &["git_ssh_url"]]),
        html_url: first_text(repo, &[&["html_url"], &["url"]]),
        default_branch: text(repo, &["default_branch"]),
    })
}

/// GitHub's words for pull request actions.
fn pr_action(raw: &str, has_new_commits: bool) -> String {
    match raw {
        "open" | "opened" | "created" => "opened",
        "reopen" | "reopened" => "reopened",
        "close" | "closed" | "merge" | "merged" | "rejected" | "fulfilled" => "closed",
        "synchronize" | "synchronized" => "synchronize",
        "update" | "updated" if has_new_commits => "synchronize",
        "update" | "updated" | "edited" => "edited",
        other => other,
    }
    .to_owned()
}

fn github_like(provider: Provider, headers: &Headers, body: &[u8]) -> Result<Event, NormalizeError> {
    let name = event_name(provider, headers)?;
    let delivery = match provider {
        Provider::Github => delivery_id(headers, &["x-github-delivery"], body),
        Provider::Gitea => delivery_id(headers, &["x-gitea-delivery", "x-github-delivery"], body),
        _ => delivery_id(headers, &["x-forgejo-delivery", "x-gitea-delivery", "x-github-delivery"], body),
    };
    let v = parse_object(provider, body)?;
    let mut event = new_event(provider, name.clone(), delivery, Value::Null);
    event.repository = github_repository(&v);
    event.sender = first_text(&v, &[&["sender", "login"], &["sender", "username"], &["pusher", "name"]]);
    match name.as_str() {
        "ping" => event.kind = EventKind::Ping,
        "push" => {
            let git_ref = require(provider, &name, text(&v, &["ref"]), "ref")?;
            let truncated = match provider {
                Provider::Github => {
                    at(&v, &["commits"]).and_then(Value::as_array).is_some_and(|c| c.len() >= GITHUB_COMMIT_LIST_LIMIT)
                }
                _ => more_commits_than_listed(&v, "total_commits"),
            };
            event.changed_paths = changed_paths(&v, truncated);
            fill_push(&mut event, git_ref, text(&v, &["before"]), text(&v, &["after"]), flag(&v, &["deleted"]));
        }
        "pull_request" | "pull_request_sync" => {
            let raw = require(provider, &name, text(&v, &["action"]), "action")?;
            let pr = at(&v, &["pull_request"]).ok_or(NormalizeError::MissingField {
                provider,
                event: name.clone(),
                field: "pull_request",
            })?;
            let number = number(pr, &["number"]).or_else(|| number(&v, &["number"]));
            let head_ref = require(provider, &name, text(pr, &["head", "ref"]), "pull_request.head.ref")?;
            let pull = PullRequest {
                number,
                title: text(pr, &["title"]).unwrap_or_default(),
                head_ref: head_ref.clone(),
                head_sha: text(pr, &["head", "sha"]),
                base_ref: require(provider, &name, text(pr, &["base", "ref"]), "pull_request.base.ref")?,
                base_sha: text(pr, &["base", "sha"]),
                merged: flag(pr, &["merged"]),
                draft: flag(pr, &["draft"]),
                html_url: text(pr, &["html_url"]),
                raw_action: raw.clone(),
            };
            event.kind = EventKind::PullRequest { action: pr_action(&raw, true) };
            event.git_ref = Some(match number {
                Some(n) => format!("refs/pull/{n}/head"),
                None => format!("refs/heads/{head_ref}"),
            });
            event.branch = Some(head_ref);
            event.after = pull.head_sha.clone();
            event.pull_request = Some(pull);
        }
        "release" => {
            let action = text(&v, &["action"]).unwrap_or_else(|| "published".into());
            let tag = text(&v, &["release", "tag_name"]);
            event.git_ref = tag.as_ref().map(|t| format!("refs/tags/{t}"));
            event.tag = tag;
            event.kind = EventKind::Release { action };
        }
        _ => {}
    }
    event.body = v;
    Ok(event)
}

fn gitee(headers: &Headers, body: &[u8]) -> Result<Event, NormalizeError> {
    let provider = Provider::Gitee;
    let name = event_name(provider, headers)?;
    let delivery = delivery_id(headers, &["x-gitee-delivery", "x-git-oschina-delivery"], body);
    let v = parse_object(provider, body)?;
    let mut event = new_event(provider, name.clone(), delivery, Value::Null);
    event.repository = github_repository(&v).or_else(|| {
        let mut repo = github_repository(&serde_json::json!({ "repository": at(&v, &["project"])? }))?;
        repo.full_name = text(&v, &["project", "path_with_namespace"]).unwrap_or(repo.full_name);
        Some(repo)
    });
    event.sender =
        first_text(&v, &[&["sender", "login"], &["sender", "username"], &["user_name"], &["pusher", "name"]]);
    let hook = text(&v, &["hook_name"]).unwrap_or_default();
    if headers.get("x-gitee-ping").is_some_and(|p| p.eq_ignore_ascii_case("true")) {
        event.kind = EventKind::Ping;
    } else if matches!(name.as_str(), "Push Hook" | "Tag Push Hook") || hook == "push_hooks" || hook == "tag_push_hooks"
    {
        let git_ref = require(provider, &name, text(&v, &["ref"]), "ref")?;
        event.changed_paths = changed_paths(&v, more_commits_than_listed(&v, "total_commits_count"));
        fill_push(&mut event, git_ref, text(&v, &["before"]), text(&v, &["after"]), flag(&v, &["deleted"]));
    } else if name == "Merge Request Hook" || hook == "merge_request_hooks" {
        let raw = require(provider, &name, text(&v, &["action"]), "action")?;
        let pr = at(&v, &["pull_request"]).ok_or(NormalizeError::MissingField {
            provider,
            event: name.clone(),
            field: "pull_request",
        })?;
        let merged = flag(pr, &["merged"]) || raw == "merge";
        let new_commits = text(&v, &["action_desc"]).is_some_and(|d| d.contains("source_branch_changed"));
        let number = number(pr, &["number"]);
        let head_ref = require(provider, &name, text(pr, &["head", "ref"]), "pull_request.head.ref")?;
        let pull = PullRequest {
            number,
            title: text(pr, &["title"]).unwrap_or_default(),
            head_ref: head_ref.clone(),
            head_sha: text(pr, &["head", "sha"]),
            base_ref: require(provider, &name, text(pr, &["base", "ref"]), "pull_request.base.ref")?,
            base_sha: text(pr, &["base", "sha"]),
            merged,
            draft: flag(pr, &["draft"]),
            html_url: text(pr, &["html_url"]),
            raw_action: raw.clone(),
        };
        event.kind = EventKind::PullRequest { action: pr_action(&raw, new_commits) };
        event.git_ref = Some(match number {
            Some(n) => format!("refs/pull/{n}/head"),
            None => format!("refs/heads/{head_ref}"),
        });
        event.branch = Some(head_ref);
        event.after = pull.head_sha.clone();
        event.pull_request = Some(pull);
    }
    event.body = v;
    Ok(event)
}

fn gitlab_repository(v: &Value) -> Option<Repository> {
    let project = at(v, &["project"]);
    let repo = at(v, &["repository"]);
    let homepage = repo.and_then(|r| text(r, &["homepage"])).or_else(|| project.and_then(|p| text(p, &["web_url"])));
    let full_name = project
        .and_then(|p| text(p, &["path_with_namespace"]))
        .or_else(|| homepage.as_deref().and_then(url_path))
        .or_else(|| repo.and_then(|r| text(r, &["name"])))?;
    let pick = |path: &[&str]| project.and_then(|p| text(p, path)).or_else(|| repo.and_then(|r| text(r, path)));
    Some(Repository {
        full_name,
        clone_url: pick(&["git_http_url"]),
        ssh_url: pick(&["git_ssh_url"]),
        html_url: homepage,
        default_branch: pick(&["default_branch"]),
    })
}

/// `group/app` from `https://host/group/app`.
fn url_path(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split_once('/')?.1.trim_end_matches('/').trim_end_matches(".git");
    (!path.is_empty()).then(|| path.to_owned())
}

fn gitlab_like(provider: Provider, headers: &Headers, body: &[u8]) -> Result<Event, NormalizeError> {
    let name = event_name(provider, headers)?;
    let delivery = delivery_id(
        headers,
        &[
            "x-gitlab-event-uuid",
            "x-gitlab-webhook-uuid",
            "idempotency-key",
            "x-codeup-delivery",
            "x-codeup-event-uuid",
        ],
        body,
    );
    let v = parse_object(provider, body)?;
    let mut event = new_event(provider, name.clone(), delivery, Value::Null);
    event.repository = gitlab_repository(&v);
    event.sender = first_text(&v, &[&["user_username"], &["user", "username"], &["user_name"], &["user", "name"]]);
    let kind = text(&v, &["object_kind"]).unwrap_or_default();
    match (name.as_str(), kind.as_str()) {
        ("Push Hook" | "Tag Push Hook", _) | (_, "push" | "tag_push") => {
            let git_ref = require(provider, &name, text(&v, &["ref"]), "ref")?;
            event.changed_paths = changed_paths(&v, more_commits_than_listed(&v, "total_commits_count"));
            let after = text(&v, &["after"]);
            fill_push(&mut event, git_ref, text(&v, &["before"]), after, false);
        }
        ("Merge Request Hook", _) | (_, "merge_request") => {
            let attrs = at(&v, &["object_attributes"]).ok_or(NormalizeError::MissingField {
                provider,
                event: name.clone(),
                field: "object_attributes",
            })?;
            let raw = text(attrs, &["action"]).unwrap_or_else(|| "open".into());
            let merged = raw == "merge" || text(attrs, &["state"]).as_deref() == Some("merged");
            let head_ref =
                require(provider, &name, text(attrs, &["source_branch"]), "object_attributes.source_branch")?;
            let number = number(attrs, &["iid"]);
            let pull = PullRequest {
                number,
                title: text(attrs, &["title"]).unwrap_or_default(),
                head_ref: head_ref.clone(),
                head_sha: first_text(attrs, &[&["last_commit", "id"], &["source_commit"]]),
                base_ref: require(provider, &name, text(attrs, &["target_branch"]), "object_attributes.target_branch")?,
                base_sha: text(attrs, &["target_commit"]),
                merged,
                draft: flag(attrs, &["draft"]) || flag(attrs, &["work_in_progress"]),
                html_url: text(attrs, &["url"]),
                raw_action: raw.clone(),
            };
            event.kind = EventKind::PullRequest { action: pr_action(&raw, text(attrs, &["oldrev"]).is_some()) };
            event.git_ref = Some(match (provider, number) {
                (Provider::Gitlab, Some(n)) => format!("refs/merge-requests/{n}/head"),
                _ => format!("refs/heads/{head_ref}"),
            });
            event.branch = Some(head_ref);
            event.after = pull.head_sha.clone();
            event.pull_request = Some(pull);
        }
        ("Release Hook", _) | (_, "release") => {
            let action = text(&v, &["action"]).unwrap_or_else(|| "create".into());
            let tag = text(&v, &["tag"]);
            event.git_ref = tag.as_ref().map(|t| format!("refs/tags/{t}"));
            event.tag = tag;
            event.kind = EventKind::Release { action };
        }
        _ => {}
    }
    event.body = v;
    Ok(event)
}

fn bitbucket(headers: &Headers, body: &[u8]) -> Result<Event, NormalizeError> {
    let provider = Provider::Bitbucket;
    let name = event_name(provider, headers)?;
    let delivery = delivery_id(headers, &["x-request-uuid", "x-request-id"], body);
    let v = parse_object(provider, body)?;
    let mut event = new_event(provider, name.clone(), delivery, Value::Null);
    event.repository = at(&v, &["repository"]).and_then(|repo| {
        let html = text(repo, &["links", "html", "href"]);
        Some(Repository {
            full_name: text(repo, &["full_name"])?,
            clone_url: html.as_ref().map(|h| format!("{h}.git")),
            ssh_url: None,
            html_url: html,
            default_branch: text(repo, &["mainbranch", "name"]),
        })
    });
    event.sender = first_text(&v, &[&["actor", "nickname"], &["actor", "username"], &["actor", "display_name"]]);
    match name.as_str() {
        "diagnostics:ping" => event.kind = EventKind::Ping,
        "repo:push" => {
            let changes = at(&v, &["push", "changes"])
                .and_then(Value::as_array)
                .ok_or(NormalizeError::MissingField { provider, event: name.clone(), field: "push.changes" })?;
            // One event per request: the first change that is not a deletion, else the first.
            let change = changes
                .iter()
                .find(|c| at(c, &["new"]).is_some())
                .or_else(|| changes.first())
                .ok_or(NormalizeError::MissingField { provider, event: name.clone(), field: "push.changes[0]" })?;
            let side = at(change, &["new"]).or_else(|| at(change, &["old"])).ok_or(NormalizeError::MissingField {
                provider,
                event: name.clone(),
                field: "push.changes[0].new",
            })?;
            let ref_name = require(provider, &name, text(side, &["name"]), "push.changes[0].new.name")?;
            let git_ref = match text(side, &["type"]).as_deref() {
                Some("tag" | "annotated_tag") => format!("refs/tags/{ref_name}"),
                _ => format!("refs/heads/{ref_name}"),
            };
            let deleted = flag(change, &["closed"]) || at(change, &["new"]).is_none();
            let after = if deleted { None } else { text(side, &["target", "hash"]) };
            fill_push(&mut event, git_ref, text(change, &["old", "target", "hash"]), after, deleted);
        }
        key if key.starts_with("pullrequest:") => {
            let raw = key.trim_start_matches("pullrequest:").to_owned();
            let pr = at(&v, &["pullrequest"]).ok_or(NormalizeError::MissingField {
                provider,
                event: name.clone(),
                field: "pullrequest",
            })?;
            let head_ref =
                require(provider, &name, text(pr, &["source", "branch", "name"]), "pullrequest.source.branch.name")?;
            let pull = PullRequest {
                number: number(pr, &["id"]),
                title: text(pr, &["title"]).unwrap_or_default(),
                head_ref: head_ref.clone(),
                head_sha: text(pr, &["source", "commit", "hash"]),
                base_ref: require(
                    provider,
                    &name,
                    text(pr, &["destination", "branch", "name"]),
                    "pullrequest.destination.branch.name",
                )?,
                base_sha: text(pr, &["destination", "commit", "hash"]),
                merged: raw == "fulfilled",
                draft: flag(pr, &["draft"]),
                html_url: text(pr, &["links", "html", "href"]),
                raw_action: key.to_owned(),
            };
            event.kind = EventKind::PullRequest { action: pr_action(&raw, true) };
            event.git_ref = Some(format!("refs/heads/{head_ref}"));
            event.branch = Some(head_ref);
            event.after = pull.head_sha.clone();
            event.pull_request = Some(pull);
        }
        _ => {}
    }
    event.body = v;
    Ok(event)
}

fn standard_webhooks(headers: &Headers, body: &[u8]) -> Result<Event, NormalizeError> {
    let provider = Provider::StandardWebhooks;
    let delivery = delivery_id(headers, &["webhook-id"], body);
    let v = parse_object(provider, body)?;
    let event_type = text(&v, &["type"]).unwrap_or_else(|| "webhook".into());
    let mut event = new_event(provider, event_type.clone(), delivery, Value::Null);
    event.kind = EventKind::Custom { event_type, source: None };
    event.body = v;
    Ok(event)
}

fn cloudevents(headers: &Headers, body: &[u8]) -> Result<Event, NormalizeError> {
    let provider = Provider::CloudEvents;
    let structured = headers.get("content-type").is_some_and(|ct| media_type(ct) == "application/cloudevents+json")
        && !headers.contains("ce-specversion");
    let v = if structured {
        parse_object(provider, body)?
    } else {
        // Binary mode: the attributes are headers and the body is the data.
        let mut attrs = serde_json::Map::new();
        for (name, value) in headers.iter() {
            if let Some(attr) = name.strip_prefix("ce-")
                && !attrs.contains_key(attr)
            {
                attrs.insert(attr.to_owned(), Value::String(value.trim().to_owned()));
            }
        }
        let content_type = headers.get("content-type").map(media_type);
        if let Some(ct) = &content_type {
            attrs.insert("datacontenttype".into(), Value::String(ct.clone()));
        }
        let is_json = content_type.as_deref().is_none_or(|ct| ct == "application/json" || ct.ends_with("+json"));
        let data = if body.is_empty() {
            Value::Null
        } else if is_json {
            serde_json::from_slice(body)
                .map_err(|e| NormalizeError::MalformedJson { provider, message: e.to_string() })?
        } else {
            Value::String(String::from_utf8_lossy(body).into_owned())
        };
        attrs.insert("data".into(), data);
        Value::Object(attrs)
    };
    let event_type = require(provider, "cloudevent", text(&v, &["type"]), "type")?;
    let id = require(provider, &event_type, text(&v, &["id"]), "id")?;
    let source = require(provider, &event_type, text(&v, &["source"]), "source")?;
    require(provider, &event_type, text(&v, &["specversion"]), "specversion")?;
    let mut event = new_event(provider, event_type.clone(), format!("{source}#{id}"), Value::Null);
    event.kind = EventKind::Custom { event_type, source: Some(source) };
    event.body = v;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_deduplicated_and_unknown_when_a_commit_lacks_lists() {
        let v = serde_json::json!({"commits": [
            {"added": ["a"], "modified": ["b"], "removed": []},
            {"added": [], "modified": ["b", "c"], "removed": ["d"]}
        ]});
        assert_eq!(changed_paths(&v, false), Some(vec!["a".into(), "b".into(), "c".into(), "d".into()]));
        assert_eq!(changed_paths(&v, true), None);
        let v = serde_json::json!({"commits": [{"id": "x"}]});
        assert_eq!(changed_paths(&v, false), None);
    }

    #[test]
    fn url_paths() {
        assert_eq!(url_path("https://codeup.aliyun.com/acme/app").as_deref(), Some("acme/app"));
        assert_eq!(url_path("https://host/g/s/app.git").as_deref(), Some("g/s/app"));
        assert_eq!(url_path("https://host/"), None);
    }

    #[test]
    fn actions_map_to_github_words() {
        assert_eq!(pr_action("open", false), "opened");
        assert_eq!(pr_action("update", true), "synchronize");
        assert_eq!(pr_action("update", false), "edited");
        assert_eq!(pr_action("synchronized", false), "synchronize");
        assert_eq!(pr_action("merge", false), "closed");
        assert_eq!(pr_action("approved", false), "approved");
    }

    /// Found by the webhook fuzz target's round-trip check (fuzz/seeds/webhook/deep-body): a
    /// body nested 125 levels deep was dispatched, and the host refused the dispatch (serde_json
    /// reads 128 levels, the dispatch adds two), so the sender saw 202 and no run started.
    #[test]
    fn bodies_too_deep_for_a_dispatch_are_refused() {
        use crate::{App, MasterConfig, Secret, github_signature, handle_webhook, verify_dispatch};
        let body = |depth: usize| {
            let inner = format!("{}{}", "[".repeat(depth - 1), "]".repeat(depth - 1));
            format!(r#"{{"ref":"refs/heads/main","x":{inner}}}"#).into_bytes()
        };
        let apps: Vec<App> = serde_json::from_str(r#"[{"name": "web", "on": "push"}]"#).unwrap();
        let config = MasterConfig::new(Secret::new("s"), Secret::new("k"), apps);
        let ok = body(MAX_BODY_DEPTH);
        let sig = github_signature(b"s", &ok);
        let h = Headers::from_pairs([("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &sig)]);
        let outcome = handle_webhook(&config, &h, &ok, 0);
        let request = &outcome.requests()[0];
        let rh = Headers::from_pairs(request.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert!(verify_dispatch(&rh, &request.body, &config.dispatch_key, 0, 300).is_ok());

        let deep = body(MAX_BODY_DEPTH + 1);
        let err = normalize(Provider::Github, &h, &deep).unwrap_err();
        assert_eq!(err, NormalizeError::TooDeep { provider: Provider::Github, limit: MAX_BODY_DEPTH });
        assert_eq!(err.status(), 400);
        // CloudEvents in binary mode nest the data one level down.
        let ce = Headers::from_pairs([("ce-specversion", "1.0"), ("ce-type", "t"), ("ce-id", "1"), ("ce-source", "s")]);
        assert!(matches!(normalize(Provider::CloudEvents, &ce, &ok), Err(NormalizeError::TooDeep { .. })));
    }

    #[test]
    fn non_object_body_is_refused() {
        let h = Headers::from_pairs([("X-GitHub-Event", "push")]);
        let err = normalize(Provider::Github, &h, b"[1]").unwrap_err();
        assert_eq!(err.to_string(), "the GitHub webhook body should be a JSON object, not an array");
    }
}
