//! The topology of deploy/compose/compose.yaml, as processes (no container engine runs in the
//! test suite): one PostgreSQL (the local one), one Redis, two `pgstepup serve` replicas sharing
//! it, and HAProxy as the TCP load balancer in front of both, health-checking GET /readyz as
//! deploy/compose/haproxy.cfg does. Sessions through the balancer reach both replicas and reads
//! flow; a third replica whose upstream is unreachable (/readyz 503) gets none; when one replica
//! dies, its sessions end, the other's keep working, and new connections through the balancer
//! all land on the survivor. A second test loads every configuration and policy file of deploy/
//! with the real code.
//!
//! Needs `haproxy` and `redis-server` (scripts/test.sh installs both); fails without them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use proto_tests::{free_port, wait_for_port, OwnRedis};
use tokio::process::{Child, Command};

const UPSTREAM: &str = "postgres://127.0.0.1:5432";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("proto-tests sits in the workspace")
        .to_path_buf()
}

/// The `pgstepup` binary of this workspace (`CARGO_BIN_EXE_pgstepup` exists only for the
/// pgstepup package's own tests). `cargo test --workspace` has just built it; when it is missing
/// or older than the sources (this test run alone), `cargo build -p pgstepup` first.
fn pgstepup_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let binary = target.join("debug").join("pgstepup");
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    let sources = [
        workspace().join("crates"),
        workspace().join("Cargo.toml"),
        workspace().join("Cargo.lock"),
    ]
    .iter()
    .filter_map(|p| newest(p))
    .max();
    if built.is_none() || sources > built {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "-p", "pgstepup", "--bin", "pgstepup"])
            .current_dir(workspace())
            .status()
            .expect("running cargo build -p pgstepup");
        assert!(status.success(), "cargo build -p pgstepup failed");
    }
    assert!(binary.is_file(), "{} was not built", binary.display());
    binary
}

/// The newest modification time of a file, or of any file under a directory.
fn newest(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|entry| newest(&entry.ok()?.path()))
        .max()
}

fn require(program: &str, version_flag: &str) {
    let found = std::process::Command::new(program)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{program} is needed (scripts/test.sh installs it: apt-get install {program})"
    );
}

/// A pgstepup replica: its ports and the file its log (stderr) goes to.
struct Replica {
    name: &'static str,
    proxy_port: u16,
    web_port: u16,
    log: PathBuf,
    child: Child,
}

impl Replica {
    async fn start(
        name: &'static str,
        binary: &Path,
        dir: &Path,
        upstream: &str,
        redis_port: u16,
    ) -> Replica {
        let proxy_port = free_port();
        let web_port = free_port();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(binary)
            .arg("serve")
            .args(["--config", dir.join("pgstepup.toml").to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{proxy_port}")])
            .args(["--web-listen", &format!("127.0.0.1:{web_port}")])
            .args(["--upstream", upstream])
            .args(["--redis", &format!("redis://127.0.0.1:{redis_port}")])
            .args([
                "--admin-socket",
                dir.join(format!("{name}.sock")).to_str().unwrap(),
            ])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null()) // the audit trail ("-")
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("pgstepup serve starts");
        let mut replica = Replica {
            name,
            proxy_port,
            web_port,
            log,
            child,
        };
        wait_for_port(proxy_port, name, &mut replica.child).await;
        wait_for_port(web_port, name, &mut replica.child).await;
        replica
    }

    /// Waits for GET /readyz to answer 200 (upstream and Redis reachable, policy loaded).
    async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.web_port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = reqwest::get(&url).await.map(|r| r.status().as_u16());
            if status.as_ref().is_ok_and(|s| *s == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {url} never answered 200: {status:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The application_name of every session this replica started, from its log.
    fn sessions(&self) -> Vec<String> {
        let log = strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default());
        log.lines()
            .filter(|line| line.contains("session started"))
            .filter_map(|line| {
                // application_name="NAME" as an event or span field (or "application_name":"NAME").
                let rest = line.split("application_name").nth(1)?;
                let name: String = rest
                    .trim_start_matches(['"', '=', ':'])
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                (!name.is_empty()).then_some(name)
            })
            .collect()
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Connects through the load balancer with a recognisable application_name and checks that a
/// read flows.
async fn connect(lb_port: u16, name: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={lb_port} user=postgres dbname=postgres \
             application_name={name} connect_timeout=5"
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: connecting through haproxy: {e}"));
    tokio::spawn(connection);
    let tables: i64 = client
        .query_one("SELECT count(*) FROM pg_catalog.pg_class", &[])
        .await
        .unwrap_or_else(|e| panic!("{name}: a read through haproxy: {e}"))
        .get(0);
    assert!(tables > 0);
    client
}

/// Waits until the replicas' logs account for every one of `names`; returns who served which.
async fn served_by(replicas: &[&Replica], names: &[String]) -> Vec<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen: Vec<Vec<String>> = replicas
            .iter()
            .map(|r| {
                r.sessions()
                    .into_iter()
                    .filter(|s| names.contains(s))
                    .collect()
            })
            .collect();
        if names.iter().all(|n| seen.iter().flatten().any(|s| s == n)) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas' logs do not show every session {names:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_replicas_one_redis_behind_haproxy() {
    require("haproxy", "-v");
    require("redis-server", "--version");
    let binary = tokio::task::spawn_blocking(pgstepup_binary).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), run(binary))
        .await
        .expect("the topology test finishes within 60 s");
}

async fn run(binary: PathBuf) {
    let dir = std::env::temp_dir().join(format!("pgstepup-topology-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // One Redis.
    let redis_port = free_port();
    let mut redis = OwnRedis::start(redis_port).await;

    // Both replicas read one configuration, as in deploy/compose (addresses come as flags): the
    // same Redis prefix, public_url and credential table (opened lazily; no key is used here).
    std::fs::write(
        dir.join("pgstepup.toml"),
        format!(
            "[web]\npublic_url = \"http://localhost:8443\"\n\n\
             [redis]\nprefix = \"pgstepup-topology-{}:\"\n\n\
             [step_up]\ncredentials = \"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable\"\n",
            std::process::id()
        ),
    )
    .unwrap();
    let a = Replica::start("replica-a", &binary, &dir, UPSTREAM, redis_port).await;
    let mut b = Replica::start("replica-b", &binary, &dir, UPSTREAM, redis_port).await;
    a.wait_ready().await;
    b.wait_ready().await;
    // A third replica that cannot reach its PostgreSQL: alive, but /readyz answers 503.
    let unreachable = format!("postgres://127.0.0.1:{}", free_port());
    let c = Replica::start("replica-c", &binary, &dir, &unreachable, redis_port).await;
    let status = reqwest::get(format!("http://127.0.0.1:{}/readyz", c.web_port))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 503, "replica-c's upstream is unreachable");

    // HAProxy as in deploy/compose/haproxy.cfg: plain TCP, new sessions only to replicas whose
    // GET /readyz on the web port answers 200 (checked every 500 ms here); a connection that
    // finds its server gone is sent to the other one.
    let lb_port = free_port();
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!(
            "global\n    maxconn 256\n    stats socket {}\n\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    \
             timeout server 30s\n    retries 2\n    option redispatch 1\n\n\
             frontend postgres\n    bind 127.0.0.1:{lb_port}\n    default_backend pgstepup\n\n\
             backend pgstepup\n    balance roundrobin\n    option httpchk\n    \
             http-check send meth GET uri /readyz\n    http-check expect status 200\n    \
             default-server inter 500 fall 2 rise 1\n    \
             server {} 127.0.0.1:{} check port {}\n    \
             server {} 127.0.0.1:{} check port {}\n    \
             server {} 127.0.0.1:{} check port {}\n",
            dir.join("haproxy.sock").display(),
            a.name,
            a.proxy_port,
            a.web_port,
            b.name,
            b.proxy_port,
            b.web_port,
            c.name,
            c.proxy_port,
            c.web_port
        ),
    )
    .unwrap();
    let check = std::process::Command::new("haproxy")
        .args(["-c", "-q", "-f"])
        .arg(dir.join("haproxy.cfg"))
        .status()
        .unwrap();
    assert!(
        check.success(),
        "haproxy -c rejects the generated configuration"
    );
    let mut haproxy = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy runs");
    wait_for_port(lb_port, "haproxy", &mut haproxy).await;
    // Until its health checks have run, HAProxy counts every server as up.
    let stats = dir.join("haproxy.sock");
    wait_for_states(&stats, &[(a.name, "UP"), (b.name, "UP"), (c.name, "DOWN")]).await;

    // Six sessions through the balancer: reads flow, both ready replicas serve some, and the
    // replica that is not ready none.
    let names: Vec<String> = (0..6).map(|i| format!("topology-{i}")).collect();
    let mut clients = Vec::new();
    for name in &names {
        clients.push(connect(lb_port, name).await);
    }
    let seen = served_by(&[&a, &b], &names).await;
    let (on_a, on_b) = (&seen[0], &seen[1]);
    assert_eq!(c.sessions(), Vec::<String>::new(), "replica-c is not ready");
    assert!(
        !on_a.is_empty() && !on_b.is_empty(),
        "round robin should reach both replicas: a {on_a:?}, b {on_b:?}"
    );
    assert_eq!(on_a.len() + on_b.len(), names.len(), "each session once");

    // One replica dies. Its sessions end; the other's keep working.
    let mut a = a;
    a.child.kill().await.unwrap();
    let _ = a.child.wait().await;
    for (name, client) in names.iter().zip(&clients) {
        let result = tokio::time::timeout(Duration::from_secs(5), client.simple_query("SELECT 1"))
            .await
            .unwrap_or_else(|_| panic!("{name}: no answer after the kill"));
        if on_a.contains(name) {
            assert!(result.is_err(), "{name} was on the killed replica");
        } else {
            result.unwrap_or_else(|e| panic!("{name} on the survivor: {e}"));
        }
    }

    // New connections through the balancer all work, right away (the balancer retries the other
    // server before its health check notices), and all land on the survivor.
    let after: Vec<String> = (0..4).map(|i| format!("topology-after-{i}")).collect();
    for name in &after {
        connect(lb_port, name).await;
    }
    let seen = served_by(&[&b], &after).await;
    assert_eq!(seen[0].len(), after.len());
    assert_eq!(c.sessions(), Vec::<String>::new(), "replica-c is not ready");
    wait_for_states(
        &stats,
        &[(a.name, "DOWN"), (b.name, "UP"), (c.name, "DOWN")],
    )
    .await;

    assert!(
        b.child.try_wait().unwrap().is_none(),
        "the survivor keeps running"
    );
    drop(clients);
    let _ = haproxy.kill().await;
    let _ = b.child.kill().await;
    redis.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The state of each of HAProxy's servers (UP, DOWN, ...), from its stats socket.
async fn server_states(socket: &Path) -> Vec<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::UnixStream::connect(socket).await else {
        return Vec::new();
    };
    stream.write_all(b"show stat\n").await.unwrap();
    let mut csv = String::new();
    stream.read_to_string(&mut csv).await.unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (Some(sv), Some(status)) = (column("svname"), column("status")) else {
        return Vec::new();
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > status && f[sv].starts_with("replica-"))
        .map(|f| (f[sv].to_owned(), f[status].to_owned()))
        .collect()
}

async fn wait_for_states(socket: &Path, expected: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let states = server_states(socket).await;
        let matches = expected.iter().all(|(server, state)| {
            states
                .iter()
                .any(|(s, st)| s == server && st.starts_with(state))
        });
        if matches {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "HAProxy's servers should be {expected:?}, are {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The block scalar `key: |` of a YAML file, unindented (the ConfigMap's embedded files).
fn yaml_block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let header = lines.next().unwrap_or_else(|| panic!("no {key}: | block"));
    let outer = header.len() - header.trim_start().len();
    let mut block = String::new();
    for line in lines {
        let indent = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && indent <= outer {
            break;
        }
        block.push_str(line.get(outer + 2..).unwrap_or(""));
        block.push('\n');
    }
    block
}

/// Every configuration and policy file in deploy/ loads in the real code: deploy/validate.py
/// checks that their keys are documented, this checks that pgstepup accepts them.
#[test]
fn deploy_configuration_files_load() {
    let deploy = workspace().join("deploy");
    let dir = std::env::temp_dir().join(format!("pgstepup-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let configmap = std::fs::read_to_string(deploy.join("kubernetes/configmap.yaml")).unwrap();
    let embedded = dir.join("configmap-pgstepup.toml");
    std::fs::write(&embedded, yaml_block(&configmap, "pgstepup.toml")).unwrap();
    // The Deployment passes the upstream, Redis and credential-store URLs from its Secret as
    // flags.
    let from_secret = || pgstepup_config::Overrides {
        upstream: Some(
            "postgres://pgstepup_auth:secret@postgres.database.svc:5432/postgres".into(),
        ),
        redis: Some("redis://:secret@redis.database.svc:6379".into()),
        credentials: Some(
            "postgres://pgstepup_keys:secret@postgres.database.svc:5432/pgstepup".into(),
        ),
        ..Default::default()
    };
    for (path, overrides) in [
        (deploy.join("docker/pgstepup.toml"), Default::default()),
        (deploy.join("compose/pgstepup.toml"), Default::default()),
        (deploy.join("systemd/pgstepup.toml"), Default::default()),
        (embedded, from_secret()),
    ] {
        let config = pgstepup_config::Config::load(Some(&path), overrides)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            config.proxy.shutdown_grace_secs,
            30,
            "{}: the stop timeouts in deploy/ assume 30 s",
            path.display()
        );
    }
    let policy = dir.join("configmap-policy.toml");
    std::fs::write(&policy, yaml_block(&configmap, "policy.toml")).unwrap();
    let binary = pgstepup_binary();
    for path in [policy, deploy.join("policy.example.toml")] {
        let out = std::process::Command::new(&binary)
            .args(["check", "--lint", "--policy"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
