//! The `log` interface and the step's stdout/stderr: every line masked, counted
//! against the step's log limit, and handed to the sink that shows or stores it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::bindings::skiff::step::log as wit;
use crate::mask::Masker;

pub use skiff_pipeline::{Level, LogLine};

/// Receives a step's log lines as they are written.
pub type LogSink = Arc<dyn Fn(LogLine) + Send + Sync>;

/// Longest line kept whole; a longer one is cut (masking still sees it whole first).
const MAX_LINE: usize = 64 * 1024;

/// The step's log: masks, counts and forwards lines. Shared by the `log`
/// interface and the stdout/stderr streams.
pub struct LogPipe {
    job_id: String,
    step_id: String,
    masker: Masker,
    sink: LogSink,
    limit: u64,
    bytes: AtomicU64,
    exceeded: AtomicBool,
    partial: Mutex<[Vec<u8>; 2]>,
    summary: Mutex<String>,
}

impl LogPipe {
    /// The log of step `step_id` of job `job_id` (empty outside a pipeline).
    pub fn new(masker: Masker, sink: LogSink, limit: u64, job_id: &str, step_id: &str) -> Arc<Self> {
        Arc::new(Self {
            job_id: job_id.to_string(),
            step_id: step_id.to_string(),
            masker,
            sink,
            limit,
            bytes: AtomicU64::new(0),
            exceeded: AtomicBool::new(false),
            partial: Mutex::new([Vec::new(), Vec::new()]),
            summary: Mutex::new(String::new()),
        })
    }

    fn line(&self, level: Level, text: String) -> LogLine {
        LogLine { job_id: self.job_id.clone(), step_id: self.step_id.clone(), level, text }
    }

    /// True once the step wrote more than its limit.
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// A line from the host about the step; not counted against the step's limit.
    pub fn system(&self, text: impl Into<String>) {
        let text = text.into();
        (self.sink)(self.line(Level::System, self.masker.mask(&text).into_owned()));
    }

    /// Counts `n` bytes; false (and one notice) once the limit is passed.
    fn charge(&self, n: usize) -> bool {
        if self.exceeded() {
            return false;
        }
        let total = self.bytes.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total > self.limit {
            if !self.exceeded.swap(true, Ordering::Relaxed) {
                self.system(format!("log limit {} reached: the step is stopped", crate::limits::Bytes(self.limit)));
            }
            return false;
        }
        true
    }

    /// Writes one record from the guest. Err when the limit is passed.
    pub fn write(&self, level: Level, text: &str) -> Result<(), LogLimitReached> {
        for line in text.split('\n') {
            if !self.charge(line.len() + 1) {
                return Err(LogLimitReached);
            }
            let masked = self.masker.mask(line);
            let mut text = masked.into_owned();
            if text.len() > MAX_LINE {
                let mut cut = MAX_LINE;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push_str(" …[line cut]");
            }
            (self.sink)(self.line(level, text));
        }
        Ok(())
    }

    /// Bytes from stdout (0) or stderr (1): forwarded a whole line at a time,
    /// so a secret split across writes is still masked whole.
    fn write_stream(&self, which: usize, bytes: &[u8]) -> Result<(), LogLimitReached> {
        let level = if which == 0 { Level::Stdout } else { Level::Stderr };
        let mut lines = Vec::new();
        {
            let mut partial = self.partial.lock().expect("log buffer poisoned");
            let buf = &mut partial[which];
            buf.extend_from_slice(bytes);
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                lines.push(line);
            }
            if buf.len() > MAX_LINE {
                lines.push(std::mem::take(buf));
            }
        }
        for line in lines {
            let text = String::from_utf8_lossy(&line);
            self.write(level, text.trim_end_matches(['\n', '\r']))?;
        }
        Ok(())
    }

    /// Emits what is left in the stdout/stderr buffers when the step ends.
    pub fn flush(&self) {
        let rest = {
            let mut partial = self.partial.lock().expect("log buffer poisoned");
            [std::mem::take(&mut partial[0]), std::mem::take(&mut partial[1])]
        };
        for (i, buf) in rest.iter().enumerate() {
            if !buf.is_empty() {
                let level = if i == 0 { Level::Stdout } else { Level::Stderr };
                let _ = self.write(level, &String::from_utf8_lossy(buf));
            }
        }
    }

    pub fn add_summary(&self, markdown: &str) -> Result<(), LogLimitReached> {
        if !self.charge(markdown.len()) {
            return Err(LogLimitReached);
        }
        let mut s = self.summary.lock().expect("summary poisoned");
        s.push_str(&self.masker.mask(markdown));
        s.push('\n');
        Ok(())
    }

    pub fn summary(&self) -> Option<String> {
        let s = self.summary.lock().expect("summary poisoned");
        (!s.is_empty()).then(|| s.clone())
    }

    /// The step's stdout (0) or stderr (1) as a WASI output stream.
    pub fn stream(self: &Arc<Self>, which: usize) -> GuestOutput {
        GuestOutput { pipe: self.clone(), which }
    }
}

/// The step wrote more log than its limit allows.
#[derive(Debug)]
pub struct LogLimitReached;

impl std::fmt::Display for LogLimitReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("log limit reached")
    }
}

impl std::error::Error for LogLimitReached {}

/// stdout or stderr of a step.
#[derive(Clone)]
pub struct GuestOutput {
    pipe: Arc<LogPipe>,
    which: usize,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.pipe.write_stream(self.which, &bytes).map_err(|e| StreamError::trap(&e.to_string()))
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        if self.pipe.exceeded() { Err(StreamError::trap("log limit reached")) } else { Ok(64 * 1024) }
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.pipe.write_stream(self.which, buf).map(|()| buf.len()).map_err(std::io::Error::other))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What the `log` interface of one step holds: its log.
pub struct LogHost {
    /// The step's log.
    pub log: Arc<LogPipe>,
}

impl LogHost {
    /// Adds the interface to a linker whose store data holds a `LogHost`.
    pub fn add_to_linker<T: 'static>(
        linker: &mut wasmtime::component::Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, wasmtime::component::HasSelf<Self>>(linker, get)
    }
}

impl wit::Host for LogHost {
    fn write(&mut self, level: wit::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            wit::Level::Trace => Level::Trace,
            wit::Level::Debug => Level::Debug,
            wit::Level::Info => Level::Info,
            wit::Level::Warn => Level::Warn,
            wit::Level::Error => Level::Error,
        };
        self.log.write(level, &message).map_err(|e| wasmtime::format_err!("{e}"))
    }

    fn summary(&mut self, markdown: String) -> wasmtime::Result<()> {
        self.log.add_summary(&markdown).map_err(|e| wasmtime::format_err!("{e}"))
    }
}
