//! Before a run starts: every shared component the pipeline uses is pinned (a digest written or
//! locked, or a tag resolved where the policy allows), fetched into the content-addressed store
//! unless it is there, checked to be a Wasm component, and, where the policy requires,
//! signed by a trusted key. Anything refused stops the run before any step runs, with the
//! reason. A run whose components (and signatures) are in the store needs no registry.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use oci_client::manifest::OciImageManifest;
use skiff_pipeline::Plan;
use skiff_pipeline::component_ref::{ComponentRef, Digest};
use skiff_pipeline::plan::Uses;
use skiff_runtime::component_store::ComponentStore;

use crate::RegistryError;
use crate::client::{
    ClientOptions, MAX_COMPONENT, RegistryClient, WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE, error_chain,
    is_loopback,
};
use crate::signature::{self, PublicKey};

/// What a host or an app demands of shared components.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Tags without a digest are resolved at run time (otherwise refused).
    pub allow_unpinned: bool,
    /// Only components signed by one of `trusted_keys` run.
    pub require_signature: bool,
    /// Keys whose signatures are trusted.
    pub trusted_keys: Vec<PublicKey>,
    /// The registries (`host[:port]`) and URL hosts components may come from; any when `None`.
    /// A host that runs pipelines from pushed commits sets it, so a pipeline cannot make the
    /// host call addresses inside its network.
    pub registries: Option<Vec<String>>,
}

impl Policy {
    /// Refuses a reference to a registry or host the policy does not list.
    pub fn check_source(&self, r: &ComponentRef) -> Result<(), RegistryError> {
        let Some(allowed) = &self.registries else { return Ok(()) };
        let source = match r {
            ComponentRef::Oci { registry, .. } => registry.clone(),
            ComponentRef::Url { url, .. } => {
                let after = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
                after.split(['/', '?', '#']).next().unwrap_or_default().to_string()
            }
        };
        if allowed.iter().any(|a| a.eq_ignore_ascii_case(&source)) {
            return Ok(());
        }
        Err(RegistryError::SourceNotAllowed { reference: r.to_string(), origin: source, allowed: allowed.join(", ") })
    }
}

/// One component ready to run.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The reference, pinned to its manifest digest.
    pub reference: ComponentRef,
    /// The sha256 of the component's bytes (in the store).
    pub content: Digest,
    /// Came entirely from the local store.
    pub cached: bool,
    /// The fingerprint of the trusted key that signed it, when checked.
    pub signed_by: Option<String>,
    /// The reference was a tag without a pin, resolved now.
    pub unpinned: bool,
}

/// What [`Resolver::prepare`] made ready for a run.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    pub components: Vec<Fetched>,
    pub images: Vec<crate::image::FetchedImage>,
}

/// Fetches and checks shared components into a [`ComponentStore`].
pub struct Resolver {
    client: RegistryClient,
    store: ComponentStore,
    pub(crate) images: skiff_runtime::image_store::ImageStore,
    /// One pull of an image at a time per digest in this process: concurrent runs wait for it.
    pub(crate) image_locks: std::sync::Mutex<std::collections::HashMap<Digest, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    insecure: bool,
}

/// How long fetching one component (manifest, bytes, signatures) may take.
pub const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// The largest signature payload read.
const MAX_PAYLOAD: u64 = 64 << 10;
/// Signature layers looked at in one signature manifest.
const MAX_SIGNATURES: usize = 32;

#[derive(serde::Serialize, serde::Deserialize)]
struct CachedSignature {
    payload: String,
    signature: String,
}

impl Resolver {
    pub fn new(store: ComponentStore, options: ClientOptions) -> Self {
        let insecure = options.insecure;
        Self {
            client: RegistryClient::new(options),
            store,
            images: skiff_runtime::image_store::ImageStore::default_store(),
            image_locks: Default::default(),
            insecure,
        }
    }

    /// Container images go into `images` (the executor's store) instead of the default one.
    pub fn with_images(mut self, images: skiff_runtime::image_store::ImageStore) -> Self {
        self.images = images;
        self
    }

    pub fn images(&self) -> &skiff_runtime::image_store::ImageStore {
        &self.images
    }

    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    pub fn store(&self) -> &ComponentStore {
        &self.store
    }

    /// Fetches and checks every shared component of `plan` and records each one's content
    /// digest in the plan, so its steps run exactly those bytes; pulls and unpacks its container
    /// images and pins them in the plan.
    pub async fn prepare(&self, plan: &mut Plan, policy: &Policy) -> Result<Prepared, RegistryError> {
        let mut done: Vec<(ComponentRef, Fetched)> = Vec::new();
        for job in &mut plan.jobs {
            for step in &mut job.steps {
                let Uses::Component { reference, content, .. } = &mut step.uses else { continue };
                let fetched = match done.iter().find(|(r, _)| r == reference) {
                    Some((_, f)) => f.clone(),
                    None => {
                        let f = self.fetch(reference, policy).await?;
                        done.push((reference.clone(), f.clone()));
                        f
                    }
                };
                *content = Some(fetched.content.clone());
                *reference = fetched.reference.clone();
            }
        }
        // Container images: pulled and unpacked once, pinned in the plan.
        let mut images: Vec<(ComponentRef, crate::image::FetchedImage)> = Vec::new();
        for step in plan.jobs.iter_mut().flat_map(|j| &mut j.steps) {
            let Some(image) = &mut step.image else { continue };
            let pinned = match images.iter().find(|(r, _)| r == &image.reference) {
                Some((_, f)) => f.reference.clone(),
                None => {
                    let f = self.fetch_image(&image.reference, policy).await?;
                    let pinned = f.reference.clone();
                    images.push((image.reference.clone(), f));
                    pinned
                }
            };
            image.reference = pinned;
        }
        Ok(Prepared {
            components: done.into_iter().map(|(_, f)| f).collect(),
            images: images.into_iter().map(|(_, f)| f).collect(),
        })
    }

    /// Fetches and checks one component, within [`FETCH_TIMEOUT`]: a registry that answers
    /// slowly or never does not hold a run's start forever.
    pub async fn fetch(&self, r: &ComponentRef, policy: &Policy) -> Result<Fetched, RegistryError> {
        policy.check_source(r)?;
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_checked(r, policy)).await {
            Ok(result) => result,
            Err(_) => Err(RegistryError::Unreachable {
                registry: r.repository_ref().unwrap_or_else(|| r.to_string()),
                cause: format!("fetching `{r}` took longer than {} s", FETCH_TIMEOUT.as_secs()),
            }),
        }
    }

    async fn fetch_checked(&self, r: &ComponentRef, policy: &Policy) -> Result<Fetched, RegistryError> {
        match r {
            ComponentRef::Url { url, digest } => {
                if policy.require_signature {
                    return Err(RegistryError::BadSignature {
                        reference: r.to_string(),
                        why: "a component fetched from a URL carries no signature; publish it to a registry and sign it there".into(),
                    });
                }
                let cached = self.store.contains(digest);
                if !cached {
                    let bytes = self.get_url(url).await?;
                    self.store.put(digest, &bytes).map_err(|e| match e {
                        skiff_runtime::component_store::StoreError::Mismatch { expected, actual } => {
                            RegistryError::DigestMismatch { what: url.clone(), expected, actual }
                        }
                        other => other.into(),
                    })?;
                    check_component(&r.to_string(), &bytes)?;
                }
                Ok(Fetched { reference: r.clone(), content: digest.clone(), cached, signed_by: None, unpinned: false })
            }
            ComponentRef::Oci { .. } => self.fetch_oci(r, policy).await,
        }
    }

    async fn fetch_oci(&self, r: &ComponentRef, policy: &Policy) -> Result<Fetched, RegistryError> {
        let (pinned, mut cached) = match r.digest() {
            Some(_) => (r.clone(), true),
            None if policy.allow_unpinned => (r.pinned(self.client.resolve(r).await?), false),
            None => return Err(RegistryError::Unpinned(r.to_string())),
        };
        let digest = pinned.digest().expect("pinned").clone();
        let manifest = match self.cached_manifest(&digest) {
            Some(m) => m,
            None => {
                cached = false;
                let pulled = self.client.pull_manifest(&pinned).await?;
                self.write_meta("manifests", &digest, &pulled.raw);
                pulled.manifest
            }
        };
        let layer = component_layer(&pinned.to_string(), &manifest)?;
        let content = Digest::parse(&layer.digest).map_err(|_| RegistryError::NotAComponent {
            reference: pinned.to_string(),
            why: format!("its layer digest `{}` is not sha256", layer.digest),
        })?;
        if !self.store.contains(&content) {
            cached = false;
            let bytes = self.client.pull_blob(&pinned, layer, MAX_COMPONENT).await?;
            check_component(&pinned.to_string(), &bytes)?;
            self.store.put(&content, &bytes)?;
        }
        let signed_by = if policy.require_signature {
            let (key, from_cache) = self.verify_signature(&pinned, &digest, &policy.trusted_keys).await?;
            cached &= from_cache;
            Some(key)
        } else {
            None
        };
        Ok(Fetched { reference: pinned, content, cached, signed_by, unpinned: r.digest().is_none() })
    }

    /// A signature by a trusted key over `digest`, from the store's copy when one verifies, else
    /// from the registry (`sha256-HEX.sig`). Returns the key's fingerprint and whether the store
    /// sufficed.
    pub(crate) async fn verify_signature(
        &self,
        r: &ComponentRef,
        digest: &Digest,
        keys: &[PublicKey],
    ) -> Result<(String, bool), RegistryError> {
        let reference = r.to_string();
        if keys.is_empty() {
            return Err(RegistryError::BadSignature {
                reference,
                why: "signatures are required but no key is trusted: add `trusted-keys` (PEM public keys) to the configuration".into(),
            });
        }
        let mut why = Vec::new();
        if let Some(sigs) =
            self.read_meta("signatures", digest).and_then(|b| serde_json::from_slice::<Vec<CachedSignature>>(&b).ok())
        {
            for s in &sigs {
                let Ok(payload) = base64::engine::general_purpose::STANDARD.decode(&s.payload) else { continue };
                if let Ok(i) = signature::verify(keys, &payload, &s.signature, digest.as_str()) {
                    return Ok((keys[i].fingerprint(), true));
                }
            }
        }
        let tag = signature::signature_tag(digest.as_str())
            .map_err(|e| RegistryError::BadSignature { reference: reference.clone(), why: e.to_string() })?;
        let sig_manifest = match self.client.pull_manifest_tag(r, &tag).await {
            Ok(p) => p.manifest,
            Err(RegistryError::NotFound(_)) => return Err(RegistryError::Unsigned { reference }),
            Err(e) => return Err(e),
        };
        let mut seen = Vec::new();
        for layer in sig_manifest.layers.iter().take(MAX_SIGNATURES) {
            if layer.media_type != signature::SIMPLE_SIGNING_MEDIA_TYPE {
                continue;
            }
            let Some(sig) = layer.annotations.as_ref().and_then(|a| a.get(signature::SIGNATURE_ANNOTATION)) else {
                why.push("a signature layer without its signature annotation".to_string());
                continue;
            };
            let payload = match self.client.pull_blob(r, layer, MAX_PAYLOAD).await {
                Ok(p) => p,
                Err(e) => {
                    why.push(e.to_string());
                    continue;
                }
            };
            match signature::verify(keys, &payload, sig, digest.as_str()) {
                Ok(i) => {
                    seen.push(CachedSignature {
                        payload: base64::engine::general_purpose::STANDARD.encode(&payload),
                        signature: sig.clone(),
                    });
                    let json = serde_json::to_vec(&seen).expect("serializes");
                    self.write_meta("signatures", digest, &json);
                    return Ok((keys[i].fingerprint(), false));
                }
                Err(e) => why.push(e.to_string()),
            }
        }
        if why.is_empty() {
            return Err(RegistryError::Unsigned { reference });
        }
        Err(RegistryError::BadSignature { reference, why: why.join("; ") })
    }

    fn meta_path(&self, kind: &str, d: &Digest) -> PathBuf {
        self.store.dir().join(kind).join(format!("{}.json", d.hex()))
    }

    /// A manifest from the store, checked against its digest.
    fn cached_manifest(&self, d: &Digest) -> Option<OciImageManifest> {
        let raw = std::fs::read(self.meta_path("manifests", d)).ok()?;
        if &Digest::of(&raw) != d {
            let _ = std::fs::remove_file(self.meta_path("manifests", d));
            return None;
        }
        serde_json::from_slice(&raw).ok()
    }

    fn read_meta(&self, kind: &str, d: &Digest) -> Option<Vec<u8>> {
        std::fs::read(self.meta_path(kind, d)).ok()
    }

    /// Best effort: a cache entry that cannot be written is fetched again next time.
    fn write_meta(&self, kind: &str, d: &Digest, bytes: &[u8]) {
        let path = self.meta_path(kind, d);
        if let Some(dir) = path.parent()
            && std::fs::create_dir_all(dir).is_ok()
        {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
    }

    async fn get_url(&self, url: &str) -> Result<Vec<u8>, RegistryError> {
        let err = |cause: String| RegistryError::Url { url: url.into(), cause };
        let parsed = reqwest::Url::parse(url).map_err(|e| err(e.to_string()))?;
        let host = parsed.host_str().unwrap_or_default();
        if parsed.scheme() != "https" && !(self.insecure || is_loopback(host)) {
            return Err(err(
                "plain HTTP is allowed only to loopback addresses (or with --insecure): use https://".into()
            ));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(5))
            .timeout(std::time::Duration::from_secs(300))
            .build()
            .map_err(|e| err(e.to_string()))?;
        let mut resp = client.get(parsed).send().await.map_err(|e| err(error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(err(format!("the server answered {}", resp.status())));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| err(error_chain(&e)))? {
            if bytes.len() as u64 + chunk.len() as u64 > MAX_COMPONENT {
                return Err(RegistryError::TooLarge { what: url.into(), limit: MAX_COMPONENT });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

/// The component layer of a Wasm artifact manifest.
pub fn component_layer<'m>(
    reference: &str,
    m: &'m OciImageManifest,
) -> Result<&'m oci_client::manifest::OciDescriptor, RegistryError> {
    let not = |why: String| RegistryError::NotAComponent { reference: reference.into(), why };
    if m.config.media_type != WASM_CONFIG_MEDIA_TYPE {
        return Err(not(format!(
            "its config media type is `{}`, not `{WASM_CONFIG_MEDIA_TYPE}` (a container image?)",
            m.config.media_type
        )));
    }
    let mut wasm = m.layers.iter().filter(|l| l.media_type == WASM_LAYER_MEDIA_TYPE);
    match (wasm.next(), wasm.next()) {
        (Some(l), None) => Ok(l),
        (None, _) => Err(not(format!("it has no `{WASM_LAYER_MEDIA_TYPE}` layer"))),
        (Some(_), Some(_)) => Err(not(format!("it has several `{WASM_LAYER_MEDIA_TYPE}` layers"))),
    }
}

/// Refuses bytes that are not a WebAssembly component (a core module, or not Wasm at all).
pub fn check_component(reference: &str, bytes: &[u8]) -> Result<(), RegistryError> {
    let not = |why: &str| RegistryError::NotAComponent { reference: reference.into(), why: why.into() };
    if !bytes.starts_with(b"\0asm") || bytes.len() < 8 {
        return Err(not("its bytes are not WebAssembly"));
    }
    if bytes[4..8] != [0x0d, 0x00, 0x01, 0x00] {
        return Err(not("it is a core WebAssembly module, not a component (build for wasm32-wasip2)"));
    }
    Ok(())
}

/// A shared handle, as hosts keep one resolver for all runs.
pub type SharedResolver = Arc<Resolver>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_registries_and_hosts_are_fetched_from() {
        let policy = Policy { registries: Some(vec!["ghcr.io".into(), "127.0.0.1:5000".into()]), ..Policy::default() };
        let ok = |s: &str| policy.check_source(&ComponentRef::parse(s).unwrap());
        assert!(ok("ghcr.io/acme/x:1").is_ok());
        assert!(ok("127.0.0.1:5000/acme/x:1").is_ok());
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        for bad in [
            "169.254.169.254/latest/meta:1".to_string(),
            "127.0.0.1:8080/acme/x:1".to_string(),
            format!("http://127.0.0.1:5000.evil.example/x.wasm#sha256={hex}"),
            format!("https://ghcr.io.evil.example/x.wasm#sha256={hex}"),
        ] {
            let e = ok(&bad).unwrap_err().to_string();
            assert!(e.contains("does not allow") && e.contains("[registry] allowed"), "{bad}: {e}");
        }
        assert!(ok(&format!("https://ghcr.io/x.wasm#sha256={hex}")).is_ok());
        assert!(Policy::default().check_source(&ComponentRef::parse("example.com/a/b:1").unwrap()).is_ok());
    }
}
