//! `skiff init [DIR]`: writes `DIR/skiff.toml` for `skiff serve` and creates its data folder,
//! so that a fresh machine serves an app after two commands (`skiff init && skiff serve`).
//!
//! It generates an admin API token and the app's webhook secret and prints them once. The
//! config keeps only what `skiff serve` needs to check them: the token's SHA-256, and the
//! webhook secret sealed with the master key (`serve::crypto`), which init creates where
//! `skiff serve` looks for it (`DIR/skiff-data/master.key`, mode 0600) unless the environment
//! already names one. The text is loaded with the real config loader before anything is
//! written, so what init writes is what `skiff serve` starts with.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::Args;
use skiff_edge_core::Provider;

use skiff_server::config::{PipelineSource, ServeConfig};
use skiff_server::crypto::{self, MasterKey};

/// The config file's name in DIR.
pub const CONFIG_FILE: &str = "skiff.toml";
/// The data folder's name in DIR (the config's `data` key).
pub const DATA_DIR: &str = "skiff-data";

/// Arguments of `skiff init`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// The folder to write `skiff.toml` and the data folder `skiff-data` in (created if missing).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The app's name, the last part of its webhook URL `/hooks/NAME` (default: the
    /// repository's name, else the folder's).
    #[arg(long, value_name = "NAME")]
    pub app: Option<String>,
    /// The repository whose webhooks start runs, OWNER/NAME (globs allowed; default: any).
    #[arg(long, value_name = "OWNER/NAME")]
    pub repository: Option<String>,
    /// The only webhook sender accepted: github, gitlab, gitee, gitea, forgejo, codeup,
    /// bitbucket, standard-webhooks or cloudevents.
    #[arg(long, value_name = "PROVIDER", default_value = "github", value_parser = parse_provider)]
    pub provider: Provider,
    /// The address `skiff serve` listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Replace an existing `skiff.toml` (its token and webhook secret stop working).
    #[arg(long)]
    pub force: bool,
}

fn provider_name(p: Provider) -> String {
    serde_json::to_value(p).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_else(|| p.to_string())
}

fn parse_provider(s: &str) -> Result<Provider, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase())).map_err(|_| {
        let names: Vec<String> = Provider::ALL.iter().map(|p| provider_name(*p)).collect();
        format!("`{s}` is not a webhook sender Skiff knows; give one of {}", names.join(", "))
    })
}

/// A TOML string literal (quoted and escaped).
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Where the master key that seals the webhook secret comes from: the same places, in the same
/// order, as `skiff serve` looks (see [`MasterKey::load`]).
enum KeySource {
    /// `SKIFF_MASTER_KEY`.
    Env,
    /// A key file that exists (`SKIFF_MASTER_KEY_FILE`, or a kept `master.key`).
    File(PathBuf),
    /// A new key, written to this file once the config checks out.
    New(PathBuf, String),
}

fn master_key(data: &Path) -> anyhow::Result<(MasterKey, KeySource)> {
    if let Ok(text) = std::env::var("SKIFF_MASTER_KEY")
        && !text.trim().is_empty()
    {
        return Ok((MasterKey::parse(&text).context("SKIFF_MASTER_KEY")?, KeySource::Env));
    }
    let named = std::env::var_os("SKIFF_MASTER_KEY_FILE").filter(|v| !v.is_empty()).map(PathBuf::from);
    let path = named.clone().unwrap_or_else(|| data.join("master.key"));
    if named.is_some() || path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the master key file {}", path.display()))?;
        let key = MasterKey::parse(&text).with_context(|| format!("the master key file {}", path.display()))?;
        return Ok((key, KeySource::File(path)));
    }
    let (key, text) = MasterKey::generate();
    Ok((key, KeySource::New(path, text)))
}

fn random<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("the system's random number source failed: {e}"))?;
    Ok(b)
}

/// The default app name: the repository's name, else the folder's, kept to the characters an
/// app name may hold.
fn default_app_name(repository: Option<&str>, dir: &Path) -> String {
    let from_repo = repository
        .and_then(|r| r.trim_end_matches('/').rsplit('/').next())
        .filter(|n| !n.contains(['*', '?', '[', '{']));
    let from_dir = || {
        let abs = std::fs::canonicalize(dir).or_else(|_| std::path::absolute(dir)).unwrap_or_default();
        abs.file_name().map(|n| n.to_string_lossy().into_owned())
    };
    let raw = from_repo.map(String::from).or_else(from_dir).unwrap_or_default();
    let name: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
    let name = name.trim_matches(['-', '.']);
    if name.is_empty() { "app".into() } else { name.into() }
}

/// What `skiff init` writes, before it is written.
struct Plan {
    text: String,
    app: String,
    token: String,
    webhook_secret: String,
    local_pipeline: Option<PathBuf>,
}

fn config_text(args: &InitArgs, app: &str, token_sha256: &str, sealed_secret: &str, key: &KeySource) -> String {
    let provider = provider_name(args.provider);
    let names: Vec<String> = Provider::ALL.iter().map(|p| provider_name(*p)).collect();
    let key_note = match key {
        KeySource::Env => {
            "\n# the master key in SKIFF_MASTER_KEY (`skiff serve` needs it set the same way)".to_string()
        }
        KeySource::File(p) => format!("\n# the master key in {} (`skiff serve` finds it there)", p.display()),
        KeySource::New(..) => format!(
            "\n# the master key in {DATA_DIR}/master.key (created by `skiff init`, mode 0600; `skiff serve`\n\
             # finds it there, unless SKIFF_MASTER_KEY or --master-key-file names another)"
        ),
    };
    let mut t = String::new();
    // `write!` to a String cannot fail.
    let mut w = |s: String| {
        let _ = writeln!(t, "{s}");
    };
    w(format!(
        "# The configuration of `skiff serve`, written by `skiff init`. Start it with\n\
         #   skiff serve --config <this file>     (in this folder, `skiff serve` is enough)\n\
         # Relative paths are relative to this file. Every key is described in docs/serve.md.\n\
         #\n\
         # Secret values are sealed (\"enc:v1:…\") with{key_note}.\n\
         # Seal another with:   echo -n VALUE | skiff serve --config <this file> --encrypt\n\
         # A value may also be \"env:NAME\" (read from the environment at start), or plain\n\
         # (development only: the host warns at start).\n"
    ));
    w("# Address the host listens on, for webhooks and the API (`skiff serve --listen` wins).".into());
    w(format!("listen = {}", quoted(&args.listen)));
    w("# The data folder: run store, logs, workspaces and the master key (`--data` wins).".into());
    w(format!("data = {}\n", quoted(DATA_DIR)));
    w("# Optional host settings, with their defaults:\n\
       # max-concurrent-runs = 4        # runs at once on this host\n\
       # recovery = \"retry\"             # a run interrupted by a crash runs once more; \"fail\" fails it\n\
       # keep-workspaces = false        # keep each run's workspace after it ends\n\
       # log-bytes-per-step = 1048576   # log bytes kept per step\n\
       # public-url = \"https://ci.example.com\"   # where users reach this host; commit statuses link here\n\
       # dispatch-key = \"env:SKIFF_DISPATCH_KEY\"   # take signed dispatches from a remote edge master (docs/deploy.md)\n"
        .into());
    w("# API tokens: `Authorization: Bearer TOKEN` on /v1/…, `skiff runs --token`, `skiff trigger --token`.\n\
       # Only a token's SHA-256 is kept: `skiff init` printed the token itself once. Hash a new one with\n\
       #   echo -n TOKEN | skiff serve --hash-token"
        .into());
    w("[[tokens]]".into());
    w("# A name for messages and run records.".into());
    w("name = \"admin\"".into());
    w("# Hex SHA-256 of the token.".into());
    w(format!("sha256 = {}", quoted(token_sha256)));
    w("# The apps it may see and run: \"*\" for every app.".into());
    w("apps = [\"*\"]\n".into());
    w("[[apps]]".into());
    w(format!("# The app's name: its Git host posts webhooks to http://{}/hooks/{app}.", args.listen));
    w(format!("name = {}", quoted(app)));
    match &args.repository {
        Some(r) => {
            w("# The repository it builds (OWNER/NAME, globs allowed): webhooks from others are ignored.".into());
            w(format!("repository = {}", quoted(r)));
        }
        None => {
            w("# The repository it builds (OWNER/NAME, globs allowed); without it, webhooks from any are taken."
                .into());
            w("# repository = \"owner/name\"".into());
        }
    }
    w(format!("# The only webhook sender accepted: {}.", names.join(", ")));
    w(format!("provider = {}", quoted(&provider)));
    w("# The webhook secret, sealed: the Git host signs with the plain value `skiff init` printed.".into());
    w(format!("webhook-secret = {}", quoted(sealed_secret)));
    w("# What starts a run, as a pipeline's `on:`: pushes to main, and pull requests.".into());
    w("on = { push = { branches = [\"main\"] }, pull_request = {} }".into());
    w("# Optional app settings:\n\
       # pipeline = \"ci/pipeline.yaml\"    # the pipeline file, instead of the default .skiff/pipeline.yaml (docs/serve.md)\n\
       # on = { push = { branches = [\"main\"] }, schedule = [{ cron = \"0 3 * * *\" }] }   # also at 03:00 UTC daily\n\
       # workspace = \"project\"            # a folder copied into each run's fresh workspace; `pipeline` is then relative to it\n\
       # run-timeout-secs = 3600          # a run is cancelled after this long\n\
       # max-concurrent-runs = 2          # runs of this app at once (default: the host's limit)\n\
       # ca-file = \"company-ca.pem\"       # PEM certificates its steps trust for HTTPS besides the Web PKI roots\n\
       # [apps.secrets]                   # secrets its pipeline may grant: sealed (--encrypt) or env:NAME\n\
       # DEPLOY_TOKEN = \"env:DEPLOY_TOKEN\""
        .into());
    t
}

fn plan(args: &InitArgs, key: &MasterKey, source: &KeySource) -> anyhow::Result<Plan> {
    let app = args.app.clone().unwrap_or_else(|| default_app_name(args.repository.as_deref(), &args.dir));
    let token = format!("skiff_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random::<32>()?));
    let webhook_secret = hex::encode(random::<32>()?);
    let text = config_text(args, &app, &crypto::token_hash(&token), &key.seal(webhook_secret.as_bytes()), source);
    // What is written must be what `skiff serve` starts with: load it as serve does.
    let loaded = ServeConfig::from_toml(&text, &args.dir, Some(key))
        .context("the configuration `skiff init` would write does not load")?;
    anyhow::ensure!(
        loaded.apps.contains_key(&app) && loaded.token(&token).is_some(),
        "the configuration `skiff init` would write lost its app or token (a bug in `skiff init`)"
    );
    // Where the loader reads the pipeline from, when that is a file here (not a commit).
    let local_pipeline = match &loaded.apps[&app].pipeline {
        PipelineSource::Path(p) => Some(PathBuf::from(p)),
        _ => None,
    };
    Ok(Plan { text, app, token, webhook_secret, local_pipeline })
}

/// Creates `path` with mode 0700 if it is missing; whether it did.
fn private_dir(path: &Path) -> anyhow::Result<bool> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating the data folder {}", path.display())),
    }
}

fn exists_message(path: &Path) -> String {
    format!(
        "{} already exists, and `skiff init` leaves it as it is; to replace it (with a new admin token and \
         webhook secret: the old ones stop working), run `skiff init --force`",
        path.display()
    )
}

/// Writes the config with mode 0600: never over an existing file without `force`, and with
/// `force` by a rename, so a reader sees the old file or the new one, whole.
fn write_config(path: &Path, text: &str, force: bool) -> anyhow::Result<()> {
    let create = |p: &Path| std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(p);
    let target = if force { path.with_extension("toml.new") } else { path.to_path_buf() };
    if force {
        let _ = std::fs::remove_file(&target);
    }
    let mut f = match create(&target) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!("{}", exists_message(path)),
        Err(e) => return Err(e).with_context(|| format!("creating {}", target.display())),
    };
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", target.display()))?;
    if force {
        std::fs::rename(&target, path).with_context(|| format!("replacing {}", path.display()))?;
    }
    Ok(())
}

/// Runs `skiff init`.
pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let config = args.dir.join(CONFIG_FILE);
    if !args.force && config.exists() {
        bail!("{}", exists_message(&config));
    }
    let data = args.dir.join(DATA_DIR);
    let (key, source) = master_key(&data)?;
    let plan = plan(&args, &key, &source)?;

    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let created = private_dir(&data)?;
    if let KeySource::New(path, text) = &source {
        crypto::write_private(path, text.as_bytes())?;
    }
    write_config(&config, &plan.text, args.force)?;

    let url = format!("http://{}/hooks/{}", args.listen, plan.app);
    let key_line = match &source {
        KeySource::Env => "the webhook secret is sealed with SKIFF_MASTER_KEY: set it for `skiff serve` too".into(),
        KeySource::File(p) => format!("the webhook secret is sealed with the existing master key {}", p.display()),
        KeySource::New(p, _) => {
            format!("new master key {} (mode 0600): keep it, the sealed secret needs it", p.display())
        }
    };
    let folder = match created {
        true => format!("created the data folder {} (mode 0700)", data.display()),
        false => format!("kept the data folder {}", data.display()),
    };
    crate::outln!("wrote {}, {folder}", config.display());
    crate::outln!("  {key_line}");
    crate::outln!();
    crate::outln!("admin API token: {}", plan.token);
    crate::outln!("  store it now: it is not kept (skiff.toml holds only its SHA-256); send it as");
    crate::outln!(
        "  `Authorization: Bearer TOKEN`, or `skiff runs list --server http://{} --token TOKEN`",
        args.listen
    );
    crate::outln!("webhook secret: {}", plan.webhook_secret);
    crate::outln!("  the secret of the webhook at the Git host (skiff.toml holds it sealed)");
    crate::outln!("webhook URL: {url}");
    let content_type = if args.provider == Provider::Github { " (content type application/json)" } else { "" };
    crate::outln!("  register it with {} for app `{}`{content_type}, with the secret above", args.provider, plan.app);
    crate::outln!("  the Git host must reach it: behind a proxy or NAT register the public address that leads");
    crate::outln!("  here instead (https://ci.example.com/hooks/{}; set it as `public-url` too),", plan.app);
    crate::outln!("  and set `listen` to an address the proxy reaches (0.0.0.0:8080 for every interface)");
    if let Some(pipeline) = plan.local_pipeline.filter(|p| !p.exists()) {
        crate::outln!();
        crate::outln!(
            "no pipeline at {} yet: write one (docs/pipeline.md; `skiff validate` checks it), or point \
             the app's `pipeline` at yours",
            pipeline.display()
        );
    }
    crate::outln!();
    crate::outln!("next:");
    if args.dir == Path::new(".") {
        crate::outln!("  skiff serve");
    } else {
        crate::outln!("  skiff serve --config {}", config.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_app_names_hold_only_allowed_characters() {
        let dir = Path::new("/nonexistent/My Project!");
        assert_eq!(default_app_name(Some("acme/web"), dir), "web");
        assert_eq!(default_app_name(Some("acme/*"), dir), "My-Project");
        assert_eq!(default_app_name(None, dir), "My-Project");
        assert_eq!(default_app_name(None, Path::new("/")), "app");
    }

    #[test]
    fn providers_are_named_as_the_config_names_them() {
        assert_eq!(parse_provider("GitLab").unwrap(), Provider::Gitlab);
        assert_eq!(provider_name(Provider::StandardWebhooks), "standard-webhooks");
        let err = parse_provider("gihub").unwrap_err();
        assert!(err.contains("`gihub` is not a webhook sender") && err.contains("github, bitbucket"), "{err}");
    }
}
