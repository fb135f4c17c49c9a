//! TLS to the PostgreSQL run store, read from the URL as libpq users write it:
//! `sslmode=require`, `verify-ca` or `verify-full` turn it on, `sslrootcert=/path/ca.pem` names
//! the authorities to trust (without it, the system's), `disable`, `prefer` or no `sslmode`
//! leave the connection plain, as before.
//!
//! Unlike libpq, `require` verifies the server's certificate too, and `verify-ca` checks the
//! host name as `verify-full` does: the store's connection carries its password and every
//! run's secrets-free but private state, and an encrypted channel to a server nobody checked
//! protects neither. A self-signed server is trusted by naming its certificate in
//! `sslrootcert`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How the store connects, from its URL.
#[derive(Clone)]
pub enum Transport {
    /// Plain TCP (or a Unix socket).
    Plain,
    /// TLS, the server's certificate checked against these roots.
    Tls(MakeRustlsConnect),
}

/// A store URL as `tokio-postgres` can read it, and the TLS it asks for.
pub struct Asked {
    /// `url` without `sslrootcert`, and with the `verify-…` modes as `require`.
    pub url: String,
    /// `sslmode` is `require`, `verify-ca` or `verify-full`.
    pub tls: bool,
    /// `sslrootcert`.
    pub rootcert: Option<PathBuf>,
}

/// Reads the TLS options of `url` (no I/O): the options `tokio-postgres` does not know
/// (`sslrootcert`, the `verify-…` modes) are taken out.
pub fn read(url: &str) -> anyhow::Result<Asked> {
    if !url.contains("://") {
        // PostgreSQL's `key=value` form: `tokio-postgres` reads `sslmode` itself, and rejects
        // what it does not know (`sslrootcert` included) with its own message.
        let tls = url.parse::<postgres::Config>().is_ok_and(|c| !plain(c.get_ssl_mode()));
        return Ok(Asked { url: url.to_string(), tls, rootcert: None });
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut kept, mut mode, mut rootcert) = (Vec::new(), None::<String>, None::<PathBuf>);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned();
        match key {
            "sslmode" => mode = Some(decoded),
            "sslrootcert" => rootcert = Some(PathBuf::from(decoded)),
            _ => kept.push(pair),
        }
    }
    let tls = match mode.as_deref() {
        None | Some("disable" | "prefer") => false,
        Some("require" | "verify-ca" | "verify-full") => true,
        Some(other) => anyhow::bail!(
            "the run store's URL has `sslmode={other}`: use `disable`, `prefer`, `require`, `verify-ca` or `verify-full`"
        ),
    };
    if !tls && rootcert.is_some() {
        anyhow::bail!("the run store's URL names `sslrootcert` but asks for no TLS: add `sslmode=verify-full`");
    }
    match mode.as_deref() {
        // `tokio-postgres` then insists on TLS, and refuses a server that offers none.
        _ if tls => kept.push("sslmode=require"),
        Some("disable") => kept.push("sslmode=disable"),
        Some(_) => kept.push("sslmode=prefer"),
        None => {}
    }
    let url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    Ok(Asked { url, tls, rootcert })
}

/// How to connect as `asked` says: reads `sslrootcert`, or the system's roots.
pub fn transport(asked: &Asked) -> anyhow::Result<Transport> {
    if asked.tls { tls(asked.rootcert.as_deref()) } else { Ok(Transport::Plain) }
}

fn plain(mode: postgres::config::SslMode) -> bool {
    matches!(mode, postgres::config::SslMode::Disable | postgres::config::SslMode::Prefer)
}

/// A TLS connector trusting the certificates in `rootcert`, or the system's.
fn tls(rootcert: Option<&std::path::Path>) -> anyhow::Result<Transport> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    match rootcert {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| {
                    format!("reading the run store's `sslrootcert` {} (PEM certificates)", path.display())
                })?;
            if certs.is_empty() {
                anyhow::bail!("the run store's `sslrootcert` {} holds no PEM certificate", path.display());
            }
            for c in certs {
                roots.add(c).with_context(|| format!("a certificate in {}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                anyhow::bail!(
                    "the run store's URL asks for TLS, but this machine has no trusted certificates: \
                     name the server's authority with `sslrootcert=/path/ca.pem`"
                );
            }
        }
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(Arc::new(roots)).with_no_client_auth();
    Ok(Transport::Tls(MakeRustlsConnect::new(config)))
}

/// A connection error, with what to do when it is the certificate.
pub fn explain(e: postgres::Error, tls: bool) -> anyhow::Error {
    let text = format!("{e:#}");
    let source = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
    let all = format!("{text} {source}");
    if tls && let Some(cert) = refused_certificate(&e) {
        use rustls::CertificateError as C;
        let hint = match cert {
            C::UnknownIssuer | C::BadSignature => {
                "the server's certificate is not signed by a trusted authority; name its authority with \
                 `sslrootcert=/path/ca.pem` in the run store's URL"
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "the server's certificate does not name the host in the run store's URL; connect by a name the \
                 certificate holds"
            }
            C::Expired | C::ExpiredContext { .. } => {
                "the server's certificate has expired; renew it on the server (or check this host's clock)"
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet; check the clocks of this host and the server"
            }
            C::Revoked => "the server's certificate was revoked by its authority; the server needs a new one",
            _ => "the server's certificate was refused; the server needs a certificate this host can verify",
        };
        return anyhow::anyhow!("{all}: {hint}");
    }
    if !tls && all.contains("no encryption") {
        return anyhow::anyhow!("{all}: the server accepts only TLS; add `sslmode=verify-full` to the run store's URL");
    }
    anyhow::Error::new(e)
}

/// Why rustls refused the server's certificate, found in the error's causes (an I/O error
/// carries rustls' own error inside, which its `source` skips).
fn refused_certificate<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::CertificateError> {
    let mut next: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        for candidate in [Some(err), inner].into_iter().flatten() {
            if let Some(rustls::Error::InvalidCertificate(c)) = candidate.downcast_ref::<rustls::Error>() {
                return Some(c);
            }
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::refused_certificate;
    use rustls::CertificateError;

    /// The connection's error carries rustls' inside an I/O error, below others: the reason is
    /// found by its type, so an expired certificate is not reported as an unknown authority.
    #[test]
    fn a_refused_certificate_is_found_by_its_type_under_an_io_error() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error connecting to server")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let wrap = |c: CertificateError| {
            Outer(std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::InvalidCertificate(c)))
        };
        assert!(matches!(refused_certificate(&wrap(CertificateError::Expired)), Some(CertificateError::Expired)));
        assert!(matches!(
            refused_certificate(&wrap(CertificateError::UnknownIssuer)),
            Some(CertificateError::UnknownIssuer)
        ));
        let other = Outer(std::io::Error::other("connection refused"));
        assert!(refused_certificate(&other).is_none());
    }
}
