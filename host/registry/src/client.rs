//! Talking to OCI registries through `oci-client`: components as Wasm OCI artifacts in the
//! layout of the CNCF Wasm OCI artifact spec (what `wkg oci push` writes), and cosign signature
//! manifests beside them. Every byte that comes back is checked against the digest it was asked
//! for, and sizes are bounded, since a registry is not trusted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use skiff_pipeline::component_ref::{ComponentRef, Digest};

use crate::RegistryError;

/// The config media type of a Wasm artifact.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The one layer's media type: the component's bytes.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The manifest media type Skiff writes.
pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const ACCEPTED_MANIFESTS: [&str; 2] = [OCI_MANIFEST_MEDIA_TYPE, "application/vnd.docker.distribution.manifest.v2+json"];
/// What an image reference may name: one manifest, or an index of one per platform.
const ACCEPTED_IMAGE_MANIFESTS: [&str; 4] = [
    OCI_MANIFEST_MEDIA_TYPE,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
/// The largest manifest or config read.
const MAX_MANIFEST: u64 = 4 << 20;
/// The largest component read (a step component is rarely over a few MiB; boa's is 4.6).
pub const MAX_COMPONENT: u64 = 128 << 20;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Plain HTTP to any registry (otherwise only to loopback addresses).
    pub insecure: bool,
    /// Credentials for every registry, instead of Docker's `config.json`.
    pub credentials: Option<(String, String)>,
}

/// A manifest pulled and checked.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The manifest's digest (what references pin).
    pub digest: Digest,
    /// Its raw bytes (hash to `digest`).
    pub raw: Vec<u8>,
    /// Parsed.
    pub manifest: OciImageManifest,
}

/// One client per registry, created as needed.
pub struct RegistryClient {
    options: ClientOptions,
    clients: Mutex<HashMap<String, Arc<Client>>>,
}

/// Whether `registry` (`host[:port]`) is a loopback address.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl RegistryClient {
    pub fn new(options: ClientOptions) -> Self {
        // reqwest is built without a crypto provider: use ring, as the rest of Skiff does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self { options, clients: Mutex::new(HashMap::new()) }
    }

    fn client(&self, registry: &str) -> Arc<Client> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(registry.to_string())
            .or_insert_with(|| {
                let http = self.options.insecure || is_loopback(registry);
                Arc::new(Client::new(oci_client::client::ClientConfig {
                    protocol: if http {
                        oci_client::client::ClientProtocol::Http
                    } else {
                        oci_client::client::ClientProtocol::Https
                    },
                    ..Default::default()
                }))
            })
            .clone()
    }

    /// Credentials for `registry`: given ones, else Docker's `config.json` (and its helpers),
    /// else anonymous (a registry's Bearer challenge is answered either way).
    fn auth(&self, registry: &str) -> RegistryAuth {
        if let Some((u, p)) = &self.options.credentials {
            return RegistryAuth::Basic(u.clone(), p.clone());
        }
        match docker_credential::get_credential(registry) {
            Ok(docker_credential::DockerCredential::UsernamePassword(u, p)) => RegistryAuth::Basic(u, p),
            Ok(docker_credential::DockerCredential::IdentityToken(t)) => RegistryAuth::Bearer(t),
            Err(_) => RegistryAuth::Anonymous,
        }
    }

    fn error(registry: &str, what: &str, e: oci_client::errors::OciDistributionError) -> RegistryError {
        use oci_client::errors::OciDistributionError as E;
        match e {
            E::AuthenticationFailure(m) => RegistryError::Auth { registry: registry.into(), message: m },
            E::UnauthorizedError { url } => {
                RegistryError::Auth { registry: registry.into(), message: format!("unauthorized at {url}") }
            }
            E::ImageManifestNotFoundError(_) => RegistryError::NotFound(what.into()),
            E::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|x| {
                    use oci_client::errors::OciErrorCode as C;
                    matches!(x.code, C::ManifestUnknown | C::BlobUnknown | C::NameUnknown | C::ManifestBlobUnknown)
                }) =>
            {
                RegistryError::NotFound(what.into())
            }
            E::ServerError { code: 404, .. } => RegistryError::NotFound(what.into()),
            E::ServerError { code: 401 | 403, message, .. } => {
                RegistryError::Auth { registry: registry.into(), message }
            }
            E::RequestError(r) => RegistryError::Unreachable { registry: registry.into(), cause: error_chain(&r) },
            other => RegistryError::Protocol { registry: registry.into(), message: other.to_string() },
        }
    }

    fn reference(r: &ComponentRef, at: Option<&str>) -> Result<(String, Reference), RegistryError> {
        let ComponentRef::Oci { registry, repository, tag, digest } = r else {
            return Err(RegistryError::NotARegistryReference(r.to_string()));
        };
        let reference = match (at, digest, tag) {
            (Some(t), ..) => Reference::with_tag(registry.clone(), repository.clone(), t.to_string()),
            (None, Some(d), _) => Reference::with_digest(registry.clone(), repository.clone(), d.to_string()),
            (None, None, Some(t)) => Reference::with_tag(registry.clone(), repository.clone(), t.clone()),
            (None, None, None) => return Err(RegistryError::NotARegistryReference(r.to_string())),
        };
        Ok((registry.clone(), reference))
    }

    /// The digest a tag points at now.
    pub async fn resolve(&self, r: &ComponentRef) -> Result<Digest, RegistryError> {
        Ok(self.pull_manifest_at(r, None).await?.digest)
    }

    /// The manifest `r` names (by digest when pinned, else by tag), checked against the digest.
    pub async fn pull_manifest(&self, r: &ComponentRef) -> Result<Pulled, RegistryError> {
        self.pull_manifest_at(r, None).await
    }

    /// The manifest under another tag of the same repository (a signature's `sha256-….sig`).
    pub async fn pull_manifest_tag(&self, r: &ComponentRef, tag: &str) -> Result<Pulled, RegistryError> {
        self.pull_manifest_at(r, Some(tag)).await
    }

    /// The digest an image tag points at now (an index's, for a multi-platform image).
    pub async fn resolve_image(&self, r: &ComponentRef) -> Result<Digest, RegistryError> {
        Ok(self.pull_raw(r, None, &ACCEPTED_IMAGE_MANIFESTS).await?.1)
    }

    /// The manifest or index an image reference names, checked against its digest when pinned.
    pub async fn pull_image_manifest(&self, r: &ComponentRef) -> Result<(Digest, OciManifest), RegistryError> {
        let (raw, digest) = self.pull_raw(r, None, &ACCEPTED_IMAGE_MANIFESTS).await?;
        let manifest: OciManifest = serde_json::from_slice(&raw).map_err(|e| RegistryError::Protocol {
            registry: r.repository_ref().unwrap_or_default(),
            message: format!("the manifest of {r} is neither an image manifest nor an index ({e})"),
        })?;
        Ok((digest, manifest))
    }

    /// A manifest's raw bytes (at most [`MAX_MANIFEST`]) and digest, checked against `r`'s
    /// digest when `r` is pinned and no other tag is asked for.
    async fn pull_raw(
        &self,
        r: &ComponentRef,
        tag: Option<&str>,
        accept: &[&str],
    ) -> Result<(Vec<u8>, Digest), RegistryError> {
        let (registry, reference) = Self::reference(r, tag)?;
        let client = self.client(&registry);
        let what = match tag {
            Some(t) => format!("{}:{t}", r.repository_ref().unwrap_or_default()),
            None => r.to_string(),
        };
        let (raw, _) = client
            .pull_manifest_raw(&reference, &self.auth(&registry), accept)
            .await
            .map_err(|e| Self::error(&registry, &what, e))?;
        if raw.len() as u64 > MAX_MANIFEST {
            return Err(RegistryError::TooLarge { what, limit: MAX_MANIFEST });
        }
        let digest = Digest::of(&raw);
        if tag.is_none()
            && let Some(want) = r.digest()
            && want != &digest
        {
            return Err(RegistryError::DigestMismatch { what, expected: want.clone(), actual: digest });
        }
        Ok((raw.to_vec(), digest))
    }

    async fn pull_manifest_at(&self, r: &ComponentRef, tag: Option<&str>) -> Result<Pulled, RegistryError> {
        let what = match tag {
            Some(t) => format!("{}:{t}", r.repository_ref().unwrap_or_default()),
            None => r.to_string(),
        };
        let (raw, digest) = self.pull_raw(r, tag, &ACCEPTED_MANIFESTS).await?;
        let manifest: OciManifest = serde_json::from_slice(&raw).map_err(|e| RegistryError::NotAComponent {
            reference: what.clone(),
            why: format!("its manifest is not an OCI image manifest ({e})"),
        })?;
        let OciManifest::Image(manifest) = manifest else {
            return Err(RegistryError::NotAComponent {
                reference: what,
                why: "it is an image index (several platforms), not one Wasm artifact".into(),
            });
        };
        Ok(Pulled { digest, raw, manifest })
    }

    /// A blob of `r`'s repository, at most `limit` bytes, checked against its digest.
    pub async fn pull_blob(
        &self,
        r: &ComponentRef,
        desc: &OciDescriptor,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut bytes = Vec::with_capacity(desc.size.clamp(0, 64 << 20) as usize);
        self.pull_blob_into(r, desc, limit, |chunk| {
            bytes.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(bytes)
    }

    /// A blob of `r`'s repository streamed into the file `dest` (through a temporary file beside
    /// it, renamed once its digest is checked), at most `limit` bytes: image layers can be large.
    pub async fn pull_blob_to_file(
        &self,
        r: &ComponentRef,
        desc: &OciDescriptor,
        limit: u64,
        dest: &std::path::Path,
    ) -> Result<(), RegistryError> {
        use std::io::Write as _;
        let dir = dest.parent().unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{}.part{}", desc.digest.replace(':', "-"), std::process::id()));
        let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        let result = self.pull_blob_into(r, desc, limit, |chunk| Ok(file.write_all(chunk)?)).await;
        let result = result.and_then(|()| Ok(file.flush()?));
        drop(file);
        match result {
            Ok(()) => Ok(std::fs::rename(&tmp, dest)?),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Streams a blob into `sink`, chunk by chunk: at most `limit` bytes, and its sha256 checked
    /// against the digest the manifest gives before this returns `Ok`.
    async fn pull_blob_into(
        &self,
        r: &ComponentRef,
        desc: &OciDescriptor,
        limit: u64,
        mut sink: impl FnMut(&[u8]) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        use sha2::Digest as _;
        let (registry, reference) = Self::reference(r, None)?;
        let want = Digest::parse(&desc.digest).map_err(|_| RegistryError::Protocol {
            registry: registry.clone(),
            message: format!("the manifest names blob `{}`, which is not a sha256 digest", desc.digest),
        })?;
        let what = format!("{} blob {want}", r.repository_ref().unwrap_or_default());
        if desc.size < 0 || desc.size as u64 > limit {
            return Err(RegistryError::TooLarge { what, limit });
        }
        let client = self.client(&registry);
        client.store_auth_if_needed(&registry, &self.auth(&registry)).await;
        let mut stream =
            client.pull_blob_stream(&reference, desc).await.map_err(|e| Self::error(&registry, &what, e))?;
        let mut hasher = sha2::Sha256::new();
        let mut received = 0u64;
        let actual = |hasher: &sha2::Sha256| {
            Digest::from_hex(&hex::encode(hasher.clone().finalize())).expect("a sha256 is a digest")
        };
        while let Some(chunk) = stream.stream.next().await {
            let chunk = chunk.map_err(|e| match e.get_ref().map(|x| x.to_string()) {
                // oci-client checks the digest as the stream ends; report it as ours.
                Some(m) if m.contains("digest") => RegistryError::DigestMismatch {
                    what: what.clone(),
                    expected: want.clone(),
                    actual: actual(&hasher),
                },
                _ => RegistryError::Unreachable { registry: registry.clone(), cause: e.to_string() },
            })?;
            received += chunk.len() as u64;
            if received > limit {
                return Err(RegistryError::TooLarge { what, limit });
            }
            hasher.update(&chunk);
            sink(&chunk)?;
        }
        let actual = actual(&hasher);
        if actual != want {
            return Err(RegistryError::DigestMismatch { what, expected: want, actual });
        }
        Ok(())
    }

    /// Pushes blobs and a manifest under `tag` (or `r`'s own tag); returns the manifest digest.
    pub async fn push(
        &self,
        r: &ComponentRef,
        tag: Option<&str>,
        blobs: &[&[u8]],
        manifest: &OciImageManifest,
    ) -> Result<Digest, RegistryError> {
        let (registry, reference) = Self::reference(r, tag)?;
        let client = self.client(&registry);
        let what = r.to_string();
        // Push needs push rights: ask for them once up front, so a refusal is an auth error.
        client
            .auth(&reference, &self.auth(&registry), oci_client::RegistryOperation::Push)
            .await
            .map_err(|e| Self::error(&registry, &what, e))?;
        for blob in blobs {
            let digest = Digest::of(blob).to_string();
            if !client.blob_exists(&reference, &digest).await.unwrap_or(false) {
                client
                    .push_blob(&reference, blob.to_vec(), &digest)
                    .await
                    .map_err(|e| Self::error(&registry, &what, e))?;
            }
        }
        let raw = serde_json::to_vec(manifest).expect("a manifest serializes");
        let content_type = http::HeaderValue::from_static(OCI_MANIFEST_MEDIA_TYPE);
        client
            .push_manifest_raw(&reference, raw.clone(), content_type)
            .await
            .map_err(|e| Self::error(&registry, &what, e))?;
        Ok(Digest::of(&raw))
    }
}

/// An error and its causes, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// A descriptor of `bytes` with this media type.
pub fn descriptor(media_type: &str, bytes: &[u8], annotations: Option<BTreeMap<String, String>>) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.into(),
        digest: Digest::of(bytes).to_string(),
        size: bytes.len() as i64,
        annotations,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_registries_are_plain_http() {
        for r in ["127.0.0.1:5000", "localhost:5000", "[::1]:5000", "localhost", "127.0.0.2"] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["ghcr.io", "10.0.0.1:5000", "example.com:5000", "localhost.example.com"] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}
