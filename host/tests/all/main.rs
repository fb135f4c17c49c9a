//! The host's integration tests, one binary so linking happens once.

mod artifacts;
mod authoring;
mod build_env;
mod cache;
mod cli;
mod cloudflare_deploy;
mod connections;
mod console;
mod edge;
mod environments;
mod forges;
mod labels;
mod pipeline;
mod plugins;
mod pool;
mod provenance;
mod registry;
mod repository;
mod runtime;
mod sandbox;
mod script;
mod serve;
mod support;

/// The compiled-component cache that every test process shares (nextest runs each test in its
/// own process): entries are written atomically and keyed by content, and it lives under
/// `target/`, so nothing piles up in the system's temporary directory.
pub fn shared_cache_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("skiff-cache")
}
