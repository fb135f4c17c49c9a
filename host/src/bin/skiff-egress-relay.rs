//! `skiff-egress-relay`: runs inside a sandbox whose processes may use the network, making the
//! host's egress proxy reachable at `127.0.0.1:3128` there (see `skiff_sandbox::relay`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(skiff_sandbox::relay::main(&args));
}
