//! Build environments, through the `skiff` binary as a user runs it:
//! - `run:` steps in container images pulled from a real registry (Debian's `docker-registry` on
//!   a loopback port). The image is made here: Debian's static busybox and a few files, packed as
//!   two OCI layers (gzip, then zstd with whiteouts), and pushed.
//! - A job's writable `$HOME` and global npm installs: Serverless-cd's own example
//!   (`npm i @serverless-devs/s -g`, `s config add`, `s deploy`) against an npm registry stand-in.
//! - Limits and metering of a step's whole process tree.

use std::path::Path;

use oci_client::manifest::OciImageManifest;
use skiff_pipeline::component_ref::{ComponentRef, Digest};
use skiff_registry::client::{ClientOptions, RegistryClient, descriptor};

use crate::registry::{Project, Registry};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] =
    &["sh", "cat", "echo", "test", "ls", "id", "env", "touch", "mkdir", "rm", "grep", "head", "wc"];

/// Whether busybox-static is there (setup.sh installs it); fails under CI=true without it.
fn busybox() -> bool {
    if Path::new(BUSYBOX).is_file() {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{BUSYBOX} (Debian's busybox-static) is needed for the image tests: run scripts/setup.sh"
    );
    eprintln!("SKIPPED: {BUSYBOX} is not installed (scripts/setup.sh installs busybox-static)");
    false
}

enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Link(&'a str, &'a str),
}

fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        match e {
            Entry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Entry::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Entry::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(bytes, ruzstd::encoding::CompressionLevel::Fastest)
}

/// An image to push: layers as (media type, blob), a config, and who pushes it.
struct Image {
    layers: Vec<(&'static str, Vec<u8>)>,
    config: serde_json::Value,
    credentials: Option<(String, String)>,
}

impl Image {
    /// The test image: busybox as `/bin/sh` and friends, its own `/etc/os-release`, a user
    /// `builder`, and a second layer (zstd) that whites out `/etc/gone.txt` and adds a tool.
    fn busybox(user: &str) -> Self {
        let busybox = std::fs::read(BUSYBOX).unwrap();
        let mut base = vec![
            Entry::Dir("bin"),
            Entry::Dir("etc"),
            Entry::Dir("tmp"),
            Entry::Dir("home/builder"),
            Entry::Dir("usr/local/bin"),
            Entry::File("bin/busybox", &busybox, 0o755),
            Entry::File("etc/os-release", b"ID=skiff-test-image\nPRETTY_NAME=\"Skiff test image\"\n", 0o644),
            Entry::File(
                "etc/passwd",
                b"root:x:0:0:root:/root:/bin/sh\nbuilder:x:4242:4242::/home/builder:/bin/sh\n",
                0o644,
            ),
            Entry::File("etc/group", b"root:x:0:\nbuilder:x:4242:\n", 0o644),
            Entry::File("etc/gone.txt", b"the second layer removes me\n", 0o644),
        ];
        let links: Vec<String> = APPLETS.iter().map(|a| format!("bin/{a}")).collect();
        base.extend(links.iter().map(|l| Entry::Link(l, "busybox")));
        let top = tar(&[
            Entry::File("etc/.wh.gone.txt", b"", 0o644),
            Entry::File("usr/local/bin/hello", b"#!/bin/sh\necho hello from the image\n", 0o755),
        ]);
        Image {
            layers: vec![
                ("application/vnd.oci.image.layer.v1.tar+gzip", gzip(&tar(&base))),
                ("application/vnd.oci.image.layer.v1.tar+zstd", zstd(&top)),
            ],
            config: serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {
                    "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "IMAGE_VAR=from-the-image-config"],
                    "WorkingDir": "/srv/app",
                    "User": user,
                },
            }),
            credentials: None,
        }
    }

    /// Pushes the image as `REGISTRY/repo_tag`; its manifest digest.
    fn push(&self, reg: &Registry, repo_tag: &str) -> Digest {
        let config = serde_json::to_vec(&self.config).unwrap();
        let mut config_desc = descriptor("application/vnd.oci.image.config.v1+json", &config, None);
        config_desc.annotations = None;
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
            config: config_desc,
            layers: self.layers.iter().map(|(t, b)| descriptor(t, b, None)).collect(),
            subject: None,
            artifact_type: None,
            annotations: None,
        };
        let mut blobs: Vec<&[u8]> = vec![&config];
        blobs.extend(self.layers.iter().map(|(_, b)| b.as_slice()));
        let r = ComponentRef::parse(&format!("{}/{repo_tag}", reg.addr)).unwrap();
        let client = RegistryClient::new(ClientOptions { credentials: self.credentials.clone(), ..Default::default() });
        tokio::runtime::Runtime::new().unwrap().block_on(client.push(&r, None, &blobs, &manifest)).unwrap()
    }
}

/// Pushes the test image; its digest.
pub fn push_test_image(reg: &Registry, repo_tag: &str, user: &str) -> Digest {
    Image::busybox(user).push(reg, repo_tag)
}

fn pipeline(image: &str) -> String {
    format!(
        r#"jobs:
  build:
    container: {image}
    steps:
      - id: os
        shell: sh
        run: cat /etc/os-release
      - id: whiteout
        shell: sh
        run: test ! -e /etc/gone.txt && echo "gone.txt is hidden"
      - id: config
        run: echo "var=$IMAGE_VAR user=$(id -u) home=$HOME workdir=$SKIFF_IMAGE_WORKDIR pwd=$PWD"; hello
      - id: write
        run: echo "made in step 4" > /usr/local/bin/made && mkdir -p $HOME/.cache && echo kept > $HOME/.cache/x
      - id: read
        run: cat /usr/local/bin/made $HOME/.cache/x; test ! -e /usr/bin/cargo && echo "no host tools"
  other:
    needs: build
    container: {image}
    steps:
      - run: test ! -e /usr/local/bin/made && echo "another job starts from the image"
"#
    )
}

#[test]
fn a_job_runs_in_its_image_with_layers_whiteouts_config_and_a_writable_layer_of_its_own() {
    if !busybox() {
        return;
    }
    let Some(reg) = Registry::start(None) else { return };
    let digest = push_test_image(&reg, "test/busybox:1", "");
    let image = format!("{}/test/busybox:1", reg.addr);
    let p = Project::new(&pipeline(&image));

    // `skiff lock` pulls the image and pins it.
    let (ok, out) = p.run(&["lock"]);
    assert!(ok, "{out}");
    assert!(p.lock_file().contains(&format!("{image}: {digest}")), "{}", p.lock_file());

    let (ok, out) = p.run(&["run", "--locked"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("image {image}@{digest} (unpacked already)")), "{out}");
    assert!(out.contains("PRETTY_NAME=\"Skiff test image\""), "the image's /etc/os-release: {out}");
    assert!(!out.contains("Debian"), "the host's /etc/os-release leaked in: {out}");
    assert!(out.contains("gone.txt is hidden"), "{out}");
    assert!(out.contains("var=from-the-image-config user=0 home=/root workdir=/srv/app pwd=/workspace"), "{out}");
    assert!(out.contains("hello from the image"), "the image's PATH: {out}");
    assert!(out.contains("made in step 4") && out.contains("kept"), "a job's writes last for its steps: {out}");
    assert!(out.contains("no host tools"), "{out}");
    assert!(out.contains("another job starts from the image"), "{out}");

    // By digest, without a lock; a wrong digest is refused before anything runs.
    std::fs::remove_file(p.dir.path().join(".skiff/lock.yaml")).unwrap();
    std::fs::write(p.dir.path().join(".skiff/pipeline.yaml"), pipeline(&format!("{}/test/busybox@{digest}", reg.addr)))
        .unwrap();
    let (ok, out) = p.run(&["run", "--locked", "--job", "build"]);
    assert!(ok, "{out}");
    let wrong = Digest::of(b"not this image");
    std::fs::write(p.dir.path().join(".skiff/pipeline.yaml"), pipeline(&format!("{}/test/busybox@{wrong}", reg.addr)))
        .unwrap();
    let (ok, out) = p.run(&["run", "--job", "build"]);
    assert!(!ok, "{out}");
    assert!(out.contains("was not found") || out.contains("do not match"), "{out}");
    assert!(!out.contains("Skiff test image"), "nothing ran: {out}");
}

#[test]
fn a_steps_image_and_the_images_user_are_honoured() {
    if !busybox() {
        return;
    }
    let Some(reg) = Registry::start(None) else { return };
    push_test_image(&reg, "test/builder:1", "builder");
    let image = format!("{}/test/builder:1", reg.addr);
    let p = Project::new(&format!(
        r#"steps:
  - run: |
      echo "host: $(. /etc/os-release; echo $ID)"
  - image: {image}
    run: |
      echo "image: $(. /etc/os-release; echo $ID) uid=$(id -u) home=$HOME"
      touch $HOME/ok && echo "home is writable"
"#
    ));
    let (ok, out) = p.run(&["run"]);
    assert!(ok, "{out}");
    assert!(out.contains("image: skiff-test-image uid=4242 home=/home/builder"), "{out}");
    assert!(out.contains("home is writable"), "{out}");
    assert!(!out.contains("host: skiff-test-image"), "the first step runs on the host: {out}");
}

// ---- a job's home and global installs ----

/// An npm registry stand-in on 127.0.0.1 serving one package, `@serverless-devs/s`, whose `s`
/// keeps its configuration in `$HOME/.s` (as the real one does) and "deploys" with it.
fn npm_registry() -> (u16, std::thread::JoinHandle<()>) {
    use base64::Engine as _;
    use sha2::Digest as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cli = br#"#!/usr/bin/env node
const fs = require('fs'), path = require('path'), os = require('os');
const [cmd, ...rest] = process.argv.slice(2);
const file = path.join(os.homedir(), '.s', 'access.json');
if (cmd === 'config') {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify({ account: rest[rest.indexOf('--AccountID') + 1] }));
  console.log('s: config added');
} else if (cmd === 'deploy') {
  console.log('s: deployed with account ' + JSON.parse(fs.readFileSync(file)).account);
} else { process.exit(2); }
"#;
    let manifest = br#"{"name":"@serverless-devs/s","version":"3.0.0","bin":{"s":"bin/s.js"}}"#;
    let tgz = gzip(&tar(&[
        Entry::File("package/package.json", manifest, 0o644),
        Entry::File("package/bin/s.js", cli, 0o755),
    ]));
    let integrity = format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(&tgz)));
    let tarball = format!("http://127.0.0.1:{port}/@serverless-devs/s/-/s-3.0.0.tgz");
    let packument = serde_json::json!({
        "name": "@serverless-devs/s",
        "dist-tags": {"latest": "3.0.0"},
        "versions": {"3.0.0": {
            "name": "@serverless-devs/s", "version": "3.0.0", "bin": {"s": "bin/s.js"},
            "dist": {"tarball": tarball, "integrity": integrity},
        }},
    })
    .to_string();
    let server = std::thread::spawn(move || {
        use std::io::{BufRead as _, BufReader, Write as _};
        // Two requests (the package document, then its tarball) and whatever npm asks besides.
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) <= 2 {
                    break;
                }
            }
            // Through a proxy the request line holds the whole URL.
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let path = path
                .split_once("://")
                .map_or(path.clone(), |(_, rest)| rest.find('/').map_or("/".to_string(), |i| rest[i..].to_string()));
            let (status, kind, body): (&str, &str, Vec<u8>) = if path.ends_with(".tgz") {
                ("200 OK", "application/octet-stream", tgz.clone())
            } else if path.starts_with("/@serverless-devs") {
                ("200 OK", "application/json", packument.clone().into_bytes())
            } else {
                ("404 Not Found", "application/json", b"{}".to_vec())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
            if path.ends_with(".tgz") {
                return;
            }
        }
    });
    (port, server)
}

#[test]
fn the_serverless_cd_example_installs_its_cli_globally_and_uses_it_in_the_next_steps() {
    if !crate::sandbox::available() {
        return;
    }
    let (port, server) = npm_registry();
    // Serverless-cd's example, unchanged but for where npm finds the package.
    let p = Project::new(&format!(
        r#"env:
  NPM_CONFIG_REGISTRY: http://127.0.0.1:{port}/
  NPM_CONFIG_AUDIT: "false"
  NPM_CONFIG_FUND: "false"
  NPM_CONFIG_UPDATE_NOTIFIER: "false"
  # The stand-in listens on the host's loopback: through the host's proxy, not around it.
  NO_PROXY: ""
steps:
  - run: npm i @serverless-devs/s -g
    permissions: {{ network: true, hosts: ['127.0.0.1:{port}'] }}
  - run: s config add --AccountID 1234567 --AccessKeyID ${{{{ secrets.AK }}}} --AccessKeySecret ${{{{ secrets.SK }}}} -a default
  - run: s deploy --use-local -y
"#
    ));
    let (ok, out) = p.run(&["run", "--secret", "AK=ak-id", "--secret", "SK=sk-secret"]);
    assert!(ok, "{out}");
    assert!(out.contains("s: config added"), "{out}");
    assert!(out.contains("s: deployed with account 1234567"), "{out}");
    server.join().unwrap();
}

// ---- limits and metering of a step's processes ----

#[test]
fn memory_mb_holds_for_a_steps_processes_and_usage_counts_them() {
    if !crate::sandbox::available() || !crate::sandbox::tree_cgroups() {
        return;
    }
    let p = Project::new(
        r#"jobs:
  busy:
    steps:
      - name: busy
        run: |
          # Each busy child spins for 0.4 s of its own CPU time, however loaded the machine is.
          for i in 1 2; do python3 -c 'import time; t = time.process_time()
          while time.process_time() - t < 0.4: pass' & done
          python3 -c 'import time; b = bytearray(64 << 20); time.sleep(0.3)'
          wait
  greedy:
    steps:
      - run: python3 -c 'b = bytearray(300 << 20); print("allocated", len(b))'
        memory-mb: 100
"#,
    );
    let (ok, out) = p.run(&["run", "--usage"]);
    assert!(!ok, "{out}");
    assert!(out.contains("memory limit 100 MiB exceeded by its processes"), "the step's reason: {out}");
    assert!(!out.contains("allocated 314572800"), "{out}");
    // `✓ busy (1.1s, cpu 1.9s, peak memory 70 MiB)`
    let line = out.lines().find(|l| l.contains("✓ busy (")).unwrap_or_else(|| panic!("{out}"));
    let field = |name: &str| -> &str {
        let rest = &line[line.find(name).unwrap_or_else(|| panic!("no {name} in {line}")) + name.len()..];
        rest.split([',', ')']).next().unwrap().trim()
    };
    let cpu = match field("cpu ") {
        ms if ms.ends_with("ms") => ms.trim_end_matches("ms").parse::<f64>().unwrap() / 1000.0,
        s => s.trim_end_matches('s').parse::<f64>().unwrap(),
    };
    assert!(cpu >= 0.6, "the processes' CPU time is counted: {line}");
    let peak: u64 = field("peak memory ").trim_end_matches(" MiB").parse().unwrap();
    assert!(peak >= 64, "the processes' peak memory is counted: {line}");
}

// ---- where images come from, and hostile ones ----

#[test]
fn images_from_a_private_registry_use_docker_credentials() {
    if !busybox() {
        return;
    }
    let Some(reg) = Registry::start(Some(("ci", "s3cret"))) else { return };
    let image = Image { credentials: Some(("ci".into(), "s3cret".into())), ..Image::busybox("") };
    image.push(&reg, "private/busybox:1");
    let p = Project::new(&format!("container: {}/private/busybox:1\nsteps:\n  - run: cat /etc/os-release\n", reg.addr));
    let (ok, out) = p.run(&["run"]);
    assert!(!ok, "{out}");
    assert!(out.contains("refused the credentials") && out.contains("docker login"), "{out}");
    // What `docker login` writes.
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("ci:s3cret");
    let docker = p.dir.path().join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(docker.join("config.json"), format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr))
        .unwrap();
    let (ok, out) = p.run(&["run"]);
    assert!(ok, "{out}");
    assert!(out.contains("Skiff test image"), "{out}");
}

#[test]
fn a_multi_platform_image_runs_its_linux_amd64_manifest() {
    if !busybox() {
        return;
    }
    let Some(reg) = Registry::start(None) else { return };
    let amd64 = Image::busybox("").push(&reg, "multi/busybox:amd64");
    let mut arm = Image::busybox("");
    arm.config["architecture"] = "arm64".into();
    let arm64 = arm.push(&reg, "multi/busybox:arm64");
    let size = |tag: &str| {
        let r = ComponentRef::parse(&format!("{}/multi/busybox:{tag}", reg.addr)).unwrap();
        let client = RegistryClient::new(ClientOptions::default());
        let pulled = tokio::runtime::Runtime::new().unwrap().block_on(client.pull_manifest(&r)).unwrap();
        pulled.raw.len()
    };
    // arm64 first: a client that took the first entry would run the wrong image.
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm64.to_string(), "size": size("arm64"),
             "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd64.to_string(), "size": size("amd64"),
             "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    });
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let reference: oci_client::Reference = format!("{}/multi/busybox:1", reg.addr).parse().unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(client.push_manifest_raw(
            &reference,
            serde_json::to_vec(&index).unwrap(),
            http::HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
        ))
        .unwrap();
    let p = Project::new(&format!("container: {}/multi/busybox:1\nsteps:\n  - run: cat /etc/os-release\n", reg.addr));
    let (ok, out) = p.run(&["lock"]);
    assert!(ok, "{out}");
    let (ok, out) = p.run(&["run", "--locked"]);
    assert!(ok, "{out}");
    assert!(out.contains("Skiff test image"), "{out}");
    // An index without linux/amd64 says what it has.
    let p = Project::new(&format!("container: {}/multi/busybox@{arm64}\nsteps:\n  - run: \"true\"\n", reg.addr));
    let (ok, out) = p.run(&["run"]);
    assert!(!ok && out.contains("built for linux/arm64"), "{out}");
}

/// A tar with names the `tar` crate refuses to write (`..`): headers filled in by hand.
fn raw_tar(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend([0u8; 1024]);
    out
}

#[test]
fn hostile_layers_never_reach_the_host() {
    if !busybox() {
        return;
    }
    let Some(reg) = Registry::start(None) else { return };
    let marker = format!("skiff-escaped-{}", std::process::id());
    // A layer that climbs out of the root.
    let mut climbing = Image::busybox("");
    let up = format!("../../../../../../{marker}");
    climbing
        .layers
        .push(("application/vnd.oci.image.layer.v1.tar", raw_tar(&[(&up, tar::EntryType::Regular, b"x", "")])));
    climbing.push(&reg, "hostile/climb:1");
    let p = Project::new(&format!("container: {}/hostile/climb:1\nsteps:\n  - run: \"true\"\n", reg.addr));
    let (ok, out) = p.run(&["run"]);
    assert!(!ok, "{out}");
    assert!(out.contains("leaves the image root"), "{out}");
    for dir in p.cache.path().ancestors() {
        assert!(!dir.join(&marker).exists(), "a layer wrote {}", dir.join(&marker).display());
    }

    // A symlink to the host's `/`, then a file through it: it lands in the image, not the host.
    let mut through = Image::busybox("");
    let target = format!("evil/etc/{marker}");
    through.layers.push((
        "application/vnd.oci.image.layer.v1.tar",
        raw_tar(&[
            ("evil", tar::EntryType::Symlink, b"", "/"),
            (&target, tar::EntryType::Regular, b"inside the image\n", ""),
        ]),
    ));
    through.push(&reg, "hostile/symlink:1");
    let p = Project::new(&format!("container: {}/hostile/symlink:1\nsteps:\n  - run: cat /etc/{marker}\n", reg.addr));
    let (ok, out) = p.run(&["run"]);
    assert!(ok, "{out}");
    assert!(out.contains("inside the image"), "{out}");
    assert!(!Path::new("/etc").join(&marker).exists(), "the layer wrote into the host's /etc");
}

/// `skiff serve` pulls a job's image before the run, and refuses an unpinned image tag unless the
/// app allows unpinned ones, as it does for components.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_jobs_in_images_and_refuses_unpinned_tags_unless_allowed() {
    if !busybox() {
        return;
    }
    let Some(reg) = Registry::start(None) else { return };
    // Pushed from a thread of its own: the client's runtime cannot start inside the test's.
    let digest = std::thread::scope(|s| s.spawn(|| push_test_image(&reg, "served/busybox:1", "")).join().unwrap());
    let data = tempfile::tempdir().unwrap();
    let app = |name: &str, image: &str, extra: &str| {
        format!(
            "[[apps]]\nname = \"{name}\"\n{extra}\npipeline-yaml = \"\"\"\ncontainer: {image}\nsteps:\n  - run: grep -q skiff-test-image /etc/os-release\n\"\"\"\n"
        )
    };
    let tag = format!("{}/served/busybox:1", reg.addr);
    let apps = [
        app("strict", &tag, ""),
        app("loose", &tag, "allow-unpinned = true"),
        app("pinned", &format!("{}/served/busybox@{digest}", reg.addr), ""),
    ]
    .concat();
    const TOKEN: &str = "image-admin-77c1";
    let serve = crate::serve::ServeProcess::start_with(data.path(), |port| {
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata = \"{}\"\n[[tokens]]\nname = \"admin\"\nsha256 = \"{}\"\napps = [\"*\"]\n{apps}",
            data.path().join("data").display(),
            skiff_server::crypto::token_hash(TOKEN),
        )
    })
    .await;
    let http = reqwest::Client::new();
    let run = |app: &'static str| crate::support::manual_run(&http, &serve.base, TOKEN, app);
    let strict = run("strict").await;
    assert_eq!(strict["status"], "failure", "{strict:#}");
    assert!(strict.to_string().contains("skiff lock"), "{strict:#}");
    let loose = run("loose").await;
    assert_eq!(loose["status"], "success", "{loose:#}");
    let pinned = run("pinned").await;
    assert_eq!(pinned["status"], "success", "{pinned:#}");
    // The jobs' directories (homes, image layers) went with the jobs.
    let jobs = data.path().join("data").join("jobs");
    assert!(!jobs.exists() || std::fs::read_dir(&jobs).unwrap().next().is_none(), "left: {}", jobs.display());
}
