//! `spin-push`: publishes a Spin application from the workspace to an OCI registry in the layout
//! `spin registry push` uses (one layer per component, one per static file, the locked app as
//! the last layer), so `spin up -f`, SpinKube and `skiff edge up --from` run it. Its output is
//! the reference pinned by digest.
//!
//! The same application pushes to the same manifest digest (no timestamps are written), so a
//! rebuild that changed nothing is recognisable in the registry.
//!
//! The network is limited to the registry's host (and a token server the pipeline grants);
//! the password comes only from the granted secret named by `password-secret`.

pub mod app;
pub mod oci;

use skiff_step_sdk::{Context, Manifest, Outputs, Step, StepError, info};

struct SpinPush;

impl Step for SpinPush {
    fn describe() -> Manifest {
        Manifest::new(
            "spin-push",
            "Publishes a Spin application (spin.toml and the components it names) to an OCI registry, pinned by digest.",
        )
        .input("image", "Where to push: `registry/repository:tag`, like `ghcr.io/acme/app:1.0`", true, None)
        .input("manifest", "The application's spin.toml in the workspace", false, Some("spin.toml"))
        .input("username", "The registry user name", false, None)
        .input("password-secret", "Name of a granted secret holding the registry password or token", false, None)
        .input("plain-http", "`true` for a registry without TLS (the default only for loopback addresses)", false, None)
        .output("reference", "The pushed application pinned by digest: `registry/repository@sha256:…`")
        .output("digest", "The manifest's digest")
        .output("tag", "The tag it was pushed under")
        .output("components", "How many components it holds")
        .output("bytes", "Bytes uploaded (blobs the registry had already are not sent)")
        .host("${inputs.image}")
    }

    fn run(ctx: Context) -> Result<Outputs, StepError> {
        let target = oci::Target::parse(ctx.required("image")?).map_err(StepError::InvalidInput)?;
        let plain_http = match ctx.input("plain-http").map(str::trim).filter(|s| !s.is_empty()) {
            None => target.is_loopback(),
            Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(StepError::InvalidInput(format!("`plain-http` is `{other}`: use true or false")));
            }
        };
        let credentials = match (ctx.input("username").filter(|s| !s.is_empty()), ctx.input("password-secret")) {
            (Some(user), Some(name)) if !name.is_empty() => {
                let password = skiff_step_sdk::secret(name).ok_or_else(|| {
                    StepError::Denied(format!(
                        "secret `{name}` (input `password-secret`) was not granted: add it to `permissions.secrets`"
                    ))
                })?;
                Some((user.to_string(), password))
            }
            (None, None) => None,
            (None, Some("")) => None,
            _ => {
                return Err(StepError::InvalidInput(
                    "give both `username` and `password-secret`, or neither for a registry without sign-in".into(),
                ));
            }
        };

        let app = app::assemble(ctx.input_or("manifest", "spin.toml")).map_err(StepError::failed)?;
        let locked = app.layers.last().expect("the locked app is always a layer");
        let config = app::Layer::new(oci::CONFIG_MEDIA_TYPE, oci::config(&app.layers, &locked.digest));
        let mut annotations = serde_json::Map::new();
        annotations.insert("org.opencontainers.image.title".into(), app.name.clone().into());
        if let Some(v) = &app.version {
            annotations.insert("org.opencontainers.image.version".into(), v.clone().into());
        }
        let manifest = oci::manifest(&config, &app.layers, &annotations);

        let mut registry = oci::Registry::new(target.clone(), plain_http, credentials);
        let mut sent = 0u64;
        for layer in app.layers.iter().chain([&config]) {
            if registry.push_blob(layer.media_type, &layer.digest, &layer.bytes).map_err(StepError::failed)? {
                sent += layer.bytes.len() as u64;
            }
        }
        let digest = registry.push_manifest(&manifest).map_err(StepError::failed)?;
        let reference = format!("{}/{}@{digest}", target.registry, target.repository);
        info!(
            "pushed {} ({} component(s), {} layer(s), {sent} bytes sent) as {}:{} = {reference}",
            app.name,
            app.components,
            app.layers.len(),
            target.repository,
            target.tag
        );
        Ok(Outputs::new()
            .set("reference", reference)
            .set("digest", digest)
            .set("tag", target.tag)
            .set("components", app.components.to_string())
            .set("bytes", sent.to_string()))
    }
}

skiff_step_sdk::export!(SpinPush);
