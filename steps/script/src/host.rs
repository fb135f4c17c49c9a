//! What the JavaScript API needs from the step's capabilities, as a trait: the
//! component implements it with `skiff-step-sdk` ([`SdkHost`]); unit tests on the
//! build machine implement it with a fake.

use serde::{Deserialize, Serialize};

/// A log level of the step log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    /// `console.*` / `core.*` names to levels; anything unknown is `info`.
    pub fn parse(s: &str) -> Self {
        match s {
            "debug" => Self::Debug,
            "warn" => Self::Warn,
            "error" => Self::Error,
            _ => Self::Info,
        }
    }
}

/// A capability refused or failed: the host's message, and whether it was a refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostError {
    pub error: String,
    pub denied: bool,
}

/// A program run by `$`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Exec {
    pub program: String,
    pub args: Vec<String>,
    /// The process's whole environment (the script's `process.env`).
    pub env: Vec<(String, String)>,
    /// Workspace-relative; `""` is the workspace.
    pub cwd: String,
    /// Capture only, nothing to the log.
    pub quiet: bool,
    pub timeout_ms: Option<u64>,
    pub stdin: Option<String>,
}

/// How a program ended and what it wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExecResult {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
}

/// An HTTP request by `fetch`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Fetch {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

/// An HTTP response for `fetch`; the body as text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FetchResult {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// The step's capabilities, as the script reaches them.
pub trait Host {
    fn log(&self, level: Level, text: &str);
    fn summary(&self, markdown: &str);
    fn exec(&self, cmd: &Exec) -> Result<ExecResult, HostError>;
    fn fetch(&self, req: &Fetch) -> Result<FetchResult, HostError>;
    /// A granted secret; `None` when the step was not granted it.
    fn secret(&self, name: &str) -> Option<String>;
}

/// Bytes kept of a process's stdout and of its stderr.
pub const CAPTURE_LIMIT: u64 = 4 << 20;
/// The largest response body `fetch` reads.
pub const FETCH_LIMIT: u64 = 16 << 20;

/// The capabilities of the component, through `skiff-step-sdk`.
pub struct SdkHost;

impl Host for SdkHost {
    fn log(&self, level: Level, text: &str) {
        use skiff_step_sdk::log::Level as L;
        let level = match level {
            Level::Debug => L::Debug,
            Level::Info => L::Info,
            Level::Warn => L::Warn,
            Level::Error => L::Error,
        };
        skiff_step_sdk::log::write(level, text);
    }

    fn summary(&self, markdown: &str) {
        skiff_step_sdk::log::summary(markdown);
    }

    fn exec(&self, cmd: &Exec) -> Result<ExecResult, HostError> {
        use skiff_step_sdk::process::{Command, Error, Exit};
        let mut c = Command::new(&cmd.program).args(cmd.args.iter().cloned());
        for (k, v) in &cmd.env {
            c = c.env(k, v);
        }
        if !cmd.cwd.is_empty() {
            c = c.cwd(&cmd.cwd);
        }
        if let Some(ms) = cmd.timeout_ms {
            c = c.timeout_ms(ms);
        }
        if let Some(input) = &cmd.stdin {
            c = c.stdin(input.clone().into_bytes());
        }
        c = if cmd.quiet { c.capture(CAPTURE_LIMIT) } else { c.log_and_capture(CAPTURE_LIMIT) };
        let out = c.run().map_err(|e| match e {
            Error::Denied(m) => HostError { error: m, denied: true },
            Error::Unavailable(m) | Error::Invalid(m) | Error::SpawnFailed(m) => HostError { error: m, denied: false },
        })?;
        let (code, signal, timed_out) = match out.exit {
            Exit::Code(c) => (Some(c), None, false),
            Exit::Signal(s) => (None, Some(s), false),
            Exit::TimedOut => (None, None, true),
        };
        Ok(ExecResult {
            code,
            signal,
            timed_out,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            truncated: out.truncated,
        })
    }

    fn fetch(&self, req: &Fetch) -> Result<FetchResult, HostError> {
        use skiff_step_sdk::http::{HttpError, Request};
        let mut r = Request::new(&req.method, &req.url).max_response_bytes(FETCH_LIMIT);
        for (k, v) in &req.headers {
            r = r.header(k, v);
        }
        if let Some(body) = &req.body {
            r = r.body(body.clone().into_bytes());
        }
        let resp =
            r.send().map_err(|e| HostError { denied: matches!(e, HttpError::Denied(_)), error: e.to_string() })?;
        let body = String::from_utf8_lossy(&resp.body).into_owned();
        Ok(FetchResult { status: resp.status, headers: resp.headers, body })
    }

    fn secret(&self, name: &str) -> Option<String> {
        skiff_step_sdk::secret(name)
    }
}
