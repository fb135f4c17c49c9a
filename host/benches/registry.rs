//! Shared components benchmark (a bench binary printing a markdown table): a 200 KB step
//! component published to a real registry (Debian's `docker-registry` on a loopback port),
//! then made ready to run, each time as a new host would:
//!
//! - **cold**: an empty component store and compile cache: pull the manifest and the blob
//!   (digests checked), compile, ask the component what it declares;
//! - **warm**: the same digest with the store and the compiled cache filled (a new runtime, as
//!   after a restart): no registry, the compiled artifact loaded from disk.
//!
//! Each row is the median of N (SKIFF_BENCH_N, 20 by default).
//! `cargo bench -p skiff --bench registry`

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_pipeline::component_ref::ComponentRef;
use skiff_registry::client::ClientOptions;
use skiff_registry::{Policy, Resolver, publish};
use skiff_runtime::component_store::ComponentStore;
use skiff_runtime::{EngineOptions, Runtime, builtin};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

// The tests' way of giving a component other bytes.
#[path = "../tests/all/support/wasm.rs"]
mod wasm;

/// diag with a custom section, so the component is 200 KB (and its own digest).
fn component() -> Vec<u8> {
    let mut bytes = builtin::get("diag").expect("diag is built in").to_vec();
    let name = "skiff-bench";
    let pad = 200 * 1024 - bytes.len() - 16 - name.len();
    wasm::custom_section(&mut bytes, name, &vec![0x5a; pad]);
    bytes
}

/// Fetches and loads `r` with a new runtime over `cache`; returns the time taken.
async fn ready(r: &ComponentRef, cache: &std::path::Path) -> Duration {
    let runtime =
        Runtime::new(EngineOptions { pool_size: 4, ..Default::default() }, Some(cache.to_path_buf())).unwrap();
    let resolver = Resolver::new(ComponentStore::new(cache.join("components")), ClientOptions::default());
    let t = Instant::now();
    let fetched = resolver.fetch(r, &Policy::default()).await.unwrap();
    let step = runtime.load_digest(&fetched.content).await.unwrap();
    let took = t.elapsed();
    assert_eq!(step.manifest.name, "diag");
    took
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("SKIFF_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let root = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    std::fs::write(
        root.path().join("config.yml"),
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  secret: bench\n",
            root.path().join("data").display()
        ),
    )
    .unwrap();
    let mut registry = Command::new("docker-registry")
        .arg("serve")
        .arg(root.path().join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry (scripts/setup.sh installs it)");
    while std::net::TcpStream::connect(&addr).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }

    let bytes = component();
    let tag = ComponentRef::parse(&format!("{addr}/bench/diag:1")).unwrap();
    let publisher = Resolver::new(ComponentStore::new(root.path().join("unused")), ClientOptions::default());
    let runtime =
        Runtime::new(EngineOptions { pool_size: 1, ..Default::default() }, Some(root.path().join("pub"))).unwrap();
    let step = runtime.load(&bytes).await.unwrap();
    let (imports, exports) = step.world();
    let digest = publish::push_component(
        publisher.client(),
        &tag,
        &bytes,
        publish::annotations(&step.manifest, None),
        &imports,
        &exports,
    )
    .await
    .unwrap();
    let pinned = tag.pinned(digest);

    let warm_cache = tempfile::tempdir().unwrap();
    ready(&pinned, warm_cache.path()).await;
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let fresh = tempfile::tempdir().unwrap();
        cold.push(ready(&pinned, fresh.path()).await);
        warm.push(ready(&pinned, warm_cache.path()).await);
    }
    let _ = registry.kill();
    let _ = registry.wait();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (c, w) = (median(cold), median(warm));
    println!(
        "component: {} KB, N = {n}, load average: {}",
        bytes.len() / 1024,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!();
    println!("| ready to run | median | ratio |");
    println!("|---|---|---|");
    println!(
        "| cold: pull from the registry, check digests, compile, describe | {} | {:.1}× |",
        ms(c),
        c.as_secs_f64() / w.as_secs_f64()
    );
    println!("| warm: from the digest store and the compiled cache (no registry) | {} | 1× |", ms(w));
}
