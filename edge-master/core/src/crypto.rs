//! HMAC and constant-time comparison helpers shared by the verifiers and the dispatch signer.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 of the concatenation of `parts` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    mac(key, parts).finalize().into_bytes().into()
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for part in parts {
        mac.update(part);
    }
    mac
}

/// Whether `expected` is the HMAC-SHA256 of `parts` under `key`, compared in constant time.
pub(crate) fn hmac_matches(key: &[u8], parts: &[&[u8]], expected: &[u8]) -> bool {
    mac(key, parts).verify_slice(expected).is_ok()
}

/// Compares two tokens in constant time. Both are hashed first so that neither their contents
/// nor their lengths leak through timing.
pub(crate) fn tokens_equal(a: &[u8], b: &[u8]) -> bool {
    let ha = Sha256::digest(a);
    let hb = Sha256::digest(b);
    bool::from(ha.as_slice().ct_eq(hb.as_slice()))
}

/// The key bytes used for Standard Webhooks: `whsec_<base64>` is decoded, anything else is used
/// as written.
pub(crate) fn standard_webhooks_key(key: &[u8]) -> Vec<u8> {
    if let Some(rest) = key.strip_prefix(b"whsec_")
        && let Ok(decoded) = B64.decode(rest)
    {
        return decoded;
    }
    key.to_vec()
}

pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub(crate) fn b64_decode(text: &str) -> Option<Vec<u8>> {
    B64.decode(text.trim()).ok()
}

/// The value GitHub (and Bitbucket, Gitea) put in `X-Hub-Signature-256` for `body` signed with
/// `secret`: `sha256=` and the lower-case hex HMAC-SHA256. Useful for tests and for tools that
/// replay webhooks.
///
/// ```
/// let sig = skiff_edge_core::github_signature(b"It's a Secret to Everybody", b"Hello, World!");
/// assert_eq!(sig, "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17");
/// ```
pub fn github_signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret, &[body])))
}

/// The `webhook-signature` value (`v1,<base64>`) of a Standard Webhooks message, for `key` as
/// written (`whsec_<base64>` is decoded).
///
/// ```
/// // The example from the Standard Webhooks specification's reference tests.
/// let sig = skiff_edge_core::standard_webhooks_signature(
///     b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
///     "msg_p5jXN8AQM9LWM0D4loKWxJek",
///     1614265330,
///     br#"{"test": 2432232314}"#,
/// );
/// assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
/// ```
pub fn standard_webhooks_signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = standard_webhooks_key(key);
    let ts = timestamp.to_string();
    let mac = hmac_sha256(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", b64_encode(&mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(tokens_equal(b"abc", b"abc"));
        assert!(!tokens_equal(b"abc", b"abd"));
        assert!(!tokens_equal(b"abc", b"abcd"));
        assert!(!tokens_equal(b"", b"a"));
    }

    #[test]
    fn whsec_prefix_is_decoded_and_bad_base64_kept() {
        assert_eq!(standard_webhooks_key(b"whsec_aGVsbG8="), b"hello");
        assert_eq!(standard_webhooks_key(b"whsec_!!"), b"whsec_!!");
        assert_eq!(standard_webhooks_key(b"plain"), b"plain");
    }
}
