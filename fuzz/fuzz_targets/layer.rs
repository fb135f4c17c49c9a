//! A container image layer from a registry (untrusted): `skiff_sandbox::rootfs::apply_layer` of
//! arbitrary bytes as a plain, gzip or zstd tar (the first byte picks which) onto a root that
//! already holds a few entries, with small limits.
//!
//! Nothing may panic; nothing may be written, linked or removed outside the root (the folders
//! around it must stay as they are); what is on disk must stay within the byte limit.
#![no_main]

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use skiff_sandbox::rootfs::{Compression, Layer, Limits, Usage, apply_layer};

const LIMITS: Limits = Limits { max_bytes: 1 << 20, max_entries: 256 };

/// `base/a/b/root`, and the blob at `base/blob`: an entry that climbs out lands in `b`, `a` or
/// `base`, which are checked.
struct Dirs {
    base: PathBuf,
    root: PathBuf,
    blob: PathBuf,
}

static DIRS: LazyLock<Dirs> = LazyLock::new(|| {
    let base = std::env::temp_dir().join(format!("skiff-fuzz-layer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("a/b/root");
    std::fs::create_dir_all(&root).expect("a temporary folder");
    Dirs { blob: base.join("blob"), base, root }
});

/// The entries of `dir`, which must be exactly `names`.
fn exactly(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    found.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(found, want, "something changed beside the root, in {}", dir.display());
}

/// Bytes of distinct regular files under `dir` (hard links counted once).
fn file_bytes(dir: &Path, seen: &mut HashSet<u64>) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            total += file_bytes(&path, seen);
        } else if meta.is_file() && seen.insert(meta.ino()) {
            total += meta.len();
        }
    }
    total
}

/// What the root holds before each layer: a file, a directory, and symlinks that point out: one
/// absolute, to `base` itself (not `/`: a bug that followed it must land where this target
/// looks, never in the machine's own `/`), one relative, climbing to `base/a`.
fn populate(root: &Path, base: &Path) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/os-release"), "ID=base\n").unwrap();
    std::os::unix::fs::symlink(base, root.join("up")).unwrap();
    std::os::unix::fs::symlink("../../..", root.join("etc/back")).unwrap();
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, blob)) = data.split_first() else { return };
    let dirs = &*DIRS;
    let compression = match pick % 3 {
        0 => Compression::None,
        1 => Compression::Gzip,
        _ => Compression::Zstd,
    };
    std::fs::write(&dirs.blob, blob).unwrap();
    populate(&dirs.root, &dirs.base);
    let layer = Layer { digest: "sha256:00".into(), compression, path: dirs.blob.clone() };
    let mut used = Usage::default();
    let _ = apply_layer(&dirs.root, 0, &layer, &LIMITS, &mut used);

    exactly(&dirs.base, &["a", "blob"]);
    exactly(&dirs.base.join("a"), &["b"]);
    exactly(&dirs.base.join("a/b"), &["root"]);
    assert!(std::fs::symlink_metadata(&dirs.root).unwrap().is_dir(), "the root itself was replaced");
    let on_disk = file_bytes(&dirs.root, &mut HashSet::new());
    assert!(on_disk <= LIMITS.max_bytes + 8, "{on_disk} bytes on disk, over the limit");

    std::fs::remove_dir_all(&dirs.root).unwrap();
    std::fs::create_dir(&dirs.root).unwrap();
});
