//! `skiff trigger` and `skiff runs …`: command-line clients of the Open API.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use skiff_pipeline::inert;

use skiff_server::sse::SseParser;

/// Where the API is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The host's URL.
    #[arg(long, env = "SKIFF_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// An API token.
    #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `skiff trigger APP`.
#[derive(Debug, Clone, Args)]
pub struct TriggerArgs {
    /// The app.
    pub app: String,
    /// The Git ref (`main`, `refs/tags/v1`).
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    /// An input, repeatable.
    #[arg(long = "input", value_name = "KEY=VALUE")]
    pub inputs: Vec<String>,
    /// Follow the run's logs and exit with its result (0 only on success).
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `skiff runs …`.
#[derive(Debug, Clone, Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    List {
        /// Only this app.
        #[arg(long)]
        app: Option<String>,
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a run with its jobs and steps.
    Show {
        /// The run id.
        id: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a run's logs.
    Logs {
        /// The run id.
        id: i64,
        /// Keep printing until the run is over; exit with its result.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a queued or running run.
    Cancel {
        /// The run id.
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a run's artifacts, or download them.
    Artifacts {
        /// The run id.
        id: i64,
        /// Download them into this folder (created if missing), each checked against its SHA-256.
        #[arg(long, value_name = "DIR")]
        download: Option<PathBuf>,
        /// Only this artifact (repeatable).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve a run's jobs waiting for their environment (all, or `--job`); the token must be
    /// among the environment's approvers.
    Approve {
        /// The run id.
        id: i64,
        /// Only this job (its id, or a matrix instance's key).
        #[arg(long)]
        job: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reject a run's jobs waiting for their environment (all, or `--job`): they are cancelled.
    Reject {
        /// The run id.
        id: i64,
        /// Only this job (its id, or a matrix instance's key).
        #[arg(long)]
        job: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a finished run again.
    Rerun {
        /// The run id.
        id: i64,
        /// Only its failed jobs.
        #[arg(long)]
        failed: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(c: &ClientArgs) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().build()?;
        Ok(Api { http, base: c.server.trim_end_matches('/').to_string(), token: c.token.clone() })
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = r.send().await.with_context(|| format!("reaching {}", self.base))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body.get("error").and_then(Value::as_str).unwrap_or("no message");
            bail!("{} answered {status}: {msg}", self.base);
        }
        Ok(body)
    }
}

fn pair(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s.split_once('=').with_context(|| format!("input `{s}` is not KEY=VALUE"))?;
    Ok((k.trim().to_string(), v.to_string()))
}

/// Runs `skiff trigger`.
pub async fn trigger(args: TriggerArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.client)?;
    let inputs: BTreeMap<String, String> = args.inputs.iter().map(|s| pair(s.as_str())).collect::<Result<_, _>>()?;
    let body = serde_json::json!({"ref": args.git_ref, "inputs": inputs});
    let r = api.send(api.req(reqwest::Method::POST, &format!("/v1/apps/{}/runs", args.app)).json(&body)).await?;
    let id = r["id"].as_i64().context("the answer has no run id")?;
    eprintln!("run {id} ({} #{}) queued", args.app, r["number"]);
    crate::outln!("{id}");
    if args.follow {
        return follow(&api, id).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `skiff runs …`.
pub async fn runs(cmd: RunsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RunsCommand::List { app, status, limit, json, client } => {
            let api = Api::new(&client)?;
            let mut q = vec![("limit", limit.to_string())];
            q.extend(app.map(|a| ("app", a)));
            q.extend(status.map(|s| ("status", s)));
            let r = api.send(api.req(reqwest::Method::GET, "/v1/runs").query(&q)).await?;
            if json {
                crate::outln!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(ExitCode::SUCCESS);
            }
            crate::outln!(
                "{:>6}  {:<16} {:>5}  {:<10} {:<12} {:<24} {:>9}",
                "ID",
                "APP",
                "#",
                "STATUS",
                "TRIGGER",
                "REF",
                "DURATION"
            );
            for run in r["runs"].as_array().into_iter().flatten() {
                crate::outln!(
                    "{:>6}  {:<16} {:>5}  {:<10} {:<12} {:<24} {:>9}",
                    run["id"],
                    run["app"].as_str().unwrap_or(""),
                    run["number"],
                    run["status"].as_str().unwrap_or(""),
                    run["trigger"].as_str().unwrap_or(""),
                    run["ref"].as_str().unwrap_or("-"),
                    duration(&run["duration_ms"]),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Show { id, json, client } => {
            let api = Api::new(&client)?;
            let r = api.send(api.req(reqwest::Method::GET, &format!("/v1/runs/{id}"))).await?;
            if json {
                crate::outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_run(&r);
            }
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Logs { id, follow: true, client } => follow(&Api::new(&client)?, id).await,
        RunsCommand::Logs { id, follow: false, client } => {
            let api = Api::new(&client)?;
            let r = api.send(api.req(reqwest::Method::GET, &format!("/v1/runs/{id}/logs"))).await?;
            for l in r["lines"].as_array().into_iter().flatten() {
                print_line(l);
            }
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Cancel { id, client } => {
            let api = Api::new(&client)?;
            let r = api.send(api.req(reqwest::Method::POST, &format!("/v1/runs/{id}/cancel"))).await?;
            crate::outln!("run {id}: {}", r["status"].as_str().unwrap_or("?"));
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Artifacts { id, download, names, json, client } => {
            artifacts(&Api::new(&client)?, id, download.as_deref(), &names, json).await
        }
        RunsCommand::Approve { id, job, client } => decide(&Api::new(&client)?, id, job, "approve").await,
        RunsCommand::Reject { id, job, client } => decide(&Api::new(&client)?, id, job, "reject").await,
        RunsCommand::Rerun { id, failed, client } => {
            let api = Api::new(&client)?;
            let body = serde_json::json!({"failed_only": failed});
            let r = api.send(api.req(reqwest::Method::POST, &format!("/v1/runs/{id}/rerun")).json(&body)).await?;
            eprintln!("run {} queued (run {id} again)", r["id"]);
            crate::outln!("{}", r["id"]);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `skiff runs approve` and `skiff runs reject`.
async fn decide(api: &Api, id: i64, job: Option<String>, what: &str) -> anyhow::Result<ExitCode> {
    let body = serde_json::json!({ "job": job });
    let r = api.send(api.req(reqwest::Method::POST, &format!("/v1/runs/{id}/{what}")).json(&body)).await?;
    for d in r["decisions"].as_array().into_iter().flatten() {
        crate::outln!(
            "run {id}: job {} {} for environment {} by {}",
            field(&d["job"]),
            field(&d["decision"]),
            field(&d["environment"]),
            field(&d["by"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `skiff runs artifacts`: lists a run's artifacts, or downloads them into `into`.
async fn artifacts(
    api: &Api,
    id: i64,
    into: Option<&std::path::Path>,
    names: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let r = api.send(api.req(reqwest::Method::GET, &format!("/v1/runs/{id}/artifacts"))).await?;
    let all: Vec<Value> = r["artifacts"].as_array().cloned().unwrap_or_default();
    for n in names {
        if !all.iter().any(|a| a["name"].as_str() == Some(n)) {
            let have: Vec<&str> = all.iter().filter_map(|a| a["name"].as_str()).collect();
            bail!(
                "run {id} has no artifact `{n}`; it has {}",
                if have.is_empty() { "none".to_string() } else { have.join(", ") }
            );
        }
    }
    let chosen: Vec<&Value> =
        all.iter().filter(|a| names.is_empty() || names.iter().any(|n| a["name"].as_str() == Some(n))).collect();
    let Some(dir) = into else {
        if json {
            crate::outln!("{}", serde_json::to_string_pretty(&r)?);
            return Ok(ExitCode::SUCCESS);
        }
        if chosen.is_empty() {
            eprintln!("run {id} stored no artifacts");
        }
        for a in chosen {
            crate::outln!(
                "{:<40} {:>12}  {}  {}",
                a["name"].as_str().unwrap_or("?"),
                a["size"],
                a["step"].as_str().unwrap_or("?"),
                a["sha256"].as_str().unwrap_or("?")
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for a in chosen {
        let name = a["name"].as_str().unwrap_or_default();
        // The name comes from the server: it must not lead out of the folder.
        anyhow::ensure!(
            skiff_runtime::artifact_store::valid_name(name),
            "the server named an artifact `{name}`, which is not a plain file name; nothing was written for it"
        );
        let want = a["sha256"].as_str().unwrap_or_default().to_string();
        let size = download(api, &format!("/v1/runs/{id}/artifacts/{name}"), &dir.join(name), &want).await?;
        eprintln!("downloaded {name} ({size} bytes)");
        crate::outln!("{}", dir.join(name).display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Streams one artifact to `to` through a temporary file, checking its SHA-256 before the rename.
async fn download(api: &Api, path: &str, to: &std::path::Path, sha256: &str) -> anyhow::Result<u64> {
    use futures::StreamExt as _;
    use sha2::Digest as _;
    let resp = api.req(reqwest::Method::GET, path).send().await.with_context(|| format!("reaching {}", api.base))?;
    let status = resp.status();
    if !status.is_success() {
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        bail!("{} answered {status}: {}", api.base, body.get("error").and_then(Value::as_str).unwrap_or("no message"));
    }
    let tmp = to.with_file_name(format!(".{}.part", to.file_name().unwrap_or_default().display()));
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut hash = sha2::Sha256::new();
    let mut size = 0u64;
    let mut stream = resp.bytes_stream();
    let result: anyhow::Result<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("downloading {path}"))?;
            hash.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).with_context(|| format!("writing {}", tmp.display()))?;
        }
        let got = hex::encode(hash.finalize());
        anyhow::ensure!(
            got == sha256,
            "{path} arrived with SHA-256 {got}, not the {sha256} the server listed; the download was discarded"
        );
        file.sync_all()?;
        std::fs::rename(&tmp, to).with_context(|| format!("moving the download to {}", to.display()))
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| size)
}

fn duration(v: &Value) -> String {
    match v.as_i64() {
        Some(ms) if ms >= 60_000 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        Some(ms) => format!("{:.1}s", ms as f64 / 1000.0),
        None => "-".into(),
    }
}

/// A string field of the API's answer, made inert for the terminal (a run's name, reason,
/// errors and logs come from the pipeline, the event and the steps).
fn field(v: &Value) -> String {
    let text = v.as_str().unwrap_or("");
    let colours = inert::colours_on_stdout();
    text.lines().map(|l| inert::terminal_text(l, colours)).collect::<Vec<_>>().join(" ")
}

fn print_run(r: &Value) {
    crate::outln!(
        "run {} — {} #{} (attempt {}): {}",
        r["id"],
        field(&r["app"]),
        r["number"],
        r["attempt"],
        field(&r["status"])
    );
    crate::outln!("  trigger: {} — {}", field(&r["trigger"]), field(&r["reason"]));
    if r["ref"].is_string() {
        crate::outln!("  ref:     {}", field(&r["ref"]));
    }
    if r["error"].is_string() {
        crate::outln!("  error:   {}", field(&r["error"]));
    }
    crate::outln!("  time:    {}", duration(&r["duration_ms"]));
    for d in r["decisions"].as_array().into_iter().flatten() {
        crate::outln!(
            "  {}:  job {} (environment {}) by {} at {}",
            field(&d["decision"]),
            field(&d["job"]),
            field(&d["environment"]),
            field(&d["by"]),
            d["at"]
        );
    }
    for j in r["jobs"].as_array().into_iter().flatten() {
        crate::outln!("  job {} [{}] {}", field(&j["key"]), field(&j["status"]), duration(&j["duration_ms"]));
        if j["environment"].is_string() {
            let url = if j["environment_url"].is_string() {
                format!(" {}", field(&j["environment_url"]))
            } else {
                String::new()
            };
            crate::outln!("    environment: {}{url}", field(&j["environment"]));
        }
        if j["reason"].is_string() {
            crate::outln!("    {}", field(&j["reason"]));
        }
        for s in j["steps"].as_array().into_iter().flatten() {
            let u = &s["usage"];
            let mut extra = String::new();
            if let Some(c) = u["cpu_ms"].as_i64() {
                extra.push_str(&format!(" cpu {c} ms"));
            }
            if let Some(m) = u["peak_memory_bytes"].as_i64() {
                extra.push_str(&format!(" mem {} KiB", m / 1024));
            }
            if let Some(b) = u["egress_bytes"].as_i64() {
                extra.push_str(&format!(" egress {b} B"));
            }
            crate::outln!(
                "    {:<24} {:<10} {:>7}{extra}",
                field(&s["name"]),
                field(&s["status"]),
                duration(&u["wall_ms"])
            );
            if s["error"].is_string() {
                crate::outln!("      {}", field(&s["error"]));
            }
        }
    }
}

fn print_line(l: &Value) {
    crate::outln!("[{}/{}] {}", field(&l["job"]), field(&l["step"]), field(&l["text"]));
}

/// Follows a run's SSE stream; exit 0 only if it succeeded.
async fn follow(api: &Api, id: i64) -> anyhow::Result<ExitCode> {
    use futures::StreamExt as _;
    let resp = api
        .req(reqwest::Method::GET, &format!("/v1/runs/{id}/logs/stream"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .with_context(|| format!("reaching {}", api.base))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        bail!("{} answered {status}: {}", api.base, body["error"].as_str().unwrap_or("no message"));
    }
    let mut stream = resp.bytes_stream();
    let mut parser = SseParser::default();
    while let Some(chunk) = stream.next().await {
        for (event, data) in parser.feed(&chunk?) {
            let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            match event.as_str() {
                "log" => print_line(&v),
                "end" => {
                    let st = v["status"].as_str().unwrap_or("");
                    eprintln!("run {id}: {st}");
                    std::io::stdout().flush().ok();
                    return Ok(if st == "success" { ExitCode::SUCCESS } else { ExitCode::from(1) });
                }
                _ => {}
            }
        }
    }
    bail!("the log stream of run {id} ended before the run did")
}
