//! pgstepup in front of a throwaway PostgreSQL cluster of each test's own, which demands SCRAM
//! over verified TLS on TCP and trusts its Unix socket: the client authenticates to pgstepup,
//! and pgstepup logs in upstream as the same user with the ClientKey from the client's proof,
//! never knowing the password; or pgstepup, on the database host, reaches it by its socket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use proto_tests::stepup::WebClient;
use proto_tests::{cancel_a_sleep, certs, free_port, Auth, TestProxy};
use tokio_postgres::error::SqlState;

const USER: &str = "scram_user";
const PASSWORD: &str = "scram-pass";

/// A private cluster with `hostssl ... scram-sha-256` only over TCP and `trust` on its Unix
/// socket (in `dir`); stopped on drop.
struct Cluster {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl Cluster {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb");
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pgstepup-test-cluster-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, "super-pass\n").unwrap();
        std::fs::copy(&certs().cert, dir.join("server.pem")).unwrap();
        std::fs::copy(&certs().key, dir.join("server.key")).unwrap();
        chown_postgres(&dir);
        let data = dir.join("data");
        run_as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--pwfile",
                pwfile.to_str().unwrap(),
                "-E",
                "UTF8",
            ],
        );
        // Only TLS + SCRAM over TCP.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{d}'\n\
             ssl = on\nssl_cert_file = '{d}/server.pem'\nssl_key_file = '{d}/server.key'\n",
            d = dir.display()
        );
        let mut existing = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        existing.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), existing).unwrap();
        run_as_postgres(
            &bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                dir.join("log").to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        let cluster = Cluster { dir, port, bin };
        cluster.psql(&format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"));
        cluster.psql(&format!("CREATE DATABASE {USER} OWNER {USER}"));
        cluster
    }

    fn psql(&self, sql: &str) {
        run_as_postgres(
            &self.bin.join("psql"),
            &[
                "-h",
                self.dir.to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn chown_postgres(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("chmod")
        .arg("600")
        .arg(path.join("server.key"))
        .status()
        .unwrap();
    assert!(status.success());
}

fn run_as_postgres(program: &Path, args: &[&str]) {
    // initdb and postgres refuse to run as root.
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn client_key_logs_into_a_scram_only_upstream_over_verified_tls() {
    let cluster = Cluster::start();
    let proxy = TestProxy::with(Auth::Scram, true, |c| {
        c.upstream.url = format!(
            "postgres://postgres:super-pass@localhost:{}/postgres",
            cluster.port
        );
        c.upstream.tls = pgstepup_config::UpstreamTlsMode::VerifyFull;
        c.upstream.tls_root_cert = Some(certs().ca.clone());
    });

    // Channel binding on the client leg (to pgstepup's certificate).
    let conn = format!(
        "{} channel_binding=require",
        proxy.conn_str(USER, PASSWORD, USER, "require")
    );
    let (client, _c) = proxy
        .connect_with(&conn)
        .await
        .expect("login through pgstepup");
    let row = client
        .query_one(
            "SELECT current_user::text, s.ssl, a.application_name FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), USER);
    assert!(row.get::<_, bool>(1), "the upstream leg is TLS");

    // A wrong password never reaches the upstream as a login.
    let err = proxy
        .connect_with(&proxy.conn_str(USER, "wrong", USER, "require"))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));

    // A password changed upstream after lookup still cannot be bypassed: the verifier is read
    // per login, so the old password fails and the new one works.
    cluster.psql(&format!("ALTER ROLE {USER} PASSWORD 'rotated'"));
    assert!(proxy
        .connect_with(&proxy.conn_str(USER, PASSWORD, USER, "require"))
        .await
        .is_err());
    proxy
        .connect_with(&proxy.conn_str(USER, "rotated", USER, "require"))
        .await
        .expect("the rotated password works");
}

#[tokio::test]
async fn an_upstream_certificate_that_does_not_verify_is_refused() {
    let cluster = Cluster::start();
    // A CA that did not sign the cluster's certificate.
    let other_ca = cluster.dir.join("other-ca.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args([
            "-keyout",
            "/dev/null",
            "-days",
            "1",
            "-subj",
            "/CN=unrelated CA",
            "-out",
        ])
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(out.status.success());
    let proxy = TestProxy::with(Auth::Passthrough, false, |c| {
        c.upstream.url = format!("postgres://localhost:{}", cluster.port);
        c.upstream.tls = pgstepup_config::UpstreamTlsMode::VerifyFull;
        c.upstream.tls_root_cert = Some(other_ca.clone());
    });
    let err = proxy
        .connect_with(&proxy.conn_str("postgres", "super-pass", "postgres", "disable"))
        .await
        .expect_err("refused");
    let db = err.as_db_error().expect("a clear server error");
    assert_eq!(db.code(), &SqlState::CONNECTION_FAILURE);
    assert!(db.message().contains("TLS"), "{}", db.message());
}

#[tokio::test]
async fn sslmode_in_the_upstream_url_is_honoured() {
    let cluster = Cluster::start();
    // The cluster accepts TCP logins only over TLS, so sslmode=disable must be refused by it.
    let proxy = TestProxy::with(Auth::Passthrough, false, |c| {
        c.upstream.url = format!("postgres://localhost:{}?sslmode=disable", cluster.port);
        c.upstream.tls = pgstepup_config::UpstreamTlsMode::Require;
    });
    let err = proxy
        .connect_with(&proxy.conn_str("postgres", "super-pass", "postgres", "disable"))
        .await
        .expect_err("refused by pg_hba");
    let db = err.as_db_error().expect("the server's own error, relayed");
    assert_eq!(db.code(), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
    assert!(db.message().contains("no encryption"), "{}", db.message());
}

#[tokio::test]
async fn the_upstream_can_be_reached_by_its_unix_socket() {
    let cluster = Cluster::start();
    // Over TCP the cluster asks for TLS and a password; only its socket lets `postgres` in
    // without one, so every login below proves the socket was used.
    let proxy = TestProxy::with(Auth::Passthrough, false, |c| {
        c.upstream.url = format!(
            "postgres:///postgres?host={}&port={}",
            cluster.dir.display(),
            cluster.port
        );
    });
    let (client, _c) = proxy
        .connect_with(&proxy.conn_str("postgres", "", "postgres", "disable"))
        .await
        .expect("login through the socket");
    let row = client
        .query_one("SELECT inet_server_addr() IS NULL, $1::int + 1", &[&41i32])
        .await
        .unwrap();
    assert!(
        row.get::<_, bool>(0),
        "the upstream session is on a Unix socket"
    );
    assert_eq!(row.get::<_, i32>(1), 42, "extended protocol relayed");

    // Ctrl-C travels the socket too: the cancel reaches the backend running the statement.
    let client = cancel_a_sleep(client).await;
    assert_eq!(
        client
            .query_one("SELECT 7", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        7,
        "the session goes on after the cancel"
    );

    // Readiness probes the socket as well.
    let web = WebClient::of(&proxy);
    web.await_readiness(200).await;
}
