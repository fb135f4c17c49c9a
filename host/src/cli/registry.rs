//! What every command that talks to registries shares: credentials, plain HTTP, the trusted
//! keys, and the resolver over the local component store.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use skiff_registry::client::ClientOptions;
use skiff_registry::signature::PublicKey;
use skiff_registry::{Fetched, Policy, Resolver};
use skiff_runtime::component_store::ComponentStore;

/// How to reach registries.
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryArgs {
    /// A registry user name (with --password-stdin); otherwise Docker's config.json is read.
    #[arg(long, requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the registry password (or token) from standard input.
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Allow plain HTTP to registries and URLs that are not loopback addresses.
    #[arg(long)]
    pub insecure: bool,
}

impl RegistryArgs {
    pub fn options(&self) -> anyhow::Result<ClientOptions> {
        let credentials = match &self.username {
            Some(u) => {
                let mut password = String::new();
                std::io::stdin().read_to_string(&mut password).context("reading the password from standard input")?;
                let password = password.trim_end_matches(['\n', '\r']).to_string();
                anyhow::ensure!(!password.is_empty(), "--password-stdin read an empty password");
                Some((u.clone(), password))
            }
            None => None,
        };
        Ok(ClientOptions { insecure: self.insecure, credentials })
    }

    /// A resolver over the store the local runtime runs components from.
    pub fn resolver(&self) -> anyhow::Result<Resolver> {
        Ok(Resolver::new(ComponentStore::default_store(), self.options()?))
    }
}

/// Which components may run.
#[derive(Debug, Clone, Default, Args)]
pub struct PolicyArgs {
    /// Refuse registry tags that are not pinned (by `@sha256:` or .skiff/lock.yaml).
    #[arg(long)]
    pub locked: bool,
    /// Run only components signed by a `--trusted-key`.
    #[arg(long, requires = "trusted_key")]
    pub require_signature: bool,
    /// A PEM public key whose signatures are trusted (cosign's `cosign.pub`), repeatable.
    #[arg(long, value_name = "FILE")]
    pub trusted_key: Vec<PathBuf>,
}

impl PolicyArgs {
    pub fn policy(&self) -> anyhow::Result<Policy> {
        Ok(Policy {
            allow_unpinned: !self.locked,
            require_signature: self.require_signature,
            trusted_keys: read_keys(&self.trusted_key)?,
            registries: None,
        })
    }
}

/// PEM public keys from files.
pub fn read_keys(files: &[PathBuf]) -> anyhow::Result<Vec<PublicKey>> {
    files
        .iter()
        .map(|f| {
            let pem = std::fs::read_to_string(f).with_context(|| format!("reading the key {}", f.display()))?;
            PublicKey::from_pem(&pem).with_context(|| format!("{} is not a P-256 public key in PEM", f.display()))
        })
        .collect()
}

/// One line per fetched component, for a run's log.
pub fn describe(f: &Fetched) -> String {
    let from = if f.cached { "from the local store" } else { "fetched" };
    let signed =
        f.signed_by.as_deref().map(|k| format!(", signed by key {}", &k[..16.min(k.len())])).unwrap_or_default();
    let pin = if f.unpinned { "; a tag resolved now: pin it with `skiff lock`" } else { "" };
    format!("component {} ({from}{signed}{pin})", f.reference)
}

/// One line about a container image made ready for a run.
pub fn describe_image(f: &skiff_registry::image::FetchedImage) -> String {
    let from = if f.cached { "unpacked already" } else { "pulled and unpacked" };
    let pin = if f.unpinned { "; a tag resolved now: pin it with `skiff lock`" } else { "" };
    format!("image {} ({from}{pin})", f.reference)
}
