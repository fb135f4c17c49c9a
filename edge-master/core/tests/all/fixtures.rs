//! Loading recorded webhooks and signing them with the test secrets.

use std::path::PathBuf;

use skiff_edge_core::{
    App, Headers, MasterConfig, Secret, gitee_signature, github_signature, standard_webhooks_signature,
};

/// The secret the Git-host fixtures are signed with (or send as their token).
pub const SECRET: &str = "skiff-test-secret";
/// The Standard Webhooks secret (from the specification's examples).
pub const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The dispatch key.
pub const DISPATCH_KEY: &str = "whsec_c2tpZmYtZGlzcGF0Y2gta2V5LWZvci10ZXN0cw==";
/// The clock the tests run at (2025-03-04T09:20:00Z).
pub const NOW: i64 = 1_741_080_000;

/// A recorded webhook: its body and its headers, with the placeholders for secrets filled in.
pub struct Recorded {
    pub headers: Headers,
    pub pairs: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The raw body of `provider/name.json`.
pub fn body(provider: &str, name: &str) -> Vec<u8> {
    std::fs::read(dir().join(provider).join(format!("{name}.json"))).unwrap()
}

/// Loads `provider/name` and signs it with the test secrets at [`NOW`].
pub fn load(provider: &str, name: &str) -> Recorded {
    let body = body(provider, name);
    let text = std::fs::read_to_string(dir().join(provider).join(format!("{name}.headers.json"))).unwrap();
    let raw: Vec<(String, String)> = serde_json::from_str(&text).unwrap();
    sign(raw, body)
}

/// Fills the placeholders of `raw` headers for `body`.
pub fn sign(raw: Vec<(String, String)>, body: Vec<u8>) -> Recorded {
    let secret = if raw.iter().any(|(k, _)| k == "webhook-signature") { SW_SECRET } else { SECRET };
    let hmac_hex = github_signature(SECRET.as_bytes(), &body).trim_start_matches("sha256=").to_owned();
    let gitee_ms = NOW * 1000 - 1500;
    let webhook_id = raw.iter().find(|(k, _)| k == "webhook-id").map(|(_, v)| v.clone()).unwrap_or_default();
    let pairs: Vec<(String, String)> = raw
        .into_iter()
        .map(|(k, v)| {
            let v = v
                .replace("{{hmac_hex}}", &hmac_hex)
                .replace("{{token}}", secret)
                .replace("{{gitee_token}}", &gitee_signature(SECRET.as_bytes(), gitee_ms))
                .replace("{{gitee_timestamp}}", &gitee_ms.to_string())
                .replace("{{sw_timestamp}}", &NOW.to_string())
                .replace(
                    "{{sw_signature}}",
                    &standard_webhooks_signature(SW_SECRET.as_bytes(), &webhook_id, NOW, &body),
                );
            (k, v)
        })
        .collect();
    Recorded { headers: Headers::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))), pairs, body }
}

/// The secret a fixture of `provider` is checked with.
pub fn secret_for(provider: &str) -> Secret {
    match provider {
        "standard-webhooks" => Secret::new(SW_SECRET),
        // CloudEvents fixtures use a bearer token (binary) or Standard Webhooks (structured).
        "cloudevents" => Secret::new(SECRET).with_previous(SW_SECRET),
        _ => Secret::new(SECRET),
    }
}

/// Apps from YAML.
pub fn apps(yaml: &str) -> Vec<App> {
    serde_norway::from_str(yaml).unwrap()
}

/// A master for `provider`'s fixtures with `apps`.
pub fn master(provider: &str, apps: Vec<App>) -> MasterConfig {
    MasterConfig::new(secret_for(provider), Secret::new(DISPATCH_KEY), apps)
}

/// Replaces one header's value.
pub fn with_header(rec: &Recorded, name: &str, value: &str) -> Headers {
    rec.pairs
        .iter()
        .map(|(k, v)| if k.eq_ignore_ascii_case(name) { (k.as_str(), value) } else { (k.as_str(), v.as_str()) })
        .collect()
}

/// Drops one header.
pub fn without_header(rec: &Recorded, name: &str) -> Headers {
    rec.pairs.iter().filter(|(k, _)| !k.eq_ignore_ascii_case(name)).map(|(k, v)| (k.as_str(), v.as_str())).collect()
}
