//! Which sender a request comes from, and whether it proves it knows the secret.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::crypto::{b64_decode, b64_encode, hmac_matches, hmac_sha256, tokens_equal};
use crate::headers::{Headers, Secret};

/// The largest webhook body accepted, 1 MiB. Larger requests are refused with
/// [`VerifyError::BodyTooLarge`] (HTTP 413) before any work is done. GitHub caps its payloads at
/// 25 MB, but a push payload above 1 MiB is rare (GitHub lists at most 20 commits) and
/// buffering such bodies on an edge worker costs more than it is worth.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How far a signed timestamp may be from the caller's clock, in seconds (5 minutes, as the
/// Standard Webhooks specification recommends).
pub const DEFAULT_TIMESTAMP_TOLERANCE_SECS: i64 = 300;

/// A webhook sender Skiff understands.
///
/// ```
/// use skiff_edge_core::Provider;
///
/// assert_eq!(serde_json::to_string(&Provider::StandardWebhooks).unwrap(), "\"standard-webhooks\"");
/// assert_eq!(Provider::Gitlab.to_string(), "GitLab");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    /// GitHub (and GitHub Enterprise Server): `X-GitHub-Event`, `X-Hub-Signature-256`.
    Github,
    /// GitLab: `X-Gitlab-Event`, `X-Gitlab-Token`.
    Gitlab,
    /// Gitee: `X-Gitee-Event`, `X-Gitee-Token` (+ `X-Gitee-Timestamp` in signature mode).
    Gitee,
    /// Gitea: `X-Gitea-Event`, `X-Gitea-Signature`.
    Gitea,
    /// Forgejo: `X-Forgejo-Event`, `X-Forgejo-Signature`.
    Forgejo,
    /// Alibaba Cloud Codeup: `X-Codeup-Event`, `X-Codeup-Token`.
    Codeup,
    /// Bitbucket Cloud: `X-Event-Key`, `X-Hub-Signature`.
    Bitbucket,
    /// Any sender following the Standard Webhooks specification: `webhook-id`,
    /// `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks,
    /// A CloudEvent over HTTP, binary (`ce-*` headers) or structured
    /// (`application/cloudevents+json`) mode.
    #[serde(rename = "cloudevents")]
    CloudEvents,
}

impl Provider {
    /// Every provider, in detection order.
    pub const ALL: [Provider; 9] = [
        Provider::Forgejo,
        Provider::Gitea,
        Provider::Gitee,
        Provider::Codeup,
        Provider::Gitlab,
        Provider::Github,
        Provider::Bitbucket,
        Provider::CloudEvents,
        Provider::StandardWebhooks,
    ];

    /// The header that names the event, where the provider has one.
    pub fn event_header(self) -> Option<&'static str> {
        match self {
            Provider::Github => Some("x-github-event"),
            Provider::Gitlab => Some("x-gitlab-event"),
            Provider::Gitee => Some("x-gitee-event"),
            Provider::Gitea => Some("x-gitea-event"),
            Provider::Forgejo => Some("x-forgejo-event"),
            Provider::Codeup => Some("x-codeup-event"),
            Provider::Bitbucket => Some("x-event-key"),
            Provider::StandardWebhooks | Provider::CloudEvents => None,
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::Github => "GitHub",
            Provider::Gitlab => "GitLab",
            Provider::Gitee => "Gitee",
            Provider::Gitea => "Gitea",
            Provider::Forgejo => "Forgejo",
            Provider::Codeup => "Codeup",
            Provider::Bitbucket => "Bitbucket",
            Provider::StandardWebhooks => "Standard Webhooks",
            Provider::CloudEvents => "CloudEvents",
        })
    }
}

/// Which provider sent a request, judged by its headers alone (never by `User-Agent`).
///
/// Forgejo also sends `X-Gitea-Event` and `X-GitHub-Event`, and Gitea sends `X-GitHub-Event`,
/// so the more specific headers are looked at first: Forgejo, Gitea, Gitee, Codeup, GitLab,
/// GitHub, Bitbucket, then CloudEvents (which may carry a Standard Webhooks signature) and
/// Standard Webhooks.
///
/// ```
/// use skiff_edge_core::{detect_provider, Headers, Provider};
///
/// let gitea = Headers::from_pairs([("X-GitHub-Event", "push"), ("X-Gitea-Event", "push")]);
/// assert_eq!(detect_provider(&gitea), Some(Provider::Gitea));
/// let github = Headers::from_pairs([("X-GitHub-Event", "push")]);
/// assert_eq!(detect_provider(&github), Some(Provider::Github));
/// ```
pub fn detect_provider(headers: &Headers) -> Option<Provider> {
    Provider::ALL.into_iter().find(|p| match p {
        Provider::CloudEvents => {
            headers.contains("ce-specversion")
                || headers.get("content-type").is_some_and(|ct| media_type(ct) == "application/cloudevents+json")
        }
        Provider::StandardWebhooks => headers.contains("webhook-id"),
        other => other.event_header().is_some_and(|h| headers.contains(h)),
    })
}

/// The media type of a `Content-Type` value, lower case and without parameters.
pub(crate) fn media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Knobs for [`verify`]. `VerifyOptions::default()` is what most callers want.
///
/// ```
/// use skiff_edge_core::{Provider, VerifyOptions};
///
/// let opts = VerifyOptions { allowed: Some(vec![Provider::Github]), ..VerifyOptions::default() };
/// assert_eq!(opts.max_body_bytes, skiff_edge_core::MAX_BODY_BYTES);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct VerifyOptions {
    /// Larger bodies are refused with 413. Defaults to [`MAX_BODY_BYTES`].
    pub max_body_bytes: usize,
    /// How far a signed timestamp may be from `now`, in seconds. Defaults to
    /// [`DEFAULT_TIMESTAMP_TOLERANCE_SECS`].
    pub timestamp_tolerance_secs: i64,
    /// If set, only these providers are accepted.
    pub allowed: Option<Vec<Provider>>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            max_body_bytes: MAX_BODY_BYTES,
            timestamp_tolerance_secs: DEFAULT_TIMESTAMP_TOLERANCE_SECS,
            allowed: None,
        }
    }
}

/// Why a request was not accepted as genuine. Each message says what to check.
///
/// [`status`](VerifyError::status) gives the HTTP status to answer with: 413 for a body over the
/// limit, 500 when the master itself has no usable secret, 400 for a dispatch whose signature is
/// good but whose body cannot be read, and 401 for everything else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The body is over the size limit.
    #[error("the request body is {size} bytes, over the limit of {limit} bytes; webhooks this large are not accepted")]
    BodyTooLarge {
        /// The body's size.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// No header identified a supported sender.
    #[error(
        "the request has none of the headers that identify a supported webhook sender (X-GitHub-Event, X-Gitlab-Event, X-Gitee-Event, X-Gitea-Event, X-Forgejo-Event, X-Codeup-Event, X-Event-Key, webhook-id, ce-specversion); check that the webhook points at this URL and sends JSON"
    )]
    UnknownProvider,
    /// The provider is not in [`VerifyOptions::allowed`].
    #[error("webhooks from {provider} are not accepted here; allow {provider} in the master's configuration")]
    ProviderNotAllowed {
        /// The provider that was detected.
        provider: Provider,
    },
    /// The master has no secret (or an empty one) to check against.
    #[error("the master has no webhook secret configured, so it cannot check any request; set a non-empty secret")]
    NoSecret,
    /// A header the scheme needs is missing.
    #[error("the {provider} request has no `{header}` header; {hint}")]
    MissingHeader {
        /// The detected provider.
        provider: Provider,
        /// The header expected.
        header: &'static str,
        /// What to do about it.
        hint: &'static str,
    },
    /// A header is present but cannot be read.
    #[error("the `{header}` header of the {provider} request is malformed: {reason}")]
    MalformedHeader {
        /// The detected provider.
        provider: Provider,
        /// The header.
        header: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A signature does not match the body under any configured key.
    #[error(
        "the `{header}` signature of the {provider} request does not match its body: check that the webhook's secret equals the one configured here, and that nothing between the sender and the master rewrites the body"
    )]
    BadSignature {
        /// The detected provider.
        provider: Provider,
        /// The header holding the signature.
        header: &'static str,
    },
    /// A plain token does not equal any configured key.
    #[error(
        "the `{header}` token of the {provider} request does not match: check that the webhook's secret token equals the one configured here"
    )]
    BadToken {
        /// The detected provider.
        provider: Provider,
        /// The header holding the token.
        header: &'static str,
    },
    /// A signed timestamp is too far from now, which is how replays are refused.
    #[error(
        "the `{header}` timestamp of the {provider} request is {age_secs} s away from now, more than the {tolerance_secs} s allowed: a replayed or delayed request, or a clock that is off"
    )]
    StaleTimestamp {
        /// The detected provider.
        provider: Provider,
        /// The header holding the timestamp.
        header: &'static str,
        /// How far the timestamp is from now, in seconds (absolute).
        age_secs: i64,
        /// The tolerance in force, in seconds.
        tolerance_secs: i64,
    },
    /// A dispatch whose signature is good but whose body is not a dispatch.
    #[error("the dispatch is signed correctly but its body is not a valid dispatch: {0}")]
    MalformedDispatch(String),
}

impl VerifyError {
    /// The HTTP status to answer with.
    ///
    /// ```
    /// use skiff_edge_core::VerifyError;
    /// assert_eq!(VerifyError::UnknownProvider.status(), 401);
    /// assert_eq!(VerifyError::BodyTooLarge { size: 2, limit: 1 }.status(), 413);
    /// ```
    pub fn status(&self) -> u16 {
        match self {
            VerifyError::BodyTooLarge { .. } => 413,
            VerifyError::NoSecret => 500,
            VerifyError::MalformedDispatch(_) => 400,
            _ => 401,
        }
    }
}

/// Checks that `body` was sent by a holder of `secret`, and tells who sent it.
///
/// The check runs over the raw bytes before anything is parsed, with constant-time
/// comparisons. Per provider:
///
/// - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
/// - GitLab: `X-Gitlab-Token` equals the secret. Codeup: `X-Codeup-Token` equals the secret.
/// - Gitee: `X-Gitee-Token` equals the secret (password mode), or is
///   `base64(HMAC-SHA256(secret, "{X-Gitee-Timestamp}\n{secret}"))` (signature mode, URL-encoded
///   or not) with a millisecond timestamp within the tolerance.
/// - Gitea: `X-Gitea-Signature`, Forgejo: `X-Forgejo-Signature` (or `X-Gitea-Signature`), the
///   hex HMAC-SHA256 of the body.
/// - Bitbucket: `X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
/// - Standard Webhooks: `webhook-signature` lists `v1,<base64 HMAC-SHA256(key,
///   "{webhook-id}.{webhook-timestamp}.{body}")>` entries separated by spaces; any match is
///   enough, and the timestamp (seconds) must be within the tolerance.
/// - CloudEvents: `Authorization: Bearer <secret>`, or a Standard Webhooks signature.
///
/// `now_unix` is the caller's clock in seconds since the Unix epoch.
///
/// ```
/// use skiff_edge_core::{github_signature, verify, Headers, Provider, Secret, VerifyError, VerifyOptions};
///
/// let body = br#"{"zen":"Keep it logically awesome."}"#;
/// let sig = github_signature(b"s3cret", body);
/// let headers = Headers::from_pairs([("X-GitHub-Event", "ping"), ("X-Hub-Signature-256", sig.as_str())]);
/// let opts = VerifyOptions::default();
/// assert_eq!(verify(&headers, body, &Secret::new("s3cret"), 0, &opts), Ok(Provider::Github));
/// let err = verify(&headers, body, &Secret::new("other"), 0, &opts).unwrap_err();
/// assert!(matches!(err, VerifyError::BadSignature { .. }));
/// assert_eq!(err.status(), 401);
/// ```
pub fn verify(
    headers: &Headers,
    body: &[u8],
    secret: &Secret,
    now_unix: i64,
    opts: &VerifyOptions,
) -> Result<Provider, VerifyError> {
    if body.len() > opts.max_body_bytes {
        return Err(VerifyError::BodyTooLarge { size: body.len(), limit: opts.max_body_bytes });
    }
    let provider = detect_provider(headers).ok_or(VerifyError::UnknownProvider)?;
    if let Some(allowed) = &opts.allowed
        && !allowed.contains(&provider)
    {
        return Err(VerifyError::ProviderNotAllowed { provider });
    }
    if secret.has_empty_key() {
        return Err(VerifyError::NoSecret);
    }
    let tolerance = opts.timestamp_tolerance_secs;
    match provider {
        Provider::Github => verify_hex_hmac(
            provider,
            headers,
            body,
            secret,
            &["x-hub-signature-256"],
            Some("sha256="),
            "set a secret in the webhook's settings on GitHub",
        ),
        Provider::Bitbucket => verify_hex_hmac(
            provider,
            headers,
            body,
            secret,
            &["x-hub-signature"],
            Some("sha256="),
            "set a secret in the webhook's settings on Bitbucket",
        ),
        Provider::Gitea => verify_hex_hmac(
            provider,
            headers,
            body,
            secret,
            &["x-gitea-signature"],
            None,
            "set a secret in the webhook's settings on Gitea",
        ),
        Provider::Forgejo => verify_hex_hmac(
            provider,
            headers,
            body,
            secret,
            &["x-forgejo-signature", "x-gitea-signature"],
            None,
            "set a secret in the webhook's settings on Forgejo",
        ),
        Provider::Gitlab => verify_token(
            provider,
            headers,
            secret,
            "x-gitlab-token",
            "set a secret token in the webhook's settings on GitLab",
        ),
        Provider::Codeup => verify_token(
            provider,
            headers,
            secret,
            "x-codeup-token",
            "set a secret token in the webhook's settings on Codeup",
        ),
        Provider::Gitee => verify_gitee(headers, secret, now_unix, tolerance),
        Provider::StandardWebhooks => verify_standard_webhooks(provider, headers, body, secret, now_unix, tolerance),
        Provider::CloudEvents => {
            if headers.contains("webhook-signature") {
                verify_standard_webhooks(provider, headers, body, secret, now_unix, tolerance)
            } else {
                verify_bearer(provider, headers, secret)
            }
        }
    }
    .map(|()| provider)
}

fn verify_hex_hmac(
    provider: Provider,
    headers: &Headers,
    body: &[u8],
    secret: &Secret,
    names: &[&'static str],
    prefix: Option<&str>,
    hint: &'static str,
) -> Result<(), VerifyError> {
    let (header, value) = names
        .iter()
        .find_map(|h| headers.get_nonempty(h).map(|v| (*h, v)))
        .ok_or(VerifyError::MissingHeader { provider, header: names[0], hint })?;
    let hex_part = match prefix {
        Some(p) => value.strip_prefix(p).ok_or_else(|| VerifyError::MalformedHeader {
            provider,
            header,
            reason: format!("it should start with `{p}`"),
        })?,
        None => value,
    };
    let expected = hex::decode(hex_part).map_err(|_| VerifyError::MalformedHeader {
        provider,
        header,
        reason: "the signature is not hexadecimal".into(),
    })?;
    if secret.keys().any(|key| hmac_matches(key, &[body], &expected)) {
        Ok(())
    } else {
        Err(VerifyError::BadSignature { provider, header })
    }
}

fn verify_token(
    provider: Provider,
    headers: &Headers,
    secret: &Secret,
    header: &'static str,
    hint: &'static str,
) -> Result<(), VerifyError> {
    let token = headers.get_nonempty(header).ok_or(VerifyError::MissingHeader { provider, header, hint })?;
    if any_token_equal(secret, token.as_bytes()) { Ok(()) } else { Err(VerifyError::BadToken { provider, header }) }
}

/// Checks every key without stopping early, so timing does not tell which key matched.
fn any_token_equal(secret: &Secret, token: &[u8]) -> bool {
    secret.keys().fold(false, |found, key| found | tokens_equal(key, token))
}

fn verify_bearer(provider: Provider, headers: &Headers, secret: &Secret) -> Result<(), VerifyError> {
    const HEADER: &str = "authorization";
    let value = headers.get_nonempty(HEADER).ok_or(VerifyError::MissingHeader {
        provider,
        header: "Authorization",
        hint: "send `Authorization: Bearer <token>` or a Standard Webhooks `webhook-signature`",
    })?;
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or_else(|| VerifyError::MalformedHeader {
            provider,
            header: "Authorization",
            reason: "it should be `Bearer <token>`".into(),
        })?;
    if any_token_equal(secret, token.as_bytes()) {
        Ok(())
    } else {
        Err(VerifyError::BadToken { provider, header: "Authorization" })
    }
}

fn verify_gitee(headers: &Headers, secret: &Secret, now_unix: i64, tolerance: i64) -> Result<(), VerifyError> {
    let provider = Provider::Gitee;
    let header = "x-gitee-token";
    let token = headers.get_nonempty(header).ok_or(VerifyError::MissingHeader {
        provider,
        header,
        hint: "set a password or a signing key in the webhook's settings on Gitee",
    })?;
    // Password mode: the token is the secret itself.
    if any_token_equal(secret, token.as_bytes()) {
        return Ok(());
    }
    // Signature mode: the token is base64(HMAC-SHA256(secret, "{timestamp}\n{secret}")).
    let Some(timestamp) = headers.get_nonempty("x-gitee-timestamp") else {
        return Err(VerifyError::BadToken { provider, header });
    };
    let millis: i64 = timestamp.parse().map_err(|_| VerifyError::MalformedHeader {
        provider,
        header: "x-gitee-timestamp",
        reason: "it should be milliseconds since the Unix epoch".into(),
    })?;
    check_timestamp(provider, "x-gitee-timestamp", millis.div_euclid(1000), now_unix, tolerance)?;
    let decoded = percent_decode(token);
    let Some(expected) = b64_decode(&decoded) else {
        return Err(VerifyError::BadToken { provider, header });
    };
    let matched = secret
        .keys()
        .fold(false, |found, key| found | hmac_matches(key, &[timestamp.as_bytes(), b"\n", key], &expected));
    if matched { Ok(()) } else { Err(VerifyError::BadSignature { provider, header }) }
}

/// The `X-Gitee-Token` value of Gitee's signature mode: `base64(HMAC-SHA256(secret,
/// "{timestamp_ms}\n{secret}"))`, for tests and replay tools.
///
/// ```
/// let token = skiff_edge_core::gitee_signature(b"key", 1_700_000_000_000);
/// assert_eq!(token.len(), 44);
/// ```
pub fn gitee_signature(secret: &[u8], timestamp_ms: i64) -> String {
    let ts = timestamp_ms.to_string();
    b64_encode(&hmac_sha256(secret, &[ts.as_bytes(), b"\n", secret]))
}

/// Decodes `%XX` escapes (Gitee's docs URL-encode the signature); leaves anything else alone.
fn percent_decode(text: &str) -> String {
    if !text.contains('%') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn check_timestamp(
    provider: Provider,
    header: &'static str,
    timestamp: i64,
    now_unix: i64,
    tolerance: i64,
) -> Result<(), VerifyError> {
    let age = now_unix.saturating_sub(timestamp).saturating_abs();
    if age > tolerance {
        Err(VerifyError::StaleTimestamp { provider, header, age_secs: age, tolerance_secs: tolerance })
    } else {
        Ok(())
    }
}

/// Verifies a Standard Webhooks signature (also used for dispatches).
pub(crate) fn verify_standard_webhooks(
    provider: Provider,
    headers: &Headers,
    body: &[u8],
    secret: &Secret,
    now_unix: i64,
    tolerance: i64,
) -> Result<(), VerifyError> {
    let hint = "a Standard Webhooks sender must send webhook-id, webhook-timestamp and webhook-signature";
    let id = headers.get_nonempty("webhook-id").ok_or(VerifyError::MissingHeader {
        provider,
        header: "webhook-id",
        hint,
    })?;
    let timestamp = headers.get_nonempty("webhook-timestamp").ok_or(VerifyError::MissingHeader {
        provider,
        header: "webhook-timestamp",
        hint,
    })?;
    let signatures = headers.get_nonempty("webhook-signature").ok_or(VerifyError::MissingHeader {
        provider,
        header: "webhook-signature",
        hint,
    })?;
    let ts: i64 = timestamp.parse().map_err(|_| VerifyError::MalformedHeader {
        provider,
        header: "webhook-timestamp",
        reason: "it should be whole seconds since the Unix epoch".into(),
    })?;
    check_timestamp(provider, "webhook-timestamp", ts, now_unix, tolerance)?;
    let candidates: Vec<Vec<u8>> = signatures
        .split_ascii_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(b64_decode)
        .filter(|sig| sig.len() == 32)
        .collect();
    if candidates.is_empty() {
        return Err(VerifyError::MalformedHeader {
            provider,
            header: "webhook-signature",
            reason: "it has no `v1,<base64>` signature".into(),
        });
    }
    let parts: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body];
    let mut matched = false;
    for key in secret.standard_webhooks_keys() {
        for candidate in &candidates {
            matched |= hmac_matches(&key, &parts, candidate);
        }
    }
    if matched { Ok(()) } else { Err(VerifyError::BadSignature { provider, header: "webhook-signature" }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Bb%3D"), "a+b=");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("plain"), "plain");
    }

    #[test]
    fn forgejo_wins_over_gitea_and_github() {
        let h = Headers::from_pairs([
            ("X-GitHub-Event", "push"),
            ("X-Gitea-Event", "push"),
            ("X-Gogs-Event", "push"),
            ("X-Forgejo-Event", "push"),
        ]);
        assert_eq!(detect_provider(&h), Some(Provider::Forgejo));
    }

    #[test]
    fn cloudevents_signed_with_standard_webhooks_is_cloudevents() {
        let h = Headers::from_pairs([("ce-specversion", "1.0"), ("webhook-id", "x")]);
        assert_eq!(detect_provider(&h), Some(Provider::CloudEvents));
        let h = Headers::from_pairs([("Content-Type", "application/cloudevents+json; charset=utf-8")]);
        assert_eq!(detect_provider(&h), Some(Provider::CloudEvents));
    }

    #[test]
    fn empty_secret_is_refused() {
        let h = Headers::from_pairs([("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "")]);
        let err = verify(&h, b"{}", &Secret::new(""), 0, &VerifyOptions::default()).unwrap_err();
        assert_eq!(err, VerifyError::NoSecret);
        assert_eq!(err.status(), 500);
    }

    #[test]
    fn gitee_signature_mode_and_url_encoding() {
        let secret = Secret::new("gitee-key");
        let ts = 1_700_000_000_123_i64;
        let sig = gitee_signature(b"gitee-key", ts);
        let encoded = sig.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
        for token in [sig.as_str(), encoded.as_str()] {
            let h = Headers::from_pairs([
                ("X-Gitee-Event", "Push Hook"),
                ("X-Gitee-Token", token),
                ("X-Gitee-Timestamp", &ts.to_string()),
            ]);
            assert_eq!(verify(&h, b"{}", &secret, 1_700_000_010, &VerifyOptions::default()), Ok(Provider::Gitee));
            let err = verify(&h, b"{}", &secret, 1_700_001_000, &VerifyOptions::default()).unwrap_err();
            assert!(matches!(err, VerifyError::StaleTimestamp { age_secs: 1000, .. }), "{err}");
        }
    }
}
