//! `skiff verify-provenance FILE`: checks a run's signed provenance (`provenance.intoto.jsonl`,
//! a DSSE envelope around an in-toto SLSA provenance v1 statement) against the public key of the
//! host that ran it, given as a file or fetched from the host's `/v1/provenance/key`; prints
//! what the statement names; optionally checks files against its subjects. Exits 0 when
//! everything checks out, 1 otherwise.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use sha2::Digest as _;
use skiff_registry::signature::PublicKey;
use skiff_server::provenance::{self, ResourceDescriptor, Verified};

/// `skiff verify-provenance FILE`.
#[derive(Debug, Clone, Args)]
pub struct VerifyProvenanceArgs {
    /// The provenance file (`provenance.intoto.jsonl`, as `skiff runs artifacts ID --download DIR`
    /// stores it).
    pub file: PathBuf,
    /// The host's public key (PEM), as `GET /v1/provenance/key` serves it; wins over `--server`.
    #[arg(long, value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// Fetch the public key from this host's `/v1/provenance/key` (trust on first use: prefer
    /// `--key` with a copy taken when the host was set up).
    #[arg(long, value_name = "URL", env = "SKIFF_SERVER")]
    pub server: Option<String>,
    /// A file whose SHA-256 must be one of the statement's subjects (repeatable).
    #[arg(long = "artifact", value_name = "FILE")]
    pub artifacts: Vec<PathBuf>,
    /// Print the verified statement as JSON instead.
    #[arg(long)]
    pub json: bool,
}

/// Runs `skiff verify-provenance`.
pub async fn run(args: VerifyProvenanceArgs) -> anyhow::Result<ExitCode> {
    match verify(&args).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("{}: NOT verified: {e:#}", args.file.display());
            Ok(ExitCode::from(1))
        }
    }
}

async fn verify(args: &VerifyProvenanceArgs) -> anyhow::Result<()> {
    let key = match (&args.key, &args.server) {
        (Some(path), _) => {
            let pem =
                std::fs::read_to_string(path).with_context(|| format!("reading the public key {}", path.display()))?;
            PublicKey::from_pem(&pem).with_context(|| format!("the public key {}", path.display()))?
        }
        (None, Some(server)) => fetch_key(server).await?,
        (None, None) => bail!(
            "no key to verify with: give the host's public key with `--key FILE`, or its URL with `--server URL` \
             (its `/v1/provenance/key`)"
        ),
    };
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let verified = provenance::verify_file(&bytes, &key)?;
    for path in &args.artifacts {
        check_artifact(path, &verified)?;
    }
    if args.json {
        let statements: Vec<&provenance::Statement> = verified.iter().map(|v| &v.statement).collect();
        let out = if statements.len() == 1 {
            serde_json::to_string_pretty(statements[0])
        } else {
            serde_json::to_string_pretty(&statements)
        };
        println!("{}", out?);
        return Ok(());
    }
    for v in &verified {
        print_statement(v);
    }
    let checked = if args.artifacts.is_empty() {
        String::new()
    } else {
        format!("; {} file(s) match its subjects", args.artifacts.len())
    };
    println!(
        "{}: verified: signed by key {}, an in-toto SLSA provenance v1 statement{checked}",
        args.file.display(),
        key.fingerprint()
    );
    Ok(())
}

/// The host's key from `SERVER/v1/provenance/key` (public: no token).
async fn fetch_key(server: &str) -> anyhow::Result<PublicKey> {
    let url = format!("{}/v1/provenance/key", server.trim_end_matches('/'));
    let resp = reqwest::get(&url).await.with_context(|| format!("fetching the host's public key from {url}"))?;
    let status = resp.status();
    let text = resp.text().await.with_context(|| format!("reading the host's public key from {url}"))?;
    if !status.is_success() {
        bail!("{url} answered {status}: {}", text.trim());
    }
    PublicKey::from_pem(&text).with_context(|| format!("the key {url} served"))
}

fn check_artifact(path: &Path, verified: &[Verified]) -> anyhow::Result<()> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hash = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hash).with_context(|| format!("reading {}", path.display()))?;
    let sum = hex::encode(hash.finalize());
    let subjects = || verified.iter().flat_map(|v| &v.statement.subject);
    if let Some(s) = subjects().find(|s| s.sha256() == Some(sum.as_str())) {
        println!("{}: sha256:{sum} is subject `{}`", path.display(), s.name);
        return Ok(());
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match subjects().find(|s| s.name == name) {
        Some(s) => bail!(
            "{} (sha256:{sum}) is not what the run produced: its subject `{name}` has sha256:{}",
            path.display(),
            s.sha256().unwrap_or_default()
        ),
        None => bail!("{} (sha256:{sum}) is none of the statement's subjects", path.display()),
    }
}

fn digests(d: &ResourceDescriptor) -> String {
    d.digest.iter().map(|(alg, hex)| format!("{alg}:{hex}")).collect::<Vec<_>>().join(" ")
}

fn print_statement(v: &Verified) {
    let s = &v.statement;
    let p = &s.predicate;
    let ext = &p.build_definition.external_parameters;
    let text = |k: &str| ext.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
    println!("builder:    {}", p.run_details.builder.id);
    println!("run:        {}", p.run_details.metadata.invocation_id);
    if let (Some(a), Some(b)) = (&p.run_details.metadata.started_on, &p.run_details.metadata.finished_on) {
        println!("time:       {a} .. {b}");
    }
    println!(
        "app:        {} (trigger {}, event {}, ref {}, repository {})",
        text("app"),
        text("trigger"),
        text("event"),
        text("ref"),
        text("repository")
    );
    println!("subjects:");
    for d in &s.subject {
        println!("  {}  {}", d.name, digests(d));
    }
    println!("dependencies:");
    for d in &p.build_definition.resolved_dependencies {
        let label = if d.uri.is_empty() { d.name.as_str() } else { d.uri.as_str() };
        let steps = d
            .annotations
            .get("steps")
            .and_then(|s| s.as_array())
            .map(|s| {
                let s: Vec<&str> = s.iter().filter_map(|v| v.as_str()).collect();
                format!("  (steps {})", s.join(", "))
            })
            .unwrap_or_default();
        let digest = if d.digest.is_empty() { "no digest".to_string() } else { digests(d) };
        println!("  {label}  {digest}{steps}");
    }
}
