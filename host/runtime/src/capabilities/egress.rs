//! Network for processes: the host's egress proxy, the one way out of a sandbox.
//!
//! A process never shares the host's network: its namespace holds only loopback, where the
//! relay (`skiff-egress-relay`) hands every connection to this proxy over a Unix socket. The
//! proxy speaks HTTP's proxy protocol (`CONNECT host:port` for TLS and anything else, and
//! absolute-form plain HTTP requests), and applies the same rules as a Wasm step's HTTP:
//! the step's `permissions.hosts` when it has any, otherwise any public host; names are
//! resolved here, and loopback, private, link-local and metadata addresses (IPv6 forms that
//! carry one included) are refused unless the allowlist names the address itself. It then
//! connects to the address it checked, so a second DNS answer cannot swap it, and counts the
//! bytes for metering.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixListener, UnixStream};

use super::http::{Allowlist, is_metadata, is_private};

/// Where a process may connect.
#[derive(Debug, Clone)]
pub enum Destinations {
    /// Any host whose addresses are public (`network: true` without `hosts`).
    Public,
    /// Only these (`permissions.hosts`).
    Only(Allowlist),
    /// Only these, which the host's operator named (an app's repository host): its private
    /// addresses are allowed, as a self-hosted forge often has one.
    Operator(Allowlist),
}

/// How the proxy tells the step what it refused.
pub type Notify = Arc<dyn Fn(String) + Send + Sync>;

/// A running proxy; it stops, and its socket goes, when dropped.
pub struct EgressProxy {
    dir: PathBuf,
    socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl EgressProxy {
    /// Starts a proxy for one process on a socket in a new private folder.
    pub fn start(to: Destinations, traffic: Arc<AtomicU64>, notify: Notify) -> std::io::Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "skiff-egress-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let socket = dir.join("egress.sock");
        let listener = UnixListener::bind(&socket)?;
        let policy = Arc::new(Policy { to, traffic, notify });
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, policy.clone()));
            }
        });
        Ok(EgressProxy { dir, socket, task })
    }

    /// The socket to bind into the sandbox.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The relay program to bind into sandboxes: `SKIFF_EGRESS_RELAY`, or `skiff-egress-relay`
/// beside this program (or one folder up, where test binaries live).
pub fn relay_program() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("SKIFF_EGRESS_RELAY") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program's own path: {e}"))?;
    exe.ancestors().skip(1).take(2).map(|d| d.join("skiff-egress-relay")).find(|p| p.is_file()).ok_or_else(|| {
        "processes with network need the program `skiff-egress-relay` installed beside `skiff` (or \
             SKIFF_EGRESS_RELAY naming it)"
            .to_string()
    })
}

struct Policy {
    to: Destinations,
    traffic: Arc<AtomicU64>,
    notify: Notify,
}

/// Headers of one request, at most this long.
const HEAD_MAX: usize = 16 << 10;
/// The request must arrive within this long.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

impl Policy {
    /// The addresses `host:port` may be reached at, all checked.
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<std::net::SocketAddr>, String> {
        let shown = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let literal_ok = match &self.to {
            Destinations::Public => false,
            Destinations::Only(allow) | Destinations::Operator(allow) => {
                let default = if port == 80 { 80 } else { 443 };
                match allow.find(host, port, default) {
                    Some(p) => p.is_literal_address() || matches!(self.to, Destinations::Operator(_)),
                    None => {
                        return Err(format!(
                            "denied a process's connection to `{shown}`: it is not in the step's allowlist \
                             (grant it with `permissions: {{ hosts: [\"{shown}\"] }}`)"
                        ));
                    }
                }
            }
        };
        let addrs: Vec<_> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("denied a process's connection to `{shown}`: the name does not resolve ({e})"))?
            .collect();
        for a in &addrs {
            let ip = a.ip();
            if is_metadata(ip) || (is_private(ip) && !literal_ok) {
                return Err(format!(
                    "denied a process's connection to `{shown}`: it resolves to {ip}, a loopback, private or metadata \
                     address; name the address itself in `permissions.hosts` to reach a private service"
                ));
            }
        }
        if addrs.is_empty() {
            return Err(format!("denied a process's connection to `{shown}`: the name has no address"));
        }
        Ok(addrs)
    }
}

async fn serve(mut client: UnixStream, policy: Arc<Policy>) {
    let mut buf = Vec::with_capacity(4096);
    let head_end = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client, &mut buf)).await {
        Ok(Some(n)) => n,
        _ => return answer(&mut client, "400 Bad Request", "skiff: the proxy request did not arrive whole").await,
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let rest = buf[head_end..].to_vec();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, target, version) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));

    let (host, port, forward) = if method.eq_ignore_ascii_case("CONNECT") {
        match split_host_port(target, None) {
            Some((h, p)) => (h, p, None),
            None => return answer(&mut client, "400 Bad Request", "skiff: CONNECT needs host:port").await,
        }
    } else {
        let Some(after) = target.strip_prefix("http://") else {
            return answer(
                &mut client,
                "400 Bad Request",
                "skiff: the egress proxy takes CONNECT, or plain http:// URLs in absolute form",
            )
            .await;
        };
        let (authority, path) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, "/"),
        };
        let Some((h, p)) = split_host_port(authority, Some(80)) else {
            return answer(&mut client, "400 Bad Request", "skiff: the URL has no host").await;
        };
        // Origin form to the server; one request per connection, so the next one is checked too.
        let mut out = format!("{method} {path} {version}\r\n");
        for l in lines.filter(|l| !l.is_empty()) {
            let name = l.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
            if !matches!(name.as_str(), "proxy-connection" | "proxy-authorization" | "connection" | "keep-alive") {
                out.push_str(l);
                out.push_str("\r\n");
            }
        }
        out.push_str("connection: close\r\n\r\n");
        (h, p, Some(out))
    };

    let addrs = match policy.resolve(&host, port).await {
        Ok(a) => a,
        Err(msg) => {
            (policy.notify)(msg.clone());
            return answer(&mut client, "403 Forbidden", &format!("skiff: {msg}")).await;
        }
    };
    let Ok(Ok(mut server)) = tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(&addrs[..])).await else {
        return answer(&mut client, "502 Bad Gateway", &format!("skiff: cannot connect to {host}:{port}")).await;
    };
    let sent_head = match forward {
        None => {
            if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
                return;
            }
            0
        }
        Some(head) => {
            if server.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            head.len() as u64
        }
    };
    if !rest.is_empty() && server.write_all(&rest).await.is_err() {
        return;
    }
    let moved = tokio::io::copy_bidirectional(&mut client, &mut server).await.map(|(a, b)| a + b).unwrap_or(0);
    policy.traffic.fetch_add(moved + sent_head + rest.len() as u64, Ordering::Relaxed);
}

/// Reads up to the end of the head; its length (with the blank line), or `None` if the
/// stream ended or the head is too long.
async fn read_head(client: &mut UnixStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        if buf.len() > HEAD_MAX {
            return None;
        }
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `host:port`, `[v6]:port`, or a bare host with `default`.
fn split_host_port(s: &str, default: Option<u16>) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default?,
            None => return None,
        };
        (h.to_string(), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h.to_string(), p.parse().ok()?),
            Some(_) => return None,
            None => (s.to_string(), default?),
        }
    };
    (!host.is_empty() && !host.contains(['/', '@', ' '])).then(|| (host.to_ascii_lowercase(), port))
}

async fn answer(client: &mut UnixStream, status: &str, body: &str) {
    let body = format!("{body}\n");
    let msg = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(msg.as_bytes()).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(split_host_port("example.com:443", None), Some(("example.com".into(), 443)));
        assert_eq!(split_host_port("Example.com", Some(80)), Some(("example.com".into(), 80)));
        assert_eq!(split_host_port("[::1]:8080", None), Some(("::1".into(), 8080)));
        assert_eq!(split_host_port("example.com", None), None);
        assert_eq!(split_host_port("user@evil:80", None), None);
        assert_eq!(split_host_port("::1:80", None), None);
        assert_eq!(split_host_port(":80", None), None);
    }

    #[tokio::test]
    async fn private_addresses_need_their_literal_grant() {
        let notify: Notify = Arc::new(|_| {});
        let p = Policy { to: Destinations::Public, traffic: Default::default(), notify: notify.clone() };
        for (h, port) in [("127.0.0.1", 80), ("169.254.169.254", 80), ("::127.0.0.1", 80), ("localhost", 8080)] {
            let e = p.resolve(h, port).await.unwrap_err();
            assert!(e.contains("loopback, private or metadata"), "{h}: {e}");
        }
        let only = Allowlist::parse(&["127.0.0.1:9000", "169.254.169.254"]).unwrap();
        let p = Policy { to: Destinations::Only(only), traffic: Default::default(), notify };
        assert!(p.resolve("127.0.0.1", 9000).await.is_ok());
        assert!(p.resolve("127.0.0.1", 9001).await.unwrap_err().contains("not in the step's allowlist"));
        assert!(p.resolve("169.254.169.254", 443).await.unwrap_err().contains("metadata"));
    }
}
