//! `skiff lock [PIPELINE]`: resolves every registry tag the pipeline uses to the digest it has
//! now, fetches and checks each component (pulls each container image), and writes `.skiff/lock.yaml` beside the pipeline.
//! With `--check` it changes nothing and fails when the lock file is not up to date.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use skiff_pipeline::component_ref::{ComponentRef, Digest};
use skiff_pipeline::load_file;
use skiff_pipeline::lock::{self, Lock};
use skiff_pipeline::plan::Uses;
use skiff_registry::Policy;

use crate::cli::registry::RegistryArgs;

#[derive(Args)]
pub struct LockArgs {
    /// The pipeline file (default: `.skiff/pipeline.yaml`, then `serverless-pipeline.yaml`).
    pub pipeline: Option<PathBuf>,
    /// Change nothing; exit 1 when the lock file is missing a tag, has one no longer used, or a
    /// tag has moved.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(args: LockArgs) -> anyhow::Result<ExitCode> {
    let path = super::validate::find_pipeline(args.pipeline.clone())?;
    let plan = match load_file(&path) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("{d}");
            eprintln!("{}: {} problem(s); nothing was locked", path.display(), d.0.len());
            return Ok(ExitCode::from(2));
        }
    };
    let lock_path = lock::path_for(&plan.dir);
    let old = Lock::read(&lock_path).map_err(anyhow::Error::msg)?;
    // Tags as written (a locked reference without its digest); `@sha256:` references pin themselves.
    let unlocked = |reference: &ComponentRef, locked: bool| match reference {
        ComponentRef::Oci { registry, repository, tag: Some(tag), .. } if reference.digest().is_none() || locked => {
            let r = ComponentRef::Oci {
                registry: registry.clone(),
                repository: repository.clone(),
                tag: Some(tag.clone()),
                digest: None,
            };
            Some((r.lock_key(), r))
        }
        _ => None,
    };
    let mut tags: BTreeMap<String, ComponentRef> = BTreeMap::new();
    let mut image_tags: BTreeMap<String, ComponentRef> = BTreeMap::new();
    for step in plan.jobs.iter().flat_map(|j| &j.steps) {
        if let Uses::Component { reference, locked, .. } = &step.uses {
            tags.extend(unlocked(reference, *locked));
        }
        if let Some(image) = &step.image {
            image_tags.extend(unlocked(&image.reference, image.locked));
        }
    }
    let resolver = args.registry.resolver()?;
    let policy = Policy { allow_unpinned: true, ..Policy::default() };
    let mut new = Lock::default();
    let report = |key: &str, digest: &Digest, old: Option<&Digest>| match old {
        Some(d) if d == digest => crate::outln!("  {key} @ {digest} (unchanged)"),
        Some(d) => crate::outln!("  {key} @ {digest} (moved from {d})"),
        None => crate::outln!("  {key} @ {digest} (new)"),
    };
    for (key, r) in &tags {
        // Resolving a tag fetches and checks what it points at, so a lock never pins something
        // that is not a component.
        let fetched = resolver.fetch(r, &policy).await?;
        let digest = fetched.reference.digest().expect("fetched references are pinned").clone();
        report(key, &digest, old.components.get(key));
        new.components.insert(key.clone(), digest);
    }
    for (key, r) in &image_tags {
        // An image is pulled and unpacked while locking: what is pinned is known to run.
        let fetched = resolver.fetch_image(r, &policy).await?;
        let digest = fetched.reference.digest().expect("fetched references are pinned").clone();
        report(key, &digest, old.images.get(key));
        new.images.insert(key.clone(), digest);
    }
    let gone = |now: &BTreeMap<String, Digest>, before: &BTreeMap<String, Digest>| {
        for key in before.keys().filter(|k| !now.contains_key(*k)) {
            crate::outln!("  {key} (no longer used: removed)");
        }
    };
    gone(&new.components, &old.components);
    gone(&new.images, &old.images);
    if args.check {
        if new == old {
            crate::outln!("{} is up to date", lock_path.display());
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("{} is not up to date: run `skiff lock` and commit it", lock_path.display());
        return Ok(ExitCode::from(1));
    }
    if new.is_empty() && !lock_path.exists() {
        crate::outln!("{} uses no registry tags: nothing to lock", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    new.write(&lock_path).map_err(|e| anyhow::anyhow!("writing {}: {e}", lock_path.display()))?;
    let pinned = new.components.len() + new.images.len();
    crate::outln!("wrote {} ({pinned} pinned); commit it", lock_path.display());
    Ok(ExitCode::SUCCESS)
}
