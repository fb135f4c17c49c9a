//! `skiff.toml`: the apps a host serves (repository, provider, webhook secret, triggers,
//! pipeline, secrets, limits), the dispatch key and the API tokens.
//!
//! Secret values are written sealed (`enc:v1:…`, see [`super::crypto`]), as `env:NAME`, or
//! plain (development only: the host warns at startup).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use skiff_edge_core::{Provider, Secret, Triggers};

use super::crypto::{MasterKey, PREFIX};

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    /// Address to listen on (`--listen` wins).
    pub listen: Option<String>,
    /// Data directory, relative to the config file (`--data` wins).
    pub data: Option<PathBuf>,
    /// Where runs are stored: `sqlite` (the default: `skiff.db` in the data directory) or a
    /// PostgreSQL URL (`postgres://user:password@host:port/db`), sealed or `env:NAME` when it
    /// holds a password (`--store` wins).
    pub store: Option<String>,
    /// The key dispatches from a master are signed with (Standard Webhooks, `whsec_…` or raw).
    pub dispatch_key: Option<String>,
    /// The key being rotated out: dispatches signed with it are still accepted.
    pub dispatch_key_previous: Option<String>,
    /// How far a dispatch's timestamp may be from now, in seconds (default 300).
    pub dispatch_tolerance_secs: Option<i64>,
    /// Runs at once on this host (default 4).
    pub max_concurrent_runs: Option<usize>,
    /// Log bytes kept per step (default 1 MiB).
    pub log_bytes_per_step: Option<u64>,
    /// What to do with runs that were running when the host stopped: `retry` (once, the
    /// default) or `fail`.
    pub recovery: Option<Recovery>,
    /// Keep run workspaces after the run (default false).
    pub keep_workspaces: Option<bool>,
    /// HTTP connections at once (default: three quarters of the open-file limit, at most 16384).
    pub max_connections: Option<usize>,
    /// HTTP connections at once from one client address (default: a quarter of `max-connections`).
    pub max_connections_per_client: Option<usize>,
    /// Seconds a request may take to arrive, headers and body (default 30).
    pub request_timeout_secs: Option<u64>,
    /// Seconds a kept-alive connection may stay silent (default 75).
    pub idle_timeout_secs: Option<u64>,
    /// The address users reach this host at (`https://ci.example.com`): commit statuses link
    /// to runs under it.
    pub public_url: Option<String>,
    /// This host's labels, which jobs name in `runs-on:` (`--labels` wins); every host also has
    /// `self-hosted`, `linux` and its architecture.
    pub labels: Option<Vec<String>>,
    /// Jobs, rather than whole runs, go to the hosts of the pool: the host that takes a run runs
    /// its graph, and each job instance is leased by any host whose labels cover its `runs-on`
    /// (default: on with a PostgreSQL store, off with SQLite, whose store one host owns).
    pub lease_jobs: Option<bool>,
    /// Seconds a host holds a run without renewing its lease (default 60, at least 3): after
    /// this long, a run whose host died or lost the database is another host's to run, and a
    /// host that could not renew stops it.
    pub lease_timeout_secs: Option<u64>,
    /// Shared components from registries: what every app gets unless it says more.
    pub registry: Option<RegistryDef>,
    /// The apps' caches (`uses: cache`).
    pub cache: Option<CacheDef>,
    /// Artifacts and caches in an S3-compatible bucket, shared by every host (default: the
    /// data directory).
    pub objects: Option<ObjectsDef>,
    /// Days a run's artifacts are kept, for apps that do not say (default 90).
    pub artifact_retention_days: Option<u32>,
    /// Days a finished run (its record, jobs, steps, logs and artifacts) is kept, for apps that
    /// do not say (default: for ever).
    pub run_retention_days: Option<u32>,
    /// API tokens.
    #[serde(default)]
    pub tokens: Vec<TokenDef>,
    /// Apps.
    #[serde(default)]
    pub apps: Vec<AppDef>,
    /// People who sign in to the web console with a password (`docs/console.md`).
    #[serde(default)]
    pub users: Vec<crate::console::UserDef>,
}

/// `[registry]`: how this host fetches shared components, and what it demands of them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegistryDef {
    /// Plain HTTP to registries that are not loopback addresses (default false).
    pub insecure: Option<bool>,
    /// Run registry tags that no digest pins, resolving them when a run starts (default false:
    /// such a run is refused until `skiff lock` pins them).
    pub allow_unpinned: Option<bool>,
    /// Run only components signed by one of `trusted-keys`, for every app (default false).
    pub require_signature: Option<bool>,
    /// PEM public keys (cosign's `cosign.pub`) trusted for every app, relative to the config file.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// The only registries (`host[:port]`) and URL hosts components may come from (default:
    /// any). Pipelines from pushed commits choose what the host fetches: list what you trust.
    pub allowed: Option<Vec<String>>,
}

/// `[cache]`: the apps' caches (`uses: cache`), kept in the data directory.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CacheDef {
    /// The most each app's cache holds, in MiB, unless the app says (default 10240, 10 GiB);
    /// past it the least recently used entries go.
    pub max_size_mb: Option<u64>,
}

/// `[objects]`: an S3-compatible bucket for artifacts and caches.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ObjectsDef {
    /// `s3://BUCKET` or `s3://BUCKET/PREFIX`.
    pub url: String,
    /// The endpoint of an S3-compatible service (`https://ACCOUNT.r2.cloudflarestorage.com`,
    /// `https://oss-cn-hangzhou.aliyuncs.com`, `http://127.0.0.1:9000`); default Amazon S3.
    pub endpoint: Option<String>,
    /// The region (default `us-east-1`; `auto` for R2).
    pub region: Option<String>,
    /// The access key id (sealed, `env:` or plain); without it, the environment's
    /// (`AWS_ACCESS_KEY_ID`, an instance role).
    pub access_key_id: Option<String>,
    /// The secret access key (sealed, `env:` or plain).
    pub secret_access_key: Option<String>,
}

/// What happens to a run that was running when the host stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recovery {
    /// Run it again once; fail it if it is interrupted again.
    #[default]
    Retry,
    /// Fail it with a reason.
    Fail,
}

/// An API token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TokenDef {
    /// A name for messages and run records.
    pub name: String,
    /// Hex SHA-256 of the token (`skiff serve --hash-token`).
    pub sha256: Option<String>,
    /// The token itself (sealed, `env:` or plain); hashed when loaded.
    pub token: Option<String>,
    /// Apps it may see and run; `"*"` for all.
    pub apps: Vec<String>,
}

/// An app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AppDef {
    /// Its name (`/hooks/{name}`).
    pub name: String,
    /// Repositories it builds (globs allowed).
    pub repository: Option<String>,
    /// The only webhook sender accepted (`github`, `gitlab`, …); any if absent.
    pub provider: Option<Provider>,
    /// The webhook secret.
    pub webhook_secret: Option<String>,
    /// The triggers (`push`, `pull_request`, `schedule`, …, as in a pipeline's `on:`).
    #[serde(default, alias = "triggers")]
    pub on: Option<toml::Value>,
    /// A folder copied into each run's workspace (relative to the config file).
    pub workspace: Option<PathBuf>,
    /// The pipeline file, relative to the run's workspace (default `.skiff/pipeline.yaml`).
    pub pipeline: Option<String>,
    /// The pipeline itself, inline YAML (instead of `pipeline`).
    pub pipeline_yaml: Option<String>,
    /// Secrets the pipeline may grant.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Runs of this app at once (default: the host's limit).
    pub max_concurrent_runs: Option<usize>,
    /// A run is cancelled after this long.
    pub run_timeout_secs: Option<u64>,
    /// PEM certificates its steps trust for HTTPS besides the Web PKI roots (a company CA, a
    /// self-hosted forge's), relative to the config file.
    pub ca_file: Option<PathBuf>,
    /// Fetch the event's commit into each run's workspace (default: when `repository` is set
    /// and `workspace` is not).
    pub fetch: Option<bool>,
    /// The URL to fetch from, instead of one derived from `provider` and `repository`.
    pub clone_url: Option<String>,
    /// A self-hosted forge's web address (`https://git.example.com`), where `owner/name.git` is.
    pub provider_url: Option<String>,
    /// The secret (a name in `secrets`) holding an HTTPS token or an SSH deploy key.
    pub clone_credential: Option<String>,
    /// The user name sent with a token (default per provider: `x-access-token`, `oauth2`, …).
    pub clone_user: Option<String>,
    /// Commits of history to fetch (default 1; 0 for all).
    pub fetch_depth: Option<u32>,
    /// Check out submodules (from the same host).
    pub submodules: Option<bool>,
    /// What a pull request builds: `head` (default) or `merge` (the forge's test merge).
    pub pull_request_ref: Option<String>,
    /// The secret (a name in `secrets`) holding a token that may set commit statuses; with it,
    /// each run's status shows on its commit.
    pub status_token: Option<String>,
    /// The forge's API (default: GitHub's and GitLab's public ones, `provider-url` + `/api/v1`
    /// for Gitea and Forgejo).
    pub api_url: Option<String>,
    /// The status's name on the commit (default `skiff/<app>`).
    pub status_context: Option<String>,
    /// Pull requests from forks get the app's secrets and grants as others do (`true`), or none
    /// (default `false`, as on GitHub: a fork's code could send them anywhere).
    pub trust_fork_pull_requests: Option<bool>,
    /// Run registry tags no digest pins (default: `[registry] allow-unpinned`).
    pub allow_unpinned: Option<bool>,
    /// Run only signed components (the host's `[registry] require-signature` cannot be turned off).
    pub require_signature: Option<bool>,
    /// More trusted public keys for this app's components, beside the host's.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// The most this app's cache holds, in MiB (default: `[cache] max-size-mb`).
    pub cache_max_size_mb: Option<u64>,
    /// Days its runs' artifacts are kept (default: the host's `artifact-retention-days`).
    pub artifact_retention_days: Option<u32>,
    /// Days its finished runs are kept, logs and artifacts included (default: the host's
    /// `run-retention-days`, else for ever).
    pub run_retention_days: Option<u32>,
    /// Who sees its status badge (`/badge/{app}.svg`): `public`, or `private` (the default).
    pub badge: Option<crate::console::BadgeAccess>,
    /// Deployment environments its jobs name with `environment:`: their secrets and rules
    /// (`[[apps.environments]]`).
    #[serde(default)]
    pub environments: Vec<EnvironmentDef>,
}

/// `[[apps.environments]]`: a deployment environment of an app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EnvironmentDef {
    /// The name jobs give in `environment:`.
    pub name: String,
    /// Secrets only jobs in this environment get (sealed, `env:` or plain, as the app's).
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Names of API tokens that may approve (or reject) its jobs; with any, each job waits
    /// for an approval before its first step.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Only runs of these refs may run jobs in it (globs: `main`, `release/*`, or a whole ref
    /// `refs/tags/v*`).
    pub branches: Option<Vec<String>>,
}

/// Where an app reports its runs' statuses.
#[derive(Clone)]
pub struct StatusSettings {
    pub forge: crate::repository::status::Forge,
    pub api_url: String,
    /// The app's single repository; else the event's.
    pub repository: Option<String>,
    pub context: String,
    pub token: String,
}

impl std::fmt::Debug for StatusSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StatusSettings({} {} {})", self.forge.name(), self.api_url, self.context)
    }
}

/// Where an app's pipeline comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineSource {
    /// A file in the run's workspace.
    Path(String),
    /// Inline YAML.
    Inline(String),
    /// A file of the commit the run builds: this path, or else the first of
    /// `.skiff/pipeline.yaml`, `.skiff/pipelines/*` and `serverless-pipeline.yaml`.
    Commit(Option<String>),
}

/// An app, resolved: secrets opened, triggers parsed.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// For the edge core's `decide`.
    pub edge: skiff_edge_core::App,
    /// The webhook secret.
    pub webhook_secret: Option<Secret>,
    /// The only sender accepted.
    pub provider: Option<Provider>,
    /// Copied into each run's workspace.
    pub workspace: Option<PathBuf>,
    /// Where the runs' code is fetched from, for an app that builds a repository.
    pub repo: Option<crate::repository::RepoSettings>,
    /// Where its runs' statuses are reported.
    pub status: Option<StatusSettings>,
    /// Fork pull requests get secrets too.
    pub trust_fork_pull_requests: bool,
    /// The pipeline.
    pub pipeline: PipelineSource,
    /// Secrets (opened).
    pub secrets: BTreeMap<String, String>,
    /// Runs at once on this host.
    pub max_concurrent_runs: usize,
    /// The app's own `max-concurrent-runs`, as written: it holds across every host sharing the
    /// run store (unset: only each host's own limit applies).
    pub max_runs_across_hosts: Option<usize>,
    /// A run's time limit.
    pub run_timeout: Option<std::time::Duration>,
    /// The CA bundle of `ca-file`, checked at start.
    pub ca_bundle: Option<std::sync::Arc<str>>,
    /// What its shared components must be: pinned, signed by which keys.
    pub components: skiff_registry::Policy,
    /// Days its runs' artifacts are kept.
    pub artifact_retention_days: u32,
    /// Days its finished runs are kept (none: for ever).
    pub run_retention_days: Option<u32>,
    /// Its deployment environments, by name.
    pub environments: BTreeMap<String, Environment>,
}

/// A deployment environment of an app, resolved.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Its name.
    pub name: String,
    /// Given only to jobs in this environment.
    pub secrets: BTreeMap<String, String>,
    /// Token names that may approve; empty: no approval needed.
    pub approvers: Vec<String>,
    /// The refs that may run jobs in it; `None`: any.
    pub branches: Option<skiff_edge_core::Patterns>,
}

impl Environment {
    /// Whether a run of `git_ref` may run jobs in this environment: a branch pattern matches
    /// the branch's name (`main` for `refs/heads/main`), or any ref written whole.
    pub fn allows_ref(&self, git_ref: Option<&str>) -> bool {
        let Some(patterns) = &self.branches else { return true };
        let Some(r) = git_ref.filter(|r| !r.is_empty()) else { return false };
        let short = r.strip_prefix("refs/heads/");
        short.is_some_and(|b| patterns.matches(b)) || patterns.matches(r)
    }
}

impl AppConfig {
    /// The app's name.
    pub fn name(&self) -> &str {
        &self.edge.name
    }
}

/// Which apps a token reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppScope {
    /// Every app.
    All,
    /// These apps.
    Only(Vec<String>),
}

impl AppScope {
    /// Whether `app` is in scope.
    pub fn allows(&self, app: &str) -> bool {
        match self {
            AppScope::All => true,
            AppScope::Only(apps) => apps.iter().any(|a| a == app),
        }
    }
}

/// A token, hashed.
#[derive(Debug, Clone)]
pub struct Token {
    /// Its name.
    pub name: String,
    /// Its apps.
    pub scope: AppScope,
}

/// The whole configuration, resolved.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Listen address.
    pub listen: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Where runs are stored.
    pub store: StoreLocation,
    /// The dispatch key, if dispatches from a remote master are accepted.
    pub dispatch_key: Option<Secret>,
    /// Dispatch timestamp tolerance.
    pub dispatch_tolerance_secs: i64,
    /// Runs at once.
    pub max_concurrent_runs: usize,
    /// Log bytes kept per step.
    pub log_bytes_per_step: u64,
    /// Crash recovery.
    pub recovery: Recovery,
    /// Keep workspaces.
    pub keep_workspaces: bool,
    /// Where users reach this host; statuses link to runs under it.
    pub public_url: Option<String>,
    /// The labels this host takes jobs for ([`host_labels`]): its own and the implicit ones.
    pub labels: Vec<String>,
    /// `lease-jobs` as the config says it (see [`ServeConfig::leases_jobs`]).
    pub lease_jobs: Option<bool>,
    /// How long a run's lease holds without renewal (renewed every quarter of it).
    pub lease_ttl: std::time::Duration,
    /// Plain HTTP to registries that are not loopback addresses.
    pub registry_insecure: bool,
    /// HTTP timeouts and connection caps.
    pub conn: super::conn::ConnLimits,
    /// How much each app's cache holds.
    pub cache: skiff_runtime::artifact_store::CacheLimits,
    /// `[objects]`, resolved: where artifacts and caches go instead of the data directory.
    pub objects: Option<crate::bucket::BucketConfig>,
    /// The client of `objects` (see [`Self::set_data_dir`]).
    pub bucket: Option<Arc<crate::bucket::Bucket>>,
    /// Days a run's artifacts are kept when its app is not configured (any more).
    pub artifact_retention_days: u32,
    /// Tokens by SHA-256.
    pub tokens: HashMap<[u8; 32], Token>,
    /// Apps by name.
    pub apps: BTreeMap<String, std::sync::Arc<AppConfig>>,
    /// The web console's users and public badges.
    pub console: crate::console::ConsoleConfig,
}

/// Where runs are stored (`store` in the config, `--store`).
#[derive(Clone, Default, PartialEq, Eq)]
pub enum StoreLocation {
    /// `skiff.db` in the data directory: one host.
    #[default]
    Sqlite,
    /// A PostgreSQL database, which several hosts may share. The URL may hold a password: its
    /// `Debug` leaves it out.
    Postgres(String),
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite => f.write_str("Sqlite"),
            StoreLocation::Postgres(url) => {
                let shown = crate::store::pg_tls::read(url)
                    .ok()
                    .and_then(|a| a.url.parse::<postgres::Config>().ok())
                    .map(|c| crate::store::postgres_url_redacted(&c))
                    .unwrap_or_else(|| "postgres://…".into());
                f.debug_tuple("Postgres").field(&shown).finish()
            }
        }
    }
}

impl StoreLocation {
    /// Reads a `store` value: `sqlite`, or a PostgreSQL URL written plain, sealed (`enc:v1:…`)
    /// or as `env:NAME`. A plain URL with a password is taken, with a warning.
    pub fn open(v: &str, key: Option<&MasterKey>) -> anyhow::Result<Self> {
        let hidden = v.starts_with(PREFIX) || v.starts_with("env:");
        let url = if hidden { open_value(v, key, "store")? } else { v.to_string() };
        let url = url.trim();
        if url == "sqlite" {
            return Ok(StoreLocation::Sqlite);
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!("`store` must be `sqlite` or a PostgreSQL URL (`postgres://user@host:port/db`)");
        }
        let asked = crate::store::pg_tls::read(url).context("`store`")?;
        let config: postgres::Config =
            asked.url.parse().map_err(|e| anyhow::anyhow!("`store`: the PostgreSQL URL cannot be read: {e}"))?;
        // A missing or unreadable `sslrootcert` is said now, not at the first connection.
        crate::store::pg_tls::transport(&asked).context("`store`")?;
        if !hidden && config.get_password().is_some() {
            tracing::warn!(
                "`store` holds a database password in plain text; write it as `env:NAME` or seal it with `skiff serve --encrypt`"
            );
        }
        Ok(StoreLocation::Postgres(url.to_string()))
    }
}

fn secs(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n.max(1))
}

/// Days a run's artifacts are kept unless the config says (GitHub's default).
pub const DEFAULT_RETENTION_DAYS: u32 = 90;

fn days(written: Option<u32>, default: u32, what: &str) -> anyhow::Result<u32> {
    match written {
        Some(0) => bail!("`{what} = 0` would remove what runs keep as soon as they end: give at least 1"),
        Some(d) => Ok(d),
        None => Ok(default),
    }
}

fn mebibytes(written: Option<u64>, default: u64, what: &str) -> anyhow::Result<u64> {
    match written {
        Some(0) => bail!("{what} = 0 leaves no room for any cache entry: give at least 1 (MiB)"),
        Some(mb) => mb.checked_mul(1 << 20).with_context(|| format!("{what} = {mb} is too large")),
        None => Ok(default),
    }
}

impl ServeConfig {
    /// Whether jobs, rather than whole runs, are leased by the hosts of a pool (`lease-jobs`;
    /// by default when the store is PostgreSQL, which hosts share).
    pub fn leases_jobs(&self) -> bool {
        self.lease_jobs.unwrap_or(matches!(self.store, StoreLocation::Postgres(_)))
    }

    /// Reads `path`; relative paths in it are relative to its folder.
    pub fn load(path: &Path, key: Option<&MasterKey>) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading the config file {}", path.display()))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_toml(&text, &base, key).with_context(|| format!("in the config file {}", path.display()))
    }

    /// Parses a config's text.
    pub fn from_toml(text: &str, base: &Path, key: Option<&MasterKey>) -> anyhow::Result<Self> {
        let file: ConfigFile = toml::from_str(text)?;
        Self::resolve(file, base, key)
    }

    /// Resolves a parsed file.
    pub fn resolve(file: ConfigFile, base: &Path, key: Option<&MasterKey>) -> anyhow::Result<Self> {
        let max = file.max_concurrent_runs.unwrap_or(4).max(1);
        let registry = file.registry.unwrap_or_default();
        let host_policy = skiff_registry::Policy {
            allow_unpinned: registry.allow_unpinned.unwrap_or(false),
            require_signature: registry.require_signature.unwrap_or(false),
            trusted_keys: read_keys(&registry.trusted_keys, base).context("`[registry] trusted-keys`")?,
            registries: registry.allowed.clone(),
        };
        let retention = days(file.artifact_retention_days, DEFAULT_RETENTION_DAYS, "artifact-retention-days")?;
        let mut cache = skiff_runtime::artifact_store::CacheLimits {
            default_bytes: mebibytes(
                file.cache.as_ref().and_then(|c| c.max_size_mb),
                skiff_runtime::artifact_store::CacheLimits::DEFAULT_BYTES,
                "`[cache] max-size-mb`",
            )?,
            apps: HashMap::new(),
        };
        let console = crate::console::ConsoleConfig::resolve(&file.users, &file.apps)?;
        let mut apps = BTreeMap::new();
        for def in file.apps {
            let name = def.name.clone();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                bail!("app name `{name}` may hold only letters, digits, `-`, `_` and `.`");
            }
            if let Some(mb) = def.cache_max_size_mb {
                let bytes = mebibytes(Some(mb), 0, "`cache-max-size-mb`").with_context(|| format!("app `{name}`"))?;
                cache.apps.insert(name.clone(), bytes);
            }
            let app = resolve_app(def, base, key, max, &host_policy, retention, file.run_retention_days)
                .with_context(|| format!("app `{name}`"))?;
            if apps.insert(name.clone(), std::sync::Arc::new(app)).is_some() {
                bail!("app `{name}` is defined twice");
            }
        }
        let mut tokens = HashMap::new();
        for t in file.tokens {
            let hash = match (&t.sha256, &t.token) {
                (Some(h), None) => h.trim().to_ascii_lowercase(),
                (None, Some(v)) => super::crypto::token_hash(&open_value(v, key, &format!("token `{}`", t.name))?),
                _ => bail!("token `{}` needs exactly one of `sha256` or `token`", t.name),
            };
            let bytes: [u8; 32] = hex::decode(&hash).ok().and_then(|b| b.try_into().ok()).with_context(|| {
                format!("token `{}`: `sha256` must be 64 hex digits (`skiff serve --hash-token`)", t.name)
            })?;
            let scope = if t.apps.iter().any(|a| a == "*") {
                AppScope::All
            } else {
                for a in &t.apps {
                    if !apps.contains_key(a) {
                        bail!("token `{}` names app `{a}`, which is not configured", t.name);
                    }
                }
                AppScope::Only(t.apps.clone())
            };
            // A token's name is who it is: who started a run, who approved a deploy.
            if tokens.values().any(|other: &Token| other.name == t.name) {
                bail!("two tokens are named `{}`: give each its own name (approvals and the logs name tokens)", t.name);
            }
            if tokens.insert(bytes, Token { name: t.name.clone(), scope }).is_some() {
                bail!("token `{}` has the same value as another token: give each its own secret", t.name);
            }
        }
        // An approver is a token that reaches the app (else it could not see the run).
        for app in apps.values() {
            for env in app.environments.values() {
                for who in &env.approvers {
                    let Some(t) = tokens.values().find(|t| &t.name == who) else {
                        bail!(
                            "environment `{}` of app `{}` names approver `{who}`, which is no token in `[[tokens]]`",
                            env.name,
                            app.name()
                        );
                    };
                    if !t.scope.allows(app.name()) {
                        bail!(
                            "environment `{}` of app `{}` names approver `{who}`, a token that does not reach the app \
                             (add `{}` to its `apps`)",
                            env.name,
                            app.name(),
                            app.name()
                        );
                    }
                }
            }
        }
        let mut dispatch_key =
            file.dispatch_key.as_deref().map(|v| open_value(v, key, "dispatch-key").map(Secret::new)).transpose()?;
        if let Some(previous) = file.dispatch_key_previous.as_deref() {
            let previous = open_value(previous, key, "dispatch-key-previous")?;
            dispatch_key = Some(
                dispatch_key
                    .ok_or_else(|| {
                        anyhow::anyhow!("dispatch-key-previous is set without dispatch-key: set the new key too")
                    })?
                    .with_previous(previous),
            );
        }
        let objects = file.objects.as_ref().map(|o| objects(o, key)).transpose().context("`[objects]`")?;
        let mut config = ServeConfig {
            listen: file.listen.unwrap_or_else(|| "127.0.0.1:8080".into()),
            data_dir: base.join(file.data.unwrap_or_else(|| "skiff-data".into())),
            store: file.store.as_deref().map(|v| StoreLocation::open(v, key)).transpose()?.unwrap_or_default(),
            dispatch_key,
            dispatch_tolerance_secs: file
                .dispatch_tolerance_secs
                .unwrap_or(skiff_edge_core::DEFAULT_TIMESTAMP_TOLERANCE_SECS),
            max_concurrent_runs: max,
            log_bytes_per_step: file.log_bytes_per_step.unwrap_or(1 << 20),
            recovery: file.recovery.unwrap_or_default(),
            keep_workspaces: file.keep_workspaces.unwrap_or(false),
            public_url: file.public_url.map(|u| u.trim_end_matches('/').to_string()),
            labels: host_labels(&file.labels.unwrap_or_default()).context("`labels`")?,
            lease_jobs: file.lease_jobs,
            lease_ttl: match file.lease_timeout_secs {
                None => std::time::Duration::from_secs(60),
                Some(s @ 3..=86_400) => std::time::Duration::from_secs(s),
                Some(s) => anyhow::bail!(
                    "`lease-timeout-secs = {s}`: give between 3 and 86400 seconds (a host renews its leases every \
                     quarter of it; 60 is the default)"
                ),
            },
            registry_insecure: registry.insecure.unwrap_or(false),
            conn: {
                let d = super::conn::ConnLimits::default();
                let max_connections = file.max_connections.unwrap_or(d.max_connections).max(1);
                super::conn::ConnLimits {
                    request_timeout: file.request_timeout_secs.map_or(d.request_timeout, secs),
                    idle_timeout: file.idle_timeout_secs.map_or(d.idle_timeout, secs),
                    max_connections,
                    max_per_client: file
                        .max_connections_per_client
                        .unwrap_or(max_connections / 4)
                        .clamp(1, max_connections),
                }
            },
            cache,
            objects,
            bucket: None,
            artifact_retention_days: retention,
            tokens,
            apps,
            console,
        };
        let data = config.data_dir.clone();
        config.set_data_dir(data)?;
        Ok(config)
    }

    /// Moves the data directory (`--data`); the bucket's client spools cache entries there.
    pub fn set_data_dir(&mut self, dir: PathBuf) -> anyhow::Result<()> {
        self.bucket = match &self.objects {
            Some(o) => Some(Arc::new(crate::bucket::Bucket::new(o, self.cache.clone(), dir.join("spool"))?)),
            None => None,
        };
        self.data_dir = dir;
        Ok(())
    }

    /// The token whose hash is `sha256(presented)`.
    pub fn token(&self, presented: &str) -> Option<&Token> {
        use sha2::Digest as _;
        let hash: [u8; 32] = sha2::Sha256::digest(presented.as_bytes()).into();
        self.tokens.get(&hash)
    }
}

/// PEM public keys, paths relative to the config file.
fn read_keys(files: &[PathBuf], base: &Path) -> anyhow::Result<Vec<skiff_registry::signature::PublicKey>> {
    files
        .iter()
        .map(|f| {
            let path = base.join(f);
            let pem = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            skiff_registry::signature::PublicKey::from_pem(&pem).with_context(|| format!("{}", path.display()))
        })
        .collect()
}

fn resolve_app(
    def: AppDef,
    base: &Path,
    key: Option<&MasterKey>,
    max: usize,
    host_policy: &skiff_registry::Policy,
    retention: u32,
    run_retention: Option<u32>,
) -> anyhow::Result<AppConfig> {
    let artifact_retention_days = days(def.artifact_retention_days, retention, "artifact-retention-days")?;
    let run_retention_days = match def.run_retention_days.or(run_retention) {
        Some(d) => Some(days(Some(d), d, "run-retention-days")?),
        None => None,
    };
    let on: Triggers = match def.on.clone() {
        None => Triggers::default(),
        Some(v) => {
            let json = serde_json::to_value(v)?;
            serde_json::from_value(json).context("`on`")?
        }
    };
    for s in &on.schedule {
        super::cron::parse(&s.cron).context("`on.schedule`")?;
    }
    let repository = def
        .repository
        .clone()
        .map(|r| serde_json::from_value(serde_json::Value::String(r)))
        .transpose()
        .context("`repository`")?;
    let edge = skiff_edge_core::App { name: def.name.clone(), environment: None, repository, on };
    let mut secrets = BTreeMap::new();
    for (k, v) in &def.secrets {
        let plain = open_value(v, key, &format!("secret `{k}`"))?;
        secrets.insert(k.clone(), plain);
    }
    let mut environments = BTreeMap::new();
    for e in &def.environments {
        let env = resolve_environment(e, key).with_context(|| format!("environment `{}`", e.name))?;
        if environments.insert(e.name.clone(), env).is_some() {
            bail!("environment `{}` is defined twice", e.name);
        }
    }
    let ca_bundle = def.ca_file.as_ref().map(|f| read_ca_bundle(&base.join(f))).transpose().context("`ca-file`")?;
    let fetches = def.fetch.unwrap_or((def.repository.is_some() || def.clone_url.is_some()) && def.workspace.is_none());
    if fetches && def.workspace.is_some() {
        bail!("`fetch = true` and `workspace` exclude each other: the workspace is either the commit or a folder");
    }
    let status = status_settings(&def, &secrets)?;
    let repo = if fetches { Some(repo_settings(&def, &secrets, ca_bundle.clone())?) } else { None };
    let pipeline = match (def.pipeline, def.pipeline_yaml) {
        (Some(_), Some(_)) => bail!("give `pipeline` (a file) or `pipeline-yaml` (inline), not both"),
        (None, Some(y)) => PipelineSource::Inline(y),
        (p, None) if repo.is_some() => PipelineSource::Commit(p),
        (p, None) => {
            let p = p.unwrap_or_else(|| ".skiff/pipeline.yaml".into());
            // Without a workspace to copy, the pipeline file is read from beside the config.
            match &def.workspace {
                Some(_) => PipelineSource::Path(p),
                None => PipelineSource::Path(base.join(p).display().to_string()),
            }
        }
    };
    let webhook_secret =
        def.webhook_secret.as_deref().map(|v| open_value(v, key, "webhook-secret").map(Secret::new)).transpose()?;
    let mut components = host_policy.clone();
    components.allow_unpinned = def.allow_unpinned.unwrap_or(host_policy.allow_unpinned);
    // An app may demand signatures; it cannot waive the host's demand.
    components.require_signature |= def.require_signature.unwrap_or(false);
    components.trusted_keys.extend(read_keys(&def.trusted_keys, base).context("`trusted-keys`")?);
    if components.require_signature && components.trusted_keys.is_empty() {
        bail!("`require-signature` needs at least one key in `trusted-keys` (a PEM public key, cosign's cosign.pub)");
    }
    Ok(AppConfig {
        edge,
        webhook_secret,
        provider: def.provider,
        workspace: def.workspace.map(|w| base.join(w)),
        trust_fork_pull_requests: def.trust_fork_pull_requests.unwrap_or(false),
        status,
        repo,
        pipeline,
        secrets,
        max_concurrent_runs: def.max_concurrent_runs.unwrap_or(max).max(1),
        max_runs_across_hosts: def.max_concurrent_runs.map(|m| m.max(1)),
        run_timeout: def.run_timeout_secs.map(std::time::Duration::from_secs),
        ca_bundle,
        components,
        artifact_retention_days,
        run_retention_days,
        environments,
    })
}

fn resolve_environment(e: &EnvironmentDef, key: Option<&MasterKey>) -> anyhow::Result<Environment> {
    let name = &e.name;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        bail!("an environment's name may hold only letters, digits, `-`, `_` and `.`");
    }
    let mut secrets = BTreeMap::new();
    for (k, v) in &e.secrets {
        secrets.insert(k.clone(), open_value(v, key, &format!("secret `{k}` of environment `{name}`"))?);
    }
    let branches = match &e.branches {
        None => None,
        Some(b) if b.is_empty() => {
            bail!("`branches = []` would refuse every run: leave it out to allow any ref, or name the branches")
        }
        Some(b) => {
            Some(skiff_edge_core::Patterns::globs(b.iter().cloned()).map_err(|e| anyhow::anyhow!("`branches`: {e}"))?)
        }
    };
    Ok(Environment { name: name.clone(), secrets, approvers: e.approvers.clone(), branches })
}

fn status_settings(def: &AppDef, secrets: &BTreeMap<String, String>) -> anyhow::Result<Option<StatusSettings>> {
    use crate::repository::status::Forge;
    let Some(name) = &def.status_token else { return Ok(None) };
    let token = secrets
        .get(name)
        .with_context(|| format!("`status-token` names the secret `{name}`, which is not in the app's `secrets`"))?
        .clone();
    let forge = match def.provider {
        Some(Provider::Github) => Forge::GitHub,
        Some(Provider::Gitlab) => Forge::GitLab,
        Some(Provider::Gitea | Provider::Forgejo) => Forge::Gitea,
        other => bail!(
            "`status-token` is set, but statuses are reported to GitHub, GitLab, Gitea and Forgejo only, and the \
             app's provider is {}",
            other.map(|p| format!("{p:?}").to_lowercase()).unwrap_or_else(|| "not set".into())
        ),
    };
    let api_url = match (&def.api_url, forge, &def.provider_url) {
        (Some(u), _, _) => u.trim_end_matches('/').to_string(),
        (None, Forge::GitHub, None) => "https://api.github.com".into(),
        (None, Forge::GitLab, None) => "https://gitlab.com/api/v4".into(),
        (None, Forge::GitHub, Some(p)) => format!("{}/api/v3", p.trim_end_matches('/')),
        (None, Forge::GitLab, Some(p)) => format!("{}/api/v4", p.trim_end_matches('/')),
        (None, Forge::Gitea, Some(p)) => format!("{}/api/v1", p.trim_end_matches('/')),
        (None, Forge::Gitea, None) => {
            bail!("a Gitea or Forgejo app reporting statuses needs `api-url` or `provider-url`")
        }
    };
    let repository = def.repository.clone().filter(|r| !r.contains(['*', '?', '[', ',']));
    let context = def.status_context.clone().unwrap_or_else(|| format!("skiff/{}", def.name));
    // Checked now, with a stand-in commit, rather than at the first run.
    crate::repository::status::StatusTarget {
        forge,
        api_url: api_url.clone(),
        repository: repository.clone().unwrap_or_else(|| "owner/name".into()),
        sha: "0".repeat(40),
        context: context.clone(),
        target_url: None,
        token: token.clone(),
    }
    .validate()
    .map_err(anyhow::Error::msg)
    .context("commit statuses")?;
    Ok(Some(StatusSettings { forge, api_url, repository, context, token }))
}

fn repo_settings(
    def: &AppDef,
    secrets: &BTreeMap<String, String>,
    ca_bundle: Option<std::sync::Arc<str>>,
) -> anyhow::Result<crate::repository::RepoSettings> {
    use crate::repository::fetch::{Credential, Remote};
    let clone_url =
        def.clone_url.as_deref().map(Remote::parse).transpose().map_err(anyhow::Error::msg).context("`clone-url`")?;
    let web_url = match &def.provider_url {
        Some(u) => {
            Remote::parse(&format!("{}/o/r.git", u.trim_end_matches('/')))
                .map_err(anyhow::Error::msg)
                .context("`provider-url`")?;
            Some(u.trim_end_matches('/').to_string())
        }
        None => def.provider.and_then(crate::repository::provider_site).map(String::from),
    };
    let single = def.repository.as_ref().filter(|r| !r.contains(['*', '?', '[', ',']));
    if clone_url.is_none() && web_url.is_none() {
        bail!(
            "to fetch the repository, set `provider` (github, gitlab, gitee, codeup, bitbucket), `provider-url` (a self-hosted forge) or `clone-url`"
        );
    }
    let credential = match &def.clone_credential {
        None => None,
        Some(name) => {
            let v = secrets.get(name).with_context(|| {
                format!("`clone-credential` names the secret `{name}`, which is not in the app's `secrets`")
            })?;
            let user = def.clone_user.as_deref().unwrap_or(crate::repository::token_user(def.provider));
            Some(Credential::from_secret(v, user))
        }
    };
    let merge_ref = match def.pull_request_ref.as_deref() {
        None | Some("head") => false,
        Some("merge") => true,
        Some(o) => bail!("`pull-request-ref = \"{o}\"`: write \"head\" or \"merge\""),
    };
    Ok(crate::repository::RepoSettings {
        clone_url,
        web_url,
        repository: single.cloned(),
        credential,
        depth: def.fetch_depth.unwrap_or(1),
        submodules: def.submodules.unwrap_or(false),
        merge_ref,
        ca_bundle,
    })
}

/// A CA bundle file, read and checked (its certificates parse) now rather than at the first
/// step that uses it.
pub fn read_ca_bundle(path: &Path) -> anyhow::Result<std::sync::Arc<str>> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    skiff_runtime::capabilities::connect::tls_config(Some(&pem))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(pem.into())
}

/// `[objects]`, checked: an `s3://` URL, both keys or neither, opened.
fn objects(o: &ObjectsDef, key: Option<&MasterKey>) -> anyhow::Result<crate::bucket::BucketConfig> {
    let rest = o
        .url
        .strip_prefix("s3://")
        .with_context(|| format!("`url = \"{}\"`: write the bucket as `s3://BUCKET` or `s3://BUCKET/PREFIX`", o.url))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        bail!("`url = \"{}\"` names no bucket: write `s3://BUCKET`", o.url);
    }
    let open = |v: &Option<String>, what: &str| v.as_deref().map(|v| open_value(v, key, what)).transpose();
    let access_key_id = open(&o.access_key_id, "[objects] access-key-id")?;
    let secret_access_key = open(&o.secret_access_key, "[objects] secret-access-key")?;
    if access_key_id.is_some() != secret_access_key.is_some() {
        bail!("give both `access-key-id` and `secret-access-key`, or neither (the environment's credentials are used)");
    }
    if let Some(e) = &o.endpoint
        && !(e.starts_with("https://") || e.starts_with("http://"))
    {
        bail!("`endpoint = \"{e}\"`: give a URL (`https://…`, or `http://…` for a server on a private network)");
    }
    Ok(crate::bucket::BucketConfig {
        bucket: bucket.to_string(),
        prefix: prefix.trim_matches('/').to_string(),
        allow_http: o.endpoint.as_deref().is_some_and(|e| e.starts_with("http://")),
        endpoint: o.endpoint.clone(),
        region: o.region.clone().unwrap_or_else(|| "us-east-1".into()),
        access_key_id,
        secret_access_key,
    })
}

/// Opens a secret value: `enc:v1:…` with the master key, `env:NAME` from the environment, or
/// plain (with a warning that names the setting, never the value).
pub fn open_value(v: &str, key: Option<&MasterKey>, what: &str) -> anyhow::Result<String> {
    if v.starts_with(PREFIX) {
        let key = key.with_context(|| format!("{what} is sealed but no master key is loaded"))?;
        let plain = key.open(v).with_context(|| what.to_string())?;
        return String::from_utf8(plain).with_context(|| format!("{what} is not UTF-8"));
    }
    if let Some(name) = v.strip_prefix("env:") {
        return std::env::var(name)
            .with_context(|| format!("{what} reads the environment variable `{name}`, which is not set"));
    }
    tracing::warn!("{what} is written in plain text; seal it with `skiff serve --encrypt`");
    Ok(v.to_string())
}

/// The labels a host takes jobs for: `self-hosted`, `linux`, its architecture as GitHub names
/// it (`x64`, `arm64`), and `own` (checked and written as jobs match them: lower case), sorted.
pub fn host_labels(own: &[String]) -> anyhow::Result<Vec<String>> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        "x86" => "x86",
        "arm" => "arm",
        other => other,
    };
    let mut labels = vec!["self-hosted".to_string(), "linux".to_string(), arch.to_string()];
    for l in own.iter().flat_map(|l| l.split(',')).filter(|l| !l.trim().is_empty()) {
        labels
            .push(skiff_pipeline::plan::label(l).map_err(|e| anyhow::anyhow!(e.replace("`runs-on` label", "label")))?);
    }
    labels.sort();
    labels.dedup();
    Ok(labels)
}
