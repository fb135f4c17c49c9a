//! Running OS processes in the host's sandbox, for steps granted `process`.
//!
//! ```no_run
//! use skiff_step_sdk::process::Command;
//! let out = Command::new("git").args(["rev-parse", "HEAD"]).capture(4096).run()?;
//! println!("{}", String::from_utf8_lossy(&out.stdout));
//! # Ok::<(), skiff_step_sdk::process::Error>(())
//! ```

use crate::bindings::skiff::step::process as wit;
use crate::bindings::skiff::step::types::Pair;

pub use wit::{Error, Exit, Outcome, OutputMode};

// `Error` is `Display` and `std::error::Error` through the generated bindings.

/// A process to run.
#[derive(Debug, Clone)]
pub struct Command {
    inner: wit::Command,
}

impl Command {
    /// Runs `program` (looked up on the `PATH` given in [`Command::env`], or a path).
    pub fn new(program: &str) -> Self {
        Self {
            inner: wit::Command {
                program: program.into(),
                args: Vec::new(),
                env: Vec::new(),
                cwd: None,
                stdin: None,
                timeout_ms: None,
                output: OutputMode::Log,
                capture_limit: 0,
            },
        }
    }
    /// Adds one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.inner.args.push(arg.into());
        self
    }
    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.inner.args.extend(args.into_iter().map(Into::into));
        self
    }
    /// Sets an environment variable; the process gets nothing else.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.inner.env.push(Pair { key: key.into(), value: value.into() });
        self
    }
    /// Runs in `dir`, relative to the workspace.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.inner.cwd = Some(dir.into());
        self
    }
    /// Feeds `bytes` to standard input.
    pub fn stdin(mut self, bytes: Vec<u8>) -> Self {
        self.inner.stdin = Some(bytes);
        self
    }
    /// Kills the process tree after `ms` milliseconds.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.inner.timeout_ms = Some(ms);
        self
    }
    /// Streams output to the log and also captures up to `limit` bytes of each stream.
    pub fn log_and_capture(mut self, limit: u64) -> Self {
        self.inner.output = OutputMode::LogAndCapture;
        self.inner.capture_limit = limit;
        self
    }
    /// Captures up to `limit` bytes of each stream without logging it.
    pub fn capture(mut self, limit: u64) -> Self {
        self.inner.output = OutputMode::Capture;
        self.inner.capture_limit = limit;
        self
    }
    /// Runs the process to its end.
    pub fn run(&self) -> Result<Outcome, Error> {
        wit::run(&self.inner)
    }
}
