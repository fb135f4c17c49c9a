//! `skiff edge up`: serves a Spin application locally (`skiff-spin-host`) until interrupted, from
//! its `spin.toml` or pulled from a registry (`--from REGISTRY/REPO:TAG` or `@sha256:…`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use skiff_pipeline::component_ref::ComponentRef;
use skiff_spin_host::SpinApp;
use skiff_spin_host::kv::KvStores;
use skiff_spin_host::manifest::Manifest;
use skiff_spin_host::spin::given_variables;

#[derive(clap::Args, Debug)]
pub struct EdgeUpArgs {
    /// The application: its `spin.toml`, or a registry reference (`ghcr.io/acme/app:1`,
    /// `…@sha256:…`) as the `spin-push` step or `spin registry push` published it.
    #[arg(long = "from", short = 'f', value_name = "MANIFEST|REF", default_value = "spin.toml")]
    pub from: String,
    #[command(flatten)]
    pub registry: super::registry::RegistryArgs,
    #[command(flatten)]
    pub policy: super::registry::PolicyArgs,
    /// Where to listen; port 0 picks a free one (the address is printed).
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// An application variable, `name=value`; `SPIN_VARIABLE_<NAME>` in the environment works too.
    #[arg(long = "variable", value_name = "NAME=VALUE")]
    pub variables: Vec<String>,
    /// The key-value file (default: `.spin/skiff-key-value.db` beside the manifest); `:memory:` keeps nothing.
    #[arg(long)]
    pub key_value_file: Option<PathBuf>,
    /// How long a request may take (`30s`, `500ms`, `2m`) before it is answered with 504 and its
    /// instance stopped.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    pub request_timeout: Duration,
    /// Instances running at once; further requests wait (at most the request timeout) for one
    /// to end, then get 503.
    #[arg(long, value_name = "N", default_value_t = skiff_spin_host::spin::MAX_CONCURRENCY, value_parser = parse_concurrency)]
    pub max_concurrency: usize,
    /// How the host logs to standard error: `text` or `json`. Which events: `RUST_LOG`.
    #[arg(long, env = "SKIFF_LOG_FORMAT", value_enum, default_value_t = super::LogFormat::Text)]
    pub log_format: super::LogFormat,
}

fn parse_concurrency(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a number of instances from 1 to 10000")),
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let t = skiff_runtime::limits::parse_duration(s)?;
    if t.is_zero() {
        return Err(format!("`{s}` would time out every request: give a duration such as `30s`"));
    }
    Ok(t)
}

/// Whether `--from` names a registry reference rather than a manifest file: it is not an
/// existing path, does not end in `.toml`, and parses as a reference with a registry host.
fn is_reference(from: &str) -> Option<ComponentRef> {
    if Path::new(from).exists() || from.ends_with(".toml") {
        return None;
    }
    ComponentRef::parse(from).ok().filter(|r| matches!(r, ComponentRef::Oci { .. }))
}

/// The application and the folder its key-value file defaults to.
async fn load(args: &EdgeUpArgs) -> anyhow::Result<(Manifest, PathBuf)> {
    let Some(reference) = is_reference(&args.from) else {
        let path = Path::new(&args.from);
        let manifest = Manifest::load(path)?;
        return Ok((manifest, path.parent().unwrap_or(Path::new(".")).to_path_buf()));
    };
    let resolver = args.registry.resolver()?;
    let cache = skiff_runtime::cache::default_dir().join("spin-apps");
    let app = resolver
        .fetch_spin_app(&reference, &args.policy.policy()?, &cache)
        .await
        .with_context(|| format!("cannot pull the Spin application `{reference}`"))?;
    let manifest = skiff_spin_host::locked::manifest(&app.locked, &|d| app.wasm.get(d).cloned())
        .with_context(|| format!("`{}` is not an application `skiff edge up` can run", app.reference))?;
    // Standard error: the first line on standard output stays the address being served.
    let signed = app.signed_by.as_ref().map(|k| format!(", signed by {k}")).unwrap_or_default();
    tracing::info!("pulled {} ({} component(s){signed})", app.reference, app.wasm.len());
    let home = cache.join(app.reference.digest().map(|d| d.as_str().replace(':', "-")).unwrap_or_default());
    Ok((manifest, home))
}

/// `skiff edge up`: serves the application until interrupted.
pub async fn up(args: EdgeUpArgs) -> anyhow::Result<()> {
    super::init_logging(args.log_format);
    let (manifest, home) = load(&args).await?;
    let given = given_variables(&args.variables, &manifest)?;
    let kv_path = match &args.key_value_file {
        Some(p) if p.as_os_str() == ":memory:" => None,
        Some(p) => Some(p.clone()),
        None => Some(home.join(".spin/skiff-key-value.db")),
    };
    let kv = KvStores::open(kv_path.as_deref())?;
    let app = Arc::new(
        SpinApp::new(manifest, &given, kv)?
            .with_request_timeout(args.request_timeout)
            .with_max_concurrency(args.max_concurrency),
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    crate::outln!("serving {} on http://{addr}", app.manifest().name);
    for r in &app.manifest().routes {
        crate::outln!("  http://{addr}{} -> {}", r.route, r.component);
    }
    // Ctrl-C or SIGTERM (a service manager's stop): finish the requests in flight, then exit.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    skiff_spin_host::serve(app, listener, shutdown).await
}
