//! An accepted client connection: TCP, or the Unix socket a DBA can open on the database host
//! (`proxy.unix_socket_dir`, where psql looks as `psql -h DIR -p PORT`), and how it is named in
//! logs and the audit trail.

use std::fmt;
use std::net::SocketAddr;

use tokio::net::{TcpStream, UnixStream};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unix_peer_is_named_by_its_user_and_process() {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let peer = ClientAddr::of_unix(&UnixStream::from_std(ours).unwrap());
        let ClientAddr::Unix { uid, pid } = peer else {
            unreachable!()
        };
        assert_eq!(pid, Some(std::process::id() as i32));
        assert!(uid.is_some());
        assert_eq!(
            peer.to_string(),
            format!(
                "unix socket uid={} pid={}",
                uid.unwrap(),
                std::process::id()
            )
        );
    }
}
