//! Test harness for the protocol tests: a real pgstepup (run in-process from the library,
//! exactly as the binary runs it) in front of the real PostgreSQL on 127.0.0.1:5432, test
//! certificates made with the `openssl` command, and roles with SCRAM passwords.
//!
//! Every test gets its own proxy on a free port, so tests run in parallel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use pgstepup::Service;
use pgstepup_config::{AuthMethod, Config};
use tokio::sync::oneshot;

/// The PostgreSQL every test runs against (trust auth on loopback, as set up by the test command).
pub const UPSTREAM: &str = "127.0.0.1:5432";

/// The ordinary role (SCRAM password, owns [`APP_DB`]) clients log in as.
pub const APP_USER: &str = "stepup_app";
/// Its password.
pub const APP_PASSWORD: &str = "app-secret-ü";
/// Its database.
pub const APP_DB: &str = "stepup_app";

/// Test certificates: a CA and a server certificate for `localhost` and `127.0.0.1`.
pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub mod stepup;

/// Makes the certificates once per test process, in a directory of its own that also holds
/// its audit files.
pub fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pgstepup-certs-{}", std::process::id()));
        // Process ids come round again (pid_max is 32768 here): a directory left by an
        // earlier process with this id would hand its audit records to this one.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        make_certs(&dir);
        Certs {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            dir,
        }
    })
}

fn make_certs(dir: &Path) {
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let run = |args: &[&str]| openssl(dir, args);
    let ec = EC_KEY;
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "3",
            "-subj",
            "/CN=pgstepup test CA",
        ],
    ]
    .concat());
    sign_server_certificate(dir, "server.key", "server.pem");
}

const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command is required by the tests");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh key and a certificate for localhost signed by the test CA, written to `key` and
/// `cert` (names relative to `dir`, or absolute).
fn sign_server_certificate(dir: &Path, key: &str, cert: &str) {
    let csr = format!("{key}.csr");
    openssl(
        dir,
        &[
            &["req"][..],
            &EC_KEY,
            &["-keyout", key, "-out", &csr, "-subj", "/CN=localhost"],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "3",
            "-sha256",
            "-extfile",
            "san.ext",
        ],
    );
}

/// Replaces `cert` and `key` with a new certificate from the test CA (as a renewal would).
pub fn issue_certificate(cert: &Path, key: &Path) {
    sign_server_certificate(
        &certs().dir,
        &key.display().to_string(),
        &cert.display().to_string(),
    );
}

/// The certificate pgstepup presents at `addr` to a new TLS connection: the PostgreSQL
/// listener (SSLRequest first) or, with `postgres` false, the web listener.
pub async fn server_certificate(addr: SocketAddr, postgres: bool) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    if postgres {
        tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"S");
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls_config(&[])));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// A superuser connection to the upstream, bypassing pgstepup (set-up and checks only).
pub async fn admin_client(database: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port=5432 user=postgres dbname={database}"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL on 127.0.0.1:5432 with trust auth for postgres");
    tokio::spawn(conn);
    client
}

/// Runs SQL as the superuser on the upstream (set-up only).
pub async fn admin(sql: &str) {
    admin_in("postgres", sql).await
}

/// Runs SQL as the superuser in a given database of the upstream.
pub async fn admin_in(database: &str, sql: &str) {
    admin_client(database)
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Creates the app role and database once per test process (idempotent across processes).
pub async fn app_role() {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        // Test processes run this at once: a transaction-scoped lock (one implicit
        // transaction holds the whole batch) serialises them, where concurrent ALTER ROLEs
        // fail with "tuple concurrently updated".
        admin(&format!(
            "SELECT pg_advisory_xact_lock(7240001);
             DO $$BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_USER}') THEN
                 CREATE ROLE {APP_USER} LOGIN;
               END IF;
             END$$;
             SET password_encryption = 'scram-sha-256';
             ALTER ROLE {APP_USER} PASSWORD '{APP_PASSWORD}';"
        ))
        .await;
        let client = admin_client("postgres").await;
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&APP_DB])
            .await
            .unwrap()
            .is_some();
        if !exists {
            // Another test process may race us; a duplicate is fine.
            let _ = client
                .batch_execute(&format!("CREATE DATABASE {APP_DB} OWNER {APP_USER}"))
                .await;
        }
        drop_leftover_tables().await;
    })
    .await;
}

/// The policy protocol tests run under: the built-in default (reads flow; admin, DCL, role
/// changes and anything not understood are refused), plus writes and DDL so the tests can
/// create their tables. A client query pgstepup fails to understand is refused and fails them.
pub const PROTOCOL_TEST_POLICY: &str = r#"
[[rule]]
name = "tests-may-write"
kinds = ["write", "ddl"]
action = "allow"
"#;

/// Runs `SELECT pg_sleep(30)` on `client`, sends a CancelRequest (without TLS, to wherever the
/// client connected) 300 ms in, and checks the statement ends with 57014 well before 30 s.
/// Returns the client, to show the session goes on.
pub async fn cancel_a_sleep(client: tokio_postgres::Client) -> tokio_postgres::Client {
    use std::time::Duration;
    let cancel = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        let outcome = client.simple_query("SELECT pg_sleep(30)").await;
        (client, outcome)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel accepted");
    let (client, outcome) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the statement ends well before 30 s")
        .unwrap();
    assert_eq!(
        outcome.expect_err("cancelled").code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    client
}

/// The records of an audit trail so far (none while the file does not exist).
pub fn audit_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A fresh audit file path for one proxy.
pub fn audit_file() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    certs().dir.join(format!(
        "audit-{}.jsonl",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Gives a test proxy its own web port, admin socket and credential file, so proxies in
/// parallel tests never meet.
pub fn isolate(config: &mut Config) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    config.web.listen = "127.0.0.1:0".into();
    // A test that ends inside a transaction must not wait out the production grace period.
    config.proxy.shutdown_grace_secs = 1;
    config.step_up.admin_socket = Some(certs().dir.join(format!("admin-{n}.sock")));
    config.step_up.credentials = certs()
        .dir
        .join(format!("credentials-{n}.json"))
        .display()
        .to_string();
}

/// Appended to test policies that exercise refusals: a statement that needs step-up is
/// refused at once (with its link) instead of being held, so such tests never wait.
pub const REFUSE_AT_ONCE: &str = "\n[applications]\nrefuse_at_once = [\"*\"]\n";

/// Writes a policy file (with [`REFUSE_AT_ONCE`] appended) and returns its path.
pub fn write_policy(text: &str) -> PathBuf {
    write_policy_as_is(&format!("{text}{REFUSE_AT_ONCE}"))
}

/// Writes a policy file exactly as given: statements needing step-up are held.
pub fn write_policy_as_is(text: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let path = certs().dir.join(format!(
        "policy-{}.toml",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// Points a configuration at a policy file (as `[policy] file = ...` would).
pub fn use_policy_file(config: &mut Config, path: &Path) {
    let mut table = toml::Table::new();
    table.insert(
        "file".into(),
        toml::Value::String(path.display().to_string()),
    );
    config.policy = Some(table);
    config.path = Some(certs().dir.join("pgstepup.toml"));
}

/// Tests name their tables `<name>_<pid>`; tables of test processes that are gone (a run that
/// failed before cleaning up) are dropped so runs do not pile them up.
async fn drop_leftover_tables() {
    let client = admin_client(APP_DB).await;
    let rows = client
        .query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename ~ '_[0-9]+$'",
            &[],
        )
        .await
        .unwrap_or_default();
    for row in rows {
        let name: String = row.get(0);
        let pid = name.rsplit('_').next().unwrap_or_default();
        if !Path::new("/proc").join(pid).exists() {
            let _ = client
                .batch_execute(&format!("DROP TABLE IF EXISTS public.\"{name}\""))
                .await;
        }
    }
}

/// How a test proxy authenticates clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// SCRAM against verifiers fetched by the `postgres` login (auth query).
    Scram,
    /// The upstream's own authentication, relayed.
    Passthrough,
}

/// A running pgstepup for one test.
pub struct TestProxy {
    pub addr: SocketAddr,
    /// The web side's address and the base of its links.
    pub web_addr: SocketAddr,
    pub public_url: String,
    pub admin_socket: PathBuf,
    /// What SIGHUP would run.
    pub reloader: pgstepup::Reloader,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestProxy {
    /// A proxy with TLS and SCRAM: the configuration the product is meant to run with.
    pub fn start() -> Self {
        Self::with(Auth::Scram, true, |_| {})
    }

    /// A proxy with a chosen auth mode and TLS, plus any other configuration tweak.
    pub fn with(auth: Auth, tls: bool, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::default();
        config.proxy.listen = "127.0.0.1:0".into();
        config.upstream.url = match auth {
            Auth::Scram => format!("postgres://postgres@{UPSTREAM}/postgres"),
            Auth::Passthrough => format!("postgres://{UPSTREAM}"),
        };
        config.auth.method = Some(match auth {
            Auth::Scram => AuthMethod::Scram,
            Auth::Passthrough => AuthMethod::Passthrough,
        });
        if tls {
            config.tls.cert = Some(certs().cert.clone());
            config.tls.key = Some(certs().key.clone());
        }
        config.origin = "test".into();
        use_policy_file(&mut config, &write_policy(PROTOCOL_TEST_POLICY));
        config.audit.file = audit_file();
        isolate(&mut config);
        tweak(&mut config);
        config.validate().expect("test configuration is valid");
        Self::from_config(config)
    }

    /// Runs the proxy for an explicit configuration.
    pub fn from_config(config: Config) -> Self {
        init_logs();
        let admin_socket = config.admin_socket();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let service = Service::bind(config).await.expect("pgstepup binds");
                addr_tx
                    .send((
                        service.proxy_addr().unwrap(),
                        service.web_addr().unwrap(),
                        service.public_url().to_owned(),
                        service.reloader(),
                    ))
                    .unwrap();
                service
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
            // Sessions still running are dropped with the runtime.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        });
        let (addr, web_addr, public_url, reloader) = addr_rx.recv().expect("proxy started");
        TestProxy {
            addr,
            web_addr,
            public_url,
            reloader,
            admin_socket,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// What SIGTERM does: stop accepting, report not ready, drain. Returns at once.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// A libpq-style connection string for `user`/`password` through the proxy.
    pub fn conn_str(&self, user: &str, password: &str, db: &str, sslmode: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password='{password}' dbname={db} sslmode={sslmode}",
            self.addr.port()
        )
    }

    /// Connects the app user with tokio-postgres over verified TLS.
    pub async fn connect_app(&self) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
        self.connect_with(&self.conn_str(APP_USER, APP_PASSWORD, APP_DB, "require"))
            .await
            .expect("app user connects through the proxy")
    }

    /// Connects with tokio-postgres using the test CA.
    pub async fn connect_with(
        &self,
        conn_str: &str,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(conn_str, tls_connector()).await?;
        let handle = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((client, handle))
    }

    /// Environment for libpq-based and other real clients (PG* variables).
    pub fn client_env(&self, sslmode: &str) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), "127.0.0.1".into()),
            ("PGPORT".into(), self.addr.port().to_string()),
            ("PGUSER".into(), APP_USER.into()),
            ("PGPASSWORD".into(), APP_PASSWORD.into()),
            ("PGDATABASE".into(), APP_DB.into()),
            ("PGSSLMODE".into(), sslmode.into()),
            ("PGSSLROOTCERT".into(), certs().ca.display().to_string()),
        ]
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A tokio-postgres TLS connector trusting the test CA.
pub fn tls_connector() -> tokio_postgres_rustls::MakeRustlsConnect {
    tokio_postgres_rustls::MakeRustlsConnect::new(client_tls_config(&[]))
}

/// A rustls client configuration trusting the test CA, offering the given ALPN ids.
pub fn client_tls_config(alpn: &[&[u8]]) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(&certs().ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    config
}

fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A free loopback port (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on `port`; panics if `child` exits first or after 20 s.
pub async fn wait_for_port(port: u16, what: &str, child: &mut tokio::process::Child) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening on {port}: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never listened on {port}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A Redis of the test's own (not the shared one on 6379), so it can be stopped and started.
pub struct OwnRedis {
    pub port: u16,
    child: Option<tokio::process::Child>,
}

impl OwnRedis {
    /// Starts `redis-server` on `port`, keeping nothing on disk, and waits until it listens.
    pub async fn start(port: u16) -> Self {
        let mut child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs");
        wait_for_port(port, "redis-server", &mut child).await;
        OwnRedis {
            port,
            child: Some(child),
        }
    }

    /// Stops it (a later [`OwnRedis::start`] on the same port brings it back, empty).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
            let _ = child.wait().await;
        }
    }
}
