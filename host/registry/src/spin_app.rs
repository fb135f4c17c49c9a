//! Spin applications in registries, as `spin registry push` (and Skiff's `spin-push` step)
//! store them: an image manifest whose layers are the components' Wasm, static files, and the
//! *locked app* JSON that ties them together. `skiff edge up --from REF` pulls one with the
//! same client, credentials and policy as step components (pins, allowed registries,
//! signatures), every blob checked against its digest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use skiff_pipeline::component_ref::{ComponentRef, Digest};

use crate::client::MAX_COMPONENT;
use crate::{Policy, RegistryError, Resolver};

/// Media type of the locked app layer.
pub const LOCKED_APP_MEDIA_TYPE: &str = "application/vnd.fermyon.spin.application.v1+config";
/// Media types of a component's Wasm layer (Spin's, and wkg's).
pub const WASM_MEDIA_TYPES: [&str; 2] = ["application/vnd.wasm.content.layer.v1+wasm", "application/wasm"];
/// The largest locked app read.
const MAX_LOCKED: u64 = 4 << 20;

/// A Spin application on this machine.
#[derive(Debug, Clone)]
pub struct PulledSpinApp {
    /// The reference pinned to the manifest digest it resolved to.
    pub reference: ComponentRef,
    /// The locked app JSON.
    pub locked: Vec<u8>,
    /// Each Wasm layer's file, by digest (`sha256:…`).
    pub wasm: BTreeMap<String, PathBuf>,
    /// The key fingerprint of the signature that verified, when the policy requires one.
    pub signed_by: Option<String>,
}

impl Resolver {
    /// Pulls the Spin application `r` names into `cache` (`<cache>/<manifest digest>/`), or finds
    /// it there.
    pub async fn fetch_spin_app(
        &self,
        r: &ComponentRef,
        policy: &Policy,
        cache: &Path,
    ) -> Result<PulledSpinApp, RegistryError> {
        policy.check_source(r)?;
        let not_app = |why: String| RegistryError::NotAComponent { reference: r.to_string(), why };
        if matches!(r, ComponentRef::Url { .. }) {
            return Err(not_app("a URL is not a registry reference".into()));
        }
        if r.digest().is_none() && !policy.allow_unpinned {
            return Err(RegistryError::Unpinned(r.to_string()));
        }
        let pulled = self.client().pull_manifest(r).await?;
        let pinned = r.pinned(pulled.digest.clone());
        let mut locked = None;
        let mut wasm_layers = Vec::new();
        for layer in &pulled.manifest.layers {
            if layer.media_type == LOCKED_APP_MEDIA_TYPE {
                if locked.replace(layer).is_some() {
                    return Err(not_app("it has two locked app layers".into()));
                }
            } else if WASM_MEDIA_TYPES.contains(&layer.media_type.as_str()) {
                wasm_layers.push(layer);
            }
        }
        let locked = locked.ok_or_else(|| {
            not_app(format!(
                "it has no `{LOCKED_APP_MEDIA_TYPE}` layer, so it is not a Spin application (push one with the \
                 `spin-push` step or `spin registry push`)"
            ))
        })?;
        let signed_by = if policy.require_signature {
            Some(self.verify_signature(&pinned, &pulled.digest, &policy.trusted_keys).await?.0)
        } else {
            None
        };
        let dir = cache.join(pulled.digest.as_str().replace(':', "-"));
        let locked_path = dir.join("locked.json");
        let locked_bytes = match std::fs::read(&locked_path) {
            Ok(b) if Digest::of(&b).as_str() == locked.digest => b,
            _ => {
                let b = self.client().pull_blob(&pinned, locked, MAX_LOCKED).await?;
                std::fs::create_dir_all(&dir)?;
                std::fs::write(&locked_path, &b)?;
                b
            }
        };
        let mut wasm = BTreeMap::new();
        for layer in wasm_layers {
            let d = Digest::parse(&layer.digest)
                .map_err(|_| not_app(format!("its layer digest `{}` is not sha256", layer.digest)))?;
            let path = dir.join(format!("{}.wasm", d.as_str().replace(':', "-")));
            // Files are renamed into place only once their digest checked out.
            if !path.exists() {
                self.client().pull_blob_to_file(&pinned, layer, MAX_COMPONENT, &path).await?;
            }
            wasm.insert(layer.digest.clone(), path);
        }
        Ok(PulledSpinApp { reference: pinned, locked: locked_bytes, wasm, signed_by })
    }
}
