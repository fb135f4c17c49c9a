//! cosign's keyed signatures, byte for byte, so that a component signed by Skiff passes
//! `cosign verify --key cosign.pub --insecure-ignore-tlog` and a component signed by
//! `cosign sign --key cosign.key` passes Skiff. This module is pure: it builds and checks the
//! simple-signing payload, the signature annotation and cosign's encrypted key files; the
//! registry client pushes and pulls the `sha256-<hex>.sig` manifest with the constants here.
//!
//! Everything that comes from a registry (payload, signature) is hostile input: it is bounded
//! in size, parsed only after the signature over it checked out, and never makes this panic.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use crypto_secretbox::XSalsa20Poly1305;
use crypto_secretbox::aead::{Aead, KeyInit};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::spki::SubjectPublicKeyInfoRef;
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, ObjectIdentifier, PrivateKeyInfo,
};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The media type cosign gives the signature layer; `cosign verify` skips layers of any other
/// type, so a signature pushed under another type is invisible to it.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// The layer annotation that carries the base64 signature: cosign keeps the signature beside
/// the payload, not inside it, so the payload bytes stay exactly what was signed.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// The media type of the signature manifest itself; cosign pushes OCI manifests unless
/// `COSIGN_DOCKER_MEDIA_TYPES` is set, and registries that key on it then show it as cosign's.
pub const SIGNATURE_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// The media type of the signature manifest's config blob ([`signature_config`]); cosign builds
/// the signature as an ordinary image, so its config is an ordinary image config.
pub const SIGNATURE_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// `critical.type` of an image signature; cosign uses other payload types for attestations,
/// which must never be mistaken for a signature of the image.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";

/// The largest payload [`verify`] accepts. cosign's payload is about 250 bytes plus any
/// `-a key=value` annotations; anything near this bound is not a signature, and the fetcher
/// can refuse to download more than this.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// The largest key file read: a P-256 key in any of the accepted forms is under 1 KiB, and
/// scanning a pasted megabyte for a PEM block helps no one.
const MAX_PEM_BYTES: usize = 64 * 1024;

/// The longest signature annotation accepted: a DER ECDSA P-256 signature is at most 72 bytes,
/// 96 in base64; the slack admits line breaks some tools insert.
const MAX_SIGNATURE_CHARS: usize = 1024;

/// Label cosign ≥ 1.x writes for `generate-key-pair` output.
const SIGSTORE_ENCRYPTED_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// Label of keys written by older cosign releases, which current cosign still reads.
const COSIGN_ENCRYPTED_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";

/// cosign's default scrypt cost (go-securesystemslib `encrypted.Standard`, N = 2^16), so a key
/// written here costs an attacker as much as one written by `cosign generate-key-pair`.
const SCRYPT_LOG_N_WRITE: u8 = 16;
const SALT_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;

/// Go's `base64.StdEncoding`, which cosign decodes annotations and key files with: padding
/// required, but non-zero trailing bits tolerated (the default engine here would refuse them).
const GO_STD_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const OID_SECP256K1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.10");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_RSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_ED448: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.113");

/// Why a key, a signature or a payload was refused; each message names what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// Not `sha256:` and 64 lowercase hex characters.
    #[error(
        "`{digest}` is not a sha256 manifest digest; cosign's signature tag needs `sha256:` \
         followed by 64 lowercase hex characters"
    )]
    MalformedDigest { digest: String },
    /// A well-formed digest of another algorithm, for which cosign has no tag.
    #[error(
        "`{digest}` is not a sha256 digest; cosign's `sha256-<hex>.sig` signature tags exist only \
         for sha256 manifests, so refer to the component by its sha256 digest"
    )]
    UnsupportedDigest { digest: String },
    /// The text holds no `-----BEGIN …-----` line at all.
    #[error("no PEM block found; expected a `-----BEGIN {expected}-----` line")]
    NoPem { expected: &'static str },
    /// A PEM block that is cut short, has headers, or is not base64.
    #[error("the PEM block is malformed ({reason}); check that the key file was copied whole")]
    MalformedPem { reason: String },
    /// More text than any key file; refused before scanning it.
    #[error(
        "the key text is {size} bytes, more than the {max} a key file can be; give the key \
         file itself"
    )]
    PemTooLarge { size: usize, max: usize },
    /// A PEM block of the wrong kind for the place it was given (a certificate for a key…).
    #[error("the PEM block is `{label}`, but {expected} is needed here{hint}")]
    UnexpectedPem { label: String, expected: &'static str, hint: &'static str },
    /// A key, but not ECDSA P-256.
    #[error(
        "the key is {found}, but Skiff signs and verifies only ECDSA P-256 keys, the kind \
         `cosign generate-key-pair` makes; create one with `cosign generate-key-pair`"
    )]
    NotP256 { found: String },
    /// A PEM block of the right kind whose DER is not a key.
    #[error("the key is not a valid DER key ({reason}); the file is damaged or holds no key")]
    InvalidKey { reason: String },
    /// A cosign-encrypted key and no password.
    #[error("the private key is encrypted (cosign's format); give its password")]
    PasswordRequired,
    /// The password does not open the key (secretbox authentication failed).
    #[error("could not decrypt the private key: the password is wrong (or the key file was altered)")]
    WrongPassword,
    /// cosign's key label around something that is not its JSON.
    #[error("the encrypted private key is not in cosign's format ({reason}); the file is damaged")]
    MalformedEncryptedKey { reason: String },
    /// A key derivation, cipher or scrypt cost that cosign does not write.
    #[error(
        "the encrypted private key uses {detail}, which cosign never writes; re-create it with \
         `cosign generate-key-pair` or `cosign import-key-pair`"
    )]
    UnsupportedEncryption { detail: String },
    /// Encoding or sealing the key failed; not expected for a valid key.
    #[error("could not encrypt the private key ({reason})")]
    Encryption { reason: String },
    /// The OS random source failed while making a salt or nonce.
    #[error("the system's random number generator failed ({reason}); try again")]
    Random { reason: String },
    /// Verification asked with an empty trust list.
    #[error(
        "no trusted public keys are configured, so no signature can be accepted; add the \
         signer's public key (the `cosign.pub` that `cosign generate-key-pair` wrote)"
    )]
    NoTrustedKeys,
    /// A payload beyond [`MAX_PAYLOAD_BYTES`].
    #[error(
        "the signed payload is {size} bytes, more than the {max} a cosign signature payload can \
         be; the registry served something that is not a cosign signature"
    )]
    PayloadTooLarge { size: usize, max: usize },
    /// The signature annotation is not base64.
    #[error(
        "the `dev.cosignproject.cosign/signature` annotation is not standard base64 ({reason}); \
         the signature manifest is damaged"
    )]
    MalformedBase64 { reason: String },
    /// The decoded signature is not a DER ECDSA P-256 signature.
    #[error(
        "the signature is not an ASN.1 DER ECDSA P-256 signature ({reason}); it was made with \
         another kind of key, or the signature manifest is damaged"
    )]
    MalformedSignature { reason: String },
    /// No trusted key verifies the signature; `fingerprints` are the short
    /// fingerprints of the keys tried.
    #[error(
        "the signature was not made by any trusted key (tried {tried}); it was signed with a key \
         Skiff does not trust (add that key's public PEM if you trust it), or the payload was \
         altered after signing",
        tried = .fingerprints.join(", ")
    )]
    UntrustedSignature { fingerprints: Vec<String> },
    /// A signed payload that is not a simple-signing JSON document.
    #[error("the signed payload is not a cosign simple-signing document ({reason})")]
    MalformedPayload { reason: String },
    /// A signed payload of another `critical.type`.
    #[error(
        "the signed payload has type `{found}`, not `cosign container image signature`; it is \
         another kind of cosign document (an attestation?) and does not sign the component"
    )]
    WrongPayloadType { found: String },
    /// A valid signature over a payload for another manifest.
    #[error(
        "the signature is for manifest `{signed}`, not `{expected}`: it was copied from another \
         component (or the tag moved after signing); sign `{expected}` itself"
    )]
    DigestMismatch { signed: String, expected: String },
}

/// The tag cosign looks under for signatures of `manifest_digest` (`sha256:ab…` →
/// `sha256-ab….sig`): there is no index from a manifest to its signatures, only this naming
/// convention, so Skiff must use exactly cosign's.
pub fn signature_tag(manifest_digest: &str) -> Result<String, SignatureError> {
    let hex = sha256_hex(manifest_digest)?;
    Ok(format!("sha256-{hex}.sig"))
}

/// The bytes cosign signs for `manifest_digest` in repository `docker_reference`, identical to
/// what `cosign sign` writes (Go's `encoding/json` output, `"optional":null` when no `-a`
/// annotations are given), so the layer digest matches a cosign-made signature of the same
/// image. `docker_reference` is what cosign puts there: registry host and repository path, no
/// tag or digest (`ghcr.io/org/step`; Docker Hub images are `index.docker.io/library/name`).
/// cosign does not check it when verifying with a key; Skiff does not either.
pub fn payload(docker_reference: &str, manifest_digest: &str) -> Vec<u8> {
    let mut out = String::with_capacity(200 + docker_reference.len() + manifest_digest.len());
    out.push_str(r#"{"critical":{"identity":{"docker-reference":"#);
    push_go_json_string(&mut out, docker_reference);
    out.push_str(r#"},"image":{"docker-manifest-digest":"#);
    push_go_json_string(&mut out, manifest_digest);
    out.push_str(r#"},"type":"#);
    push_go_json_string(&mut out, SIGNATURE_TYPE);
    out.push_str(r#"},"optional":null}"#);
    out.into_bytes()
}

/// The config blob for a signature manifest whose layers have these digests (in layer order),
/// shaped as cosign's (an empty image config whose `rootfs.diff_ids` are the payload digests),
/// so tools that fetch it find a valid image config. cosign stamps the signing time in
/// `created`; this writes the zero time instead so that re-signing the same payloads yields the
/// same blob. No verifier reads the config.
pub fn signature_config(layer_digests: &[&str]) -> Vec<u8> {
    config_json(GO_ZERO_TIME, layer_digests)
}

/// Go's `time.Time{}` as `encoding/json` writes it; go-containerregistry leaves each layer's
/// history entry at this value.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn config_json(created: &str, layer_digests: &[&str]) -> Vec<u8> {
    // Field order follows go-containerregistry's `v1.ConfigFile`, so the blob is byte-identical
    // to cosign's when `created` is the same.
    #[derive(Serialize)]
    struct Config<'a> {
        architecture: &'a str,
        created: &'a str,
        history: Vec<History>,
        os: &'a str,
        rootfs: RootFs<'a>,
        config: Empty,
    }
    #[derive(Serialize)]
    struct History {
        created: &'static str,
    }
    #[derive(Serialize)]
    struct RootFs<'a> {
        r#type: &'a str,
        diff_ids: &'a [&'a str],
    }
    #[derive(Serialize)]
    struct Empty {}

    let config = Config {
        architecture: "",
        created,
        history: layer_digests.iter().map(|_| History { created: GO_ZERO_TIME }).collect(),
        os: "",
        rootfs: RootFs { r#type: "layers", diff_ids: layer_digests },
        config: Empty {},
    };
    // Serializing plain strings and vectors into memory cannot fail.
    serde_json::to_vec(&config).unwrap_or_default()
}

/// A P-256 private key: cosign's default and the only kind Skiff signs with, so every Skiff
/// signature verifies with plain `cosign verify --key`.
#[derive(Clone)]
pub struct SigningKey {
    inner: p256::ecdsa::SigningKey,
}

impl SigningKey {
    /// A fresh key from the operating system's random source, for `skiff` to make a key pair
    /// without cosign installed.
    pub fn generate() -> Self {
        Self { inner: p256::ecdsa::SigningKey::random(&mut OsRng) }
    }

    /// Reads the key forms people actually hold: PKCS#8 `PRIVATE KEY` and SEC1 `EC PRIVATE KEY`
    /// (openssl), or cosign's encrypted key (`ENCRYPTED SIGSTORE PRIVATE KEY`, and the older
    /// `ENCRYPTED COSIGN PRIVATE KEY`), which needs `password`. cosign keys made with an empty
    /// password need `Some(b"")`. A password given for an unencrypted key is ignored, so callers
    /// may pass whatever the environment holds.
    pub fn from_pem(pem: &str, password: Option<&[u8]>) -> Result<Self, SignatureError> {
        let block = parse_pem(pem, "PRIVATE KEY")?;
        let secret = match block.label.as_str() {
            "PRIVATE KEY" => secret_from_pkcs8(&block.der)?,
            "EC PRIVATE KEY" => secret_from_sec1(&block.der)?,
            SIGSTORE_ENCRYPTED_LABEL | COSIGN_ENCRYPTED_LABEL => {
                let password = password.ok_or(SignatureError::PasswordRequired)?;
                let der = decrypt_cosign(&block.der, password)?;
                // cosign stores PKCS#8; a SEC1 body (which cosign itself refuses) holds the same
                // key, and reading it lets Skiff sign with a key cosign wrapped by mistake.
                match secret_from_pkcs8(&der) {
                    Err(SignatureError::InvalidKey { .. }) => secret_from_sec1(&der)?,
                    other => other?,
                }
            }
            "RSA PRIVATE KEY" => {
                return Err(SignatureError::NotP256 { found: "an RSA key".into() });
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(SignatureError::UnexpectedPem {
                    label: block.label,
                    expected: "an unencrypted or cosign-encrypted private key",
                    hint: "; convert it with `cosign import-key-pair --key key.pem`, or decrypt it \
                           with `openssl pkcs8 -in key.pem -out plain.pem`",
                });
            }
            "PUBLIC KEY" => {
                return Err(SignatureError::UnexpectedPem {
                    label: block.label,
                    expected: "the private key",
                    hint: "; signing needs the private key (`cosign.key`), not the public key",
                });
            }
            _ => {
                return Err(SignatureError::UnexpectedPem {
                    label: block.label,
                    expected: "a private key",
                    hint: " (`PRIVATE KEY`, `EC PRIVATE KEY` or cosign's \
                           `ENCRYPTED SIGSTORE PRIVATE KEY`)",
                });
            }
        };
        Ok(Self { inner: p256::ecdsa::SigningKey::from(secret) })
    }

    /// Unencrypted PKCS#8, the form openssl and most tools read; protect the file it goes to.
    pub fn to_pem(&self) -> String {
        match self.inner.to_pkcs8_der() {
            Ok(der) => encode_pem("PRIVATE KEY", der.as_bytes()),
            // Encoding a valid P-256 key into memory cannot fail.
            Err(_) => String::new(),
        }
    }

    /// cosign's encrypted key file (scrypt N=2^16 and NaCl secretbox, as `cosign
    /// generate-key-pair` writes today), so `cosign sign --key` can use a key Skiff made.
    pub fn to_encrypted_pem(&self, password: &[u8]) -> Result<String, SignatureError> {
        let der = self.inner.to_pkcs8_der().map_err(|e| SignatureError::Encryption { reason: e.to_string() })?;
        let body = encrypt_cosign(der.as_bytes(), password)?;
        Ok(encode_pem(SIGSTORE_ENCRYPTED_LABEL, &body))
    }

    /// The key verifiers must trust; distribute it as [`PublicKey::to_pem`].
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_verifying_key(*self.inner.verifying_key())
    }

    /// The value of the [`SIGNATURE_ANNOTATION`] for `payload`: standard base64 of the DER
    /// ECDSA signature over SHA-256 of the payload, as cosign writes it.
    pub fn sign(&self, payload: &[u8]) -> String {
        let signature: Signature = self.inner.sign(payload);
        STANDARD.encode(signature.to_der().as_bytes())
    }
}

impl fmt::Debug for SigningKey {
    // Never print key material, even into a debug log; the fingerprint identifies the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("public_key", &self.public_key().fingerprint()).finish_non_exhaustive()
    }
}

/// A trusted P-256 public key, as in the `cosign.pub` that `cosign generate-key-pair` writes.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    inner: VerifyingKey,
    /// Canonical (uncompressed) SubjectPublicKeyInfo DER, so one key has one fingerprint
    /// whichever encoding it was read from.
    der: Vec<u8>,
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` (PKIX SubjectPublicKeyInfo), the form cosign and openssl write.
    pub fn from_pem(pem: &str) -> Result<Self, SignatureError> {
        let block = parse_pem(pem, "PUBLIC KEY")?;
        match block.label.as_str() {
            "PUBLIC KEY" => {}
            "CERTIFICATE" => {
                return Err(SignatureError::UnexpectedPem {
                    label: block.label,
                    expected: "a public key",
                    hint: "; take the key out of the certificate with \
                           `openssl x509 -pubkey -noout -in cert.pem`",
                });
            }
            "RSA PUBLIC KEY" => {
                return Err(SignatureError::NotP256 { found: "an RSA key".into() });
            }
            label if label.contains("PRIVATE KEY") => {
                return Err(SignatureError::UnexpectedPem {
                    label: block.label,
                    expected: "a public key",
                    hint: "; this is a private key, which must stay with the signer: trust the \
                           public key instead (`cosign public-key --key cosign.key` prints it)",
                });
            }
            _ => {
                return Err(SignatureError::UnexpectedPem {
                    label: block.label,
                    expected: "a public key (`PUBLIC KEY`)",
                    hint: "",
                });
            }
        }
        let spki = SubjectPublicKeyInfoRef::try_from(block.der.as_slice())
            .map_err(|e| SignatureError::InvalidKey { reason: e.to_string() })?;
        check_p256(spki.algorithm.oid, spki.algorithm.parameters_oid().ok())?;
        let key = VerifyingKey::from_public_key_der(&block.der)
            .map_err(|e| SignatureError::InvalidKey { reason: e.to_string() })?;
        Ok(Self::from_verifying_key(key))
    }

    fn from_verifying_key(inner: VerifyingKey) -> Self {
        let der = inner.to_public_key_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default();
        Self { inner, der }
    }

    /// The PEM to hand to `cosign verify --key`, byte-identical to cosign's `cosign.pub`.
    pub fn to_pem(&self) -> String {
        encode_pem("PUBLIC KEY", &self.der)
    }

    /// SHA-256 of the DER SubjectPublicKeyInfo in hex, so messages can name a key without
    /// printing it; `openssl pkey -pubin -outform der | sha256sum` gives the same value.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.der))
    }

    fn short_fingerprint(&self) -> String {
        let fingerprint = self.fingerprint();
        format!("{}…", &fingerprint[..16])
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PublicKey").field(&self.fingerprint()).finish()
    }
}

/// Checks one signature: the signature over payload verifies with one of `keys`, the payload is a
/// cosign simple-signing payload of type "cosign container image signature" whose
/// docker-manifest-digest equals `manifest_digest`. Returns the index of the key that verified.
///
/// The signature is checked before the payload is parsed, so unsigned bytes from a registry are
/// never interpreted. As in cosign, `docker-reference` and `optional` are not checked: a
/// signature stays valid when the component is copied to another repository.
pub fn verify(
    keys: &[PublicKey],
    payload: &[u8],
    signature_b64: &str,
    manifest_digest: &str,
) -> Result<usize, SignatureError> {
    if keys.is_empty() {
        return Err(SignatureError::NoTrustedKeys);
    }
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(SignatureError::PayloadTooLarge { size: payload.len(), max: MAX_PAYLOAD_BYTES });
    }
    let signature = decode_signature(signature_b64)?;
    let index = keys.iter().position(|key| key.inner.verify(payload, &signature).is_ok()).ok_or_else(|| {
        SignatureError::UntrustedSignature { fingerprints: keys.iter().map(PublicKey::short_fingerprint).collect() }
    })?;

    let document: SimpleSigning =
        serde_json::from_slice(payload).map_err(|e| SignatureError::MalformedPayload { reason: e.to_string() })?;
    if document.critical.kind != SIGNATURE_TYPE {
        return Err(SignatureError::WrongPayloadType { found: document.critical.kind });
    }
    if document.critical.image.docker_manifest_digest != manifest_digest {
        return Err(SignatureError::DigestMismatch {
            signed: document.critical.image.docker_manifest_digest,
            expected: manifest_digest.to_owned(),
        });
    }
    Ok(index)
}

/// The part of the simple-signing document a verifier relies on; unknown fields (and
/// `identity`, `optional`) are accepted as cosign accepts them.
#[derive(Deserialize)]
struct SimpleSigning {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

fn decode_signature(signature_b64: &str) -> Result<Signature, SignatureError> {
    if signature_b64.len() > MAX_SIGNATURE_CHARS {
        return Err(SignatureError::MalformedSignature {
            reason: format!("it is {} characters long; a P-256 signature is at most 96", signature_b64.len()),
        });
    }
    // Go's decoder skips line breaks anywhere; cosign reads the annotation with it.
    let compact: String = signature_b64.trim().chars().filter(|c| *c != '\r' && *c != '\n').collect();
    let der = GO_STD_BASE64.decode(compact).map_err(|e| SignatureError::MalformedBase64 { reason: e.to_string() })?;
    Signature::from_der(&der).map_err(|e| SignatureError::MalformedSignature { reason: e.to_string() })
}

/// The hex of a well-formed `sha256:<64 lowercase hex>` digest.
fn sha256_hex(digest: &str) -> Result<&str, SignatureError> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(SignatureError::MalformedDigest { digest: digest.to_owned() });
    };
    if algorithm != "sha256" {
        let well_formed_algorithm = !algorithm.is_empty()
            && algorithm.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
        return Err(if well_formed_algorithm && !hex.is_empty() {
            SignatureError::UnsupportedDigest { digest: digest.to_owned() }
        } else {
            SignatureError::MalformedDigest { digest: digest.to_owned() }
        });
    }
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(SignatureError::MalformedDigest { digest: digest.to_owned() });
    }
    Ok(hex)
}

/// Appends `s` as a JSON string exactly as Go's `encoding/json` writes it (HTML-safe escapes of
/// `<`, `>`, `&`, U+2028 and U+2029; `\b` and `\f` as Go ≥ 1.22 does), because the payload's
/// bytes, not its meaning, are what is signed and digested.
fn push_go_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

struct PemBlock {
    label: String,
    der: Vec<u8>,
}

/// The first PEM block in `text`. Hand-written rather than strict RFC 7468 because key files
/// arrive pasted into secrets and config with odd line lengths, CRLF and surrounding text,
/// which Go's `pem.Decode` (and so cosign) tolerates too.
fn parse_pem(text: &str, expected: &'static str) -> Result<PemBlock, SignatureError> {
    if text.len() > MAX_PEM_BYTES {
        return Err(SignatureError::PemTooLarge { size: text.len(), max: MAX_PEM_BYTES });
    }
    const BEGIN: &str = "-----BEGIN ";
    const DASHES: &str = "-----";
    let start = text.find(BEGIN).ok_or(SignatureError::NoPem { expected })?;
    let after_begin = &text[start + BEGIN.len()..];
    let label_end = after_begin
        .find(DASHES)
        .ok_or_else(|| SignatureError::MalformedPem { reason: "the BEGIN line does not end with `-----`".into() })?;
    let label = &after_begin[..label_end];
    if label.contains(['\n', '\r']) {
        return Err(SignatureError::MalformedPem { reason: "the BEGIN line does not end with `-----`".into() });
    }
    let rest = &after_begin[label_end + DASHES.len()..];
    let end_marker = format!("-----END {label}-----");
    let body_end = rest
        .find(&end_marker)
        .ok_or_else(|| SignatureError::MalformedPem { reason: format!("there is no `{end_marker}` line") })?;
    let body = &rest[..body_end];
    if body.contains(':') {
        return Err(SignatureError::MalformedPem {
            reason: "it has headers, as legacy OpenSSL-encrypted keys do; convert the key with \
                     `openssl pkcs8 -topk8 -nocrypt`"
                .into(),
        });
    }
    let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = GO_STD_BASE64
        .decode(compact)
        .map_err(|e| SignatureError::MalformedPem { reason: format!("its body is not base64: {e}") })?;
    Ok(PemBlock { label: label.to_owned(), der })
}

/// PEM as Go's `pem.EncodeToMemory` writes it (64-column lines, trailing newline), so files
/// written here are byte-identical to cosign's.
fn encode_pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for (i, c) in body.chars().enumerate() {
        if i > 0 && i % 64 == 0 {
            out.push('\n');
        }
        out.push(c);
    }
    if !body.is_empty() {
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

fn secret_from_pkcs8(der: &[u8]) -> Result<p256::SecretKey, SignatureError> {
    let info = PrivateKeyInfo::try_from(der).map_err(|e| SignatureError::InvalidKey { reason: e.to_string() })?;
    check_p256(info.algorithm.oid, info.algorithm.parameters_oid().ok())?;
    p256::SecretKey::from_pkcs8_der(der).map_err(|e| SignatureError::InvalidKey { reason: e.to_string() })
}

fn secret_from_sec1(der: &[u8]) -> Result<p256::SecretKey, SignatureError> {
    p256::SecretKey::from_sec1_der(der).map_err(|_| {
        // SEC1 names its curve by OID inside; finding another curve's OID explains the failure
        // better than a DER error would.
        let other_curve = [OID_P384, OID_P521, OID_SECP256K1].into_iter().find(|oid| contains(der, oid.as_bytes()));
        match other_curve {
            Some(oid) => SignatureError::NotP256 { found: describe_curve(oid) },
            None => SignatureError::InvalidKey { reason: "not a SEC1 P-256 private key".into() },
        }
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn check_p256(algorithm: ObjectIdentifier, curve: Option<ObjectIdentifier>) -> Result<(), SignatureError> {
    if algorithm != OID_EC_PUBLIC_KEY {
        let found = match algorithm {
            OID_RSA | OID_RSA_PSS => "an RSA key".to_owned(),
            OID_ED25519 => "an Ed25519 key".to_owned(),
            OID_ED448 => "an Ed448 key".to_owned(),
            other => format!("a key of algorithm {other}"),
        };
        return Err(SignatureError::NotP256 { found });
    }
    match curve {
        Some(OID_P256) => Ok(()),
        Some(other) => Err(SignatureError::NotP256 { found: describe_curve(other) }),
        None => Err(SignatureError::NotP256 { found: "an EC key without a named curve".into() }),
    }
}

fn describe_curve(curve: ObjectIdentifier) -> String {
    match curve {
        OID_P384 => "an EC key on P-384".into(),
        OID_P521 => "an EC key on P-521".into(),
        OID_SECP256K1 => "an EC key on secp256k1".into(),
        other => format!("an EC key on curve {other}"),
    }
}

/// go-securesystemslib's `encrypted` JSON, which cosign wraps its private keys in; field names
/// and order are Go's so cosign reads what is written here.
#[derive(Serialize, Deserialize)]
struct EncryptedKey {
    kdf: Kdf,
    cipher: Cipher,
    #[serde(serialize_with = "base64_out", deserialize_with = "base64_in")]
    ciphertext: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    #[serde(serialize_with = "base64_out", deserialize_with = "base64_in")]
    salt: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u64,
    p: u64,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    #[serde(serialize_with = "base64_out", deserialize_with = "base64_in")]
    nonce: Vec<u8>,
}

/// Go's `encoding/json` writes `[]byte` as standard base64.
fn base64_out<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&STANDARD.encode(bytes))
}

fn base64_in<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(deserializer)?;
    GO_STD_BASE64.decode(text).map_err(serde::de::Error::custom)
}

/// The scrypt cost as log2(N) for the parameter sets go-securesystemslib accepts (Legacy 2^15,
/// Standard 2^16, OWASP 2^17, all r=8 p=1). Any other value is refused, as cosign refuses it:
/// a key file must not be able to demand unbounded memory or time.
fn scrypt_log_n(params: &ScryptParams) -> Option<u8> {
    match (params.n, params.r, params.p) {
        (32_768, 8, 1) => Some(15),
        (65_536, 8, 1) => Some(16),
        (131_072, 8, 1) => Some(17),
        _ => None,
    }
}

fn derive_key(password: &[u8], salt: &[u8], log_n: u8) -> Result<Zeroizing<[u8; 32]>, SignatureError> {
    let params = scrypt::Params::new(log_n, 8, 1, 32).map_err(|e| SignatureError::UnsupportedEncryption {
        detail: format!("scrypt parameters this build cannot run ({e})"),
    })?;
    let mut key = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(password, salt, &params, key.as_mut_slice()).map_err(|e| SignatureError::UnsupportedEncryption {
        detail: format!("scrypt parameters this build cannot run ({e})"),
    })?;
    Ok(key)
}

fn decrypt_cosign(body: &[u8], password: &[u8]) -> Result<Zeroizing<Vec<u8>>, SignatureError> {
    let data: EncryptedKey =
        serde_json::from_slice(body).map_err(|e| SignatureError::MalformedEncryptedKey { reason: e.to_string() })?;
    if data.kdf.name != "scrypt" {
        return Err(SignatureError::UnsupportedEncryption {
            detail: format!("the key derivation `{}`", data.kdf.name),
        });
    }
    if data.cipher.name != "nacl/secretbox" {
        return Err(SignatureError::UnsupportedEncryption { detail: format!("the cipher `{}`", data.cipher.name) });
    }
    let params = &data.kdf.params;
    let log_n = scrypt_log_n(params).ok_or_else(|| SignatureError::UnsupportedEncryption {
        detail: format!(
            "scrypt parameters N={}, r={}, p={} (cosign uses N=32768, 65536 or 131072 with r=8, p=1)",
            params.n, params.r, params.p
        ),
    })?;
    if data.cipher.nonce.len() != NONCE_BYTES {
        return Err(SignatureError::MalformedEncryptedKey {
            reason: format!("the nonce is {} bytes, not {NONCE_BYTES}", data.cipher.nonce.len()),
        });
    }
    let key = derive_key(password, &data.kdf.salt, log_n)?;
    let cipher = XSalsa20Poly1305::new(crypto_secretbox::Key::from_slice(key.as_slice()));
    cipher
        .decrypt(crypto_secretbox::Nonce::from_slice(&data.cipher.nonce), data.ciphertext.as_slice())
        .map(Zeroizing::new)
        .map_err(|_| SignatureError::WrongPassword)
}

fn encrypt_cosign(plaintext: &[u8], password: &[u8]) -> Result<Vec<u8>, SignatureError> {
    let mut salt = [0u8; SALT_BYTES];
    let mut nonce = [0u8; NONCE_BYTES];
    for buffer in [&mut salt[..], &mut nonce[..]] {
        OsRng.try_fill_bytes(buffer).map_err(|e| SignatureError::Random { reason: e.to_string() })?;
    }
    let key = derive_key(password, &salt, SCRYPT_LOG_N_WRITE)?;
    let cipher = XSalsa20Poly1305::new(crypto_secretbox::Key::from_slice(key.as_slice()));
    let ciphertext = cipher
        .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), plaintext)
        .map_err(|e| SignatureError::Encryption { reason: e.to_string() })?;
    let data = EncryptedKey {
        kdf: Kdf {
            name: "scrypt".into(),
            params: ScryptParams { n: 1 << SCRYPT_LOG_N_WRITE, r: 8, p: 1 },
            salt: salt.to_vec(),
        },
        cipher: Cipher { name: "nacl/secretbox".into(), nonce: nonce.to_vec() },
        ciphertext,
    };
    serde_json::to_vec(&data).map_err(|e| SignatureError::Encryption { reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DIGEST: &str = "sha256:4c1c50d0ffc614f90b93b07d778028dc765548e823f676fb027f61d281ac380d";
    const OTHER_DIGEST: &str = "sha256:f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b";

    fn sha256_hex_of(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    // ---- Fixtures from real cosign output --------------------------------------------------

    // A keyed signature made by `cosign sign -key cosign.key registry-testing.svc.lan/busybox`,
    // from sigstore/sigstore-rs, src/cosign/signature_layers.rs
    // (`build_correct_signature_layer_without_bundle`, whose test `verify_with_key` checks it).
    // The payload there is `serde_json::to_vec` of a `json!` value with sorted keys, which is
    // exactly cosign's field order; the bytes are spelled out here.
    const SIGSTORE_RS_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAENptdY/l3nB0yqkXLBWkZWQwo6+cu
OSWS1X9vPavpiQOoTTGC0xX57OojUadxF1cdQmrsiReWg2Wn4FneJfa8xw==
-----END PUBLIC KEY-----";
    const SIGSTORE_RS_SIGNATURE: &str =
        "MEUCIQD6q/COgzOyW0YH1Dk+CCYSt4uAhm3FDHUwvPI55zwnlwIgE0ZK58ZOWpZw8YVmBapJhBqCfdPekIknimuO0xH8Jh8=";
    const SIGSTORE_RS_PAYLOAD: &str = r#"{"critical":{"identity":{"docker-reference":"registry-testing.svc.lan/busybox"},"image":{"docker-manifest-digest":"sha256:f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b"},"type":"cosign container image signature"},"optional":null}"#;
    // Another P-256 key from the same file (`is_signed_by_key_fails_when_signature_is_not_valid`).
    const SIGSTORE_RS_OTHER_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAETJP9cqpUQsn2ggmJniWGjHdlsHzD
JsB89BPhZYch0U0hKANx5TY+ncrm0s8bfJxxHoenAEFhwhuXeb4PqIrtoQ==
-----END PUBLIC KEY-----";

    // A signature manifest pushed by cosign v1.13.1 (`cosign sign --key cosign.key
    // chihjenhuang/cosign1:t1`, traced with `-d`), from a public markdown note of cosign's
    // registry traffic found in the search index (id 39613455; the index does not name its
    // repository). It gives the layer's digest and size, the config blob's digest and size
    // with the `created` time cosign stamped, and the signature annotation.
    const COSIGN_1_13_REFERENCE: &str = "index.docker.io/chihjenhuang/cosign1";
    const COSIGN_1_13_PAYLOAD_DIGEST: &str = "b671489ededd1a180bd87235bba00fd83354f9c7d13b71d9f8b66a8e52965ebc";
    const COSIGN_1_13_CONFIG_CREATED: &str = "2023-02-17T09:25:33.91047962-08:00";
    const COSIGN_1_13_CONFIG_DIGEST: &str = "85ad8e17d3d7c00664855c638832bd99f32d42542c2d587851410a45a7f60b95";
    const COSIGN_1_13_SIGNATURE: &str =
        "MEYCIQCPH7NJAIfrB6BZN91dV0o7l/i11muXrvrAh100jDMMhAIhAPsLH0oXb2OPITXRpWBMUd3vHtz5Ks5pql2Hr6t/IJXw";

    // Written by `cosign generate-key-pair` with an empty password (scrypt N=65536), from
    // sigstore/sigstore-rs, tests/data/keys/cosign_generated_encrypted_empty_private.key.
    const COSIGN_GENERATED_EMPTY_PASSWORD_KEY: &str = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----
eyJrZGYiOnsibmFtZSI6InNjcnlwdCIsInBhcmFtcyI6eyJOIjo2NTUzNiwiciI6
OCwicCI6MX0sInNhbHQiOiJFY3pJR3Z0bnpFcCsxaEpudERnbGI1UnoxN3gwQVMy
YklvWGRNcDQrU1NJPSJ9LCJjaXBoZXIiOnsibmFtZSI6Im5hY2wvc2VjcmV0Ym94
Iiwibm9uY2UiOiJtSVVKbG1OMzNINExvZ0dhaG5MamdmK3R4SmJwci93MCJ9LCJj
aXBoZXJ0ZXh0IjoiM3FtS2FidXRuYm1WT1IvTkZGM2NDaUErTXp1WWQ5L0VERDVI
MVlUSGhQVzZsSzAvdjVqdDZCQzlsME12NGV5am9qZkl0d3B6a2JJOXQrZGx5VXZ3
VUgvMWZjbkFZT2dEdXRLQzkvSkNiOE02SVY2VHpVaDF5c0ZFWDFzeG9xb1FzeUpL
bjM0UVlldFNlaVdDaGtmUHUyZXByQjFEV0pwekdzTGZIakxNVTkzOEdmNk1xM1A0
N0ZSd2syZzY1cFZnSGMwVWV1L1N1OUs0Zmc9PSJ9
-----END ENCRYPTED SIGSTORE PRIVATE KEY-----
";

    // Older label, scrypt N=32768, password "123", from sigstore/sigstore-rs,
    // tests/data/keys/ecdsa_encrypted_private.key (password from src/crypto/signing_key/ecdsa/ec.rs).
    const SIGSTORE_RS_COSIGN_LABEL_KEY: &str = "-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----
eyJrZGYiOnsibmFtZSI6InNjcnlwdCIsInBhcmFtcyI6eyJOIjozMjc2OCwiciI6
OCwicCI6MX0sInNhbHQiOiIrRFJrTXNRZmNUNTNKNCs1Y3VkUnlnWTUyWUMrK0RW
TmxaSTN4VnlwWFlvPSJ9LCJjaXBoZXIiOnsibmFtZSI6Im5hY2wvc2VjcmV0Ym94
Iiwibm9uY2UiOiJnNTFORnBqQUxlemhvbGVWTWVjUFJUNUErMVhMcDAxeiJ9LCJj
aXBoZXJ0ZXh0Ijoib0YvN09mOGlQRDlkNlc2Mk5SWGVibEszWXZmNFFucTZORm16
Q0VyV2FTVUJOZTNXSFJiRVNYK2dJOCszejg4TDBDVXlWdm9LTHhuR0xhVnhnczVD
YUdyekcrMWxFTEI1cGRMVmZXd1VlQzlLelNab0hxZHZLaUsvUmNodVhpS0VqYmdv
ajNGd2pMcmhEYkY5a2lVWk93REpuT01kUkoxNnI3emxjRHdwT3htOXFrbWFDWDlB
VjQ4b1RXVG0rQXExOHlDZE50MDYybGdudVE9PSJ9
-----END ENCRYPTED COSIGN PRIVATE KEY-----
";

    // From sigstore/cosign, pkg/cosign/keys_test.go (`pemcosigneckey`, password "hello"): an EC
    // key under the old label whose body is SEC1, not PKCS#8 (cosign itself refuses it).
    const COSIGN_TEST_SEC1_BODY_KEY: &str = "-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----
eyJrZGYiOnsibmFtZSI6InNjcnlwdCIsInBhcmFtcyI6eyJOIjo2NTUzNiwiciI6
OCwicCI6MX0sInNhbHQiOiJHK3F5WTYrNzhNS0JzMXNGTGs1ajYwcS9kS3Z1czBW
VkhlSHZybC9POTF3PSJ9LCJjaXBoZXIiOnsibmFtZSI6Im5hY2wvc2VjcmV0Ym94
Iiwibm9uY2UiOiJRc2JGdG13WDRDK2ttV3ZCcVRaMEFGOUFYdk1jRmg1SCJ9LCJj
aXBoZXJ0ZXh0IjoiREM5T28zeldiYVQzSXYwdFVnWEdycjUxYW1samwwNlQ5MTNP
VkxPbWpuMWhnK2o2WXRUbWg3SGhZSlY1N2J5eGE0Q281bE9YYmRqbTJ3aklubEd1
Um5aZCt5OExnekpSNzFSeEhKVzgrWmRlcFJmYWJMTjdHbDgrSFZEcERVQ3NxQnRh
VngyblpGbFEwWUl1anZwbFphblNGaUVvdERLVGkxZ3VhUXIwUHNzYU01NXZxbTRY
WS9rPSJ9
-----END ENCRYPTED COSIGN PRIVATE KEY-----";

    // From sigstore/cosign, pkg/cosign/keys_test.go (`pemcosignkey`, password "hello", scrypt
    // N=32768). The test there calls it an RSA key; it decrypts to a P-256 PKCS#8 key.
    const COSIGN_TEST_OLD_LABEL_KEY: &str = "-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----
eyJrZGYiOnsibmFtZSI6InNjcnlwdCIsInBhcmFtcyI6eyJOIjozMjc2OCwiciI6
OCwicCI6MX0sInNhbHQiOiJ4WWdoc09JTUxUWGNOT0RsclNIOUNKc1FlOVFnZmN1
cmUrMXlLdHh1TlkwPSJ9LCJjaXBoZXIiOnsibmFtZSI6Im5hY2wvc2VjcmV0Ym94
Iiwibm9uY2UiOiI0cS9PSlVmaXJkSUkrUjZ0ajZBMmcyQ0JqL25xdFNicCJ9LCJj
aXBoZXJ0ZXh0IjoiKzB4Q3NzcFN0WStBczdKanJpOWtsbHBWd2JhcUI4ZWJNdWto
eS9aVE1MSXRsL3B1YS9jWVJvbytLRGxMWWdmOW1kSjk4K1FnQW9oTktoYnJPMTcw
MHdBY1JTMjFDOE4zQUNJRUVZaWpOMllBNnMraGJSbkhjUnd4eGhDMDFtb2FvL0dO
Y1pmbEJheXZMV3pXblo4d2NDZ2ZpT1o1VXlRTEFJMHh0dnR6dEh3cTdDV1Vhd3V4
RlhlNDZzck9TUE9SNHN6bytabWErUGovSFE9PSJ9
-----END ENCRYPTED COSIGN PRIVATE KEY-----";

    // Unencrypted keys from sigstore/cosign, pkg/cosign/keys_test.go (`validecp256`,
    // `validecpkcs8`, `validecp384`, `ed25519key`, `invalidrsawithpubkey`).
    const COSIGN_TEST_EC_P256_SEC1: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIIGhcmCI5F7BPMH4r3pWCpQdAsveErdU5DjvVQerErJuoAoGCCqGSM49
AwEHoUQDQgAE+9E3Qe+h25ofmz3Uo2T004Dfy49iX06MMbxf9rsGmLkOPrS0KYDl
1QMfFuSbrtf8wTWNT9HNxrW/Foz39mDhHw==
-----END EC PRIVATE KEY-----";
    const COSIGN_TEST_EC_P256_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgmKnLL81dCEYc6Spq
rFukFeTnU5JjtXfeNHAXJj3hYTahRANCAATjp4/Z4tUbZwUdId07GQeUdwLll4Br
YLP25Fk+mBY2G0lyKqjqLG5hxhimbEJH6j+lzg5tcYpQgzXtOJ66Zi0N
-----END PRIVATE KEY-----";
    const COSIGN_TEST_EC_P384_SEC1: &str = "-----BEGIN EC PRIVATE KEY-----
MIGkAgEBBDDWIebxSdyJVber6J/l5MKnD0+VU0b7fcjY/RbIxuIsHLVIvwJrSohY
r3gJ/iJmIKGgBwYFK4EEACKhZANiAAQeoKZkkc1GafmIgp1tbNbMBjr2EdvX2dtT
lGhzHJgE0YB6TavazcYH1iOBNmX7/pInCopiyWbjF/5olrRKJMG6DQz80td++fYf
O4tr+Z3nyUgRGmf/fqYA4PSN30CuOMU=
-----END EC PRIVATE KEY-----";
    const COSIGN_TEST_ED25519_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIALEbo1EFnWFqBK/wC+hhypG/8hXEerwdNetAoFoFVdv
-----END PRIVATE KEY-----";
    const COSIGN_TEST_RSA_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAx5piWVlE62NnZ0UzJ8Z6
oKiKOC4dbOZ1HsNhIRtqkM+Oq4G+25yq6P+0JU/Qvr9veOGEb3R/J9u8JBo+hv2i
5X8OtgvP2V2pi6f1s6vK7L0+6uRb4YTT/UdMshaVf97MgEqbq41Jf/cuvh+3AV0t
Z1BpixZg4aXMKpY6HUP69lbsu27oSUN1myMv7TSgZiV4CYs3l/gkEfpysBptWlcH
Ruw5RsB+C0RbjRtbJ/5VxmE/vd3Mlafd5t1WSpMb8yf0a84u5NFaXwZ7CweMfXeO
ddS0yb19ShSuW3PPRadruBM1mq15js9GfagPxDS75Imcs+fA62lWvHxEujTGjYHx
awIDAQAB
-----END PUBLIC KEY-----";

    // go-securesystemslib's own vectors for the three scrypt strengths it (and so cosign)
    // accepts, plaintext "reallyimportant", passphrase "supersecret", from
    // secure-systems-lab/go-securesystemslib, encrypted/encrypted_test.go (`kdfVectors`,
    // `TestUnsupportedKDFParameters`).
    const SSL_VECTORS: [&str; 3] = [
        r#"{"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"WO3mVvyTwJ9vwT5/Tk5OW5WPIBUofMjcpEfrLnfY4uA="},"cipher":{"name":"nacl/secretbox","nonce":"tCy7HcTFr4uxv4Nrg/DWmncuZ148U1MX"},"ciphertext":"08n43p5G5yviPEZpO7tPPF4aZQkWiWjkv4taFdhDBA0tamKH4nw="}"#,
        r#"{"kdf":{"name":"scrypt","params":{"N":65536,"r":8,"p":1},"salt":"FhzPOt9/bJG4PTq6lQ6ecG6GzaOuOy/ynG5+yRiFlNs="},"cipher":{"name":"nacl/secretbox","nonce":"aw1ng1jHaDz/tQ7V2gR9O2+IGQ8xJEuE"},"ciphertext":"HycvuLZL4sYH0BrYTh4E/H20VtAW6u5zL5Pr+IBjYLYnCPzDkq8="}"#,
        r#"{"kdf":{"name":"scrypt","params":{"N":131072,"r":8,"p":1},"salt":"m38E3kouJTtiheLQN22NQ8DTito5hrjpUIskqcd375k="},"cipher":{"name":"nacl/secretbox","nonce":"Y6PM13yA+o44pE/W1ZBwczeGnTV/m9Zc"},"ciphertext":"6H8sqj1K6B6yDjtH5AQ6lbFigg/C2yDDJc4rYJ79w9aVPImFIPI="}"#,
    ];
    const SSL_UNSUPPORTED_PARAMS: &str = r#"{"kdf":{"name":"scrypt","params":{"N":99,"r":99,"p":99},"salt":"cZFcQJdwPhPyhU1R4qkl0qVOIjZd4V/7LYYAavq166k="},"cipher":{"name":"nacl/secretbox","nonce":"7vhRS7j0hEPBWV05skAdgLj81AkGeE7U"},"ciphertext":"6WYU/YSXVbYzl/NzaeAzmjLyfFhOOjLc0d8/GFV0aBFdJvyCcXc="}"#;

    // ---- Format: tag, payload, config ----------------------------------------------------

    #[test]
    fn signature_tag_follows_cosign_naming() {
        assert_eq!(
            signature_tag(DIGEST).unwrap(),
            "sha256-4c1c50d0ffc614f90b93b07d778028dc765548e823f676fb027f61d281ac380d.sig"
        );
    }

    #[test]
    fn signature_tag_refuses_other_algorithms_and_malformed_digests() {
        let sha512 = format!("sha512:{}", "a".repeat(128));
        assert!(matches!(signature_tag(&sha512), Err(SignatureError::UnsupportedDigest { .. })));
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:abc",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "g".repeat(64)),
            &format!("sha256:{}", "a".repeat(65)),
            &format!("sha256-{}", "a".repeat(64)),
            &format!(":{}", "a".repeat(64)),
            "sha256:ééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé",
        ] {
            assert!(matches!(signature_tag(bad), Err(SignatureError::MalformedDigest { .. })), "{bad:?} was accepted");
        }
        let message = signature_tag("sha256:abc").unwrap_err().to_string();
        assert!(message.contains("64 lowercase hex"), "{message}");
    }

    #[test]
    fn payload_is_byte_identical_to_cosign_1_13() {
        let bytes = payload(COSIGN_1_13_REFERENCE, DIGEST);
        assert_eq!(bytes.len(), 252);
        assert_eq!(sha256_hex_of(&bytes), COSIGN_1_13_PAYLOAD_DIGEST);
    }

    #[test]
    fn payload_is_byte_identical_to_the_sigstore_rs_fixture() {
        assert_eq!(payload("registry-testing.svc.lan/busybox", OTHER_DIGEST), SIGSTORE_RS_PAYLOAD.as_bytes());
    }

    #[test]
    fn payload_escapes_strings_as_go_does() {
        let bytes = payload("a\"b\\c<d>&e\u{1}\n\u{2028}é", DIGEST);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""docker-reference":"a\"b\\c\u003cd\u003e\u0026e\u0001\n\u2028é""#), "{text}");
        // Still valid JSON that round-trips to the same reference.
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["critical"]["identity"]["docker-reference"], "a\"b\\c<d>&e\u{1}\n\u{2028}é");
    }

    #[test]
    fn config_is_shaped_as_cosign_1_13_wrote_it() {
        let digest = format!("sha256:{COSIGN_1_13_PAYLOAD_DIGEST}");
        let bytes = config_json(COSIGN_1_13_CONFIG_CREATED, &[digest.as_str()]);
        assert_eq!(bytes.len(), 247);
        assert_eq!(sha256_hex_of(&bytes), COSIGN_1_13_CONFIG_DIGEST);
    }

    #[test]
    fn signature_config_is_deterministic_and_lists_every_layer() {
        let config = signature_config(&["sha256:aa", "sha256:bb"]);
        assert_eq!(config, signature_config(&["sha256:aa", "sha256:bb"]));
        assert_eq!(
            String::from_utf8(config).unwrap(),
            r#"{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"},{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":["sha256:aa","sha256:bb"]},"config":{}}"#
        );
    }

    // ---- Sign and verify --------------------------------------------------------------------

    #[test]
    fn round_trip_returns_the_index_of_the_verifying_key() {
        let signer = SigningKey::generate();
        let bystander = SigningKey::generate();
        let body = payload("ghcr.io/skiff/step", DIGEST);
        let signature = signer.sign(&body);
        let keys = [bystander.public_key(), signer.public_key()];
        assert_eq!(verify(&keys, &body, &signature, DIGEST).unwrap(), 1);
        assert_eq!(verify(&keys[1..], &body, &signature, DIGEST).unwrap(), 0, "a single trusted key verifies too");
    }

    #[test]
    fn untrusted_key_is_refused_naming_the_trusted_fingerprints() {
        let signer = SigningKey::generate();
        let trusted = SigningKey::generate().public_key();
        let body = payload("ghcr.io/skiff/step", DIGEST);
        let error = verify(std::slice::from_ref(&trusted), &body, &signer.sign(&body), DIGEST).unwrap_err();
        let SignatureError::UntrustedSignature { fingerprints } = &error else {
            panic!("expected UntrustedSignature, got {error:?}");
        };
        assert_eq!(fingerprints.len(), 1);
        let message = error.to_string();
        assert!(message.contains(&trusted.fingerprint()[..16]), "{message}");
        assert!(!message.contains(&signer.public_key().fingerprint()[..16]));
    }

    #[test]
    fn payload_for_another_digest_is_refused() {
        let signer = SigningKey::generate();
        let body = payload("ghcr.io/skiff/step", OTHER_DIGEST);
        let error = verify(&[signer.public_key()], &body, &signer.sign(&body), DIGEST).unwrap_err();
        assert!(
            matches!(&error, SignatureError::DigestMismatch { signed, expected }
                if signed == OTHER_DIGEST && expected == DIGEST),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(OTHER_DIGEST) && message.contains(DIGEST));
    }

    #[test]
    fn tampered_payload_is_refused() {
        let signer = SigningKey::generate();
        let keys = [signer.public_key()];
        let body = payload("ghcr.io/skiff/step", DIGEST);
        let signature = signer.sign(&body);
        // An attacker re-points the signed claim at their own manifest: same length, valid
        // JSON, and it names exactly the digest being verified.
        let forged_digest = format!("{}0", &DIGEST[..DIGEST.len() - 1]);
        assert_ne!(forged_digest, DIGEST);
        let forged = String::from_utf8(body.clone()).unwrap().replace(DIGEST, &forged_digest).into_bytes();
        assert_eq!(forged.len(), body.len());
        assert!(matches!(
            verify(&keys, &forged, &signature, &forged_digest),
            Err(SignatureError::UntrustedSignature { .. })
        ));
        let mut extended = body;
        extended.push(b' ');
        assert!(matches!(verify(&keys, &extended, &signature, DIGEST), Err(SignatureError::UntrustedSignature { .. })));
    }

    #[test]
    fn garbage_signatures_are_errors() {
        let key = SigningKey::generate().public_key();
        let body = payload("ghcr.io/skiff/step", DIGEST);
        for bad in ["", "!!!!", "MEUCIQ", "MEUCIQD6q/COgz=Oy"] {
            assert!(
                matches!(
                    verify(std::slice::from_ref(&key), &body, bad, DIGEST),
                    Err(SignatureError::MalformedBase64 { .. } | SignatureError::MalformedSignature { .. })
                ),
                "{bad:?}"
            );
        }
        // Well-formed base64 whose content is not DER.
        let not_der = STANDARD.encode(b"definitely not a DER signature");
        assert!(matches!(
            verify(std::slice::from_ref(&key), &body, &not_der, DIGEST),
            Err(SignatureError::MalformedSignature { .. })
        ));
        // DER with r = 0, which no valid signature has.
        let zero_r = STANDARD.encode([0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x01]);
        assert!(matches!(
            verify(std::slice::from_ref(&key), &body, &zero_r, DIGEST),
            Err(SignatureError::MalformedSignature { .. })
        ));
        let huge = "A".repeat(MAX_SIGNATURE_CHARS + 4);
        assert!(matches!(
            verify(std::slice::from_ref(&key), &body, &huge, DIGEST),
            Err(SignatureError::MalformedSignature { .. })
        ));
    }

    #[test]
    fn bounds_and_missing_keys_are_errors() {
        let signer = SigningKey::generate();
        let body = payload("ghcr.io/skiff/step", DIGEST);
        let signature = signer.sign(&body);
        assert!(matches!(verify(&[], &body, &signature, DIGEST), Err(SignatureError::NoTrustedKeys)));
        let huge = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert!(matches!(
            verify(&[signer.public_key()], &huge, &signer.sign(&huge), DIGEST),
            Err(SignatureError::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn signed_payloads_that_are_not_image_signatures_are_refused() {
        let signer = SigningKey::generate();
        let keys = [signer.public_key()];
        let check = |body: &[u8]| verify(&keys, body, &signer.sign(body), DIGEST);

        assert!(matches!(check(b"not json"), Err(SignatureError::MalformedPayload { .. })));
        assert!(matches!(check(b"null"), Err(SignatureError::MalformedPayload { .. })));
        assert!(matches!(
            check(br#"{"critical":{"type":"cosign container image signature"}}"#),
            Err(SignatureError::MalformedPayload { .. })
        ));
        let attestation = format!(
            r#"{{"critical":{{"image":{{"docker-manifest-digest":"{DIGEST}"}},"type":"https://in-toto.io/Statement/v0.1"}}}}"#
        );
        assert!(matches!(
            check(attestation.as_bytes()),
            Err(SignatureError::WrongPayloadType { found }) if found == "https://in-toto.io/Statement/v0.1"
        ));
    }

    #[test]
    fn any_valid_json_with_the_fields_is_accepted() {
        let signer = SigningKey::generate();
        let keys = [signer.public_key()];
        // Reordered, pretty-printed, annotations in `optional` (as `cosign sign -a k=v` writes),
        // and fields cosign does not know.
        let body = format!(
            r#"{{
              "optional": {{"commit": "abc", "nested": {{"n": [1, 2.5, null, true]}}}},
              "critical": {{
                "type": "cosign container image signature",
                "image": {{"docker-manifest-digest": "{DIGEST}"}},
                "identity": {{"docker-reference": "mirror.example/skiff/step"}},
                "future": 1
              }},
              "extra": "x"
            }}"#
        );
        assert_eq!(verify(&keys, body.as_bytes(), &signer.sign(body.as_bytes()), DIGEST).unwrap(), 0);
        let no_identity = format!(
            r#"{{"critical":{{"image":{{"docker-manifest-digest":"{DIGEST}"}},"type":"cosign container image signature"}}}}"#
        );
        assert_eq!(verify(&keys, no_identity.as_bytes(), &signer.sign(no_identity.as_bytes()), DIGEST).unwrap(), 0);
    }

    #[test]
    fn high_s_signatures_verify_as_go_makes_them() {
        // Go's ecdsa does not normalise s, so about half of cosign's signatures have a high s.
        use p256::elliptic_curve::scalar::IsHigh;
        let signer = SigningKey::generate();
        let body = payload("ghcr.io/skiff/step", DIGEST);
        let signature: Signature = signer.inner.sign(&body);
        let (r, s) = signature.split_scalars();
        let flipped = Signature::from_scalars(r, (-*s).to_bytes()).unwrap();
        assert_ne!(bool::from(signature.s().is_high()), bool::from(flipped.s().is_high()));
        for sig in [signature, flipped] {
            let b64 = STANDARD.encode(sig.to_der().as_bytes());
            assert_eq!(verify(&[signer.public_key()], &body, &b64, DIGEST).unwrap(), 0);
        }
    }

    #[test]
    fn signatures_are_standard_base64_der() {
        let signer = SigningKey::generate();
        let b64 = signer.sign(b"payload");
        let der = STANDARD.decode(&b64).unwrap();
        assert_eq!(der[0], 0x30, "an ASN.1 SEQUENCE");
        assert!(Signature::from_der(&der).is_ok());
    }

    // ---- Interop with real cosign signatures --------------------------------------------------

    #[test]
    fn verifies_a_signature_made_by_cosign() {
        let key = PublicKey::from_pem(SIGSTORE_RS_PUBLIC_KEY).unwrap();
        let other = PublicKey::from_pem(SIGSTORE_RS_OTHER_PUBLIC_KEY).unwrap();
        let body = SIGSTORE_RS_PAYLOAD.as_bytes();
        assert_eq!(verify(&[other.clone(), key.clone()], body, SIGSTORE_RS_SIGNATURE, OTHER_DIGEST).unwrap(), 1);
        assert!(matches!(
            verify(std::slice::from_ref(&other), body, SIGSTORE_RS_SIGNATURE, OTHER_DIGEST),
            Err(SignatureError::UntrustedSignature { .. })
        ));
        assert!(matches!(
            verify(std::slice::from_ref(&key), body, SIGSTORE_RS_SIGNATURE, DIGEST),
            Err(SignatureError::DigestMismatch { .. })
        ));
        // Our PEM of the key is the one cosign wrote (modulo the final newline).
        assert_eq!(key.to_pem().trim_end(), SIGSTORE_RS_PUBLIC_KEY);
    }

    #[test]
    fn parses_the_signature_cosign_1_13_pushed() {
        // Without cosign's public key this can only show the annotation parses as a P-256
        // signature: an unrelated key then fails on trust, not on format.
        let body = payload(COSIGN_1_13_REFERENCE, DIGEST);
        assert!(matches!(
            verify(&[SigningKey::generate().public_key()], &body, COSIGN_1_13_SIGNATURE, DIGEST),
            Err(SignatureError::UntrustedSignature { .. })
        ));
    }

    #[test]
    fn reads_a_key_from_cosign_generate_key_pair() {
        let key = SigningKey::from_pem(COSIGN_GENERATED_EMPTY_PASSWORD_KEY, Some(b"")).unwrap();
        let body = payload("ghcr.io/skiff/step", DIGEST);
        assert_eq!(verify(&[key.public_key()], &body, &key.sign(&body), DIGEST).unwrap(), 0);
        assert!(matches!(
            SigningKey::from_pem(COSIGN_GENERATED_EMPTY_PASSWORD_KEY, Some(b"wrong")),
            Err(SignatureError::WrongPassword)
        ));
        assert!(matches!(
            SigningKey::from_pem(COSIGN_GENERATED_EMPTY_PASSWORD_KEY, None),
            Err(SignatureError::PasswordRequired)
        ));
    }

    #[test]
    fn reads_keys_under_the_old_cosign_label() {
        let key = SigningKey::from_pem(SIGSTORE_RS_COSIGN_LABEL_KEY, Some(b"123")).unwrap();
        let body = b"x";
        key.public_key()
            .inner
            .verify(body, &Signature::from_der(&STANDARD.decode(key.sign(body)).unwrap()).unwrap())
            .unwrap();
        // A SEC1 body: cosign refuses it, Skiff reads the key it holds.
        let sec1 = SigningKey::from_pem(COSIGN_TEST_SEC1_BODY_KEY, Some(b"hello")).unwrap();
        assert_ne!(sec1.public_key(), key.public_key());
    }

    #[test]
    fn reads_the_encrypted_keys_of_cosigns_own_tests() {
        let key = SigningKey::from_pem(COSIGN_TEST_OLD_LABEL_KEY, Some(b"hello")).unwrap();
        let body = payload("ghcr.io/skiff/step", DIGEST);
        assert_eq!(verify(&[key.public_key()], &body, &key.sign(&body), DIGEST).unwrap(), 0);
        assert!(matches!(
            SigningKey::from_pem(COSIGN_TEST_OLD_LABEL_KEY, Some(b"nope")),
            Err(SignatureError::WrongPassword)
        ));
    }

    #[test]
    fn refuses_an_encrypted_key_of_another_kind_after_decrypting_it() {
        let ed25519 = parse_pem(COSIGN_TEST_ED25519_PKCS8, "").unwrap().der;
        let body = encrypt_cosign(&ed25519, b"pw").unwrap();
        let pem = encode_pem(SIGSTORE_ENCRYPTED_LABEL, &body);
        let error = SigningKey::from_pem(&pem, Some(b"pw")).unwrap_err();
        assert!(matches!(&error, SignatureError::NotP256 { found } if found.contains("Ed25519")), "{error:?}");
    }

    #[test]
    fn decrypts_go_securesystemslib_vectors_at_every_strength() {
        for vector in SSL_VECTORS {
            let plain = decrypt_cosign(vector.as_bytes(), b"supersecret").unwrap();
            // The vectors were made with `encrypted.Marshal`, which JSON-encodes the plaintext
            // first: Go writes the []byte "reallyimportant" as a base64 JSON string.
            assert_eq!(plain.as_slice(), br#""cmVhbGx5aW1wb3J0YW50""#);
            assert!(matches!(decrypt_cosign(vector.as_bytes(), b"supersecreT"), Err(SignatureError::WrongPassword)));
        }
        let error = decrypt_cosign(SSL_UNSUPPORTED_PARAMS.as_bytes(), b"supersecret").unwrap_err();
        assert!(
            matches!(&error, SignatureError::UnsupportedEncryption { detail } if detail.contains("N=99")),
            "{error:?}"
        );
    }

    #[test]
    fn reads_unencrypted_keys_and_names_unsupported_kinds() {
        for pem in [COSIGN_TEST_EC_P256_SEC1, COSIGN_TEST_EC_P256_PKCS8] {
            SigningKey::from_pem(pem, None).unwrap();
            // An environment password is ignored for an unencrypted key.
            SigningKey::from_pem(pem, Some(b"unused")).unwrap();
        }
        let cases = [(COSIGN_TEST_EC_P384_SEC1, "P-384"), (COSIGN_TEST_ED25519_PKCS8, "Ed25519")];
        for (pem, kind) in cases {
            let error = SigningKey::from_pem(pem, None).unwrap_err();
            assert!(matches!(&error, SignatureError::NotP256 { found } if found.contains(kind)), "{error:?}");
            assert!(error.to_string().contains("cosign generate-key-pair"));
        }
        let error = PublicKey::from_pem(COSIGN_TEST_RSA_PUBLIC_KEY).unwrap_err();
        assert!(matches!(&error, SignatureError::NotP256 { found } if found.contains("RSA")), "{error:?}");
    }

    // ---- Keys -------------------------------------------------------------------------------

    #[test]
    fn encrypted_pem_round_trip_in_cosign_format() {
        let key = SigningKey::generate();
        let pem = key.to_encrypted_pem(b"correct horse").unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        assert!(pem.ends_with("-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        assert!(pem.lines().all(|line| line.len() <= 64 || line.starts_with("-----")));

        let block = parse_pem(&pem, "").unwrap();
        let json: serde_json::Value = serde_json::from_slice(&block.der).unwrap();
        assert_eq!(json["kdf"]["name"], "scrypt");
        assert_eq!(json["kdf"]["params"]["N"], 65536);
        assert_eq!(json["kdf"]["params"]["r"], 8);
        assert_eq!(json["kdf"]["params"]["p"], 1);
        assert_eq!(json["cipher"]["name"], "nacl/secretbox");
        let salt = STANDARD.decode(json["kdf"]["salt"].as_str().unwrap()).unwrap();
        let nonce = STANDARD.decode(json["cipher"]["nonce"].as_str().unwrap()).unwrap();
        assert_eq!((salt.len(), nonce.len()), (32, 24));
        // Go's field order, as go-securesystemslib marshals it.
        let text = String::from_utf8(block.der).unwrap();
        assert!(text.starts_with(r#"{"kdf":{"name":"scrypt","params":{"N":65536,"r":8,"p":1},"salt":""#));

        let back = SigningKey::from_pem(&pem, Some(b"correct horse")).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        // Fresh salt and nonce every time.
        assert_ne!(pem, key.to_encrypted_pem(b"correct horse").unwrap());
    }

    #[test]
    fn wrong_password_is_a_clear_error() {
        let pem = SigningKey::generate().to_encrypted_pem(b"right").unwrap();
        let error = SigningKey::from_pem(&pem, Some(b"wrong")).unwrap_err();
        assert!(matches!(error, SignatureError::WrongPassword));
        assert!(error.to_string().contains("password is wrong"));
        assert!(matches!(SigningKey::from_pem(&pem, None), Err(SignatureError::PasswordRequired)));
    }

    #[test]
    fn unencrypted_pem_round_trip() {
        let key = SigningKey::generate();
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = SigningKey::from_pem(&pem, None).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        // CRLF line endings and surrounding text, as keys pasted into secrets arrive.
        let pasted = format!("my key:\r\n{}\r\ntrailing", pem.replace('\n', "\r\n"));
        assert_eq!(SigningKey::from_pem(&pasted, None).unwrap().public_key(), key.public_key());
    }

    #[test]
    fn public_key_pem_and_fingerprint() {
        let public = SigningKey::generate().public_key();
        let pem = public.to_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let back = PublicKey::from_pem(&pem).unwrap();
        assert_eq!(back, public);
        let der = parse_pem(&pem, "").unwrap().der;
        assert_eq!(der.len(), 91, "uncompressed P-256 SubjectPublicKeyInfo");
        assert_eq!(public.fingerprint(), sha256_hex_of(&der));
        assert_eq!(public.fingerprint().len(), 64);
        assert!(format!("{public:?}").contains(&public.fingerprint()));
    }

    #[test]
    fn debug_never_prints_the_private_key() {
        let key = SigningKey::generate();
        let secret_hex = hex::encode(key.inner.to_bytes());
        let debug = format!("{key:?}");
        assert!(!debug.contains(&secret_hex));
        assert!(debug.contains(&key.public_key().fingerprint()));
    }

    #[test]
    fn wrong_pem_kinds_are_explained() {
        let private = SigningKey::generate();
        let error = PublicKey::from_pem(&private.to_pem()).unwrap_err();
        assert!(error.to_string().contains("private key"), "{error}");
        let error = SigningKey::from_pem(&private.public_key().to_pem(), None).unwrap_err();
        assert!(error.to_string().contains("not the public key"), "{error}");
        let cert = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let error = PublicKey::from_pem(cert).unwrap_err();
        assert!(error.to_string().contains("openssl x509 -pubkey"), "{error}");
        assert!(matches!(PublicKey::from_pem("no pem here"), Err(SignatureError::NoPem { .. })));
        assert!(matches!(
            PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nMFkw"),
            Err(SignatureError::MalformedPem { .. })
        ));
        let headers = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\nMAA=\n-----END EC PRIVATE KEY-----";
        assert!(matches!(SigningKey::from_pem(headers, None), Err(SignatureError::MalformedPem { .. })));
        assert!(matches!(
            PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----"),
            Err(SignatureError::InvalidKey { .. })
        ));
        let huge = "A".repeat(MAX_PEM_BYTES + 1);
        assert!(matches!(PublicKey::from_pem(&huge), Err(SignatureError::PemTooLarge { .. })));
    }

    #[test]
    fn malformed_encrypted_keys_are_errors() {
        let wrap = |json: &str| encode_pem(SIGSTORE_ENCRYPTED_LABEL, json.as_bytes());
        assert!(matches!(
            SigningKey::from_pem(&wrap("{}"), Some(b"")),
            Err(SignatureError::MalformedEncryptedKey { .. })
        ));
        let argon = SSL_VECTORS[0].replace(r#""name":"scrypt""#, r#""name":"argon2""#);
        assert!(matches!(
            SigningKey::from_pem(&wrap(&argon), Some(b"")),
            Err(SignatureError::UnsupportedEncryption { .. })
        ));
        let short_nonce = SSL_VECTORS[0].replace("tCy7HcTFr4uxv4Nrg/DWmncuZ148U1MX", "tCy7HcTFr4uxv4Nr");
        assert!(matches!(
            SigningKey::from_pem(&wrap(&short_nonce), Some(b"supersecret")),
            Err(SignatureError::MalformedEncryptedKey { .. })
        ));
        // Decrypts, but "reallyimportant" is no key.
        assert!(matches!(
            SigningKey::from_pem(&wrap(SSL_VECTORS[0]), Some(b"supersecret")),
            Err(SignatureError::InvalidKey { .. })
        ));
    }

    // ---- Hostile input never panics -----------------------------------------------------------

    fn any_label() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "PUBLIC KEY",
            "PRIVATE KEY",
            "EC PRIVATE KEY",
            "RSA PRIVATE KEY",
            "CERTIFICATE",
            SIGSTORE_ENCRYPTED_LABEL,
            COSIGN_ENCRYPTED_LABEL,
            "WHATEVER",
        ])
    }

    proptest! {
        #[test]
        fn verify_never_panics(
            body in prop::collection::vec(any::<u8>(), 0..600),
            signature in any::<String>(),
            signature_bytes in prop::collection::vec(any::<u8>(), 0..100),
            digest in any::<String>(),
        ) {
            let key = SigningKey::from_pem(COSIGN_TEST_EC_P256_PKCS8, None).unwrap().public_key();
            let keys = [key];
            let _ = verify(&keys, &body, &signature, &digest);
            let _ = verify(&keys, &body, &STANDARD.encode(&signature_bytes), DIGEST);
            let _ = signature_tag(&digest);
            let _ = payload(&digest, &signature);
        }

        #[test]
        fn verify_never_panics_on_signed_garbage(
            body in prop::collection::vec(any::<u8>(), 0..600),
        ) {
            let signer = SigningKey::from_pem(COSIGN_TEST_EC_P256_SEC1, None).unwrap();
            let result = verify(&[signer.public_key()], &body, &signer.sign(&body), DIGEST);
            let untrusted = matches!(result, Err(SignatureError::UntrustedSignature { .. }));
            prop_assert!(!untrusted, "a valid signature was refused as untrusted");
        }

        #[test]
        fn from_pem_never_panics(
            text in any::<String>(),
            der in prop::collection::vec(any::<u8>(), 0..300),
            label in any_label(),
            password in prop::collection::vec(any::<u8>(), 0..8),
        ) {
            let _ = PublicKey::from_pem(&text);
            let _ = SigningKey::from_pem(&text, Some(&password));
            let wrapped = encode_pem(label, &der);
            let _ = PublicKey::from_pem(&wrapped);
            let _ = SigningKey::from_pem(&wrapped, Some(&password));
            let _ = SigningKey::from_pem(&wrapped, None);
        }
    }
}
