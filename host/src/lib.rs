//! The Skiff host: the `skiff` binary's library. It narrows wasmtime to the
//! step runtime (`runtime`), grants capabilities one module each
//! (`capabilities`), and carries the built-in steps (`builtin`). `edge` runs
//! the Spin edge master locally; `serve` is the host (and built-in master).

pub mod builtin;
pub mod capabilities;
pub mod cli;
pub mod edge;
pub mod executor;
pub mod repository;
pub mod runtime;
pub mod serve;
pub mod workspace;

// The pipeline language and the process sandbox are crates of their own; these names keep
// `skiff_host::pipeline` and `skiff_host::sandbox` paths working.
pub use skiff_pipeline as pipeline;
pub use skiff_pipeline::mask;
pub use skiff_sandbox as sandbox;
