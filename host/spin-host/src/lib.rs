//! Edge master components run locally: `skiff edge up` serves a Spin
//! application (the `edge-master/spin` component, or any `wasi:http@0.3`
//! component built with spin-sdk 7) from its `spin.toml`, the way Fermyon
//! would: Spin variables, key-value stores and `allowed_outbound_hosts`
//! enforced, a fresh instance per request.

pub mod kv;
pub mod locked;
pub mod manifest;
pub mod spin;

pub use spin::{SpinApp, serve};
