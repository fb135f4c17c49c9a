//! A hostile Spin component: each path is one attack on the host that serves it
//! (`skiff edge up`). The host must answer every one with an error of its own
//! and go on serving; `/healthz` shows that it does.

use bytes::Bytes;
use spin_sdk::http::{FullBody, Request, Response, StatusCode};
use spin_sdk::http_service;

type Reply = Response<FullBody<Bytes>>;

#[http_service]
async fn handle(req: Request) -> Reply {
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "ok".into()),
        // Spins without ever yielding: only an epoch interrupt can stop it.
        "/spin" => {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        // Grows memory until the host's limit refuses; the allocator then aborts.
        "/alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "/panic" => panic!("the hostile component panics on purpose"),
        // A body over the host's response limit (16 MiB).
        "/huge" => reply(StatusCode::OK, Bytes::from(vec![b'x'; 20 << 20])),
        // What the sandbox shows: environment, files, sockets. All must be empty or refused.
        "/probe" => {
            let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            let file =
                std::fs::read_to_string("/etc/passwd").map(|_| "read".to_string()).unwrap_or_else(|e| e.to_string());
            let dir = std::fs::read_dir("/").map(|_| "listed".to_string()).unwrap_or_else(|e| e.to_string());
            let tcp = std::net::TcpStream::connect("127.0.0.1:1")
                .map(|_| "connected".to_string())
                .unwrap_or_else(|e| e.to_string());
            let text = format!("env: {}\nfile: {file}\ndir: {dir}\ntcp: {tcp}\n", env.join(" "));
            reply(StatusCode::OK, text.into())
        }
        _ => reply(StatusCode::NOT_FOUND, "no such attack".into()),
    }
}

fn reply(status: StatusCode, body: Bytes) -> Reply {
    let mut resp = Response::new(FullBody::new(body));
    *resp.status_mut() = status;
    resp
}
