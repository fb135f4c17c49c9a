//! Pushing an image to an OCI registry with the distribution API (blobs, then the manifest),
//! answering a registry's `Basic` or `Bearer` (token server) challenge.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use skiff_step_sdk::http::{Request, Response};

use crate::app::Layer;

/// Media type of the image manifest pushed.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// `registry/repository[:tag]`, as `docker push` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

impl Target {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad =
            || format!("`{s}` is not an image reference: write `registry/repository:tag`, like `ghcr.io/acme/app:1.0`");
        if s.contains("://") || s.contains('@') {
            return Err(format!("{}; no scheme and no digest (the registry gives the digest)", bad()));
        }
        let (registry, rest) = s.split_once('/').ok_or_else(bad)?;
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(format!("{} (`{registry}` is not a registry host)", bad()));
        }
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (rest, "latest"),
        };
        let repo_ok = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            });
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !tag.starts_with(['.', '-']);
        if !repo_ok || !tag_ok {
            return Err(format!("{} (lower-case repository path; tag of letters, digits, `._-`)", bad()));
        }
        Ok(Self { registry: registry.to_string(), repository: repository.to_string(), tag: tag.to_string() })
    }

    /// Whether the registry is on this machine (plain HTTP is then the default, as for Docker).
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => &self.registry,
        };
        host == "localhost" || host == "127.0.0.1" || host == "[::1]" || host.starts_with("127.")
    }
}

/// A session with one registry repository.
pub struct Registry {
    base: String,
    target: Target,
    credentials: Option<(String, String)>,
    /// The `Authorization` header that worked.
    auth: Option<String>,
}

impl Registry {
    pub fn new(target: Target, plain_http: bool, credentials: Option<(String, String)>) -> Self {
        let scheme = if plain_http { "http" } else { "https" };
        Self { base: format!("{scheme}://{}", target.registry), target, credentials, auth: None }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.target.repository)
    }

    /// Sends `build()`'s request, answering one authentication challenge.
    fn send(&mut self, build: &dyn Fn() -> Request) -> Result<Response, String> {
        let with_auth = |auth: &Option<String>| {
            let r = build();
            match auth {
                Some(a) => r.header("authorization", a),
                None => r,
            }
        };
        let resp = with_auth(&self.auth).send().map_err(|e| e.to_string())?;
        if resp.status != 401 {
            return Ok(resp);
        }
        let challenge = resp.header("www-authenticate").unwrap_or_default().to_string();
        self.auth = Some(self.answer(&challenge)?);
        let resp = with_auth(&self.auth).send().map_err(|e| e.to_string())?;
        if resp.status == 401 {
            return Err(format!(
                "registry {} refused the credentials{}: check `username` and the secret named by `password-secret`",
                self.target.registry,
                if self.credentials.is_none() { " (none were given)" } else { "" }
            ));
        }
        Ok(resp)
    }

    fn answer(&self, challenge: &str) -> Result<String, String> {
        let basic = self.credentials.as_ref().map(|(u, p)| format!("Basic {}", STANDARD.encode(format!("{u}:{p}"))));
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| {
                format!(
                    "registry {} asks for a user name and password: set `username` and `password-secret`",
                    self.target.registry
                )
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(format!(
                "registry {} asks for `{scheme}` authentication, which is not supported",
                self.target.registry
            ));
        }
        let param = |name: &str| challenge_param(params, name);
        let realm = param("realm")
            .ok_or_else(|| format!("registry {}'s Bearer challenge names no realm", self.target.registry))?;
        let mut url = format!("{realm}{}", if realm.contains('?') { '&' } else { '?' });
        if let Some(service) = param("service") {
            url.push_str(&format!("service={}&", encode(&service)));
        }
        url.push_str(&format!("scope={}", encode(&format!("repository:{}:pull,push", self.target.repository))));
        let mut req = Request::get(&url).max_response_bytes(1 << 20);
        if let Some(b) = &basic {
            req = req.header("authorization", b);
        }
        let resp = req.send().map_err(|e| format!("the registry's token server {realm}: {e}"))?;
        if resp.status >= 400 {
            return Err(format!(
                "the registry's token server {realm} answered {}: check `username` and `password-secret`",
                resp.status
            ));
        }
        let body: Value = serde_json::from_slice(&resp.body).map_err(|e| format!("token server {realm}: {e}"))?;
        let token = body["token"]
            .as_str()
            .or(body["access_token"].as_str())
            .ok_or_else(|| format!("the registry's token server {realm} answered without a token"))?;
        Ok(format!("Bearer {token}"))
    }

    fn fail(&self, what: &str, resp: &Response) -> String {
        let detail = serde_json::from_slice::<Value>(&resp.body)
            .ok()
            .and_then(|v| {
                let e = &v["errors"][0];
                e["code"].as_str().map(|c| format!("{c}: {}", e["message"].as_str().unwrap_or("")))
            })
            .unwrap_or_else(|| resp.text().chars().take(300).collect());
        format!("registry {} answered {} to {what}: {detail}", self.target.registry, resp.status)
    }

    /// Uploads a blob unless the repository has it; true when it was sent.
    pub fn push_blob(&mut self, media: &str, digest: &str, bytes: &[u8]) -> Result<bool, String> {
        let head_url = self.url(&format!("blobs/{digest}"));
        let head = self.send(&|| Request::new("HEAD", &head_url))?;
        if head.status == 200 {
            return Ok(false);
        }
        let start_url = self.url("blobs/uploads/");
        let start = self.send(&|| Request::post(&start_url).header("content-length", "0"))?;
        if start.status != 202 {
            return Err(self.fail(&format!("starting the upload of {media} {digest}"), &start));
        }
        let location = start
            .header("location")
            .ok_or_else(|| format!("registry {} started an upload without a Location", self.target.registry))?;
        let location =
            if location.starts_with('/') { format!("{}{location}", self.base) } else { location.to_string() };
        let put_url = format!("{location}{}digest={}", if location.contains('?') { '&' } else { '?' }, encode(digest));
        let put = self
            .send(&|| Request::put(&put_url).header("content-type", "application/octet-stream").body(bytes.to_vec()))?;
        if put.status != 201 {
            return Err(self.fail(&format!("the upload of {media} {digest}"), &put));
        }
        Ok(true)
    }

    /// Puts the manifest under the tag; the digest it is stored under.
    pub fn push_manifest(&mut self, manifest: &[u8]) -> Result<String, String> {
        let url = self.url(&format!("manifests/{}", self.target.tag));
        let resp =
            self.send(&|| Request::put(&url).header("content-type", MANIFEST_MEDIA_TYPE).body(manifest.to_vec()))?;
        if resp.status != 201 {
            return Err(self.fail("the manifest", &resp));
        }
        let digest = crate::app::sha256(manifest);
        if let Some(said) = resp.header("docker-content-digest")
            && said != digest
        {
            return Err(format!(
                "registry {} stored the manifest as {said}, but its bytes hash to {digest}: the registry changed it",
                self.target.registry
            ));
        }
        Ok(digest)
    }
}

/// The image config Spin writes: a Wasm image whose label names the locked app's digest, so
/// that two applications never share a config (and an image id).
pub fn config(layers: &[Layer], locked_digest: &str) -> Vec<u8> {
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    serde_json::to_vec(&json!({
        "architecture": "wasm",
        "os": "wasip1",
        "config": { "Labels": { "com.fermyon.spin.lockedAppDigest": locked_digest } },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("JSON")
}

/// The image manifest over `config` and `layers`.
pub fn manifest(config: &Layer, layers: &[Layer], annotations: &serde_json::Map<String, Value>) -> Vec<u8> {
    let desc = |media: &str, l: &Layer| json!({ "mediaType": media, "digest": l.digest, "size": l.bytes.len() });
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": desc(CONFIG_MEDIA_TYPE, config),
        "layers": layers.iter().map(|l| desc(l.media_type, l)).collect::<Vec<_>>(),
    });
    if !annotations.is_empty() {
        m["annotations"] = Value::Object(annotations.clone());
    }
    serde_json::to_vec(&m).expect("JSON")
}

/// `name` in an RFC 7235 parameter list (`realm="…",service="…"`).
fn challenge_param(params: &str, name: &str) -> Option<String> {
    let mut rest = params;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(value.to_string());
        }
        rest = next.trim_start_matches([',', ' ']);
    }
    None
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_docker_writes_them() {
        let t = Target::parse("127.0.0.1:5000/skiff/edge:v1").unwrap();
        assert_eq!(
            (t.registry.as_str(), t.repository.as_str(), t.tag.as_str()),
            ("127.0.0.1:5000", "skiff/edge", "v1")
        );
        assert!(t.is_loopback());
        let t = Target::parse("ghcr.io/acme/app").unwrap();
        assert_eq!(t.tag, "latest");
        assert!(!t.is_loopback());
        for bad in
            ["app:1", "https://ghcr.io/a/b:1", "ghcr.io/a/b@sha256:00", "ghcr.io/A/b:1", "ghcr.io/a/b:-x", "ghcr.io/"]
        {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn challenges_are_read_quoted_or_not() {
        let c = r#"realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a:pull""#;
        assert_eq!(challenge_param(c, "realm").as_deref(), Some("https://auth.example.com/token"));
        assert_eq!(challenge_param(c, "service").as_deref(), Some("registry.example.com"));
        assert_eq!(challenge_param("realm=x, service=y", "service").as_deref(), Some("y"));
        assert_eq!(challenge_param(c, "nope"), None);
        assert_eq!(encode("repository:a/b:pull,push"), "repository%3Aa%2Fb%3Apull%2Cpush");
    }
}
