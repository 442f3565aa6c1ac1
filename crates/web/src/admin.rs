//! The local admin channel: `pgstepup enroll` and `pgstepup keys` talk to the running server
//! over a Unix socket, one JSON request and one JSON reply per connection. The socket is
//! created mode 0600 and each peer's uid is checked (the service's own user, or root), so
//! only whoever can act as the service can enroll keys.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use pgstepup_audit::Record;
use pgstepup_protocol::SocketFile;
use pgstepup_stepup::{random_token, unix_now};

use crate::api::{enrollment_key, Enrollment};
use crate::Web;

/// An admin command.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// A one-time enrollment link for `user`.
    Enroll {
        user: String,
    },
    KeysList {
        user: String,
    },
    KeysRevoke {
        user: String,
        id: String,
    },
}

/// The reply to an admin command.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    Enrollment { url: String, expires_at: u64 },
    Keys { keys: Vec<KeyInfo> },
    Revoked,
    Error { message: String },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KeyInfo {
    pub id: String,
    pub created_at: u64,
    pub last_used_at: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin socket {path}: unreadable reply: {reason}")]
    Reply { path: PathBuf, reason: String },
}

/// The server's end of the admin socket.
pub struct AdminListener {
    socket: SocketFile,
}

impl AdminListener {
    /// Binds `path` (replacing a stale socket left by a dead server) with mode 0600.
    pub fn bind(path: &Path) -> Result<Self, AdminError> {
        let socket = SocketFile::bind(path, 0o600).map_err(|source| AdminError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(AdminListener { socket })
    }

    /// Answers admin commands until the process ends.
    pub async fn serve(self, web: Arc<Web>) {
        let owner = std::fs::metadata(self.socket.path()).map(|m| m.uid()).ok();
        loop {
            let Ok(stream) = self.socket.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let peer = stream.peer_cred().ok().map(|c| c.uid());
            if peer.is_none() || (peer != owner && peer != Some(0)) {
                tracing::warn!(?peer, "admin connection from another user refused");
                continue;
            }
            let web = web.clone();
            tokio::spawn(async move {
                if let Err(error) = answer(stream, &web).await {
                    tracing::debug!(%error, "admin connection failed");
                }
            });
        }
    }
}

async fn answer(stream: UnixStream, web: &Web) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).take_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => web.admin(request).await,
        Err(e) => Reply::Error {
            message: format!("malformed request: {e}"),
        },
    };
    let mut json = serde_json::to_vec(&reply).expect("reply serialises");
    json.push(b'\n');
    write.write_all(&json).await
}

trait TakeLine {
    async fn take_line(&mut self, line: &mut String) -> std::io::Result<()>;
}

impl<R: tokio::io::AsyncRead + Unpin> TakeLine for BufReader<R> {
    /// One line of at most 64 KiB.
    async fn take_line(&mut self, line: &mut String) -> std::io::Result<()> {
        use tokio::io::AsyncReadExt;
        let mut limited = (&mut *self).take(64 * 1024);
        limited.read_line(line).await.map(|_| ())
    }
}

impl Web {
    async fn admin(&self, request: Request) -> Reply {
        let error = |e: &dyn std::fmt::Display| Reply::Error {
            message: e.to_string(),
        };
        match request {
            Request::Enroll { user } => {
                if user.is_empty() {
                    return error(&"a user name is needed");
                }
                let token = random_token();
                let expires_at = unix_now() + self.enrollment_ttl.as_secs();
                let record = serde_json::to_string(&Enrollment {
                    user: user.clone(),
                    expires_at,
                })
                .expect("enrollment serialises");
                if let Err(e) = self
                    .stepup
                    .store()
                    .set(&enrollment_key(&token), &record, self.enrollment_ttl)
                    .await
                {
                    return error(&e);
                }
                self.audit(Record {
                    event: "enrollment_issued",
                    user: Some(user),
                    ..Default::default()
                });
                Reply::Enrollment {
                    url: format!("{}/enroll/{token}", self.stepup.public_url()),
                    expires_at,
                }
            }
            Request::KeysList { user } => match self.credentials.keys_of(&user).await {
                Ok(keys) => Reply::Keys {
                    keys: keys
                        .into_iter()
                        .map(|k| KeyInfo {
                            id: k.id,
                            created_at: k.created_at,
                            last_used_at: k.last_used_at,
                        })
                        .collect(),
                },
                Err(e) => error(&e),
            },
            Request::KeysRevoke { user, id } => match self.credentials.revoke(&user, &id).await {
                Ok(true) => {
                    self.audit(Record {
                        event: "key_revoked",
                        user: Some(user),
                        credential_id: Some(id),
                        ..Default::default()
                    });
                    Reply::Revoked
                }
                Ok(false) => error(&format!("{user} has no key {id}")),
                Err(e) => error(&e),
            },
        }
    }
}

/// Sends one command to the server at `path` and returns its reply.
pub async fn request(path: &Path, request: &Request) -> Result<Reply, AdminError> {
    let io = |source| AdminError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(path).await.map_err(io)?;
    let mut json = serde_json::to_vec(request).expect("request serialises");
    json.push(b'\n');
    stream.write_all(&json).await.map_err(io)?;
    let mut line = String::new();
    BufReader::new(stream)
        .take_line(&mut line)
        .await
        .map_err(io)?;
    serde_json::from_str(&line).map_err(|e| AdminError::Reply {
        path: path.to_owned(),
        reason: if line.is_empty() {
            "the server closed the connection (is this socket owned by another user?)".into()
        } else {
            e.to_string()
        },
    })
}
