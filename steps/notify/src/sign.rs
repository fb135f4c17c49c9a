//! The robots' signing schemes, as pure functions of the secret and the time.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// DingTalk: `base64(HMAC-SHA256(key = secret, msg = "{timestamp_ms}\n{secret}"))`,
/// URL-encoded for the `sign` query parameter.
pub fn dingtalk(secret: &str, timestamp_ms: u64) -> String {
    let digest = hmac_sha256(secret.as_bytes(), format!("{timestamp_ms}\n{secret}").as_bytes());
    url_encode(&STANDARD.encode(digest))
}

/// Feishu/Lark: `base64(HMAC-SHA256(key = "{timestamp_s}\n{secret}", msg = ""))`.
pub fn feishu(secret: &str, timestamp_s: u64) -> String {
    STANDARD.encode(hmac_sha256(format!("{timestamp_s}\n{secret}").as_bytes(), b""))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
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
    fn dingtalk_signature_matches_the_documented_algorithm() {
        // Computed independently: printf '1700000000000\nSECabc' | openssl dgst -sha256 -hmac SECabc -binary | base64
        let sig = dingtalk("SECabc", 1_700_000_000_000);
        assert_eq!(sig, "jcUpW0QmtKduN03n4JqQ0PBosVjqnM8gU7fIIvsDmCM%3D");
    }

    #[test]
    fn feishu_signs_an_empty_message_with_the_timestamp_and_secret_as_key() {
        // printf '' | openssl dgst -sha256 -mac HMAC -macopt "key:1700000000<LF>s3cret" -binary | base64
        assert_eq!(feishu("s3cret", 1_700_000_000), "IX3eHI0/v/Td7jqJ0ynSEK3Dq5JY3HUZeoeMgVZeZGo=");
    }

    #[test]
    fn url_encoding_escapes_base64_punctuation() {
        assert_eq!(url_encode("a+b/c="), "a%2Bb%2Fc%3D");
        assert_eq!(url_encode("é"), "%C3%A9");
    }
}
