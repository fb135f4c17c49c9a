//! Inputs, outputs, errors and the manifest, as plain Rust types.

use std::collections::BTreeMap;

use crate::bindings::skiff::step::types as wit;

/// What one run of a step is given.
#[derive(Debug, Clone)]
pub struct Context {
    /// The run's id.
    pub run_id: String,
    /// This step's id within the run.
    pub step_id: String,
    /// The step's inputs (`with:` in the pipeline), expressions already evaluated.
    pub inputs: BTreeMap<String, String>,
    /// The triggering event, normalized, as JSON text (`{}` when there is none).
    pub event_json: String,
}

impl Context {
    pub(crate) fn from_wit(inv: wit::Invocation) -> Self {
        Self {
            run_id: inv.run_id,
            step_id: inv.step_id,
            inputs: inv.inputs.into_iter().map(|p| (p.key, p.value)).collect(),
            event_json: inv.event_json,
        }
    }

    /// Input `name`, if the pipeline gave it.
    ///
    /// ```no_run
    /// # fn f(ctx: skiff_step_sdk::Context) {
    /// let path = ctx.input("path");
    /// # }
    /// ```
    pub fn input(&self, name: &str) -> Option<&str> {
        self.inputs.get(name).map(String::as_str)
    }

    /// Input `name`, or `default` when it is absent or empty.
    pub fn input_or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        match self.input(name) {
            Some(v) if !v.is_empty() => v,
            _ => default,
        }
    }

    /// Input `name`, or an [`StepError::InvalidInput`] that tells the user to set it.
    pub fn required(&self, name: &str) -> Result<&str, StepError> {
        match self.input(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(StepError::InvalidInput(format!(
                "input `{name}` is required: set it under `with:` in the pipeline"
            ))),
        }
    }

    /// The triggering event parsed as JSON (`null` when it is not valid JSON).
    pub fn event(&self) -> serde_json::Value {
        serde_json::from_str(&self.event_json).unwrap_or(serde_json::Value::Null)
    }
}

/// The outputs a step returns; later steps read them as `steps.<id>.outputs.<name>`.
#[derive(Debug, Clone, Default)]
pub struct Outputs(BTreeMap<String, String>);

impl Outputs {
    /// No outputs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets output `key` to `value`.
    ///
    /// ```no_run
    /// let out = skiff_step_sdk::Outputs::new().set("url", "https://example.com");
    /// ```
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Sets output `key` in place.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), value.into());
    }

    pub(crate) fn into_wit(self) -> wit::StepOutput {
        wit::StepOutput { outputs: self.0.into_iter().map(|(key, value)| wit::Pair { key, value }).collect() }
    }
}

/// Why a step failed; the text is shown to the user, so say what to fix.
#[derive(Debug, Clone)]
pub enum StepError {
    /// An input is missing or malformed.
    InvalidInput(String),
    /// The work itself failed.
    Failed(String),
    /// The step needed a capability the pipeline did not grant.
    Denied(String),
}

impl StepError {
    /// A [`StepError::Failed`] from anything printable.
    pub fn failed(msg: impl std::fmt::Display) -> Self {
        Self::Failed(msg.to_string())
    }

    pub(crate) fn into_wit(self) -> wit::StepError {
        match self {
            Self::InvalidInput(m) => wit::StepError::InvalidInput(m),
            Self::Failed(m) => wit::StepError::Failed(m),
            Self::Denied(m) => wit::StepError::Denied(m),
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Self::Failed(m) => f.write_str(m),
            Self::Denied(m) => write!(f, "denied: {m}"),
        }
    }
}

impl From<crate::http::HttpError> for StepError {
    fn from(e: crate::http::HttpError) -> Self {
        match e {
            crate::http::HttpError::Denied(m) => Self::Denied(m),
            other => Self::Failed(other.to_string()),
        }
    }
}

/// What a step declares about itself.
#[derive(Debug, Clone)]
pub struct Manifest {
    name: String,
    version: String,
    description: String,
    inputs: Vec<wit::InputSpec>,
    outputs: Vec<wit::OutputSpec>,
    hosts: Vec<String>,
    secrets: Vec<String>,
    process: bool,
}

impl Manifest {
    /// A manifest with a name and a one-line description.
    ///
    /// ```no_run
    /// use skiff_step_sdk::Manifest;
    /// let m = Manifest::new("notify", "Posts a message.")
    ///     .input("webhook", "Where to post", true, None)
    ///     .output("status", "HTTP status")
    ///     .host("${inputs.webhook}")
    ///     .secret("TOKEN");
    /// ```
    pub fn new(name: &str, description: &str) -> Self {
        Self {
            name: name.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: description.into(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            hosts: Vec::new(),
            secrets: Vec::new(),
            process: false,
        }
    }

    /// Sets the step's version (the SDK's by default).
    pub fn version(mut self, version: &str) -> Self {
        self.version = version.into();
        self
    }

    /// Declares an input.
    pub fn input(mut self, name: &str, description: &str, required: bool, default: Option<&str>) -> Self {
        self.inputs.push(wit::InputSpec {
            name: name.into(),
            description: description.into(),
            required,
            default: default.map(Into::into),
        });
        self
    }

    /// Declares an output.
    pub fn output(mut self, name: &str, description: &str) -> Self {
        self.outputs.push(wit::OutputSpec { name: name.into(), description: description.into() });
        self
    }

    /// Asks for outbound HTTP to `pattern` (`host[:port]`, `*.example.com`, or `${inputs.NAME}`).
    pub fn host(mut self, pattern: &str) -> Self {
        self.hosts.push(pattern.into());
        self
    }

    /// Asks for secret `name`.
    pub fn secret(mut self, name: &str) -> Self {
        self.secrets.push(name.into());
        self
    }

    /// Asks for the `process` capability.
    pub fn process(mut self) -> Self {
        self.process = true;
        self
    }

    pub(crate) fn into_wit(self) -> wit::Manifest {
        wit::Manifest {
            name: self.name,
            version: self.version,
            description: self.description,
            inputs: self.inputs,
            outputs: self.outputs,
            capabilities: wit::Capabilities { hosts: self.hosts, secrets: self.secrets, process: self.process },
        }
    }
}
