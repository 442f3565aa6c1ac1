//! The `pgstepup` binary as a DBA runs it: flags without a file, a config file, and the
//! errors a bad file gets.

use std::process::{Command, Stdio};
use std::time::Duration;

fn pgstepup() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgstepup"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("pgstepup-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn config_errors_name_the_file_the_key_and_the_problem() {
    let path = temp_file("bad.toml", "[upstream]\nurl = \"mysql://db:3306\"\n");
    let out = pgstepup()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("upstream.url"), "{stderr}");
    assert!(stderr.contains("mysql"), "{stderr}");

    let path = temp_file("typo.toml", "[proxy]\nlisten = \"127.0.0.1:1\"\nport = 5\n");
    let out = pgstepup()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("line 3") && stderr.contains("port"),
        "{stderr}"
    );

    let out = pgstepup()
        .args(["serve", "--listen", "no-port-here"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("command-line") && stderr.contains("proxy.listen"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serves_with_flags_only_and_stops_on_sigterm() {
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgstepup"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", "postgres://127.0.0.1:5432"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let conn_str = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let mut attempt = 0;
    let (client, conn) = loop {
        match tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await {
            Ok(c) => break c,
            Err(_) if attempt < 50 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("pgstepup did not come up: {e}"),
        }
    };
    tokio::spawn(conn);
    let row = client.query_one("SELECT 40 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);

    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
