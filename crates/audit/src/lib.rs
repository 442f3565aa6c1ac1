//! The audit trail: one JSON object per line, each carrying the hash of the line before it, so
//! removing, reordering or editing a record breaks the chain at that point.
//!
//! A line is `{...fields...,"prev":"<hex>","hash":"<hex>"}` where `hash` is the SHA-256 of the
//! line's text up to (not including) `,"hash":`. The first record of a new file has a `prev` of
//! 64 zeros; appending to an existing file continues its chain. [`verify`] checks a file and
//! names the first broken record.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use sha2::{Digest, Sha256};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_FIELD: &str = ",\"hash\":\"";

/// One audited event. Empty optional fields are left out of the line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the elevation granted or used ends (unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elevation_expires: Option<u64>,
    /// The WebAuthn credential (base64url id) that approved, failed or was revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// The step-up challenge the event belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenge_id: Option<String>,
}

impl Record {
    /// SHA-256 of a statement's text, hex: identifies it without repeating it.
    pub fn digest(statement: &str) -> String {
        hex(&Sha256::digest(statement.as_bytes()))
    }
}

/// Why the audit trail could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: line {line}: {reason}")]
    Broken {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

enum Sink {
    Stdout,
    File(File),
}

struct Chain {
    sink: Sink,
    prev: String,
}

/// An append-only, hash-chained audit log.
pub struct AuditLog {
    instance: String,
    chain: Mutex<Chain>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    instance: &'a str,
    #[serde(flatten)]
    record: &'a Record,
}

impl AuditLog {
    /// Appends to `path` (continuing its chain), or writes to stdout when `path` is `-`.
    pub fn open(path: &Path, instance: String) -> Result<Self, AuditError> {
        let io_error = |source| AuditError::Io {
            path: path.to_owned(),
            source,
        };
        let chain = if path == Path::new("-") {
            Chain {
                sink: Sink::Stdout,
                prev: GENESIS.to_owned(),
            }
        } else {
            let prev = match File::open(path) {
                // Appending to a broken chain would hide the break: refuse instead.
                Ok(file) => walk(path, file)?.1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => GENESIS.to_owned(),
                Err(e) => return Err(io_error(e)),
            };
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(io_error)?;
            Chain {
                sink: Sink::File(file),
                prev,
            }
        };
        Ok(AuditLog {
            instance,
            chain: Mutex::new(chain),
        })
    }

    /// Writes one record. A failure to write is returned (callers log it loudly).
    pub fn record(&self, record: &Record) -> io::Result<()> {
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let json = serde_json::to_string(&Line {
            time,
            instance: &self.instance,
            record,
        })
        .map_err(io::Error::other)?;
        let mut chain = self.chain.lock().unwrap_or_else(|e| e.into_inner());
        let body = format!("{},\"prev\":\"{}\"", &json[..json.len() - 1], chain.prev);
        let hash = hex(&Sha256::digest(body.as_bytes()));
        let line = format!("{body}{HASH_FIELD}{hash}\"}}\n");
        match &mut chain.sink {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(line.as_bytes())?;
                out.flush()?;
            }
            Sink::File(file) => {
                file.write_all(line.as_bytes())?;
                file.flush()?;
            }
        }
        chain.prev = hash;
        Ok(())
    }
}

/// Checks one line against the previous hash; returns its own hash.
fn check_line(line: &str, prev: &str) -> Result<String, String> {
    serde_json::from_str::<serde_json::Value>(line).map_err(|e| format!("not JSON: {e}"))?;
    let at = line
        .rfind(HASH_FIELD)
        .ok_or_else(|| "no hash field".to_owned())?;
    let (body, tail) = line.split_at(at);
    let claimed = tail[HASH_FIELD.len()..]
        .strip_suffix("\"}")
        .ok_or_else(|| "the hash field must end the record".to_owned())?;
    let actual = hex(&Sha256::digest(body.as_bytes()));
    if claimed != actual {
        return Err("the record was altered (its hash does not match its contents)".into());
    }
    let expected_prev = format!(",\"prev\":\"{prev}\"");
    if !body.ends_with(&expected_prev) {
        return Err(
            "the chain is broken here (a record before it was removed, reordered or altered)"
                .into(),
        );
    }
    Ok(actual)
}

/// Verifies a whole audit file; returns the number of records.
pub fn verify(path: &Path) -> Result<usize, AuditError> {
    let file = File::open(path).map_err(|source| AuditError::Io {
        path: path.to_owned(),
        source,
    })?;
    walk(path, file).map(|(count, _)| count)
}

/// Checks every record of an open audit file; returns the count and the last hash.
fn walk(path: &Path, file: File) -> Result<(usize, String), AuditError> {
    let mut prev = GENESIS.to_owned();
    let mut count = 0;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| AuditError::Io {
            path: path.to_owned(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        prev = check_line(&line, &prev).map_err(|reason| AuditError::Broken {
            path: path.to_owned(),
            line: n + 1,
            reason,
        })?;
        count += 1;
    }
    Ok((count, prev))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("pgstepup-audit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    fn record(event: &'static str, user: &str) -> Record {
        Record {
            event,
            user: Some(user.into()),
            statement: Some("DELETE FROM t".into()),
            statement_digest: Some(Record::digest("DELETE FROM t")),
            ..Default::default()
        }
    }

    #[test]
    fn chain_verifies_and_continues_across_reopen() {
        let path = temp("chain.jsonl");
        let log = AuditLog::open(&path, "i1".into()).unwrap();
        log.record(&record("statement_refused", "alice")).unwrap();
        log.record(&record("policy_reload", "bob")).unwrap();
        drop(log);
        let log = AuditLog::open(&path, "i2".into()).unwrap();
        log.record(&record("statement_refused", "carol")).unwrap();
        assert_eq!(verify(&path).unwrap(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["event"], "statement_refused");
        assert_eq!(first["user"], "alice");
        assert_eq!(first["instance"], "i1");
        assert_eq!(first["prev"], GENESIS);
        assert!(first["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn tampering_is_found_and_named() {
        let path = temp("tamper.jsonl");
        let log = AuditLog::open(&path, "i".into()).unwrap();
        for user in ["a", "b", "c", "d"] {
            log.record(&record("statement_refused", user)).unwrap();
        }
        let lines: Vec<String> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();

        let edited = lines
            .join("\n")
            .replacen("\"user\":\"b\"", "\"user\":\"x\"", 1);
        std::fs::write(&path, edited).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("altered"), "{err}");

        let removed = [&lines[0], &lines[2], &lines[3]]
            .map(|s| s.as_str())
            .join("\n");
        std::fs::write(&path, removed).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("chain is broken"),
            "{err}"
        );
        // Appending to a broken file is refused rather than hiding the break.
        assert!(AuditLog::open(&path, "i".into()).is_err());

        std::fs::write(&path, "not json\n").unwrap();
        assert!(verify(&path).unwrap_err().to_string().contains("line 1"));
    }
}
