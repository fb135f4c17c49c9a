//! The pipeline file format as serde types. These types are the single
//! source of the JSON Schema (`docs/pipeline.schema.json`) and of the set of
//! keys the loader accepts, so a new key is added here and nowhere else.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A scalar that YAML may write as a string, number or boolean (`FOO: 1`,
/// `if: true`); kept as the text it stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(pub String);

impl Text {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Text {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Text".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A string (which may hold `${{ }}` expressions), number or boolean.",
            "type": ["string", "number", "boolean"]
        })
    }
}

/// A pipeline file: `.skiff/pipeline.yaml`, or a Serverless-cd `serverless-pipeline.yaml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[schemars(title = "Skiff pipeline")]
pub struct PipelineDef {
    /// A display name for the pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Triggers. Their meaning belongs to the edge master; the engine keeps them as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<serde_json::Value>,
    /// Environment variables for every job and step; values may hold `${{ }}` expressions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Text>,
    /// At most one run of the same group at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyDef>,
    /// The jobs, by id. They run in parallel unless `needs` orders them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub jobs: BTreeMap<String, JobDef>,
    /// Shorthand for a single job named `main` with these steps (Serverless-cd style).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepDef>>,
    /// The container image of the one job that top-level `steps:` make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerDef>,
    /// A compatibility mode: `serverless-cd` runs `run:` steps without `permissions:` with the
    /// network, as Serverless-cd did (the default of a `serverless-pipeline.yaml`); `none` turns
    /// it off there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compat: Option<CompatDef>,
}

/// `compat:` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CompatDef {
    /// Serverless-cd's defaults.
    ServerlessCd,
    /// No compatibility mode.
    None,
}

/// `concurrency: group` or `concurrency: { group, cancel-in-progress }`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ConcurrencyDef {
    /// The group name.
    Group(String),
    /// The group name and what to do with a run already in progress.
    Full(ConcurrencyFull),
}

/// The long form of `concurrency`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConcurrencyFull {
    /// Runs of the same group run one at a time.
    pub group: String,
    /// Cancel a run of the group that is in progress when a new one starts.
    #[serde(default)]
    pub cancel_in_progress: bool,
}

/// One job: steps that share a workspace and run in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JobDef {
    /// A display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Jobs that must finish first: a job id or a list of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs: Option<OneOrMany>,
    /// Run the job only when this expression holds (default `success()`: every needed job succeeded).
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub if_: Option<Text>,
    /// Environment variables for the job's steps.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Text>,
    /// Job outputs, readable by dependent jobs as `needs.<job>.outputs.<name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, Text>,
    /// The job fails (and its remaining steps are cancelled) after this many minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_minutes: Option<f64>,
    /// A build matrix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategyDef>,
    /// The container image the job's processes run in (`node:20`, `ghcr.io/acme/build:1`, or
    /// `{ image: … }`); without it they run on the host's `/usr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerDef>,
    /// The deployment environment the job runs in (`production`, or `{ name, url }`): the host
    /// gives it that environment's secrets, and holds it to its rules (approvals, branches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentDef>,
    /// The labels a host must have to take the job, as GitHub writes `runs-on`: a label
    /// (`gpu`), a list (`[self-hosted, linux, gpu]`) or `{ labels: … }`; may use `matrix`.
    /// Every host has `self-hosted`, `linux` and its architecture (`x64`, `arm64`), and GitHub's
    /// Linux images (`ubuntu-latest`, `ubuntu-24.04`) mean `linux`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_on: Option<RunsOnDef>,
    /// The steps, run in order.
    #[serde(default)]
    pub steps: Vec<StepDef>,
}

/// `runs-on:` of a job: a label, a list of labels, or `{ labels: … }`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RunsOnDef {
    /// One label.
    One(String),
    /// Every one of these labels.
    Many(Vec<String>),
    /// GitHub's mapping form.
    Spec {
        /// A label or a list of labels.
        labels: OneOrMany,
    },
}

impl RunsOnDef {
    /// The labels as written.
    pub fn labels(&self) -> Vec<String> {
        match self {
            RunsOnDef::One(s) => vec![s.clone()],
            RunsOnDef::Many(v) => v.clone(),
            RunsOnDef::Spec { labels } => labels.to_vec(),
        }
    }
}

impl<'de> Deserialize<'de> for RunsOnDef {
    /// By hand, so that GitHub's runner groups and a wrong shape get a sentence, not "did not
    /// match any variant".
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Ok(s.clone()),
            other => Err(D::Error::custom(format!("a `runs-on` label is a string, not `{other}`"))),
        };
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(RunsOnDef::One(s)),
            serde_json::Value::Array(list) => Ok(RunsOnDef::Many(list.iter().map(text).collect::<Result<_, _>>()?)),
            serde_json::Value::Object(map) => {
                if map.contains_key("group") {
                    return Err(D::Error::custom(
                        "`runs-on: { group: … }` names a GitHub runner group; Skiff's hosts have labels instead: start \
                         the hosts with `--labels NAME` and write `runs-on: NAME`",
                    ));
                }
                if let Some(key) = map.keys().find(|k| *k != "labels") {
                    return Err(D::Error::custom(format!("`runs-on` takes `labels` only, not `{key}`")));
                }
                match map.get("labels") {
                    Some(serde_json::Value::String(s)) => Ok(RunsOnDef::Spec { labels: OneOrMany::One(s.clone()) }),
                    Some(serde_json::Value::Array(list)) => Ok(RunsOnDef::Spec {
                        labels: OneOrMany::Many(list.iter().map(text).collect::<Result<_, _>>()?),
                    }),
                    _ => Err(D::Error::custom("`runs-on: { labels: … }` needs a label or a list of labels")),
                }
            }
            other => Err(D::Error::custom(format!(
                "`runs-on` is a label, a list of labels or `{{ labels: … }}`, not `{other}`"
            ))),
        }
    }
}

/// A string or a list of strings.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `strategy:` of a job.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StrategyDef {
    /// Axes (name → list of values), plus `include` and `exclude`.
    #[serde(default)]
    pub matrix: MatrixDef,
    /// Cancel the other combinations when one fails (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_fast: Option<bool>,
    /// At most this many combinations at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
}

/// `strategy.matrix`: every key other than `include`/`exclude` is an axis.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct MatrixDef {
    /// Extra combinations, or extra keys for matching combinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<BTreeMap<String, serde_json::Value>>,
    /// Combinations to leave out (a partial combination removes every match).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<BTreeMap<String, serde_json::Value>>,
    /// The axes.
    #[serde(flatten)]
    pub axes: BTreeMap<String, Vec<serde_json::Value>>,
}

/// One step: a `run:` script, a `uses:` component, or a Serverless-cd `plugin:`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StepDef {
    /// An id, to read its outputs as `steps.<id>.outputs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A shell script, run by the built-in `shell` step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The shell for `run:` (default `bash`); `js` runs the script as `script:` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// JavaScript in the style of google/zx (`` await $`ls -la` ``, `fs`, `fetch`, `core`), run
    /// by the built-in `script` step in a WebAssembly sandbox with the step's grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// A built-in step (`diag`, `builtin://checkout`) or a path to a `.wasm` component, relative to the pipeline file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<String>,
    /// Serverless-cd: an npm plugin name, mapped to the equivalent built-in step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Inputs of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<BTreeMap<String, serde_json::Value>>,
    /// Serverless-cd spelling of `with`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<BTreeMap<String, serde_json::Value>>,
    /// Environment variables for the step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Text>,
    /// Run the step only when this expression holds (default `success()`).
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub if_: Option<Text>,
    /// A failure of this step does not fail the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_on_error: Option<bool>,
    /// The step is stopped after this many minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_minutes: Option<f64>,
    /// The directory, relative to the job's workspace, the step starts in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    /// Capabilities granted to the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<PermissionsDef>,
    /// A cleanup script run at the end of the job, whatever happened (as `always()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<String>,
    /// Memory limit for the step's sandbox, in MiB: its component's memory, and its processes'
    /// whole tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// The container image this step's processes run in, instead of the job's `container:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// `container:` of a job: an image reference, or a mapping with one.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ContainerDef {
    Image(String),
    Spec(ContainerSpec),
}

/// `container: { image: … }`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// The image: `node:20`, `registry/repository:tag`, or pinned with `@sha256:…`.
    pub image: String,
}

impl<'de> Deserialize<'de> for ContainerDef {
    /// By hand, so that a key GitHub's `container:` has and Skiff has not gets a sentence, not
    /// "did not match any variant".
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(ContainerDef::Image(s)),
            serde_json::Value::Object(map) => {
                if let Some(key) = map.keys().find(|k| *k != "image") {
                    return Err(D::Error::custom(format!(
                        "`container` takes `image` only, not `{key}`: the image runs without a daemon, so there are \
                         no `options`, `volumes`, `ports` or `credentials` (registry credentials come from the host)"
                    )));
                }
                match map.get("image") {
                    Some(serde_json::Value::String(image)) => {
                        Ok(ContainerDef::Spec(ContainerSpec { image: image.clone() }))
                    }
                    _ => Err(D::Error::custom("`container` needs `image`, a reference like `node:20`")),
                }
            }
            _ => Err(D::Error::custom("`container` is an image reference (`node:20`) or `{ image: … }`")),
        }
    }
}

impl ContainerDef {
    /// The image reference as written.
    pub fn image(&self) -> &str {
        match self {
            ContainerDef::Image(s) => s,
            ContainerDef::Spec(c) => &c.image,
        }
    }
}

/// `environment:` of a job: a name, or GitHub's `{ name, url }`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum EnvironmentDef {
    /// The environment's name, as the host's `skiff.toml` configures it.
    Name(String),
    /// The name and the URL of what the job deployed.
    Spec(EnvironmentSpec),
}

/// `environment: { name: …, url: … }`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSpec {
    /// The environment's name (`production`): letters, digits, `-`, `_` and `.`, no expressions.
    pub name: String,
    /// Where the deployment can be seen; may hold expressions (`${{ steps.deploy.outputs.url }}`),
    /// evaluated when the job ends and shown with the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<Text>,
}

impl<'de> Deserialize<'de> for EnvironmentDef {
    /// By hand, so that GitHub's keys Skiff keeps in the host's config get a sentence, not
    /// "did not match any variant".
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(EnvironmentDef::Name(s)),
            serde_json::Value::Object(map) => {
                if let Some(key) = map.keys().find(|k| *k != "name" && *k != "url") {
                    return Err(D::Error::custom(format!(
                        "`environment` takes `name` and `url`, not `{key}`: an environment's rules (approvers, \
                         branches) and secrets are the host's, in `[[apps.environments]]` of skiff.toml"
                    )));
                }
                let name = match map.get("name") {
                    Some(serde_json::Value::String(n)) => n.clone(),
                    _ => return Err(D::Error::custom("`environment` needs `name`, like `production`")),
                };
                let url = match map.get("url") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(u)) => Some(Text(u.clone())),
                    Some(_) => return Err(D::Error::custom("`environment.url` is a string (it may hold `${{ }}`)")),
                };
                Ok(EnvironmentDef::Spec(EnvironmentSpec { name, url }))
            }
            _ => Err(D::Error::custom("`environment` is a name (`production`) or `{ name: …, url: … }`")),
        }
    }
}

impl EnvironmentDef {
    /// The name as written.
    pub fn name(&self) -> &str {
        match self {
            EnvironmentDef::Name(s) => s,
            EnvironmentDef::Spec(e) => &e.name,
        }
    }

    /// The URL as written.
    pub fn url(&self) -> Option<&Text> {
        match self {
            EnvironmentDef::Name(_) => None,
            EnvironmentDef::Spec(e) => e.url.as_ref(),
        }
    }
}

/// `permissions:` of a step. Nothing is granted unless listed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PermissionsDef {
    /// Hosts the step may send HTTP requests to (`api.example.com`, `*.example.com`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Secrets the step may read by name, beyond those its `with` and `env` reference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// May start processes (in an OS sandbox).
    #[serde(default)]
    pub process: bool,
    /// May open network connections beyond HTTP to `hosts`.
    #[serde(default)]
    pub network: bool,
}
