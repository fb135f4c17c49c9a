//! Shared step components. A pipeline names a component by reference (`uses:
//! REGISTRY/NAMESPACE/NAME:TAG`, `…@sha256:…`, `https://…#sha256=…`); this crate fetches it
//! from an OCI registry ([`client`]) or a URL into the runtime's content-addressed store,
//! checks cosign-compatible signatures ([`signature`]) and the host's policy ([`resolve`])
//! before anything runs, and publishes components ([`publish`]). Container images for `run:`
//! steps come through the same client and policy ([`image`]).

pub mod client;
pub mod image;
pub mod publish;
pub mod resolve;
pub mod signature;
pub mod spin_app;

use skiff_pipeline::component_ref::Digest;

pub use resolve::{Fetched, Policy, Prepared, Resolver};

/// Why a shared component cannot be used; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A tag with no digest, where the policy wants pins.
    #[error(
        "`{0}` is a tag without a digest: run `skiff lock` (it writes .skiff/lock.yaml) and commit the lock file, write the reference with `@sha256:…`, or allow unpinned tags for this app (`allow-unpinned = true`)"
    )]
    Unpinned(String),
    /// Nothing under that name.
    #[error("`{0}` was not found in the registry: check the name and tag (`skiff step inspect REF`)")]
    NotFound(String),
    /// The registry refused the credentials.
    #[error(
        "registry {registry} refused the credentials ({message}): log in with `docker login {registry}` (Docker's config.json is read) or pass --username with --password-stdin"
    )]
    Auth {
        /// `host[:port]`.
        registry: String,
        /// What it said.
        message: String,
    },
    /// Down, or not a registry.
    #[error(
        "cannot reach registry {registry} ({cause}); components already in the local store still run, this one is not there"
    )]
    Unreachable {
        /// `host[:port]`.
        registry: String,
        /// Why.
        cause: String,
    },
    /// The registry answered something that is not the protocol.
    #[error("registry {registry}: {message}")]
    Protocol {
        /// `host[:port]`.
        registry: String,
        /// What went wrong.
        message: String,
    },
    /// Bytes that do not hash to the digest they were asked by.
    #[error("{what}: the bytes received do not match digest {expected} (they hash to {actual}); refusing them")]
    DigestMismatch {
        /// What was fetched.
        what: String,
        /// The digest asked for.
        expected: Digest,
        /// What came.
        actual: Digest,
    },
    /// More than a component may be.
    #[error("{what} is larger than {limit} bytes; refusing it")]
    TooLarge {
        /// What was fetched.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// An artifact that is not a Wasm component.
    #[error(
        "`{reference}` is not a WebAssembly component artifact: {why}. Skiff runs components pushed by `skiff step publish` or `wkg oci push`"
    )]
    NotAComponent {
        /// The reference.
        reference: String,
        /// What it is instead.
        why: String,
    },
    /// Signatures are required and there is none.
    #[error(
        "`{reference}` is not signed, and this app requires signatures: sign it with `skiff step sign --key KEY {reference}` (or `cosign sign --key`)"
    )]
    Unsigned {
        /// The reference.
        reference: String,
    },
    /// Signed, but by no trusted key, or the signature is bad.
    #[error("`{reference}` has no valid signature by a trusted key: {why}")]
    BadSignature {
        /// The reference.
        reference: String,
        /// Every signature's reason.
        why: String,
    },
    /// A URL reference with a signature requirement, or an operation only registries have.
    #[error("`{0}` is not a registry reference (REGISTRY/NAMESPACE/NAME:TAG)")]
    NotARegistryReference(String),
    /// Fetching a URL failed.
    #[error("cannot fetch {url}: {cause}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        cause: String,
    },
    /// A registry or host the configuration does not allow.
    #[error(
        "`{reference}` comes from {origin}, which this host does not allow (allowed: {allowed}); add it to `[registry] allowed` in skiff.toml"
    )]
    SourceNotAllowed {
        /// The reference.
        reference: String,
        /// Its registry or host.
        origin: String,
        /// What is allowed.
        allowed: String,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] skiff_runtime::component_store::StoreError),
    /// Something that is not a container image Skiff can run.
    #[error("`{reference}` cannot be used as a container image: {why}")]
    NotAnImage {
        /// The reference.
        reference: String,
        /// What is wrong with it.
        why: String,
    },
    /// The local disk failed (the image or component store).
    #[error("the local store failed: {0}")]
    Io(#[from] std::io::Error),
}
