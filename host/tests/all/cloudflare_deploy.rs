//! The built-in `cloudflare-deploy` step against a recording server that answers as the
//! Cloudflare API documents (`{success, errors, messages, result}`; versions, deployments,
//! the workers.dev subdomain, and what `wrangler deploy` asks besides). The step runs through
//! real pipelines (`skiff run`); the same Worker goes up once with the real wrangler 4.86.0
//! (pinned in edge-master/cloudflare), and the two multipart uploads are compared part for
//! part.

use std::io::{BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::plugins::{Req, read_request};

const ACCOUNT: &str = "9a7806061c88ada191ed06f989cc3dac";
const TOKEN: &str = "cf-token-3d1f5a7e9b2c4d6f8a0b";
const SCRIPT: &str = "hello-worker";

// ------------------------------------------------------------ the recording Cloudflare API

/// What the fake API holds: every request, the Worker's versions and deployments (newest
/// first, as `GET …/deployments` lists them), the account's workers.dev subdomain, and an
/// error to answer version uploads with.
#[derive(Default)]
struct State {
    seen: Vec<Req>,
    versions: Vec<String>,
    deployments: Vec<Value>,
    subdomain: Option<String>,
    refuse_uploads: Option<(i64, String)>,
}

struct Cloudflare {
    port: u16,
    state: Arc<Mutex<State>>,
}

fn ok(result: Value) -> (u16, Value) {
    (200, json!({"success": true, "errors": [], "messages": [], "result": result}))
}

fn fail(status: u16, code: i64, message: &str) -> (u16, Value) {
    (status, json!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null}))
}

impl State {
    fn new_version(&mut self) -> String {
        let n = self.versions.len() + 1;
        let id = format!("{n:08x}-7a3c-4b1e-9f2d-{:012x}", n * 7919);
        self.versions.push(id.clone());
        id
    }

    fn deploy(&mut self, versions: Value, annotations: Value) -> Value {
        let n = self.deployments.len() + 1;
        let d = json!({
            "id": format!("dep{n:05}-1b2c-4d3e-8f4a-5b6c7d8e9f00"),
            "source": "api",
            "strategy": "percentage",
            "author_email": "ci@example.com",
            "created_on": format!("2025-01-01T00:00:{n:02}.000000Z"),
            "annotations": annotations,
            "versions": versions,
        });
        self.deployments.insert(0, d.clone());
        d
    }

    /// Answers one request as the Cloudflare API would.
    fn answer(&mut self, req: &Req) -> (u16, Value) {
        if req.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
            return fail(403, 10000, "Authentication error");
        }
        let path = req.target.split('?').next().unwrap_or("");
        let Some(path) = path.strip_prefix("/client/v4") else { return fail(404, 7000, "No route for that URI") };
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (req.method.as_str(), parts.as_slice()) {
            ("GET", ["user"]) => ok(json!({"id": "u1", "email": "ci@example.com"})),
            ("GET", ["memberships"]) => ok(json!([{"id": "m1", "account": {"id": ACCOUNT, "name": "Acme"}}])),
            ("GET", ["accounts"]) => ok(json!([{"id": ACCOUNT, "name": "Acme"}])),
            (_, ["accounts", a, ..]) if *a != ACCOUNT => {
                fail(403, 7003, "Could not route to /accounts, perhaps your object identifier is invalid?")
            }
            ("GET", ["accounts", _, "workers", "subdomain"]) => match &self.subdomain {
                Some(s) => ok(json!({"subdomain": s})),
                None => fail(404, 10007, "This account does not have a workers.dev subdomain."),
            },
            // wrangler deploy: does the Worker exist yet?
            ("GET", ["accounts", _, "workers", "services", _]) if self.deployments.is_empty() => {
                fail(404, 10090, "This Worker does not exist on your account.")
            }
            ("GET", ["accounts", _, "workers", "services", name]) => {
                ok(json!({"id": name, "default_environment": {"environment": "production", "script": {"id": name}}}))
            }
            ("GET", ["accounts", _, "workers", "scripts", _, "settings"]) => ok(
                json!({"bindings": [], "compatibility_date": "2024-09-23", "compatibility_flags": [], "logpush": false}),
            ),
            ("GET", ["accounts", _, "workers", "scripts", _, "deployments"]) => {
                ok(json!({"deployments": self.deployments}))
            }
            ("GET", ["accounts", _, "workers", "scripts", _, "subdomain"]) => {
                ok(json!({"enabled": true, "previews_enabled": true}))
            }
            ("POST", ["accounts", _, "workers", "scripts", _, "subdomain"]) => {
                ok(json!({"enabled": true, "previews_enabled": true}))
            }
            // wrangler deploy: the script upload, which makes a version and deploys it.
            ("PUT", ["accounts", _, "workers", "scripts", name]) => {
                let v = self.new_version();
                let d = self.deploy(json!([{"version_id": v, "percentage": 100.0}]), json!({}));
                ok(json!({"id": name, "etag": "e1", "handlers": ["fetch"], "has_modules": true,
                          "deployment_id": d["id"], "created_on": "2025-01-01T00:00:00Z",
                          "modified_on": "2025-01-01T00:00:00Z", "usage_model": "standard"}))
            }
            ("POST", ["accounts", _, "workers", "scripts", _, "versions"]) => {
                if let Some((code, message)) = self.refuse_uploads.clone() {
                    return fail(400, code, &message);
                }
                let v = self.new_version();
                ok(json!({"id": v, "number": self.versions.len(),
                          "metadata": {"source": "api", "author_email": "ci@example.com",
                                       "created_on": "2025-01-01T00:00:00Z", "modified_on": "2025-01-01T00:00:00Z"},
                          "resources": {"bindings": [], "script": {"etag": "e", "handlers": ["fetch"]}}}))
            }
            ("POST", ["accounts", _, "workers", "scripts", _, "deployments"]) => {
                let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
                let versions = body["versions"].clone();
                let known = versions.as_array().is_some_and(|a| {
                    a.iter().all(|v| self.versions.iter().any(|k| Some(k.as_str()) == v["version_id"].as_str()))
                });
                let total: f64 =
                    versions.as_array().map_or(0.0, |a| a.iter().filter_map(|v| v["percentage"].as_f64()).sum());
                if body["strategy"] != "percentage" || !known || total != 100.0 {
                    return fail(
                        400,
                        10223,
                        "Invalid deployment: versions must exist and their percentages sum to 100",
                    );
                }
                let annotations = body.get("annotations").cloned().unwrap_or(json!({}));
                ok(self.deploy(versions, annotations))
            }
            _ => fail(404, 7000, "No route for that URI"),
        }
    }
}

impl Cloudflare {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State { subdomain: Some("acme".into()), ..State::default() }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let state = shared.clone();
                std::thread::spawn(move || {
                    let Ok(req) = read_request(&mut BufReader::new(&mut stream)) else { return };
                    let (status, body) = {
                        let mut s = state.lock().unwrap();
                        let a = s.answer(&req);
                        s.seen.push(req);
                        a
                    };
                    let body = body.to_string();
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.flush();
                });
            }
        });
        Self { port, state }
    }

    fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}/client/v4", self.port)
    }

    fn seen(&self) -> Vec<Req> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The requests whose method is `method` and whose path ends with `suffix`.
    fn requests(&self, method: &str, suffix: &str) -> Vec<Req> {
        self.seen()
            .into_iter()
            .filter(|r| r.method == method && r.target.split('?').next().unwrap_or("").ends_with(suffix))
            .collect()
    }

    /// Deploys a version as if earlier runs had: returns its id.
    fn seed_deployment(&self) -> String {
        let mut s = self.state.lock().unwrap();
        let v = s.new_version();
        s.deploy(json!([{"version_id": v, "percentage": 100.0}]), json!({}));
        v
    }
}

// ------------------------------------------------------------ multipart

/// One part of a `multipart/form-data` body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Part {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    bytes: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parts(req: &Req) -> Vec<Part> {
    let ctype = req.header("content-type").unwrap_or_default();
    assert!(ctype.starts_with("multipart/form-data"), "{ctype}");
    let boundary = ctype.split("boundary=").nth(1).unwrap().trim_matches('"');
    let delim = format!("--{boundary}");
    let mut rest = &req.body[find(&req.body, delim.as_bytes()).unwrap() + delim.len()..];
    let mut out = Vec::new();
    while !rest.starts_with(b"--") {
        rest = rest.strip_prefix(b"\r\n").expect("CRLF after a boundary");
        let head_end = find(rest, b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        rest = &rest[head_end + 4..];
        let end = find(rest, format!("\r\n{delim}").as_bytes()).unwrap();
        let mut part = Part { name: String::new(), filename: None, content_type: None, bytes: rest[..end].to_vec() };
        rest = &rest[end + 2 + delim.len()..];
        for line in head.split("\r\n") {
            let (k, v) = line.split_once(':').unwrap();
            let attr = |key: &str| {
                v.split(';').map(str::trim).find_map(|kv| {
                    kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v.trim_matches('"').to_string())
                })
            };
            if k.eq_ignore_ascii_case("content-disposition") {
                part.name = attr("name").unwrap();
                part.filename = attr("filename");
            } else if k.eq_ignore_ascii_case("content-type") {
                part.content_type = Some(v.trim().to_string());
            }
        }
        out.push(part);
    }
    out
}

fn metadata(parts: &[Part]) -> Value {
    assert_eq!(parts[0].name, "metadata", "the metadata goes first");
    serde_json::from_slice(&parts[0].bytes).unwrap()
}

// ------------------------------------------------------------ the Worker and the runs

/// `(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))`
const ADD_WASM: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x07, 0x01, 0x60, 0x02, 0x7f, 0x7f, 0x01, 0x7f, 0x03, 0x02,
    0x01, 0x00, 0x07, 0x07, 0x01, 0x03, 0x61, 0x64, 0x64, 0x00, 0x00, 0x0a, 0x09, 0x01, 0x07, 0x00, 0x20, 0x00, 0x20,
    0x01, 0x6a, 0x0b,
];

const WRANGLER_TOML: &str = r#"name = "hello-worker"
main = "src/index.js"
compatibility_date = "2024-09-23"
compatibility_flags = ["nodejs_compat"]
# Upload the modules as they are; `.js` files are ES modules, `.wasm` and `.txt` go by
# wrangler's default rules.
no_bundle = true

[[rules]]
type = "ESModule"
globs = ["**/*.js"]

[vars]
GREETING = "hello"
LIMITS = { requests = 100, regions = ["eu", "us"] }

[[kv_namespaces]]
binding = "CACHE"
id = "0f2ac74b498b48028cb68387c421e279"
"#;

/// A project with the Worker (an entry importing a second ES module, a `.wasm` and a text
/// file) and `pipeline` as its `.skiff/pipeline.yaml`.
fn project(pipeline: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("src")).unwrap();
    std::fs::create_dir_all(p.join(".skiff")).unwrap();
    std::fs::write(
        p.join("src/index.js"),
        "import { greet } from \"./lib.js\";\nimport add from \"./add.wasm\";\nimport banner from \"./banner.txt\";\n\n\
         const { exports } = new WebAssembly.Instance(add);\n\n\
         export default {\n  async fetch(request, env) {\n    \
         return new Response(`${banner}${greet(env.GREETING)} ${exports.add(1, 2)}`);\n  },\n};\n",
    )
    .unwrap();
    std::fs::write(p.join("src/lib.js"), "export function greet(name) {\n  return `hello, ${name}`;\n}\n").unwrap();
    std::fs::write(p.join("src/add.wasm"), ADD_WASM).unwrap();
    std::fs::write(p.join("src/banner.txt"), "== skiff ==\n").unwrap();
    std::fs::write(p.join("wrangler.toml"), WRANGLER_TOML).unwrap();
    std::fs::write(p.join(".skiff/pipeline.yaml"), pipeline).unwrap();
    dir
}

/// One `skiff run --json`: whether it succeeded, its events, and all it printed.
struct Ran {
    ok: bool,
    events: Vec<Value>,
    text: String,
}

impl Ran {
    fn step(&self, id: &str) -> &Value {
        self.events
            .iter()
            .find(|e| e["event"] == "step-finished" && e["step_id"] == id)
            .unwrap_or_else(|| panic!("no step `{id}` in\n{}", self.text))
    }

    /// Nothing the run printed (log lines, outputs, errors, events) holds the token.
    fn assert_no_token(&self) {
        assert!(!self.text.contains(TOKEN), "the token leaked:\n{}", self.text);
    }
}

fn skiff_run(project: &Path, secrets: &[(&str, &str)]) -> Ran {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.args(["run", "--json"])
        .current_dir(project)
        .env("TMPDIR", tmp.path())
        .env("SKIFF_CACHE_DIR", crate::shared_cache_dir());
    for (k, v) in secrets {
        cmd.arg("--secret").arg(format!("{k}={v}"));
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let events = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let text = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    Ran { ok: out.status.success(), events, text }
}

/// A pipeline of one job whose steps are `steps` (YAML, indented as a job's steps).
fn pipeline(steps: &str) -> String {
    format!("jobs:\n  deploy:\n    steps:\n{steps}")
}

/// A `cloudflare-deploy` step `id` with `with` (extra YAML lines at the `with:` indentation),
/// granted the fake API's host and the token.
fn step(id: &str, cf: &Cloudflare, with: &str) -> String {
    format!(
        "      - id: {id}\n        uses: cloudflare-deploy\n        with:\n          account-id: {ACCOUNT}\n          \
         api-url: {}\n{with}        permissions:\n          hosts: [\"127.0.0.1:{}\"]\n          \
         secrets: [CLOUDFLARE_API_TOKEN, WORKER_API_KEY]\n",
        cf.api_url(),
        cf.port
    )
}

const SECRETS: &[(&str, &str)] = &[("CLOUDFLARE_API_TOKEN", TOKEN), ("WORKER_API_KEY", "wk-5e6f7a8b9c0d")];

/// wrangler from edge-master/cloudflare (`scripts/setup.sh --edge` installs it). Missing, it
/// fails the test under CI and says SKIPPED loudly elsewhere; it never skips silently.
fn wrangler() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("edge-master/cloudflare/node_modules/.bin/wrangler");
    if path.exists() {
        return Some(path);
    }
    let msg = format!("{} is missing: run scripts/setup.sh --edge (it installs wrangler 4.86.0)", path.display());
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("SKIPPED: {msg}");
    None
}

/// `wrangler deploy` of the project against the fake API, as a developer would run it.
fn wrangler_deploy(wrangler: &Path, project: &Path, cf: &Cloudflare) {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(wrangler)
        .arg("deploy")
        .current_dir(project)
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join(".config"))
        .env("XDG_CACHE_HOME", home.path().join(".cache"))
        .env("WRANGLER_LOG_PATH", home.path().join("logs"))
        .env("WRANGLER_SEND_METRICS", "false")
        .env("CI", "true")
        .env("CLOUDFLARE_API_BASE_URL", cf.api_url())
        .env("CLOUDFLARE_API_TOKEN", TOKEN)
        .env("CLOUDFLARE_ACCOUNT_ID", ACCOUNT)
        .env_remove("CLOUDFLARE_API_KEY")
        .env_remove("CLOUDFLARE_EMAIL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wrangler deploy failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------ tests

/// What wrangler 4.86.0 sends for this Worker (`PUT …/workers/scripts/hello-worker`, found by
/// running it against this server): a `metadata` part, then the entry and the modules found by
/// the module rules, named relative to the entry's folder, in name order, each a file part
/// whose content type says its kind. The step sends the same parts as a new version
/// (`POST …/versions`).
#[test]
fn the_upload_is_the_one_wrangler_deploy_sends() {
    let Some(wrangler) = wrangler() else { return };
    let cf = Cloudflare::start();
    let p = project(&pipeline(&step("cf", &cf, "")));
    wrangler_deploy(&wrangler, p.path(), &cf);
    let theirs = cf.requests("PUT", &format!("/workers/scripts/{SCRIPT}"));
    assert_eq!(theirs.len(), 1, "wrangler uploads the script once");
    let theirs = parts(&theirs[0]);

    let ran = skiff_run(p.path(), SECRETS);
    assert!(ran.ok, "{}", ran.text);
    ran.assert_no_token();
    let ours = cf.requests("POST", &format!("/workers/scripts/{SCRIPT}/versions"));
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].target.split_once('?').map(|x| x.1), Some("bindings_inherit=strict"), "as wrangler's");
    assert_eq!(ours[0].header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));
    let ours = parts(&ours[0]);

    // The metadata: the same entry, compatibility and bindings (JSON values compared, so the
    // order of keys inside an object does not count; the order of the bindings does).
    let (m_theirs, m_ours) = (metadata(&theirs), metadata(&ours));
    for key in ["main_module", "compatibility_date", "compatibility_flags", "bindings"] {
        assert_eq!(m_ours[key], m_theirs[key], "metadata `{key}` differs:\nwrangler: {m_theirs}\nstep: {m_ours}");
    }
    assert_eq!(m_theirs["main_module"], "index.js");
    assert_eq!(
        m_theirs["bindings"],
        json!([
            {"name": "GREETING", "type": "plain_text", "text": "hello"},
            {"name": "LIMITS", "type": "json", "json": {"requests": 100, "regions": ["eu", "us"]}},
            {"name": "CACHE", "type": "kv_namespace", "namespace_id": "0f2ac74b498b48028cb68387c421e279"},
        ])
    );
    // Fields that legitimately differ: a version upload keeps the secrets set on the Worker
    // outside the pipeline (`keep_bindings`, as `wrangler versions upload` sends it) and may
    // carry `annotations` (message, tag); a script upload (`wrangler deploy`) has neither.
    // Nothing else may differ.
    let keys = |m: &Value| m.as_object().unwrap().keys().cloned().collect::<std::collections::BTreeSet<_>>();
    let extra: Vec<_> = keys(&m_ours).difference(&keys(&m_theirs)).cloned().collect();
    let missing: Vec<_> = keys(&m_theirs).difference(&keys(&m_ours)).cloned().collect();
    assert!(missing.is_empty(), "the step's metadata lacks {missing:?}: {m_theirs}");
    assert!(extra.iter().all(|k| k == "keep_bindings" || k == "annotations"), "{extra:?}");
    assert_eq!(m_ours["keep_bindings"], json!(["secret_text", "secret_key"]));

    // The modules: names, filenames, content types and bytes, in order.
    assert_eq!(ours[1..], theirs[1..]);
    let kinds: Vec<_> = theirs[1..].iter().map(|p| (p.name.as_str(), p.content_type.as_deref().unwrap())).collect();
    assert_eq!(
        kinds,
        [
            ("index.js", "application/javascript+module"),
            ("add.wasm", "application/wasm"),
            ("banner.txt", "text/plain"),
            ("lib.js", "application/javascript+module"),
        ]
    );
    assert_eq!(theirs[2].bytes, ADD_WASM);

    // Deployed at once: all traffic to the new version; its workers.dev URL.
    let out = &ran.step("cf")["outputs"];
    let version = out["version-id"].as_str().unwrap();
    let deploys = cf.requests("POST", &format!("/workers/scripts/{SCRIPT}/deployments"));
    assert_eq!(deploys.len(), 1);
    assert_eq!(
        deploys[0].json(),
        json!({"strategy": "percentage", "versions": [{"version_id": version, "percentage": 100}]})
    );
    let state = cf.state.lock().unwrap();
    assert_eq!(out["deployment-id"], state.deployments[0]["id"]);
    assert_eq!(out["url"], "https://hello-worker.acme.workers.dev");
}

/// The Worker from inputs alone (no wrangler.toml), a secret bound from a granted secret, and
/// a canary at 10 % beside the version serving now, promoted to 100 % by a later step.
#[test]
fn a_gradual_deployment_is_promoted_by_a_later_step() {
    let cf = Cloudflare::start();
    let stable = cf.seed_deployment();
    let steps = step(
        "canary",
        &cf,
        "          name: canary-worker\n          main: src/index.js\n          modules: src/lib.js, src/*.wasm\n          \
         compatibility-date: 2025-01-01\n          vars: GREETING=hi\n          secrets: API_KEY=WORKER_API_KEY\n          \
         kv-namespaces: CACHE=abc123\n          percentage: 10\n          message: canary ${{ run.id }}\n",
    ) + &step(
        "promote",
        &cf,
        "          name: canary-worker\n          action: promote\n          version-id: ${{ steps.canary.outputs.version-id }}\n",
    );
    let p = project(&pipeline(&steps));
    std::fs::remove_file(p.path().join("wrangler.toml")).unwrap();
    let ran = skiff_run(p.path(), SECRETS);
    assert!(ran.ok, "{}", ran.text);
    ran.assert_no_token();
    assert!(!ran.text.contains("wk-5e6f7a8b9c0d"), "the bound secret leaked:\n{}", ran.text);

    let upload = &cf.requests("POST", "/workers/scripts/canary-worker/versions")[0];
    let up = parts(upload);
    let m = metadata(&up);
    assert_eq!(m["main_module"], "index.js");
    assert_eq!(m["compatibility_date"], "2025-01-01");
    assert_eq!(m["compatibility_flags"], json!([]));
    assert_eq!(
        m["bindings"],
        json!([
            {"name": "GREETING", "type": "plain_text", "text": "hi"},
            {"name": "API_KEY", "type": "secret_text", "text": "wk-5e6f7a8b9c0d"},
            {"name": "CACHE", "type": "kv_namespace", "namespace_id": "abc123"},
        ])
    );
    assert!(m["annotations"]["workers/message"].as_str().unwrap().starts_with("canary "), "{m}");
    let names: Vec<_> = up[1..].iter().map(|p| (p.name.as_str(), p.content_type.as_deref().unwrap())).collect();
    assert_eq!(
        names,
        [
            ("index.js", "application/javascript+module"),
            ("lib.js", "application/javascript+module"),
            ("add.wasm", "application/wasm")
        ]
    );

    let canary = ran.step("canary")["outputs"]["version-id"].as_str().unwrap().to_string();
    let deploys: Vec<Value> =
        cf.requests("POST", "/workers/scripts/canary-worker/deployments").iter().map(Req::json).collect();
    assert_eq!(deploys.len(), 2, "{deploys:?}");
    assert_eq!(
        deploys[0]["versions"],
        json!([{"version_id": canary, "percentage": 10}, {"version_id": stable, "percentage": 90}])
    );
    assert_eq!(deploys[1], json!({"strategy": "percentage", "versions": [{"version_id": canary, "percentage": 100}]}));
    let promote = &ran.step("promote")["outputs"];
    assert_eq!(promote["version-id"], canary.as_str());
    assert_eq!(cf.state.lock().unwrap().deployments[0]["versions"], json!([{"version_id": canary, "percentage": 100}]));
    // Promotion uploads nothing.
    assert_eq!(cf.requests("POST", "/versions").len(), 1);
}

/// `action: rollback` sends all traffic back to the version of the deployment before the
/// current one, read from `GET …/deployments`; nothing is uploaded.
#[test]
fn a_rollback_returns_to_the_previous_deployment_s_version() {
    let cf = Cloudflare::start();
    let previous = cf.seed_deployment();
    let current = cf.seed_deployment();
    let p = project(&pipeline(&step("back", &cf, "          action: rollback\n")));
    let ran = skiff_run(p.path(), SECRETS);
    assert!(ran.ok, "{}", ran.text);
    ran.assert_no_token();
    assert_ne!(previous, current);
    let out = &ran.step("back")["outputs"];
    assert_eq!(out["version-id"], previous.as_str());
    let deploys = cf.requests("POST", &format!("/workers/scripts/{SCRIPT}/deployments"));
    assert_eq!(
        deploys[0].json(),
        json!({"strategy": "percentage", "versions": [{"version_id": previous, "percentage": 100}],
               "annotations": {"workers/message": format!("Rollback to {previous}")}})
    );
    assert!(cf.requests("POST", "/versions").is_empty());
    assert_eq!(out["url"], "https://hello-worker.acme.workers.dev");
}

/// Cloudflare's refusal (`success: false`, error 10021) fails the step with the code, the
/// message and what to check, and without the token even when the answer echoes it; an
/// account without a workers.dev subdomain deploys with an empty `url`.
#[test]
fn an_api_error_is_a_clear_step_failure_without_the_token() {
    let cf = Cloudflare::start();
    cf.state.lock().unwrap().refuse_uploads =
        Some((10021, format!("Uncaught SyntaxError: Unexpected token '<' (request by Bearer {TOKEN})")));
    let p = project(&pipeline(&step("cf", &cf, "")));
    let ran = skiff_run(p.path(), SECRETS);
    assert!(!ran.ok, "{}", ran.text);
    ran.assert_no_token();
    let err = ran.step("cf")["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("error 10021: Uncaught SyntaxError"), "{err}");
    assert!(
        err.contains("uploading a version of Worker `hello-worker`") && err.contains("`main` (`src/index.js`)"),
        "{err}"
    );
    assert!(cf.requests("POST", "/deployments").is_empty(), "nothing is deployed after a refused upload");

    // The same Worker deploys once the API accepts it; without a subdomain `url` is empty.
    {
        let mut s = cf.state.lock().unwrap();
        s.refuse_uploads = None;
        s.subdomain = None;
    }
    let ran = skiff_run(p.path(), SECRETS);
    assert!(ran.ok, "{}", ran.text);
    let out = &ran.step("cf")["outputs"];
    assert_eq!(out["url"], "");
    assert!(!out["deployment-id"].as_str().unwrap().is_empty());
    assert!(ran.text.contains("no workers.dev subdomain"), "{}", ran.text);
}

/// A pipeline that does not grant the API's host is refused before the step starts, and one
/// that does not grant the token's secret is denied before any request.
#[test]
fn a_pipeline_that_does_not_grant_the_api_host_is_refused() {
    let cf = Cloudflare::start();
    let ungranted = format!(
        "      - id: cf\n        uses: cloudflare-deploy\n        with:\n          account-id: {ACCOUNT}\n          \
         api-url: {}\n        permissions:\n          secrets: [CLOUDFLARE_API_TOKEN]\n",
        cf.api_url()
    );
    let p = project(&pipeline(&ungranted));
    let ran = skiff_run(p.path(), SECRETS);
    assert!(!ran.ok, "{}", ran.text);
    let err = ran.step("cf")["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("asks for network access") && err.contains(&format!("127.0.0.1:{}", cf.port)), "{err}");
    assert!(err.contains("permissions.hosts"), "{err}");

    let no_token = format!(
        "      - id: cf\n        uses: cloudflare-deploy\n        with:\n          account-id: {ACCOUNT}\n          \
         api-url: {}\n        permissions:\n          hosts: [\"127.0.0.1:{}\"]\n",
        cf.api_url(),
        cf.port
    );
    let p = project(&pipeline(&no_token));
    let ran = skiff_run(p.path(), SECRETS);
    assert!(!ran.ok, "{}", ran.text);
    let err = ran.step("cf")["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("CLOUDFLARE_API_TOKEN") && err.contains("permissions.secrets"), "{err}");
    ran.assert_no_token();
    assert!(cf.seen().is_empty(), "nothing reached the API: {:?}", cf.seen());
}

/// Inputs are checked before anything is sent: a module leaving the workspace, a missing
/// account id.
#[test]
fn bad_inputs_fail_before_anything_is_sent() {
    let cf = Cloudflare::start();
    let p = project(&pipeline(&step("cf", &cf, "          modules: ../../etc/passwd\n")));
    let ran = skiff_run(p.path(), SECRETS);
    assert!(!ran.ok);
    let err = ran.step("cf")["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("input `modules`") && err.contains("inside the workspace"), "{err}");

    let steps = format!(
        "      - id: cf\n        uses: cloudflare-deploy\n        with:\n          api-url: {}\n        permissions:\n          \
         hosts: [\"127.0.0.1:{}\"]\n          secrets: [CLOUDFLARE_API_TOKEN]\n",
        cf.api_url(),
        cf.port
    );
    let p = project(&pipeline(&steps));
    let ran = skiff_run(p.path(), SECRETS);
    assert!(!ran.ok);
    let err = ran.step("cf")["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("`account-id` is required"), "{err}");
    assert!(cf.seen().is_empty(), "{:?}", cf.seen());
}
