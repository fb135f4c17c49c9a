//! What the fuzz targets share: their input formats, and the secrets webhook inputs are signed
//! with, so that the fuzzer's bodies get past signature checks.
//!
//! Inputs are text-like so that `scripts/fuzz.sh` can seed the corpora from the test fixtures:
//!
//! - a request is `Name: value` header lines, a blank line, then the body (HTTP/1.1 without the
//!   request line). In header values, the placeholders of `edge-master/core/tests/fixtures`
//!   (`{{hmac_hex}}`, `{{token}}`, `{{gitee_token}}`, …) are replaced by values that sign the
//!   body, as the fixture tests do;
//! - inputs with several parts separate them with NUL bytes.

use skiff_edge_core::{Headers, gitee_signature, github_signature, standard_webhooks_signature};

/// The secret Git-host requests are signed with (the fixtures' secret).
pub const SECRET: &str = "skiff-test-secret";
/// The Standard Webhooks secret (from the specification's examples, as in the fixtures).
pub const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The master's dispatch key.
pub const DISPATCH_KEY: &str = "whsec_c2tpZmYtZGlzcGF0Y2gta2V5LWZvci10ZXN0cw==";
/// The clock (2025-03-04T09:20:00Z), the same as the fixture tests'.
pub const NOW: i64 = 1_741_080_000;

/// The parts of `data` between NUL bytes, at most `n` (the last one keeps any further NULs).
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |b| *b == 0).collect()
}

/// `Name: value` lines, a blank line, the body. Without a blank line it is all headers.
pub fn split_request(data: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let pairs = head
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((k, v)) => (k.to_string(), v.trim_start().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect();
    (pairs, body)
}

/// Headers with the fixtures' placeholders filled in for `body`.
pub fn signed_headers(pairs: &[(String, String)], body: &[u8]) -> Headers {
    let hmac_hex = github_signature(SECRET.as_bytes(), body).trim_start_matches("sha256=").to_owned();
    let gitee_ms = NOW * 1000 - 1500;
    let webhook_id = pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case("webhook-id")).map(|(_, v)| v.trim());
    let sw = standard_webhooks_signature(SW_SECRET.as_bytes(), webhook_id.unwrap_or_default(), NOW, body);
    let fill = |v: &str| {
        if !v.contains("{{") {
            return v.to_string();
        }
        v.replace("{{hmac_hex}}", &hmac_hex)
            .replace("{{token}}", SECRET)
            .replace("{{gitee_token}}", &gitee_signature(SECRET.as_bytes(), gitee_ms))
            .replace("{{gitee_timestamp}}", &gitee_ms.to_string())
            .replace("{{sw_timestamp}}", &NOW.to_string())
            .replace("{{sw_signature}}", &sw)
    };
    pairs.iter().map(|(k, v)| (k.as_str(), fill(v))).collect()
}
