//! Outbound HTTP (`wasi:http`), only to allowlisted `host[:port]` patterns.
//!
//! The check runs in the host before any connection is made, for every
//! request, so it holds for redirects too (the guest follows them itself).
//! A name on the allowlist that resolves to a loopback, private or link-local
//! address is refused (DNS rebinding); such addresses are reachable only when
//! the allowlist names them literally, and cloud metadata (169.254.0.0/16) never.
//! HTTP and HTTPS then connect to the checked address itself ([`super::connect`]), the
//! certificate checked against the request's name, so a second DNS answer cannot swap it.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::log::LogPipe;

/// One allowlist entry: `example.com`, `*.example.com`, `example.com:8443`,
/// `127.0.0.1:9000`, `[::1]:8080`, or `*` (any public host on 80/443).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: String,
    /// None: the scheme's default port (80 or 443) only.
    port: Option<u16>,
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim().trim_start_matches("https://").trim_start_matches("http://");
        let t = t.split('/').next().unwrap_or("");
        if t.is_empty() {
            return Err(format!("`{s}` is not a host pattern: write `example.com`, `*.example.com` or `host:port`"));
        }
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (h, after) =
                rest.split_once(']').ok_or_else(|| format!("`{s}`: an IPv6 address needs a closing `]`"))?;
            let port = after.strip_prefix(':').map(parse_port).transpose()?;
            (h.to_string(), port)
        } else if let Some((h, p)) = t.rsplit_once(':') {
            (h.to_string(), Some(parse_port(p)?))
        } else {
            (t.to_string(), None)
        };
        let host = host.to_ascii_lowercase();
        let wildcard_ok = host == "*" || host.strip_prefix("*.").is_some_and(|r| !r.contains('*'));
        if host.contains('*') && !wildcard_ok {
            return Err(format!("`{s}`: `*` may only stand alone or as the first label, like `*.example.com`"));
        }
        Ok(Self { host, port })
    }

    fn matches(&self, host: &str, port: u16, default_port: u16) -> bool {
        let port_ok = match self.port {
            Some(p) => p == port,
            None => port == default_port,
        };
        let host_ok = if self.host == "*" {
            true
        } else if let Some(suffix) = self.host.strip_prefix("*.") {
            host.len() > suffix.len() + 1 && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
        } else {
            self.host == host
        };
        port_ok && host_ok
    }

    /// True when the pattern names an address (or localhost) itself, so the
    /// user meant a private address.
    pub fn is_literal_address(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok() || self.host == "localhost"
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    p.parse().map_err(|_| format!("`{p}` is not a port number"))
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match self.port {
            Some(p) => write!(f, "{host}:{p}"),
            None => f.write_str(&host),
        }
    }
}

/// The hosts a step may call, and whether it may only read from them.
#[derive(Debug, Clone, Default)]
pub struct Allowlist(Vec<HostPattern>, bool);

impl Allowlist {
    pub fn new(patterns: Vec<HostPattern>) -> Self {
        Self(patterns, false)
    }

    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        patterns.iter().map(|p| HostPattern::parse(p.as_ref())).collect::<Result<_, _>>().map(Self::new)
    }

    /// The same hosts for `GET`, `HEAD` and `OPTIONS` only (a fork's pull request).
    pub fn read_only(self) -> Self {
        Self(self.0, true)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether only reading methods are allowed.
    pub fn is_read_only(&self) -> bool {
        self.1
    }

    /// The pattern allowing `host:port`, if any.
    pub fn find(&self, host: &str, port: u16, default_port: u16) -> Option<&HostPattern> {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.0.iter().find(|p| p.matches(&host, port, default_port))
    }

    /// Whether a declared need (`host[:port]` or a URL) is covered.
    pub fn covers(&self, need: &str) -> bool {
        let Ok(p) = HostPattern::parse(need) else { return false };
        let https = !need.starts_with("http://");
        let default = if https { 443 } else { 80 };
        self.find(&p.host, p.port.unwrap_or(default), default).is_some()
    }
}

/// Addresses a step may reach only when the allowlist names them literally.
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.octets()[0] == 0 // "this network" 0/8 reaches the host itself on Linux
                || v4.octets()[0] >= 240 // reserved 240/4
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64) // CGNAT 100.64/10
                || (v4.octets()[0] == 198 && (v4.octets()[1] & 0xfe) == 18) // benchmarking 198.18/15
                || (v4.octets()[..3] == [192, 0, 0]) // IETF protocol assignments 192.0.0/24
        }
        IpAddr::V6(v6) => {
            let carried = carried_v4(v6);
            if !carried.is_empty() {
                return carried.into_iter().any(|v4| is_private(IpAddr::V4(v4)));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated, still routed by some)
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64 64:ff9b:1::/48
                || (s[0] == 0x100 && s[1..4] == [0, 0, 0]) // discard 100::/64
                || (s[0] == 0x2001 && s[1] == 0xdb8) // documentation 2001:db8::/32
        }
    }
}

/// Never reachable: cloud metadata services live here.
pub(crate) fn is_metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80 || carried_v4(v6).into_iter().any(|v4| v4.is_link_local())
        }
    }
}

/// The IPv4 addresses an IPv6 address carries, which is where a packet to it may end up:
/// IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4
/// `2002::/16` and Teredo `2001::/32` (its server, and its client with the bits inverted).
fn carried_v4(v6: std::net::Ipv6Addr) -> Vec<std::net::Ipv4Addr> {
    use std::net::Ipv4Addr;
    let o = v6.octets();
    let s = v6.segments();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return vec![v4];
    }
    if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
        return vec![last];
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return vec![last];
    }
    if s[0] == 0x2002 {
        return vec![Ipv4Addr::new(o[2], o[3], o[4], o[5])];
    }
    if s[0] == 0x2001 && s[1] == 0 {
        let server = Ipv4Addr::new(o[4], o[5], o[6], o[7]);
        let client = Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]);
        return vec![server, client];
    }
    Vec::new()
}

/// The `wasi:http` hooks of one step: policy, logging and metering.
pub struct HttpPolicy {
    pub allow: Allowlist,
    /// The roots HTTPS certificates are checked against.
    pub tls: Arc<rustls::ClientConfig>,
    pub log: Arc<LogPipe>,
    /// Bytes sent and received over HTTP by this step.
    pub traffic: Arc<AtomicU64>,
}

pub type SendFuture = Box<
    dyn Future<
            Output = Result<
                (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let _ = fut;
        let log = self.log.clone();
        let denied = move |msg: String| log.system(msg);
        send_allowed(&self.allow, &self.tls, request, options, Some(self.traffic.clone()), denied, |shown| {
            format!("grant it with `permissions: {{ hosts: [\"{shown}\"] }}`")
        })
    }
}

/// Sends `request` if `allow` permits it, else fails with `HttpRequestDenied`
/// after telling `denied` why (with `how_to_grant` for the host in question).
/// Counts the bytes sent and received in `traffic`.
pub fn send_allowed(
    allow: &Allowlist,
    tls: &Arc<rustls::ClientConfig>,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    traffic: Option<Arc<AtomicU64>>,
    denied: impl Fn(String) + Send + 'static,
    how_to_grant: impl Fn(&str) -> String,
) -> SendFuture {
    let https = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
    let default_port = if https { 443 } else { 80 };
    let Some(authority) = request.uri().authority().cloned() else {
        return Box::new(async { Err(HttpError::HttpRequestUriInvalid) });
    };
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
    let port = authority.port_u16().unwrap_or(default_port);
    let shown = format!("{host}:{port}");
    let Some(pattern) = allow.find(&host, port, default_port).cloned() else {
        denied(format!("denied outbound HTTP to `{shown}`: it is not in the allowlist ({})", how_to_grant(&shown)));
        return Box::new(async { Err(HttpError::HttpRequestDenied) });
    };
    if allow.1 && !matches!(*request.method(), http::Method::GET | http::Method::HEAD | http::Method::OPTIONS) {
        denied(format!(
            "denied `{}` to `{shown}`: a pull request from a fork may only read (GET, HEAD); the app's \
             `trust-fork-pull-requests = true` lifts this",
            request.method()
        ));
        return Box::new(async { Err(HttpError::HttpRequestDenied) });
    }
    let mut request = request;
    let tls = tls.clone();
    Box::new(async move {
        // Resolve first, and refuse private addresses a public name points to.
        let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| HttpError::DnsError { rcode: Some("NXDOMAIN".into()), info_code: None })?
            .collect();
        for a in &addrs {
            let ip = a.ip();
            if is_metadata(ip) || (is_private(ip) && !pattern.is_literal_address()) {
                denied(format!(
                    "denied outbound HTTP to `{shown}`: it resolves to {ip}, a private or metadata address; name the address itself in the allowlist to reach a private service"
                ));
                return Err(HttpError::HttpRequestDenied);
            }
        }
        // The request goes to the addresses just checked, so a second DNS answer cannot swap
        // them; the Host header, and TLS's certificate check, keep the name.
        if !request.headers().contains_key(http::header::HOST)
            && let Ok(v) = http::HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(http::header::HOST, v);
        }
        let sent = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        let tls_name = https.then_some((host.as_str(), tls));
        let (resp, io) = super::connect::send_to(request, &addrs, tls_name, options).await?;
        let resp = match traffic {
            None => resp.map(BodyExt::boxed_unsync),
            Some(counter) => {
                counter.fetch_add(sent, Ordering::Relaxed);
                resp.map(move |body| {
                    body.map_frame(move |frame| {
                        if let Some(data) = frame.data_ref() {
                            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                        frame
                    })
                    .boxed_unsync()
                })
            }
        };
        Ok((resp, io))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_hosts_and_ports() {
        let a = Allowlist::parse(&["example.com", "*.corp.dev", "127.0.0.1:9000", "[::1]:8080"]).unwrap();
        assert!(a.find("example.com", 443, 443).is_some());
        assert!(a.find("example.com", 80, 80).is_some());
        assert!(a.find("example.com", 8443, 443).is_none(), "a pattern without a port allows only the default");
        assert!(a.find("evil-example.com", 443, 443).is_none());
        assert!(a.find("api.corp.dev", 443, 443).is_some());
        assert!(a.find("corp.dev", 443, 443).is_none());
        assert!(a.find("xcorp.dev", 443, 443).is_none());
        assert!(a.find("127.0.0.1", 9000, 80).is_some());
        assert!(a.find("127.0.0.1", 9001, 80).is_none());
        assert!(a.find("[::1]", 8080, 80).is_some());
        assert!(a.covers("https://example.com/x"));
        assert!(!a.covers("https://other.com"));
    }

    #[test]
    fn bad_patterns_say_how_to_write_them() {
        assert!(HostPattern::parse("").unwrap_err().contains("host pattern"));
        assert!(HostPattern::parse("a.*.com").unwrap_err().contains("first label"));
        assert!(HostPattern::parse("a.com:http").unwrap_err().contains("port"));
    }

    #[test]
    fn private_and_metadata_addresses_are_recognised() {
        for ip in
            ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.4", "100.64.0.1", "::1", "fd00::1", "::ffff:127.0.0.1"]
        {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        assert!(is_metadata("169.254.169.254".parse().unwrap()));
        // IPv6 forms that carry an IPv4 address are judged by the address they carry.
        for ip in [
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2001:0:7f00:1::",
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo client 127.0.0.1 (inverted)
            "64:ff9b:1::1",
            "fec0::1",
            "ff02::1",
            "0.1.2.3",
            "198.18.0.1",
            "224.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        assert!(is_metadata("::169.254.169.254".parse().unwrap()));
        assert!(is_metadata("2002:a9fe:a9fe::".parse().unwrap()));
        assert!(is_metadata("64:ff9b::a9fe:a9fe".parse().unwrap()));
        for ip in ["2002:5db8:d822::1", "64:ff9b::5db8:d822", "2606:4700::1111", "::ffff:93.184.216.34"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
        assert!(!is_private("93.184.216.34".parse().unwrap()));
    }

    proptest::proptest! {
        #[test]
        fn host_patterns_never_panic(s in "\\PC{0,60}") {
            let _ = HostPattern::parse(&s);
        }
    }
}
