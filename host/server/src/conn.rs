//! Connections: the accept loop, with timeouts and caps so that no client can exhaust the
//! server by holding sockets open.
//!
//! Each connection's reads and writes are timed by a thin wrapper around its socket; a
//! sweeper closes
//! - a connection with an unanswered request (or nothing yet) for longer than the request
//!   timeout: a socket that never sends a byte, a header or a body sent at one byte a second;
//! - a connection with nothing moving either way for longer than the idle timeout (a kept-alive
//!   connection between requests; a log stream writes a keep-alive comment every 15 s).
//!
//! At the cap on connections (overall, or from one client address), a new connection does not
//! wait: the connection that has gone longest without an answer (or, failing that, without
//! moving) is closed to make room, so a real request is served at once while an attacker's
//! idle sockets are the ones that go.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Timeouts and caps of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// A request must be read and answered within this long (headers and body included).
    pub request_timeout: Duration,
    /// A connection with nothing moving is closed after this long.
    pub idle_timeout: Duration,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one client address.
    pub max_per_client: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        // Leave room under the open-file limit for the run store, logs, workspaces and steps.
        let files = open_file_limit();
        let max_connections = (files.saturating_sub(2048) * 3 / 4).clamp(64, 16384) as usize;
        ConnLimits {
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            max_connections,
            max_per_client: max_connections / 4,
        }
    }
}

/// Raises the soft open-file limit to the hard one (sockets are files); returns the limit now.
pub fn raise_open_file_limit() -> u64 {
    let mut lim = libc_rlimit();
    if lim.0 < lim.1 {
        set_nofile(lim.1);
        lim = libc_rlimit();
    }
    lim.0
}

fn open_file_limit() -> u64 {
    libc_rlimit().0
}

#[allow(unsafe_code)]
fn libc_rlimit() -> (u64, u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return (1024, 1024);
    }
    (r.rlim_cur, r.rlim_max)
}

#[allow(unsafe_code)]
fn set_nofile(n: u64) {
    let r = libc::rlimit { rlim_cur: n, rlim_max: n };
    // SAFETY: setrlimit reads the struct we own; raising the soft limit to the hard one is allowed.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
}

/// What the sweeper knows of one connection.
struct Conn {
    peer: IpAddr,
    accepted: Instant,
    clock: Arc<Clock>,
    close: CancellationToken,
}

/// Times on a connection, in milliseconds since it was accepted (0 = never): the last read,
/// the last write, and the first read since the last write (where the current request began).
#[derive(Default)]
struct Clock {
    read: AtomicU64,
    write: AtomicU64,
    request: AtomicU64,
}

impl Conn {
    /// Whether a request (or the first one) waits for its answer.
    fn pending(&self) -> bool {
        let (r, w) = (self.clock.read.load(Ordering::Relaxed), self.clock.write.load(Ordering::Relaxed));
        w == 0 || r > w
    }
    /// How long the pending request has waited: since the accept for the first one, since its
    /// first byte for a later one on a kept-alive connection.
    fn waiting(&self, now: Instant) -> Duration {
        let since =
            if self.clock.write.load(Ordering::Relaxed) == 0 { 0 } else { self.clock.request.load(Ordering::Relaxed) };
        now.saturating_duration_since(self.accepted + Duration::from_millis(since))
    }
    /// Since anything moved.
    fn idle(&self, now: Instant) -> Duration {
        let last = self.clock.read.load(Ordering::Relaxed).max(self.clock.write.load(Ordering::Relaxed));
        now.saturating_duration_since(self.accepted + Duration::from_millis(last))
    }
}

#[derive(Default)]
struct Registry {
    conns: HashMap<u64, Conn>,
    per_client: HashMap<IpAddr, usize>,
    next: u64,
}

impl Registry {
    /// The connection to close to make room: the longest-waiting unanswered one, else the
    /// longest idle; among `peer`'s only when `peer` is given.
    fn victim(&self, now: Instant, peer: Option<IpAddr>) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, c)| peer.is_none_or(|p| c.peer == p))
            .max_by_key(|(_, c)| if c.pending() { (1, c.waiting(now)) } else { (0, c.idle(now)) })
            .map(|(id, _)| *id)
    }

    fn remove(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            c.close.cancel();
            if let Some(n) = self.per_client.get_mut(&c.peer) {
                *n -= 1;
                if *n == 0 {
                    self.per_client.remove(&c.peer);
                }
            }
        }
    }
}

/// Serves `router` on `listener` until `stop` is cancelled; open connections then get `grace`
/// to finish.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnLimits,
    stop: CancellationToken,
    grace: Duration,
) {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let sweeper = tokio::spawn(sweep(registry.clone(), limits));
    let all = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors: make room by closing the longest-waiting connection.
                    let victim = {
                        let reg = registry.lock().unwrap_or_else(|e| e.into_inner());
                        reg.victim(Instant::now(), None)
                    };
                    match victim {
                        Some(id) => registry.lock().unwrap_or_else(|e| e.into_inner()).remove(id),
                        None => {
                            tracing::warn!("accepting a connection failed: {e}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (id, clock, close) = {
            let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let ip = canonical(peer);
            if reg.per_client.get(&ip).copied().unwrap_or(0) >= limits.max_per_client
                && let Some(v) = reg.victim(now, Some(ip))
            {
                reg.remove(v);
            }
            if reg.conns.len() >= limits.max_connections
                && let Some(v) = reg.victim(now, None)
            {
                reg.remove(v);
            }
            let id = reg.next;
            reg.next += 1;
            let clock = Arc::new(Clock::default());
            let close = all.child_token();
            reg.conns.insert(id, Conn { peer: ip, accepted: now, clock: clock.clone(), close: close.clone() });
            *reg.per_client.entry(ip).or_default() += 1;
            (id, clock, close)
        };
        let io = hyper_util::rt::TokioIo::new(Timed { inner: stream, clock, since: Instant::now() });
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let registry = registry.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.request_timeout);
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = close.cancelled() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = close.cancelled() => {}
                    }
                }
            }
            registry.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        all.cancel();
        tracker.wait().await;
    }
    sweeper.abort();
}

/// An IPv4 client seen through an IPv6 socket counts as itself.
fn canonical(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        ip => ip,
    }
}

async fn sweep(registry: Arc<Mutex<Registry>>, limits: ConnLimits) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
        let expired: Vec<u64> = reg
            .conns
            .iter()
            .filter(|(_, c)| {
                if c.pending() { c.waiting(now) > limits.request_timeout } else { c.idle(now) > limits.idle_timeout }
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            reg.remove(id);
        }
    }
}

/// A socket whose reads and writes are timed for the sweeper.
struct Timed {
    inner: TcpStream,
    clock: Arc<Clock>,
    since: Instant,
}

impl Timed {
    fn stamp(&self, which: &AtomicU64) {
        // Never 0, which means "never".
        which.store(self.now(), Ordering::Relaxed);
    }
    fn now(&self) -> u64 {
        self.since.elapsed().as_millis() as u64 + 1
    }
    fn stamp_read(&self) {
        let now = self.now();
        if self.clock.read.load(Ordering::Relaxed) <= self.clock.write.load(Ordering::Relaxed) {
            self.clock.request.store(now, Ordering::Relaxed);
        }
        self.clock.read.store(now, Ordering::Relaxed);
    }
}

impl AsyncRead for Timed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.stamp_read();
        }
        r
    }
}

impl AsyncWrite for Timed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.stamp(&self.clock.write);
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.stamp(&self.clock.write);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(peer: &str, accepted: Instant, read: u64, write: u64) -> Conn {
        let clock = Arc::new(Clock::default());
        clock.read.store(read, Ordering::Relaxed);
        clock.write.store(write, Ordering::Relaxed);
        clock.request.store(read, Ordering::Relaxed);
        Conn { peer: peer.parse().unwrap(), accepted, clock, close: CancellationToken::new() }
    }

    #[test]
    fn the_longest_unanswered_connection_goes_first() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        let mut reg = Registry::default();
        reg.conns.insert(1, conn("10.0.0.1", t0, 9_000, 9_500)); // answered, idle 0.5 s
        reg.conns.insert(2, conn("10.0.0.2", t0 + Duration::from_secs(5), 0, 0)); // silent for 5 s
        reg.conns.insert(3, conn("10.0.0.2", t0, 9_900, 0)); // trickling for 10 s, never answered
        reg.conns.insert(4, conn("10.0.0.1", t0, 1_000, 2_000)); // answered, idle 8 s
        assert_eq!(reg.victim(now, None), Some(3));
        assert_eq!(reg.victim(now, Some("10.0.0.1".parse().unwrap())), Some(4));
        assert!(reg.conns[&3].pending() && !reg.conns[&4].pending());
    }
}
