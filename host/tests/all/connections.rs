//! Connections cannot exhaust `skiff serve`: thousands of sockets that never send a byte, and
//! clients that trickle a request a byte a second, while real requests are still answered.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_server::{Role, ServeConfig};

use crate::support::Scripted;

fn config(data: &Path, top: &str) -> ServeConfig {
    ServeConfig::from_toml(&crate::serve::config_text(data, "", top), Path::new("/"), None).unwrap()
}

/// One request on a new connection; the status line.
fn request(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_sockets_cannot_starve_real_requests() {
    let limit = skiff_server::conn::raise_open_file_limit();
    let dir = tempfile::tempdir().unwrap();
    // Caps well under this process's open-file limit, which the test's own sockets share.
    let idle = ((limit as usize).saturating_sub(2000) / 3).min(3000);
    let cap = idle / 2;
    let extra = format!("max-connections = {cap}\nmax-connections-per-client = {cap}\nrequest-timeout-secs = 3\n");
    let server =
        skiff_server::start(config(dir.path(), &extra), Arc::new(Scripted::new().every("")), Role::All).await.unwrap();
    let (secret, token) = (crate::serve::WEBHOOK_SECRET, crate::serve::TOKEN_ALL);
    let addr = server.addr;

    // Twice the cap in sockets that never send a byte, then slow senders.
    let held: Vec<TcpStream> =
        tokio::task::spawn_blocking(move || (0..idle).filter_map(|_| TcpStream::connect(addr).ok()).collect())
            .await
            .unwrap();
    assert!(held.len() > cap, "only {} of {idle} sockets connected", held.len());
    let trickle = tokio::task::spawn_blocking(move || {
        let mut slow: Vec<TcpStream> = (0..50).filter_map(|_| TcpStream::connect(addr).ok()).collect();
        for byte in b"POST /hooks/web HTTP/1.1\r\n".iter().take(4) {
            for s in &mut slow {
                let _ = s.write_all(&[*byte]);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        slow
    });

    let body = br#"{"ref":"refs/heads/main","after":"1111","repository":{"full_name":"acme/web"}}"#;
    let hook = format!(
        "POST /hooks/web HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-github-event: push\r\n\
         x-github-delivery: d-1\r\nx-hub-signature-256: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        skiff_edge_core::github_signature(secret.as_bytes(), body),
        body.len(),
        String::from_utf8_lossy(body)
    );
    let api = format!("GET /v1/runs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n");
    for _ in 0..3 {
        let started = Instant::now();
        let answers = tokio::task::spawn_blocking({
            let (hook, api) = (hook.clone(), api.clone());
            move || {
                [
                    request(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
                    request(addr, hook.as_bytes()),
                    request(addr, api.as_bytes()),
                ]
            }
        })
        .await
        .unwrap();
        let took = started.elapsed();
        eprintln!("healthz, a webhook and an API call, each on a new connection: {took:?}");
        assert!(answers[0].contains(" 200 "), "{answers:?}");
        assert!(answers[1].contains(" 202 ") || answers[1].contains(" 200 "), "{answers:?}");
        assert!(answers[2].contains(" 200 "), "{answers:?}");
        // Not a benchmark: a starved server would not answer at all within the timeout.
        assert!(took < Duration::from_secs(5), "three requests took {took:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The request timeout closes what is still held: silent sockets and trickling ones.
    let slow = trickle.await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let closed = tokio::task::spawn_blocking(move || {
        held.iter().chain(&slow).all(|mut s| {
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut b = [0u8; 512];
            loop {
                match s.read(&mut b) {
                    // Closed by the server: end of stream, or a reset.
                    Ok(0) => return true,
                    // An error answer first (a 408, say), then the end.
                    Ok(_) => continue,
                    Err(e) => {
                        return !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
                    }
                }
            }
        })
    })
    .await
    .unwrap();
    assert!(closed, "a connection outlived the request timeout");
    server.halt();
}
