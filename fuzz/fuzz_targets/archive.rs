//! The checkout step's safe extraction of untrusted `.tar.gz`, `.tar` and `.zip` archives,
//! into a temporary folder with small limits, with each way of stripping the top folder.
//!
//! Nothing may panic; nothing may be written outside the destination (the folders around it
//! must stay empty); no link may be created; what is on disk must stay within the limits.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use skiff_step_checkout::extract::{Format, Limits, Strip, extract};

const LIMITS: Limits = Limits { total_bytes: 1 << 20, files: 64, file_bytes: 256 << 10, ratio: 100 };

/// `base/a/b/dest`: an entry that climbs out lands in `b`, `a` or `base`, which are checked.
struct Dirs {
    base: PathBuf,
    dest: PathBuf,
}

static DIRS: LazyLock<Dirs> = LazyLock::new(|| {
    let base = std::env::temp_dir().join(format!("skiff-fuzz-archive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let dest = base.join("a/b/dest");
    std::fs::create_dir_all(&dest).expect("a temporary folder");
    Dirs { base, dest }
});

/// The only entry of `dir`, which must be `name`.
fn only(dir: &Path, name: &str) -> PathBuf {
    let names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [name], "something was written beside the destination, in {}", dir.display());
    dir.join(name)
}

/// Regular files and bytes under `dir`; panics on a link.
fn walk(dir: &Path, files: &mut u64, bytes: &mut u64) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        assert!(!meta.file_type().is_symlink(), "a link was created: {}", entry.path().display());
        if meta.is_dir() {
            walk(&entry.path(), files, bytes);
        } else {
            assert!(meta.is_file(), "not a file: {}", entry.path().display());
            assert!(meta.len() <= LIMITS.file_bytes, "{} is over the per-file limit", entry.path().display());
            *files += 1;
            *bytes += meta.len();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let dirs = &*DIRS;
    let formats = match Format::sniff(data) {
        Some(f) => vec![f],
        // Old tar headers have no magic; the extractor is given a format, so try them all.
        None => vec![Format::Tar, Format::TarGz, Format::Zip],
    };
    for format in formats {
        for strip in [Strip::Auto, Strip::Yes, Strip::No] {
            let result = extract(data, format, &dirs.dest, strip, LIMITS);

            let b = only(&only(&dirs.base, "a"), "b");
            assert_eq!(only(&b, "dest"), dirs.dest);
            let (mut files, mut bytes) = (0, 0);
            walk(&dirs.dest, &mut files, &mut bytes);
            assert!(bytes <= LIMITS.total_bytes, "{bytes} bytes on disk, over the limit");
            if let Ok(stats) = &result {
                assert!(files <= stats.files, "{files} files on disk, {} reported", stats.files);
                assert!(bytes <= stats.bytes, "{bytes} bytes on disk, {} reported", stats.bytes);
                assert!(stats.files <= LIMITS.files);
            }

            std::fs::remove_dir_all(&dirs.dest).unwrap();
            std::fs::create_dir(&dirs.dest).unwrap();
        }
    }
});
