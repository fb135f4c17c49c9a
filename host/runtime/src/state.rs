//! The data of one step's `Store`: the capabilities it was granted, and nothing else.

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::limits::MemoryLimiter;
use crate::capabilities::artifacts::ArtifactsHost;
use crate::capabilities::cache::CacheHost;
use crate::capabilities::http::HttpPolicy;
use crate::capabilities::log::LogHost;
use crate::capabilities::process::ProcessHost;
use crate::capabilities::secrets::SecretsHost;

pub struct StepState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub http: WasiHttpCtx,
    pub http_policy: HttpPolicy,
    pub limiter: MemoryLimiter,
    /// Skiff's own interfaces, one state each: the capabilities know nothing of this type.
    pub log: LogHost,
    pub secrets: SecretsHost,
    pub process: ProcessHost,
    pub artifacts: ArtifactsHost,
    pub cache: CacheHost,
    /// Epoch ticks spent running WebAssembly.
    pub cpu_ticks: u64,
    pub cpu_limit_ticks: u64,
    pub cpu_exceeded: bool,
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
