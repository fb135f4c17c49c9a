//! Provenance: every run that uploads or deploys ([`deploys`]) and succeeds gets an in-toto
//! statement in the SLSA provenance v1 format, signed by the host's key in a DSSE envelope and
//! stored with the run as its artifact [`ARTIFACT_NAME`]; `skiff verify-provenance` checks one.
//!
//! The statement names what the run produced (`subject`: its artifacts by sha256, else the run
//! itself) and everything it was built from (`resolvedDependencies`: the commit, the pipeline
//! file, every step component that ran, every container image), so a deploy can be traced to
//! exactly the bytes that made it. What lives in the workspace (the pipeline file, components
//! by path) is read before any step runs ([`Materials::collect`]): a step cannot change what
//! the statement says about them.
//!
//! The host key is an ECDSA P-256 key (cosign's kind, through `skiff_registry::signature`),
//! created on first start as `<data>/provenance.key` (PKCS#8 PEM, mode 0600); its public part
//! is served at `GET /v1/provenance/key`. Building, signing and verifying are pure functions;
//! [`record`] is the one place that touches the run store and the artifact store.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::DecodePublicKey as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use skiff_pipeline::plan::{PlanStep, Uses};
use skiff_pipeline::{Plan, RunReport, Status};
use skiff_registry::signature::{PublicKey, SigningKey};
use skiff_runtime::artifact_store::Artifact;

use crate::config::{AppConfig, PipelineSource, ServeConfig};
use crate::store::RunStore;

/// `_type` of an in-toto statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `predicateType` of SLSA provenance v1.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// `buildType` of a Skiff pipeline run: what `externalParameters` and `resolvedDependencies`
/// hold is defined by this module and docs/deploy.md.
pub const BUILD_TYPE: &str = "https://skiff.dev/buildtypes/pipeline/v1";
/// The DSSE `payloadType` of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The artifact a run's provenance is stored as (one DSSE envelope per line, as in-toto's
/// `.intoto.jsonl` files).
pub const ARTIFACT_NAME: &str = "provenance.intoto.jsonl";
/// The host key's file in the data directory.
pub const KEY_FILE: &str = "provenance.key";
/// The largest envelope file verified: a statement names a few hundred artifacts at most.
pub const MAX_ENVELOPE_BYTES: usize = 16 << 20;

// ---------------------------------------------------------------------------------------------
// The statement.

/// An in-toto statement v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub type_: String,
    /// What the run produced.
    pub subject: Vec<ResourceDescriptor>,
    /// [`PREDICATE_TYPE`].
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The provenance.
    pub predicate: Provenance,
}

/// in-toto's ResourceDescriptor: an artifact or a dependency, by name, URI and digests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceDescriptor {
    /// A name (an artifact's, `commit`, `pipeline`, a component's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Where it is (`git+https://…`, `builtin://upload`, `oci://…`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
    /// Algorithm → hex digest (`sha256`, `gitCommit`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digest: BTreeMap<String, String>,
    /// What else is known: the steps that used a dependency, its kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, Value>,
}

impl ResourceDescriptor {
    /// Its sha256, when it has one.
    pub fn sha256(&self) -> Option<&str> {
        self.digest.get("sha256").map(String::as_str)
    }
}

/// The SLSA provenance v1 predicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// What was built, and from what.
    pub build_definition: BuildDefinition,
    /// Who built it, and when.
    pub run_details: RunDetails,
}

/// SLSA's BuildDefinition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    /// [`BUILD_TYPE`].
    pub build_type: String,
    /// What the outside chose: the trigger, the event, the ref, the repository, the inputs.
    pub external_parameters: Value,
    /// What the host chose: the run's id, number and attempt.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub internal_parameters: Value,
    /// The commit, the pipeline file, the step components and the container images.
    #[serde(default)]
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

/// SLSA's RunDetails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunDetails {
    /// The host.
    pub builder: Builder,
    /// The run.
    pub metadata: Metadata,
}

/// SLSA's Builder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Builder {
    /// The host: its `public-url`, else `skiff://<hostname>`.
    pub id: String,
    /// `skiff` → its version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub version: BTreeMap<String, String>,
}

/// SLSA's BuildMetadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The run: `<builder id>/v1/runs/<id>`.
    pub invocation_id: String,
    /// When it started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_on: Option<String>,
    /// When it finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_on: Option<String>,
}

/// What a statement says about the run, apart from its materials.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFacts {
    /// The app.
    pub app: String,
    /// The run's id on its host.
    pub run_id: i64,
    /// Its number within the app.
    pub number: i64,
    /// Its attempt.
    pub attempt: i64,
    /// What started it (`push`, `manual`, `schedule`, …).
    pub trigger: String,
    /// The event's name as sent.
    pub event: String,
    /// The Git ref.
    pub git_ref: Option<String>,
    /// The commit.
    pub commit: Option<String>,
    /// `owner/name`.
    pub repository: Option<String>,
    /// The URL the commit was fetched from (or the event's clone URL).
    pub repository_url: Option<String>,
    /// A manual run's inputs.
    pub inputs: BTreeMap<String, String>,
    /// The host: see [`Builder::id`].
    pub builder_id: String,
    /// Unix ms.
    pub started_ms: Option<i64>,
    /// Unix ms.
    pub finished_ms: Option<i64>,
}

/// One step's component and image, as they were before the run.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMaterial {
    /// The job instance.
    pub job: String,
    /// The step id.
    pub step: String,
    /// The component it ran.
    pub component: ResourceDescriptor,
    /// The container image its processes ran in.
    pub image: Option<ResourceDescriptor>,
    /// Whether it uploads or deploys ([`deploys`]).
    pub deploys: bool,
}

/// What a run is built from, read before its first step: the pipeline file and every step's
/// component and image.
#[derive(Debug, Clone, PartialEq)]
pub struct Materials {
    /// The pipeline file.
    pub pipeline: ResourceDescriptor,
    /// Every step of the plan, in order.
    pub steps: Vec<StepMaterial>,
}

/// Whether a step uploads or deploys, so that a successful run in which it ran gets a signed
/// provenance statement. This is the only place the rule lives:
///
/// - the built-in `upload` step, whatever its `target` (object storage or run artifacts);
/// - any step whose component's name contains `deploy`, `push` or `upload` (case aside): a
///   built-in's name (`cloudflare-deploy`, `spin-push`, `spin-deploy`), a shared component's
///   repository name (`ghcr.io/acme/fly-deploy:1` → `fly-deploy`), a component file's name
///   (`./steps/s3-upload.wasm`), or a Serverless-cd `plugin:` name.
///
/// A `run:` or `script:` step is not looked into: a script that deploys by itself
/// (`wrangler deploy` in a shell) is not seen, so put the deploy in a step named for it.
pub fn deploys(step: &PlanStep) -> bool {
    let marked = |name: &str| {
        let name = name.to_ascii_lowercase();
        ["deploy", "push", "upload"].iter().any(|w| name.contains(w))
    };
    component_name(&step.uses).is_some_and(marked) || step.plugin.as_deref().is_some_and(marked)
}

/// The name a step's component goes by, for [`deploys`].
fn component_name(uses: &Uses) -> Option<&str> {
    fn stem(p: &str) -> &str {
        let last = p.rsplit('/').next().unwrap_or(p);
        last.strip_suffix(".wasm").unwrap_or(last)
    }
    match uses {
        Uses::Builtin(b) => Some(b.strip_prefix("builtin://").unwrap_or(b)),
        Uses::Path { written, .. } => Some(stem(written)),
        Uses::Component { reference, .. } => match reference {
            skiff_pipeline::component_ref::ComponentRef::Oci { repository, .. } => {
                Some(repository.rsplit('/').next().unwrap_or(repository))
            }
            skiff_pipeline::component_ref::ComponentRef::Url { url, .. } => Some(stem(url)),
        },
        Uses::Shell { .. } => None,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn digest_of(algorithm: &str, hex: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(algorithm.to_string(), hex.to_string())])
}

/// A built-in step's component: its name and the sha256 of the bytes embedded in this binary,
/// which are the bytes every step that uses it runs.
fn builtin(name: &str) -> ResourceDescriptor {
    let name = name.strip_prefix("builtin://").unwrap_or(name);
    ResourceDescriptor {
        name: name.to_string(),
        uri: format!("builtin://{name}"),
        digest: skiff_runtime::builtin::get(name).map(|b| digest_of("sha256", &sha256_hex(b))).unwrap_or_default(),
        annotations: BTreeMap::new(),
    }
}

fn reference_uri(r: &skiff_pipeline::component_ref::ComponentRef) -> String {
    match r {
        skiff_pipeline::component_ref::ComponentRef::Oci { .. } => format!("oci://{r}"),
        skiff_pipeline::component_ref::ComponentRef::Url { .. } => r.to_string(),
    }
}

impl Materials {
    /// The materials of `plan`, when it has a step that uploads or deploys ([`deploys`]);
    /// `None` otherwise. `ws` is the run's workspace before any step ran: the pipeline file
    /// and components by path are read from it now.
    pub fn collect(app: &AppConfig, plan: &Plan, ws: &Path) -> Result<Option<Self>, String> {
        if !plan.jobs.iter().flat_map(|j| &j.steps).any(deploys) {
            return Ok(None);
        }
        let pipeline = pipeline_file(app, plan, ws)?;
        let mut files: HashMap<&Path, String> = HashMap::new();
        let mut steps = Vec::new();
        for job in &plan.jobs {
            for step in &job.steps {
                let component = match &step.uses {
                    Uses::Builtin(b) => builtin(b),
                    // A `script:` runs in the built-in `script` component, a `run:` in `shell`.
                    Uses::Shell { shell, .. } if shell == skiff_pipeline::load::JS => builtin("script"),
                    Uses::Shell { .. } => builtin("shell"),
                    Uses::Path { written, path } => {
                        let hex = match files.get(path.as_path()) {
                            Some(h) => h.clone(),
                            None => {
                                let bytes = std::fs::read(path)
                                    .map_err(|e| format!("reading component `{written}` ({}): {e}", path.display()))?;
                                let h = sha256_hex(&bytes);
                                files.insert(path, h.clone());
                                h
                            }
                        };
                        ResourceDescriptor {
                            name: written.clone(),
                            uri: written.clone(),
                            digest: digest_of("sha256", &hex),
                            ..Default::default()
                        }
                    }
                    Uses::Component { reference, content, .. } => ResourceDescriptor {
                        name: reference.lock_key(),
                        uri: reference_uri(reference),
                        // The bytes the step ran, as fetched and checked before the run.
                        digest: content.as_ref().map(|d| digest_of("sha256", d.hex())).unwrap_or_default(),
                        ..Default::default()
                    },
                };
                let image = step.image.as_ref().map(|i| ResourceDescriptor {
                    name: i.reference.lock_key(),
                    uri: reference_uri(&i.reference),
                    digest: i.reference.digest().map(|d| digest_of("sha256", d.hex())).unwrap_or_default(),
                    ..Default::default()
                });
                steps.push(StepMaterial {
                    job: job.key.clone(),
                    step: step.id.clone(),
                    component,
                    image,
                    deploys: deploys(step),
                });
            }
        }
        Ok(Some(Materials { pipeline, steps }))
    }

    /// Only the steps that ran (a step skipped by its `if:`, or of a job carried over from an
    /// earlier attempt, did not); `None` when none of them uploads or deploys.
    pub fn that_ran(mut self, report: &RunReport) -> Option<Self> {
        let ran = |job: &str, step: &str| {
            report
                .jobs
                .iter()
                .filter(|j| j.key == job)
                .flat_map(|j| &j.steps)
                .any(|s| s.id == step && s.status != Status::Skipped)
        };
        self.steps.retain(|s| ran(&s.job, &s.step));
        self.steps.iter().any(|s| s.deploys).then_some(self)
    }

    /// The steps that upload or deploy, as `(job, step)`.
    pub fn deploy_steps(&self) -> impl Iterator<Item = (&str, &str)> {
        self.steps.iter().filter(|s| s.deploys).map(|s| (s.job.as_str(), s.step.as_str()))
    }
}

/// The pipeline file the run loaded: its path (as the app names it, or in the commit) and the
/// sha256 of its text.
fn pipeline_file(app: &AppConfig, plan: &Plan, ws: &Path) -> Result<ResourceDescriptor, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("reading the pipeline file {}: {e}", p.display()));
    let (uri, bytes, annotations) = match &app.pipeline {
        PipelineSource::Inline(yaml) => (
            "pipeline-yaml".to_string(),
            yaml.as_bytes().to_vec(),
            BTreeMap::from([("source".to_string(), json!("the app's `pipeline-yaml` in the host's configuration"))]),
        ),
        // Copied into the workspace with the app's folder; else read where it was loaded from.
        PipelineSource::Path(p) if app.repo.is_none() => {
            let bytes = read(&ws.join(p)).or_else(|_| read(Path::new(&plan.file)))?;
            (p.clone(), bytes, BTreeMap::new())
        }
        // From the commit checked out in the workspace: the scheduler names the plan
        // `<path> (commit <sha>)`.
        _ => {
            let path = plan.file.rsplit_once(" (commit ").map_or(plan.file.as_str(), |(p, _)| p);
            (path.to_string(), read(&ws.join(path))?, BTreeMap::new())
        }
    };
    Ok(ResourceDescriptor {
        name: "pipeline".into(),
        uri,
        digest: digest_of("sha256", &sha256_hex(&bytes)),
        annotations,
    })
}

fn rfc3339(ms: Option<i64>) -> Option<String> {
    ms.and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// The name of the subject that stands for the run itself, when it stored no artifact.
pub fn run_subject_name(app: &str, run_id: i64) -> String {
    format!("skiff-run:{app}/{run_id}")
}

/// The statement for a run: `artifacts` (the run's, by sha256) are its subjects; without any,
/// the run itself is, named `skiff-run:<app>/<id>`, with the sha256 of its canonical record
/// (compact JSON of the app, run id, number, attempt, trigger, ref, commit, pipeline digest and
/// the `job/step` ids that ran).
pub fn statement(facts: &RunFacts, materials: &Materials, artifacts: &[Artifact]) -> Statement {
    let mut subject: Vec<ResourceDescriptor> = artifacts
        .iter()
        .filter(|a| !is_statement(&a.name))
        .map(|a| ResourceDescriptor {
            name: a.name.clone(),
            digest: digest_of("sha256", &a.sha256),
            ..Default::default()
        })
        .collect();
    if subject.is_empty() {
        let record = json!({
            "app": facts.app,
            "run": facts.run_id,
            "number": facts.number,
            "attempt": facts.attempt,
            "trigger": facts.trigger,
            "ref": facts.git_ref,
            "commit": facts.commit,
            "pipeline": materials.pipeline.sha256(),
            "steps": materials.steps.iter().map(|s| format!("{}/{}", s.job, s.step)).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        subject.push(ResourceDescriptor {
            name: run_subject_name(&facts.app, facts.run_id),
            digest: digest_of("sha256", &sha256_hex(&bytes)),
            ..Default::default()
        });
    }

    let mut deps: Vec<ResourceDescriptor> = Vec::new();
    if let Some(commit) = &facts.commit {
        let at = facts.git_ref.as_deref().map(|r| format!("@{r}")).unwrap_or_default();
        let uri = match (&facts.repository_url, &facts.repository) {
            (Some(url), _) => format!("git+{url}{at}"),
            (None, Some(name)) => format!("git+{name}{at}"),
            (None, None) => String::new(),
        };
        deps.push(ResourceDescriptor {
            name: "commit".into(),
            uri,
            digest: digest_of("gitCommit", commit),
            ..Default::default()
        });
    }
    deps.push(materials.pipeline.clone());
    // One entry per distinct component or image, naming every step that used it.
    let mut add = |d: &ResourceDescriptor, kind: &str, step: String| {
        let same = |e: &&mut ResourceDescriptor| {
            e.uri == d.uri && e.digest == d.digest && e.annotations.get("kind") == Some(&json!(kind))
        };
        match deps.iter_mut().find(|e| same(e)) {
            Some(e) => {
                if let Some(Value::Array(steps)) = e.annotations.get_mut("steps") {
                    steps.push(step.into());
                }
            }
            None => {
                let mut d = d.clone();
                d.annotations.insert("kind".into(), kind.into());
                d.annotations.insert("steps".into(), json!([step]));
                deps.push(d);
            }
        }
    };
    for s in &materials.steps {
        add(&s.component, "component", format!("{}/{}", s.job, s.step));
    }
    for s in &materials.steps {
        if let Some(image) = &s.image {
            add(image, "image", format!("{}/{}", s.job, s.step));
        }
    }

    let mut external = serde_json::Map::new();
    external.insert("app".into(), facts.app.clone().into());
    external.insert("trigger".into(), facts.trigger.clone().into());
    external.insert("event".into(), facts.event.clone().into());
    if let Some(r) = &facts.git_ref {
        external.insert("ref".into(), r.clone().into());
    }
    if let Some(r) = &facts.repository {
        external.insert("repository".into(), r.clone().into());
    }
    external.insert("pipeline".into(), materials.pipeline.uri.clone().into());
    if !facts.inputs.is_empty() {
        external.insert("inputs".into(), json!(facts.inputs));
    }
    Statement {
        type_: STATEMENT_TYPE.into(),
        subject,
        predicate_type: PREDICATE_TYPE.into(),
        predicate: Provenance {
            build_definition: BuildDefinition {
                build_type: BUILD_TYPE.into(),
                external_parameters: Value::Object(external),
                internal_parameters: json!({"runId": facts.run_id, "runNumber": facts.number, "attempt": facts.attempt}),
                resolved_dependencies: deps,
            },
            run_details: RunDetails {
                builder: Builder {
                    id: facts.builder_id.clone(),
                    version: BTreeMap::from([("skiff".to_string(), env!("CARGO_PKG_VERSION").to_string())]),
                },
                metadata: Metadata {
                    invocation_id: format!("{}/v1/runs/{}", facts.builder_id, facts.run_id),
                    started_on: rfc3339(facts.started_ms),
                    finished_on: rfc3339(facts.finished_ms),
                },
            },
        },
    }
}

// ---------------------------------------------------------------------------------------------
// DSSE.

/// A DSSE envelope: the statement's bytes (base64) and signatures over their PAE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// [`PAYLOAD_TYPE`].
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Standard base64 of the statement's JSON.
    pub payload: String,
    /// At least one.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One signature of an envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// The signing key's fingerprint: hex SHA-256 of its DER SubjectPublicKeyInfo.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub keyid: String,
    /// Standard base64 of the DER ECDSA P-256 signature (SHA-256) over the PAE.
    pub sig: String,
}

impl Envelope {
    /// One line of an `.intoto.jsonl` file: compact JSON and a newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// DSSE's pre-authentication encoding, what is signed: `DSSEv1 SP LEN(type) SP type SP
/// LEN(body) SP body`, lengths as ASCII decimal byte counts. Binding the type into the
/// signature means a payload cannot be passed off as another kind of document.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// The host's signing key. `Debug` prints only its key id.
pub struct HostKey {
    signing: SigningKey,
    public: PublicKey,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey").field("keyid", &self.keyid()).finish_non_exhaustive()
    }
}

impl HostKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        Self::from_signing(SigningKey::generate())
    }

    fn from_signing(signing: SigningKey) -> Self {
        let public = signing.public_key();
        HostKey { signing, public }
    }

    /// `<data_dir>/provenance.key`, created (mode 0600, PKCS#8 PEM) when missing.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        let read = |path: &Path| -> anyhow::Result<Self> {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let key = SigningKey::from_pem(&text, None)
                .with_context(|| format!("the provenance key {} is not a P-256 private key", path.display()))?;
            Ok(Self::from_signing(key))
        };
        if path.exists() {
            return read(&path);
        }
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let key = Self::generate();
        match crate::crypto::write_private(&path, key.signing.to_pem().as_bytes()) {
            Ok(()) => {
                tracing::info!(
                    "created the provenance signing key {} (key id {}; its public key is served at /v1/provenance/key)",
                    path.display(),
                    key.keyid()
                );
                Ok(key)
            }
            // Another process sharing the data directory made it first: use theirs.
            Err(_) if path.exists() => read(&path),
            Err(e) => Err(e),
        }
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The public key as PEM (`PUBLIC KEY`), as `/v1/provenance/key` serves it.
    pub fn public_pem(&self) -> String {
        self.public.to_pem()
    }

    /// The key id envelopes name: [`PublicKey::fingerprint`].
    pub fn keyid(&self) -> String {
        self.public.fingerprint()
    }

    /// The statement in a DSSE envelope signed with this key.
    pub fn sign(&self, statement: &Statement) -> Envelope {
        let payload = serde_json::to_vec(statement).unwrap_or_default();
        let sig = self.signing.sign(&pae(PAYLOAD_TYPE, &payload));
        Envelope {
            payload_type: PAYLOAD_TYPE.into(),
            payload: STANDARD.encode(&payload),
            signatures: vec![EnvelopeSignature { keyid: self.keyid(), sig }],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Verification.

/// Why an envelope does not verify; each message says what it means for the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvenanceError {
    /// Larger than [`MAX_ENVELOPE_BYTES`].
    #[error("the file is {size} bytes, more than the {max} a provenance file can be")]
    TooLarge { size: usize, max: usize },
    /// No envelope at all.
    #[error("the file holds no provenance envelope (it is empty)")]
    Empty,
    /// Not the JSON of a DSSE envelope.
    #[error("line {line} is not a DSSE envelope (JSON with `payloadType`, `payload` and `signatures`): {reason}")]
    NotEnvelope { line: usize, reason: String },
    /// Another kind of payload.
    #[error(
        "line {line}: the envelope's payloadType is `{found}`, not `{PAYLOAD_TYPE}`: it holds no in-toto statement"
    )]
    PayloadType { line: usize, found: String },
    /// A payload or signature that is not base64.
    #[error("line {line}: the envelope's {what} is not valid base64, so the file was damaged or changed")]
    Base64 { line: usize, what: &'static str },
    /// No signatures.
    #[error("line {line}: the envelope carries no signature")]
    Unsigned { line: usize },
    /// Signed, but by a key other than the one given.
    #[error(
        "line {line}: the envelope was signed by key {signed}, not by the key given ({given}); verify it with the \
         public key of the host that ran the run"
    )]
    OtherKey { line: usize, signed: String, given: String },
    /// A signature that does not verify.
    #[error("line {line}: the signature does not verify with key {key}: the file was changed after the host signed it")]
    BadSignature { line: usize, key: String },
    /// A signed payload that is not a statement.
    #[error("line {line}: the signed payload is not an in-toto statement: {reason}")]
    NotStatement { line: usize, reason: String },
    /// A statement, but not provenance as Skiff writes it.
    #[error("line {line}: the statement is not SLSA provenance v1 as Skiff writes it: {reason}")]
    Shape { line: usize, reason: String },
}

/// A statement whose signature verified and whose shape was checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The statement.
    pub statement: Statement,
    /// The key id that signed it.
    pub keyid: String,
}

/// Verifies every envelope of an `.intoto.jsonl` file (one per line; blank lines skipped)
/// with `key`: the DSSE signature over the exact payload bytes first, then the statement's
/// shape. Nothing unsigned is interpreted.
pub fn verify_file(bytes: &[u8], key: &PublicKey) -> Result<Vec<Verified>, ProvenanceError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(ProvenanceError::TooLarge { size: bytes.len(), max: MAX_ENVELOPE_BYTES });
    }
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.push(verify_line(line, key, i + 1)?);
    }
    if out.is_empty() {
        return Err(ProvenanceError::Empty);
    }
    Ok(out)
}

/// Verifies one envelope (line `line` of its file, for messages).
pub fn verify_line(bytes: &[u8], key: &PublicKey, line: usize) -> Result<Verified, ProvenanceError> {
    let envelope: Envelope =
        serde_json::from_slice(bytes).map_err(|e| ProvenanceError::NotEnvelope { line, reason: e.to_string() })?;
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(ProvenanceError::PayloadType { line, found: envelope.payload_type });
    }
    let payload = STANDARD.decode(&envelope.payload).map_err(|_| ProvenanceError::Base64 { line, what: "payload" })?;
    if envelope.signatures.is_empty() {
        return Err(ProvenanceError::Unsigned { line });
    }
    let given = key.fingerprint();
    // The registry's key type holds a checked P-256 key; its PEM is the way to p256's verifier.
    let verifier = p256::ecdsa::VerifyingKey::from_public_key_pem(&key.to_pem())
        .map_err(|e| ProvenanceError::BadSignature { line, key: format!("{given} ({e})") })?;
    let message = pae(&envelope.payload_type, &payload);
    // A signature naming another key is not tried; one naming none, or this key, is.
    let mut others = Vec::new();
    let mut tried = false;
    let mut verified = false;
    for s in &envelope.signatures {
        if !s.keyid.is_empty() && s.keyid != given {
            others.push(s.keyid.clone());
            continue;
        }
        tried = true;
        let der = STANDARD.decode(&s.sig).map_err(|_| ProvenanceError::Base64 { line, what: "signature" })?;
        if p256::ecdsa::Signature::from_der(&der).is_ok_and(|sig| verifier.verify(&message, &sig).is_ok()) {
            verified = true;
            break;
        }
    }
    if !verified {
        return Err(if tried {
            ProvenanceError::BadSignature { line, key: given }
        } else {
            ProvenanceError::OtherKey { line, signed: others.join(", "), given }
        });
    }
    let keyid = given;
    let statement: Statement =
        serde_json::from_slice(&payload).map_err(|e| ProvenanceError::NotStatement { line, reason: e.to_string() })?;
    check_shape(&statement).map_err(|reason| ProvenanceError::Shape { line, reason })?;
    Ok(Verified { statement, keyid })
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_shape(s: &Statement) -> Result<(), String> {
    if s.type_ != STATEMENT_TYPE {
        return Err(format!("`_type` is `{}`, not `{STATEMENT_TYPE}`", s.type_));
    }
    if s.predicate_type != PREDICATE_TYPE {
        return Err(format!("`predicateType` is `{}`, not `{PREDICATE_TYPE}`", s.predicate_type));
    }
    if s.subject.is_empty() {
        return Err("it names no subject".into());
    }
    for d in &s.subject {
        if d.name.is_empty() {
            return Err("a subject has no name".into());
        }
        if !d.sha256().is_some_and(is_sha256_hex) {
            return Err(format!("subject `{}` has no sha256 digest", d.name));
        }
    }
    let b = &s.predicate.build_definition;
    if b.build_type != BUILD_TYPE {
        return Err(format!("`buildType` is `{}`, not `{BUILD_TYPE}`", b.build_type));
    }
    if !b.external_parameters.is_object() {
        return Err("`externalParameters` is not an object".into());
    }
    for d in &b.resolved_dependencies {
        if d.uri.is_empty() && d.name.is_empty() {
            return Err("a dependency has neither name nor uri".into());
        }
        if let Some(h) = d.sha256()
            && !is_sha256_hex(h)
        {
            return Err(format!("dependency `{}` has a malformed sha256 `{h}`", d.uri));
        }
    }
    if s.predicate.run_details.builder.id.is_empty() {
        return Err("`builder.id` is empty".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The host's side.

/// What [`record`] stored.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The artifact ([`ARTIFACT_NAME`]) with its sha256.
    pub artifact: Artifact,
    /// The key that signed it.
    pub keyid: String,
}

/// The host as `builder.id`: its `public-url`, else `skiff://<hostname>`.
pub fn builder_id(config: &ServeConfig) -> String {
    if let Some(u) = &config.public_url {
        return u.clone();
    }
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".into());
    format!("skiff://{host}")
}

/// Writes run `id`'s provenance, after it succeeded: the statement over `materials` (only the
/// steps `report` shows ran), signed with `key`, stored as the run's artifact
/// [`ARTIFACT_NAME`]; `log(job, step, text)` tells each step that uploaded or deployed where it
/// is. `Ok(None)` when no step that uploads or deploys ran.
pub fn record(
    key: &HostKey,
    config: &ServeConfig,
    store: &dyn RunStore,
    id: i64,
    materials: Materials,
    report: &RunReport,
    log: &dyn Fn(&str, &str, &str),
) -> anyhow::Result<Option<Recorded>> {
    let Some(materials) = materials.that_ran(report) else { return Ok(None) };
    let facts = run_facts(config, store, id)?;
    let artifacts = crate::artifact_store(config);
    let stored = artifacts.list(&id.to_string()).with_context(|| format!("listing the artifacts of run {id}"))?;
    let envelope = key.sign(&statement(&facts, &materials, &stored));
    let artifact = store_envelope(config, artifacts.as_ref(), id, "", "provenance", ARTIFACT_NAME, &envelope)?;
    let keyid = key.keyid();
    for (job, step) in materials.deploy_steps() {
        log(
            job,
            step,
            &format!(
                "[skiff] provenance of this run: artifact {ARTIFACT_NAME} (sha256:{}), signed by this host's key {}; \
                 check it with `skiff verify-provenance`",
                artifact.sha256,
                &keyid[..16]
            ),
        );
    }
    Ok(Some(Recorded { artifact, keyid }))
}

/// What the statement says of run `id`, read from the store (the commit and the start time
/// were recorded after the run was leased).
fn run_facts(config: &ServeConfig, store: &dyn RunStore, id: i64) -> anyhow::Result<RunFacts> {
    let run = store.run(id)?.with_context(|| format!("run {id} is not in the store"))?;
    let app = config.apps.get(&run.app);
    let text = |ptr: &str| run.event.pointer(ptr).and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from);
    let repository_url = app
        .and_then(|a| a.repo.as_ref())
        .and_then(|r| r.source(&run.event).ok())
        .map(|s| s.remote.url().to_string())
        .or_else(|| text("/repository/clone_url"))
        .or_else(|| text("/repository/html_url"));
    Ok(RunFacts {
        app: run.app.clone(),
        run_id: run.id,
        number: run.number,
        attempt: run.attempt,
        trigger: run.trigger.clone(),
        event: text("/name").unwrap_or_else(|| run.trigger.clone()),
        git_ref: run.git_ref.clone().or_else(|| text("/ref")),
        commit: run.sha.clone().filter(|s| !s.is_empty() && s.bytes().any(|b| b != b'0')),
        repository: text("/repository/full_name"),
        repository_url,
        inputs: run.inputs.clone(),
        builder_id: builder_id(config),
        started_ms: run.started_at,
        finished_ms: Some(crate::store::now_ms()),
    })
}

/// Stores a signed envelope as artifact `name` of run `id` (the artifact store takes a file:
/// written beside the run's workspace first).
fn store_envelope(
    config: &ServeConfig,
    artifacts: &dyn skiff_runtime::artifact_store::ArtifactStore,
    id: i64,
    job: &str,
    step: &str,
    name: &str,
    envelope: &Envelope,
) -> anyhow::Result<Artifact> {
    let work = config.data_dir.join("work");
    std::fs::create_dir_all(&work).context("creating the work folder")?;
    let tmp = work.join(format!("{id}.{name}"));
    std::fs::write(&tmp, envelope.to_line()).with_context(|| format!("writing {}", tmp.display()))?;
    let put = artifacts.put(&id.to_string(), job, step, name, &tmp);
    let _ = std::fs::remove_file(&tmp);
    put.with_context(|| format!("storing {name} for run {id}"))
}

// ---------------------------------------------------------------------------------------------
// A deploy step's own statement.

/// The output a step that uploads or deploys gains when it succeeds: the name of the run
/// artifact holding its statement ([`step_artifact_name`]).
pub const OUTPUT_ARTIFACT: &str = "provenance";
/// The output with the sha256 (hex) of that artifact's bytes.
pub const OUTPUT_SHA256: &str = "provenance-sha256";
/// The output with the id of the key that signed it (as `/v1/provenance/key` names it).
pub const OUTPUT_KEY_ID: &str = "provenance-key-id";

/// The artifact of the statement of step `step` of job instance `job`.
pub fn step_artifact_name(job: &str, step: &str) -> String {
    format!("provenance-{job}-{step}.intoto.jsonl")
}

/// Whether an artifact is a provenance statement (the run's or a step's), which is never a
/// subject of another statement.
fn is_statement(name: &str) -> bool {
    name == ARTIFACT_NAME || (name.starts_with("provenance-") && name.ends_with(".intoto.jsonl"))
}

/// The statement of a step that deployed, signed when it succeeds: its subject is what the
/// step did (`deployed`: its outputs by digest) and the run's artifacts so far; its
/// dependencies are those of the steps that ran before it and of the step itself.
pub fn step_statement(
    facts: &RunFacts,
    materials: &Materials,
    artifacts: &[Artifact],
    deployed: ResourceDescriptor,
) -> Statement {
    let mut s = statement(facts, materials, artifacts);
    // Without artifacts, `statement` names the run record; the deployment takes its place.
    s.subject.retain(|d| d.name != run_subject_name(&facts.app, facts.run_id));
    s.subject.insert(0, deployed);
    s
}

/// What a deploy step did, as a subject: named `<job>/<step>`, digested over its outputs as
/// compact JSON (sorted by name), the outputs themselves as an annotation with any value that
/// holds one of the step's secrets withheld.
pub fn deployment(job: &str, step: &str, outputs: &BTreeMap<String, String>, secrets: &[String]) -> ResourceDescriptor {
    let bytes = serde_json::to_vec(outputs).unwrap_or_default();
    let shown: BTreeMap<&str, &str> = outputs
        .iter()
        .map(|(k, v)| {
            let secret = secrets.iter().any(|s| !s.is_empty() && v.contains(s.as_str()));
            (k.as_str(), if secret { "***" } else { v.as_str() })
        })
        .collect();
    ResourceDescriptor {
        name: format!("{job}/{step}"),
        digest: digest_of("sha256", &sha256_hex(&bytes)),
        annotations: BTreeMap::from([("kind".to_string(), json!("deployment")), ("outputs".to_string(), json!(shown))]),
        ..Default::default()
    }
}

/// Runs a run's steps through `inner`; when a step that uploads or deploys succeeds, signs a
/// statement of what ran up to it ([`step_statement`]), stores it as the run's artifact
/// [`step_artifact_name`] and adds [`OUTPUT_ARTIFACT`], [`OUTPUT_SHA256`] and
/// [`OUTPUT_KEY_ID`] to the step's outputs, so that later steps (a notification, a release
/// note) can name it. A statement that cannot be stored fails the step: a deploy without its
/// record is not a success. The run's own statement ([`record`]) still comes at its end.
pub struct Attesting {
    inner: Arc<dyn skiff_pipeline::StepExecutor>,
    key: Arc<HostKey>,
    config: Arc<ServeConfig>,
    store: Arc<dyn RunStore>,
    run: i64,
    materials: Materials,
    /// The steps that started, as `(job, step)`.
    ran: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

impl Attesting {
    /// `inner` for run `run`, whose steps are `materials`.
    pub fn new(
        inner: Arc<dyn skiff_pipeline::StepExecutor>,
        key: Arc<HostKey>,
        config: Arc<ServeConfig>,
        store: Arc<dyn RunStore>,
        run: i64,
        materials: Materials,
    ) -> Self {
        Attesting { inner, key, config, store, run, materials, ran: Default::default() }
    }

    /// Signs and stores the statement of `job`/`step`, which just succeeded (blocking I/O: the
    /// store and the artifact files, once per deploy step, off the async workers).
    async fn attest(&self, job: &str, step: &str, deployed: ResourceDescriptor) -> anyhow::Result<(Artifact, String)> {
        let mut materials = self.materials.clone();
        {
            let ran = self.ran.lock().unwrap_or_else(|e| e.into_inner());
            materials.steps.retain(|s| ran.contains(&(s.job.clone(), s.step.clone())));
        }
        let (key, config, store, id) = (self.key.clone(), self.config.clone(), self.store.clone(), self.run);
        let name = step_artifact_name(job, step);
        let (job, step) = (job.to_string(), step.to_string());
        tokio::task::spawn_blocking(move || {
            let facts = run_facts(&config, store.as_ref(), id)?;
            let artifacts = crate::artifact_store(&config);
            let stored =
                artifacts.list(&id.to_string()).with_context(|| format!("listing the artifacts of run {id}"))?;
            let envelope = key.sign(&step_statement(&facts, &materials, &stored, deployed));
            let artifact = store_envelope(&config, artifacts.as_ref(), id, &job, &step, &name, &envelope)?;
            Ok((artifact, key.keyid()))
        })
        .await
        .context("the provenance task stopped")?
    }
}

impl skiff_pipeline::StepExecutor for Attesting {
    fn run_step<'a>(
        &'a self,
        req: skiff_pipeline::StepRequest,
        log: &'a (dyn Fn(skiff_pipeline::LogLine) + Send + Sync),
    ) -> std::pin::Pin<Box<dyn Future<Output = skiff_pipeline::StepResult> + Send + 'a>> {
        Box::pin(async move {
            let (job, step) = (req.job_id.clone(), req.step_id.clone());
            self.ran.lock().unwrap_or_else(|e| e.into_inner()).insert((job.clone(), step.clone()));
            let deploys = self.materials.steps.iter().any(|s| s.deploys && s.job == job && s.step == step);
            let secrets: Vec<String> = if deploys { req.secrets.values().cloned().collect() } else { Vec::new() };
            let mut result = self.inner.run_step(req, log).await;
            if !deploys || result.outcome != skiff_pipeline::StepOutcome::Success {
                return result;
            }
            let deployed = deployment(&job, &step, &result.outputs, &secrets);
            let say = |text: String| {
                log(skiff_pipeline::LogLine {
                    job_id: job.clone(),
                    step_id: step.clone(),
                    level: skiff_pipeline::Level::System,
                    text,
                })
            };
            match self.attest(&job, &step, deployed).await {
                Ok((artifact, keyid)) => {
                    say(format!(
                        "[skiff] provenance of this step: artifact {} (sha256:{}), signed by this host's key {}; \
                         outputs `{OUTPUT_ARTIFACT}` and `{OUTPUT_SHA256}` name it",
                        artifact.name,
                        artifact.sha256,
                        &keyid[..16]
                    ));
                    result.outputs.insert(OUTPUT_ARTIFACT.into(), artifact.name);
                    result.outputs.insert(OUTPUT_SHA256.into(), artifact.sha256);
                    result.outputs.insert(OUTPUT_KEY_ID.into(), keyid);
                }
                Err(e) => {
                    result.outcome = skiff_pipeline::StepOutcome::Failure(format!(
                        "the step succeeded, but its provenance could not be recorded: {e:#}"
                    ))
                }
            }
            result
        })
    }

    fn job_finished(&self, run_id: &str, job_id: &str) {
        self.inner.job_finished(run_id, job_id)
    }
}

/// The public key this host signs provenance with.
#[utoipa::path(get, path = "/v1/provenance/key", tag = "provenance", responses(
    (status = 200, description = "The PEM public key (ECDSA P-256) that signs this host's provenance statements. Public: no token needed", content_type = "application/x-pem-file", body = String,
     headers(("x-key-id" = String, description = "The key's id, as provenance envelopes name it: the hex SHA-256 of its DER SubjectPublicKeyInfo"))),
))]
pub(crate) async fn provenance_key(State(s): State<Arc<crate::Shared>>) -> impl IntoResponse {
    let key = s.scheduler.provenance_key();
    (
        [
            (header::CONTENT_TYPE, "application/x-pem-file".to_string()),
            (header::HeaderName::from_static("x-key-id"), key.keyid()),
        ],
        key.public_pem(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> RunFacts {
        RunFacts {
            app: "web".into(),
            run_id: 7,
            number: 3,
            attempt: 1,
            trigger: "push".into(),
            event: "push".into(),
            git_ref: Some("refs/heads/main".into()),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            repository: Some("acme/web".into()),
            repository_url: Some("https://github.com/acme/web.git".into()),
            inputs: BTreeMap::new(),
            builder_id: "https://ci.example.com".into(),
            started_ms: Some(1_700_000_000_000),
            finished_ms: Some(1_700_000_005_000),
        }
    }

    fn materials() -> Materials {
        let pipeline = ResourceDescriptor {
            name: "pipeline".into(),
            uri: ".skiff/pipeline.yaml".into(),
            digest: digest_of("sha256", &sha256_hex(b"steps: []")),
            ..Default::default()
        };
        let step = |step: &str, component: ResourceDescriptor, deploys: bool| StepMaterial {
            job: "build".into(),
            step: step.into(),
            component,
            image: None,
            deploys,
        };
        Materials {
            pipeline,
            steps: vec![
                step("step-1", builtin("diag"), false),
                step("step-2", builtin("upload"), true),
                step("step-3", builtin("diag"), false),
            ],
        }
    }

    fn artifact(name: &str, bytes: &[u8]) -> Artifact {
        Artifact {
            name: name.into(),
            size: bytes.len() as u64,
            sha256: sha256_hex(bytes),
            job: "build".into(),
            step: "step-2".into(),
            created: 0,
        }
    }

    fn signed() -> (HostKey, Vec<u8>) {
        let key = HostKey::generate();
        let line = key.sign(&statement(&facts(), &materials(), &[artifact("site.tar.gz", b"site")])).to_line();
        (key, line)
    }

    #[test]
    fn pae_is_as_the_dsse_spec_gives_it() {
        // The example of the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
        // Lengths are byte counts, not characters.
        assert_eq!(pae("t", "é".as_bytes()), "DSSEv1 1 t 2 é".as_bytes());
    }

    #[test]
    fn a_signed_statement_verifies_and_round_trips() {
        let (key, line) = signed();
        let v = verify_file(&line, key.public_key()).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].keyid, key.keyid());
        let s = &v[0].statement;
        assert_eq!(s, &statement(&facts(), &materials(), &[artifact("site.tar.gz", b"site")]));
        assert_eq!(s.subject[0].name, "site.tar.gz");
        assert_eq!(s.subject[0].sha256(), Some(sha256_hex(b"site").as_str()));
        let envelope: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(envelope["payloadType"], PAYLOAD_TYPE);
        assert_eq!(envelope["signatures"][0]["keyid"], key.keyid());
    }

    #[test]
    fn any_changed_byte_fails() {
        let (key, line) = signed();
        let body = &line[..line.len() - 1];
        for i in 0..body.len() {
            for flip in [0x01u8, 0x20] {
                let mut bad = body.to_vec();
                bad[i] ^= flip;
                assert!(
                    verify_file(&bad, key.public_key()).is_err(),
                    "changing byte {i} ({:?}) went unnoticed",
                    body[i] as char
                );
            }
        }
    }

    #[test]
    fn a_changed_payload_or_signature_is_a_bad_signature() {
        let (key, line) = signed();
        let mut envelope: Envelope = serde_json::from_slice(&line).unwrap();
        let mut payload = STANDARD.decode(&envelope.payload).unwrap();
        let at = String::from_utf8_lossy(&payload).find("site.tar.gz").unwrap();
        payload[at] = b'S';
        let mut changed = envelope.clone();
        changed.payload = STANDARD.encode(&payload);
        let e = verify_file(&changed.to_line(), key.public_key()).unwrap_err();
        assert!(matches!(e, ProvenanceError::BadSignature { .. }), "{e}");
        assert!(e.to_string().contains("changed after the host signed it"), "{e}");

        let mut sig = STANDARD.decode(&envelope.signatures[0].sig).unwrap();
        let last = sig.len() - 1;
        sig[last] ^= 1;
        envelope.signatures[0].sig = STANDARD.encode(&sig);
        assert!(matches!(
            verify_file(&envelope.to_line(), key.public_key()),
            Err(ProvenanceError::BadSignature { .. })
        ));
    }

    #[test]
    fn another_key_fails() {
        let (_, line) = signed();
        let other = HostKey::generate();
        let e = verify_file(&line, other.public_key()).unwrap_err();
        assert!(matches!(e, ProvenanceError::OtherKey { .. }), "{e}");
        // Without a key id, the signature itself is what fails.
        let mut envelope: Envelope = serde_json::from_slice(&line).unwrap();
        envelope.signatures[0].keyid.clear();
        let e = verify_file(&envelope.to_line(), other.public_key()).unwrap_err();
        assert!(matches!(e, ProvenanceError::BadSignature { .. }), "{e}");
    }

    #[test]
    fn only_an_in_toto_payload_of_the_right_shape_verifies() {
        let key = HostKey::generate();
        // Signed by the right key, but another payload type: refused before it is read.
        let payload = b"{}";
        let envelope = Envelope {
            payload_type: "text/plain".into(),
            payload: STANDARD.encode(payload),
            signatures: vec![EnvelopeSignature {
                keyid: key.keyid(),
                sig: key.signing.sign(&pae("text/plain", payload)),
            }],
        };
        assert!(matches!(verify_file(&envelope.to_line(), key.public_key()), Err(ProvenanceError::PayloadType { .. })));
        // A statement of another predicate.
        let mut s = statement(&facts(), &materials(), &[]);
        s.predicate_type = "https://example.com/other".into();
        let e = verify_file(&key.sign(&s).to_line(), key.public_key()).unwrap_err();
        assert!(e.to_string().contains("predicateType"), "{e}");
        assert!(matches!(verify_file(b"\n\n", key.public_key()), Err(ProvenanceError::Empty)));
        assert!(matches!(verify_file(b"not json", key.public_key()), Err(ProvenanceError::NotEnvelope { .. })));
    }

    #[test]
    fn the_statement_records_what_ran() {
        let s = statement(&facts(), &materials(), &[artifact("a.txt", b"a"), artifact(ARTIFACT_NAME, b"old")]);
        assert_eq!(s.type_, STATEMENT_TYPE);
        assert_eq!(s.subject.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["a.txt"]);
        let b = &s.predicate.build_definition;
        assert_eq!(b.external_parameters["trigger"], "push");
        assert_eq!(b.external_parameters["ref"], "refs/heads/main");
        assert_eq!(b.external_parameters["repository"], "acme/web");
        let deps = &b.resolved_dependencies;
        assert_eq!(deps[0].uri, "git+https://github.com/acme/web.git@refs/heads/main");
        assert_eq!(deps[0].digest["gitCommit"], "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(deps[1].name, "pipeline");
        assert_eq!(deps[1].sha256(), Some(sha256_hex(b"steps: []").as_str()));
        // One entry per component, naming its steps; digests of the embedded bytes.
        let diag = deps.iter().find(|d| d.uri == "builtin://diag").unwrap();
        assert_eq!(diag.annotations["steps"], json!(["build/step-1", "build/step-3"]));
        assert_eq!(diag.sha256(), Some(sha256_hex(skiff_runtime::builtin::get("diag").unwrap()).as_str()));
        assert_eq!(deps.len(), 4, "{deps:#?}");
        assert_eq!(s.predicate.run_details.metadata.invocation_id, "https://ci.example.com/v1/runs/7");
        assert_eq!(s.predicate.run_details.metadata.started_on.as_deref(), Some("2023-11-14T22:13:20.000Z"));
    }

    #[test]
    fn without_artifacts_the_run_is_the_subject() {
        let a = statement(&facts(), &materials(), &[]);
        assert_eq!(a.subject.len(), 1);
        assert_eq!(a.subject[0].name, "skiff-run:web/7");
        // The digest is of the run's record: another commit, another digest.
        let mut f = facts();
        f.commit = Some("f".repeat(40));
        let b = statement(&f, &materials(), &[]);
        assert_ne!(a.subject[0].digest, b.subject[0].digest);
        assert_eq!(a.subject[0].digest, statement(&facts(), &materials(), &[]).subject[0].digest);
    }

    #[test]
    fn steps_that_did_not_run_are_left_out() {
        use skiff_pipeline::{JobReport, StepReport};
        let step = |id: &str, status| StepReport {
            id: id.into(),
            name: id.into(),
            status,
            duration: Default::default(),
            error: None,
            summary: None,
        };
        let report = |upload| RunReport {
            run_id: "7".into(),
            status: Status::Success,
            duration: Default::default(),
            jobs: vec![JobReport {
                key: "build".into(),
                name: "build".into(),
                status: Status::Success,
                duration: Default::default(),
                steps: vec![step("step-1", Status::Success), step("step-2", upload), step("step-3", Status::Skipped)],
                outputs: BTreeMap::new(),
            }],
        };
        let m = materials().that_ran(&report(Status::Success)).unwrap();
        assert_eq!(m.steps.iter().map(|s| s.step.as_str()).collect::<Vec<_>>(), ["step-1", "step-2"]);
        assert_eq!(m.deploy_steps().collect::<Vec<_>>(), [("build", "step-2")]);
        // The upload was skipped: the run uploaded nothing, and gets no provenance.
        assert!(materials().that_ran(&report(Status::Skipped)).is_none());
    }

    #[test]
    fn which_steps_upload_or_deploy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("steps")).unwrap();
        std::fs::write(dir.path().join("steps/s3-upload.wasm"), b"\0asm").unwrap();
        let plan = skiff_pipeline::load_str(
            "steps:\n  - uses: upload\n    with: {target: artifact, source: a}\n  - uses: diag\n  - run: echo hi\n  \
             - uses: ./steps/s3-upload.wasm\n  - uses: ghcr.io/acme/cloudflare-deploy:1.0.0\n  \
             - uses: ghcr.io/acme/spin-push@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n  \
             - uses: ghcr.io/acme/lint:1\n",
            "p.yaml",
            dir.path(),
        )
        .unwrap();
        let marks: Vec<bool> = plan.jobs[0].steps.iter().map(deploys).collect();
        assert_eq!(marks, [true, false, false, true, true, true, false]);
    }

    #[test]
    fn the_host_key_is_created_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let a = HostKey::load_or_create(&data).unwrap();
        let mode = std::fs::metadata(data.join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = HostKey::load_or_create(&data).unwrap();
        assert_eq!(a.public_pem(), b.public_pem());
        assert!(a.public_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(!format!("{a:?}").contains("PRIVATE"));
        let broken = dir.path().join("broken");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join(KEY_FILE), "not a key").unwrap();
        let e = HostKey::load_or_create(&broken).unwrap_err();
        assert!(format!("{e:#}").contains("not a P-256 private key"), "{e:#}");
    }
}
