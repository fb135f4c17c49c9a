//! The egress relay: the first program in a sandbox whose processes may use the network.
//!
//! The sandbox's network namespace holds only loopback, so nothing in it can reach the host's
//! services, a private network or a metadata address. Its one way out is the host's egress
//! proxy, a Unix socket bound into the sandbox. This relay listens on `127.0.0.1:PORT` inside
//! the namespace (where `HTTP_PROXY` and friends point), passes each connection to that
//! socket unchanged, and runs the step's program as its child, exiting as it exits.
//!
//! It runs inside the sandbox, so it is a plain program (`skiff-egress-relay`), std only.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt as _;

/// Where the proxy listens inside the sandbox.
pub const LISTEN: &str = "127.0.0.1:3128";
/// Where the host's egress socket is bound inside the sandbox.
pub const SOCKET: &str = "/run/skiff/egress.sock";
/// Where the relay program is bound inside the sandbox.
pub const PROGRAM: &str = "/run/skiff/egress-relay";

/// `skiff-egress-relay LISTEN SOCKET -- PROGRAM ARGS…`: returns the program's exit code
/// (128+N for a signal, as a shell reports it).
///
/// `skiff-egress-relay HOST PORT` (inside a sandbox): one connection to `HOST:PORT` through the
/// proxy, on stdin and stdout. That is the shape git's `core.gitProxy` (for `git://`) and ssh's
/// `ProxyCommand` (for `ssh://`) call, so those protocols take the same way out as HTTP.
pub fn main(args: &[String]) -> i32 {
    if let [host, port] = args
        && port.parse::<u16>().is_ok()
    {
        return connect(host, port);
    }
    let (Some(listen), Some(socket), Some("--")) = (args.first(), args.get(1), args.get(2).map(String::as_str)) else {
        eprintln!("usage: skiff-egress-relay LISTEN SOCKET -- PROGRAM [ARGS…]");
        return 2;
    };
    let Some(program) = args.get(3) else {
        eprintln!("skiff-egress-relay: no program to run");
        return 2;
    };
    let listener = match TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skiff-egress-relay: cannot listen on {listen}: {e}");
            return 126;
        }
    };
    let socket = socket.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let socket = socket.clone();
            std::thread::spawn(move || relay(conn, &socket));
        }
    });
    match std::process::Command::new(program).args(&args[4..]).status() {
        Ok(status) => status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        Err(e) => {
            eprintln!("skiff-egress-relay: cannot run `{program}`: {e}");
            if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 }
        }
    }
}

fn connect(host: &str, port: &str) -> i32 {
    let target = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut unix = match UnixStream::connect(SOCKET) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("skiff-egress-relay: this sandbox has no way out ({SOCKET}: {e})");
            return 1;
        }
    };
    if let Err(e) = write!(unix, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n") {
        eprintln!("skiff-egress-relay: {e}");
        return 1;
    }
    // The proxy's answer, byte by byte so nothing after it is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match unix.read(&mut byte) {
            Ok(1) if head.len() < 16 << 10 => head.push(byte[0]),
            _ => {
                eprintln!("skiff-egress-relay: the egress proxy closed the connection to {target}");
                return 1;
            }
        }
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        // The proxy's body says why (not in the allowlist, a private address, ...).
        let mut why = String::new();
        let _ = unix.read_to_string(&mut why);
        let first = head.lines().next().unwrap_or("");
        eprintln!("skiff-egress-relay: {target}: {} {}", first, why.trim());
        return 1;
    }
    let Ok(unix2) = unix.try_clone() else { return 1 };
    // Plain reads and writes on the descriptors themselves: `Stdout` buffers lines (git's
    // packets have none), and nothing here is worth a splice.
    use std::os::fd::AsFd as _;
    let (Ok(input), Ok(output)) =
        (std::io::stdin().as_fd().try_clone_to_owned(), std::io::stdout().as_fd().try_clone_to_owned())
    else {
        return 1;
    };
    std::thread::spawn(move || {
        pump(std::fs::File::from(input), &unix2);
        let _ = unix2.shutdown(Shutdown::Write);
    });
    pump(&unix, std::fs::File::from(output));
    0
}

fn relay(tcp: TcpStream, socket: &str) {
    let Ok(unix) = UnixStream::connect(socket) else { return };
    let (Ok(tcp2), Ok(unix2)) = (tcp.try_clone(), unix.try_clone()) else { return };
    let up = std::thread::spawn(move || copy(tcp2, unix2, |u| u.shutdown(Shutdown::Write)));
    copy(unix, tcp, |t| t.shutdown(Shutdown::Write));
    let _ = up.join();
}

fn pump(mut from: impl Read, mut to: impl Write) {
    let mut buf = [0u8; 16 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn copy<R: Read, W: Write>(mut from: R, mut to: W, close: impl Fn(&W) -> std::io::Result<()>) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = close(&to);
}
