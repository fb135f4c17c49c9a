//! Published step components against a real registry: Debian's `docker-registry` (the CNCF
//! Distribution registry), started on a loopback port for each test, with and without
//! htpasswd authentication. Everything goes through the `skiff` binary, as a user would.
//!
//! Without `docker-registry` (and `htpasswd`) these tests fail under `CI=true` and skip
//! loudly otherwise: `scripts/setup.sh` installs both.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use skiff_pipeline::component_ref::{ComponentRef, Digest};
use skiff_registry::client::{
    ClientOptions, RegistryClient, WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE, descriptor,
};
use skiff_registry::publish;

/// A registry on 127.0.0.1, stopped on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    pub root: tempfile::TempDir,
    token: Option<token::Server>,
}

/// The registry binary, or `None` (and a loud skip) when it is not installed outside CI.
fn tools() -> bool {
    let have = |t: &str| {
        Command::new("sh").args(["-c", &format!("command -v {t}")]).output().is_ok_and(|o| o.status.success())
    };
    if have("docker-registry") && have("htpasswd") {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("docker-registry and htpasswd are needed for the registry tests: run scripts/setup.sh");
    }
    eprintln!("SKIPPED: docker-registry or htpasswd is not installed (scripts/setup.sh installs them)");
    false
}

/// How a test registry authenticates.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    /// HTTP Basic against an htpasswd file (bcrypt).
    Htpasswd(&'a str, &'a str),
    /// Docker's token flow: the registry answers `401` with a Bearer challenge naming a token
    /// server (started by the test), which checks these credentials and issues ES256 tokens.
    Token(&'a str, &'a str),
}

impl Registry {
    /// Starts a registry; with `user`, it requires that user (htpasswd, bcrypt).
    pub fn start(user: Option<(&str, &str)>) -> Option<Self> {
        Self::start_auth(match user {
            Some((u, p)) => Auth::Htpasswd(u, p),
            None => Auth::None,
        })
    }

    pub fn start_auth(auth: Auth) -> Option<Self> {
        if !tools() {
            return None;
        }
        let root = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let mut token_server = None;
        let auth = match auth {
            Auth::Htpasswd(u, p) => {
                let file = root.path().join("htpasswd");
                let ok = Command::new("htpasswd").args(["-Bbc"]).arg(&file).args([u, p]).output().unwrap();
                assert!(ok.status.success(), "htpasswd: {}", String::from_utf8_lossy(&ok.stderr));
                format!("auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n", file.display())
            }
            Auth::Token(u, p) => {
                let (server, cert) = token::Server::start(u, p);
                let bundle = root.path().join("token-root.pem");
                std::fs::write(&bundle, cert).unwrap();
                let realm = format!("http://{}/token", server.addr);
                token_server = Some(server);
                format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: skiff-test\n    issuer: skiff-test-issuer\n    rootcertbundle: {}\n",
                    bundle.display()
                )
            }
            Auth::None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: skiff-test-secret\n{auth}",
            root.path().join("data").display()
        );
        std::fs::write(root.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(root.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        let reg = Registry { child, addr, root, token: token_server };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&reg.addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start on {}", reg.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(reg)
    }

    /// The token server's `host:port`, for [`Auth::Token`].
    pub fn token_addr(&self) -> Option<&str> {
        self.token.as_ref().map(|t| t.addr.as_str())
    }

    /// Stops it (the tests of a registry going down).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The file holding a blob's bytes in the registry's storage.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.path().join(format!("data/docker/registry/v2/blobs/sha256/{}/{}/data", &d.hex()[..2], d.hex()))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A project folder with its own component store (so "cached" means what this test put there).
pub struct Project {
    pub dir: tempfile::TempDir,
    pub cache: tempfile::TempDir,
}

impl Project {
    pub fn new(pipeline: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".skiff")).unwrap();
        std::fs::write(dir.path().join(".skiff/pipeline.yaml"), pipeline).unwrap();
        Project { dir, cache: tempfile::tempdir().unwrap() }
    }

    pub fn skiff(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_skiff"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("SKIFF_CACHE_DIR", self.cache.path())
            // The workspaces of runs (a failed run's is kept) go where the test removes them.
            .env("TMPDIR", self.cache.path())
            // No user's Docker credentials leak in.
            .env("DOCKER_CONFIG", self.dir.path().join(".docker"))
            .env("COSIGN_PASSWORD", "correct horse")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> (bool, String) {
        text(self.skiff(args).output().unwrap())
    }

    /// A built-in step's component written into the project, as an author's build would.
    pub fn component(&self, builtin: &str, extra: &[u8]) -> PathBuf {
        let mut bytes = skiff_runtime::builtin::get(builtin).unwrap().to_vec();
        if !extra.is_empty() {
            crate::support::wasm::custom_section(&mut bytes, "skiff-test", extra);
        }
        let path = self.dir.path().join(format!("{builtin}.wasm"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// `skiff step publish PATH TAG`, which must succeed; the digest it printed.
    pub fn publish(&self, path: &std::path::Path, tag: &str) -> Digest {
        let (ok, out) = self.run(&["step", "publish", path.to_str().unwrap(), tag]);
        assert!(ok, "{out}");
        published_digest(&out)
    }

    pub fn lock_file(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(".skiff/lock.yaml")).unwrap_or_default()
    }
}

fn text(o: Output) -> (bool, String) {
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// The digest `skiff step publish` printed.
fn published_digest(out: &str) -> Digest {
    let at = out.find("@sha256:").unwrap_or_else(|| panic!("no digest in: {out}"));
    Digest::parse(&out[at + 1..at + 1 + 71]).unwrap()
}

fn pipeline(reference: &str) -> String {
    format!("steps:\n  - id: hello\n    uses: {reference}\n    with:\n      message: from the registry\n")
}

#[test]
fn publish_lock_and_run_by_digest_and_a_moved_tag_changes_nothing_until_locked_again() {
    let Some(reg) = Registry::start(None) else { return };
    let tag = format!("{}/acme/hello:1.0.0", reg.addr);
    let p = Project::new(&pipeline(&tag));
    let v1 = p.component("diag", b"");
    let (ok, out) =
        p.run(&["step", "publish", v1.to_str().unwrap(), &tag, "--source", "https://example.com/acme/hello"]);
    assert!(ok, "{out}");
    let d1 = published_digest(&out);

    // Unpinned: `--locked` refuses, saying how to pin.
    let (ok, out) = p.run(&["run", "--locked"]);
    assert!(!ok && out.contains("skiff lock"), "{out}");

    let (ok, out) = p.run(&["lock"]);
    assert!(ok, "{out}");
    assert!(p.lock_file().contains(&format!("{tag}: {d1}")), "{}", p.lock_file());
    let (ok, out) = p.run(&["lock", "--check"]);
    assert!(ok, "{out}");

    let (ok, out) = p.run(&["run", "--locked"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{tag}@{d1}")), "{out}");
    assert_eq!(std::fs::read_to_string(p.dir.path().join("skiff-diag.txt")).ok(), None, "runs in a copy");

    // The tag moves to other bytes (the `script` step, which needs a `script` input).
    let v2 = p.component("script", b"");
    let d2 = p.publish(&v2, &tag);
    assert_ne!(d1, d2);

    // The locked run still gets the old bytes, and `lock --check` notices the move.
    let (ok, out) = p.run(&["run", "--locked"]);
    assert!(ok, "the locked run must still run diag: {out}");
    assert!(out.contains(&d1.to_string()) && !out.contains(&d2.to_string()), "{out}");
    let (ok, out) = p.run(&["lock", "--check"]);
    assert!(!ok && out.contains("moved from"), "{out}");

    // Locking again moves the pin; the run now gets the new bytes.
    let (ok, out) = p.run(&["lock"]);
    assert!(ok, "{out}");
    assert!(p.lock_file().contains(&d2.to_string()), "{}", p.lock_file());
    let (ok, out) = p.run(&["run", "--locked"]);
    assert!(!ok && out.contains("script"), "the new bytes are the script step: {out}");

    // A reference written with its digest needs no lock.
    let pinned = Project::new(&pipeline(&format!("{}/acme/hello@{d1}", reg.addr)));
    let (ok, out) = pinned.run(&["run", "--locked"]);
    assert!(ok, "{out}");
}

#[test]
fn inspect_shows_what_a_component_asks_for_before_it_runs() {
    let Some(reg) = Registry::start(None) else { return };
    let tag = format!("{}/acme/diag:2", reg.addr);
    let p = Project::new("steps: []\n");
    let c = p.component("diag", b"");
    let (ok, out) = p.run(&["step", "publish", c.to_str().unwrap(), &tag, "--source", "https://example.com/acme/diag"]);
    assert!(ok, "{out}");
    let (ok, out) = p.run(&["step", "inspect", &tag]);
    assert!(ok, "{out}");
    for want in ["diag", "https://example.com/acme/diag", "hosts:   ${inputs.fetch}", "message", "process: no"] {
        assert!(out.contains(want), "missing {want}: {out}");
    }
    let (ok, out) = p.run(&["step", "inspect", &tag, "--json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["capabilities"]["hosts"][0], "${inputs.fetch}");
    assert_eq!(v["name"], "diag");
    // Nothing was pulled to answer that.
    assert!(!p.cache.path().join("components/sha256").exists(), "inspect must not pull the component");

    let (ok, out) = p.run(&["step", "pull", &tag, "-o", "got.wasm"]);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(p.dir.path().join("got.wasm")).unwrap(), std::fs::read(&c).unwrap());

    // What a registry says is data: escape sequences in annotations never reach the terminal.
    let hostile = ComponentRef::parse(&format!("{}/acme/hostile:1", reg.addr)).unwrap();
    let bytes = std::fs::read(&c).unwrap();
    let esc = "\u{1b}]0;pwned\u{7}\u{1b}[2J";
    let annotations = std::collections::BTreeMap::from([
        (publish::annotation::TITLE.to_string(), format!("evil{esc}")),
        (publish::annotation::DESCRIPTION.to_string(), format!("text{esc}\rfake ✓ success")),
        (
            publish::annotation::CAPABILITIES.to_string(),
            format!(r#"{{"hosts":["a{esc}"],"secrets":[],"process":false}}"#)
                .replace('\u{1b}', "\\u001b")
                .replace('\u{7}', "\\u0007"),
        ),
        (publish::annotation::INTERFACE.to_string(), r#"{"inputs":[],"outputs":[]}"#.to_string()),
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = RegistryClient::new(ClientOptions::default());
    rt.block_on(publish::push_component(&client, &hostile, &bytes, annotations, &[], &[])).unwrap();
    let (ok, out) = p.run(&["step", "inspect", &hostile.to_string()]);
    assert!(ok, "{out}");
    assert!(out.contains("evil") && out.contains("fake ✓ success"), "{out}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "escape sequences reached the terminal: {out:?}");

    // Only step components are published.
    std::fs::write(p.dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let (ok, out) = p.run(&["step", "publish", "core.wasm", &tag]);
    assert!(!ok && out.contains("not a valid step component"), "{out}");
}

#[test]
fn a_blob_whose_bytes_do_not_match_its_digest_is_refused() {
    let Some(reg) = Registry::start(None) else { return };
    let tag = format!("{}/acme/hello:1", reg.addr);
    let p = Project::new(&pipeline(&tag));
    let c = p.component("diag", b"");
    p.publish(&c, &tag);
    let (ok, out) = p.run(&["lock"]);
    assert!(ok, "{out}");
    // The registry's stored layer changes under it; a fresh store must not accept it.
    let layer = Digest::of(&std::fs::read(&c).unwrap());
    let blob = reg.blob_path(&layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let fresh = Project { dir: tempfile::tempdir().unwrap(), cache: tempfile::tempdir().unwrap() };
    copy_project(&p, &fresh);
    let (ok, out) = fresh.run(&["run", "--locked"]);
    assert!(!ok, "{out}");
    assert!(out.contains("do not match") && out.contains(&layer.to_string()), "{out}");
    assert!(!fresh.cache.path().join("components/sha256").join(format!("{}.wasm", layer.hex())).exists());
}

fn copy_project(from: &Project, to: &Project) {
    std::fs::create_dir_all(to.dir.path().join(".skiff")).unwrap();
    for f in ["pipeline.yaml", "lock.yaml"] {
        let src = from.dir.path().join(".skiff").join(f);
        if src.exists() {
            std::fs::copy(src, to.dir.path().join(".skiff").join(f)).unwrap();
        }
    }
}

#[test]
fn signatures_are_required_checked_against_trusted_keys_and_refused_with_the_reason() {
    let Some(reg) = Registry::start(None) else { return };
    let tag = format!("{}/acme/signed:1", reg.addr);
    let p = Project::new(&pipeline(&tag));
    let c = p.component("diag", b"");
    p.publish(&c, &tag);
    let (ok, out) = p.run(&["step", "keygen", "trusted"]);
    assert!(ok, "{out}");
    let (ok, out) = p.run(&["step", "keygen", "other"]);
    assert!(ok, "{out}");
    let strict = ["run", "--locked", "--require-signature", "--trusted-key", "trusted.pub"];
    let (ok, out) = p.run(&["lock"]);
    assert!(ok, "{out}");

    // Unsigned: refused before anything runs.
    let (ok, out) = p.run(&strict);
    assert!(!ok && out.contains("is not signed"), "{out}");
    assert!(!p.dir.path().join("skiff-diag.txt").exists());

    // Signed by a key nobody trusts: refused, naming the problem.
    let (ok, out) = p.run(&["step", "sign", "--key", "other.key", &tag]);
    assert!(ok, "{out}");
    let (ok, out) = p.run(&strict);
    assert!(!ok && out.contains("no valid signature by a trusted key"), "{out}");

    // A wrong password cannot sign.
    let (ok, out) = text(
        p.skiff(&["step", "sign", "--key", "trusted.key", &tag]).env("COSIGN_PASSWORD", "wrong").output().unwrap(),
    );
    assert!(!ok && out.to_lowercase().contains("password"), "{out}");

    // Signed by the trusted key (beside the other signature): runs, and says by which key.
    let (ok, out) = p.run(&["step", "sign", "--key", "trusted.key", &tag]);
    assert!(ok, "{out}");
    let (ok, out) = p.run(&strict);
    assert!(ok, "{out}");
    assert!(out.contains("signed by key"), "{out}");

    // The signature manifest is cosign's: the `sha256-HEX.sig` tag, simple-signing layers.
    let lock = skiff_pipeline::lock::Lock::parse(&p.lock_file()).unwrap();
    let digest = lock.components[&tag].clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = RegistryClient::new(ClientOptions::default());
    let r = ComponentRef::parse(&tag).unwrap();
    let sig = rt.block_on(client.pull_manifest_tag(&r, &format!("sha256-{}.sig", digest.hex()))).unwrap();
    assert_eq!(sig.manifest.layers.len(), 2, "both signatures are kept");
    for l in &sig.manifest.layers {
        assert_eq!(l.media_type, "application/vnd.dev.cosign.simplesigning.v1+json");
        assert!(l.annotations.as_ref().unwrap().contains_key("dev.cosignproject.cosign/signature"));
    }
}

#[test]
fn with_the_registry_down_a_cached_digest_runs_and_an_uncached_one_fails_clearly() {
    let Some(mut reg) = Registry::start(None) else { return };
    let cached = format!("{}/acme/cached:1", reg.addr);
    let uncached = format!("{}/acme/uncached:1", reg.addr);
    let p = Project::new(&pipeline(&cached));
    let c = p.component("diag", b"");
    assert!(p.run(&["step", "publish", c.to_str().unwrap(), &cached]).0);
    let other = p.component("diag", b"other bytes");
    let d_uncached = p.publish(&other, &uncached);
    assert!(p.run(&["lock"]).0);
    let (ok, out) = p.run(&["run", "--locked"]);
    assert!(ok, "{out}");

    reg.stop();
    let (ok, out) = p.run(&["run", "--locked"]);
    assert!(ok, "a cached digest needs no registry: {out}");
    assert!(out.contains("from the local store"), "{out}");

    let q = Project::new(&pipeline(&format!("{}/acme/uncached@{d_uncached}", reg.addr)));
    let (ok, out) = q.run(&["run", "--locked"]);
    assert!(!ok, "{out}");
    assert!(out.contains("cannot reach registry") && out.contains(&reg.addr), "{out}");
}

#[test]
fn an_oci_artifact_that_is_not_a_component_is_refused_clearly() {
    let Some(reg) = Registry::start(None) else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = RegistryClient::new(ClientOptions::default());
    // A container image: an image config and a tar layer.
    let image = ComponentRef::parse(&format!("{}/acme/image:1", reg.addr)).unwrap();
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = b"not a tarball, not wasm either";
    let m = publish::manifest(
        descriptor("application/vnd.oci.image.config.v1+json", config, None),
        vec![descriptor("application/vnd.oci.image.layer.v1.tar", layer, None)],
        None,
    );
    rt.block_on(client.push(&image, None, &[config, layer], &m)).unwrap();
    // A Wasm artifact whose layer is a core module, not a component.
    let module = ComponentRef::parse(&format!("{}/acme/module:1", reg.addr)).unwrap();
    let core = b"\0asm\x01\0\0\0";
    let cfg = publish::config(&Digest::of(core), &[], &[], "2026-01-01T00:00:00Z");
    let m = publish::manifest(
        descriptor(WASM_CONFIG_MEDIA_TYPE, &cfg, None),
        vec![descriptor(WASM_LAYER_MEDIA_TYPE, core, None)],
        None,
    );
    rt.block_on(client.push(&module, None, &[core, &cfg], &m)).unwrap();

    for (r, says) in [
        (&image, "config media type is `application/vnd.oci.image.config.v1+json`"),
        (&module, "core WebAssembly module"),
    ] {
        let p = Project::new(&pipeline(&r.to_string()));
        let (ok, out) = p.run(&["run"]);
        assert!(!ok, "{out}");
        assert!(out.contains("not a WebAssembly component artifact") && out.contains(says), "{out}");
    }
}

#[test]
fn an_authenticated_registry_takes_docker_credentials_or_password_stdin() {
    let Some(reg) = Registry::start(Some(("ci", "s3cret"))) else { return };
    let tag = format!("{}/acme/private:1", reg.addr);
    let p = Project::new(&pipeline(&tag));
    let c = p.component("diag", b"");
    let (ok, out) = p.run(&["step", "publish", c.to_str().unwrap(), &tag]);
    assert!(!ok && out.contains("refused the credentials") && out.contains("docker login"), "{out}");

    let publish = |password: &str| {
        let mut child = p
            .skiff(&["step", "publish", c.to_str().unwrap(), &tag, "--username", "ci", "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
        text(child.wait_with_output().unwrap())
    };
    let (ok, out) = publish("wrong");
    assert!(!ok && out.contains("refused the credentials"), "{out}");
    let (ok, out) = publish("s3cret");
    assert!(ok, "{out}");

    // Docker's config.json (what `docker login` writes) is read for lock and run.
    let auth = base64_encode(b"ci:s3cret");
    let docker = p.dir.path().join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(docker.join("config.json"), format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr))
        .unwrap();
    let (ok, out) = p.run(&["lock"]);
    assert!(ok, "{out}");
    let (ok, out) = p.run(&["run", "--locked"]);
    assert!(ok, "{out}");
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

const TOKEN: &str = "registry-admin-5e1d";

/// `skiff serve` refuses an unpinned tag unless the app allows it, and a component without a
/// trusted signature where the app requires one; the run fails with the reason, before any step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_unpinned_tags_and_unsigned_components_unless_the_app_allows_them() {
    let Some(reg) = Registry::start(None) else { return };
    let tag = format!("{}/acme/served:1", reg.addr);
    let p = Project::new("steps: []\n");
    let c = p.component("diag", b"served");
    let digest = p.publish(&c, &tag);
    assert!(p.run(&["step", "keygen", "ci"]).0);
    let data = tempfile::tempdir().unwrap();
    let pinned = format!("{}/acme/served@{digest}", reg.addr);
    let app = |name: &str, uses: &str, extra: &str| {
        format!("[[apps]]\nname = \"{name}\"\n{extra}\npipeline-yaml = \"\"\"\nsteps:\n  - uses: {uses}\n\"\"\"\n")
    };
    let key = p.dir.path().join("ci.pub");
    let apps = [
        app("strict", &tag, ""),
        app("loose", &tag, "allow-unpinned = true"),
        app("pinned", &pinned, ""),
        app("signed", &pinned, &format!("require-signature = true\ntrusted-keys = [\"{}\"]", key.display())),
        app("elsewhere", "127.0.0.2:1/acme/served:1", "allow-unpinned = true"),
    ]
    .concat();
    let serve = crate::serve::ServeProcess::start_with(data.path(), |port| {
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata = \"{}\"\n[registry]\nallowed = [\"{}\"]\n[[tokens]]\nname = \"admin\"\nsha256 = \"{}\"\napps = [\"*\"]\n{apps}",
            data.path().join("data").display(),
            reg.addr,
            skiff_server::crypto::token_hash(TOKEN),
        )
    })
    .await;
    let http = reqwest::Client::new();
    let run = |app: &'static str| crate::support::manual_run(&http, &serve.base, TOKEN, app);
    let strict = run("strict").await;
    assert_eq!(strict["status"], "failure", "{strict:#}");
    assert!(strict.to_string().contains("skiff lock") && strict.to_string().contains("allow-unpinned"), "{strict:#}");
    let loose = run("loose").await;
    assert_eq!(loose["status"], "success", "{loose:#}");
    let pinned = run("pinned").await;
    assert_eq!(pinned["status"], "success", "{pinned:#}");
    let unsigned = run("signed").await;
    assert_eq!(unsigned["status"], "failure", "{unsigned:#}");
    assert!(unsigned.to_string().contains("is not signed"), "{unsigned:#}");
    let (ok, out) = p.run(&["step", "sign", "--key", "ci.key", &tag]);
    assert!(ok, "{out}");
    let signed = run("signed").await;
    assert_eq!(signed["status"], "success", "{signed:#}");
    let elsewhere = run("elsewhere").await;
    assert_eq!(elsewhere["status"], "failure", "{elsewhere:#}");
    assert!(elsewhere.to_string().contains("does not allow"), "{elsewhere:#}");
}

/// A Docker token server (the `realm` of a registry's Bearer challenge): checks Basic
/// credentials and issues ES256 JWTs with an `x5c` certificate the registry trusts.
mod token {
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::DecodePrivateKey as _;

    pub struct Server {
        pub addr: String,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(s) = self.stop.take() {
                let _ = s.send(());
            }
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn b64url(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    impl Server {
        /// The server and the PEM certificate its tokens are signed under.
        pub fn start(user: &str, password: &str) -> (Self, String) {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let cert =
                rcgen::CertificateParams::new(vec!["skiff-test-token".to_string()]).unwrap().self_signed(&key).unwrap();
            let signing = p256::ecdsa::SigningKey::from_pkcs8_der(&key.serialize_der()).unwrap();
            let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
            let expected =
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let app = axum::Router::new().route(
                        "/token",
                        axum::routing::get(move |headers: axum::http::HeaderMap, query: axum::extract::RawQuery| {
                            let (signing, x5c, expected) = (signing.clone(), x5c.clone(), expected.clone());
                            async move {
                                let given = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
                                if given != expected {
                                    return (axum::http::StatusCode::UNAUTHORIZED, "bad credentials".to_string());
                                }
                                let query = query.0.unwrap_or_default();
                                let access: Vec<serde_json::Value> = query
                                    .split('&')
                                    .filter_map(|kv| kv.strip_prefix("scope="))
                                    .map(|s| s.replace("%3A", ":").replace("%2F", "/").replace("%2C", ","))
                                    .filter_map(|s| {
                                        let mut parts = s.splitn(3, ':');
                                        let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                                        Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                                    })
                                    .collect();
                                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                                let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "x5c": [x5c]});
                                let claims = serde_json::json!({
                                    "iss": "skiff-test-issuer", "sub": "ci", "aud": "skiff-test",
                                    "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", access.len()),
                                    "access": access,
                                });
                                let signing_input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
                                let sig: p256::ecdsa::Signature = signing.sign(signing_input.as_bytes());
                                let jwt = format!("{signing_input}.{}", b64url(&sig.to_bytes()));
                                (axum::http::StatusCode::OK, serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300}).to_string())
                            }
                        }),
                    );
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    axum::serve(listener, app).with_graceful_shutdown(async { let _ = stopped.await; }).await.unwrap();
                });
            });
            (Server { addr, stop: Some(stop), thread: Some(thread) }, cert.pem())
        }
    }
}

#[test]
fn a_bearer_token_challenge_is_answered_with_the_given_credentials() {
    let Some(reg) = Registry::start_auth(Auth::Token("ci", "t0ken")) else { return };
    let tag = format!("{}/acme/tokened:1", reg.addr);
    let p = Project::new(&pipeline(&tag));
    let c = p.component("diag", b"");
    let (ok, out) = p.run(&["step", "publish", c.to_str().unwrap(), &tag]);
    assert!(!ok && out.contains("refused the credentials"), "anonymous may not push: {out}");
    let mut child = p
        .skiff(&["step", "publish", c.to_str().unwrap(), &tag, "--username", "ci", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(b"t0ken\n").unwrap();
    let (ok, out) = text(child.wait_with_output().unwrap());
    assert!(ok, "{out}");
    let docker = p.dir.path().join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#, reg.addr, base64_encode(b"ci:t0ken")),
    )
    .unwrap();
    let (ok, out) = p.run(&["lock"]);
    assert!(ok, "{out}");
    let (ok, out) = p.run(&["run", "--locked"]);
    assert!(ok, "{out}");
}

/// The `wkg` binary `scripts/setup.sh` builds under `target/tools`, or `None` (a loud skip)
/// outside CI.
fn wkg() -> Option<Command> {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target/tools/bin/wkg");
    if bin.is_file() {
        let mut c = Command::new(bin);
        c.env("DOCKER_CONFIG", "/nonexistent").stdin(Stdio::null());
        return Some(c);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("wkg is needed for this test: run scripts/setup.sh (it builds target/tools/bin/wkg)");
    }
    eprintln!("SKIPPED: target/tools/bin/wkg is missing (scripts/setup.sh builds it)");
    None
}

#[test]
fn components_move_between_skiff_and_wkg_both_ways() {
    let Some(reg) = Registry::start(None) else { return };
    let Some(_) = wkg() else { return };
    let p = Project::new("steps: []\n");
    let diag = p.component("diag", b"");

    // Pushed by `wkg oci push`: runs in a Skiff pipeline.
    let from_wkg = format!("{}/acme/from-wkg:1", reg.addr);
    let (ok, out) =
        text(wkg().unwrap().args(["oci", "push", "--insecure", &reg.addr, &from_wkg]).arg(&diag).output().unwrap());
    assert!(ok, "wkg oci push: {out}");
    std::fs::write(p.dir.path().join(".skiff/pipeline.yaml"), pipeline(&from_wkg)).unwrap();
    let (ok, out) = p.run(&["run"]);
    assert!(ok, "{out}");
    // Without Skiff's annotations, inspect asks the component itself.
    let (ok, out) = p.run(&["step", "inspect", &from_wkg]);
    assert!(ok && out.contains("${inputs.fetch}"), "{out}");

    // Published by Skiff: `wkg oci pull` takes it as a Wasm component artifact, byte for byte.
    let from_skiff = format!("{}/acme/from-skiff:1", reg.addr);
    p.publish(&diag, &from_skiff);
    let pulled = p.dir.path().join("pulled.wasm");
    let (ok, out) = text(
        wkg().unwrap().args(["oci", "pull", "--insecure", &reg.addr, &from_skiff, "-o"]).arg(&pulled).output().unwrap(),
    );
    assert!(ok, "wkg oci pull: {out}");
    assert_eq!(std::fs::read(&pulled).unwrap(), std::fs::read(&diag).unwrap());
}

#[test]
fn the_step_abi_is_published_as_the_wit_package_skiff_step() {
    let Some(reg) = Registry::start(None) else { return };
    let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("wit");
    let tag = format!("{}/skiff/step:0.1.0", reg.addr);
    let p = Project::new("steps: []\n");
    let (ok, out) = p.run(&["step", "publish", wit.to_str().unwrap(), &tag]);
    assert!(ok && out.contains("skiff:step@0.1.0"), "{out}");
    let (ok, out) = p.run(&["step", "inspect", &tag]);
    assert!(ok, "{out}");
    assert!(out.contains("WIT package skiff:step@0.1.0") && out.contains("types"), "{out}");
    // wkg pulls it as any Wasm artifact.
    let Some(mut wkg) = wkg() else { return };
    let pulled = p.dir.path().join("step-wit.wasm");
    let (ok, out) = text(wkg.args(["oci", "pull", "--insecure", &reg.addr, &tag, "-o"]).arg(&pulled).output().unwrap());
    assert!(ok, "wkg oci pull: {out}");
    let (name, _) = skiff_registry::publish::decode_wit(&std::fs::read(&pulled).unwrap()).unwrap();
    assert_eq!(name, "skiff:step@0.1.0");
}

/// Serves `bytes` at `/step.wasm` on a loopback port until dropped.
struct FileServer {
    addr: String,
    _thread: std::thread::JoinHandle<()>,
}

impl FileServer {
    fn start(bytes: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let thread = std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { break };
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let found = String::from_utf8_lossy(&buf[..n]).starts_with("GET /step.wasm ");
                let (status, body): (&str, &[u8]) = if found { ("200 OK", &bytes) } else { ("404 Not Found", b"") };
                let _ = write!(s, "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = s.write_all(body);
            }
        });
        FileServer { addr, _thread: thread }
    }
}

#[test]
fn a_component_at_a_url_runs_only_with_its_hash() {
    let diag = skiff_runtime::builtin::get("diag").unwrap().to_vec();
    let server = FileServer::start(diag.clone());
    let url = format!("http://{}/step.wasm", server.addr);
    let good = format!("{url}#sha256={}", Digest::of(&diag).hex());
    let p = Project::new(&pipeline(&good));
    let (ok, out) = p.run(&["run", "--locked"]);
    assert!(ok, "a URL with its hash is pinned: {out}");

    let wrong = format!("{url}#sha256={}", Digest::of(b"something else").hex());
    let q = Project::new(&pipeline(&wrong));
    let (ok, out) = q.run(&["run"]);
    assert!(!ok && out.contains("do not match"), "{out}");

    let r = Project::new(&pipeline(&url));
    let (ok, out) = r.run(&["run"]);
    assert!(!ok && out.contains("#sha256="), "a URL without its hash is refused: {out}");

    // Plain HTTP leaves the machine only with --insecure.
    let remote = format!("http://example.com/step.wasm#sha256={}", Digest::of(&diag).hex());
    let s = Project::new(&pipeline(&remote));
    let (ok, out) = s.run(&["run"]);
    assert!(!ok && out.contains("use https://"), "{out}");
}

/// `spin-push` signs in with the user and the granted secret it is given (the token flow, with
/// the token server granted beside the registry), and never shows the password.
#[test]
fn spin_push_signs_in_with_a_granted_secret() {
    let Some(reg) = Registry::start_auth(Auth::Token("ci", "t0ken-s3cret")) else { return };
    let token = reg.token_addr().unwrap().to_string();
    let p = Project::new(&format!(
        r#"
steps:
  - id: push
    uses: spin-push
    with: {{ image: "{addr}/acme/app:1", username: ci, password-secret: REGISTRY_PASSWORD }}
    permissions: {{ hosts: ["{addr}", "{token}"], secrets: [REGISTRY_PASSWORD] }}
"#,
        addr = reg.addr
    ));
    std::fs::write(
        p.dir.path().join("spin.toml"),
        "spin_manifest_version = 2\n[application]\nname = \"app\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"app\"\n[component.app]\nsource = \"app.wasm\"\n",
    )
    .unwrap();
    std::fs::write(p.dir.path().join("app.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let (ok, out) = p.run(&["run", "--secret", "REGISTRY_PASSWORD=wrong"]);
    assert!(!ok && out.contains("token server") && !out.contains("wrong"), "{out}");
    let (ok, out) = p.run(&["run", "--secret", "REGISTRY_PASSWORD=t0ken-s3cret"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{}/acme/app@sha256:", reg.addr)) && !out.contains("t0ken-s3cret"), "{out}");
}
