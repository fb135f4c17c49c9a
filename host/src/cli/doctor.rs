//! `skiff doctor`: what this host enforces and offers to steps' processes (bubblewrap, container
//! images, which limits bind a whole process tree), and where it keeps what it caches. Exits 1
//! when processes cannot be sandboxed at all.

use std::process::ExitCode;

use skiff_runtime::sandbox;

pub fn run() -> anyhow::Result<ExitCode> {
    crate::outln!("processes");
    for (what, state) in sandbox::report() {
        crate::outln!("  {what}: {state}");
    }
    let cache = skiff_runtime::cache::default_dir();
    crate::outln!("storage");
    crate::outln!("  cache: {} (compiled and shared components, container images, tool caches)", cache.display());
    crate::outln!("  images: {}", skiff_runtime::image_store::ImageStore::default_store().dir().display());
    Ok(if sandbox::availability().is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
