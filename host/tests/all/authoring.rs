//! Step projects made by `skiff step new`, built with their own toolchains and run in pipelines.
//!
//! The toolchains are real: cargo with the workspace's `step-sdk` (through `--sdk`), and
//! componentize-js and componentize-py as `scripts/authoring-tools.sh` installs them under
//! `target/authoring/`. A test that needs one of those two fails under `CI=true` when it is
//! missing (setup installs them, so a missing one is a broken set-up, not a pass); on a
//! developer's machine it says how to install them and passes.

use std::io::{BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;

use crate::plugins::{Req, read_request};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `skiff ARGS` in `dir`, run to the end.
fn skiff_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .current_dir(dir)
        .env("SKIFF_CACHE_DIR", crate::shared_cache_dir())
        .output()
        .expect("running skiff")
}

/// Exit code, then stdout and stderr together.
fn text(out: &Output) -> (i32, String) {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// `program` in `dir`, without the outer build's flags and wrappers: they are for the host's
/// build, not for a step project's.
fn command(program: impl AsRef<std::ffi::OsStr>, dir: &Path) -> Command {
    let mut c = Command::new(program);
    c.current_dir(dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
    ] {
        c.env_remove(var);
    }
    c
}

/// Runs a build command; panics with everything it printed when it fails. Returns the seconds
/// it took.
fn build(what: &str, cmd: &mut Command) -> f64 {
    let start = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: could not start {cmd:?}: {e}"));
    let (code, text) = text(&out);
    assert_eq!(code, 0, "{what} failed: {cmd:?}\n{text}");
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{what}: {secs:.1} s");
    secs
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// `path`, installed by `scripts/authoring-tools.sh`; `None` (after saying so) when it is
/// missing outside CI.
fn authoring_tool(path: PathBuf, what: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    assert!(!under_ci(), "{what} is missing at {} under CI=true: run scripts/authoring-tools.sh", path.display());
    eprintln!("skipped: {what} is missing at {}: run scripts/authoring-tools.sh", path.display());
    None
}

/// `skiff step new ARGS` in `dir`; panics unless it succeeds.
fn step_new(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["step", "new"];
    all.extend_from_slice(args);
    let (code, out) = text(&skiff_in(dir, &all));
    assert_eq!(code, 0, "skiff step new {args:?}: {out}");
    out
}

#[test]
fn new_refuses_a_bad_name_an_unknown_language_and_a_folder_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let refused = |args: &[&str], says: &[&str]| {
        let mut all = vec!["step", "new"];
        all.extend_from_slice(args);
        let (code, out) = text(&skiff_in(dir, &all));
        assert_eq!(code, 2, "{args:?}: {out}");
        for s in says {
            assert!(out.contains(s), "{args:?} should say {s:?}: {out}");
        }
    };
    let valid = "lowercase letters, digits and single `-`, starting with a letter";
    for name in ["Hello", "my_step", "x-", "9lives", "a--b", "dot.name"] {
        refused(&[name], &[&format!("`{name}` is not a valid step name"), valid, "like `hello`"]);
    }
    refused(&["fn"], &["`fn` is a reserved word"]);
    refused(&["hello", "--lang", "go"], &["invalid value 'go'", "rust", "js", "python"]);
    refused(&["hello", "--lang", "js", "--sdk", "."], &["--sdk", "--lang rust only"]);
    refused(&["hello", "--sdk", dir.to_str().unwrap()], &["no Cargo.toml there", "step-sdk"]);

    std::fs::create_dir(dir.join("taken")).unwrap();
    std::fs::write(dir.join("taken/notes.txt"), "mine").unwrap();
    refused(&["taken"], &["taken already exists and is not empty"]);
    refused(&["hello", "--dir", "taken"], &["taken already exists and is not empty"]);
    std::fs::write(dir.join("file"), "").unwrap();
    refused(&["file"], &["file already exists and is not a folder"]);
    // Nothing was written by a refusal.
    assert_eq!(std::fs::read_to_string(dir.join("taken/notes.txt")).unwrap(), "mine");
    assert!(!dir.join("hello").exists());
    let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["file", "taken"]);

    // An empty folder is taken as it is.
    std::fs::create_dir(dir.join("empty")).unwrap();
    step_new(dir, &["hello", "--dir", "empty", "--lang", "python"]);
    assert!(dir.join("empty/app.py").exists());
}

#[test]
fn new_writes_each_project_with_this_skiffs_wit_and_says_what_to_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let wit = std::fs::read(repo_root().join("wit/step.wit")).unwrap();
    let sdk = repo_root().join("step-sdk");
    let cases: [(&str, &[&str], &[&str], &str); 3] = [
        (
            "rust",
            &["Cargo.toml", "src/lib.rs", "README.md", ".gitignore", "wit/step.wit"],
            &[
                "cd hello-rust",
                "cargo build --target wasm32-wasip2 --release",
                "target/wasm32-wasip2/release/hello_rust.wasm",
            ],
            "cargo build --target wasm32-wasip2 --release",
        ),
        (
            "js",
            &["package.json", "build.mjs", "src/step.js", "README.md", ".gitignore", "wit/step.wit"],
            &["cd hello-js", "npm install", "npm run build", "skiff step run step.wasm --with who=Ada"],
            "npm run build",
        ),
        (
            "python",
            &["app.py", "skiff_http.py", "build.sh", "requirements.txt", "wit/python.wit", "wit/deps/http.wit"],
            &["cd hello-python", "pip install -r requirements.txt", "./build.sh", "skiff step run step.wasm"],
            "./build.sh",
        ),
    ];
    for (lang, files, next, build) in cases {
        let name = format!("hello-{lang}");
        let out = step_new(dir, &[&name, "--lang", lang]);
        let project = dir.join(&name);
        for f in files {
            assert!(project.join(f).is_file(), "{lang}: {f} is missing");
        }
        for n in next {
            assert!(out.contains(n), "{lang}: the next commands should include {n:?}: {out}");
        }
        assert_eq!(std::fs::read(project.join("wit/step.wit")).unwrap(), wit, "{lang}: wit/step.wit is not skiff's");
        let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
        for s in
            [build, "skiff step run", "uses: ./steps/", "permissions: { hosts: [hooks.example.com], secrets: [TOKEN] }"]
        {
            assert!(readme.contains(s), "{lang}: the README should show {s:?}");
        }
        assert!(!readme.contains("{{name}}") && readme.contains(&name), "{lang}: the README names the step");
    }
    let cargo = std::fs::read_to_string(dir.join("hello-rust/Cargo.toml")).unwrap();
    assert!(cargo.contains("name = \"hello-rust\"") && cargo.contains("\n[workspace]\n"), "{cargo}");
    assert!(cargo.contains("skiff-step-sdk = \"0.1\""), "{cargo}");
    let out = step_new(dir, &["with-sdk", "--sdk", sdk.to_str().unwrap()]);
    assert!(!out.contains("not on crates.io yet"), "{out}");
    let cargo = std::fs::read_to_string(dir.join("with-sdk/Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&cargo).unwrap();
    let dep = &manifest["dependencies"]["skiff-step-sdk"]["path"];
    assert_eq!(dep.as_str().map(Path::new), Some(sdk.canonicalize().unwrap().as_path()), "{cargo}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&dir.join("hello-python/build.sh").metadata().unwrap().permissions());
    assert_eq!(mode & 0o111, 0o111, "build.sh is executable");
}

#[test]
fn the_sdk_packages_with_the_repositorys_wit() {
    let root = repo_root();
    let wit = std::fs::read_to_string(root.join("wit/step.wit")).unwrap();
    let copy = std::fs::read_to_string(root.join("step-sdk/wit/step.wit")).unwrap();
    assert!(
        wit == copy,
        "step-sdk/wit/step.wit differs from wit/step.wit, the one definition of the ABI: \
         run `cp wit/step.wit step-sdk/wit/step.wit`"
    );
    // Packaging without building it again (the workspace builds it) and from the local index
    // (the workspace's lockfile has every version): well under a second.
    let target = root.join("target/authoring/package");
    let mut cmd = command(env!("CARGO"), &root);
    cmd.args(["package", "-p", "skiff-step-sdk", "--no-verify", "--offline", "--allow-dirty", "--target-dir"])
        .arg(&target);
    let out = cmd.output().unwrap();
    let (code, text) = text(&out);
    assert_eq!(code, 0, "cargo package -p skiff-step-sdk failed:\n{text}");
    assert!(!text.contains("warning"), "cargo package warns:\n{text}");
    let version = env!("CARGO_PKG_VERSION");
    let krate = target.join(format!("package/skiff-step-sdk-{version}.crate"));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(&krate).unwrap()));
    let mut packaged = std::collections::BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut body = String::new();
        std::io::Read::read_to_string(&mut entry, &mut body).unwrap();
        packaged.insert(path, body);
    }
    let prefix = format!("skiff-step-sdk-{version}/");
    let get = |f: &str| packaged.get(&format!("{prefix}{f}")).unwrap_or_else(|| panic!("{f} is not packaged"));
    assert_eq!(get("wit/step.wit"), &wit);
    assert!(get("src/lib.rs").contains(r#"path: "wit""#), "the packaged SDK reads its own wit/");
    assert!(get("README.md").contains("skiff step new"));
    let manifest: toml::Table = toml::from_str(get("Cargo.toml")).unwrap();
    let package = &manifest["package"];
    assert_eq!(package["repository"].as_str(), Some("https://github.com/skiff-ci/skiff"));
    for key in ["description", "documentation", "readme", "keywords", "categories", "license"] {
        assert!(package.get(key).is_some(), "the packaged Cargo.toml has no {key}");
    }
}

/// A webhook on 127.0.0.1 that records each request and answers with JSON that echoes the
/// request's `authorization` header (so a step that logs the answer prints the secret, and the
/// host must mask it).
fn webhook() -> (u16, Arc<Mutex<Vec<Req>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                let Ok(req) = read_request(&mut BufReader::new(&mut stream)) else { return };
                // Written out, so the keys keep this order whatever serde_json's features are.
                let quoted = |s: &str| Value::String(s.into()).to_string();
                let auth = quoted(req.header("authorization").unwrap_or_default());
                let body = format!(r#"{{"auth":{auth},"received":{}}}"#, quoted(&req.target));
                log.lock().unwrap().push(req);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    (port, seen)
}

/// A step of the pipeline below: `uses:` the component, posts to `/ID` on the test's webhook.
fn pipeline_step(id: &str, who: &str, port: u16, grant: bool) -> String {
    let permissions = if grant { format!("[\"127.0.0.1:{port}\"]") } else { "[]".into() };
    format!(
        "  - id: {id}\n    uses: ./steps/{id}.wasm\n    with:\n      who: \"{who}\"\n      webhook: \
         http://127.0.0.1:{port}/{id}\n    permissions: {{ hosts: {permissions}, secrets: [TOKEN] }}\n"
    )
}

/// The three projects, made by `skiff step new`, built by their one command each, then run in
/// one pipeline: each greets the one before it (an output flows into the next step's input),
/// posts to a granted host with the secret, and logs the answer, which echoes the secret.
#[test]
fn three_languages_build_and_run_in_one_pipeline() {
    let root = repo_root();
    let Some(node_modules) = authoring_tool(
        root.join("target/authoring/js/node_modules/@bytecodealliance/componentize-js"),
        "componentize-js",
    ) else {
        return;
    };
    let node_modules = node_modules.parent().unwrap().parent().unwrap().to_path_buf();
    let Some(venv_bin) = authoring_tool(root.join("target/authoring/venv/bin/componentize-py"), "componentize-py")
    else {
        return;
    };
    let venv_bin = venv_bin.parent().unwrap().to_path_buf();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let sdk = root.join("step-sdk");
    step_new(dir, &["greet-rs", "--lang", "rust", "--sdk", sdk.to_str().unwrap()]);
    step_new(dir, &["greet-js", "--lang", "js"]);
    step_new(dir, &["greet-py", "--lang", "python"]);

    // Rust beside JavaScript and Python: two cores, two builds at a time.
    let rust = {
        let project = dir.join("greet-rs");
        // The workspace's lockfile: the versions its own steps are built and tested with, all
        // downloaded already. A target folder of its own under target/ keeps the dependencies
        // built from one run to the next.
        std::fs::copy(root.join("Cargo.lock"), project.join("Cargo.lock")).unwrap();
        let target = root.join("target/authoring/cargo-target");
        std::thread::spawn(move || {
            let mut cmd = command(env!("CARGO"), &project);
            cmd.args(["build", "--target", "wasm32-wasip2", "--release"]).env("CARGO_TARGET_DIR", &target);
            build("cargo build (Rust)", &mut cmd);
            target.join("wasm32-wasip2/release/greet_rs.wasm")
        })
    };
    let js = dir.join("greet-js");
    // What `npm install` would bring, from the pinned install.
    std::os::unix::fs::symlink(&node_modules, js.join("node_modules")).unwrap();
    build("npm run build (JavaScript)", command("npm", &js).args(["run", "build"]));
    let py = dir.join("greet-py");
    let path = format!("{}:{}", venv_bin.display(), std::env::var("PATH").unwrap_or_default());
    build("./build.sh (Python)", command(py.join("build.sh"), &py).env("PATH", path));
    let rust_wasm = rust.join().expect("the Rust build");

    let project = tempfile::tempdir().unwrap();
    let workspaces = tempfile::tempdir().unwrap();
    // `uses:` paths are relative to the pipeline file, `.skiff/pipeline.yaml`.
    let steps = project.path().join(".skiff/steps");
    std::fs::create_dir_all(&steps).unwrap();
    std::fs::copy(&rust_wasm, steps.join("rust.wasm")).unwrap();
    std::fs::copy(py.join("step.wasm"), steps.join("python.wasm")).unwrap();
    std::fs::copy(js.join("step.wasm"), steps.join("js.wasm")).unwrap();

    let (port, seen) = webhook();
    let secret = "t0ken-4uthoring-s3cret";
    let run = |pipeline: &str| {
        std::fs::write(project.path().join(".skiff/pipeline.yaml"), pipeline).unwrap();
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["run", "--secret", &format!("TOKEN={secret}")])
            .current_dir(project.path())
            .env("SKIFF_CACHE_DIR", crate::shared_cache_dir())
            .env("TMPDIR", workspaces.path())
            .output()
            .unwrap();
        eprintln!("skiff run: {:.1} s", start.elapsed().as_secs_f64());
        text(&out)
    };
    let pipeline = format!(
        "name: authoring\nsteps:\n{}{}{}",
        pipeline_step("rust", "Ada", port, true),
        pipeline_step("python", "${{ steps.rust.outputs.greeting }}", port, true),
        pipeline_step("js", "${{ steps.python.outputs.greeting }}", port, true),
    );
    let (code, out) = run(&pipeline);
    assert_eq!(code, 0, "{out}");

    let requests = seen.lock().unwrap().clone();
    let got: Vec<(String, Value)> = requests.iter().map(|r| (r.target.clone(), r.json())).collect();
    let expected = [
        ("/rust", "hello, Ada", "greet-rs"),
        ("/python", "hello, hello, Ada", "greet-py"),
        ("/js", "hello, hello, hello, Ada", "greet-js"),
    ];
    assert_eq!(got.len(), 3, "{got:?}\n{out}");
    for ((path, body), (want_path, text, from)) in got.iter().zip(expected) {
        assert_eq!(path, want_path, "{out}");
        assert_eq!(body, &serde_json::json!({ "text": text, "from": from }), "{out}");
    }
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("authorization"), Some(format!("Bearer {secret}").as_str()), "{}", r.target);
        assert_eq!(r.header("content-type"), Some("application/json"), "{}", r.target);
    }
    // Each step logged the answer, which held the secret: masked in every line.
    assert!(!out.contains(secret), "the secret reached the log: {out}");
    for id in ["rust", "python", "js"] {
        let line = format!(r#"the webhook answered 200: {{"auth":"Bearer ***","received":"/{id}"}}"#);
        assert!(out.contains(&line), "{id} should log {line:?}: {out}");
    }
    assert!(out.contains("hello, hello, hello, Ada"), "{out}");

    // The components declare what they ask for: without the host granted, a step is refused
    // before it starts, naming the host and the grant to add.
    seen.lock().unwrap().clear();
    let pipeline = format!("name: refused\nsteps:\n{}", pipeline_step("python", "Ada", port, false));
    let (code, out) = run(&pipeline);
    assert_eq!(code, 1, "{out}");
    let refusal = format!("asks for network access to `http://127.0.0.1:{port}/python`, which is not granted");
    assert!(out.contains(&refusal), "{out}");
    assert!(seen.lock().unwrap().is_empty(), "a refused step reached the webhook");

    // Shared through a real registry: the JavaScript and Python steps published, locked, and
    // run from their digests with the same grants.
    let Some(reg) = crate::registry::Registry::start(None) else { return };
    let skiff = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(args)
            .current_dir(project.path())
            .env("SKIFF_CACHE_DIR", crate::shared_cache_dir())
            .env("DOCKER_CONFIG", project.path().join(".docker"))
            .output()
            .unwrap();
        text(&out)
    };
    for id in ["python", "js"] {
        let file = steps.join(format!("{id}.wasm"));
        let (code, out) =
            skiff(&["step", "publish", file.to_str().unwrap(), &format!("{}/authoring/greet-{id}:0.1.0", reg.addr)]);
        assert_eq!(code, 0, "{out}");
    }
    let shared = |id: &str, who: &str| {
        pipeline_step(id, who, port, true)
            .replace(&format!("./steps/{id}.wasm"), &format!("{}/authoring/greet-{id}:0.1.0", reg.addr))
    };
    let pipeline = format!(
        "name: shared\nsteps:\n{}{}",
        shared("python", "Ada"),
        shared("js", "${{ steps.python.outputs.greeting }}")
    );
    std::fs::write(project.path().join(".skiff/pipeline.yaml"), &pipeline).unwrap();
    let (code, out) = skiff(&["lock"]);
    assert_eq!(code, 0, "{out}");
    seen.lock().unwrap().clear();
    let (code, out) = run(&pipeline);
    assert_eq!(code, 0, "{out}");
    let got: Vec<Value> = seen.lock().unwrap().iter().map(|r| r.json()).collect();
    assert_eq!(got.len(), 2, "{got:?}\n{out}");
    assert_eq!(got[1], serde_json::json!({ "text": "hello, hello, Ada", "from": "greet-js" }), "{out}");
    assert!(!out.contains(secret), "the secret reached the log: {out}");
}
