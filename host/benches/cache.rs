//! Cache restore benchmark (a bench binary printing a markdown table): 100 MiB of files (4,096
//! files of 25 KiB in 64 folders, as a dependency folder looks) saved once as a cache entry,
//! then restored into an empty folder, beside GNU `tar -xf` of the same archive into another,
//! in the same run, alternating which goes first:
//!
//! - **skiff**: the store's entry opened (`cache_open`, which marks it used) and unpacked by the
//!   `cache` capability, every member checked (inside the paths, no link out, nothing written
//!   through a link), modes and times set;
//! - **tar**: `tar -xf ENTRY -C DIR`, the system's tar, which checks none of that.
//!
//! The archive stays in the page cache; neither side syncs to disk, but `sync` runs (untimed)
//! before each restore, so neither is throttled by the other's dirty pages. Each row is the
//! median of N rounds (SKIFF_BENCH_N, 7 by default), in the temp dir (`TMPDIR`).
//! `cargo bench -p skiff --bench cache`

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use skiff_runtime::artifact_store::{ArtifactStore as _, CacheLimits, LocalArtifacts, cache_version};
use skiff_runtime::capabilities::cache::{pack, unpack};

const FILES: usize = 4096;
const FILE_SIZE: usize = 25 << 10;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// `FILES` files of pseudo-random bytes under `ws/deps`.
fn fill(ws: &Path) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; FILE_SIZE];
    for i in 0..FILES {
        let dir = ws.join(format!("deps/pkg-{:02}", i % 64));
        std::fs::create_dir_all(&dir).unwrap();
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        std::fs::File::create(dir.join(format!("file-{i}.js"))).unwrap().write_all(&buf).unwrap();
    }
}

fn fresh(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn main() {
    let n: usize = std::env::var("SKIFF_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let source = fresh(root, "source");
    fill(&source);
    let paths = vec![PathBuf::from("deps")];
    let version = cache_version(&["deps".to_string()]);
    let store = LocalArtifacts::new(root.join("artifacts")).with_cache(root.join("cache"), CacheLimits::default());
    let stop = AtomicBool::new(false);

    // Saved once, as the capability saves.
    let t = Instant::now();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, store.cache_create("bench", "main", "k", &version).unwrap());
    let packed = pack(&source, &paths, &mut w, &stop).unwrap();
    let entry = w.into_inner().ok().unwrap().commit().unwrap();
    let save = t.elapsed();
    assert_eq!(packed.bytes, (FILES * FILE_SIZE) as u64);
    // The same archive for tar: the entry's own file, copied out of the store.
    let archive = root.join("entry.tar");
    let (_, mut r) = store.cache_open("bench", "main", "k", &version).unwrap().unwrap();
    std::io::copy(&mut r, &mut std::fs::File::create(&archive).unwrap()).unwrap();

    let mut skiff = Vec::new();
    let mut tar = Vec::new();
    for round in 0..n {
        let mut one = |which: usize| {
            let _ = std::fs::remove_dir_all(root.join("restore-skiff"));
            let _ = std::fs::remove_dir_all(root.join("restore-tar"));
            Command::new("sync").status().unwrap();
            if which == 0 {
                let dir = fresh(root, "restore-skiff");
                let t = Instant::now();
                let (_, reader) = store.cache_open("bench", "main", "k", &version).unwrap().unwrap();
                let got = unpack(reader, &dir, &paths, &stop).unwrap();
                skiff.push(t.elapsed());
                assert_eq!(got.bytes, packed.bytes);
            } else {
                let dir = fresh(root, "restore-tar");
                let t = Instant::now();
                let status = Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&dir).status().unwrap();
                tar.push(t.elapsed());
                assert!(status.success());
            }
        };
        // Alternate which goes first, so neither always finds a warmer cache.
        one(round % 2);
        one(1 - round % 2);
    }
    let (s, t) = (median(skiff), median(tar));
    let mib = packed.bytes as f64 / (1 << 20) as f64;
    println!(
        "Cache restore of {mib:.0} MiB ({FILES} files, archive {} bytes) in {}, median of {n}\n",
        entry.size,
        root.display()
    );
    println!("| | time | MiB/s |");
    println!("|---|---|---|");
    println!("| skiff `cache` restore (store open + checked unpack) | {} | {:.0} |", ms(s), mib / s.as_secs_f64());
    println!("| `tar -xf` of the same archive | {} | {:.0} |", ms(t), mib / t.as_secs_f64());
    println!("\nskiff / tar: {:.2}x (save, once: {})", s.as_secs_f64() / t.as_secs_f64(), ms(save));
}
