//! The `process` interface: native programs in the bubblewrap sandbox
//! (`crate::sandbox`), for steps granted `process`. Output streams into the
//! step log, masked like everything else, and counts against its log limit.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wasmtime::component::{HasSelf, Linker};

use super::egress::{self, Destinations, EgressProxy};
use super::http::Allowlist;
use super::log::{Level, LogPipe};
use crate::bindings::skiff::step::process as wit;
use crate::sandbox::{self, Capture, Egress, Exit, SandboxError, SandboxSpec, Stream};

/// What a step may do with processes.
#[derive(Debug, Clone, Default)]
pub struct ProcessGrant {
    /// The pipeline granted `process`.
    pub allowed: bool,
    /// Processes may use the network: through the host's egress proxy, to any public host or,
    /// when the step has `hosts`, to those (see [`super::egress`]).
    pub network: bool,
    /// The host runs processes without bubblewrap (`--unsandboxed-processes`); logged on every run.
    pub unsandboxed: bool,
    /// The job's image, home, tool cache and environment defaults (see [`crate::jobs`]).
    pub setup: crate::jobs::ProcessSetup,
    /// Limits of each process tree: the step's memory and CPU, the host's process count.
    pub limits: sandbox::ProcessLimits,
}

/// What the step's processes used, summed over them (CPU) or the largest (memory).
#[derive(Debug, Default)]
pub struct ProcessUsage {
    pub cpu_ms: AtomicU64,
    pub peak_memory_bytes: AtomicU64,
    /// The last limit that stopped one of its process trees.
    limit: std::sync::Mutex<Option<sandbox::Limit>>,
}

impl ProcessUsage {
    /// The last limit that stopped one of the step's process trees.
    pub fn limit(&self) -> Option<sandbox::Limit> {
        *self.limit.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the `process` interface of one step holds.
pub struct ProcessHost {
    /// What the step may do with processes.
    pub grant: ProcessGrant,
    /// The hosts granted to the step: its processes' network reaches only these, when any.
    pub allow: Allowlist,
    /// The step's workspace, bound into the sandbox.
    pub workspace: PathBuf,
    /// When the step's time is up: no process outlives it.
    pub deadline: Instant,
    /// Bytes the step sent and received, processes included.
    pub traffic: Arc<AtomicU64>,
    /// The step's log: processes' output goes there.
    pub log: Arc<LogPipe>,
    /// What its processes used.
    pub usage: Arc<ProcessUsage>,
}

impl ProcessHost {
    /// Adds the interface to a linker whose store data holds a `ProcessHost`.
    pub fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<Self>>(linker, get)
    }
}

impl wit::Host for ProcessHost {
    async fn run(&mut self, cmd: wit::Command) -> wasmtime::Result<Result<wit::Outcome, wit::Error>> {
        if !self.grant.allowed {
            let msg = format!(
                "the step tried to run `{}`, but it was not granted `process`: add `permissions: {{ process: true }}` to the step",
                cmd.program
            );
            self.log.system(msg.clone());
            return Ok(Err(wit::Error::Denied(msg)));
        }
        // A process may run for what is left of the step's time, no longer.
        let left = self.deadline.saturating_duration_since(Instant::now());
        let timeout = cmd.timeout_ms.map(Duration::from_millis).map_or(left, |t| t.min(left));
        let mut spec = SandboxSpec::new(cmd.program.clone(), self.workspace.clone());
        spec.args = cmd.args;
        spec.env =
            crate::jobs::merge_env(&self.grant.setup.env, cmd.env.into_iter().map(|p| (p.key, p.value)).collect());
        spec.image = self.grant.setup.image.clone();
        spec.binds = self.grant.setup.binds.clone();
        spec.limits = self.grant.limits.clone();
        spec.cwd = cmd.cwd;
        spec.stdin = cmd.stdin;
        spec.timeout = timeout;
        spec.unsandboxed = self.grant.unsandboxed;
        // The network of a process is the host's egress proxy, with the step's allowlist when it
        // has one (hosts granted to a step apply to its processes too), else any public host.
        let allow = &self.allow;
        let destinations = match (self.grant.network, allow.is_empty()) {
            (true, true) => Some(Destinations::Public),
            (_, false) => Some(Destinations::Only(allow.clone())),
            (false, true) => None,
        };
        let _proxy = match destinations {
            _ if spec.unsandboxed => {
                spec.network = self.grant.network;
                None
            }
            None => None,
            Some(to) => {
                let log = self.log.clone();
                let started = egress::relay_program().and_then(|relay| {
                    EgressProxy::start(to, self.traffic.clone(), Arc::new(move |m| log.system(m)))
                        .map(|p| (relay, p))
                        .map_err(|e| format!("cannot start the egress proxy for processes: {e}"))
                });
                match started {
                    Ok((relay, proxy)) => {
                        spec.network = true;
                        spec.egress = Some(Egress { socket: proxy.socket().to_path_buf(), relay });
                        Some(proxy)
                    }
                    Err(msg) => {
                        self.log.system(format!("cannot run `{}`: {msg}", cmd.program));
                        return Ok(Err(wit::Error::Unavailable(msg)));
                    }
                }
            }
        };
        let capture = Capture {
            log: !matches!(cmd.output, wit::OutputMode::Capture),
            limit: match cmd.output {
                wit::OutputMode::Log => 0,
                _ => cmd.capture_limit,
            },
        };
        let log = self.log.clone();
        let on_line = move |stream: Stream, line: &str| {
            let level = if stream == Stream::Stdout { Level::Stdout } else { Level::Stderr };
            // Past the log limit the step is stopped by its next host call; drop the rest.
            let _ = log.write(level, line);
        };
        let cancel = CancellationToken::new();
        let _cancel_on_drop = cancel.clone().drop_guard();
        let outcome = match sandbox::run(&spec, capture, cancel, &on_line).await {
            Ok(o) => o,
            Err(e) => {
                self.log.system(format!("cannot run `{}`: {e}", cmd.program));
                return Ok(Err(match e {
                    SandboxError::Unavailable(m) => wit::Error::Unavailable(m),
                    SandboxError::Invalid(m) => wit::Error::Invalid(m),
                    SandboxError::SpawnFailed(m) => wit::Error::SpawnFailed(m),
                }));
            }
        };
        if self.log.exceeded() {
            return Err(wasmtime::format_err!("log limit reached"));
        }
        let exit = match outcome.exit {
            Exit::Code(c) => wit::Exit::Code(c),
            Exit::Signal(s) => wit::Exit::Signal(s),
            Exit::TimedOut | Exit::Cancelled => {
                self.log.system(format!("`{}` was killed after {:?}", cmd.program, timeout));
                wit::Exit::TimedOut
            }
        };
        if let Some(cpu) = outcome.usage.cpu {
            self.usage.cpu_ms.fetch_add(cpu.as_millis() as u64, Ordering::Relaxed);
        }
        if let Some(peak) = outcome.usage.peak_memory_bytes {
            self.usage.peak_memory_bytes.fetch_max(peak, Ordering::Relaxed);
        }
        if let Some(limit) = outcome.limit_exceeded {
            self.log.system(format!("`{}` was killed: {limit}", cmd.program));
            *self.usage.limit.lock().unwrap_or_else(|e| e.into_inner()) = Some(limit);
        }
        if outcome.output_limit_reached {
            self.log.system(format!("`{}` was killed: it wrote more output than the sandbox allows", cmd.program));
        }
        Ok(Ok(wit::Outcome {
            exit,
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            truncated: outcome.truncated,
            duration_ms: outcome.duration.as_millis() as u64,
        }))
    }
}
