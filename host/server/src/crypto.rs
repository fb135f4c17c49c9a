//! Secrets at rest: values in the config file (and anything else the host keeps) are sealed
//! with ChaCha20-Poly1305 under one master key, written `enc:v1:<base64(nonce ‖ ciphertext)>`.
//!
//! The key comes from `SKIFF_MASTER_KEY` (base64 or hex of 32 bytes), a key file, or is created
//! in the data directory on first start (mode 0600). Plain values still work, for development,
//! but the host warns about each one at startup (without printing it).

use std::path::Path;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, Generate, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// The prefix of a sealed value.
pub const PREFIX: &str = "enc:v1:";

/// The master key. `Debug` never prints it.
#[derive(Clone)]
pub struct MasterKey(ChaCha20Poly1305);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(redacted)")
    }
}

impl MasterKey {
    /// A key from 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        let cipher = ChaCha20Poly1305::new_from_slice(bytes)
            .map_err(|_| anyhow::anyhow!("the master key must be 32 bytes, not {}", bytes.len()))?;
        Ok(MasterKey(cipher))
    }

    /// A key written as base64 or hex of 32 bytes.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let text = text.trim();
        if let Ok(b) = hex::decode(text)
            && b.len() == 32
        {
            return Self::from_bytes(&b);
        }
        if let Ok(b) = base64::engine::general_purpose::STANDARD.decode(text)
            && b.len() == 32
        {
            return Self::from_bytes(&b);
        }
        bail!("the master key must be 32 bytes written in base64 or hex (e.g. the output of `openssl rand -base64 32`)")
    }

    /// A new random key, and its base64 text.
    pub fn generate() -> (Self, String) {
        let key = Key::generate();
        let text = base64::engine::general_purpose::STANDARD.encode(key.as_slice());
        (MasterKey(ChaCha20Poly1305::new(&key)), text)
    }

    /// The key from `SKIFF_MASTER_KEY`, else `key_file`, else `<data>/master.key` (created
    /// when missing).
    pub fn load(key_file: Option<&Path>, data_dir: &Path) -> anyhow::Result<Self> {
        if let Ok(text) = std::env::var("SKIFF_MASTER_KEY")
            && !text.trim().is_empty()
        {
            return Self::parse(&text).context("SKIFF_MASTER_KEY");
        }
        if let Some(path) = key_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the master key file {}", path.display()))?;
            return Self::parse(&text).with_context(|| format!("the master key file {}", path.display()));
        }
        let path = data_dir.join("master.key");
        if path.exists() {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            return Self::parse(&text).with_context(|| format!("the master key file {}", path.display()));
        }
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let (key, text) = Self::generate();
        write_private(&path, text.as_bytes())?;
        tracing::info!("created a new master key in {} (keep it: sealed secrets need it)", path.display());
        Ok(key)
    }

    /// Seals `plain` as `enc:v1:…`.
    pub fn seal(&self, plain: &[u8]) -> String {
        let nonce = Nonce::generate();
        // Encrypting into a Vec cannot fail.
        let ct = self.0.encrypt(&nonce, plain).unwrap_or_else(|e| unreachable!("encrypting cannot fail: {e}"));
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        format!("{PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Opens an `enc:v1:…` value.
    pub fn open(&self, sealed: &str) -> anyhow::Result<Vec<u8>> {
        let b64 = sealed.strip_prefix(PREFIX).context("a sealed value starts with `enc:v1:`")?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .context("the sealed value is not valid base64")?;
        if raw.len() < 12 + 16 {
            bail!("the sealed value is too short to hold a nonce and a tag");
        }
        let nonce = Nonce::try_from(&raw[..12]).map_err(|_| anyhow::anyhow!("bad nonce"))?;
        self.0.decrypt(&nonce, &raw[12..]).map_err(|_| {
            anyhow::anyhow!(
                "the sealed value does not open with this master key: it was sealed with another key, or altered"
            )
        })
    }
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// The hex SHA-256 of an API token, as kept in the config.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open() {
        let (key, text) = MasterKey::generate();
        let sealed = key.seal(b"hunter2");
        assert!(sealed.starts_with(PREFIX));
        assert!(!sealed.contains("hunter2"));
        assert_eq!(key.open(&sealed).unwrap(), b"hunter2");
        let again = MasterKey::parse(&text).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), b"hunter2");
        let (other, _) = MasterKey::generate();
        assert!(other.open(&sealed).unwrap_err().to_string().contains("another key"));
        assert_eq!(format!("{key:?}"), "MasterKey(redacted)");
    }
}
