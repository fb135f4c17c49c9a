//! Provenance: a run of `skiff serve` that uploads gets a signed in-toto SLSA provenance
//! statement, stored as its artifact `provenance.intoto.jsonl`; the statement verifies with the
//! key the host serves at `/v1/provenance/key` (`skiff verify-provenance`), fails when a byte is
//! changed or another key is given, and names the digests of what ran. The step that uploads
//! gets its own statement when it succeeds, named by its outputs for the steps after it. A run
//! that neither uploads nor deploys gets none.

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use serde_json::Value;
use sha2::Digest as _;

const TOKEN: &str = "admin-5e0c2a";

/// `build` writes a file and keeps it as an artifact (`publish`); the `script:` step never runs;
/// the job hands on what `publish`'s outputs say of its statement.
const PIPELINE: &str = r#"
jobs:
  build:
    outputs:
      statement: ${{ steps.publish.outputs.provenance }}
      statement-sha256: ${{ steps.publish.outputs.provenance-sha256 }}
      key: ${{ steps.publish.outputs.provenance-key-id }}
    steps:
      - uses: diag
        with:
          message: the site, built
          file: site.txt
      - if: event.name == 'never'
        script: console.log("never runs")
      - id: publish
        uses: upload
        with:
          target: artifact
          source: site.txt
          name: site.txt
"#;

fn config(root: &Path, port: u16) -> String {
    format!(
        r#"
listen = "127.0.0.1:{port}"
data = "{data}"

[[tokens]]
name = "admin"
sha256 = "{token}"
apps = ["*"]

[[apps]]
name = "web"
workspace = "{workspace}"
pipeline = ".skiff/pipeline.yaml"

[[apps]]
name = "plain"
pipeline-yaml = """
steps:
  - uses: diag
"""
"#,
        data = root.join("data").display(),
        workspace = root.join("web").display(),
        token = skiff_server::crypto::token_hash(TOKEN),
    )
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

fn verify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skiff"))
        .arg("verify-provenance")
        .args(args)
        .env_remove("SKIFF_SERVER")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn a_run_that_uploads_gets_signed_provenance_of_what_ran() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    std::fs::create_dir_all(root.join("web/.skiff")).unwrap();
    std::fs::write(root.join("web/.skiff/pipeline.yaml"), PIPELINE).unwrap();
    let r = root.to_path_buf();
    let mut serve = crate::serve::ServeProcess::start_with(&root.join("serve"), |port| config(&r, port)).await;
    let base = serve.base.clone();
    let http = reqwest::Client::new();

    // The host key: created on first start, private to its owner; its public part needs no token.
    let key_file = root.join("data/provenance.key");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    let resp = http.get(format!("{base}/v1/provenance/key")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-pem-file");
    let keyid = resp.headers()["x-key-id"].to_str().unwrap().to_string();
    let public_pem = resp.text().await.unwrap();
    assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{public_pem}");
    assert_eq!(skiff_registry::signature::PublicKey::from_pem(&public_pem).unwrap().fingerprint(), keyid);

    let run = crate::support::manual_run(&http, &base, TOKEN, "web").await;
    let id = run["id"].as_i64().unwrap_or_else(|| panic!("{run}"));
    assert_eq!(run["status"], "success", "{run:#}");

    // Stored with the run, beside the artifact it vouches for.
    let list: Value = http
        .get(format!("{base}/v1/runs/{id}/artifacts"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let artifacts = list["artifacts"].as_array().unwrap();
    let names: Vec<&str> = artifacts.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["provenance-build-publish.intoto.jsonl", "provenance.intoto.jsonl", "site.txt"], "{list}");
    let site_sha = artifacts[2]["sha256"].as_str().unwrap().to_string();
    let get = |name: &str| {
        let (http, url) = (http.clone(), format!("{base}/v1/runs/{id}/artifacts/{name}"));
        async move { http.get(url).bearer_auth(TOKEN).send().await.unwrap().bytes().await.unwrap().to_vec() }
    };
    let envelope_bytes = get("provenance.intoto.jsonl").await;
    let site = get("site.txt").await;
    assert_eq!(sha256(&site), site_sha);
    assert_eq!(sha256(&envelope_bytes), artifacts[1]["sha256"].as_str().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("provenance.intoto.jsonl");
    std::fs::write(&file, &envelope_bytes).unwrap();
    let site_file = dir.path().join("site.txt");
    std::fs::write(&site_file, &site).unwrap();
    let pem_file = dir.path().join("host.pub");
    std::fs::write(&pem_file, &public_pem).unwrap();
    let file_arg = file.to_str().unwrap();

    // The signature verifies: with the key fetched from the host, and with a copy of it.
    let out = verify(&[file_arg, "--server", &base, "--artifact", site_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("site.txt  sha256:{site_sha}")), "{stdout}");
    assert!(stdout.contains(&format!("verified: signed by key {keyid}")), "{stdout}");
    assert!(stdout.contains("builtin://upload"), "{stdout}");
    let out = verify(&[file_arg, "--key", pem_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    // The digests are those of what ran.
    let envelope: Value = serde_json::from_slice(&envelope_bytes).unwrap();
    assert_eq!(envelope["payloadType"], "application/vnd.in-toto+json");
    assert_eq!(envelope["signatures"][0]["keyid"], keyid.as_str());
    let payload = base64::engine::general_purpose::STANDARD.decode(envelope["payload"].as_str().unwrap()).unwrap();
    let statement: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(statement["subject"], serde_json::json!([{"name": "site.txt", "digest": {"sha256": site_sha}}]));
    let build = &statement["predicate"]["buildDefinition"];
    assert_eq!(build["externalParameters"]["trigger"], "manual");
    assert_eq!(build["externalParameters"]["app"], "web");
    let deps = build["resolvedDependencies"].as_array().unwrap();
    let dep = |uri: &str| deps.iter().find(|d| d["uri"] == uri).cloned();
    let pipeline = dep(".skiff/pipeline.yaml").unwrap_or_else(|| panic!("{deps:#?}"));
    assert_eq!(pipeline["digest"]["sha256"].as_str(), Some(sha256(PIPELINE.as_bytes()).as_str()));
    for (name, steps) in [("diag", ["build/step-1"]), ("upload", ["build/publish"])] {
        let d = dep(&format!("builtin://{name}")).unwrap_or_else(|| panic!("no {name} in {deps:#?}"));
        let embedded = skiff_runtime::builtin::get(name).unwrap();
        assert_eq!(d["digest"]["sha256"].as_str(), Some(sha256(embedded).as_str()), "{name}");
        assert_eq!(d["annotations"]["steps"], serde_json::json!(steps), "{name}");
    }
    assert!(dep("builtin://script").is_none(), "a step that did not run is no dependency: {deps:#?}");
    let invocation = statement["predicate"]["runDetails"]["metadata"]["invocationId"].as_str().unwrap();
    assert!(invocation.ends_with(&format!("/v1/runs/{id}")), "{invocation}");

    // The step that uploaded says where the provenance is.
    let logs = http
        .get(format!("{base}/v1/runs/{id}/logs?format=text"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        logs.contains(&format!(
            "provenance of this run: artifact provenance.intoto.jsonl (sha256:{})",
            sha256(&envelope_bytes)
        )),
        "{logs}"
    );

    // The upload step's own statement, signed when it succeeded: its outputs name it (the job
    // hands them on), it verifies, and its subject is what the step did and the artifact it
    // stored, from the steps that had run by then.
    let jobs = &run["jobs"];
    let outputs = &jobs[0]["outputs"];
    let step_bytes = get("provenance-build-publish.intoto.jsonl").await;
    assert_eq!(outputs["statement"], "provenance-build-publish.intoto.jsonl", "{jobs:#}");
    assert_eq!(outputs["statement-sha256"].as_str(), Some(sha256(&step_bytes).as_str()), "{jobs:#}");
    assert_eq!(outputs["key"].as_str(), Some(keyid.as_str()), "{jobs:#}");
    assert_eq!(artifacts[0]["sha256"].as_str(), Some(sha256(&step_bytes).as_str()));
    let step_file = dir.path().join("provenance-build-publish.intoto.jsonl");
    std::fs::write(&step_file, &step_bytes).unwrap();
    let out = verify(&[step_file.to_str().unwrap(), "--key", pem_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let step_envelope: Value = serde_json::from_slice(&step_bytes).unwrap();
    let payload = base64::engine::general_purpose::STANDARD.decode(step_envelope["payload"].as_str().unwrap()).unwrap();
    let step_statement: Value = serde_json::from_slice(&payload).unwrap();
    let subject = step_statement["subject"].as_array().unwrap();
    assert_eq!(subject.len(), 2, "{subject:#?}");
    assert_eq!(subject[0]["name"], "build/publish");
    assert_eq!(subject[0]["annotations"]["kind"], "deployment");
    assert_eq!(subject[1], serde_json::json!({"name": "site.txt", "digest": {"sha256": site_sha}}));
    let step_deps = step_statement["predicate"]["buildDefinition"]["resolvedDependencies"].as_array().unwrap();
    assert!(step_deps.iter().any(|d| d["uri"] == "builtin://upload"), "{step_deps:#?}");
    assert!(
        logs.contains(&format!(
            "provenance of this step: artifact provenance-build-publish.intoto.jsonl (sha256:{})",
            sha256(&step_bytes)
        )),
        "{logs}"
    );

    // One changed byte of the signed payload, or of the signature, and it no longer verifies.
    let line = String::from_utf8(envelope_bytes.clone()).unwrap();
    let payload_at = line.find("\"payload\":\"").unwrap() + "\"payload\":\"".len() + 200;
    let sig_at = line.find("\"sig\":\"").unwrap() + "\"sig\":\"".len() + 20;
    for at in [payload_at, sig_at] {
        let mut bad = envelope_bytes.clone();
        bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
        std::fs::write(&file, &bad).unwrap();
        let out = verify(&[file_arg, "--key", pem_file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("NOT verified"), "{}", text(&out));
    }
    let mut bad = envelope_bytes.clone();
    bad[payload_at] = if bad[payload_at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&file, &bad).unwrap();
    let out = verify(&[file_arg, "--server", &base]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("changed after the host signed it"), "{}", text(&out));

    // Another key, or a file that is not what the run produced, fails too.
    std::fs::write(&file, &envelope_bytes).unwrap();
    let other = dir.path().join("other.pub");
    std::fs::write(&other, skiff_registry::signature::SigningKey::generate().public_key().to_pem()).unwrap();
    let out = verify(&[file_arg, "--key", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("signed by key"), "{}", text(&out));
    std::fs::write(&site_file, b"something else").unwrap();
    let out = verify(&[file_arg, "--key", pem_file.to_str().unwrap(), "--artifact", site_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is not what the run produced"), "{}", text(&out));

    // A run that neither uploads nor deploys writes none.
    let plain = crate::support::manual_run(&http, &base, TOKEN, "plain").await;
    assert_eq!(plain["status"], "success", "{plain:#}");
    let list: Value = http
        .get(format!("{base}/v1/runs/{}/artifacts", plain["id"]))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["artifacts"], serde_json::json!([]), "{list}");

    // The key is kept across restarts.
    serve.kill();
    serve.restart().await;
    let again = http.get(format!("{base}/v1/provenance/key")).send().await.unwrap().text().await.unwrap();
    assert_eq!(again, public_pem);
}
