//! Step-up through the real pages: headless Chromium (Debian's /usr/bin/chromium, driven by
//! `browser/webauthn_driver.js` with a CDP virtual authenticator) enrolls a key and approves or
//! denies statements that a real `psql` sent through a real pgstepup.
//!
//! Needs node, the driver's node_modules (`npm ci` in proto-tests/browser) and chromium, as
//! scripts/test.sh installs them; without them the test fails, it does not skip.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use proto_tests::stepup::{
    count, enrollment_link, last_segment, link_in, stepup_proxy, table_of_three, WebClient,
};
use proto_tests::{app_role, TestProxy, APP_USER};

/// How long one driver command may take (the driver gives each command 20 s; the first one
/// also waits for Chromium to start).
const DRIVER_REPLY: Duration = Duration::from_secs(60);

/// The browser driver: one Chromium page with a virtual authenticator, one JSON command per
/// line on its stdin and one JSON reply per line on its stdout.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// The driver's log (its stderr), for failure messages; also echoed to the test's stderr.
    log: Arc<Mutex<String>>,
}

impl Driver {
    fn start() -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            Path::new(&chromium).exists(),
            "{chromium} is missing: the browser tests need Debian's chromium (scripts/test.sh installs it)"
        );
        assert!(
            dir.join("browser/node_modules/playwright-core").is_dir(),
            "{}/browser/node_modules is missing: run 'npm ci' there (scripts/test.sh does)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg("browser/webauthn_driver.js")
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs the browser driver (node is required by the browser tests)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("{line}");
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Driver {
            child,
            stdin,
            stdout,
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends one command and returns its reply; panics (with the driver's log) if the driver
    /// does not answer or answers with an error.
    async fn send(&mut self, command: Value) -> Value {
        let line = format!("{command}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("writing {command} to the driver: {e}\n{}", self.log()));
        self.stdin.flush().await.unwrap();
        let reply = match tokio::time::timeout(DRIVER_REPLY, self.stdout.next_line()).await {
            Ok(Ok(Some(reply))) => reply,
            Ok(Ok(None)) => panic!(
                "the driver exited without answering {command}\ndriver log:\n{}",
                self.log()
            ),
            Ok(Err(e)) => panic!("reading the driver's reply to {command}: {e}"),
            Err(_) => panic!(
                "no reply to {command} within {DRIVER_REPLY:?}\ndriver log:\n{}",
                self.log()
            ),
        };
        let reply: Value = serde_json::from_str(&reply)
            .unwrap_or_else(|e| panic!("the driver's reply {reply:?} is not JSON: {e}"));
        if let Some(error) = reply.get("error") {
            panic!(
                "the driver failed {command}: {error}\ndriver log:\n{}",
                self.log()
            );
        }
        reply
    }

    /// Runs a page action and returns the #result text.
    async fn result(&mut self, command: Value) -> String {
        let reply = self.send(command.clone()).await;
        reply["result"]
            .as_str()
            .unwrap_or_else(|| panic!("no result text in the reply to {command}: {reply}"))
            .to_owned()
    }

    async fn credentials(&mut self) -> u64 {
        let reply = self.send(json!({"credentials": true})).await;
        reply["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("no count in {reply}"))
    }

    async fn quit(mut self) {
        let reply = self.send(json!({"quit": true})).await;
        assert_eq!(reply, json!({"quit": true}));
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the driver did not exit after quit\n{}", self.log()))
            .unwrap();
        assert!(status.success(), "driver: {status}\n{}", self.log());
    }
}

/// A real psql running one statement through the proxy.
struct Psql {
    child: Child,
    stderr: Lines<BufReader<ChildStderr>>,
    /// stderr lines read so far.
    stderr_seen: String,
    stdout: JoinHandle<String>,
}

/// What a finished psql printed.
struct PsqlOutput {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for PsqlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "psql {}\n--- stdout:\n{}--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl Psql {
    fn spawn(proxy: &TestProxy, sql: &str) -> Self {
        let mut child = Command::new("psql")
            .envs(proxy.client_env("require"))
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("psql runs (postgresql-client is required by the tests)");
        let mut stdout = child.stdout.take().unwrap();
        let stdout = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text).await;
            text
        });
        Psql {
            stderr: BufReader::new(child.stderr.take().unwrap()).lines(),
            stderr_seen: String::new(),
            stdout,
            child,
        }
    }

    /// Reads psql's stderr until the line with the approval link (the NOTICE is printed while
    /// the statement is held).
    async fn link(&mut self) -> String {
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = self.stderr.next_line().await {
                self.stderr_seen.push_str(&line);
                self.stderr_seen.push('\n');
                if let Some(link) = link_in(&line) {
                    return Some(link);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(link)) => link,
            Ok(None) => {
                let seen = self.stderr_seen.clone();
                let status = self.child.wait().await.unwrap();
                let stdout = (&mut self.stdout).await.unwrap();
                panic!(
                    "psql ended ({status}) without printing an approval link\n--- stdout:\n{stdout}--- stderr:\n{seen}"
                )
            }
            Err(_) => panic!(
                "no approval link on psql's stderr within 20 s; stderr so far:\n{}",
                self.stderr_seen
            ),
        }
    }

    /// Waits for psql to exit (killing it after `within`) and returns all it printed.
    async fn finish(mut self, within: Duration) -> PsqlOutput {
        let mut rest = self.stderr;
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            while let Ok(Some(line)) = rest.next_line().await {
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let waited = tokio::time::timeout(within, self.child.wait()).await;
        let timed_out = waited.is_err();
        let status = match waited {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = self.child.start_kill();
                self.child.wait().await.unwrap()
            }
        };
        let output = PsqlOutput {
            status,
            stdout: self.stdout.await.unwrap(),
            stderr: self.stderr_seen + &stderr.await.unwrap(),
        };
        // Shown with --nocapture, and by the harness when the test fails.
        eprintln!("{output}");
        assert!(!timed_out, "psql did not exit within {within:?}; {output}");
        output
    }
}

/// Enrolls a new key for the app user on `proxy` through the enrollment page.
async fn enroll(driver: &mut Driver, proxy: &TestProxy) {
    let link = enrollment_link(&proxy.admin_socket, APP_USER).await;
    assert!(link.starts_with(&proxy.public_url), "{link}");
    let result = driver.result(json!({ "enroll": link })).await;
    assert!(
        result.starts_with("enrolled"),
        "the enrollment page says {result:?}\ndriver log:\n{}",
        driver.log()
    );
}

/// Checks that the request behind `link` is still pending, as the approval page would load it.
async fn assert_pending(proxy: &TestProxy, link: &str) {
    let (status, details) = WebClient::of(proxy)
        .get(&format!("/api/approve/{}", last_segment(link)))
        .await;
    assert_eq!(status, 200, "{details}");
    assert_eq!(details["status"], "pending", "{details}");
    assert_eq!(details["user"], APP_USER, "{details}");
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_statement_held_then_approved_and_denied_in_headless_chromium() {
    app_role().await;
    let orders = table_of_three("stepup_browser").await;
    let proxy = stepup_proxy("60s", |_| {});
    let mut driver = Driver::start();

    // Enrollment through the enroll page: the virtual authenticator now holds one key.
    enroll(&mut driver, &proxy).await;
    assert_eq!(driver.credentials().await, 1, "{}", driver.log());

    // psql's DELETE is held; the NOTICE with the link arrives while psql waits.
    let mut psql = Psql::spawn(&proxy, &format!("DELETE FROM public.{orders} WHERE v = 1"));
    let link = psql.link().await;
    assert!(link.starts_with(&proxy.public_url), "{link}");
    assert_eq!(count(&orders).await, 3, "nothing runs while held");
    assert_pending(&proxy, &link).await;

    // Approval through the approve page with the enrolled key; psql's statement then runs.
    let result = driver.result(json!({ "approve": link })).await;
    assert!(
        result.starts_with("approved"),
        "the approval page says {result:?}\ndriver log:\n{}",
        driver.log()
    );
    let output = psql.finish(Duration::from_secs(10)).await;
    assert!(output.status.success(), "{output}");
    assert!(output.stdout.contains("DELETE 1"), "{output}");
    assert_eq!(count(&orders).await, 2);

    // The elevation lasts: the next write runs without a hold.
    let output = Psql::spawn(&proxy, &format!("DELETE FROM public.{orders} WHERE v = 2"))
        .finish(Duration::from_secs(10))
        .await;
    assert!(output.status.success(), "{output}");
    assert!(output.stdout.contains("DELETE 1"), "{output}");
    assert!(
        link_in(&output.stderr).is_none() && !output.stderr.contains("/approve/"),
        "no second challenge: {output}"
    );
    assert_eq!(count(&orders).await, 1);

    // Denial, on a second proxy (its own state, so the user is not elevated there) with a
    // key enrolled for it in the same browser.
    let kept = table_of_three("stepup_browser_deny").await;
    let second = stepup_proxy("60s", |_| {});
    assert_ne!(second.public_url, proxy.public_url);
    enroll(&mut driver, &second).await;
    assert_eq!(driver.credentials().await, 2, "{}", driver.log());
    let mut psql = Psql::spawn(&second, &format!("DELETE FROM public.{kept} WHERE v = 1"));
    let link = psql.link().await;
    assert!(link.starts_with(&second.public_url), "{link}");
    assert_pending(&second, &link).await;
    let result = driver.result(json!({ "deny": link })).await;
    assert!(
        result.starts_with("denied"),
        "the approval page says {result:?}\ndriver log:\n{}",
        driver.log()
    );
    let output = psql.finish(Duration::from_secs(10)).await;
    assert!(!output.status.success(), "{output}");
    assert!(output.stderr.contains("denied"), "{output}");
    assert!(!output.stdout.contains("DELETE"), "{output}");
    assert_eq!(count(&kept).await, 3, "a denied statement never runs");

    driver.quit().await;
}
