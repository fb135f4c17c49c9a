//! Safe extraction of untrusted `.tar.gz`, `.tar` and `.zip` archives.
//!
//! Every entry name is checked before anything is written: no absolute paths,
//! no `..`, no symlink or hard link that points outside the destination.
//! Sizes are counted as bytes are written, not taken from headers: total
//! bytes, file count, bytes per file, and the decompression ratio are capped.

use std::io::{Cursor, Read};
use std::path::{Component, Path, PathBuf};

/// Archive formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// gzip-compressed tar.
    TarGz,
    /// Plain tar.
    Tar,
    /// zip.
    Zip,
}

impl Format {
    /// Sniffs the format from the first bytes.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            Some(Self::TarGz)
        } else if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
            Some(Self::Zip)
        } else if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
            Some(Self::Tar)
        } else {
            None
        }
    }
}

/// Caps on what an archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes written in total.
    pub total_bytes: u64,
    /// Files and directories.
    pub files: u64,
    /// Bytes of any one file.
    pub file_bytes: u64,
    /// Unpacked bytes per archive byte.
    pub ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { total_bytes: 2 << 30, files: 200_000, file_bytes: 512 << 20, ratio: 200 }
    }
}

/// What was unpacked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Regular files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Links inside the tree that were not created (WASI cannot make them), by path.
    pub skipped_links: Vec<String>,
    /// The top-level folder that was stripped, if any.
    pub stripped: Option<String>,
}

/// Whether to drop the single top-level folder forges add (`owner-repo-sha/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strip {
    /// When every entry sits under one folder.
    Auto,
    /// Always one level.
    Yes,
    /// Never.
    No,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    /// A symbolic or hard link, with its target as written.
    Link(String, bool),
    Other,
}

struct Entry {
    name: String,
    kind: Kind,
}

/// A path inside the destination, made only of normal components.
fn clean(name: &str) -> Result<PathBuf, String> {
    let unified = name.replace('\\', "/");
    if unified.starts_with('/') || unified.as_bytes().get(1) == Some(&b':') {
        return Err(format!("archive entry `{name}` has an absolute path; refusing to extract it"));
    }
    let mut out = PathBuf::new();
    for c in Path::new(&unified).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("archive entry `{name}` climbs out with `..`; refusing to extract it (zip-slip)"));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("archive entry `{name}` has an absolute path; refusing to extract it"));
            }
        }
    }
    Ok(out)
}

/// Whether `target`, resolved from the folder holding `link`, stays inside the root.
fn link_stays_inside(link: &Path, target: &str, hard: bool) -> bool {
    let target = target.replace('\\', "/");
    if target.starts_with('/') || target.as_bytes().get(1) == Some(&b':') {
        return false;
    }
    // Hard links name a path from the archive root; symlinks are relative to their folder.
    let mut depth: Vec<&std::ffi::OsStr> =
        if hard { Vec::new() } else { link.parent().map(|p| p.iter().collect()).unwrap_or_default() };
    for c in Path::new(&target).components() {
        match c {
            Component::Normal(p) => depth.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

fn entries(bytes: &[u8], format: Format) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    match format {
        Format::Zip => {
            let mut z =
                zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("not a valid zip archive: {e}"))?;
            for i in 0..z.len() {
                let f = z.by_index_raw(i).map_err(|e| format!("reading the zip archive: {e}"))?;
                let name = String::from_utf8_lossy(f.name_raw()).into_owned();
                let kind = if f.is_symlink() {
                    Kind::Link(String::new(), false)
                } else if f.is_dir() {
                    Kind::Dir
                } else {
                    Kind::File
                };
                out.push(Entry { name, kind });
            }
            // A zip symlink's target is its content: read it.
            for (i, e) in out.iter_mut().enumerate() {
                if let Kind::Link(t, _) = &mut e.kind {
                    let mut f = z.by_index(i).map_err(|e| format!("reading the zip archive: {e}"))?;
                    f.by_ref().take(4096).read_to_string(t).map_err(|e| format!("reading a zip symlink: {e}"))?;
                }
            }
        }
        Format::TarGz | Format::Tar => {
            let reader: Box<dyn Read> =
                if format == Format::TarGz { Box::new(flate2::read::GzDecoder::new(bytes)) } else { Box::new(bytes) };
            let mut ar = tar::Archive::new(reader);
            for e in ar.entries().map_err(|e| format!("not a valid tar archive: {e}"))? {
                let e = e.map_err(|e| format!("reading the tar archive: {e}"))?;
                let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let t = e.header().entry_type();
                let kind = if t.is_dir() {
                    Kind::Dir
                } else if t.is_file() || t == tar::EntryType::Continuous {
                    Kind::File
                } else if t.is_symlink() || t.is_hard_link() {
                    let target =
                        e.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                    Kind::Link(target, t.is_hard_link())
                } else {
                    Kind::Other // pax headers are consumed by the tar crate; devices, fifos: skipped
                };
                out.push(Entry { name, kind });
            }
        }
    }
    Ok(out)
}

/// The folder to strip: the one first component every entry shares.
fn common_top(list: &[Entry]) -> Option<String> {
    let mut top: Option<String> = None;
    let mut nested = false;
    for e in list {
        let name = e.name.replace('\\', "/");
        let name = name.trim_start_matches("./");
        let (first, rest) = name.split_once('/').unwrap_or((name, ""));
        // Entries that are never written (GitHub's `pax_global_header` first of all) do not
        // decide the layout.
        if first.is_empty() || e.kind == Kind::Other {
            continue;
        }
        if !rest.trim_matches('/').is_empty() {
            nested = true;
        } else if e.kind != Kind::Dir {
            return None; // a file at the top level
        }
        match &top {
            Some(t) if t != first => return None,
            Some(_) => {}
            None => top = Some(first.to_string()),
        }
    }
    top.filter(|_| nested)
}

/// Unpacks `bytes` into `dest`. Every name is checked before the first byte is
/// written, so a hostile archive leaves nothing behind; sizes are checked while writing.
pub fn extract(bytes: &[u8], format: Format, dest: &Path, strip: Strip, limits: Limits) -> Result<Stats, String> {
    let list = entries(bytes, format)?;
    let top = match strip {
        Strip::No => None,
        Strip::Auto => common_top(&list),
        Strip::Yes => common_top(&list).or_else(|| Some(String::new())),
    };
    let strip_one = strip == Strip::Yes || top.is_some();
    let mut plan: Vec<Option<PathBuf>> = Vec::with_capacity(list.len());
    let mut stats = Stats { stripped: top.clone().filter(|t| !t.is_empty()), ..Default::default() };
    if list.len() as u64 > limits.files {
        return Err(format!("the archive has {} entries, more than the limit of {}", list.len(), limits.files));
    }
    for e in &list {
        let full = clean(&e.name)?;
        let rel: PathBuf = if strip_one { full.iter().skip(1).collect() } else { full.clone() };
        if let Kind::Link(target, hard) = &e.kind {
            let inside = if *hard {
                clean(target).is_ok() && link_stays_inside(&full, target, true)
            } else {
                link_stays_inside(&full, target, false)
            };
            if !inside {
                return Err(format!(
                    "archive entry `{}` is a link to `{target}`, outside the checkout; refusing to extract it",
                    e.name
                ));
            }
        }
        plan.push((!rel.as_os_str().is_empty()).then_some(rel));
    }

    let budget = limits.total_bytes.min((bytes.len() as u64).saturating_mul(limits.ratio).max(1 << 20));
    let write = |rel: &Path, kind: &Kind, reader: &mut dyn Read, stats: &mut Stats| -> Result<(), String> {
        let path = dest.join(rel);
        match kind {
            Kind::Dir => std::fs::create_dir_all(&path).map_err(|e| format!("creating `{}`: {e}", rel.display())),
            Kind::File => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| format!("creating `{}`: {e}", parent.display()))?;
                }
                let mut f = std::fs::File::create(&path).map_err(|e| format!("writing `{}`: {e}", rel.display()))?;
                let left = budget.saturating_sub(stats.bytes);
                let cap = limits.file_bytes.min(left);
                let n = std::io::copy(&mut reader.take(cap + 1), &mut f)
                    .map_err(|e| format!("writing `{}`: {e}", rel.display()))?;
                if n > cap {
                    drop(f);
                    let _ = std::fs::remove_file(&path);
                    return Err(if cap == limits.file_bytes {
                        format!(
                            "`{}` unpacks to more than the per-file limit of {} bytes",
                            rel.display(),
                            limits.file_bytes
                        )
                    } else {
                        format!(
                            "the archive unpacks to more than {budget} bytes (limit {} bytes, or {}x its {} compressed bytes): refusing a possible decompression bomb",
                            limits.total_bytes,
                            limits.ratio,
                            bytes.len()
                        )
                    });
                }
                stats.files += 1;
                stats.bytes += n;
                Ok(())
            }
            Kind::Link(..) => {
                stats.skipped_links.push(rel.display().to_string());
                Ok(())
            }
            Kind::Other => Ok(()),
        }
    };
    match format {
        Format::Zip => {
            let mut z =
                zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("not a valid zip archive: {e}"))?;
            for (i, (e, rel)) in list.iter().zip(&plan).enumerate() {
                let Some(rel) = rel else { continue };
                let mut f = z.by_index(i).map_err(|e| format!("reading the zip archive: {e}"))?;
                write(rel, &e.kind, &mut f, &mut stats)?;
            }
        }
        Format::TarGz | Format::Tar => {
            let reader: Box<dyn Read> =
                if format == Format::TarGz { Box::new(flate2::read::GzDecoder::new(bytes)) } else { Box::new(bytes) };
            let mut ar = tar::Archive::new(reader);
            let all = ar.entries().map_err(|e| format!("not a valid tar archive: {e}"))?;
            for (mut entry, (e, rel)) in all.filter_map(Result::ok).zip(list.iter().zip(&plan)) {
                let Some(rel) = rel else { continue };
                write(rel, &e.kind, &mut entry, &mut stats)?;
            }
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn targz(entries: &[(&str, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut b = tar::Builder::new(gz);
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(if name.ends_with('/') { tar::EntryType::Directory } else { tar::EntryType::Regular });
            // Write the name raw so hostile names survive the builder's own checks.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        for (name, target) in links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, name, target).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn a_github_tarball_with_a_pax_global_header_is_stripped_too() {
        // What codeload.github.com sends: a global pax header carrying the commit, first.
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let comment = b"52 comment=0123456789abcdef0123456789abcdef01234567\n";
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XGlobalHeader);
        h.set_size(comment.len() as u64);
        h.set_path("pax_global_header").unwrap();
        h.set_cksum();
        b.append(&h, &comment[..]).unwrap();
        for (name, data) in [("acme-web-0123/", &b""[..]), ("acme-web-0123/README.md", b"hi")] {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(if name.ends_with('/') { tar::EntryType::Directory } else { tar::EntryType::Regular });
            h.set_size(data.len() as u64);
            h.set_path(name).unwrap();
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        let ar = b.into_inner().unwrap().finish().unwrap();
        let d = tempfile::tempdir().unwrap();
        let s = extract(&ar, Format::TarGz, d.path(), Strip::Auto, Limits::default()).unwrap();
        assert_eq!(s.stripped.as_deref(), Some("acme-web-0123"));
        assert_eq!(std::fs::read(d.path().join("README.md")).unwrap(), b"hi");
        assert!(!d.path().join("pax_global_header").exists());
    }

    #[test]
    fn a_forge_tarball_is_unpacked_without_its_top_folder() {
        let ar = targz(
            &[("acme-web-0123/", b""), ("acme-web-0123/README.md", b"hi"), ("acme-web-0123/src/a.rs", b"fn")],
            &[("acme-web-0123/link", "src/a.rs")],
        );
        assert_eq!(Format::sniff(&ar), Some(Format::TarGz));
        let d = tempfile::tempdir().unwrap();
        let s = extract(&ar, Format::TarGz, d.path(), Strip::Auto, Limits::default()).unwrap();
        assert_eq!(std::fs::read(d.path().join("README.md")).unwrap(), b"hi");
        assert_eq!(std::fs::read(d.path().join("src/a.rs")).unwrap(), b"fn");
        assert_eq!((s.files, s.bytes, s.stripped.as_deref()), (2, 4, Some("acme-web-0123")));
        assert_eq!(s.skipped_links, vec!["link"]);
    }

    #[test]
    fn zips_are_unpacked_too_and_flat_archives_are_not_stripped() {
        let ar = zip(&[("a.txt", b"A"), ("dir/b.txt", b"B")]);
        assert_eq!(Format::sniff(&ar), Some(Format::Zip));
        let d = tempfile::tempdir().unwrap();
        let s = extract(&ar, Format::Zip, d.path(), Strip::Auto, Limits::default()).unwrap();
        assert_eq!(s.stripped, None);
        assert_eq!(std::fs::read(d.path().join("dir/b.txt")).unwrap(), b"B");
    }

    #[test]
    fn hostile_names_are_refused_before_anything_is_written() {
        for (name, want) in [
            ("../evil", "zip-slip"),
            ("top/../../evil", "zip-slip"),
            ("/etc/evil", "absolute"),
            ("C:\\evil", "absolute"),
        ] {
            let d = tempfile::tempdir().unwrap();
            let ar = zip(&[("ok.txt", b"fine"), (name, b"x")]);
            let e = extract(&ar, Format::Zip, d.path(), Strip::Auto, Limits::default()).unwrap_err();
            assert!(e.contains(want), "{name}: {e}");
            assert!(!d.path().join("ok.txt").exists(), "{name}: nothing is written");
        }
        let d = tempfile::tempdir().unwrap();
        let ar = targz(&[("a/", b""), ("a/ok", b"1")], &[("a/esc", "../../etc/passwd")]);
        let e = extract(&ar, Format::TarGz, d.path(), Strip::Auto, Limits::default()).unwrap_err();
        assert!(e.contains("outside the checkout"), "{e}");
        let ar = targz(&[], &[("abs", "/etc/passwd")]);
        assert!(extract(&ar, Format::TarGz, d.path(), Strip::Auto, Limits::default()).is_err());
        assert!(!d.path().join("ok").exists());
    }

    #[test]
    fn sizes_are_capped_while_writing() {
        let zeros = vec![0u8; 4 << 20];
        let ar = targz(&[("big", &zeros)], &[]);
        assert!(ar.len() < 64 << 10, "highly compressible");
        let d = tempfile::tempdir().unwrap();
        let e =
            extract(&ar, Format::TarGz, d.path(), Strip::No, Limits { ratio: 10, ..Limits::default() }).unwrap_err();
        assert!(e.contains("decompression bomb"), "{e}");
        let e = extract(&ar, Format::TarGz, d.path(), Strip::No, Limits { file_bytes: 1000, ..Limits::default() })
            .unwrap_err();
        assert!(e.contains("per-file limit"), "{e}");
        assert!(!d.path().join("big").exists());
        let e = extract(&ar, Format::TarGz, d.path(), Strip::No, Limits { files: 0, ..Limits::default() }).unwrap_err();
        assert!(e.contains("entries"), "{e}");
    }
}
