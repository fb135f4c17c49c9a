//! The Skiff host: the `skiff` binary's library. It narrows wasmtime to the
//! step runtime (`runtime`), grants capabilities one module each
//! (`capabilities`), and carries the built-in steps (`builtin`). `edge` runs
//! the Spin edge master locally; `serve` is the host (and built-in master).

pub mod builtin;
pub mod capabilities;
pub mod cli;
pub mod edge;
pub mod executor;
pub mod mask;
pub mod pipeline;
pub mod runtime;
pub mod sandbox;
pub mod serve;
pub mod workspace;
