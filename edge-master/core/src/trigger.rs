//! Per-app triggers and the decision whether an event starts a run.

use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::event::{Event, EventKind};
use crate::filter::{Filter, FilterVars};
use crate::headers::Headers;
use crate::patterns::{Patterns, one_or_many};

/// An app (or one environment of an app) and the events that start its pipeline.
///
/// Several entries may share a name with different environments; each that matches gets its
/// own run. `repository`, when set, limits the app to repositories whose full name matches.
/// `trigger` is accepted as another name for `on`, as in Serverless-cd.
///
/// ```
/// use skiff_edge_core::App;
///
/// let app: App = serde_norway::from_str(r#"
/// name: web
/// environment: production
/// repository: acme/web
/// on:
///   push:
///     branches: [main, "release/*"]
///     paths-ignore: ["docs/**"]
///   pull_request:
///     types: [opened, synchronize]
///   schedule:
///     - cron: "0 3 * * *"
///   filter: 'event.sender != "dependabot[bot]"'
/// "#).unwrap();
/// assert_eq!(app.on.schedule[0].cron, "0 3 * * *");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The app's name, as the host knows it.
    pub name: String,
    /// The environment (e.g. `staging`, `production`), if the app has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Repositories (full names, globs allowed) this app builds; any if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<Patterns>,
    /// The triggers.
    #[serde(default, alias = "trigger")]
    pub on: Triggers,
}

impl App {
    /// "app `web`" or "app `web` (environment `production`)", for reasons.
    pub fn label(&self) -> String {
        match &self.environment {
            Some(env) => format!("app `{}` (environment `{env}`)", self.name),
            None => format!("app `{}`", self.name),
        }
    }
}

/// What starts an app's pipeline: a superset of GitHub Actions' `on:`.
///
/// Written as a map (below), or like GitHub as one event name (`on: push`) or a list of names
/// (`on: [push, pull_request]`), which take every event of those kinds. A key present with no
/// value (`push:` in YAML) is the same as an empty map. Unknown keys are errors.
///
/// ```
/// use skiff_edge_core::Triggers;
///
/// let t: Triggers = serde_json::from_str(r#"["push", "pull_request"]"#).unwrap();
/// assert!(t.push.is_some() && t.pull_request.is_some() && t.release.is_none());
///
/// let err = serde_json::from_str::<Triggers>(r#"{"psuh": {}}"#).unwrap_err();
/// assert!(err.to_string().contains("unknown field `psuh`"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Triggers {
    /// Pushes of branches (and of tags, unless only branches are listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<PushTrigger>,
    /// Pull requests and merge requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequestTrigger>,
    /// Releases.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseTrigger>,
    /// Tag pushes (Serverless-cd style; `push.tags` does the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<TagTrigger>,
    /// Standard Webhooks and CloudEvents events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomTrigger>,
    /// Cron schedules. Carried for the host, which fires them; [`decide`] never matches them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<Schedule>,
    /// Runs by hand, with typed inputs (GitHub's `workflow_dispatch`). Checked by the host when
    /// a manual run is created; [`decide`] never matches it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_dispatch: Option<WorkflowDispatch>,
    /// A CEL expression every event must also satisfy (see [`Filter`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggersMap {
    #[serde(default, deserialize_with = "present")]
    push: Option<PushTrigger>,
    #[serde(default, deserialize_with = "present", alias = "pull-request", alias = "merge_request")]
    pull_request: Option<PullRequestTrigger>,
    #[serde(default, deserialize_with = "present")]
    release: Option<ReleaseTrigger>,
    #[serde(default, deserialize_with = "present")]
    tag: Option<TagTrigger>,
    #[serde(default, deserialize_with = "present")]
    custom: Option<CustomTrigger>,
    #[serde(default)]
    schedule: Vec<Schedule>,
    #[serde(default, deserialize_with = "present", alias = "workflow-dispatch")]
    workflow_dispatch: Option<WorkflowDispatch>,
    #[serde(default)]
    filter: Option<Filter>,
}

/// A present key is `Some`, even when its value is null (`push:` in YAML).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(deserializer)?.unwrap_or_default()))
}

const EVENT_NAMES: &[&str] = &["push", "pull_request", "release", "tag", "custom", "workflow_dispatch"];

impl Triggers {
    fn enable(&mut self, name: &str) -> Result<(), String> {
        match name {
            "push" => self.push = Some(PushTrigger::default()),
            "pull_request" | "pull-request" | "merge_request" => {
                self.pull_request = Some(PullRequestTrigger::default())
            }
            "release" => self.release = Some(ReleaseTrigger::default()),
            "tag" => self.tag = Some(TagTrigger::default()),
            "custom" => self.custom = Some(CustomTrigger::default()),
            "workflow_dispatch" | "workflow-dispatch" => self.workflow_dispatch = Some(WorkflowDispatch::default()),
            other => {
                return Err(format!("unknown event `{other}`, expected one of {}", EVENT_NAMES.join(", ")));
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Triggers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TriggersVisitor;
        impl<'de> Visitor<'de> for TriggersVisitor {
            type Value = Triggers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event name, a list of event names, or a map of triggers")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Triggers, E> {
                let mut t = Triggers::default();
                t.enable(v).map_err(E::custom)?;
                Ok(t)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Triggers, A::Error> {
                let mut t = Triggers::default();
                while let Some(name) = seq.next_element::<String>()? {
                    t.enable(&name).map_err(de::Error::custom)?;
                }
                Ok(t)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Triggers, A::Error> {
                let m = TriggersMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                if let Some(w) = &m.workflow_dispatch {
                    w.check().map_err(de::Error::custom)?;
                }
                Ok(Triggers {
                    push: m.push,
                    pull_request: m.pull_request,
                    release: m.release,
                    tag: m.tag,
                    custom: m.custom,
                    schedule: m.schedule,
                    workflow_dispatch: m.workflow_dispatch,
                    filter: m.filter,
                })
            }
            fn visit_unit<E: de::Error>(self) -> Result<Triggers, E> {
                Ok(Triggers::default())
            }
        }
        deserializer.deserialize_any(TriggersVisitor)
    }
}

/// `push:` — branch and tag pushes, as in GitHub Actions.
///
/// With `branches`/`branches-ignore` but no `tags`/`tags-ignore`, tag pushes do not fire, and
/// the other way round; with neither, every push fires. `paths`/`paths-ignore` look at the
/// paths the pushed commits changed (not for tags): `paths` needs one path to match,
/// `paths-ignore` skips the push only if every path matches. When the payload does not list
/// the changed paths, path filters do not skip the push. Deleting a branch or tag never fires.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PushTrigger {
    /// Branches that fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branches: Option<Patterns>,
    /// Branches that never fire.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "branches_ignore")]
    pub branches_ignore: Option<Patterns>,
    /// Tags that fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Patterns>,
    /// Tags that never fire.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "tags_ignore")]
    pub tags_ignore: Option<Patterns>,
    /// At least one changed path must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Patterns>,
    /// Pushes that change only these paths do not fire.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "paths_ignore")]
    pub paths_ignore: Option<Patterns>,
    /// A CEL filter for this trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
}

/// `pull_request:` (also `merge_request:`) — pull and merge requests.
///
/// `types` (or `actions`) lists the actions that fire, in GitHub's words; the default is
/// `[opened, synchronize, reopened]`. `merged` matches a merge (`closed` matches both merges and
/// plain closes). `branches`/`branches-ignore` look at the target branch. Payloads do not list a
/// pull request's changed files, so `paths`/`paths-ignore` cannot skip one; they are accepted so
/// that GitHub workflows load.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PullRequestTrigger {
    /// Actions that fire.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "actions", deserialize_with = "opt_list")]
    pub types: Option<Vec<String>>,
    /// Target branches that fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branches: Option<Patterns>,
    /// Target branches that never fire.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "branches_ignore")]
    pub branches_ignore: Option<Patterns>,
    /// Accepted for compatibility; see above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Patterns>,
    /// Accepted for compatibility; see above.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "paths_ignore")]
    pub paths_ignore: Option<Patterns>,
    /// A CEL filter for this trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
}

/// `release:` — releases. `types` defaults to every action; `tags` limits the release tags.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ReleaseTrigger {
    /// Actions that fire (e.g. `published`); any if absent.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "actions", deserialize_with = "opt_list")]
    pub types: Option<Vec<String>>,
    /// Release tags that fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Patterns>,
    /// A CEL filter for this trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
}

/// `tag:` — tag pushes, in Serverless-cd's style. `tags` defaults to every tag.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TagTrigger {
    /// Tags that fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Patterns>,
    /// Tags that never fire.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "tags_ignore")]
    pub tags_ignore: Option<Patterns>,
    /// A CEL filter for this trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
}

/// `custom:` — Standard Webhooks and CloudEvents events, by type and (CloudEvents) source.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CustomTrigger {
    /// Event types that fire (globs, `*` does not cross `/`); any if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Patterns>,
    /// CloudEvents sources that fire; any if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Patterns>,
    /// A CEL filter for this trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
}

/// `workflow_dispatch:` — runs by hand, with typed inputs, as in GitHub Actions.
///
/// ```
/// use std::collections::BTreeMap;
/// use skiff_edge_core::Triggers;
///
/// let t: Triggers = serde_json::from_str(r#"{"workflow_dispatch": {"inputs": {
///     "target": {"type": "choice", "options": ["staging", "production"], "default": "staging"},
///     "dry-run": {"type": "boolean", "required": true}}}}"#).unwrap();
/// let w = t.workflow_dispatch.unwrap();
/// let given = BTreeMap::from([("dry-run".to_string(), "true".to_string())]);
/// assert_eq!(w.resolve(&given).unwrap()["target"], "staging");
/// assert!(w.resolve(&BTreeMap::new()).unwrap_err().contains("`dry-run` is required"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDispatch {
    /// The inputs a run takes, by name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub inputs: std::collections::BTreeMap<String, DispatchInput>,
}

/// One input of a manual run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchInput {
    /// Shown to the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `string` (the default), `boolean`, `number`, `choice` or `environment`.
    #[serde(default, rename = "type")]
    pub kind: InputKind,
    /// A run without it is refused, unless it has a default.
    #[serde(default)]
    pub required: bool,
    /// The value when none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// The values a `choice` takes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// The type of a manual run's input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// Any text.
    #[default]
    String,
    /// `true` or `false`.
    Boolean,
    /// A finite number.
    Number,
    /// One of `options`.
    Choice,
    /// An environment's name.
    Environment,
}

fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl DispatchInput {
    fn check_value(&self, name: &str, value: &str) -> Result<(), String> {
        match self.kind {
            InputKind::Boolean if value != "true" && value != "false" => {
                Err(format!("input `{name}` is a boolean: give true or false, not `{value}`"))
            }
            InputKind::Number if value.trim().parse::<f64>().map(|n| !n.is_finite()).unwrap_or(true) => {
                Err(format!("input `{name}` is a number: `{value}` is not one"))
            }
            InputKind::Choice if !self.options.iter().any(|o| o == value) => Err(format!(
                "input `{name}` is one of {}: `{value}` is not among them",
                self.options.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ")
            )),
            _ => Ok(()),
        }
    }
}

impl WorkflowDispatch {
    /// The definition itself is sound: a choice has options, a default fits its type.
    pub fn check(&self) -> Result<(), String> {
        for (name, input) in &self.inputs {
            if input.kind == InputKind::Choice && input.options.is_empty() {
                return Err(format!("workflow_dispatch input `{name}` is a choice without `options`"));
            }
            if input.kind != InputKind::Choice && !input.options.is_empty() {
                return Err(format!("workflow_dispatch input `{name}` has `options` but is not `type: choice`"));
            }
            if let Some(d) = &input.default {
                input.check_value(name, &json_text(d)).map_err(|e| format!("the default of {e}"))?;
            }
        }
        Ok(())
    }

    /// The inputs of a manual run, checked against the declared ones, with defaults applied.
    pub fn resolve(
        &self,
        given: &std::collections::BTreeMap<String, String>,
    ) -> Result<std::collections::BTreeMap<String, String>, String> {
        let mut out = std::collections::BTreeMap::new();
        for name in given.keys() {
            if !self.inputs.contains_key(name) {
                let known: Vec<String> = self.inputs.keys().map(|k| format!("`{k}`")).collect();
                return Err(if known.is_empty() {
                    format!("input `{name}` is not declared: the pipeline's workflow_dispatch takes no inputs")
                } else {
                    format!(
                        "input `{name}` is not declared: the pipeline's workflow_dispatch takes {}",
                        known.join(", ")
                    )
                });
            }
        }
        for (name, input) in &self.inputs {
            match given.get(name).cloned().or_else(|| input.default.as_ref().map(json_text)) {
                Some(v) => {
                    input.check_value(name, &v)?;
                    out.insert(name.clone(), v);
                }
                None if input.required => return Err(format!("input `{name}` is required")),
                None => {}
            }
        }
        Ok(out)
    }
}

/// `schedule: [{ cron: "..." }]` — fired by the host, carried here so one file holds all
/// triggers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// A five-field cron expression, in UTC.
    pub cron: String,
}

fn opt_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<String>>, D::Error> {
    one_or_many(deserializer).map(Some)
}

/// Whether one app's event starts a run, and why.
///
/// ```
/// use skiff_edge_core::Decision;
///
/// let d = Decision::Ignore { app: "web".into(), environment: None, reason: "…".into() };
/// assert!(!d.is_dispatch());
/// assert_eq!(serde_json::to_value(&d).unwrap()["decision"], "ignore");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Start a run of this app.
    Dispatch {
        /// The app.
        app: String,
        /// Its environment, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        environment: Option<String>,
        /// Which trigger matched, as a sentence.
        reason: String,
    },
    /// Do not start a run of this app.
    Ignore {
        /// The app.
        app: String,
        /// Its environment, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        environment: Option<String>,
        /// Why not, as a sentence.
        reason: String,
    },
}

impl Decision {
    /// Whether this starts a run.
    pub fn is_dispatch(&self) -> bool {
        matches!(self, Decision::Dispatch { .. })
    }

    /// The app's name.
    pub fn app(&self) -> &str {
        match self {
            Decision::Dispatch { app, .. } | Decision::Ignore { app, .. } => app,
        }
    }

    /// The app's environment.
    pub fn environment(&self) -> Option<&str> {
        match self {
            Decision::Dispatch { environment, .. } | Decision::Ignore { environment, .. } => environment.as_deref(),
        }
    }

    /// Why.
    pub fn reason(&self) -> &str {
        match self {
            Decision::Dispatch { reason, .. } | Decision::Ignore { reason, .. } => reason,
        }
    }
}

/// Decides, for each app in order, whether `event` starts a run. CEL filters see no headers;
/// use [`decide_with_headers`] when they are at hand.
///
/// ```
/// use skiff_edge_core::{decide, normalize, App, Headers, Provider};
///
/// let apps: Vec<App> = serde_json::from_str(r#"[
///     { "name": "web", "on": { "push": { "branches": ["main", "release/*"] } } },
///     { "name": "docs", "on": "push" }
/// ]"#).unwrap();
/// let headers = Headers::from_pairs([("X-GitHub-Event", "push")]);
/// let event = normalize(Provider::Github, &headers, br#"{"ref":"refs/heads/dev"}"#).unwrap();
/// let decisions = decide(&event, &apps);
/// assert_eq!(decisions[0].reason(), "push to `dev` does not match branches [main, release/*] of app `web`");
/// assert!(decisions[1].is_dispatch());
/// ```
pub fn decide(event: &Event, apps: &[App]) -> Vec<Decision> {
    decide_with_headers(event, &Headers::new(), apps)
}

/// [`decide`], with the request's headers for CEL filters. Headers that carry credentials
/// (`Authorization`, `*-token`, signatures) are not shown to filters.
pub fn decide_with_headers(event: &Event, headers: &Headers, apps: &[App]) -> Vec<Decision> {
    let filters = apps.iter().flat_map(|app| [trigger_filter(event, &app.on), app.on.filter.as_ref()]).flatten();
    let mut vars = FilterVars::new(event, headers, filters);
    apps.iter()
        .map(|app| {
            let verdict = check_app(event, app).and_then(|reason| {
                let filters = [trigger_filter(event, &app.on), app.on.filter.as_ref()];
                for filter in filters.into_iter().flatten() {
                    match filter.eval(&mut vars) {
                        Ok(true) => {}
                        Ok(false) => {
                            return Err(format!(
                                "the filter `{}` of {} is false for this event",
                                filter.source(),
                                app.label()
                            ));
                        }
                        Err(e) => {
                            return Err(format!(
                                "the filter `{}` of {} could not be evaluated ({e}), which counts as not matched",
                                filter.source(),
                                app.label()
                            ));
                        }
                    }
                }
                Ok(reason)
            });
            match verdict {
                Ok(reason) => {
                    Decision::Dispatch { app: app.name.clone(), environment: app.environment.clone(), reason }
                }
                Err(reason) => Decision::Ignore { app: app.name.clone(), environment: app.environment.clone(), reason },
            }
        })
        .collect()
}

/// The filter of the trigger that applies to this event's kind.
fn trigger_filter<'a>(event: &Event, on: &'a Triggers) -> Option<&'a Filter> {
    match &event.kind {
        EventKind::Push => on.push.as_ref()?.filter.as_ref(),
        // A tag push may have matched either trigger; the push trigger's filter applies if it
        // has one, else the tag trigger's.
        EventKind::Tag => {
            on.push.as_ref().and_then(|p| p.filter.as_ref()).or_else(|| on.tag.as_ref().and_then(|t| t.filter.as_ref()))
        }
        EventKind::PullRequest { .. } => on.pull_request.as_ref()?.filter.as_ref(),
        EventKind::Release { .. } => on.release.as_ref()?.filter.as_ref(),
        EventKind::Custom { .. } => on.custom.as_ref()?.filter.as_ref(),
        EventKind::Ping | EventKind::Other { .. } => None,
    }
}

/// `Ok(why it matches)` or `Err(why not)`, before filters.
fn check_app(event: &Event, app: &App) -> Result<String, String> {
    let label = app.label();
    if let (Some(wanted), Some(repo)) = (&app.repository, &event.repository)
        && !wanted.matches(&repo.full_name)
    {
        return Err(format!("the event is for `{}`, but {label} builds {wanted}", repo.full_name));
    }
    let on = &app.on;
    match &event.kind {
        EventKind::Ping => Err(format!("a ping from {} starts no run", event.provider)),
        EventKind::Other { name } => Err(format!(
            "{} event `{name}` is not one that starts runs (push, tag, pull_request, release, custom)",
            event.provider
        )),
        EventKind::Push => {
            let branch = event.branch.as_deref().unwrap_or_default();
            if event.deleted {
                return Err(format!("the push deletes branch `{branch}`; deletions start no run"));
            }
            let push = on.push.as_ref().ok_or_else(|| format!("{label} has no `push` trigger"))?;
            check_push_branch(event, branch, push, &label)
        }
        EventKind::Tag => {
            let tag = event.tag.as_deref().unwrap_or_default();
            if event.deleted {
                return Err(format!("the push deletes tag `{tag}`; deletions start no run"));
            }
            let by_push = on.push.as_ref().map(|push| check_push_tag(tag, push, &label));
            let by_tag = on.tag.as_ref().map(|t| check_tag_trigger(tag, t, &label));
            match (by_push, by_tag) {
                (Some(Ok(r)), _) | (_, Some(Ok(r))) => Ok(r),
                (Some(Err(a)), Some(Err(b))) => Err(format!("{a}; and {b}")),
                (Some(Err(e)), None) | (None, Some(Err(e))) => Err(e),
                (None, None) => Err(format!("{label} has no `push` or `tag` trigger")),
            }
        }
        EventKind::PullRequest { action } => {
            let trigger = on.pull_request.as_ref().ok_or_else(|| format!("{label} has no `pull_request` trigger"))?;
            check_pull_request(event, action, trigger, &label)
        }
        EventKind::Release { action } => {
            let trigger = on.release.as_ref().ok_or_else(|| format!("{label} has no `release` trigger"))?;
            if let Some(types) = &trigger.types
                && !types.iter().any(|t| t == action)
            {
                return Err(format!("release action `{action}` is not one of types [{}] of {label}", types.join(", ")));
            }
            let tag = event.tag.as_deref().unwrap_or_default();
            if let Some(tags) = &trigger.tags
                && !tags.matches(tag)
            {
                return Err(format!("release of tag `{tag}` does not match tags {tags} of {label}"));
            }
            Ok(format!("release {action} of `{tag}` matches the `release` trigger of {label}"))
        }
        EventKind::Custom { event_type, source } => {
            let trigger = on.custom.as_ref().ok_or_else(|| format!("{label} has no `custom` trigger"))?;
            if let Some(types) = &trigger.types
                && !types.matches(event_type)
            {
                return Err(format!("event type `{event_type}` does not match types {types} of {label}"));
            }
            if let Some(sources) = &trigger.sources {
                let src = source.as_deref().unwrap_or_default();
                if !sources.matches(src) {
                    return Err(format!("event source `{src}` does not match sources {sources} of {label}"));
                }
            }
            Ok(format!("event `{event_type}` matches the `custom` trigger of {label}"))
        }
    }
}

fn check_push_branch(event: &Event, branch: &str, push: &PushTrigger, label: &str) -> Result<String, String> {
    let has_branch_filters = push.branches.is_some() || push.branches_ignore.is_some();
    let has_tag_filters = push.tags.is_some() || push.tags_ignore.is_some();
    if !has_branch_filters && has_tag_filters {
        return Err(format!(
            "push to branch `{branch}` does not fire the `push` trigger of {label}, which lists only tags"
        ));
    }
    if let Some(branches) = &push.branches
        && !branches.matches(branch)
    {
        return Err(format!("push to `{branch}` does not match branches {branches} of {label}"));
    }
    if let Some(ignore) = &push.branches_ignore
        && ignore.matches(branch)
    {
        return Err(format!("push to `{branch}` matches branches-ignore {ignore} of {label}"));
    }
    let paths_note = check_paths(event, push.paths.as_ref(), push.paths_ignore.as_ref(), label)?;
    Ok(format!("push to `{branch}` matches the `push` trigger of {label}{paths_note}"))
}

/// `Ok(note)` if path filters let the push through, `Err(reason)` if they skip it.
fn check_paths(
    event: &Event,
    paths: Option<&Patterns>,
    ignore: Option<&Patterns>,
    label: &str,
) -> Result<String, String> {
    if paths.is_none() && ignore.is_none() {
        return Ok(String::new());
    }
    let changed = match event.changed_paths.as_deref() {
        Some(list) if !list.is_empty() => list,
        _ => return Ok(" (changed paths unknown, so path filters were not applied)".into()),
    };
    if let Some(paths) = paths
        && !paths.matches_any(changed.iter().map(String::as_str))
    {
        return Err(format!("the push changes no path matching paths {paths} of {label}"));
    }
    if let Some(ignore) = ignore
        && changed.iter().all(|p| ignore.matches(p))
    {
        return Err(format!("the push changes only paths matching paths-ignore {ignore} of {label}"));
    }
    Ok(String::new())
}

fn check_push_tag(tag: &str, push: &PushTrigger, label: &str) -> Result<String, String> {
    let has_branch_filters = push.branches.is_some() || push.branches_ignore.is_some();
    let has_tag_filters = push.tags.is_some() || push.tags_ignore.is_some();
    if has_branch_filters && !has_tag_filters {
        return Err(format!("tag `{tag}` does not fire the `push` trigger of {label}, which lists only branches"));
    }
    if let Some(tags) = &push.tags
        && !tags.matches(tag)
    {
        return Err(format!("tag `{tag}` does not match tags {tags} of {label}"));
    }
    if let Some(ignore) = &push.tags_ignore
        && ignore.matches(tag)
    {
        return Err(format!("tag `{tag}` matches tags-ignore {ignore} of {label}"));
    }
    Ok(format!("tag `{tag}` matches the `push` trigger of {label}"))
}

fn check_tag_trigger(tag: &str, trigger: &TagTrigger, label: &str) -> Result<String, String> {
    if let Some(tags) = &trigger.tags
        && !tags.matches(tag)
    {
        return Err(format!("tag `{tag}` does not match tags {tags} of the `tag` trigger of {label}"));
    }
    if let Some(ignore) = &trigger.tags_ignore
        && ignore.matches(tag)
    {
        return Err(format!("tag `{tag}` matches tags-ignore {ignore} of the `tag` trigger of {label}"));
    }
    Ok(format!("tag `{tag}` matches the `tag` trigger of {label}"))
}

const DEFAULT_PR_TYPES: &[&str] = &["opened", "synchronize", "reopened"];

fn check_pull_request(
    event: &Event,
    action: &str,
    trigger: &PullRequestTrigger,
    label: &str,
) -> Result<String, String> {
    let pr = event.pull_request.as_ref();
    let merged = pr.is_some_and(|p| p.merged);
    let raw = pr.map_or("", |p| p.raw_action.as_str());
    let types: Vec<&str> = match &trigger.types {
        Some(t) => t.iter().map(String::as_str).collect(),
        None => DEFAULT_PR_TYPES.to_vec(),
    };
    let action_matches = types
        .iter()
        .any(|t| *t == action || (!raw.is_empty() && *t == raw) || (merged && matches!(*t, "merged" | "merge")));
    if !action_matches {
        let what = if merged { "merged (closed)".to_owned() } else { format!("`{action}`") };
        return Err(format!("pull request action {what} is not one of types [{}] of {label}", types.join(", ")));
    }
    let base = pr.map_or("", |p| p.base_ref.as_str());
    if let Some(branches) = &trigger.branches
        && !branches.matches(base)
    {
        return Err(format!("pull request into `{base}` does not match branches {branches} of {label}"));
    }
    if let Some(ignore) = &trigger.branches_ignore
        && ignore.matches(base)
    {
        return Err(format!("pull request into `{base}` matches branches-ignore {ignore} of {label}"));
    }
    Ok(format!("pull request {action} into `{base}` matches the `pull_request` trigger of {label}"))
}
