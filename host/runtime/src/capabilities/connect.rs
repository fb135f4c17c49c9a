//! Outbound HTTP and HTTPS to the address that was checked.
//!
//! The allowlist check resolves a name and refuses private and metadata addresses; the
//! connection must then go to an address from that answer, never to a second lookup's (which
//! a hostile DNS server could point at `127.0.0.1`). `wasmtime_wasi_http`'s default sender
//! connects by name, so this is the same exchange over a connection of our own: TCP to the
//! checked addresses, TLS with the request's host name for the certificate check (the Web PKI
//! roots, plus the CA bundle an app or host trusts), then one HTTP/1.1 request.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions};

/// The body a guest sends.
pub type OutBody = http_body_util::combinators::UnsyncBoxBody<Bytes, HttpError>;

/// TLS settings with the Web PKI roots only, shared.
pub fn web_pki() -> Arc<rustls::ClientConfig> {
    static DEFAULT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    DEFAULT.get_or_init(|| build(rustls::RootCertStore::empty())).clone()
}

/// TLS settings for a step: the Web PKI roots, and `extra` PEM certificates when given.
pub fn tls_config(extra_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let Some(pem) = extra_pem else { return Ok(web_pki()) };
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("the CA bundle is not PEM certificates: {e}"))?;
        roots.add(cert).map_err(|e| format!("a certificate of the CA bundle is not usable: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err("the CA bundle holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)".into());
    }
    Ok(build(roots))
}

fn build(mut roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

/// The response and the future that drives the connection to its end.
pub type Sent = (
    Response<http_body_util::combinators::UnsyncBoxBody<Bytes, HttpError>>,
    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
);

/// Sends `req` over a connection to one of `addrs`, over TLS for `tls_name` when given.
pub async fn send_to(
    mut req: Request<OutBody>,
    addrs: &[SocketAddr],
    tls_name: Option<(&str, Arc<rustls::ClientConfig>)>,
    options: Option<RequestOptions>,
) -> Result<Sent, HttpError> {
    let connect_timeout = options.and_then(|o| o.connect_timeout).unwrap_or(Duration::from_secs(600));
    let first_byte_timeout = options.and_then(|o| o.first_byte_timeout).unwrap_or(Duration::from_secs(600));
    let tcp = match tokio::time::timeout(connect_timeout, TcpStream::connect(addrs)).await {
        Ok(s) => s.map_err(HttpError::Connect)?,
        Err(_) => return Err(HttpError::ConnectionTimeout),
    };
    // Origin form: the request line holds the path, the Host header the name.
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    *req.uri_mut() = http::Uri::builder().path_and_query(path).build().map_err(|_| HttpError::HttpRequestUriInvalid)?;
    match tls_name {
        None => exchange(tcp, req, connect_timeout, first_byte_timeout).await,
        Some((name, config)) => {
            let server_name = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => rustls::pki_types::ServerName::from(ip),
                Err(_) => {
                    rustls::pki_types::ServerName::try_from(name.to_string()).map_err(HttpError::InvalidDnsNameError)?
                }
            };
            let connector = tokio_rustls::TlsConnector::from(config);
            let tls = match tokio::time::timeout(connect_timeout, connector.connect(server_name, tcp)).await {
                Ok(s) => s.map_err(HttpError::Tls)?,
                Err(_) => return Err(HttpError::ConnectionTimeout),
            };
            exchange(tls, req, connect_timeout, first_byte_timeout).await
        }
    }
}

async fn exchange<S>(
    stream: S,
    req: Request<OutBody>,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
) -> Result<Sent, HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new().handshake(hyper_util::rt::TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)?
    .map_err(HttpError::Hyper)?;
    // The connection is driven on its own task; the guest's future reports how it ended.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = done_tx.send(conn.await);
    });
    let resp = tokio::time::timeout(first_byte_timeout, sender.send_request(req))
        .await
        .map_err(|_| HttpError::ConnectionReadTimeout)?
        .map_err(HttpError::Hyper)?;
    let resp = resp.map(|b| b.map_err(HttpError::Hyper).boxed_unsync());
    let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> = Box::new(async move {
        match done_rx.await {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(e)) => Err(HttpError::Hyper(e)),
        }
    });
    Ok((resp, io))
}
