//! The step runtime: wasmtime narrowed to what Skiff needs. One shared
//! [`Runtime`] (engine, linker, compiled-component cache); one fresh `Store`
//! per step run, given only the capabilities the pipeline granted
//! (`capabilities`, one module each). `executor` runs a pipeline's steps on it,
//! with the built-in steps (`builtin`) embedded.

pub mod artifact_store;
pub mod bindings;
pub mod builtin;
pub mod cache;
pub mod capabilities;
pub mod component_store;
pub mod engine;
pub mod executor;
pub mod grants;
pub mod image_store;
pub mod jobs;
pub mod limits;
pub mod state;
pub mod workspace;

// The pipeline language and the process sandbox are crates of their own; the runtime's
// modules name them as `crate::pipeline`, `crate::sandbox` and `crate::mask`.
pub use skiff_pipeline as pipeline;
pub use skiff_pipeline::Usage;
pub use skiff_pipeline::mask;
pub use skiff_sandbox as sandbox;

/// Test components built with the built-in steps (by `build.rs`), for the test suites.
#[doc(hidden)]
pub mod test_guests {
    /// A guest that tries every way out of its sandbox.
    pub const HOSTILE: &str = env!("SKIFF_TEST_GUEST_HOSTILE");
}

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wasi_http::WasiHttpCtx;

use self::artifact_store::ArtifactStore;
use self::bindings::StepPre;
use self::cache::{DiskCache, FileStamp, Lru, Source};
pub use self::engine::EngineOptions;
use self::limits::{Bytes, Limits, MemoryLimiter, Secs};
use self::state::StepState;
use crate::capabilities::artifacts::ArtifactsHost;
use crate::capabilities::cache::CacheHost;
use crate::capabilities::http::{Allowlist, HttpPolicy};
use crate::capabilities::log::{LogHost, LogPipe, LogSink};
use crate::capabilities::process::{ProcessGrant, ProcessHost};
use crate::capabilities::secrets::SecretsHost;
use crate::mask::Masker;

/// A compiled step, ready to instantiate.
pub struct LoadedStep {
    pub digest: [u8; 32],
    pub source: Source,
    pub manifest: bindings::Manifest,
    pre: StepPre<StepState>,
}

impl LoadedStep {
    /// The names of what the component imports and exports (the Wasm OCI artifact config
    /// records them).
    pub fn world(&self) -> (Vec<String>, Vec<String>) {
        let pre = self.pre.instance_pre();
        let ty = pre.component().component_type();
        let engine = pre.engine();
        (
            ty.imports(engine).map(|(n, _)| n.to_string()).collect(),
            ty.exports(engine).map(|(n, _)| n.to_string()).collect(),
        )
    }
}

impl std::fmt::Debug for LoadedStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedStep")
            .field("name", &self.manifest.name)
            .field("digest", &hex::encode(self.digest))
            .finish()
    }
}

/// Everything one step run is given.
#[derive(Debug, Clone, Default)]
pub struct StepInvocation {
    pub run_id: String,
    /// The job instance, for log lines (empty outside a pipeline).
    pub job_id: String,
    pub step_id: String,
    pub inputs: BTreeMap<String, String>,
    pub event_json: String,
    /// The step's workspace on the host: preopened read-write, the only directory it sees.
    pub workspace: PathBuf,
    /// Declared environment variables; nothing of the host's is inherited.
    pub env: BTreeMap<String, String>,
    /// Granted secrets only.
    pub secrets: BTreeMap<String, String>,
    /// Extra values to mask (the run's other secrets).
    pub mask_also: Vec<String>,
    pub allow_hosts: Allowlist,
    pub process: ProcessGrant,
    pub limits: Limits,
    /// Where `artifacts.upload` stores files (under `run_id`), and the app's cache; none refuses
    /// uploads, downloads and the cache.
    pub artifacts: Option<Arc<dyn ArtifactStore>>,
    /// The job instances this job waits for, directly or through others: `artifacts.download`
    /// fetches what they stored.
    pub needs: Vec<String>,
    /// The roots HTTPS certificates are checked against, when an app or the host trusts more
    /// than the Web PKI (see [`crate::capabilities::connect::tls_config`]).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "kebab-case")]
pub enum StepStatus {
    Succeeded,
    /// The step returned an error value.
    Failed(String),
    /// The step was refused before it ran (a capability it asks for is not granted).
    Denied(String),
    TimedOut(String),
    CpuLimit(String),
    MemoryLimit(String),
    LogLimit(String),
    /// The guest trapped (panic, stack overflow, bad instruction).
    Crashed(String),
}

impl StepStatus {
    pub fn succeeded(&self) -> bool {
        matches!(self, StepStatus::Succeeded)
    }
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepStatus::Succeeded => f.write_str("succeeded"),
            StepStatus::Failed(m)
            | StepStatus::Denied(m)
            | StepStatus::TimedOut(m)
            | StepStatus::CpuLimit(m)
            | StepStatus::MemoryLimit(m)
            | StepStatus::LogLimit(m)
            | StepStatus::Crashed(m) => f.write_str(m),
        }
    }
}

/// The result of one step run.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    #[serde(flatten)]
    pub status: StepStatus,
    pub outputs: BTreeMap<String, String>,
    pub summary: Option<String>,
    pub usage: Usage,
}

/// Why bytes are not a step Skiff can run: callers tell a file that is not a component at all
/// from a component of another world (`skiff step publish`, `skiff validate --plan`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// Not a WebAssembly component (or not one this engine compiles).
    #[error("this is not a valid step component: {0}")]
    NotAComponent(String),
    /// A component that imports what Skiff does not provide.
    #[error(
        "the component imports something Skiff does not provide (is it built for wasm32-wasip2 against skiff:step@0.1.0?): {0}"
    )]
    UnknownImports(String),
    /// A component of another world.
    #[error("the component does not export the `skiff:step/step` world (`describe` and `run`): {0}")]
    NotAStep(String),
    /// Its `describe` failed or did not return.
    #[error("{0}")]
    Describe(String),
    /// The component file cannot be read.
    #[error("cannot read step component {0}")]
    Read(String),
}

/// How many compiled components a runtime keeps in memory by default (each with its
/// `InstancePre`, a few MiB of code at most); past it the least recently used is dropped and
/// reloaded from the on-disk cache when it runs again.
pub const MEMORY_CAP: usize = 64;

/// The shared runtime: one engine, one linker, compiled components cached.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StepState>,
    options: EngineOptions,
    disk: DiskCache,
    components: component_store::ComponentStore,
    /// Loaded components by digest: a step that ran before starts with a map lookup.
    loaded: Mutex<Lru<[u8; 32], Arc<LoadedStep>>>,
    /// The digest of each component file read, by path, with the stamp it had then: a file
    /// left alone is not read and hashed again for every step.
    files: Mutex<Lru<PathBuf, FileDigest>>,
    /// The digest of bytes compiled into the binary, by address and length: they never change.
    statics: Mutex<HashMap<(usize, usize), [u8; 32]>>,
}

#[derive(Debug, Clone)]
struct FileDigest {
    stamp: FileStamp,
    hashed_at: std::time::SystemTime,
    digest: [u8; 32],
}

/// wasmtime's error as an anyhow error for callers.
pub fn to_anyhow(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}

impl Runtime {
    pub fn new(options: EngineOptions, cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let engine = engine::build(&options).map_err(to_anyhow)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(to_anyhow)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(to_anyhow)?;
        // Each of Skiff's interfaces is added with the part of the store data it owns.
        bindings::skiff::step::types::add_to_linker::<_, wasmtime::component::HasSelf<StepState>>(&mut linker, |s| s)
            .map_err(to_anyhow)?;
        LogHost::add_to_linker(&mut linker, |s: &mut StepState| &mut s.log).map_err(to_anyhow)?;
        SecretsHost::add_to_linker(&mut linker, |s: &mut StepState| &mut s.secrets).map_err(to_anyhow)?;
        ProcessHost::add_to_linker(&mut linker, |s: &mut StepState| &mut s.process).map_err(to_anyhow)?;
        ArtifactsHost::add_to_linker(&mut linker, |s: &mut StepState| &mut s.artifacts).map_err(to_anyhow)?;
        CacheHost::add_to_linker(&mut linker, |s: &mut StepState| &mut s.cache).map_err(to_anyhow)?;
        let dir = cache_dir.unwrap_or_else(cache::default_dir);
        let components = component_store::ComponentStore::new(dir.join("components"));
        let disk = DiskCache::new(&engine, dir);
        Ok(Self {
            engine,
            linker,
            options,
            disk,
            components,
            loaded: Mutex::new(Lru::new(MEMORY_CAP)),
            files: Mutex::new(Lru::new(MEMORY_CAP * 4)),
            statics: Mutex::new(HashMap::new()),
        })
    }

    /// Keeps at most `cap` compiled components in memory (default [`MEMORY_CAP`]).
    pub fn with_memory_cap(self, cap: usize) -> Self {
        Self { loaded: Mutex::new(Lru::new(cap)), files: Mutex::new(Lru::new(cap.saturating_mul(4))), ..self }
    }

    /// How many compiled components are held in memory now.
    pub fn loaded_in_memory(&self) -> usize {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    pub fn cache_dir(&self) -> &std::path::Path {
        self.disk.dir()
    }

    /// The store of shared components this runtime runs by digest (`CACHE_DIR/components`).
    pub fn components(&self) -> &component_store::ComponentStore {
        &self.components
    }

    /// Compiles (or loads from cache) a component and reads its manifest.
    pub async fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedStep>, LoadError> {
        let digest = cache::sha256(bytes);
        if let Some(step) = self.in_memory(&digest) {
            return Ok(step);
        }
        let bytes = bytes.to_vec();
        self.load_known(digest, move || Ok(bytes)).await
    }

    /// [`Runtime::load`] for bytes compiled into the binary (the built-in steps): hashed once
    /// per runtime, and copied only if they must be compiled.
    pub async fn load_static(&self, bytes: &'static [u8]) -> Result<Arc<LoadedStep>, LoadError> {
        let key = (bytes.as_ptr() as usize, bytes.len());
        let known = self.statics.lock().unwrap_or_else(|e| e.into_inner()).get(&key).copied();
        let digest = known.unwrap_or_else(|| {
            let d = cache::sha256(bytes);
            self.statics.lock().unwrap_or_else(|e| e.into_inner()).insert(key, d);
            d
        });
        self.load_known(digest, move || Ok(bytes.to_vec())).await
    }

    /// The component in file `path`: read and hashed again only when the file changed (its size,
    /// times or inode), or when it had been written less than [`FileStamp::SETTLED`] before it
    /// was last hashed; otherwise the step it was is found by digest in memory.
    pub async fn load_file(&self, path: &Path) -> Result<Arc<LoadedStep>, LoadError> {
        let read_err = |e: std::io::Error| LoadError::Read(format!("{}: {e}", path.display()));
        let stamp = FileStamp::of(&std::fs::metadata(path).map_err(read_err)?);
        let key = path.to_path_buf();
        let known = self.files.lock().unwrap_or_else(|e| e.into_inner()).get(&key);
        if let Some(f) = known
            && f.stamp == stamp
            && f.stamp.settled_at(f.hashed_at)
            && let Some(step) = self.in_memory(&f.digest)
        {
            return Ok(step);
        }
        let hashed_at = std::time::SystemTime::now();
        let bytes = std::fs::read(path).map_err(read_err)?;
        let digest = cache::sha256(&bytes);
        self.files.lock().unwrap_or_else(|e| e.into_inner()).insert(key, FileDigest { stamp, hashed_at, digest });
        self.load_known(digest, move || Ok(bytes)).await
    }

    fn in_memory(&self, digest: &[u8; 32]) -> Option<Arc<LoadedStep>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(digest)
    }

    /// The shared component with this digest, from memory, the compiled cache, or the component
    /// store (its bytes checked against the digest before they are compiled).
    pub async fn load_digest(&self, digest: &pipeline::component_ref::Digest) -> Result<Arc<LoadedStep>, LoadError> {
        let store = self.components.clone();
        let d = digest.clone();
        self.load_known(digest.bytes(), move || store.read(&d).map_err(|e| LoadError::NotAComponent(e.to_string())))
            .await
    }

    async fn load_known(
        &self,
        digest: [u8; 32],
        bytes: impl FnOnce() -> Result<Vec<u8>, LoadError> + Send + 'static,
    ) -> Result<Arc<LoadedStep>, LoadError> {
        if let Some(step) = self.in_memory(&digest) {
            return Ok(step);
        }
        let (component, source) = {
            let engine = self.engine.clone();
            let disk = self.disk.clone();
            tokio::task::spawn_blocking(move || disk.load_or_compile(&engine, &digest, bytes))
                .await
                .map_err(|e| LoadError::NotAComponent(e.to_string()))??
        };
        let pre = self.linker.instantiate_pre(&component).map_err(|e| LoadError::UnknownImports(format!("{e:?}")))?;
        let pre = StepPre::new(pre).map_err(|e| LoadError::NotAStep(format!("{e:?}")))?;
        let manifest = self.describe(&pre).await.map_err(|e| LoadError::Describe(format!("{e:#}")))?;
        let step = Arc::new(LoadedStep { digest, source, manifest, pre });
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(digest, step.clone());
        Ok(step)
    }

    async fn describe(&self, pre: &StepPre<StepState>) -> anyhow::Result<bindings::Manifest> {
        let dir = tempfile_dir()?;
        let inv = StepInvocation {
            workspace: dir.clone(),
            limits: Limits { timeout: Duration::from_secs(10), ..Limits::default() },
            ..Default::default()
        };
        let pipe = LogPipe::new(Masker::default(), Arc::new(|_| {}), 1 << 20, "", "describe");
        let mut store = self.store(&inv, pipe)?;
        let res = tokio::time::timeout(inv.limits.timeout, async {
            let step = pre.instantiate_async(&mut store).await?;
            step.call_describe(&mut store).await
        })
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        match res {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => anyhow::bail!("the step's `describe` failed: {e:?}"),
            Err(_) => anyhow::bail!("the step's `describe` did not return within 10s"),
        }
    }

    fn store(&self, inv: &StepInvocation, log: Arc<LogPipe>) -> anyhow::Result<Store<StepState>> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(log.stream(0))
            .stderr(log.stream(1))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .arg(&inv.step_id);
        for (k, v) in &inv.env {
            wasi.env(k, v);
        }
        wasi.preopened_dir(&inv.workspace, ".", FsPerms::ReadWrite)
            .and_then(|w| w.preopened_dir(&inv.workspace, "/workspace", FsPerms::ReadWrite))
            .map_err(|e| anyhow::anyhow!("cannot open workspace {}: {e:?}", inv.workspace.display()))?;
        let traffic = Arc::new(AtomicU64::new(0));
        let cpu_limit_ticks = (inv.limits.cpu.as_millis() / engine::TICK.as_millis()).max(1) as u64;
        let state = StepState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            http_policy: HttpPolicy {
                allow: inv.allow_hosts.clone(),
                tls: inv.tls.clone().unwrap_or_else(crate::capabilities::connect::web_pki),
                log: log.clone(),
                traffic: traffic.clone(),
            },
            // A pool of small reservations holds no memory past its reservation: the step's
            // limit says so, rather than a failed growth the guest reports as a crash.
            limiter: MemoryLimiter::new(inv.limits.memory.min(self.options.memory_reservation.unwrap_or(u64::MAX))),
            log: LogHost { log: log.clone() },
            secrets: SecretsHost { secrets: inv.secrets.clone(), log: log.clone() },
            process: ProcessHost {
                grant: inv.process.clone(),
                allow: inv.allow_hosts.clone(),
                workspace: inv.workspace.clone(),
                deadline: Instant::now() + inv.limits.timeout,
                traffic,
                log: log.clone(),
                usage: Default::default(),
            },
            artifacts: ArtifactsHost {
                store: inv.artifacts.clone(),
                run_id: inv.run_id.clone(),
                job_id: inv.job_id.clone(),
                step_id: inv.step_id.clone(),
                needs: inv.needs.clone(),
                workspace: inv.workspace.clone(),
                log: log.clone(),
            },
            cache: CacheHost {
                store: inv.artifacts.clone(),
                event_json: inv.event_json.clone(),
                workspace: inv.workspace.clone(),
                log,
            },
            cpu_ticks: 0,
            cpu_limit_ticks,
            cpu_exceeded: false,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        if self.options.fuel {
            store.set_fuel(inv.limits.fuel.unwrap_or(u64::MAX)).map_err(to_anyhow)?;
            store.fuel_async_yield_interval(Some(100_000)).map_err(to_anyhow)?;
        } else {
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|mut ctx| {
                let s = ctx.data_mut();
                s.cpu_ticks += 1;
                if s.cpu_ticks > s.cpu_limit_ticks {
                    s.cpu_exceeded = true;
                    return Ok(UpdateDeadline::Interrupt);
                }
                Ok(UpdateDeadline::Yield(1))
            });
        }
        Ok(store)
    }

    /// Checks what the step asks for against what it was granted ([`grants::check`]).
    pub fn check_grants(&self, step: &LoadedStep, inv: &StepInvocation) -> Result<(), grants::GrantError> {
        grants::check(&step.manifest.name, &step.manifest.capabilities, &inv.allow_hosts, &inv.process, &inv.inputs)
    }

    /// Runs a step once in a fresh store. Never panics on guest behaviour: every
    /// way a step can end becomes a [`StepStatus`].
    pub async fn run(&self, step: &LoadedStep, inv: StepInvocation, sink: LogSink) -> StepReport {
        let started = Instant::now();
        let masker = Masker::new(inv.secrets.values().chain(inv.mask_also.iter()));
        let log = LogPipe::new(masker, sink, inv.limits.log_bytes, &inv.job_id, &inv.step_id);
        let mut usage = Usage::default();
        let report = |status, outputs, log: &LogPipe, usage: Usage| StepReport {
            status,
            outputs,
            summary: log.summary(),
            usage: Usage { wall_ms: started.elapsed().as_millis() as u64, log_bytes: log.bytes(), ..usage },
        };
        if let Err(e) = self.check_grants(step, &inv) {
            let msg = e.to_string();
            log.system(msg.clone());
            return report(StepStatus::Denied(msg), BTreeMap::new(), &log, usage);
        }
        let mut store = match self.store(&inv, log.clone()) {
            Ok(s) => s,
            Err(e) => return report(StepStatus::Failed(e.to_string()), BTreeMap::new(), &log, usage),
        };
        let invocation = bindings::Invocation {
            run_id: inv.run_id.clone(),
            step_id: inv.step_id.clone(),
            inputs: inv.inputs.iter().map(|(k, v)| bindings::Pair { key: k.clone(), value: v.clone() }).collect(),
            event_json: if inv.event_json.is_empty() { "{}".into() } else { inv.event_json.clone() },
        };
        let timeout = inv.limits.timeout;
        let result = tokio::time::timeout(timeout, async {
            let instance = step.pre.instantiate_async(&mut store).await?;
            instance.call_run(&mut store, &invocation).await
        })
        .await;
        log.flush();
        let data = store.data();
        // The component's own time and memory, and its processes' whole trees beside it.
        let processes = &data.process.usage;
        usage.cpu_ms = data.cpu_ticks * engine::TICK.as_millis() as u64 + processes.cpu_ms.load(Ordering::Relaxed);
        usage.peak_memory_bytes = data.limiter.peak + processes.peak_memory_bytes.load(Ordering::Relaxed);
        usage.egress_bytes = data.process.traffic.load(Ordering::Relaxed);
        let limits = inv.limits;
        let (status, outputs) = match result {
            Err(_) => (StepStatus::TimedOut(format!("timed out after {}", Secs(timeout))), BTreeMap::new()),
            Ok(Ok(Ok(out))) => (StepStatus::Succeeded, out.outputs.into_iter().map(|p| (p.key, p.value)).collect()),
            Ok(Ok(Err(e))) => {
                let status = match e {
                    bindings::StepError::InvalidInput(m) => StepStatus::Failed(format!("invalid input: {m}")),
                    bindings::StepError::Failed(m) => StepStatus::Failed(m),
                    bindings::StepError::Denied(m) => StepStatus::Denied(m),
                };
                (status, BTreeMap::new())
            }
            Ok(Err(trap)) => {
                let status = if log.exceeded() {
                    StepStatus::LogLimit(format!("log limit {} reached", Bytes(limits.log_bytes)))
                } else if data.limiter.exceeded {
                    StepStatus::MemoryLimit(format!("memory limit {} exceeded", Bytes(data.limiter.limit)))
                } else if data.cpu_exceeded {
                    StepStatus::CpuLimit(format!("CPU limit {} exceeded", Secs(limits.cpu)))
                } else {
                    match trap.downcast_ref::<Trap>() {
                        Some(Trap::OutOfFuel) => StepStatus::CpuLimit(format!(
                            "fuel budget of {} instructions exhausted",
                            limits.fuel.unwrap_or_default()
                        )),
                        Some(Trap::StackOverflow) => {
                            StepStatus::Crashed("stack overflow: the step recursed too deeply".into())
                        }
                        // Rust's shadow stack lives in linear memory and wraps below zero.
                        Some(Trap::MemoryOutOfBounds) => StepStatus::Crashed(
                            "the step crashed: out-of-bounds memory access (unbounded recursion overflows the stack this way)".into(),
                        ),
                        Some(t) => StepStatus::Crashed(format!("the step crashed: {t}")),
                        None => StepStatus::Crashed(format!("the step crashed: {}", first_line(&trap))),
                    }
                };
                (status, BTreeMap::new())
            }
        };
        // A process tree the kernel (memory) or the host (CPU) stopped at a limit: that is why the
        // step failed, whatever the component made of its end.
        let status = match (status, processes.limit()) {
            (StepStatus::Failed(m), Some(limit @ sandbox::Limit::Memory(_))) => {
                StepStatus::MemoryLimit(format!("{limit} by its processes ({m})"))
            }
            (StepStatus::Failed(m), Some(limit @ sandbox::Limit::Cpu(_))) => {
                StepStatus::CpuLimit(format!("{limit} by its processes ({m})"))
            }
            (status, _) => status,
        };
        if !status.succeeded() {
            log.system(format!("step ended: {status}"));
        }
        report(status, outputs, &log, usage)
    }
}

fn first_line(e: &wasmtime::Error) -> String {
    let s = format!("{e}");
    s.lines().next().unwrap_or("").to_string()
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "skiff-describe-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bytes` grown to `len` with a custom section, which changes nothing the component does.
    fn padded(bytes: &[u8], len: usize) -> Vec<u8> {
        fn leb(mut n: usize, out: &mut Vec<u8>) {
            loop {
                let b = (n & 0x7f) as u8;
                n >>= 7;
                out.push(if n == 0 { b } else { b | 0x80 });
                if n == 0 {
                    break;
                }
            }
        }
        let mut out = bytes.to_vec();
        // Section id 0, a 5-byte size, a 1-byte name "p", then zeros.
        let payload = len - bytes.len() - 1 - 5;
        out.push(0);
        let mut size = Vec::new();
        leb(payload, &mut size);
        while size.len() < 5 {
            // A non-minimal LEB128 of the same value, so the header is always 5 bytes.
            let last = size.len() - 1;
            size[last] |= 0x80;
            size.push(0);
        }
        out.extend(size);
        out.extend([1, b'p']);
        out.resize(len, 0);
        out
    }

    fn runtime() -> Runtime {
        // The compiled artifacts outlive the test: a debug build compiles slowly.
        let cache = std::env::temp_dir().join("skiff-runtime-unit-cache");
        Runtime::new(EngineOptions { pool_size: 4, ..Default::default() }, Some(cache)).unwrap()
    }

    fn hostile() -> Vec<u8> {
        std::fs::read(test_guests::HOSTILE).unwrap()
    }

    /// A pool of 20,000 slots (40,000 linear memories) of 64 MiB reservations: with wasmtime's
    /// 4 GiB each it would need 160 TiB of address space, more than x86-64 gives a process.
    /// Its steps run, and one that allocates without end meets the reservation as its memory
    /// limit, reported as such.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pool_of_20000_small_reservations_runs_steps_and_caps_memory_at_the_reservation() {
        let cache = std::env::temp_dir().join("skiff-runtime-unit-cache");
        let options = EngineOptions { pool_size: 20_000, memory_reservation: Some(64 << 20), ..Default::default() };
        let rt = Runtime::new(options, Some(cache)).unwrap();
        let step = rt.load(&hostile()).await.unwrap();
        let ws = tempfile::tempdir().unwrap();
        let inv = |attack: &str| StepInvocation {
            run_id: "t".into(),
            step_id: "s".into(),
            inputs: [("attack".to_string(), attack.to_string())].into(),
            workspace: ws.path().to_path_buf(),
            ..Default::default()
        };
        let ok = rt.run(&step, inv("noop"), Arc::new(|_| {})).await;
        assert!(ok.status.succeeded(), "{:?}", ok.status);
        let hog = rt.run(&step, inv("alloc"), Arc::new(|_| {})).await;
        assert_eq!(hog.status, StepStatus::MemoryLimit("memory limit 64 MiB exceeded".into()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_component_file_never_runs_stale_code() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let (diag, hostile) = (builtin::get("diag").unwrap(), hostile());
        let len = diag.len().max(hostile.len()) + 64;
        let (a, b) = (padded(diag, len), padded(&hostile, len));
        let f = dir.path().join("step.wasm");
        std::fs::write(&f, &a).unwrap();
        let first = rt.load_file(&f).await.unwrap();
        assert_eq!(first.manifest.name, "diag");
        assert!(Arc::ptr_eq(&first, &rt.load_file(&f).await.unwrap()), "the second use is a lookup");
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();

        // Same length, same modification time: only the contents (and ctime) differ.
        std::fs::write(&f, &b).unwrap();
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(mtime).unwrap();
        let second = rt.load_file(&f).await.unwrap();
        assert_ne!(second.manifest.name, "diag", "the new contents run");
        assert_eq!(second.digest, cache::sha256(&b));

        // Replaced by another file (a new inode), back to the first contents.
        let tmp = dir.path().join("new.wasm");
        std::fs::write(&tmp, &a).unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert_eq!(rt.load_file(&f).await.unwrap().manifest.name, "diag");

        // A file that settled is trusted by its stamp; once rewritten it is read again.
        let settled = dir.path().join("settled.wasm");
        std::fs::write(&settled, &b).unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options().write(true).open(&settled).unwrap().set_modified(old).unwrap();
        rt.load_file(&settled).await.unwrap();
        std::fs::write(&settled, &a).unwrap();
        assert_eq!(rt.load_file(&settled).await.unwrap().manifest.name, "diag");
        std::fs::remove_file(&settled).unwrap();
        let gone = rt.load_file(&settled).await.unwrap_err().to_string();
        assert!(gone.contains("cannot read step component"), "{gone}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn components_in_memory_stay_under_the_cap() {
        let rt = runtime().with_memory_cap(2);
        let diag = builtin::get("diag").unwrap();
        let hostile = hostile();
        let len = diag.len().max(hostile.len()) + 64;
        // Four distinct components (distinct digests), two programs.
        let steps = [padded(diag, len), padded(&hostile, len), padded(diag, len + 1), padded(&hostile, len + 1)];
        for (i, bytes) in steps.iter().enumerate() {
            rt.load(bytes).await.unwrap();
            assert!(rt.loaded_in_memory() <= 2, "after {} loads: {}", i + 1, rt.loaded_in_memory());
        }
        assert_eq!(rt.loaded_in_memory(), 2);
        // The dropped one still loads (from the on-disk cache), and the built-ins by address.
        let again = rt.load(&steps[0]).await.unwrap();
        assert_eq!(again.source, Source::Disk);
        assert_eq!(again.manifest.name, "diag");
        let a = rt.load_static(diag).await.unwrap();
        assert!(Arc::ptr_eq(&a, &rt.load_static(diag).await.unwrap()));
        assert_eq!(rt.loaded_in_memory(), 2);
    }
}
