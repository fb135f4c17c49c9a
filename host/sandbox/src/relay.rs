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
pub fn main(args: &[String]) -> i32 {
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

fn relay(tcp: TcpStream, socket: &str) {
    let Ok(unix) = UnixStream::connect(socket) else { return };
    let (Ok(tcp2), Ok(unix2)) = (tcp.try_clone(), unix.try_clone()) else { return };
    let up = std::thread::spawn(move || copy(tcp2, unix2, |u| u.shutdown(Shutdown::Write)));
    copy(unix, tcp, |t| t.shutdown(Shutdown::Write));
    let _ = up.join();
}

fn copy<R: Read, W: Write>(mut from: R, mut to: W, close: impl Fn(&W) -> std::io::Result<()>) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = close(&to);
}
