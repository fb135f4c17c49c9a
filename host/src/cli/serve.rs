//! `skiff serve`: reads the config file and the master key, starts the server
//! (`skiff_server::start`), and drains it on Ctrl-C or SIGTERM.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use skiff_server::{config, conn, crypto, start};

/// Which routes a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Role {
    /// Webhooks and host routes (one process).
    #[default]
    All,
    /// Host routes only (`/v1/…`), behind a remote master.
    Host,
}

impl From<Role> for skiff_server::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::All => skiff_server::Role::All,
            Role::Host => skiff_server::Role::Host,
        }
    }
}

/// Arguments of `skiff serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The config file.
    #[arg(long, env = "SKIFF_CONFIG", default_value = "skiff.toml")]
    pub config: PathBuf,
    /// The data directory (run store, logs, workspaces); default: `data` in the config, or
    /// `skiff-data` beside it.
    #[arg(long, env = "SKIFF_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Where runs are stored: `sqlite` (`skiff.db` in the data directory) or a PostgreSQL URL
    /// (`postgres://user:password@host:port/db`; also `env:NAME`); default: `store` in the
    /// config, or `sqlite`.
    #[arg(long, env = "SKIFF_STORE", value_name = "URL", hide_env_values = true)]
    pub store: Option<String>,
    /// Address to listen on (default: `listen` in the config, or 127.0.0.1:8080).
    #[arg(long, env = "SKIFF_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// `all` serves webhooks and runs; `host` serves only the host routes.
    #[arg(long, value_enum, default_value_t = Role::All)]
    pub role: Role,
    /// This host's labels, comma-separated (`linux,x64,gpu`): it takes the runs whose jobs'
    /// `runs-on` it has every label of (default: `labels` in the config). Every host also has
    /// `self-hosted`, `linux` and its architecture.
    #[arg(long, env = "SKIFF_LABELS", value_name = "LABELS", value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    /// A file holding the master key (base64 or hex of 32 bytes); `SKIFF_MASTER_KEY` wins.
    #[arg(long, env = "SKIFF_MASTER_KEY_FILE", value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Read a secret from standard input, print it sealed (`enc:v1:…`) for the config, and exit.
    #[arg(long)]
    pub encrypt: bool,
    /// Read an API token from standard input, print its SHA-256 for `tokens.sha256`, and exit.
    #[arg(long)]
    pub hash_token: bool,
    /// Read a password from standard input, print its argon2 hash for `[[users]] password-hash`
    /// (the web console's sign-in), and exit.
    #[arg(long)]
    pub hash_password: bool,
    /// On Ctrl-C or SIGTERM, how long runs in progress may go on to finish (`90s`, `10m`). No
    /// run starts meanwhile; what is still running then is recovered at the next start.
    #[arg(long, env = "SKIFF_DRAIN_TIMEOUT", value_name = "DURATION", default_value = "10m", value_parser = skiff_runtime::limits::parse_duration)]
    pub drain_timeout: std::time::Duration,
    /// How the server logs to standard error: `text` (one line per event) or `json` (one
    /// object per line, for log collectors). Which events: `RUST_LOG` (default `info`).
    #[arg(long, env = "SKIFF_LOG_FORMAT", value_enum, default_value_t = super::LogFormat::Text)]
    pub log_format: super::LogFormat,
}

/// Runs `skiff serve`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    super::init_logging(args.log_format);
    if args.hash_token {
        let token = read_stdin("the API token")?;
        crate::outln!("{}", crypto::token_hash(&token));
        return Ok(());
    }
    if args.hash_password {
        let password = read_stdin("the password")?;
        crate::outln!("{}", skiff_server::console::hash_password(&password)?);
        return Ok(());
    }
    let base = args.config.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    let text = match std::fs::read_to_string(&args.config) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let looked = std::path::absolute(&args.config).unwrap_or_else(|_| args.config.clone());
            anyhow::bail!(
                "no config file at {}: run `skiff init` to write one there with an admin token and a webhook \
                 secret (`skiff init DIR` writes DIR/skiff.toml, for `skiff serve --config DIR/skiff.toml`)",
                looked.display()
            );
        }
        r => r.with_context(|| format!("reading the config file {}", args.config.display()))?,
    };
    let file: config::ConfigFile =
        toml::from_str(&text).with_context(|| format!("in the config file {}", args.config.display()))?;
    let data = args.data.clone().unwrap_or_else(|| base.join(file.data.clone().unwrap_or_else(|| "skiff-data".into())));
    let key = crypto::MasterKey::load(args.master_key_file.as_deref(), &data)?;
    if args.encrypt {
        let secret = read_stdin("the secret")?;
        crate::outln!("{}", key.seal(secret.as_bytes()));
        return Ok(());
    }
    let mut config = config::ServeConfig::resolve(file, &base, Some(&key))
        .with_context(|| format!("in the config file {}", args.config.display()))?;
    config.set_data_dir(data)?;
    if let Some(s) = &args.store {
        config.store = config::StoreLocation::open(s, Some(&key)).context("`--store`")?;
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(l) = &args.labels {
        config.labels = config::host_labels(l).context("`--labels`")?;
    }
    let apps = config.apps.len();
    // Every socket is a file: take the whole allowance the host gives.
    conn::raise_open_file_limit();
    // Jobs' homes and image layers live in the data directory; what a crash left there goes now.
    let jobs = config.data_dir.join("jobs");
    skiff_runtime::jobs::remove_tree(&jobs);
    let spaces = skiff_runtime::jobs::JobSpaces::new(jobs, Some(config.data_dir.join("tool-cache")));
    let executor = crate::local_executor(skiff_server::artifact_store(&config), Some(spaces), false)?;
    let server = start(config, executor, args.role.into()).await?;
    tracing::info!("listening on http://{} ({:?} role, {apps} app(s))", server.addr, args.role);
    shutdown_signal().await;
    let running = server.shared.scheduler.running_count();
    tracing::info!(
        "draining: {running} run(s) in progress may take up to {} to finish; no new run starts \
         (dispatches are queued for the next start); Ctrl-C or SIGTERM again stops at once",
        humanize(args.drain_timeout)
    );
    tokio::select! {
        left = server.drain(args.drain_timeout) => if left > 0 {
            tracing::warn!("{left} run(s) still in progress after {}; they are recovered at the next start", humanize(args.drain_timeout));
        },
        _ = shutdown_signal() => tracing::warn!("stopping at once; runs in progress are recovered at the next start"),
    }
    server.stop().await;
    tracing::info!("stopped");
    Ok(())
}

fn humanize(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) { format!("{}m", s / 60) } else { format!("{d:?}") }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

fn read_stdin(what: &str) -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).with_context(|| format!("reading {what} from standard input"))?;
    let s = s.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(!s.is_empty(), "{what} on standard input is empty");
    Ok(s)
}
