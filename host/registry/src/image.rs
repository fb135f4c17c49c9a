//! Container images for `run:` steps (`container:` of a job, `image:` of a step): pulled with
//! the same client, credentials and policy as shared components, every blob checked against
//! its digest, and unpacked once per image into the runtime's `ImageStore`, where the
//! executor finds it by the digest the plan pins.
//!
//! An index (several platforms) resolves to its linux/amd64 manifest; layers may be plain,
//! gzip or zstd tars; whiteouts are applied as the OCI image spec says
//! (`skiff_sandbox::rootfs`).

use std::time::Duration;

use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use skiff_pipeline::component_ref::{ComponentRef, Digest};
use skiff_runtime::image_store::PreparedImage;
use skiff_runtime::sandbox::rootfs;

use crate::{Policy, RegistryError, Resolver};

/// How long pulling and unpacking one image may take.
pub const IMAGE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The largest image config read.
const MAX_CONFIG: u64 = 4 << 20;
/// The largest single layer blob.
const MAX_LAYER: u64 = 16 << 30;
/// The platform Skiff's sandbox runs.
const OS: &str = "linux";
const ARCH: &str = "amd64";

/// An image ready on this host.
#[derive(Debug, Clone)]
pub struct FetchedImage {
    /// The reference pinned to the digest it was resolved to.
    pub reference: ComponentRef,
    pub image: PreparedImage,
    /// Nothing had to be pulled.
    pub cached: bool,
    /// The reference was a tag without a pin, resolved now.
    pub unpinned: bool,
}

/// The parts of an image config (`application/vnd.oci.image.config.v1+json`) that matter here.
#[derive(Debug, Default, serde::Deserialize)]
struct ImageConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

impl Resolver {
    /// Pulls (or finds) the image `r` names and unpacks it, within [`IMAGE_TIMEOUT`].
    pub async fn fetch_image(&self, r: &ComponentRef, policy: &Policy) -> Result<FetchedImage, RegistryError> {
        policy.check_source(r)?;
        if matches!(r, ComponentRef::Url { .. }) {
            return Err(RegistryError::NotAnImage { reference: r.to_string(), why: "a URL is not an image".into() });
        }
        let (pinned, unpinned) = match r.digest() {
            Some(_) => (r.clone(), false),
            None if policy.allow_unpinned => (r.pinned(self.client().resolve_image(r).await?), true),
            None => return Err(RegistryError::Unpinned(r.to_string())),
        };
        let digest = pinned.digest().expect("pinned").clone();
        let lock = {
            let mut locks = self.image_locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(digest.clone()).or_default().clone()
        };
        let _one_pull = lock.lock().await;
        if let Some(image) = self.images.lookup(&digest) {
            return Ok(FetchedImage { reference: pinned, image, cached: true, unpinned });
        }
        let image = tokio::time::timeout(IMAGE_TIMEOUT, self.pull_image(&pinned, &digest)).await.map_err(|_| {
            RegistryError::Unreachable {
                registry: pinned.repository_ref().unwrap_or_default(),
                cause: format!("pulling image `{pinned}` took longer than {} minutes", IMAGE_TIMEOUT.as_secs() / 60),
            }
        })??;
        Ok(FetchedImage { reference: pinned, image, cached: false, unpinned })
    }

    async fn pull_image(&self, pinned: &ComponentRef, digest: &Digest) -> Result<PreparedImage, RegistryError> {
        let not_image = |why: String| RegistryError::NotAnImage { reference: pinned.to_string(), why };
        let (_, manifest) = self.client().pull_image_manifest(pinned).await?;
        let (manifest_digest, manifest) = match manifest {
            OciManifest::Image(m) => (digest.clone(), m),
            OciManifest::ImageIndex(index) => {
                let entry = index
                    .manifests
                    .iter()
                    .find(|m| {
                        m.platform
                            .as_ref()
                            .is_some_and(|p| p.os.to_string() == OS && p.architecture.to_string() == ARCH)
                    })
                    .ok_or_else(|| {
                        let platforms: Vec<String> = index
                            .manifests
                            .iter()
                            .filter_map(|m| m.platform.as_ref())
                            .map(|p| format!("{}/{}", p.os, p.architecture))
                            .collect();
                        not_image(format!("it has no {OS}/{ARCH} image (it has: {})", platforms.join(", ")))
                    })?;
                let d = Digest::parse(&entry.digest).map_err(|_| {
                    not_image(format!("its index names `{}`, which is not a sha256 digest", entry.digest))
                })?;
                let one = pinned.pinned(d.clone());
                match self.client().pull_image_manifest(&one).await? {
                    (_, OciManifest::Image(m)) => (d, m),
                    (_, OciManifest::ImageIndex(_)) => return Err(not_image("its index names another index".into())),
                }
            }
        };
        let config = self.image_config(pinned, &manifest).await?;
        if !config.os.is_empty()
            && (config.os != OS || (!config.architecture.is_empty() && config.architecture != ARCH))
        {
            return Err(not_image(format!(
                "it is built for {}/{}, and this host runs {OS}/{ARCH} images",
                config.os, config.architecture
            )));
        }
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (n, desc) in manifest.layers.iter().enumerate() {
            layers.push(self.layer(pinned, n, desc).await?);
        }
        let store = self.images.rootfs_dir();
        let key = manifest_digest.to_string();
        let rootfs =
            tokio::task::spawn_blocking(move || rootfs::build(&store, &key, &layers, &rootfs::Limits::default()))
                .await
                .map_err(|e| not_image(format!("unpacking it failed: {e}")))?
                .map_err(|e| not_image(e.to_string()))?;
        let run = config.config.unwrap_or_default();
        let image = PreparedImage {
            reference: pinned.to_string(),
            manifest: manifest_digest.to_string(),
            rootfs,
            env: run.env.unwrap_or_default(),
            working_dir: run.working_dir.unwrap_or_default(),
            user: run.user.unwrap_or_default(),
        };
        image.user().map_err(not_image)?;
        self.images.record(digest, &image)?;
        Ok(image)
    }

    async fn image_config(&self, r: &ComponentRef, m: &OciImageManifest) -> Result<ImageConfig, RegistryError> {
        let bytes = self.client().pull_blob(r, &m.config, MAX_CONFIG).await?;
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::NotAnImage {
            reference: r.to_string(),
            why: format!("its config ({}) is not an image config: {e}", m.config.media_type),
        })
    }

    /// One layer blob in the store (pulled unless it is there and still matches its digest).
    async fn layer(&self, r: &ComponentRef, n: usize, desc: &OciDescriptor) -> Result<rootfs::Layer, RegistryError> {
        let compression =
            rootfs::Compression::from_media_type(&desc.media_type).ok_or_else(|| RegistryError::NotAnImage {
                reference: r.to_string(),
                why: format!(
                    "layer {} has media type `{}`; Skiff unpacks tar layers, plain, gzip or zstd",
                    n + 1,
                    desc.media_type
                ),
            })?;
        let digest = Digest::parse(&desc.digest).map_err(|_| RegistryError::NotAnImage {
            reference: r.to_string(),
            why: format!("layer {} names `{}`, which is not a sha256 digest", n + 1, desc.digest),
        })?;
        let path = self.images.blob_path(&digest);
        if !blob_matches(&path, &digest).await {
            self.client().pull_blob_to_file(r, desc, MAX_LAYER, &path).await?;
        }
        Ok(rootfs::Layer { digest: digest.to_string(), compression, path })
    }
}

/// Whether the stored blob is there and hashes to its digest (a file changed on disk is pulled again).
async fn blob_matches(path: &std::path::Path, digest: &Digest) -> bool {
    let path = path.to_path_buf();
    let digest = digest.clone();
    tokio::task::spawn_blocking(move || {
        use sha2::Digest as _;
        let Ok(mut file) = std::fs::File::open(&path) else { return false };
        let mut hasher = sha2::Sha256::new();
        if std::io::copy(&mut file, &mut hasher).is_err() {
            return false;
        }
        hex::encode(hasher.finalize()) == digest.hex()
    })
    .await
    .unwrap_or(false)
}
