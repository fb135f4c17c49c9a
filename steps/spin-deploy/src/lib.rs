//! `spin-deploy`: hands a Spin application pushed by `spin-push` (a reference pinned by digest)
//! to a Spin platform. The platform is SpinKube: the step writes a `SpinApp` resource
//! (`core.spinkube.dev/v1alpha1`), and either applies it through the Kubernetes API server at
//! `api-url` (server-side apply, with the service-account token from the secret named by
//! `token-secret`) or, without `api-url`, keeps it as a run artifact for a later
//! `kubectl apply` or a GitOps repository.
//!
//! Only digests are deployed: a tag could point elsewhere by the time the cluster pulls it.

use serde_json::{Value, json};
use skiff_step_sdk::http::Request;
use skiff_step_sdk::{Context, Manifest, Outputs, Step, StepError, info};

struct SpinDeploy;

fn invalid(m: impl Into<String>) -> StepError {
    StepError::InvalidInput(m.into())
}

/// A Kubernetes object name (RFC 1123 label): what SpinKube accepts for a SpinApp.
fn check_name(what: &str, name: &str) -> Result<(), StepError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} `{name}` is not a Kubernetes name: lower-case letters, digits and `-`, at most 63"
        )))
    }
}

/// The `SpinApp` resource for `inputs`.
pub fn spin_app(
    reference: &str,
    name: &str,
    namespace: &str,
    replicas: u32,
    executor: &str,
    variables: &[(String, String)],
) -> Value {
    let mut spec = json!({ "image": reference, "executor": executor, "replicas": replicas });
    if !variables.is_empty() {
        spec["variables"] = variables.iter().map(|(k, v)| json!({ "name": k, "value": v })).collect();
    }
    json!({
        "apiVersion": "core.spinkube.dev/v1alpha1",
        "kind": "SpinApp",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": { "app.kubernetes.io/managed-by": "skiff" },
        },
        "spec": spec,
    })
}

/// The application's default name: the last part of the repository (`ghcr.io/acme/edge@…` → `edge`).
fn default_name(reference: &str) -> &str {
    let repo = reference.split('@').next().unwrap_or(reference);
    repo.rsplit('/').next().unwrap_or(repo)
}

/// `name=value` lines (or comma-separated): the application variables SpinKube passes on.
fn parse_variables(text: &str) -> Result<Vec<(String, String)>, StepError> {
    let mut out = Vec::new();
    for line in text.split(['\n', ',']).map(str::trim).filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once('=').ok_or_else(|| invalid(format!("variable `{line}` is not `name=value`")))?;
        let k = k.trim();
        if !k.starts_with(|c: char| c.is_ascii_lowercase())
            || !k.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(invalid(format!("variable `{k}` is not a Spin variable name (lower-case, digits, `_`)")));
        }
        out.push((k.to_string(), v.trim().to_string()));
    }
    Ok(out)
}

impl Step for SpinDeploy {
    fn describe() -> Manifest {
        Manifest::new(
            "spin-deploy",
            "Deploys a pushed Spin application as a SpinKube SpinApp: applied through a Kubernetes API server, or kept as an artifact.",
        )
        .input("reference", "The application pinned by digest (spin-push's `reference` output)", true, None)
        .input("name", "The SpinApp's name (default: the repository's last part)", false, None)
        .input("namespace", "The Kubernetes namespace", false, Some("default"))
        .input("replicas", "How many replicas", false, Some("2"))
        .input("executor", "The SpinAppExecutor to run it", false, Some("containerd-shim-spin"))
        .input("variables", "Application variables, `name=value` per line (no secrets: use a Kubernetes secret)", false, None)
        .input("api-url", "A Kubernetes API server (`https://…:6443`): apply the SpinApp there", false, None)
        .input("token-secret", "Name of a granted secret holding the API server's bearer token", false, None)
        .input("path", "Where the SpinApp manifest is written in the workspace (and its artifact name)", false, Some("spinapp.json"))
        .output("name", "The SpinApp's name")
        .output("namespace", "Its namespace")
        .output("manifest", "The manifest's workspace path (also the artifact's name)")
        .output("applied", "`true` when the API server accepted it")
        .output("uid", "The resource's uid, when applied")
        .host("${inputs.api-url}")
    }

    fn run(ctx: Context) -> Result<Outputs, StepError> {
        let reference = ctx.required("reference")?.trim();
        if !reference.contains("@sha256:") {
            return Err(invalid(format!(
                "`{reference}` is not pinned by digest: deploy `spin-push`'s `reference` output (registry/repo@sha256:…)"
            )));
        }
        let name = ctx.input("name").filter(|s| !s.is_empty()).unwrap_or(default_name(reference)).to_string();
        check_name("name", &name)?;
        let namespace = ctx.input_or("namespace", "default").to_string();
        check_name("namespace", &namespace)?;
        let replicas: u32 = ctx
            .input_or("replicas", "2")
            .parse()
            .ok()
            .filter(|n| *n <= 1000)
            .ok_or_else(|| invalid("`replicas` must be a whole number from 0 to 1000"))?;
        let variables = parse_variables(ctx.input_or("variables", ""))?;
        let resource = spin_app(
            reference,
            &name,
            &namespace,
            replicas,
            ctx.input_or("executor", "containerd-shim-spin"),
            &variables,
        );
        let body = serde_json::to_vec_pretty(&resource).expect("JSON");

        let path = ctx.input_or("path", "spinapp.json").to_string();
        skiff_step_sdk::files::check_inside(&path).map_err(|e| invalid(format!("path {e}")))?;
        if let Some((dir, _)) = path.rsplit_once('/') {
            std::fs::create_dir_all(dir).map_err(|e| StepError::failed(format!("creating `{dir}`: {e}")))?;
        }
        std::fs::write(&path, &body).map_err(|e| StepError::failed(format!("writing `{path}`: {e}")))?;
        let artifact = path.rsplit('/').next().unwrap_or(&path).to_string();
        skiff_step_sdk::upload_artifact(&artifact, &path)
            .map_err(|e| StepError::failed(format!("storing the manifest as artifact `{artifact}`: {e}")))?;
        let mut out =
            Outputs::new().set("name", name.clone()).set("namespace", namespace.clone()).set("manifest", path.clone());

        let Some(api) = ctx.input("api-url").map(str::trim).filter(|s| !s.is_empty()) else {
            info!(
                "SpinApp `{name}` for {reference} written to {path} and kept as artifact `{artifact}` (no `api-url`)"
            );
            return Ok(out.set("applied", "false"));
        };
        let token = match ctx.input("token-secret").filter(|s| !s.is_empty()) {
            Some(secret) => Some(skiff_step_sdk::secret(secret).ok_or_else(|| {
                StepError::Denied(format!(
                    "secret `{secret}` (input `token-secret`) was not granted: add it to `permissions.secrets`"
                ))
            })?),
            None => None,
        };
        // Server-side apply: creates the SpinApp or updates the fields this manager owns.
        let url = format!(
            "{}/apis/core.spinkube.dev/v1alpha1/namespaces/{namespace}/spinapps/{name}?fieldManager=skiff&force=true",
            api.trim_end_matches('/')
        );
        let mut req = Request::new("PATCH", &url)
            .header("content-type", "application/apply-patch+yaml")
            .header("accept", "application/json")
            .body(body)
            .max_response_bytes(4 << 20);
        if let Some(t) = &token {
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        let resp = req.send()?;
        let answer: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        if resp.status >= 400 {
            let why =
                answer["message"].as_str().map(String::from).unwrap_or_else(|| resp.text().chars().take(300).collect());
            let hint = match resp.status {
                401 => " (check the token in `token-secret`)",
                403 => " (the token's service account may not patch spinapps in this namespace)",
                404 => " (is SpinKube's SpinApp CRD installed in the cluster?)",
                _ => "",
            };
            return Err(StepError::failed(format!(
                "the API server refused SpinApp `{name}`: {} {why}{hint}",
                resp.status
            )));
        }
        let uid = answer["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        info!("SpinApp `{namespace}/{name}` applied ({reference}), uid {uid}");
        out = out.set("applied", "true").set("uid", uid);
        Ok(out)
    }
}

skiff_step_sdk::export!(SpinDeploy);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resource_pins_the_digest_and_names_its_variables() {
        let r = spin_app(
            "r.io/a/edge@sha256:ab",
            "edge",
            "ci",
            3,
            "containerd-shim-spin",
            &[("host_url".into(), "x".into())],
        );
        assert_eq!(r["spec"]["image"], "r.io/a/edge@sha256:ab");
        assert_eq!(r["spec"]["replicas"], 3);
        assert_eq!(r["spec"]["variables"][0]["name"], "host_url");
        assert_eq!(r["metadata"]["namespace"], "ci");
        assert_eq!(default_name("127.0.0.1:5000/skiff/edge@sha256:ab"), "edge");
    }

    #[test]
    fn inputs_are_checked() {
        assert!(check_name("name", "Edge").is_err() && check_name("name", "-x").is_err());
        assert!(check_name("name", "edge-1").is_ok());
        assert!(parse_variables("a=1\nb = two").unwrap().len() == 2);
        assert!(parse_variables("A=1").is_err() && parse_variables("novalue").is_err());
    }
}
