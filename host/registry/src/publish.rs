//! Publishing: a step component becomes a Wasm OCI artifact (config
//! `application/vnd.wasm.config.v0+json`, one `application/wasm` layer, as `wkg oci push`
//! writes), with what the step declares (name, version, description, source, the capabilities
//! it asks for) as annotations, so `skiff step inspect` shows them before anyone pulls the
//! bytes. Signing pushes a cosign signature manifest under `sha256-HEX.sig`.

use std::collections::BTreeMap;

use oci_client::manifest::{OciDescriptor, OciImageManifest};
use skiff_pipeline::component_ref::{ComponentRef, Digest};
use skiff_runtime::bindings::Manifest;

use crate::RegistryError;
use crate::client::{
    OCI_MANIFEST_MEDIA_TYPE, RegistryClient, WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE, descriptor,
};
use crate::signature::{self, SigningKey};

/// Annotation keys: the OCI standard ones, and Skiff's for what a step declares.
pub mod annotation {
    pub const TITLE: &str = "org.opencontainers.image.title";
    pub const VERSION: &str = "org.opencontainers.image.version";
    pub const DESCRIPTION: &str = "org.opencontainers.image.description";
    pub const SOURCE: &str = "org.opencontainers.image.source";
    pub const CREATED: &str = "org.opencontainers.image.created";
    /// JSON: `{"hosts": [...], "secrets": [...], "process": bool}`.
    pub const CAPABILITIES: &str = "dev.skiff.step.capabilities";
    /// JSON: the inputs and outputs the step declares.
    pub const INTERFACE: &str = "dev.skiff.step.interface";
}

/// The annotations recording what a step declares.
pub fn annotations(m: &Manifest, source: Option<&str>) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(annotation::TITLE.into(), m.name.clone());
    a.insert(annotation::VERSION.into(), m.version.clone());
    a.insert(annotation::DESCRIPTION.into(), m.description.clone());
    if let Some(s) = source {
        a.insert(annotation::SOURCE.into(), s.to_string());
    }
    a.insert(annotation::CREATED.into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let c = &m.capabilities;
    a.insert(
        annotation::CAPABILITIES.into(),
        serde_json::json!({"hosts": c.hosts, "secrets": c.secrets, "process": c.process}).to_string(),
    );
    a.insert(
        annotation::INTERFACE.into(),
        serde_json::json!({
            "inputs": m.inputs.iter().map(|i| serde_json::json!({"name": i.name, "description": i.description, "required": i.required, "default": i.default})).collect::<Vec<_>>(),
            "outputs": m.outputs.iter().map(|o| serde_json::json!({"name": o.name, "description": o.description})).collect::<Vec<_>>(),
        })
        .to_string(),
    );
    a
}

/// The config blob of the Wasm OCI artifact spec.
pub fn config(layer: &Digest, imports: &[String], exports: &[String], created: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "created": created,
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer.as_str()],
        "component": {"exports": exports, "imports": imports, "target": null},
    }))
    .expect("json serializes")
}

/// An image manifest of one config and these layers.
pub fn manifest(
    config: OciDescriptor,
    layers: Vec<OciDescriptor>,
    annotations: Option<BTreeMap<String, String>>,
) -> OciImageManifest {
    OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST_MEDIA_TYPE.into()),
        config,
        layers,
        annotations,
        ..Default::default()
    }
}

/// Pushes a component (already checked to be a step) under `r`'s tag; returns the manifest
/// digest that `uses: …@sha256:` and lock files pin.
pub async fn push_component(
    client: &RegistryClient,
    r: &ComponentRef,
    bytes: &[u8],
    annotations: BTreeMap<String, String>,
    imports: &[String],
    exports: &[String],
) -> Result<Digest, RegistryError> {
    let layer_digest = Digest::of(bytes);
    let created = annotations.get(annotation::CREATED).cloned().unwrap_or_default();
    let config = config(&layer_digest, imports, exports, &created);
    let m = manifest(
        descriptor(WASM_CONFIG_MEDIA_TYPE, &config, None),
        vec![descriptor(WASM_LAYER_MEDIA_TYPE, bytes, None)],
        Some(annotations),
    );
    client.push(r, None, &[bytes, &config], &m).await
}

/// Signs the manifest `digest` of `r`'s repository with `key` in cosign's format and pushes
/// the signature manifest under `sha256-HEX.sig` (keeping signatures already there).
pub async fn sign(
    client: &RegistryClient,
    r: &ComponentRef,
    digest: &Digest,
    key: &SigningKey,
) -> Result<(), RegistryError> {
    let repo = r.repository_ref().ok_or_else(|| RegistryError::NotARegistryReference(r.to_string()))?;
    let pinned = r.pinned(digest.clone());
    let tag = signature::signature_tag(digest.as_str())
        .map_err(|e| RegistryError::BadSignature { reference: pinned.to_string(), why: e.to_string() })?;
    let payload = signature::payload(&repo, digest.as_str());
    let sig = key.sign(&payload);
    let mut layer_annotations = BTreeMap::new();
    layer_annotations.insert(signature::SIGNATURE_ANNOTATION.to_string(), sig);
    let layer = descriptor(signature::SIMPLE_SIGNING_MEDIA_TYPE, &payload, Some(layer_annotations));
    // Earlier signatures stay: a component may be signed by several keys.
    // A signature by this same key is replaced (ECDSA signatures differ each time).
    let public = [key.public_key()];
    let by_this_key = |l: &OciDescriptor| {
        let sig = l.annotations.as_ref().and_then(|a| a.get(signature::SIGNATURE_ANNOTATION));
        l.digest == layer.digest
            && sig.is_some_and(|s| signature::verify(&public, &payload, s, digest.as_str()).is_ok())
    };
    let mut layers: Vec<OciDescriptor> = match client.pull_manifest_tag(r, &tag).await {
        Ok(p) => p.manifest.layers.into_iter().filter(|l| !by_this_key(l)).collect(),
        Err(RegistryError::NotFound(_)) => Vec::new(),
        Err(e) => return Err(e),
    };
    layers.push(layer);
    let digests: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let config = signature::signature_config(&digests);
    let m = manifest(descriptor(signature::SIGNATURE_CONFIG_MEDIA_TYPE, &config, None), layers, None);
    client.push(r, Some(&tag), &[&payload, &config], &m).await?;
    Ok(())
}

/// A WIT package (a folder of `.wit` files, or one file) encoded as a Wasm binary, the form
/// `wkg publish` and `wkg get` move through registries; returns the bytes and the package's
/// name (`skiff:step@0.1.0`).
pub fn encode_wit(path: &std::path::Path) -> Result<(Vec<u8>, String), String> {
    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve.push_path(path).map_err(|e| format!("{}: {e:#}", path.display()))?;
    let name = resolve.packages[pkg].name.to_string();
    let bytes = wit_component::encode(&resolve, pkg).map_err(|e| format!("encoding {name}: {e:#}"))?;
    Ok((bytes, name))
}

/// Pushes an encoded WIT package under `r`'s tag, annotated with its package name.
pub async fn push_wit(
    client: &RegistryClient,
    r: &ComponentRef,
    bytes: &[u8],
    package: &str,
    source: Option<&str>,
) -> Result<Digest, RegistryError> {
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (name, version) = package.split_once('@').unwrap_or((package, ""));
    let mut a = BTreeMap::new();
    a.insert(annotation::TITLE.to_string(), name.to_string());
    a.insert(annotation::VERSION.to_string(), version.to_string());
    a.insert(annotation::DESCRIPTION.to_string(), format!("The WIT package {package}"));
    a.insert(annotation::CREATED.to_string(), created.clone());
    if let Some(s) = source {
        a.insert(annotation::SOURCE.to_string(), s.to_string());
    }
    let config = config(&Digest::of(bytes), &[], &[], &created);
    let m = manifest(
        descriptor(WASM_CONFIG_MEDIA_TYPE, &config, None),
        vec![descriptor(WASM_LAYER_MEDIA_TYPE, bytes, None)],
        Some(a),
    );
    client.push(r, None, &[bytes, &config], &m).await
}

/// The package name and interfaces of an encoded WIT package (`None` for anything else, a
/// component included).
pub fn decode_wit(bytes: &[u8]) -> Option<(String, Vec<String>)> {
    match wit_component::decode(bytes).ok()? {
        wit_component::DecodedWasm::WitPackage(resolve, pkg) => {
            let p = &resolve.packages[pkg];
            Some((p.name.to_string(), p.interfaces.keys().cloned().collect()))
        }
        wit_component::DecodedWasm::Component(..) => None,
    }
}
