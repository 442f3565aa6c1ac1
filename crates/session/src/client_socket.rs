//! An accepted client connection: TCP, or the Unix socket a DBA can open on the database host
//! (`proxy.unix_socket_dir`, where psql looks as `psql -h DIR -p PORT`), and how it is named in
//! logs and the audit trail.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::{TcpStream, UnixListener, UnixStream};

/// A client socket on the accepting runtime.
pub(crate) enum ClientSocket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A client socket between runtimes: registered with no reactor, so a session thread can
/// register it with its own.
pub(crate) enum DetachedSocket {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl ClientSocket {
    pub(crate) fn detach(self) -> std::io::Result<DetachedSocket> {
        Ok(match self {
            ClientSocket::Tcp(tcp) => DetachedSocket::Tcp(tcp.into_std()?),
            ClientSocket::Unix(unix) => DetachedSocket::Unix(unix.into_std()?),
        })
    }
}

impl DetachedSocket {
    /// Registers the socket with the current runtime's reactor.
    pub(crate) fn attach(self) -> std::io::Result<ClientSocket> {
        Ok(match self {
            DetachedSocket::Tcp(tcp) => ClientSocket::Tcp(TcpStream::from_std(tcp)?),
            DetachedSocket::Unix(unix) => ClientSocket::Unix(UnixStream::from_std(unix)?),
        })
    }
}

/// Who is on the other end: an address and port, or the local process behind the Unix socket
/// (its user and process id, from the kernel's peer credentials).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientAddr {
    Tcp(SocketAddr),
    Unix { uid: Option<u32>, pid: Option<i32> },
}

impl ClientAddr {
    pub(crate) fn of_unix(stream: &UnixStream) -> Self {
        let credentials = stream.peer_cred().ok();
        ClientAddr::Unix {
            uid: credentials.map(|c| c.uid()),
            pid: credentials.and_then(|c| c.pid()),
        }
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAddr::Tcp(address) => address.fmt(f),
            ClientAddr::Unix { uid, pid } => {
                f.write_str("unix socket")?;
                if let Some(uid) = uid {
                    write!(f, " uid={uid}")?;
                }
                if let Some(pid) = pid {
                    write!(f, " pid={pid}")?;
                }
                Ok(())
            }
        }
    }
}

/// The listening Unix socket, `DIR/.s.PGSQL.PORT` as libpq names it; the file is removed when
/// this is dropped.
pub(crate) struct UnixSocketListener {
    pub(crate) listener: UnixListener,
    path: PathBuf,
}

impl UnixSocketListener {
    /// Binds `dir/.s.PGSQL.port`, readable and writable by every local user as PostgreSQL's
    /// own socket is (the directory's permissions decide who reaches it). A file left by a
    /// server that is gone is replaced; one a live server answers on is an error.
    pub(crate) fn bind(dir: &Path, port: u16) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!(".s.PGSQL.{port}"));
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another server is listening on this socket",
                ));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)?;
        let socket = UnixSocketListener { listener, path };
        std::fs::set_permissions(&socket.path, std::fs::Permissions::from_mode(0o777))?;
        Ok(socket)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixSocketListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_libpq_s_name_replaces_a_stale_file_and_refuses_a_live_one() {
        let dir = std::env::temp_dir().join(format!("pgstepup-socket-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stale = dir.join(".s.PGSQL.7777");
        // A socket file whose server is gone.
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());

        let socket = UnixSocketListener::bind(&dir, 7777).expect("a stale file is replaced");
        assert_eq!(socket.path(), stale);
        let client = UnixStream::connect(&stale).await.unwrap();
        let (accepted, _) = socket.listener.accept().await.unwrap();
        let ClientAddr::Unix { uid, pid } = ClientAddr::of_unix(&accepted) else {
            unreachable!()
        };
        assert_eq!(pid, Some(std::process::id() as i32));
        assert!(uid.is_some());
        drop(client);

        let err = UnixSocketListener::bind(&dir, 7777)
            .err()
            .expect("a live socket is not taken over");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);

        drop(socket);
        assert!(!stale.exists(), "the file goes with the listener");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
