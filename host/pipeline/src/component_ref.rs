//! References to shared step components, as written in `uses:`:
//!
//! - `REGISTRY/NAMESPACE/NAME:TAG`, `…@sha256:HEX`, `…:TAG@sha256:HEX`, and the same behind
//!   `oci://`: a Wasm OCI artifact in a registry;
//! - `https://HOST/PATH.wasm#sha256=HEX`: a component file on a web server, which must carry its
//!   hash, since nothing else pins it.
//!
//! Parsing is strict (the OCI distribution grammar for names, tags and digests): a reference
//! reaches a registry's URLs, so nothing loose gets through.

use std::fmt;

/// A sha256 content digest, `sha256:` and 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:HEX`.
    pub fn parse(s: &str) -> Result<Self, RefError> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| RefError::Digest(s.into()))?;
        Self::from_hex(hex).map_err(|_| RefError::Digest(s.into()))
    }

    /// From 64 hex digits (either case).
    pub fn from_hex(hex: &str) -> Result<Self, RefError> {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RefError::Digest(hex.into()));
        }
        Ok(Self(format!("sha256:{}", hex.to_ascii_lowercase())))
    }

    /// The digest of these bytes.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self(format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes))))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The 32 bytes.
    pub fn bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex::decode_to_slice(self.hex(), &mut out).expect("validated when parsed");
        out
    }

    /// `sha256:HEX`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A component in a registry or at a URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ComponentRef {
    /// A Wasm OCI artifact.
    Oci {
        /// `host[:port]`.
        registry: String,
        /// `namespace/name` (one or more path components).
        repository: String,
        /// The tag, when written.
        tag: Option<String>,
        /// The manifest digest, when written or locked.
        digest: Option<Digest>,
    },
    /// A component file over HTTPS (or HTTP to a loopback address).
    Url {
        /// Without the fragment.
        url: String,
        /// The sha256 of the file's bytes.
        digest: Digest,
    },
}

/// Why a `uses:` value is not a component reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// A malformed digest.
    #[error("`{0}` is not a digest: write `sha256:` and 64 hex digits")]
    Digest(String),
    /// A URL without its hash.
    #[error(
        "`{0}` needs its hash, since nothing else pins what a URL serves: append `#sha256=` and the file's sha256 (`sha256sum FILE`)"
    )]
    UrlWithoutHash(String),
    /// A URL that is not HTTPS or not a `.wasm` file.
    #[error("`{0}`: {1}")]
    Url(String, &'static str),
    /// A registry reference with neither tag nor digest.
    #[error("`{0}` names no version: add a tag (`:1.0.0`) or a digest (`@sha256:…`)")]
    NoVersion(String),
    /// A bad registry host.
    #[error("`{0}`: `{1}` is not a registry host (`host`, `host:port`, or `localhost:port`)")]
    Registry(String, String),
    /// A bad repository path.
    #[error(
        "`{0}`: `{1}` is not a repository name (lowercase letters, digits, and `.`, `_`, `-` between them; `/` between components)"
    )]
    Repository(String, String),
    /// A bad tag.
    #[error("`{0}`: `{1}` is not a tag (letters, digits, `_`, `.`, `-`; at most 128, not starting with `.` or `-`)")]
    Tag(String, String),
    /// Too long to be a reference.
    #[error("a component reference is at most 1024 characters")]
    TooLong,
}

/// Whether `uses:` text is meant as a registry or URL reference (and not a local path or a
/// built-in name): `oci://`, `http(s)://`, or a first path component that is a host (it has a
/// `.` or a `:`, or is `localhost`), as Docker decides, and no `.wasm` ending.
pub fn looks_like_reference(u: &str) -> bool {
    if u.starts_with("oci://") || u.starts_with("https://") || u.starts_with("http://") {
        return true;
    }
    // Another scheme (`builtin://`) is not a registry either.
    if u.starts_with('.') || u.starts_with('/') || u.ends_with(".wasm") || u.contains("://") {
        return false;
    }
    let port =
        |h: &str| h.rsplit_once(':').is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    match u.split_once('/') {
        Some((first, _)) => first.contains('.') || first.starts_with('[') || port(first) || first == "localhost",
        None => false,
    }
}

impl ComponentRef {
    /// Parses a reference (see the module docs).
    pub fn parse(s: &str) -> Result<Self, RefError> {
        if s.len() > 1024 {
            return Err(RefError::TooLong);
        }
        if s.starts_with("https://") || s.starts_with("http://") {
            return parse_url(s);
        }
        let rest = s.strip_prefix("oci://").unwrap_or(s);
        let (rest, digest) = match rest.rsplit_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d)?)),
            None => (rest, None),
        };
        let (registry, path) = rest.split_once('/').ok_or_else(|| RefError::Repository(s.into(), rest.into()))?;
        if !valid_registry(registry) {
            return Err(RefError::Registry(s.into(), registry.into()));
        }
        // A tag follows the last `:` after the last `/`.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t)),
            _ => (path, None),
        };
        if !valid_repository(repository) {
            return Err(RefError::Repository(s.into(), repository.into()));
        }
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(RefError::Tag(s.into(), t.into()));
        }
        if tag.is_none() && digest.is_none() {
            return Err(RefError::NoVersion(s.into()));
        }
        Ok(Self::Oci {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// Parses a container image reference as Docker does: a first component that is not a host
    /// means Docker Hub (`node:20` is `docker.io/library/node:20`), and no tag means `latest`.
    /// URLs are not images.
    pub fn parse_image(s: &str) -> Result<Self, RefError> {
        let t = s.trim();
        if t.contains("://") && !t.starts_with("oci://") {
            return Err(RefError::Url(s.into(), "an image is named `registry/repository:tag`, not by a URL"));
        }
        let bare = t.strip_prefix("oci://").unwrap_or(t);
        let (name, digest) = match bare.rsplit_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (bare, None),
        };
        let mut full = if looks_like_reference(name) || name.starts_with("localhost/") {
            name.to_string()
        } else if name.contains('/') {
            format!("docker.io/{name}")
        } else {
            format!("docker.io/library/{name}")
        };
        let last = full.rsplit('/').next().unwrap_or_default();
        if !last.contains(':') && digest.is_none() {
            full.push_str(":latest");
        }
        if let Some(d) = digest {
            full.push('@');
            full.push_str(d);
        }
        Self::parse(&full)
    }

    /// The digest, when the reference is pinned.
    pub fn digest(&self) -> Option<&Digest> {
        match self {
            Self::Oci { digest, .. } => digest.as_ref(),
            Self::Url { digest, .. } => Some(digest),
        }
    }

    /// The same reference pinned to `digest` (an OCI reference; a URL is pinned already).
    pub fn pinned(&self, d: Digest) -> Self {
        match self {
            Self::Oci { registry, repository, tag, .. } => Self::Oci {
                registry: registry.clone(),
                repository: repository.clone(),
                tag: tag.clone(),
                digest: Some(d),
            },
            Self::Url { .. } => self.clone(),
        }
    }

    /// What a lock file keys this reference by: registry, repository and tag, without digest.
    pub fn lock_key(&self) -> String {
        match self {
            Self::Oci { registry, repository, tag, .. } => match tag {
                Some(t) => format!("{registry}/{repository}:{t}"),
                None => format!("{registry}/{repository}"),
            },
            Self::Url { url, .. } => url.clone(),
        }
    }

    /// `registry/repository`, what a cosign signature names (`docker-reference`).
    pub fn repository_ref(&self) -> Option<String> {
        match self {
            Self::Oci { registry, repository, .. } => Some(format!("{registry}/{repository}")),
            Self::Url { .. } => None,
        }
    }
}

impl fmt::Display for ComponentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Oci { digest, .. } => {
                f.write_str(&self.lock_key())?;
                if let Some(d) = digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
            Self::Url { url, digest } => write!(f, "{url}#sha256={}", digest.hex()),
        }
    }
}

fn parse_url(s: &str) -> Result<ComponentRef, RefError> {
    let (url, fragment) = match s.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (s, None),
    };
    let Some(fragment) = fragment else { return Err(RefError::UrlWithoutHash(s.into())) };
    let hex = fragment.strip_prefix("sha256=").ok_or_else(|| RefError::UrlWithoutHash(s.into()))?;
    let digest = Digest::from_hex(hex)?;
    let after = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let host = after.split(['/', '?']).next().unwrap_or_default();
    if host.is_empty() || host.contains('@') || !host.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RefError::Url(s.into(), "the URL has no valid host"));
    }
    if url.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(RefError::Url(s.into(), "a URL cannot contain spaces or control characters"));
    }
    Ok(ComponentRef::Url { url: url.to_string(), digest })
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || r.starts_with('[') => (h, Some(p)),
        _ => (r, None),
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` per component, `/` between.
fn valid_repository(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && r.split('/').all(|c| {
            let b = c.as_bytes();
            if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
                return false;
            }
            let mut i = 0;
            while i < b.len() {
                if is_alnum(b[i]) {
                    i += 1;
                    continue;
                }
                let sep_start = i;
                while i < b.len() && !is_alnum(b[i]) {
                    i += 1;
                }
                let sep = &c[sep_start..i];
                if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
                    return false;
                }
            }
            true
        })
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

#[cfg(test)]
mod tests {

    #[test]
    fn images_are_named_as_docker_names_them() {
        let image = |s: &str| ComponentRef::parse_image(s).map(|r| r.to_string());
        assert_eq!(image("node:20").unwrap(), "docker.io/library/node:20");
        assert_eq!(image("node").unwrap(), "docker.io/library/node:latest");
        assert_eq!(image("bitnami/node:20").unwrap(), "docker.io/bitnami/node:20");
        assert_eq!(image("127.0.0.1:5000/t/busybox:1").unwrap(), "127.0.0.1:5000/t/busybox:1");
        assert_eq!(image("ghcr.io/a/b").unwrap(), "ghcr.io/a/b:latest");
        let d = Digest::of(b"x");
        assert_eq!(image(&format!("ghcr.io/a/b@{d}")).unwrap(), format!("ghcr.io/a/b@{d}"));
        assert!(image("https://x.example/a.wasm#sha256=00").is_err());
        assert!(image("Node:20").is_err(), "upper case is not a repository");
        assert!(image("node:20@sha256:12").is_err());
    }
    use super::*;

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn registry_references_parse_in_every_written_form() {
        let r = ComponentRef::parse("127.0.0.1:5000/acme/notify:1.0.0").unwrap();
        assert_eq!(
            r,
            ComponentRef::Oci {
                registry: "127.0.0.1:5000".into(),
                repository: "acme/notify".into(),
                tag: Some("1.0.0".into()),
                digest: None
            }
        );
        assert_eq!(r.to_string(), "127.0.0.1:5000/acme/notify:1.0.0");
        let d = ComponentRef::parse(&format!("oci://ghcr.io/acme/tools/notify@sha256:{HEX}")).unwrap();
        assert_eq!(d.digest().unwrap().hex(), HEX);
        assert_eq!(d.to_string(), format!("ghcr.io/acme/tools/notify@sha256:{HEX}"));
        let both = ComponentRef::parse(&format!("localhost:5000/a/b:v1@sha256:{}", HEX.to_uppercase())).unwrap();
        assert_eq!(both.lock_key(), "localhost:5000/a/b:v1");
        assert_eq!(both.digest().unwrap().as_str(), format!("sha256:{HEX}"));
        assert_eq!(both.repository_ref().unwrap(), "localhost:5000/a/b");
        let v6 = ComponentRef::parse("[::1]:5000/a/b:1").unwrap();
        assert_eq!(v6.lock_key(), "[::1]:5000/a/b:1");
    }

    #[test]
    fn urls_must_carry_their_hash() {
        let u = ComponentRef::parse(&format!("https://steps.example.com/x.wasm#sha256={HEX}")).unwrap();
        assert_eq!(
            u,
            ComponentRef::Url {
                url: "https://steps.example.com/x.wasm".into(),
                digest: Digest::from_hex(HEX).unwrap()
            }
        );
        let e = ComponentRef::parse("https://steps.example.com/x.wasm").unwrap_err().to_string();
        assert!(e.contains("#sha256="), "{e}");
        assert!(ComponentRef::parse("https://steps.example.com/x.wasm#sha256=abc").is_err());
        assert!(ComponentRef::parse(&format!("https://user@evil/x.wasm#sha256={HEX}")).is_err());
    }

    #[test]
    fn bad_references_say_what_to_fix() {
        for (bad, says) in [
            ("ghcr.io/acme/notify", "add a tag"),
            ("ghcr.io/Acme/notify:1", "not a repository name"),
            ("ghcr.io/acme/notify:.bad", "not a tag"),
            ("ghcr.io/acme//notify:1", "not a repository name"),
            ("ghcr.io/acme/notify@sha256:12", "not a digest"),
            ("ghcr.io/acme/notify@md5:12", "not a digest"),
            ("gh_cr.io/acme/notify:1", "not a registry host"),
            ("ghcr.io:99999x/a:1", "not a registry host"),
            ("ghcr.io/a-/b:1", "not a repository name"),
        ] {
            let e = ComponentRef::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(ComponentRef::parse(&"a".repeat(2000)), Err(RefError::TooLong));
    }

    #[test]
    fn paths_and_builtins_are_not_references() {
        assert!(looks_like_reference("ghcr.io/acme/notify:1"));
        assert!(looks_like_reference("localhost/acme/notify:1"));
        assert!(looks_like_reference("127.0.0.1:5000/a/b:1"));
        assert!(looks_like_reference("oci://x/y:1"));
        assert!(!looks_like_reference("steps/hello.wasm"));
        assert!(!looks_like_reference("./x"));
        assert!(!looks_like_reference("notify"));
        assert!(!looks_like_reference("build/out/x"));
        assert!(!looks_like_reference("builtin://upload"));
        assert!(!looks_like_reference("file://x/y:1"));
        assert!(looks_like_reference("[::1]:5000/a/b:1"));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics_and_round_trips(s in "\\PC{0,80}") {
            if let Ok(r) = ComponentRef::parse(&s) {
                proptest::prop_assert_eq!(ComponentRef::parse(&r.to_string()).unwrap(), r);
            }
        }

        #[test]
        fn well_formed_references_round_trip(
            reg in "[a-z][a-z0-9]{0,8}(\\.[a-z]{2,4})(:[0-9]{1,5})?",
            repo in "[a-z0-9]{1,6}(/[a-z0-9]{1,6}([._-][a-z0-9]{1,3})?){0,3}",
            tag in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}",
        ) {
            let s = format!("{reg}/{repo}:{tag}");
            let r = ComponentRef::parse(&s).unwrap();
            proptest::prop_assert_eq!(r.to_string(), s);
        }
    }
}
