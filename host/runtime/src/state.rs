//! The data of one step's `Store`: the capabilities it was granted, and nothing else.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::limits::MemoryLimiter;
use crate::capabilities::http::HttpPolicy;
use crate::capabilities::log::LogPipe;
use crate::capabilities::process::ProcessGrant;

pub struct StepState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub http: WasiHttpCtx,
    pub http_policy: HttpPolicy,
    pub limiter: MemoryLimiter,
    pub log: Arc<LogPipe>,
    pub secrets: BTreeMap<String, String>,
    pub process: ProcessGrant,
    pub workspace: PathBuf,
    /// The run's artifact store, and the names an artifact is stored under.
    pub artifacts: Option<Arc<dyn crate::artifact_store::ArtifactStore>>,
    pub run_id: String,
    pub step_id: String,
    /// Epoch ticks spent running WebAssembly.
    pub cpu_ticks: u64,
    pub cpu_limit_ticks: u64,
    pub cpu_exceeded: bool,
    pub traffic: Arc<AtomicU64>,
    /// When the step's wall-clock time runs out.
    pub deadline: std::time::Instant,
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for StepState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.http_policy }
    }
}

impl crate::bindings::skiff::step::types::Host for StepState {}
