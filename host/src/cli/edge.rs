//! `skiff edge up`: serves a Spin application locally (`skiff-spin-host`) until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use skiff_spin_host::SpinApp;
use skiff_spin_host::kv::KvStores;
use skiff_spin_host::manifest::Manifest;
use skiff_spin_host::spin::given_variables;

#[derive(clap::Args, Debug)]
pub struct EdgeUpArgs {
    /// The Spin application manifest.
    #[arg(long = "from", short = 'f', default_value = "spin.toml")]
    pub manifest: PathBuf,
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

/// `skiff edge up`: serves the application until interrupted.
pub async fn up(args: EdgeUpArgs) -> anyhow::Result<()> {
    super::init_logging(args.log_format);
    let manifest = Manifest::load(&args.manifest)?;
    let given = given_variables(&args.variables, &manifest)?;
    let kv_path = match &args.key_value_file {
        Some(p) if p.as_os_str() == ":memory:" => None,
        Some(p) => Some(p.clone()),
        None => Some(args.manifest.parent().unwrap_or(std::path::Path::new(".")).join(".spin/skiff-key-value.db")),
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
