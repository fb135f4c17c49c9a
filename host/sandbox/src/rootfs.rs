//! A container image's layers unpacked into one root filesystem directory.
//!
//! `run:` steps that name an image run with that image as their root, without a container
//! daemon: the host unpacks the image's layer blobs (tar, tar+gzip or tar+zstd) once per image
//! into `store/<digest>/rootfs`, and every run mounts that directory read-only (the lower dir of
//! an overlayfs) as the root of its bubblewrap sandbox. Flattening once keeps each run's start
//! cheap and needs no privileges: no overlay stack of layers, no loop devices, no daemon.
//!
//! Layers come from registries and are untrusted. Entry names are relative to the image root, so
//! `..` is refused outright, and every directory on an entry's path is resolved *inside* the root
//! with chroot semantics ([`resolve_in_root`]): symlinks there are followed the way the image's own
//! processes would see them (merged-`/usr` images have `bin -> usr/bin` and later layers write
//! `bin/foo`), but absolute targets and `..` are clamped to the root, so no symlink, hard link or
//! whiteout of a hostile layer reaches the host. The last component of a name is never followed:
//! whatever is there is replaced, and files are created with `O_EXCL | O_NOFOLLOW`. The build runs
//! in a private directory, so nothing changes a path between its check and its use. Totals of file
//! bytes and entries are bounded (decompression bombs), and so is tar metadata per entry (memory).
//!
//! Whiteouts follow the OCI image spec: `.wh.NAME` deletes `NAME` of earlier layers,
//! `.wh..wh..opq` empties a directory of what earlier layers put there, and the overlayfs form (a
//! character device 0:0) acts like `.wh.NAME`. Not reproduced, since an unprivileged user cannot:
//! ownership (everything belongs to the host user), device nodes and FIFOs (skipped and counted),
//! setuid/setgid bits of files (dropped), xattrs. Every directory gets `u+rwx` and every file
//! `u+rw`, so later layers can replace their entries and the store can be cleaned.

use std::cell::Cell;
use std::collections::{HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, FileTimes, OpenOptions, Permissions};
use std::io::{self, BufRead, BufReader, Read, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use tar::EntryType;

/// Symlinks followed while resolving one name, as Linux's `MAXSYMLINKS`: a loop ends in an error.
const MAX_SYMLINK_HOPS: u32 = 40;
/// Tar metadata (GNU long names, pax headers) allowed before one entry. The tar crate holds it
/// in memory, so a hostile layer could otherwise claim gigabytes for a "name".
const MAX_METADATA: u64 = 1 << 20;
/// Read buffer for layer blobs and file contents.
const BUF_SIZE: usize = 128 * 1024;
/// The file in `store/<key>/` that says the root filesystem next to it is complete.
const MARKER: &str = "complete";
const ROOTFS: &str = "rootfs";
/// Prefix of builds in progress (and of crashed builds' leftovers) in the store.
const TMP_PREFIX: &str = ".tmp-";
const STORE_HINT: &str = "check the free space and permissions of the image store";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer from its descriptor's media type (OCI and Docker, including
    /// non-distributable/foreign layers); `None` for anything that is not a known layer type.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    fn format(self) -> &'static str {
        match self {
            Compression::None => "tar archive",
            Compression::Gzip => "gzip-compressed tar archive",
            Compression::Zstd => "zstd-compressed tar archive",
        }
    }
}

/// Bounds on what one image may unpack to, totals across all its layers: compressed layers are
/// small, so without them a few megabytes from a registry could fill the host's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of file contents (and of data the tar stream carries for other entries).
    pub max_bytes: u64,
    /// Tar entries of every kind (each costs an inode or at least work).
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_bytes: 16 << 30, max_entries: 2_000_000 }
    }
}

/// What the layers applied so far used, checked against [`Limits`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
    /// Entries not reproduced: device nodes, FIFOs, entry types we do not know.
    pub skipped: u64,
}

/// One layer blob on disk, its digest already verified by whoever downloaded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// `sha256:<hex>`, for messages.
    pub digest: String,
    pub compression: Compression,
    pub path: PathBuf,
}

/// Why an image's root filesystem could not be built. Messages say what is wrong and what to do;
/// `layer` is the layer's 1-based position in the image.
#[derive(thiserror::Error, Debug)]
pub enum RootfsError {
    #[error(
        "image key `{key}` is not a digest like `sha256:<64 lowercase hex digits>`: \
         key the root filesystem by the image's digest"
    )]
    InvalidKey { key: String },
    #[error(
        "layer {layer} ({digest}) cannot be read as a {format}: {detail}: \
         the blob is corrupt or not an image layer; pull the image again or rebuild it"
    )]
    Malformed { layer: usize, digest: String, format: &'static str, detail: String },
    #[error(
        "layer {layer} ({digest}) has an entry `{entry}` that leaves the image root: \
         the image is malformed or hostile; rebuild it"
    )]
    Escapes { layer: usize, digest: String, entry: String },
    #[error(
        "layer {layer} ({digest}) has an entry `{entry}` that cannot be unpacked: {why}: \
         the image is malformed or hostile; rebuild it"
    )]
    BadEntry { layer: usize, digest: String, entry: String, why: String },
    #[error(
        "the image's files add up to more than {limit} bytes (reached in layer {layer}, {digest}): \
         use a smaller image, or raise the host's image size limit"
    )]
    TooLarge { layer: usize, digest: String, limit: u64 },
    #[error(
        "the image has more than {limit} files, directories and links (reached in layer {layer}, {digest}): \
         use a smaller image, or raise the host's limit on image entries"
    )]
    TooManyEntries { layer: usize, digest: String, limit: u64 },
    #[error(
        "layer {layer} ({digest}) has more than {limit} bytes of tar metadata (long names, pax headers) \
         for one entry: the image is malformed or hostile; rebuild it"
    )]
    MetadataTooLarge { layer: usize, digest: String, limit: u64 },
    /// The store or a blob could not be read or written.
    #[error("{what}: {source}; {hint}")]
    Io {
        what: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Resolves `path` as a process chrooted at `root` would, but never follows a symlink out of it:
/// absolute symlink targets start again at `root` and `..` stops at it. Every component is
/// followed, the last one too; the last one may be missing. Returns the host path.
pub fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    match walk(root, path.as_os_str().as_bytes(), false, false) {
        Ok(Some(rel)) if rel.as_os_str().is_empty() => Ok(root.to_path_buf()),
        Ok(Some(rel)) => Ok(root.join(rel)),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("a directory on the path `{}` does not exist in the image", path.display()),
        )),
        Err(WalkError::Loop) => Err(io::Error::other(format!(
            "`{}` goes through more than {MAX_SYMLINK_HOPS} symbolic links in the image",
            path.display()
        ))),
        Err(WalkError::NotDir(p)) => Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("`/{}` is not a directory in the image", p.display()),
        )),
        Err(WalkError::Io(e)) => Err(e),
    }
}

enum WalkError {
    Loop,
    /// This component (relative to the root, symlinks resolved) is not a directory.
    NotDir(PathBuf),
    Io(io::Error),
}

/// The core of [`resolve_in_root`]: `path`'s real location relative to `root`, made of real
/// directories only (except a last component that is not one, unless `want_dir`). Missing
/// directories are created (0755) with `create`, else the answer is `None`.
fn walk(root: &Path, path: &[u8], create: bool, want_dir: bool) -> Result<Option<PathBuf>, WalkError> {
    let mut pending: VecDeque<Vec<u8>> = path.split(|b| *b == b'/').map(<[u8]>::to_vec).collect();
    let mut real = PathBuf::new();
    let mut hops = 0;
    while let Some(name) = pending.pop_front() {
        match name.as_slice() {
            b"" | b"." => continue,
            b".." => {
                // Clamped at the root, like `..` of `/`.
                real.pop();
                continue;
            }
            _ => {}
        }
        // Never asked with `want_dir`; otherwise only where the walk ends: no quadratic cost.
        let last = |pending: &VecDeque<Vec<u8>>| !want_dir && pending.iter().all(|c| c.is_empty() || c == b".");
        let rel = real.join(OsStr::from_bytes(&name));
        let host = root.join(&rel);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.is_dir() => real = rel,
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(WalkError::Loop);
                }
                let target = fs::read_link(&host).map_err(WalkError::Io)?;
                let target = target.as_os_str().as_bytes();
                if target.starts_with(b"/") {
                    real = PathBuf::new();
                }
                for c in target.split(|b| *b == b'/').rev() {
                    pending.push_front(c.to_vec());
                }
            }
            Ok(_) if last(&pending) => real = rel,
            Ok(_) => return Err(WalkError::NotDir(rel)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if last(&pending) {
                    real = rel;
                } else if create {
                    DirBuilder::new().mode(0o755).create(&host).map_err(WalkError::Io)?;
                    real = rel;
                } else {
                    return Ok(None);
                }
            }
            Err(e) => return Err(WalkError::Io(e)),
        }
    }
    Ok(Some(real))
}

/// Why an entry name is refused.
enum NameError {
    Empty,
    Nul,
    Escapes,
}

/// An entry name as components relative to the image root: leading `/` and `./` (and empty or
/// `.` components anywhere) dropped, `..` refused. No components: the root itself.
fn components(raw: &[u8]) -> Result<Vec<&[u8]>, NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    if raw.contains(&0) {
        return Err(NameError::Nul);
    }
    let parts: Vec<&[u8]> = raw.split(|b| *b == b'/').filter(|c| !c.is_empty() && *c != b".").collect();
    if parts.iter().any(|c| *c == b"..") {
        return Err(NameError::Escapes);
    }
    Ok(parts)
}

/// An untrusted name for a message: lossy UTF-8, control characters escaped, length bounded.
fn shown(raw: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Applies one layer onto `root` with OCI whiteout semantics; `index` is the layer's 0-based
/// position in the image (messages count from 1). `used` accumulates bytes and entries across
/// the image's layers, so [`Limits`] bound the whole image. On error `root` is half-written:
/// [`build`] throws it away.
pub fn apply_layer(
    root: &Path,
    index: usize,
    layer: &Layer,
    limits: &Limits,
    used: &mut Usage,
) -> Result<(), RootfsError> {
    let file = File::open(&layer.path).map_err(|e| RootfsError::Io {
        what: format!("cannot open layer {} ({}) at {}", index + 1, layer.digest, layer.path.display()),
        hint: "the downloaded blob is gone; pull the image again",
        source: e,
    })?;
    let blob = BufReader::with_capacity(BUF_SIZE, file);
    let stream: Box<dyn Read> = match layer.compression {
        Compression::None => Box::new(blob),
        // Multi-member: `pigz` and concatenating tools write several gzip members.
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(ZstdFrames::new(blob)),
    };
    let meter = Rc::new(Meter::default());
    meter.allow(0);
    let mut archive = tar::Archive::new(Metered { inner: stream, meter: Rc::clone(&meter) });
    let mut unpack = Unpack {
        root,
        layer: index + 1,
        digest: &layer.digest,
        format: layer.compression.format(),
        limits,
        used,
        meter,
        created: HashSet::new(),
        ancestors: HashSet::new(),
        buf: vec![0; BUF_SIZE],
    };
    let entries = archive.entries().map_err(|e| unpack.read_error(e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| unpack.read_error(e))?;
        unpack.entry(&mut entry)?;
    }
    Ok(())
}

/// Position of the decompressed tar stream and how far the tar reader may go before the next
/// entry: bounds the metadata (long names, pax headers) the tar crate reads into memory.
#[derive(Default)]
struct Meter {
    pos: Cell<u64>,
    limit: Cell<u64>,
    tripped: Cell<bool>,
}

impl Meter {
    /// An entry with `data` bytes still to come was just read: allow those, its padding, and
    /// the metadata of the next entry.
    fn allow(&self, data: u64) {
        self.limit.set(self.pos.get().saturating_add(data).saturating_add(511 + MAX_METADATA));
    }
}

struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.meter.limit.get().saturating_sub(self.meter.pos.get());
        if room == 0 && !buf.is_empty() {
            self.meter.tripped.set(true);
            return Err(io::Error::other("too much tar metadata before an entry"));
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.meter.pos.set(self.meter.pos.get() + n as u64);
        Ok(n)
    }
}

/// A zstd stream of any number of frames (and skippable frames), as `zstd` and chunked layer
/// writers produce; ruzstd's `StreamingDecoder` reads one frame only.
struct ZstdFrames<R> {
    src: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(src: R) -> Self {
        // ruzstd checks the window size (at most 100 MiB) only when it re-initializes a decoder,
        // not the first time: start it on an empty frame so a hostile frame header cannot make
        // it buffer gigabytes.
        const EMPTY_FRAME: [u8; 9] = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x01, 0x00, 0x00];
        let mut decoder = FrameDecoder::new();
        let primed = decoder.init(&EMPTY_FRAME[..]);
        debug_assert!(primed.is_ok());
        Self { src, decoder, in_frame: false }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                while self.decoder.can_collect() < buf.len() && !self.decoder.is_finished() {
                    let want = buf.len() - self.decoder.can_collect();
                    self.decoder
                        .decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBytes(want))
                        .map_err(io::Error::other)?;
                }
                let n = self.decoder.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                // Finished and drained (otherwise `read` returns something).
                self.in_frame = false;
            }
            if self.src.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.decoder.reset(&mut self.src) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame { length, .. })) => {
                    let skipped = io::copy(&mut (&mut self.src).take(u64::from(length)), &mut io::sink())?;
                    if skipped < u64::from(length) {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated skippable zstd frame"));
                    }
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }
}

/// The state of applying one layer.
struct Unpack<'a> {
    root: &'a Path,
    /// 1-based, for messages.
    layer: usize,
    digest: &'a str,
    format: &'static str,
    limits: &'a Limits,
    used: &'a mut Usage,
    meter: Rc<Meter>,
    /// Real paths (relative to the root) this layer created: whiteouts and opaque markers only
    /// remove what earlier layers put there.
    created: HashSet<PathBuf>,
    /// Their ancestor directories, which an opaque marker keeps (emptied of older entries).
    ancestors: HashSet<PathBuf>,
    buf: Vec<u8>,
}

impl Unpack<'_> {
    fn read_error(&self, e: io::Error) -> RootfsError {
        if self.meter.tripped.get() {
            RootfsError::MetadataTooLarge { layer: self.layer, digest: self.digest.into(), limit: MAX_METADATA }
        } else {
            RootfsError::Malformed {
                layer: self.layer,
                digest: self.digest.into(),
                format: self.format,
                detail: shown(e.to_string().as_bytes()),
            }
        }
    }

    fn bad(&self, raw: &[u8], why: impl Into<String>) -> RootfsError {
        RootfsError::BadEntry { layer: self.layer, digest: self.digest.into(), entry: shown(raw), why: why.into() }
    }

    fn escapes(&self, raw: &[u8]) -> RootfsError {
        RootfsError::Escapes { layer: self.layer, digest: self.digest.into(), entry: shown(raw) }
    }

    fn io(&self, action: &str, raw: &[u8], e: io::Error) -> RootfsError {
        RootfsError::Io {
            what: format!("cannot {action} `{}` of layer {} ({})", shown(raw), self.layer, self.digest),
            hint: STORE_HINT,
            source: e,
        }
    }

    fn name_error(&self, raw: &[u8], e: NameError) -> RootfsError {
        match e {
            NameError::Empty => self.bad(raw, "its name is empty"),
            NameError::Nul => self.bad(raw, "its name contains a NUL byte"),
            NameError::Escapes => self.escapes(raw),
        }
    }

    fn too_large(&self) -> RootfsError {
        RootfsError::TooLarge { layer: self.layer, digest: self.digest.into(), limit: self.limits.max_bytes }
    }

    fn charge(&mut self, bytes: u64) -> Result<(), RootfsError> {
        self.used.bytes = self.used.bytes.saturating_add(bytes);
        if self.used.bytes > self.limits.max_bytes {
            return Err(self.too_large());
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), RootfsError> {
        self.used.entries += 1;
        if self.used.entries > self.limits.max_entries {
            return Err(RootfsError::TooManyEntries {
                layer: self.layer,
                digest: self.digest.into(),
                limit: self.limits.max_entries,
            });
        }
        let size = entry.size();
        self.meter.allow(size);
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        let is_file = matches!(kind, EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse);
        // Old tars mark directories as regular files with a trailing slash.
        let is_dir = kind == EntryType::Directory || (is_file && raw.ends_with(b"/"));
        if is_file && !is_dir {
            if self.used.bytes.saturating_add(size) > self.limits.max_bytes {
                return Err(self.too_large());
            }
        } else {
            // Data of other entries is skipped, but still decompressed: it counts too.
            self.charge(size)?;
        }
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }

        let parts = components(&raw).map_err(|e| self.name_error(&raw, e))?;
        let Some((name, parent)) = parts.split_last() else {
            return if is_dir { Ok(()) } else { Err(self.bad(&raw, "it names the image root itself")) };
        };
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            return match hidden {
                b".wh..opq" => self.opaque(&raw, parent),
                // Other `.wh..wh.` names are reserved (aufs bookkeeping): never part of the image.
                _ if hidden.starts_with(b".wh.") => Ok(()),
                b"" | b"." | b".." => Err(self.bad(&raw, "it is a whiteout of no valid name")),
                _ => self.whiteout(&raw, parent, hidden),
            };
        }

        if is_dir {
            return self.dir(&raw, parent, name, entry);
        }
        match kind {
            _ if is_file => self.file(&raw, parent, name, entry),
            EntryType::Symlink => self.symlink(&raw, parent, name, entry),
            EntryType::Link => self.hard_link(&raw, parent, name, entry),
            EntryType::Char if self.is_overlay_whiteout(entry) => self.whiteout(&raw, parent, name),
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                // Cannot be created unprivileged (and have no business in a CI image); the path
                // no longer holds what earlier layers put there.
                self.used.skipped += 1;
                let (_, path) = self.target(&raw, parent, name)?;
                remove(&path).map_err(|e| self.io("replace", &raw, e))
            }
            _ => {
                self.used.skipped += 1;
                Ok(())
            }
        }
    }

    fn is_overlay_whiteout<R: Read>(&self, entry: &tar::Entry<'_, R>) -> bool {
        let header = entry.header();
        matches!((header.device_major(), header.device_minor()), (Ok(Some(0)), Ok(Some(0))))
    }

    /// The real directory `parent` names in the root, created if missing.
    fn parent(&self, raw: &[u8], parent: &[&[u8]]) -> Result<PathBuf, RootfsError> {
        match walk(self.root, &parent.join(&b'/'), true, true) {
            Ok(Some(rel)) => Ok(rel),
            Ok(None) => Err(self.bad(raw, "a directory on its path is missing")),
            Err(e) => Err(self.walk_error(raw, e)),
        }
    }

    /// Like [`Self::parent`] but creates nothing: `None` when there is no such directory.
    fn existing_parent(&self, raw: &[u8], parent: &[&[u8]]) -> Result<Option<PathBuf>, RootfsError> {
        match walk(self.root, &parent.join(&b'/'), false, true) {
            Ok(rel) => Ok(rel),
            Err(WalkError::NotDir(_)) => Ok(None),
            Err(e) => Err(self.walk_error(raw, e)),
        }
    }

    fn walk_error(&self, raw: &[u8], e: WalkError) -> RootfsError {
        match e {
            WalkError::Loop => {
                self.bad(raw, format!("its path goes through more than {MAX_SYMLINK_HOPS} symbolic links (a loop)"))
            }
            WalkError::NotDir(p) => self.bad(raw, format!("`{}` on its path is not a directory", p.display())),
            WalkError::Io(e) => self.io("create the directories of", raw, e),
        }
    }

    /// The entry's real relative path and host path, its parent directories created.
    fn target(&self, raw: &[u8], parent: &[&[u8]], name: &[u8]) -> Result<(PathBuf, PathBuf), RootfsError> {
        let rel = self.parent(raw, parent)?.join(OsStr::from_bytes(name));
        let path = self.root.join(&rel);
        Ok((rel, path))
    }

    fn record(&mut self, rel: PathBuf) {
        for dir in rel.ancestors().skip(1) {
            if dir.as_os_str().is_empty() || !self.ancestors.insert(dir.to_path_buf()) {
                break;
            }
        }
        self.created.insert(rel);
    }

    fn mode<R: Read>(&self, raw: &[u8], entry: &tar::Entry<'_, R>) -> Result<u32, RootfsError> {
        entry
            .header()
            .mode()
            .map_err(|e| self.bad(raw, format!("its mode is unreadable ({})", shown(e.to_string().as_bytes()))))
    }

    fn dir<R: Read>(
        &mut self,
        raw: &[u8],
        parent: &[&[u8]],
        name: &[u8],
        entry: &tar::Entry<'_, R>,
    ) -> Result<(), RootfsError> {
        let mode = self.mode(raw, entry)?;
        let (rel, path) = self.target(raw, parent, name)?;
        match fs::symlink_metadata(&path) {
            // A directory stays (with what earlier layers put in it); anything else is replaced.
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fs::remove_file(&path).map_err(|e| self.io("replace", raw, e))?;
                DirBuilder::new().mode(0o700).create(&path).map_err(|e| self.io("create", raw, e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new().mode(0o700).create(&path).map_err(|e| self.io("create", raw, e))?;
            }
            Err(e) => return Err(self.io("inspect", raw, e)),
        }
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| self.io("open", raw, e))?;
        dir.set_permissions(Permissions::from_mode((mode & 0o7777) | 0o700))
            .map_err(|e| self.io("set the mode of", raw, e))?;
        self.record(rel);
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        raw: &[u8],
        parent: &[&[u8]],
        name: &[u8],
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), RootfsError> {
        let mode = self.mode(raw, entry)?;
        let (rel, path) = self.target(raw, parent, name)?;
        remove(&path).map_err(|e| self.io("replace", raw, e))?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| self.io("create", raw, e))?;
        let mut buf = std::mem::take(&mut self.buf);
        let copied = loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(self.read_error(e)),
            };
            if let Err(e) = self.charge(n as u64) {
                break Err(e);
            }
            if let Err(e) = file.write_all(&buf[..n]) {
                break Err(self.io("write", raw, e));
            }
        };
        self.buf = buf;
        copied?;
        // All of it is read: only padding before the next entry's metadata.
        self.meter.allow(0);
        // No setuid/setgid (we are not root, and nothing should gain privileges from an image).
        file.set_permissions(Permissions::from_mode((mode & 0o1777) | 0o600))
            .map_err(|e| self.io("set the mode of", raw, e))?;
        // Kept because tools compare them (make, Python's .pyc caches); best effort.
        let mtime =
            entry.header().mtime().ok().and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)));
        if let Some(mtime) = mtime {
            let _ = file.set_times(FileTimes::new().set_modified(mtime));
        }
        self.record(rel);
        Ok(())
    }

    fn symlink<R: Read>(
        &mut self,
        raw: &[u8],
        parent: &[&[u8]],
        name: &[u8],
        entry: &tar::Entry<'_, R>,
    ) -> Result<(), RootfsError> {
        let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
        if target.is_empty() {
            return Err(self.bad(raw, "it is a symbolic link without a target"));
        }
        if target.contains(&0) {
            return Err(self.bad(raw, "its symbolic link target contains a NUL byte"));
        }
        let (rel, path) = self.target(raw, parent, name)?;
        remove(&path).map_err(|e| self.io("replace", raw, e))?;
        // The target is kept as written: only ever resolved inside the root (by us or the sandbox).
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).map_err(|e| self.io("create", raw, e))?;
        self.record(rel);
        Ok(())
    }

    fn hard_link<R: Read>(
        &mut self,
        raw: &[u8],
        parent: &[&[u8]],
        name: &[u8],
        entry: &tar::Entry<'_, R>,
    ) -> Result<(), RootfsError> {
        let Some(link) = entry.link_name_bytes().map(|t| t.into_owned()) else {
            return Err(self.bad(raw, "it is a hard link without a target"));
        };
        let shown_link = shown(&link);
        let missing = || format!("it is a hard link to `{shown_link}`, which is not a file earlier in the image");
        let link_parts = match components(&link) {
            Ok(parts) => parts,
            Err(NameError::Escapes) => {
                return Err(self.bad(raw, format!("it is a hard link to `{shown_link}`, which leaves the image root")));
            }
            Err(_) => return Err(self.bad(raw, missing())),
        };
        // The link names an archive member: its directories resolve inside the root, its last
        // component is not followed.
        let Some((link_name, link_parent)) = link_parts.split_last() else {
            return Err(self.bad(raw, missing()));
        };
        let Some(source_dir) = self.existing_parent(raw, link_parent)? else {
            return Err(self.bad(raw, missing()));
        };
        let source_rel = source_dir.join(OsStr::from_bytes(link_name));
        let source = self.root.join(&source_rel);
        match fs::symlink_metadata(&source) {
            // A symlink is linked itself (linkat without AT_SYMLINK_FOLLOW), never its target.
            Ok(m) if m.is_file() || m.file_type().is_symlink() => {}
            _ => return Err(self.bad(raw, missing())),
        }
        let (rel, path) = self.target(raw, parent, name)?;
        if rel == source_rel {
            self.record(rel);
            return Ok(());
        }
        remove(&path).map_err(|e| self.io("replace", raw, e))?;
        fs::hard_link(&source, &path).map_err(|e| self.io("create", raw, e))?;
        self.record(rel);
        Ok(())
    }

    /// `.wh.NAME` (or a 0:0 character device `NAME`): deletes `NAME` as earlier layers left it.
    fn whiteout(&mut self, raw: &[u8], parent: &[&[u8]], name: &[u8]) -> Result<(), RootfsError> {
        let Some(dir) = self.existing_parent(raw, parent)? else { return Ok(()) };
        let rel = dir.join(OsStr::from_bytes(name));
        let path = self.root.join(&rel);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io("inspect", raw, e)),
        };
        if self.created.contains(&rel) || self.ancestors.contains(&rel) {
            // A whiteout only hides lower layers: what this layer wrote there stays.
            if meta.is_dir() {
                self.clear_lower(&rel).map_err(|e| self.io("apply the whiteout", raw, e))?;
            }
            return Ok(());
        }
        remove(&path).map_err(|e| self.io("apply the whiteout", raw, e))
    }

    /// `.wh..wh..opq`: the directory keeps only what this layer put in it.
    fn opaque(&mut self, raw: &[u8], parent: &[&[u8]]) -> Result<(), RootfsError> {
        let Some(dir) = self.existing_parent(raw, parent)? else { return Ok(()) };
        self.clear_lower(&dir).map_err(|e| self.io("apply the opaque marker", raw, e))
    }

    /// Removes everything under `dir` (relative) this layer did not create.
    fn clear_lower(&self, dir: &Path) -> io::Result<()> {
        let children: Vec<_> = fs::read_dir(self.root.join(dir))?.collect::<Result<_, _>>()?;
        for child in children {
            let rel = dir.join(child.file_name());
            let is_dir = child.file_type()?.is_dir();
            if self.created.contains(&rel) || self.ancestors.contains(&rel) {
                if is_dir {
                    self.clear_lower(&rel)?;
                }
            } else if is_dir {
                fs::remove_dir_all(child.path())?;
            } else {
                fs::remove_file(child.path())?;
            }
        }
        Ok(())
    }
}

/// Removes whatever is at `path` (never following it); nothing there is fine.
fn remove(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The directory name for an image key: `sha256:<hex>` becomes `sha256-<hex>`.
fn key_dir(key: &str) -> Result<String, RootfsError> {
    let valid = match key.split_once(':') {
        Some(("sha256", hex)) => hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        Some(("sha512", hex)) => hex.len() == 128 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        _ => false,
    };
    if !valid {
        return Err(RootfsError::InvalidKey { key: shown(key.as_bytes()) });
    }
    Ok(key.replacen(':', "-", 1))
}

fn is_complete(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join(MARKER)).is_ok_and(|m| m.is_file())
        && fs::symlink_metadata(dir.join(ROOTFS)).is_ok_and(|m| m.is_dir())
}

fn store_error(what: String, source: io::Error) -> RootfsError {
    RootfsError::Io { what, hint: STORE_HINT, source }
}

/// A fresh name for a build in progress of `name`: unique per process and call.
fn temp_path(store: &Path, name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    store.join(format!("{TMP_PREFIX}{name}-{}-{n}", std::process::id()))
}

/// Builds `store/<key>/rootfs` from `layers` (bottom first), once per image: when it is already
/// complete (its marker is there) it is returned at once. Builders of one key take turns on a
/// lock file (threads and processes alike), so an image is unpacked once and the second one
/// finds it done. The tree is built in a temporary sibling and renamed into place with its
/// marker, so a crash never leaves a half-built root visible; the next builder removes such
/// leftovers. Returns the rootfs path.
pub fn build(store: &Path, key: &str, layers: &[Layer], limits: &Limits) -> Result<PathBuf, RootfsError> {
    let name = key_dir(key)?;
    let dir = store.join(&name);
    let rootfs = dir.join(ROOTFS);
    if is_complete(&dir) {
        return Ok(rootfs);
    }
    fs::create_dir_all(store)
        .map_err(|e| store_error(format!("cannot create the image store {}", store.display()), e))?;
    let lock = lock(store, &name)?;
    if is_complete(&dir) {
        return Ok(rootfs);
    }
    if lock.is_some() {
        // We are the only builder of this key: any temporary tree of it is a crashed build's.
        remove_leftovers(store, &name);
    }
    let tmp = temp_path(store, &name);
    let result = fill(&tmp, key, layers, limits).and_then(|()| publish(store, &name, &tmp, &dir));
    // Gone already after a successful rename; otherwise a failed or a losing build.
    let _ = fs::remove_dir_all(&tmp);
    drop(lock);
    result.map(|()| rootfs)
}

/// Takes this key's build lock (released when the file is dropped). `None` where the store's
/// file system has no locks: builders then race, which the rename in [`publish`] settles.
fn lock(store: &Path, name: &str) -> Result<Option<File>, RootfsError> {
    let path = store.join(format!(".lock-{name}"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| store_error(format!("cannot create the lock file {}", path.display()), e))?;
    match file.lock() {
        Ok(()) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(None),
        Err(e) => Err(store_error(format!("cannot lock {}", path.display()), e)),
    }
}

fn remove_leftovers(store: &Path, name: &str) {
    let prefix = format!("{TMP_PREFIX}{name}-");
    let Ok(entries) = fs::read_dir(store) else { return };
    for entry in entries.flatten() {
        if entry.file_name().as_bytes().starts_with(prefix.as_bytes()) {
            let _ = remove(&entry.path());
        }
    }
}

/// Unpacks `layers` into `tmp/rootfs` and writes the marker.
fn fill(tmp: &Path, key: &str, layers: &[Layer], limits: &Limits) -> Result<(), RootfsError> {
    fs::create_dir(tmp).map_err(|e| store_error(format!("cannot create {}", tmp.display()), e))?;
    let root = tmp.join(ROOTFS);
    DirBuilder::new()
        .mode(0o755)
        .create(&root)
        .map_err(|e| store_error(format!("cannot create {}", root.display()), e))?;
    let mut used = Usage::default();
    for (index, layer) in layers.iter().enumerate() {
        apply_layer(&root, index, layer, limits, &mut used)?;
    }
    let marker = tmp.join(MARKER);
    let digests: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    fs::write(&marker, format!("{key}\n{}\n", digests.join("\n")))
        .map_err(|e| store_error(format!("cannot write {}", marker.display()), e))
}

/// Renames the complete `tmp` to `dir`. Another builder may have won (fine), or `dir` may be
/// something without a marker (not ours: we only rename complete trees), which is moved aside.
fn publish(store: &Path, name: &str, tmp: &Path, dir: &Path) -> Result<(), RootfsError> {
    let first = match fs::rename(tmp, dir) {
        Ok(()) => return Ok(()),
        Err(_) if is_complete(dir) => return Ok(()),
        Err(e) => e,
    };
    if fs::symlink_metadata(dir).is_err() {
        return Err(store_error(format!("cannot move {} to {}", tmp.display(), dir.display()), first));
    }
    let aside = temp_path(store, name);
    if let Err(e) = fs::rename(dir, &aside) {
        return Err(store_error(format!("cannot move the incomplete {} aside", dir.display()), e));
    }
    let _ = remove(&aside);
    match fs::rename(tmp, dir) {
        Ok(()) => Ok(()),
        Err(_) if is_complete(dir) => Ok(()),
        Err(e) => Err(store_error(format!("cannot move {} to {}", tmp.display(), dir.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;
    use tar::Header;

    /// A tar stream written header by header, so names `tar::Builder` refuses can be tested.
    #[derive(Default, Clone)]
    struct Tar(Vec<u8>);

    impl Tar {
        fn raw(
            &mut self,
            name: &str,
            kind: EntryType,
            link: &str,
            data: &[u8],
            edit: impl FnOnce(&mut Header),
        ) -> &mut Self {
            let mut h = Header::new_gnu();
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_mode(if kind == EntryType::Directory { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            h.set_entry_type(kind);
            h.set_mtime(1_700_000_000);
            edit(&mut h);
            h.set_cksum();
            self.0.extend_from_slice(h.as_bytes());
            self.0.extend_from_slice(data);
            self.0.resize(self.0.len().next_multiple_of(512), 0);
            self
        }
        fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
            self.raw(name, EntryType::Regular, "", data, |_| {})
        }
        fn dir(&mut self, name: &str) -> &mut Self {
            self.raw(name, EntryType::Directory, "", b"", |_| {})
        }
        fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.raw(name, EntryType::Symlink, target, b"", |_| {})
        }
        fn hard_link(&mut self, name: &str, target: &str) -> &mut Self {
            self.raw(name, EntryType::Link, target, b"", |_| {})
        }
        fn device(&mut self, name: &str, kind: EntryType, major: u32, minor: u32) -> &mut Self {
            self.raw(name, kind, "", b"", |h| {
                h.set_device_major(major).unwrap();
                h.set_device_minor(minor).unwrap();
            })
        }
        /// Entries written by `tar::Builder` (long names, pax headers), without its end blocks.
        fn built(&mut self, f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> &mut Self {
            let mut b = tar::Builder::new(Vec::new());
            f(&mut b);
            self.0.extend_from_slice(b.get_ref());
            self
        }
        fn bytes(&self) -> Vec<u8> {
            let mut v = self.0.clone();
            v.extend_from_slice(&[0; 1024]);
            v
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    fn digest(n: usize) -> String {
        format!("sha256:{n:064x}")
    }

    fn blob(dir: &Path, n: usize, compression: Compression, data: &[u8]) -> Layer {
        let path = dir.join(format!("layer-{n}"));
        fs::write(&path, data).unwrap();
        Layer { digest: digest(n), compression, path }
    }

    fn apply(root: &Path, blobs: &Path, tar: &Tar) -> Result<Usage, RootfsError> {
        static N: AtomicU64 = AtomicU64::new(100);
        let n = N.fetch_add(1, Ordering::Relaxed) as usize;
        let layer = blob(blobs, n, Compression::None, &tar.bytes());
        let mut used = Usage::default();
        apply_layer(root, 0, &layer, &Limits::default(), &mut used).map(|()| used)
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    fn exists(path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok()
    }

    /// Everything under `dir` except `skip`, without following symlinks.
    fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
        fn go(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path == skip {
                    continue;
                }
                let m = fs::symlink_metadata(&path).unwrap();
                let desc = if m.file_type().is_symlink() {
                    format!("link {:?}", fs::read_link(&path).unwrap())
                } else if m.is_dir() {
                    go(&path, skip, out);
                    format!("dir {:o}", m.mode())
                } else {
                    format!("file {:o} nlink={} ino={} {:?}", m.mode(), m.nlink(), m.ino(), fs::read(&path).unwrap())
                };
                out.insert(path, desc);
            }
        }
        let mut out = BTreeMap::new();
        go(dir, skip, &mut out);
        out
    }

    fn all_names(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            out.push(entry.file_name().to_string_lossy().into_owned());
            if entry.file_type().unwrap().is_dir() {
                out.extend(all_names(&entry.path()));
            }
        }
        out
    }

    /// A root next to host files a hostile layer must not reach.
    ///
    /// These tests may run as root (CI containers), where a regression that lets a layer out
    /// could damage the machine. So the root sits 16 directories deep in its temporary
    /// directory (relative escapes stay inside it, where the snapshot sees them), and absolute
    /// symlinks used to write point where nothing can be created (`/proc`, or a missing path).
    struct Site {
        tmp: tempfile::TempDir,
        blobs: tempfile::TempDir,
        /// The root's parent, with `outside/sentinel`, `sentinel` and `link -> outside`.
        parent: PathBuf,
        root: PathBuf,
        before: BTreeMap<PathBuf, String>,
    }

    impl Site {
        fn new() -> Site {
            let tmp = tempfile::tempdir().unwrap();
            let parent = tmp.path().join(["x"; 16].join("/"));
            let root = parent.join("root");
            fs::create_dir_all(&root).unwrap();
            fs::create_dir_all(parent.join("outside/dir")).unwrap();
            fs::write(parent.join("outside/sentinel"), "precious").unwrap();
            fs::write(parent.join("sentinel"), "precious").unwrap();
            std::os::unix::fs::symlink("outside", parent.join("link")).unwrap();
            let before = snapshot(tmp.path(), &root);
            Site { tmp, blobs: tempfile::tempdir().unwrap(), parent, root, before }
        }
        fn apply(&self, tar: &Tar) -> Result<Usage, RootfsError> {
            apply(&self.root, self.blobs.path(), tar)
        }
        fn host_changes(&self) -> BTreeMap<PathBuf, String> {
            snapshot(self.tmp.path(), &self.root)
        }
        fn assert_host_untouched(&self) {
            assert_eq!(self.host_changes(), self.before, "something outside the root changed");
            assert_eq!(read(&self.parent.join("outside/sentinel")), "precious");
        }
    }

    fn running_as_root() -> bool {
        fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(true)
    }

    #[test]
    fn media_types() {
        use Compression as C;
        assert_eq!(C::from_media_type("application/vnd.oci.image.layer.v1.tar"), Some(C::None));
        assert_eq!(C::from_media_type("application/vnd.oci.image.layer.v1.tar+gzip"), Some(C::Gzip));
        assert_eq!(C::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"), Some(C::Zstd));
        assert_eq!(C::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"), Some(C::Gzip));
        assert_eq!(C::from_media_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"), Some(C::Gzip));
        assert_eq!(C::from_media_type("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"), Some(C::Gzip));
        assert_eq!(C::from_media_type("application/vnd.oci.image.config.v1+json"), None);
        assert_eq!(C::from_media_type(""), None);
    }

    #[test]
    fn two_layers_with_whiteouts() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let long_dir = format!("deep/{}", "d".repeat(120));
        let long_target = "t".repeat(150);

        let mut one = Tar::default();
        one.dir("./")
            .dir("etc/")
            .file("etc/os-release", b"one")
            .dir("usr/")
            .dir("usr/bin/")
            .raw("usr/bin/tool", EntryType::Regular, "", b"#!tool", |h| h.set_mode(0o6755))
            .symlink("bin", "usr/bin")
            .hard_link("usr/bin/tool2", "usr/bin/tool")
            .file("gone.txt", b"x")
            .dir("olddir/")
            .file("olddir/a", b"a")
            .dir("opq/")
            .file("opq/lower1", b"1")
            .dir("opq/sub/")
            .file("opq/sub/lower2", b"2")
            .file("keep.txt", b"keep")
            .file("victim", b"v")
            .raw("ro", EntryType::Directory, "", b"", |h| h.set_mode(0o555))
            .file("ro/inside", b"r")
            .device("dev/null", EntryType::Char, 1, 3)
            .device("run/fifo", EntryType::Fifo, 0, 0)
            .built(|b| {
                let mut h = Header::new_gnu();
                h.set_size(4);
                h.set_mode(0o644);
                b.append_data(&mut h, format!("{long_dir}/file"), &b"long"[..]).unwrap();
                let mut h = Header::new_gnu();
                h.set_entry_type(EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, "longlink", &long_target).unwrap();
            });
        let one = one.bytes();
        // Two gzip members.
        let (a, b) = one.split_at(one.len() / 2 + 7);
        let mut gz = gzip(a);
        gz.extend(gzip(b));

        let mut two = Tar::default();
        two.file(".wh.gone.txt", b"")
            .file(".wh.olddir", b"")
            .file(".wh.missing", b"")
            .file("bin/added", b"added")
            .dir("opq/")
            .file("opq/new", b"new")
            .dir("opq/sub/")
            .file("opq/sub/new2", b"new2")
            .file("opq/.wh..wh..opq", b"")
            .file("etc/os-release", b"two")
            .device("victim", EntryType::Char, 0, 0)
            .file("fresh", b"fresh")
            .file(".wh.fresh", b"")
            .file("ro/.wh.inside", b"")
            .file("ro/new", b"n")
            .built(|b| {
                b.append_pax_extensions([("path", &b"pax/from-pax-header"[..])]).unwrap();
                let mut h = Header::new_gnu();
                h.set_size(3);
                h.set_mode(0o644);
                b.append_data(&mut h, "placeholder", &b"pax"[..]).unwrap();
            });
        let two = two.bytes();
        // Two zstd frames with a skippable frame between them.
        let (a, b) = two.split_at(two.len() / 3);
        let mut zs = zstd(a);
        zs.extend([0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 9, 9, 9]);
        zs.extend(zstd(b));

        let layers = [blob(tmp.path(), 1, Compression::Gzip, &gz), blob(tmp.path(), 2, Compression::Zstd, &zs)];
        let mut used = Usage::default();
        for (i, layer) in layers.iter().enumerate() {
            apply_layer(&root, i, layer, &Limits::default(), &mut used).unwrap();
        }

        assert_eq!(read(&root.join("etc/os-release")), "two");
        let tool = fs::metadata(root.join("usr/bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o7777, 0o755, "setuid/setgid dropped");
        assert_eq!(read(&root.join("usr/bin/tool")), "#!tool");
        assert_eq!(fs::metadata(root.join("usr/bin/tool2")).unwrap().ino(), tool.ino());
        assert_eq!(tool.mtime(), 1_700_000_000);
        assert_eq!(fs::read_link(root.join("bin")).unwrap(), Path::new("usr/bin"));
        assert_eq!(read(&root.join("usr/bin/added")), "added", "written through the bin -> usr/bin symlink");
        assert!(!exists(&root.join("gone.txt")));
        assert!(!exists(&root.join("olddir")));
        assert_eq!(read(&root.join("opq/new")), "new");
        assert_eq!(read(&root.join("opq/sub/new2")), "new2");
        assert!(!exists(&root.join("opq/lower1")));
        assert!(!exists(&root.join("opq/sub/lower2")));
        assert_eq!(read(&root.join("keep.txt")), "keep");
        assert!(!exists(&root.join("victim")));
        assert_eq!(read(&root.join("fresh")), "fresh", "a whiteout only hides earlier layers");
        assert!(!exists(&root.join("ro/inside")));
        assert_eq!(read(&root.join("ro/new")), "n");
        assert_eq!(fs::metadata(root.join("ro")).unwrap().mode() & 0o777, 0o755, "0555 | u+rwx");
        assert!(!exists(&root.join("dev/null")));
        assert!(!exists(&root.join("run/fifo")));
        assert_eq!(read(&root.join(format!("{long_dir}/file"))), "long");
        assert_eq!(fs::read_link(root.join("longlink")).unwrap(), Path::new(&long_target));
        assert_eq!(read(&root.join("pax/from-pax-header")), "pax");
        assert!(!exists(&root.join("placeholder")));
        assert!(all_names(&root).iter().all(|n| !n.starts_with(".wh.")), "{:?}", all_names(&root));
        assert_eq!(used.skipped, 2);
        assert_eq!(used.entries, 23 + 16);
        let contents = "one#!toolxa12keepvr".len() + 4 + "addednewnew2twofreshnpax".len();
        assert_eq!(used.bytes, contents as u64);
    }

    #[test]
    fn hostile_names_are_refused() {
        let site = Site::new();
        for name in ["../x", "/../../x", "a/../../x", "./../x", "../.wh.x", "..", "a/.."] {
            let err = site.apply(Tar::default().file(name, b"pwned")).unwrap_err();
            assert!(matches!(err, RootfsError::Escapes { .. }), "{name}: {err}");
            assert!(err.to_string().contains("leaves the image root"), "{err}");
        }
        for name in [".wh...", ".wh..", ".wh.", "a/.wh..."] {
            let err = site.apply(Tar::default().file(name, b"")).unwrap_err();
            assert!(matches!(err, RootfsError::BadEntry { .. }), "{name}: {err}");
        }
        let err = site.apply(Tar::default().file("", b"")).unwrap_err();
        assert!(matches!(err, RootfsError::BadEntry { .. }), "{err}");
        let err = site.apply(Tar::default().symlink("/", "x")).unwrap_err();
        assert!(matches!(err, RootfsError::BadEntry { .. }), "{err}");
        let nul = Tar::default()
            .built(|b| {
                b.append_pax_extensions([("path", &b"a\0b"[..])]).unwrap();
                let mut h = Header::new_gnu();
                h.set_size(0);
                b.append_data(&mut h, "x", &b""[..]).unwrap();
            })
            .clone();
        assert!(matches!(site.apply(&nul).unwrap_err(), RootfsError::BadEntry { .. }));
        site.assert_host_untouched();
        assert!(all_names(&site.root).is_empty(), "{:?}", all_names(&site.root));
    }

    #[test]
    fn error_messages_name_layer_and_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let layer = blob(tmp.path(), 7, Compression::None, &Tar::default().file("../../etc/passwd", b"x").bytes());
        let err = apply_layer(&tmp.path().join("r"), 1, &layer, &Limits::default(), &mut Usage::default());
        assert_eq!(
            err.unwrap_err().to_string(),
            format!(
                "layer 2 ({}) has an entry `../../etc/passwd` that leaves the image root: the image is malformed \
                 or hostile; rebuild it",
                digest(7)
            )
        );
        let garbage = blob(tmp.path(), 8, Compression::Gzip, b"not gzip at all");
        let err = apply_layer(tmp.path(), 0, &garbage, &Limits::default(), &mut Usage::default()).unwrap_err();
        assert!(matches!(err, RootfsError::Malformed { layer: 1, .. }), "{err}");
        assert!(err.to_string().contains(&digest(8)), "{err}");
        let mut bad_sum = Tar::default().file("a", b"a").bytes();
        bad_sum[0] = b'b';
        let garbage = blob(tmp.path(), 9, Compression::None, &bad_sum);
        let err = apply_layer(tmp.path(), 0, &garbage, &Limits::default(), &mut Usage::default()).unwrap_err();
        assert!(matches!(err, RootfsError::Malformed { .. }), "{err}");
        let truncated = zstd(&Tar::default().file("a", &[7; 5000]).bytes());
        let garbage = blob(tmp.path(), 10, Compression::Zstd, &truncated[..truncated.len() / 2]);
        let err = apply_layer(tmp.path(), 0, &garbage, &Limits::default(), &mut Usage::default()).unwrap_err();
        assert!(matches!(err, RootfsError::Malformed { .. }), "{err}");
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let site = Site::new();
        // As root, a regression could write the host's /etc/passwd: aim where nothing can be created.
        let host_name = if running_as_root() { "proc/skiff-test/passwd" } else { "etc/passwd" };
        site.apply(Tar::default().symlink("evil", "/").file(&format!("evil/{host_name}"), b"root:x:0:0")).unwrap();
        assert_eq!(read(&site.root.join(host_name)), "root:x:0:0");
        site.apply(
            Tar::default()
                .symlink("up", "../../..")
                .file("up/outside/sentinel", b"pwned")
                .symlink("abs", "/../../..")
                .file("abs/proc/sentinel", b"pwned")
                .symlink("rel", "usr/../../..")
                .file("rel/link/sentinel", b"pwned")
                .file("sentinel", b"inner"),
        )
        .unwrap();
        assert_eq!(read(&site.root.join("outside/sentinel")), "pwned");
        assert_eq!(read(&site.root.join("proc/sentinel")), "pwned");
        assert_eq!(read(&site.root.join("link/sentinel")), "pwned");
        // A file or directory replaces a symlink pointing out; it is not followed.
        site.apply(
            Tar::default()
                .symlink("out", "../outside/sentinel")
                .file("out", b"replaced")
                .symlink("outdir", "../outside/dir")
                .dir("outdir/")
                .file("outdir/f", b"f"),
        )
        .unwrap();
        assert_eq!(read(&site.root.join("out")), "replaced");
        assert!(fs::symlink_metadata(site.root.join("outdir")).unwrap().is_dir());
        // Whiteouts and opaque markers through symlinks stay inside too.
        site.apply(
            Tar::default()
                .symlink("up2", "../..")
                .file("up2/outside/.wh.sentinel", b"")
                .file("up2/.wh.outside", b"")
                .file("up2/.wh.sentinel", b"")
                .device("up2/link", EntryType::Char, 0, 0),
        )
        .unwrap();
        assert!(!exists(&site.root.join("outside")));
        assert!(!exists(&site.root.join("sentinel")));
        site.apply(Tar::default().symlink("up3", "../../..").file("up3/.wh..wh..opq", b"")).unwrap();
        assert_eq!(all_names(&site.root), ["up3"], "only what the marker's own layer added stays");
        site.assert_host_untouched();
    }

    #[test]
    fn symlink_loops_end_in_an_error() {
        let site = Site::new();
        for tar in [
            Tar::default().symlink("a", "b").symlink("b", "a").file("a/x", b"x").clone(),
            Tar::default().symlink("self", "self/self").file("self/x", b"x").clone(),
            Tar::default()
                .symlink("dot", ".")
                .built(|b| {
                    let mut h = Header::new_gnu();
                    h.set_size(1);
                    h.set_mode(0o644);
                    b.append_data(&mut h, format!("{}x", "dot/".repeat(41)), &b"x"[..]).unwrap();
                })
                .clone(),
        ] {
            let err = site.apply(&tar).unwrap_err();
            assert!(err.to_string().contains("symbolic links"), "{err}");
        }
        // Within the bound is fine.
        site.apply(Tar::default().symlink("d", ".").file("d/d/d/d/x", b"x")).unwrap();
        assert_eq!(read(&site.root.join("x")), "x");
        site.assert_host_untouched();
    }

    #[test]
    fn hard_links_stay_inside() {
        let site = Site::new();
        let sentinel_host = site.parent.join("outside/sentinel");
        for target in ["../../outside/sentinel", "../outside/sentinel"] {
            let err = site.apply(Tar::default().hard_link("hl", target)).unwrap_err();
            assert!(err.to_string().contains("leaves the image root"), "{err}");
        }
        let host_passwd = if running_as_root() { "/proc/self/status" } else { "/etc/passwd" };
        for tar in [
            Tar::default().hard_link("hl", host_passwd).clone(),
            Tar::default().symlink("o", "../outside").hard_link("hl", "o/sentinel").clone(),
            Tar::default().symlink("o", "/").hard_link("hl", "o/etc/passwd").clone(),
            Tar::default().dir("d/").hard_link("hl", "d").clone(),
            Tar::default().hard_link("hl", "/").clone(),
        ] {
            let err = site.apply(&tar).unwrap_err();
            assert!(matches!(err, RootfsError::BadEntry { .. }), "{err}");
            assert!(!exists(&site.root.join("hl")));
        }
        // An absolute target resolves inside the root.
        site.apply(Tar::default().file("outside/sentinel", b"inner").hard_link("hl", "/outside/sentinel")).unwrap();
        assert_eq!(read(&site.root.join("hl")), "inner");
        // Linking a symlink links the symlink itself, not where it points.
        site.apply(Tar::default().symlink("s", "../outside/sentinel").hard_link("hl2", "s")).unwrap();
        assert!(fs::symlink_metadata(site.root.join("hl2")).unwrap().file_type().is_symlink());
        assert_eq!(fs::metadata(&sentinel_host).unwrap().nlink(), 1);
        site.assert_host_untouched();
    }

    #[test]
    fn limits_stop_bombs() {
        let tmp = tempfile::tempdir().unwrap();
        let zeros = Tar::default().file("big", &vec![0; 1 << 20]).bytes();
        let layer = blob(tmp.path(), 1, Compression::Gzip, &gzip(&zeros));
        let limits = Limits { max_bytes: 512 << 10, ..Limits::default() };
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let err = apply_layer(&root, 0, &layer, &limits, &mut Usage::default()).unwrap_err();
        assert!(matches!(err, RootfsError::TooLarge { .. }), "{err}");
        assert!(!exists(&root.join("big")), "refused before writing");

        // Across layers.
        let half = Tar::default().file("half", &vec![0; 300 << 10]).bytes();
        let half = blob(tmp.path(), 2, Compression::Zstd, &zstd(&half));
        let mut used = Usage::default();
        apply_layer(&root, 0, &half, &limits, &mut used).unwrap();
        let err = apply_layer(&root, 1, &half, &limits, &mut used).unwrap_err();
        assert!(matches!(err, RootfsError::TooLarge { layer: 2, .. }), "{err}");

        // Data on entries that are not files counts too.
        let dir_data = Tar::default().raw("d", EntryType::Directory, "", &vec![0; 600 << 10], |_| {}).bytes();
        let dir_data = blob(tmp.path(), 3, Compression::None, &dir_data);
        let err = apply_layer(&root, 0, &dir_data, &limits, &mut Usage::default()).unwrap_err();
        assert!(matches!(err, RootfsError::TooLarge { .. }), "{err}");

        let mut many = Tar::default();
        for i in 0..10 {
            many.file(&format!("f{i}"), b"");
        }
        let many = blob(tmp.path(), 4, Compression::None, &many.bytes());
        let limits = Limits { max_entries: 5, ..Limits::default() };
        let err = apply_layer(&root, 0, &many, &limits, &mut Usage::default()).unwrap_err();
        assert!(matches!(err, RootfsError::TooManyEntries { limit: 5, .. }), "{err}");

        // A 2 MiB "long name" is refused, not read into memory.
        let long = Tar::default()
            .raw("././@LongLink", EntryType::GNULongName, "", &vec![b'a'; 2 << 20], |_| {})
            .file("x", b"")
            .bytes();
        let long = blob(tmp.path(), 5, Compression::Gzip, &gzip(&long));
        let err = apply_layer(&root, 0, &long, &Limits::default(), &mut Usage::default()).unwrap_err();
        assert!(matches!(err, RootfsError::MetadataTooLarge { .. }), "{err}");
    }

    #[test]
    fn resolve_in_root_clamps() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        std::os::unix::fs::symlink("/../../usr", root.join("u")).unwrap();
        std::os::unix::fs::symlink("l", root.join("l")).unwrap();
        assert_eq!(resolve_in_root(root, Path::new("/bin/sh")).unwrap(), root.join("usr/bin/sh"));
        assert_eq!(resolve_in_root(root, Path::new("../../u/bin")).unwrap(), root.join("usr/bin"));
        assert_eq!(resolve_in_root(root, Path::new("/")).unwrap(), root);
        assert!(resolve_in_root(root, Path::new("/l")).is_err());
        assert!(resolve_in_root(root, Path::new("/missing/x")).is_err());
    }

    fn key(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    #[test]
    fn keys_are_validated() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in [
            "",
            "sha256:",
            "../x",
            "sha256:../../../../../../../../../../../../../../../../../../../../../../x",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "a".repeat(63)),
            &format!("md5:{}", "a".repeat(64)),
            &format!("sha256:{}/", "a".repeat(63)),
        ] {
            let err = build(tmp.path(), bad, &[], &Limits::default()).unwrap_err();
            assert!(matches!(err, RootfsError::InvalidKey { .. }), "{bad}: {err}");
        }
        assert!(fs::read_dir(tmp.path()).unwrap().next().is_none());
        let dir = build(tmp.path(), &key(1), &[], &Limits::default()).unwrap();
        assert_eq!(dir, tmp.path().join(format!("sha256-{}/rootfs", "01".repeat(32))));
    }

    fn store_names(store: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(store).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn build_is_idempotent_and_atomic() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let layer = blob(tmp.path(), 1, Compression::Gzip, &gzip(&Tar::default().file("etc/hello", b"hi").bytes()));
        let name = format!("sha256-{}", "02".repeat(32));
        // A crashed build left a temporary tree; an interrupted one left a directory without marker.
        fs::create_dir_all(store.join(format!(".tmp-{name}-99999-3/rootfs/half"))).unwrap();
        fs::create_dir_all(store.join(format!("{name}/rootfs/garbage"))).unwrap();
        let root = build(&store, &key(2), std::slice::from_ref(&layer), &Limits::default()).unwrap();
        assert_eq!(root, store.join(&name).join("rootfs"));
        assert_eq!(read(&root.join("etc/hello")), "hi");
        assert!(!exists(&root.join("garbage")));
        assert_eq!(store_names(&store), [format!(".lock-{name}"), name.clone()]);
        // Done once: the layers are not read again.
        let gone = Layer { path: tmp.path().join("nonexistent"), ..layer.clone() };
        assert_eq!(build(&store, &key(2), std::slice::from_ref(&gone), &Limits::default()).unwrap(), root);
        // A failed build leaves nothing behind.
        let err = build(&store, &key(3), &[gone], &Limits::default()).unwrap_err();
        assert!(matches!(err, RootfsError::Io { .. }), "{err}");
        let hostile = blob(tmp.path(), 4, Compression::None, &Tar::default().file("ok", b"").file("../x", b"").bytes());
        assert!(build(&store, &key(4), &[hostile], &Limits::default()).is_err());
        let names = store_names(&store);
        assert!(names.iter().all(|n| n.starts_with(".lock-") || *n == name), "{names:?}");
    }

    #[test]
    fn concurrent_builds_agree() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let mut tar = Tar::default();
        for i in 0..200 {
            tar.file(&format!("d{}/f{i}", i % 7), format!("{i}").as_bytes());
        }
        let layer = blob(tmp.path(), 1, Compression::Zstd, &zstd(&tar.bytes()));
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| build(&store, &key(5), std::slice::from_ref(&layer), &Limits::default())))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        assert!(results.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(read(&results[0].join("d3/f199")), "199");
        let name = format!("sha256-{}", "05".repeat(32));
        assert_eq!(store_names(&store), [format!(".lock-{name}"), name]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        File(String),
        Dir(String),
        Symlink(String, String),
        HardLink(String, String),
        Whiteout(String, &'static str),
        Opaque(String),
        OverlayWhiteout(String),
        Fifo(String),
    }

    /// Mostly valid names: a layer stops at its first refused entry, so `..` is rare here.
    fn component() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            12 => prop::sample::select(&["a", "b", "evil", "outside", "sentinel", "link"][..]),
            2 => prop::sample::select(&[".", ""][..]),
            1 => Just(".."),
        ]
    }

    fn name() -> impl Strategy<Value = String> {
        (any::<bool>(), prop::collection::vec(component(), 1..3))
            .prop_map(|(abs, parts)| format!("{}{}", if abs { "/" } else { "" }, parts.join("/")))
    }

    /// Symlink targets are never refused: ones leaving the root (`..`, absolute) are frequent.
    /// Absolute ones start in a directory the host lacks, so that even a regression that followed
    /// them on the host (as root) could create nothing there; inside the root, `..` after it
    /// still reaches everything.
    fn target() -> impl Strategy<Value = String> {
        let parts = prop::collection::vec(
            prop::sample::select(&["a", "b", "evil", "..", "..", "outside", "sentinel", "link", "."][..]),
            0..4,
        );
        prop_oneof![
            3 => parts.clone().prop_map(|p| format!("../{}", p.join("/"))),
            1 => parts.prop_map(|p| format!("/{}", p.join("/"))),
            1 => name(),
            1 => prop::sample::select(&["..", "../..", "../outside", "../outside/sentinel", "/../outside/sentinel"][..])
                .prop_map(String::from),
        ]
        .prop_map(|t| if t.starts_with('/') { format!("/.skiff-absent{t}") } else { t })
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => name().prop_map(Op::File),
            2 => name().prop_map(Op::Dir),
            4 => (name(), target()).prop_map(|(n, t)| Op::Symlink(n, t)),
            2 => (name(), prop_oneof![3 => name(), 1 => target()]).prop_map(|(n, t)| Op::HardLink(n, t)),
            2 => (name(), prop::sample::select(&["a", "b", "..", ".", "", "outside", "sentinel", "evil", "link"][..]))
                .prop_map(|(n, t)| Op::Whiteout(n, t)),
            1 => name().prop_map(Op::Opaque),
            1 => name().prop_map(Op::OverlayWhiteout),
            1 => name().prop_map(Op::Fifo),
        ]
    }

    fn layer_of(ops: &[Op]) -> Tar {
        let mut t = Tar::default();
        for op in ops {
            match op {
                Op::File(n) => t.file(n, b"pwned"),
                Op::Dir(n) => t.dir(n),
                Op::Symlink(n, target) => t.symlink(n, target),
                Op::HardLink(n, target) => t.hard_link(n, target),
                Op::Whiteout(dir, n) => t.file(&format!("{dir}/.wh.{n}"), b""),
                Op::Opaque(dir) => t.file(&format!("{dir}/.wh..wh..opq"), b""),
                Op::OverlayWhiteout(n) => t.device(n, EntryType::Char, 0, 0),
                Op::Fifo(n) => t.device(n, EntryType::Fifo, 0, 0),
            };
        }
        t
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn layers_never_touch_the_host(layers in prop::collection::vec(prop::collection::vec(op(), 0..14), 1..3)) {
            let site = Site::new();
            for ops in &layers {
                let _ = site.apply(&layer_of(ops));
            }
            prop_assert_eq!(site.host_changes(), site.before.clone());
        }
    }
}
