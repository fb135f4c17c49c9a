//! What the test suites of Skiff's crates share and that needs this crate's insides: a
//! throwaway PostgreSQL cluster for the store tests here and the host-pool tests of `skiff`
//! (which turn on the `testing` feature).

/// A throwaway PostgreSQL cluster, one per test process, started on first use: Debian's
/// `initdb` and `pg_ctl` (`/usr/lib/postgresql/*/bin`, or `SKIFF_PG_BIN`, or `PATH`), a temp
/// folder, a free port on 127.0.0.1 with its socket in the folder, trust authentication, no
/// fsync. As root, the cluster runs as the `postgres` user (else `nobody`), since `initdb`
/// refuses root. A watcher process stops it (`pg_ctl stop -m immediate`) and removes the
/// folder when the test process ends. Each test gets a database of its own.
pub mod postgres {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    use crate::store::PostgresStore;

    struct Cluster {
        port: u16,
        /// The folder of its Unix socket, where the tests' own connections go (a TLS-only
        /// cluster refuses plain TCP).
        socket: PathBuf,
        /// For a TLS-only cluster: the authority that signed its certificate (PEM).
        ca: Option<PathBuf>,
    }

    /// A database of its own in the cluster.
    pub struct Database {
        /// `postgres://postgres@127.0.0.1:PORT/NAME`.
        pub url: String,
        /// For a database of [`tls_database`]: the authority its server's certificate is
        /// signed by (a PEM file), which `url` does not name.
        pub ca: Option<PathBuf>,
        socket: PathBuf,
        port: u16,
        name: String,
    }

    impl Database {
        /// A store (a host) on it: connected and migrated.
        pub fn store(&self) -> PostgresStore {
            PostgresStore::connect(&self.url).unwrap()
        }

        /// A plain connection to it.
        pub fn client(&self) -> postgres::Client {
            connect(&self.socket, self.port, &self.name)
        }
    }

    fn connect(socket: &Path, port: u16, db: &str) -> postgres::Client {
        postgres::Config::new()
            .host_path(socket)
            .port(port)
            .user("postgres")
            .dbname(db)
            .connect(postgres::NoTls)
            .unwrap()
    }

    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    static TLS_CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

    /// A new database, or `None` (after a loud `SKIPPED:`) when PostgreSQL is not installed
    /// and `CI` is not `true`. Callable from async tests too: the synchronous client runs on
    /// a thread of its own.
    pub fn database() -> Option<Database> {
        std::thread::scope(|s| {
            s.spawn(|| create(&CLUSTER, false)).join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// A new database in a second cluster that takes TCP connections over TLS only
    /// (`hostssl`, and `hostnossl … reject`), with a certificate for `127.0.0.1` (an IP
    /// address, no DNS name) signed by an authority of its own ([`Database::ca`]).
    pub fn tls_database() -> Option<Database> {
        std::thread::scope(|s| {
            s.spawn(|| create(&TLS_CLUSTER, true)).join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    fn create(which: &'static OnceLock<Result<Cluster, String>>, tls: bool) -> Option<Database> {
        let cluster = match which.get_or_init(|| start(tls)) {
            Ok(c) => c,
            Err(why) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("the PostgreSQL store tests cannot run under CI=true: {why}");
                }
                // Past the test harness's capture of `eprintln!`, so that `cargo test` shows it.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: a PostgreSQL store test did not run: {why}; `scripts/setup.sh` installs it"
                );
                return None;
            }
        };
        static N: AtomicU64 = AtomicU64::new(0);
        static CREATE: Mutex<()> = Mutex::new(());
        let name = format!("t_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        {
            let _one_at_a_time = CREATE.lock().unwrap_or_else(|e| e.into_inner());
            connect(&cluster.socket, cluster.port, "postgres")
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .unwrap();
        }
        Some(Database {
            url: format!("postgres://postgres@127.0.0.1:{}/{name}", cluster.port),
            ca: cluster.ca.clone(),
            socket: cluster.socket.clone(),
            port: cluster.port,
            name,
        })
    }

    /// The folder of `initdb` and `pg_ctl`, the newest version installed.
    fn bin_dir() -> Option<PathBuf> {
        // Set, it is the only place looked at (`SKIFF_PG_BIN=/nowhere` shows the skip).
        if let Some(dir) = std::env::var_os("SKIFF_PG_BIN") {
            let dir = PathBuf::from(dir);
            return dir.join("initdb").is_file().then_some(dir);
        }
        let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .filter(|(_, bin)| bin.join("initdb").is_file())
            .collect();
        debian.sort();
        if let Some((_, bin)) = debian.pop() {
            return Some(bin);
        }
        std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file()))
    }

    fn output(cmd: &mut Command) -> Result<String, String> {
        let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{cmd:?}: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn start(tls: bool) -> Result<Cluster, String> {
        let Some(bin) = bin_dir() else {
            return Err(
                "PostgreSQL's `initdb` was not found (in /usr/lib/postgresql/*/bin, SKIFF_PG_BIN or PATH)".into()
            );
        };
        // Found but not working is a failure, never a skip.
        Ok(launch(&bin, tls).unwrap_or_else(|e| panic!("starting a PostgreSQL cluster with {}: {e}", bin.display())))
    }

    /// A certificate authority and a server certificate for 127.0.0.1 it signed, written to
    /// `data` (`server.crt`, `server.key`, owned by `user`, private) and `root` (`ca.pem`).
    fn certificates(root: &Path, data: &Path, user: Option<&str>) -> Result<PathBuf, String> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        let e = |e: rcgen::Error| e.to_string();
        let ca_key = KeyPair::generate().map_err(e)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "skiff test authority");
        let ca = ca.self_signed(&ca_key).map_err(e)?;
        let key = KeyPair::generate().map_err(e)?;
        let mut server = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        server.subject_alt_names = vec![SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())];
        let server = server.signed_by(&key, &ca, &ca_key).map_err(e)?;
        let io = |e: std::io::Error| e.to_string();
        std::fs::write(data.join("server.crt"), server.pem()).map_err(io)?;
        std::fs::write(data.join("server.key"), key.serialize_pem()).map_err(io)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        if let Some(u) = user {
            output(Command::new("chown").arg(u).arg(data.join("server.crt")).arg(data.join("server.key")))?;
        }
        // Only TLS over TCP; the socket stays open for the tests' own connections.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .map_err(io)?;
        let ca_file = root.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).map_err(io)?;
        Ok(ca_file)
    }

    fn launch(bin: &Path, tls: bool) -> Result<Cluster, String> {
        let root = tempfile::Builder::new().prefix("skiff-pg-").tempdir().map_err(|e| e.to_string())?.keep();
        let data = root.join("data");
        // As root, as a user initdb accepts, who owns the folder.
        let user = if output(Command::new("id").arg("-u"))? == "0" {
            let user = if output(Command::new("id").args(["-u", "postgres"])).is_ok() { "postgres" } else { "nobody" };
            output(Command::new("chown").arg(user).arg(&root))?;
            Some(user)
        } else {
            None
        };
        let as_user = |program: &Path| {
            let mut cmd = match user {
                Some(u) => {
                    let mut c = Command::new("runuser");
                    c.args(["-u", u, "--"]).arg(program);
                    c
                }
                None => Command::new(program),
            };
            cmd.current_dir(&root);
            cmd
        };
        output(as_user(&bin.join("initdb")).arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]))?;
        let ca = if tls { Some(certificates(&root, &data, user)?) } else { None };
        let pg_ctl = bin.join("pg_ctl");
        // Another process may take the port between asking and binding: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut options = format!(
                "-p {port} -h 127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
                root.display()
            );
            if tls {
                options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
            }
            let started = output(
                as_user(&pg_ctl)
                    .arg("-D")
                    .arg(&data)
                    .arg("-l")
                    .arg(root.join("log"))
                    .args(["-w", "-t", "60", "-o", &options, "start"])
                    .stdout(Stdio::null()),
            );
            match started {
                Ok(_) => {
                    watch(user, &pg_ctl, &data, &root);
                    return Ok(Cluster { port, socket: root.clone(), ca });
                }
                Err(e) => last = format!("{e}\n{}", std::fs::read_to_string(root.join("log")).unwrap_or_default()),
            }
        }
        let _ = std::fs::remove_dir_all(&root);
        Err(last)
    }

    /// A process of its own session that outlives this one, then stops the cluster and
    /// removes its folder.
    fn watch(user: Option<&str>, pg_ctl: &Path, data: &Path, root: &Path) {
        let run_as = user.map(|u| format!("runuser -u {u} -- ")).unwrap_or_default();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {run_as}'{pg_ctl}' -D '{data}' stop -m immediate; rm -rf '{root}'",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            data = data.display(),
            root = root.display(),
        );
        Command::new("setsid")
            .args(["-f", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut c| c.wait())
            .expect("starting the PostgreSQL cluster's watcher (setsid)");
    }
}

/// A real S3-compatible server for tests: `s3s-fs` (crates.io: `cargo install s3s-fs --version
/// 0.14.1 --features binary`; `scripts/setup.sh` builds it into `target/tools/bin`), found
/// through `SKIFF_S3S_FS`, there, or `PATH`. A missing server is a failure, never a skip.
pub mod s3 {
    use std::path::PathBuf;
    use std::time::Duration;

    /// The access key id the server takes.
    pub const ACCESS_KEY: &str = "AKTEST";
    /// Its secret key.
    pub const SECRET_KEY: &str = "SKTEST";

    /// `s3s-fs` on a free port of 127.0.0.1, serving a folder with one bucket, `bucket`;
    /// stopped when dropped.
    pub struct S3Server {
        /// Its port.
        pub port: u16,
        /// The folder it serves (`bucket/` is the bucket).
        pub root: tempfile::TempDir,
        child: std::process::Child,
    }

    impl Drop for S3Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Where `s3s-fs` is.
    pub fn binary() -> PathBuf {
        if let Ok(p) = std::env::var("SKIFF_S3S_FS") {
            return p.into();
        }
        let installed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/bin/s3s-fs");
        if installed.is_file() {
            return installed;
        }
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("s3s-fs")).find(|p| p.is_file()))
            .expect(
                "this test needs the s3s-fs server: run scripts/setup.sh, or `cargo install s3s-fs --version 0.14.1 \
                 --features binary` and set SKIFF_S3S_FS",
            )
    }

    impl S3Server {
        /// Starts one and waits until it listens.
        pub fn start() -> Self {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir(root.path().join("bucket")).unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let child = std::process::Command::new(binary())
                .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", ACCESS_KEY])
                .args(["--secret-key", SECRET_KEY])
                .arg(root.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            S3Server { port, root, child }
        }

        /// `http://127.0.0.1:PORT`.
        pub fn endpoint(&self) -> String {
            format!("http://127.0.0.1:{}", self.port)
        }
    }
}
