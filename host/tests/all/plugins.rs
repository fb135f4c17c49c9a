//! The built-in plugin steps (`notify`, `checkout`, `upload`) as real
//! components in the real runtime, against real servers on 127.0.0.1: a
//! capture server that checks each provider's payload and signature, an
//! archive server with honest and hostile archives, and an S3-compatible server.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use skiff_runtime::builtin;
use skiff_runtime::capabilities::http::Allowlist;
use skiff_runtime::capabilities::log::LogLine;
use skiff_runtime::limits::Limits;
use skiff_runtime::{EngineOptions, LoadedStep, Runtime, StepInvocation, StepReport, StepStatus};

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Runtime::new(EngineOptions { pool_size: 16, ..Default::default() }, Some(crate::shared_cache_dir())).unwrap()
    })
}

async fn step(name: &str) -> Arc<LoadedStep> {
    runtime().load(builtin::get(name).unwrap()).await.unwrap()
}

fn invocation(ws: &Path, port: u16, inputs: &[(&str, &str)]) -> StepInvocation {
    StepInvocation {
        run_id: "r1".into(),
        step_id: "s1".into(),
        inputs: inputs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        workspace: ws.to_path_buf(),
        allow_hosts: Allowlist::parse(&[format!("127.0.0.1:{port}")]).unwrap(),
        limits: Limits { timeout: Duration::from_secs(60), ..Limits::default() },
        ..Default::default()
    }
}

async fn run(step: &LoadedStep, inv: StepInvocation) -> (StepReport, String) {
    let lines: Arc<Mutex<Vec<LogLine>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let report = runtime().run(step, inv, Arc::new(move |r| sink.lock().unwrap().push(r))).await;
    let log = lines.lock().unwrap().iter().map(|l| format!("{}: {}\n", l.level.as_str(), l.text)).collect();
    (report, log)
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// One received request.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn query(&self, key: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v.to_string()))
    }
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// What the server answers: status, content type, body.
type Answer = (u16, &'static str, Vec<u8>);
type Handler = dyn Fn(&Req) -> Answer + Send + Sync;

/// An HTTP/1.1 server on 127.0.0.1 that records every request and answers with `handler`.
fn server(handler: impl Fn(&Req) -> Answer + Send + Sync + 'static) -> (u16, Arc<Mutex<Vec<Req>>>) {
    listen(handler, |stream, log, handler| {
        let _ = serve_one(stream, log, handler);
    })
}

/// A server on a free loopback port that hands each connection to `serve` on a thread of its
/// own; the port and the requests seen.
fn listen(
    handler: impl Fn(&Req) -> Answer + Send + Sync + 'static,
    serve: impl Fn(std::net::TcpStream, &Mutex<Vec<Req>>, &Handler) + Send + Sync + 'static,
) -> (u16, Arc<Mutex<Vec<Req>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let handler: Arc<Handler> = Arc::new(handler);
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (log, handler, serve) = (log.clone(), handler.clone(), serve.clone());
            std::thread::spawn(move || serve(stream, &log, &*handler));
        }
    });
    (port, seen)
}

/// Reads one HTTP/1.1 request (a `content-length` or chunked body).
pub(crate) fn read_request(reader: &mut impl BufRead) -> std::io::Result<Req> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(Req { method, target, headers, body })
}

fn serve_one(mut stream: impl Read + Write, log: &Mutex<Vec<Req>>, handler: &Handler) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut stream);
    let req = read_request(&mut reader)?;
    drop(reader);
    let (status, ctype, answer) = handler(&req);
    log.lock().unwrap().push(req);
    let mut out = stream;
    if (300..400).contains(&status) {
        // A redirect's body is its location.
        write!(
            out,
            "HTTP/1.1 {status} X\r\nlocation: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            String::from_utf8_lossy(&answer)
        )?;
        return out.flush();
    }
    write!(
        out,
        "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        answer.len()
    )?;
    out.write_all(&answer)?;
    out.flush()
}

/// `server`, over TLS with a certificate for 127.0.0.1 from a CA of the test's own: the port,
/// the requests seen, and the CA's PEM.
fn tls_server(handler: impl Fn(&Req) -> Answer + Send + Sync + 'static) -> (u16, Arc<Mutex<Vec<Req>>>, String) {
    let (config, ca_pem) = crate::repository::tls_config();
    let (port, seen) = listen(handler, move |stream, log, handler| {
        if let Ok(conn) = rustls::ServerConnection::new(config.clone()) {
            let _ = serve_one(rustls::StreamOwned::new(conn, stream), log, handler);
        }
    });
    (port, seen, ca_pem)
}

fn ok_json(v: Value) -> Answer {
    (200, "application/json", v.to_string().into_bytes())
}

fn push_event() -> String {
    json!({
        "provider": "github", "kind": "push", "name": "push", "delivery_id": "d1",
        "repository": {"full_name": "acme/web", "html_url": "https://github.com/acme/web"},
        "ref": "refs/heads/main", "branch": "main",
        "after": "0123456789abcdef0123456789abcdef01234567", "sender": "octocat",
        "body": {"head_commit": {"message": "Fix the thing"}}
    })
    .to_string()
}

// ---------------------------------------------------------------- notify

#[tokio::test]
async fn notify_dingtalk_is_signed_as_documented_and_carries_the_run() {
    let secret = "SEC0123456789abcdef";
    let (port, seen) = server(move |r| {
        // Verify the signature the way DingTalk does before answering.
        let ts = r.query("timestamp").unwrap_or_default();
        let sign = r.query("sign").unwrap_or_default();
        let want = hmac_sha256(secret.as_bytes(), format!("{ts}\n{secret}").as_bytes());
        let want = STANDARD.encode(want).replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
        if sign == want {
            ok_json(json!({"errcode": 0, "errmsg": "ok"}))
        } else {
            ok_json(json!({"errcode": 310000, "errmsg": "sign not match"}))
        }
    });
    let ws = tempfile::tempdir().unwrap();
    let webhook = format!("http://127.0.0.1:{port}/robot/send?access_token=tok123");
    let mut inv = invocation(
        ws.path(),
        port,
        &[
            ("provider", "dingtalk"),
            ("webhook", &webhook),
            ("secret-name", "DING_SECRET"),
            ("status", "failure"),
            ("duration", "75"),
            ("link", "https://ci.example.com/runs/r1"),
            ("at-mobiles", "13800000000"),
        ],
    );
    inv.secrets = BTreeMap::from([("DING_SECRET".into(), secret.into())]);
    inv.event_json = push_event();
    let (report, log) = run(&*step("notify").await, inv).await;
    assert!(report.status.succeeded(), "{:?}\n{log}", report.status);
    let reqs = seen.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!((r.method.as_str(), r.path()), ("POST", "/robot/send"));
    assert_eq!(r.query("access_token").as_deref(), Some("tok123"));
    let ts: u64 = r.query("timestamp").unwrap().parse().unwrap();
    assert!(now_ms().abs_diff(ts) < 60_000, "the timestamp is in milliseconds, now");
    assert!(r.header("content-type").unwrap().starts_with("application/json"));
    let body = r.json();
    assert_eq!(body["msgtype"], "markdown");
    assert_eq!(body["markdown"]["title"], "acme/web failure");
    let text = body["markdown"]["text"].as_str().unwrap();
    for want in [
        "**failure**",
        "acme/web",
        "refs/heads/main",
        "0123456",
        "1m 15s",
        "(https://ci.example.com/runs/r1)",
        "@13800000000",
    ] {
        assert!(text.contains(want), "{want} missing from {text}");
    }
    assert_eq!(body["at"]["atMobiles"], json!(["13800000000"]));
    assert_eq!(report.outputs["provider"], "dingtalk");
    assert!(!log.contains("tok123"), "the webhook token is not logged: {log}");
}

#[tokio::test]
async fn notify_dingtalk_rejection_is_the_step_s_error() {
    let (port, _) = server(|_| ok_json(json!({"errcode": 310000, "errmsg": "sign not match"})));
    let ws = tempfile::tempdir().unwrap();
    let webhook = format!("http://127.0.0.1:{port}/robot/send?access_token=t");
    let inv = invocation(ws.path(), port, &[("provider", "dingtalk"), ("webhook", &webhook), ("secret", "wrong")]);
    let (report, _) = run(&*step("notify").await, inv).await;
    assert!(
        matches!(&report.status, StepStatus::Failed(m) if m.contains("310000") && m.contains("sign not match")),
        "{:?}",
        report.status
    );
}

#[tokio::test]
async fn notify_serverless_cd_dingtalk_inputs_are_sent_as_given() {
    let (port, seen) = server(|_| ok_json(json!({"errcode": 0})));
    let ws = tempfile::tempdir().unwrap();
    let webhook = format!("http://127.0.0.1:{port}/robot/send?access_token=t");
    let inv = invocation(
        ws.path(),
        port,
        &[
            ("provider", "dingtalk"),
            ("webhook", &webhook),
            ("msgtype", "link"),
            ("payload", r#"{"title":"Deployed","text":"done","messageUrl":"https://x","picUrl":""}"#),
            ("at", r#"{"isAtAll":true}"#),
        ],
    );
    let (report, log) = run(&*step("notify").await, inv).await;
    assert!(report.status.succeeded(), "{:?}\n{log}", report.status);
    let body = seen.lock().unwrap()[0].json();
    assert_eq!(
        body,
        json!({"msgtype": "link", "link": {"title": "Deployed", "text": "done", "messageUrl": "https://x", "picUrl": ""}, "at": {"isAtAll": true}})
    );
    assert!(seen.lock().unwrap()[0].query("sign").is_none(), "unsigned without a secret");
}

#[tokio::test]
async fn notify_wecom_posts_markdown_and_reports_errcode() {
    let (port, seen) = server(|r| {
        if r.query("key").as_deref() == Some("good") {
            ok_json(json!({"errcode": 0, "errmsg": "ok"}))
        } else {
            ok_json(json!({"errcode": 93000, "errmsg": "invalid webhook url"}))
        }
    });
    let ws = tempfile::tempdir().unwrap();
    let good = format!("http://127.0.0.1:{port}/cgi-bin/webhook/send?key=good");
    let mut inv = invocation(
        ws.path(),
        port,
        &[
            ("provider", "wecom"),
            ("webhook", &good),
            ("template", "{{status_emoji}} **{{app}}** {{status}} on {{branch}}"),
        ],
    );
    inv.event_json = push_event();
    let (report, log) = run(&*step("notify").await, inv).await;
    assert!(report.status.succeeded(), "{:?}\n{log}", report.status);
    assert_eq!(
        seen.lock().unwrap()[0].json(),
        json!({"msgtype": "markdown", "markdown": {"content": "✅ **acme/web** success on main"}})
    );
    let bad = format!("http://127.0.0.1:{port}/cgi-bin/webhook/send?key=bad");
    let (report, _) =
        run(&*step("notify").await, invocation(ws.path(), port, &[("provider", "wecom"), ("webhook", &bad)])).await;
    assert!(matches!(&report.status, StepStatus::Failed(m) if m.contains("93000")), "{:?}", report.status);
}

#[tokio::test]
async fn notify_feishu_signs_in_the_body_with_seconds() {
    let secret = "feishu-signing-secret";
    let (port, seen) = server(move |r| {
        let body = r.json();
        let ts = body["timestamp"].as_str().unwrap_or("");
        let want = STANDARD.encode(hmac_sha256(format!("{ts}\n{secret}").as_bytes(), b""));
        if body["sign"] == want {
            ok_json(json!({"code": 0, "msg": "success", "data": {}}))
        } else {
            ok_json(
                json!({"code": 19021, "msg": "sign match fail or timestamp is not within one hour from current time"}),
            )
        }
    });
    let ws = tempfile::tempdir().unwrap();
    let webhook = format!("http://127.0.0.1:{port}/open-apis/bot/v2/hook/abc");
    let mut inv = invocation(ws.path(), port, &[("provider", "lark"), ("webhook", &webhook), ("secret-name", "LARK")]);
    inv.secrets = BTreeMap::from([("LARK".into(), secret.into())]);
    let (report, log) = run(&*step("notify").await, inv).await;
    assert!(report.status.succeeded(), "{:?}\n{log}", report.status);
    let body = seen.lock().unwrap()[0].json();
    let ts: u64 = body["timestamp"].as_str().unwrap().parse().unwrap();
    assert!((now_ms() / 1000).abs_diff(ts) < 60, "seconds, not milliseconds");
    assert_eq!(body["msg_type"], "interactive");
    assert_eq!(body["card"]["elements"][0]["tag"], "markdown");

    // A wrong secret: Feishu's `code` becomes the error.
    let mut inv =
        invocation(ws.path(), port, &[("provider", "feishu"), ("webhook", &webhook), ("secret-name", "LARK")]);
    inv.secrets = BTreeMap::from([("LARK".into(), "wrong".into())]);
    let (report, _) = run(&*step("notify").await, inv).await;
    assert!(matches!(&report.status, StepStatus::Failed(m) if m.contains("19021")), "{:?}", report.status);
}

#[tokio::test]
async fn notify_slack_and_generic_webhooks_and_http_errors() {
    let (port, seen) = server(|r| match r.path() {
        "/services/T/B/X" => (200, "text/plain", b"ok".to_vec()),
        "/hook" => ok_json(json!({"received": true})),
        _ => (404, "text/plain", b"no_service".to_vec()),
    });
    let ws = tempfile::tempdir().unwrap();
    let slack = format!("http://127.0.0.1:{port}/services/T/B/X");
    let mut inv = invocation(ws.path(), port, &[("provider", "slack"), ("webhook", &slack), ("link", "https://ci/r1")]);
    inv.event_json = push_event();
    let (report, log) = run(&*step("notify").await, inv).await;
    assert!(report.status.succeeded(), "{:?}\n{log}", report.status);
    let body = seen.lock().unwrap()[0].json();
    assert_eq!(body["text"], "acme/web success");
    let mrkdwn = body["blocks"][0]["text"]["text"].as_str().unwrap();
    assert!(mrkdwn.contains("<https://ci/r1|View run>") && mrkdwn.contains("*success*"), "{mrkdwn}");

    let hook = format!("http://127.0.0.1:{port}/hook");
    let mut inv = invocation(ws.path(), port, &[("webhook", &hook), ("status", "failure"), ("format", "text")]);
    inv.event_json = push_event();
    let (report, log) = run(&*step("notify").await, inv).await;
    assert!(report.status.succeeded(), "{:?}\n{log}", report.status);
    let body = seen.lock().unwrap()[1].json();
    assert_eq!(report.outputs["provider"], "webhook");
    assert_eq!(body["status"], "failure");
    assert_eq!(body["app"], "acme/web");
    assert_eq!(body["commit"], "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(body["commit_message"], "Fix the thing");
    assert_eq!(body["run_id"], "r1");

    let missing = format!("http://127.0.0.1:{port}/services/T/B/gone");
    let (report, _) =
        run(&*step("notify").await, invocation(ws.path(), port, &[("provider", "slack"), ("webhook", &missing)])).await;
    assert_eq!(report.status, StepStatus::Failed("Slack answered HTTP 404: no_service".into()));
}

#[tokio::test]
async fn notify_reaches_only_the_granted_host_and_secret() {
    let (port, seen) = server(|_| ok_json(json!({"errcode": 0})));
    let ws = tempfile::tempdir().unwrap();
    let webhook = format!("http://127.0.0.1:{port}/robot/send");
    let mut inv = invocation(ws.path(), port, &[("provider", "dingtalk"), ("webhook", &webhook)]);
    inv.allow_hosts = Allowlist::default();
    let (report, _) = run(&*step("notify").await, inv).await;
    assert!(matches!(&report.status, StepStatus::Denied(m) if m.contains("network access")), "{:?}", report.status);
    let inv = invocation(ws.path(), port, &[("webhook", &webhook), ("secret-name", "NOT_GRANTED")]);
    let (report, _) = run(&*step("notify").await, inv).await;
    assert!(matches!(&report.status, StepStatus::Denied(m) if m.contains("NOT_GRANTED")), "{:?}", report.status);
    assert!(seen.lock().unwrap().is_empty(), "nothing was sent");
}

/// A fork's pull request may only read: the same granted host answers a GET, but a POST is
/// refused before anything is sent, with the reason and the way to lift it.
#[tokio::test]
async fn a_read_only_grant_lets_a_step_read_but_not_send() {
    let (port, seen) = server(|_| ok_json(json!({"errcode": 0})));
    let ws = tempfile::tempdir().unwrap();
    let webhook = format!("http://127.0.0.1:{port}/robot/send");
    let mut inv = invocation(ws.path(), port, &[("provider", "dingtalk"), ("webhook", &webhook)]);
    inv.allow_hosts = Allowlist::parse(&[format!("127.0.0.1:{port}")]).unwrap().read_only();
    let (report, log) = run(&*step("notify").await, inv).await;
    assert!(!report.status.succeeded(), "{:?}", report.status);
    assert!(log.contains("may only read") && log.contains("trust-fork-pull-requests"), "{log}");
    assert!(seen.lock().unwrap().is_empty(), "nothing was sent");

    // Reading works: the checkout step GETs the commit's tarball from the same kind of grant.
    let top = format!("acme-web-{}", &SHA[..7]);
    let ar = targz(&[(&format!("{top}/"), b""), (&format!("{top}/a.txt"), b"hi")], &[]);
    let (port, _) = forge(vec![(format!("/codeload/acme/web/tarball/{SHA}"), ar)]);
    let api = format!("http://127.0.0.1:{port}");
    let mut inv = invocation(ws.path(), port, &[("api-url", &api), ("path", "src")]);
    inv.allow_hosts = Allowlist::parse(&[format!("127.0.0.1:{port}")]).unwrap().read_only();
    inv.event_json = json!({"provider": "github", "repository": {"full_name": "acme/web"}, "after": SHA}).to_string();
    let (report, log) = run(&*step("checkout").await, inv).await;
    assert!(report.status.succeeded(), "{:?}\n{log}", report.status);
    assert_eq!(std::fs::read_to_string(ws.path().join("src/a.txt")).unwrap(), "hi");
}

// ---------------------------------------------------------------- checkout

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// A `.tar.gz` with files, directories and symlinks; names are written raw so
/// hostile ones survive the builder's own checks.
fn targz(files: &[(&str, &[u8])], symlinks: &[(&str, &str)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut b = tar::Builder::new(gz);
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(if name.ends_with('/') { tar::EntryType::Directory } else { tar::EntryType::Regular });
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    for (name, target) in symlinks {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, name, target).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn zipfile(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A forge serving archives by path, GitHub-style with a redirect to "codeload".
fn forge(archives: Vec<(String, Vec<u8>)>) -> (u16, Arc<Mutex<Vec<Req>>>) {
    server(move |r| {
        if let Some(rest) = r.path().strip_prefix("/repos/") {
            let to = format!("/codeload/{rest}");
            return (302, "text/plain", to.into_bytes());
        }
        match archives.iter().find(|(p, _)| p == r.path()) {
            Some((_, bytes)) => (200, "application/octet-stream", bytes.clone()),
            None => (404, "application/json", br#"{"message":"Not Found"}"#.to_vec()),
        }
    })
}

fn list(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                walk(root, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn checkout_unpacks_a_github_tarball_of_the_event_s_commit() {
    let top = format!("acme-web-{}", &SHA[..7]);
    let ar = targz(
        &[
            (&format!("{top}/"), b""),
            (&format!("{top}/README.md"), b"# web\n"),
            (&format!("{top}/src/main.rs"), b"fn main() {}\n"),
        ],
        &[],
    );
    let digest = hex::encode(<Sha256 as sha2::Digest>::digest(&ar));
    let (port, seen) = forge(vec![(format!("/codeload/acme/web/tarball/{SHA}"), ar)]);
    let ws = tempfile::tempdir().unwrap();
    let api = format!("http://127.0.0.1:{port}");
    let mut inv = invocation(ws.path(), port, &[("api-url", &api), ("token-secret", "GH_TOKEN"), ("sha256", &digest)]);
    inv.secrets = BTreeMap::from([("GH_TOKEN".into(), "ghp_secret123".into())]);
    inv.event_json = json!({"provider": "github", "repository": {"full_name": "acme/web"}, "after": SHA}).to_string();
    let (report, log) = run(&*step("checkout").await, inv).await;
    assert!(report.status.succeeded(), "{:?}\n{log}", report.status);
    assert_eq!(list(ws.path()), vec!["README.md", "src", "src/main.rs"]);
    assert_eq!(std::fs::read_to_string(ws.path().join("src/main.rs")).unwrap(), "fn main() {}\n");
    assert_eq!(report.outputs["sha"], SHA);
    assert_eq!(report.outputs["files"], "2");
    let reqs = seen.lock().unwrap().clone();
    assert_eq!(reqs[0].target, format!("/repos/acme/web/tarball/{SHA}"));
    assert_eq!(reqs[0].header("authorization"), Some("Bearer ghp_secret123"));
    assert_eq!(reqs[1].path(), format!("/codeload/acme/web/tarball/{SHA}"), "the redirect is followed");
}

#[tokio::test]
async fn checkout_over_https_checks_the_forge_s_certificate_against_the_app_s_ca() {
    let top = format!("acme-web-{}", &SHA[..7]);
    let ar = targz(&[(&format!("{top}/"), b""), (&format!("{top}/README.md"), b"# over TLS\n")], &[]);
    let path = format!("/repos/acme/web/tarball/{SHA}");
    let (port, seen, ca_pem) = tls_server(move |r| {
        if r.path() == path { (200, "application/octet-stream", ar.clone()) } else { (404, "text/plain", Vec::new()) }
    });
    let api = format!("https://127.0.0.1:{port}");
    let event = json!({"provider": "github", "repository": {"full_name": "acme/web"}, "after": SHA}).to_string();

    // A certificate from a CA nobody told the host about is refused before any request.
    let ws = tempfile::tempdir().unwrap();
    let mut inv = invocation(ws.path(), port, &[("api-url", &api)]);
    inv.event_json = event.clone();
    let (report, log) = run(&*step("checkout").await, inv).await;
    assert!(!report.status.succeeded(), "{log}");
    assert!(seen.lock().unwrap().is_empty(), "a request was sent over an unverified connection");
    assert!(list(ws.path()).is_empty());

    // Trusted through the app's CA bundle, the checkout works.
    let mut inv = invocation(ws.path(), port, &[("api-url", &api)]);
    inv.event_json = event;
    inv.tls = Some(skiff_runtime::capabilities::connect::tls_config(Some(&ca_pem)).unwrap());
    let (report, log) = run(&*step("checkout").await, inv).await;
    assert!(report.status.succeeded(), "{:?}\n{log}", report.status);
    assert_eq!(std::fs::read_to_string(ws.path().join("README.md")).unwrap(), "# over TLS\n");
    assert_eq!(seen.lock().unwrap()[0].header("host"), Some(format!("127.0.0.1:{port}").as_str()));
    assert!(
        skiff_runtime::capabilities::connect::tls_config(Some("not pem")).unwrap_err().contains("no PEM certificate")
    );
}

#[tokio::test]
async fn checkout_gitea_zip_and_gitlab_tarball() {
    let zip = zipfile(&[("r/", b""), ("r/a.txt", b"A"), ("r/d/b.txt", b"B")]);
    let gl = targz(&[("proj-main-0123/", b""), ("proj-main-0123/x", b"X")], &[]);
    let (port, seen) = forge(vec![
        (format!("/api/v1/repos/o/r/archive/{SHA}.zip"), zip),
        ("/api/v4/projects/group%2Fproj/repository/archive.tar.gz".into(), gl),
    ]);
    let server_url = format!("http://127.0.0.1:{port}");
    let ws = tempfile::tempdir().unwrap();
    let inv = invocation(
        ws.path(),
        port,
        &[
            ("provider", "forgejo"),
            ("server", &server_url),
            ("repo", "o/r"),
            ("sha", SHA),
            ("format", "zip"),
            ("token", "tk"),
        ],
    );
    let (report, log) = run(&*step("checkout").await, inv).await;
    assert!(report.status.succeeded(), "{:?}\n{log}", report.status);
    assert_eq!(list(ws.path()), vec!["a.txt", "d", "d/b.txt"]);
    assert_eq!(seen.lock().unwrap()[0].header("authorization"), Some("token tk"));

    let ws = tempfile::tempdir().unwrap();
    let inv = invocation(
        ws.path(),
        port,
        &[("provider", "gitlab"), ("api-url", &server_url), ("repo", "group/proj"), ("sha", SHA), ("path", "src")],
    );
    let (report, log) = run(&*step("checkout").await, inv).await;
    assert!(report.status.succeeded(), "{:?}\n{log}", report.status);
    assert_eq!(list(ws.path()), vec!["src", "src/x"]);
    assert_eq!(seen.lock().unwrap()[1].query("sha").as_deref(), Some(SHA));
}

#[tokio::test]
async fn checkout_refuses_hostile_archives_and_writes_nothing_outside() {
    let bomb = targz(&[("b/", b""), ("b/zeros", &vec![0u8; 64 << 20])], &[]);
    assert!(bomb.len() < 200 << 10);
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("zip-slip.zip", zipfile(&[("ok.txt", b"ok"), ("../evil", b"owned")]), "zip", "zip-slip"),
        ("slip.tar.gz", targz(&[("ok.txt", b"ok"), ("a/../../evil", b"owned")], &[]), "tar.gz", "zip-slip"),
        ("abs.tar.gz", targz(&[("ok.txt", b"ok"), ("/tmp/skiff-evil-abs", b"owned")], &[]), "tar.gz", "absolute path"),
        ("abs.zip", zipfile(&[("/evil", b"owned")]), "zip", "absolute path"),
        (
            "link.tar.gz",
            targz(&[("t/", b""), ("t/ok", b"ok")], &[("t/passwd", "../../../../etc/passwd")]),
            "tar.gz",
            "outside the checkout",
        ),
        ("abslink.tar.gz", targz(&[("ok", b"ok")], &[("up", "/etc")]), "tar.gz", "outside the checkout"),
        ("bomb.tar.gz", bomb, "tar.gz", "decompression bomb"),
        ("junk.tar.gz", b"<html>not an archive</html>".to_vec(), "tar.gz", "not a tar.gz"),
    ];
    let archives = cases
        .iter()
        .map(|(name, bytes, _, _)| (format!("/a/api/v1/repos/o/r/archive/{name}"), bytes.clone()))
        .collect();
    let (port, _) = forge(archives);
    for (name, _, _, want) in &cases {
        let outer = tempfile::tempdir().unwrap();
        let ws = outer.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        // The forge's archive name is `{sha}.{format}`: pass the file name as the sha's place.
        let (sha, format) = name.split_once('.').unwrap();
        let server_url = format!("http://127.0.0.1:{port}/a");
        let inv = invocation(
            &ws,
            port,
            &[
                ("provider", "gitea"),
                ("server", &server_url),
                ("repo", "o/r"),
                ("sha", sha),
                ("format", if format == "zip" { "zip" } else { "tar.gz" }),
            ],
        );
        let (report, log) = run(&*step("checkout").await, inv).await;
        assert!(
            matches!(&report.status, StepStatus::Failed(m) if m.contains(want)),
            "{name}: {:?}\n{log}",
            report.status
        );
        assert!(!outer.path().join("evil").exists(), "{name}: wrote outside the workspace");
        let left = list(&ws);
        assert!(left.is_empty(), "{name}: a refused archive leaves nothing: {left:?}");
    }
    assert!(!Path::new("/tmp/skiff-evil-abs").exists());
}

#[tokio::test]
async fn checkout_checks_the_expected_sha256_and_the_grants() {
    let ar = targz(&[("f", b"x")], &[]);
    let (port, seen) = forge(vec![(format!("/api/v1/repos/o/r/archive/{SHA}.tar.gz"), ar)]);
    let server_url = format!("http://127.0.0.1:{port}");
    let ws = tempfile::tempdir().unwrap();
    let base = [("provider", "gitea"), ("server", server_url.as_str()), ("repo", "o/r"), ("sha", SHA)];
    let mut inputs = base.to_vec();
    inputs.push(("sha256", "00"));
    let (report, _) = run(&*step("checkout").await, invocation(ws.path(), port, &inputs)).await;
    assert!(
        matches!(&report.status, StepStatus::Failed(m) if m.contains("not the expected 00")),
        "{:?}",
        report.status
    );
    assert!(list(ws.path()).is_empty());

    let mut inv = invocation(ws.path(), port, &base);
    inv.allow_hosts = Allowlist::default();
    let (report, _) = run(&*step("checkout").await, inv).await;
    assert!(matches!(report.status, StepStatus::Denied(_)), "{:?}", report.status);
    let mut inputs = base.to_vec();
    inputs.push(("token-secret", "MISSING"));
    let (report, _) = run(&*step("checkout").await, invocation(ws.path(), port, &inputs)).await;
    assert!(matches!(&report.status, StepStatus::Denied(m) if m.contains("MISSING")), "{:?}", report.status);
    assert_eq!(seen.lock().unwrap().len(), 1, "only the sha256 run downloaded");
}

/// git mode, against a bare repository made in the test. The process sandbox
/// sees only the workspace, so the "remote" lives inside it and is fetched over
/// `file://`; a remote over HTTP would need `permissions.network`.
#[tokio::test]
async fn checkout_git_mode_fetches_one_commit_and_keeps_the_token_out_of_git_config() {
    let ws = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let sh = |dir: &Path, args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    sh(src.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(src.path().join("hello.txt"), "one\n").unwrap();
    sh(src.path(), &["add", "."]);
    sh(src.path(), &["commit", "-q", "-m", "one"]);
    std::fs::write(src.path().join("hello.txt"), "two\n").unwrap();
    sh(src.path(), &["commit", "-q", "-am", "two"]);
    let head = sh(src.path(), &["rev-parse", "HEAD"]);
    let bare = ws.path().join(".remote/repo.git");
    sh(src.path(), &["clone", "-q", "--bare", ".", bare.to_str().unwrap()]);

    let mut inv = invocation(
        ws.path(),
        1,
        &[
            ("mode", "git"),
            ("clone-url", "file:///workspace/.remote/repo.git"),
            ("sha", &head),
            ("token-secret", "GIT_TOKEN"),
            ("path", "app"),
        ],
    );
    inv.secrets = BTreeMap::from([("GIT_TOKEN".into(), "tok-SECRET-123".into())]);
    inv.process = skiff_runtime::capabilities::process::ProcessGrant { allowed: true, ..Default::default() };
    let (report, log) = run(&*step("checkout").await, inv).await;
    assert!(report.status.succeeded(), "{:?}\n{log}", report.status);
    assert_eq!(report.outputs["sha"], head);
    assert_eq!(std::fs::read_to_string(ws.path().join("app/hello.txt")).unwrap(), "two\n");
    let shallow = sh(&ws.path().join("app"), &["rev-list", "--count", "HEAD"]);
    assert_eq!(shallow, "1", "a shallow fetch of one commit");
    let config = std::fs::read_to_string(ws.path().join("app/.git/config")).unwrap();
    assert!(!config.contains("tok-SECRET-123") && !config.contains("extraheader"), "{config}");
    assert!(!log.contains("tok-SECRET-123"));
}

// ---------------------------------------------------------------- upload

#[tokio::test]
async fn upload_to_an_s3_compatible_server_with_sigv4_and_multipart() {
    // scripts/setup.sh installs it; a missing server is a failure, never a skip.
    let s3 = skiff_server::testing::s3::S3Server::start();
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ws.path().join("dist/css")).unwrap();
    std::fs::write(ws.path().join("dist/index.html"), "<h1>hi</h1>").unwrap();
    std::fs::write(ws.path().join("dist/css/site.css"), "h1{}").unwrap();
    let big: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(ws.path().join("big.bin"), &big).unwrap();
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    let mut inv = invocation(
        ws.path(),
        s3.port,
        &[
            ("target", "minio"),
            ("endpoint", &endpoint),
            ("bucket", "bucket"),
            ("prefix", "site/v1"),
            ("source", "dist\nbig.bin"),
            ("access-key-id-secret", "AK"),
            ("secret-access-key-secret", "SK"),
            ("multipart-threshold", "6291456"),
            ("part-size", "5242880"),
        ],
    );
    inv.secrets = BTreeMap::from([("AK".into(), "AKTEST".into()), ("SK".into(), "SKTEST".into())]);
    let (report, log) = run(&*step("upload").await, inv.clone()).await;
    assert!(report.status.succeeded(), "{:?}\n{log}", report.status);
    assert_eq!(report.outputs["count"], "3");
    assert!(log.contains("in 3 parts"), "{log}");
    let b = s3.root.path().join("bucket/site/v1");
    assert_eq!(std::fs::read_to_string(b.join("index.html")).unwrap(), "<h1>hi</h1>");
    assert_eq!(std::fs::read_to_string(b.join("css/site.css")).unwrap(), "h1{}");
    assert!(std::fs::read(b.join("big.bin")).unwrap() == big, "multipart reassembled the file");

    // A wrong secret key is refused by the server's own SigV4 check.
    inv.secrets.insert("SK".into(), "WRONG".into());
    inv.inputs.insert("source".into(), "dist/index.html".into());
    let (report, _) = run(&*step("upload").await, inv).await;
    assert!(matches!(&report.status, StepStatus::Failed(m) if m.contains("403")), "{:?}", report.status);
}

#[tokio::test]
async fn upload_to_a_presigned_url_and_to_the_artifact_store() {
    let (port, seen) = server(|_| (200, "text/plain", Vec::new()));
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("report.json"), "{}").unwrap();
    let url = format!("http://127.0.0.1:{port}/b/report.json?X-Amz-Signature=abc");
    let inv = invocation(ws.path(), port, &[("target", "presigned"), ("url", &url), ("source", "report.json")]);
    let (report, log) = run(&*step("upload").await, inv).await;
    assert!(report.status.succeeded(), "{:?}\n{log}", report.status);
    let r = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (r.method.as_str(), r.target.as_str(), r.body.as_slice()),
        ("PUT", "/b/report.json?X-Amz-Signature=abc", &b"{}"[..])
    );
    assert_eq!(r.header("content-type"), Some("application/json"));

    let store = tempfile::tempdir().unwrap();
    let mut inv = invocation(ws.path(), port, &[("target", "artifact"), ("source", "*.json"), ("name", "report")]);
    let artifacts = Arc::new(skiff_runtime::artifact_store::LocalArtifacts::new(store.path()));
    inv.artifacts = Some(artifacts.clone());
    let run_id = inv.run_id.clone();
    let (report, log) = run(&*step("upload").await, inv).await;
    assert!(report.status.succeeded(), "{:?}\n{log}", report.status);
    assert_eq!(report.outputs["keys"], "report");
    use skiff_runtime::artifact_store::ArtifactStore as _;
    let stored = artifacts.list(&run_id).unwrap();
    assert_eq!((stored.len(), stored[0].name.as_str(), stored[0].size), (1, "report", 2), "{stored:?}");

    let inv = invocation(ws.path(), port, &[("target", "artifact"), ("source", "../etc/passwd")]);
    let (report, _) = run(&*step("upload").await, inv).await;
    assert!(
        matches!(&report.status, StepStatus::Failed(m) if m.contains("inside the workspace")),
        "{:?}",
        report.status
    );
}

// ---------------------------------------------------------------- spin-deploy

#[tokio::test]
async fn spin_deploy_applies_a_spinapp_through_the_api_server_and_keeps_it_as_an_artifact() {
    const TOKEN: &str = "k8s-token-never-logged";
    let (port, seen) = server(|r| match (r.header("authorization"), r.json()["metadata"]["name"].as_str()) {
        (Some(a), _) if a != format!("Bearer {TOKEN}") => {
            (401, "application/json", br#"{"message":"Unauthorized"}"#.to_vec())
        }
        (_, Some("forbidden")) => (
            403,
            "application/json",
            br#"{"kind":"Status","message":"spinapps.core.spinkube.dev \"forbidden\" is forbidden"}"#.to_vec(),
        ),
        _ => {
            let mut applied = r.json();
            applied["metadata"]["uid"] = json!("2f1c-uid");
            ok_json(applied)
        }
    });
    let ws = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let artifacts = Arc::new(skiff_runtime::artifact_store::LocalArtifacts::new(store.path()));
    let reference =
        "registry.example.com/acme/edge@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let api = format!("http://127.0.0.1:{port}");
    let deploy = |name: &str, token: &str| {
        let mut inv = invocation(
            ws.path(),
            port,
            &[
                ("reference", reference),
                ("name", name),
                ("namespace", "edge"),
                ("api-url", &api),
                ("token-secret", "KUBE_TOKEN"),
                ("variables", "host_url=https://skiff.example.com"),
            ],
        );
        inv.secrets.insert("KUBE_TOKEN".into(), token.into());
        inv.artifacts = Some(artifacts.clone());
        inv
    };

    let (report, log) = run(&*step("spin-deploy").await, deploy("edge", TOKEN)).await;
    assert!(report.status.succeeded(), "{:?}\n{log}", report.status);
    assert_eq!((report.outputs["applied"].as_str(), report.outputs["uid"].as_str()), ("true", "2f1c-uid"));
    let r = seen.lock().unwrap()[0].clone();
    assert_eq!(r.method, "PATCH");
    assert_eq!(
        r.target,
        "/apis/core.spinkube.dev/v1alpha1/namespaces/edge/spinapps/edge?fieldManager=skiff&force=true"
    );
    assert_eq!(r.header("content-type"), Some("application/apply-patch+yaml"));
    let body = r.json();
    assert_eq!((body["kind"].as_str(), body["spec"]["image"].as_str()), (Some("SpinApp"), Some(reference)));
    assert_eq!(body["spec"]["variables"][0], json!({"name": "host_url", "value": "https://skiff.example.com"}));
    use skiff_runtime::artifact_store::ArtifactStore as _;
    let stored = artifacts.list("r1").unwrap();
    assert_eq!(stored[0].name, "spinapp.json", "{stored:?}");
    assert!(!log.contains(TOKEN));

    // Refusals say what to check, and never show the token.
    let (report, log) = run(&*step("spin-deploy").await, deploy("edge", "wrong")).await;
    assert!(
        matches!(&report.status, StepStatus::Failed(m) if m.contains("401") && m.contains("token-secret")),
        "{:?}",
        report.status
    );
    let (report, _) = run(&*step("spin-deploy").await, deploy("forbidden", TOKEN)).await;
    assert!(
        matches!(&report.status, StepStatus::Failed(m) if m.contains("403") && m.contains("service account")),
        "{:?}",
        report.status
    );
    assert!(!log.contains("wrong") && !format!("{:?}", report.status).contains(TOKEN));

    // Only digests are deployed.
    let mut inv = deploy("edge", TOKEN);
    inv.inputs.insert("reference".into(), "registry.example.com/acme/edge:latest".into());
    let (report, _) = run(&*step("spin-deploy").await, inv).await;
    assert!(
        matches!(&report.status, StepStatus::Failed(m) if m.contains("not pinned by digest")),
        "{:?}",
        report.status
    );
}
