//! Sharing steps through registries: `skiff step publish`, `pull`, `sign`, `keygen`, and
//! `inspect` of a reference (from its annotations, before anything is pulled or run).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use skiff_pipeline::component_ref::ComponentRef;
use skiff_registry::Policy;
use skiff_registry::publish::{self, annotation};
use skiff_registry::resolve::component_layer;
use skiff_registry::signature::SigningKey;
use skiff_runtime::{EngineOptions, LoadError, Runtime};

use crate::cli::out::inert;
use crate::cli::registry::{RegistryArgs, read_keys};

#[derive(Args)]
pub struct PublishArgs {
    /// The component (`.wasm`, built for wasm32-wasip2 against skiff:step), or a WIT package
    /// (a folder of `.wit` files, like `wit/`) for authors to bind to.
    pub path: PathBuf,
    /// Where: `REGISTRY/NAMESPACE/NAME:TAG`.
    pub reference: String,
    /// The source repository's URL, recorded as `org.opencontainers.image.source`.
    #[arg(long, value_name = "URL")]
    pub source: Option<String>,
    /// Sign what was pushed with this key (see `skiff step sign`).
    #[arg(long, value_name = "KEY")]
    pub sign_key: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args)]
pub struct PullArgs {
    /// `REGISTRY/NAMESPACE/NAME:TAG`, `…@sha256:…`, or `https://…#sha256=…`.
    pub reference: String,
    /// Where to write the component (default: `NAME.wasm`).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Only if signed by this PEM public key (repeatable).
    #[arg(long, value_name = "FILE")]
    pub trusted_key: Vec<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args)]
pub struct SignArgs {
    /// What to sign: `REGISTRY/NAMESPACE/NAME:TAG` (signed at the digest it has now) or `…@sha256:…`.
    pub reference: String,
    /// The private key: cosign's `cosign.key` (password from $COSIGN_PASSWORD) or a PKCS#8 PEM.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args)]
pub struct KeygenArgs {
    /// Write `PREFIX.key` (encrypted with $COSIGN_PASSWORD, cosign's format) and `PREFIX.pub`.
    #[arg(default_value = "cosign")]
    pub prefix: String,
}

fn reference(s: &str) -> anyhow::Result<ComponentRef> {
    ComponentRef::parse(s).map_err(|e| anyhow::anyhow!("{e}"))
}

fn registry_reference(s: &str) -> anyhow::Result<ComponentRef> {
    let r = reference(s)?;
    anyhow::ensure!(
        matches!(r, ComponentRef::Oci { .. }),
        "`{s}` is not a registry reference (REGISTRY/NAMESPACE/NAME:TAG)"
    );
    Ok(r)
}

fn password() -> Vec<u8> {
    std::env::var("COSIGN_PASSWORD").unwrap_or_default().into_bytes()
}

fn signing_key(path: &PathBuf) -> anyhow::Result<SigningKey> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("reading the key {}", path.display()))?;
    SigningKey::from_pem(&pem, Some(&password())).with_context(|| format!("the key {}", path.display()))
}

pub async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let r = registry_reference(&args.reference)?;
    let ComponentRef::Oci { tag: Some(_), digest: None, .. } = &r else {
        bail!("publish to a tag, like `{}:1.0.0`: the digest is what the registry gives back", r.lock_key());
    };
    // A folder of `.wit` files (or one) is a WIT package: published for authors to bind to.
    if args.path.is_dir() || args.path.extension().is_some_and(|e| e == "wit") {
        let (bytes, package) = publish::encode_wit(&args.path).map_err(anyhow::Error::msg)?;
        let resolver = args.registry.resolver()?;
        let digest = publish::push_wit(resolver.client(), &r, &bytes, &package, args.source.as_deref()).await?;
        crate::outln!("published the WIT package {package} as {}@{digest}", r.lock_key());
        return Ok(ExitCode::SUCCESS);
    }
    let bytes = std::fs::read(&args.path).with_context(|| format!("reading {}", args.path.display()))?;
    // Only a component of the step world is published, and what it declares is recorded.
    let runtime = Runtime::new(EngineOptions { pooling: false, ..Default::default() }, None)?;
    let step = runtime.load(&bytes).await.map_err(|e: LoadError| anyhow::anyhow!("{}: {e}", args.path.display()))?;
    let key = args.sign_key.as_ref().map(signing_key).transpose()?;
    let (imports, exports) = step.world();
    let annotations = publish::annotations(&step.manifest, args.source.as_deref());
    let resolver = args.registry.resolver()?;
    let digest = publish::push_component(resolver.client(), &r, &bytes, annotations, &imports, &exports).await?;
    let m = &step.manifest;
    crate::outln!("published {} {} as {}@{digest}", inert(&m.name), inert(&m.version), r.lock_key());
    if let Some(key) = key {
        publish::sign(resolver.client(), &r, &digest, &key).await?;
        crate::outln!("signed with key {}", key.public_key().fingerprint());
    }
    crate::outln!("use it with:\n  uses: {}", r.lock_key());
    crate::outln!("and pin it with `skiff lock`, or write `uses: {}`", r.pinned(digest));
    Ok(ExitCode::SUCCESS)
}

pub async fn pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    let r = reference(&args.reference)?;
    let keys = read_keys(&args.trusted_key)?;
    let policy =
        Policy { allow_unpinned: true, require_signature: !keys.is_empty(), trusted_keys: keys, registries: None };
    let resolver = args.registry.resolver()?;
    let fetched = resolver.fetch(&r, &policy).await?;
    let bytes = resolver.store().read(&fetched.content)?;
    let out = match args.output {
        Some(o) => o,
        None => {
            let name = match &r {
                ComponentRef::Oci { repository, .. } => repository.rsplit('/').next().unwrap_or("step").to_string(),
                ComponentRef::Url { url, .. } => {
                    url.rsplit('/').next().unwrap_or("step").trim_end_matches(".wasm").to_string()
                }
            };
            PathBuf::from(format!("{name}.wasm"))
        }
    };
    std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    crate::outln!(
        "{} → {} ({} bytes, sha256:{})",
        fetched.reference,
        out.display(),
        bytes.len(),
        fetched.content.hex()
    );
    if let Some(k) = &fetched.signed_by {
        crate::outln!("signed by key {k}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let r = registry_reference(&args.reference)?;
    let key = signing_key(&args.key)?;
    let resolver = args.registry.resolver()?;
    // The bytes signed are the manifest's: check it is a component before vouching for it.
    let pulled = resolver.client().pull_manifest(&r).await?;
    component_layer(&r.to_string(), &pulled.manifest)?;
    publish::sign(resolver.client(), &r, &pulled.digest, &key).await?;
    crate::outln!("signed {} with key {}", r.pinned(pulled.digest), key.public_key().fingerprint());
    Ok(ExitCode::SUCCESS)
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let (key_path, pub_path) =
        (PathBuf::from(format!("{}.key", args.prefix)), PathBuf::from(format!("{}.pub", args.prefix)));
    for p in [&key_path, &pub_path] {
        anyhow::ensure!(!p.exists(), "{} exists; move it away or choose another prefix", p.display());
    }
    let key = SigningKey::generate();
    std::fs::write(&key_path, key.to_encrypted_pem(&password())?)
        .with_context(|| format!("writing {}", key_path.display()))?;
    std::fs::write(&pub_path, key.public_key().to_pem()).with_context(|| format!("writing {}", pub_path.display()))?;
    crate::outln!(
        "private key: {} (encrypted with $COSIGN_PASSWORD)\npublic key:  {} (trust it with `trusted-keys` or --trusted-key)\nfingerprint: {}",
        key_path.display(),
        pub_path.display(),
        key.public_key().fingerprint()
    );
    Ok(ExitCode::SUCCESS)
}

/// `skiff step inspect REF`: what a published component declares, read from its manifest's
/// annotations; a component published without them (by `wkg`) is pulled and asked.
pub async fn inspect(s: &str, json: bool, registry: &RegistryArgs) -> anyhow::Result<ExitCode> {
    let r = reference(s)?;
    let resolver = registry.resolver()?;
    let (pinned, annotations) = match &r {
        ComponentRef::Oci { .. } => {
            let pulled = resolver.client().pull_manifest(&r).await?;
            component_layer(&r.to_string(), &pulled.manifest)?;
            (r.pinned(pulled.digest), pulled.manifest.annotations.unwrap_or_default())
        }
        ComponentRef::Url { .. } => (r.clone(), Default::default()),
    };
    let (caps, interface) = match (annotations.get(annotation::CAPABILITIES), annotations.get(annotation::INTERFACE)) {
        (Some(c), Some(i)) => (
            serde_json::from_str::<serde_json::Value>(c).context("its capabilities annotation is not JSON")?,
            serde_json::from_str::<serde_json::Value>(i).context("its interface annotation is not JSON")?,
        ),
        _ => {
            let fetched = resolver.fetch(&pinned, &Policy { allow_unpinned: true, ..Policy::default() }).await?;
            if let Some((package, interfaces)) = publish::decode_wit(&resolver.store().read(&fetched.content)?) {
                crate::outln!(
                    "{pinned}\nWIT package {}\ninterfaces: {}",
                    inert(&package),
                    inert(&interfaces.join(", "))
                );
                return Ok(ExitCode::SUCCESS);
            }
            let runtime = Runtime::new(EngineOptions { pooling: false, ..Default::default() }, None)?;
            let step = runtime.load_digest(&fetched.content).await.map_err(|e| anyhow::anyhow!("{pinned}: {e}"))?;
            let m = &step.manifest;
            let a = publish::annotations(m, None);
            (serde_json::from_str(&a[annotation::CAPABILITIES])?, serde_json::from_str(&a[annotation::INTERFACE])?)
        }
    };
    let get = |k: &str| annotations.get(k).map(|v| inert(v).into_owned()).unwrap_or_default();
    if json {
        let v = serde_json::json!({
            "reference": pinned.to_string(),
            "name": get(annotation::TITLE), "version": get(annotation::VERSION),
            "description": get(annotation::DESCRIPTION), "source": get(annotation::SOURCE),
            "created": get(annotation::CREATED),
            "inputs": interface["inputs"], "outputs": interface["outputs"], "capabilities": caps,
        });
        crate::outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    crate::outln!("{pinned}");
    if !get(annotation::TITLE).is_empty() {
        crate::outln!("{} {} — {}", get(annotation::TITLE), get(annotation::VERSION), get(annotation::DESCRIPTION));
    }
    for (label, key) in [("source", annotation::SOURCE), ("created", annotation::CREATED)] {
        if let Some(v) = annotations.get(key) {
            crate::outln!("{label}: {}", inert(v));
        }
    }
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|i| i.as_str().map(|s| inert(s).into_owned())).collect()
    };
    let field = |v: &serde_json::Value| inert(v.as_str().unwrap_or("")).into_owned();
    crate::outln!("inputs:");
    for i in interface["inputs"].as_array().into_iter().flatten() {
        let req = if i["required"].as_bool() == Some(true) { " (required)" } else { "" };
        crate::outln!("  {:<12} {}{req}", field(&i["name"]), field(&i["description"]));
    }
    crate::outln!("outputs:");
    for o in interface["outputs"].as_array().into_iter().flatten() {
        crate::outln!("  {:<12} {}", field(&o["name"]), field(&o["description"]));
    }
    let or_none = |v: Vec<String>| if v.is_empty() { "none".to_string() } else { v.join(", ") };
    crate::outln!("capabilities it asks for:");
    crate::outln!("  hosts:   {}", or_none(names(&caps["hosts"])));
    crate::outln!("  secrets: {}", or_none(names(&caps["secrets"])));
    crate::outln!("  process: {}", if caps["process"].as_bool() == Some(true) { "yes" } else { "no" });
    Ok(ExitCode::SUCCESS)
}
