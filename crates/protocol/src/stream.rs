//! A socket that is plain TCP, TLS (as the server side towards clients, or as the client side
//! towards the upstream) or a Unix socket (either side, on one machine), so the rest of the
//! proxy handles one type.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::{client, server};

/// The transport of one side of a proxied session.
pub enum Stream {
    Plain(TcpStream),
    /// TLS accepted from a client (pgstepup holds the certificate).
    TlsServer(Box<server::TlsStream<TcpStream>>),
    /// TLS towards the upstream PostgreSQL.
    TlsClient(Box<client::TlsStream<TcpStream>>),
    /// A Unix socket: towards PostgreSQL's when pgstepup runs on the database host, or from
    /// a local client on `proxy.unix_socket_dir`. No TCP/IP stack on either end of a message.
    Unix(UnixStream),
}

impl Stream {
    /// Whether the bytes on this stream are encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::TlsServer(_) | Stream::TlsClient(_))
    }

    /// Whether the peer sent anything not read yet, or closed, checked without waiting by
    /// peeking at the socket (a failed peek counts as yes). For a connection that should be
    /// silent, such as an idle upstream connection: anything there means it is no longer
    /// in the state it was left in.
    pub fn has_unread_input(&self) -> bool {
        let socket = match self {
            Stream::Plain(s) => SockRef::from(s),
            Stream::TlsServer(s) => SockRef::from(s.get_ref().0),
            Stream::TlsClient(s) => SockRef::from(s.get_ref().0),
            Stream::Unix(s) => SockRef::from(s),
        };
        let mut byte = [MaybeUninit::uninit()];
        !matches!(socket.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Writes what the socket takes now without waiting (no waker registered, no task
    /// budget spent); `WouldBlock` when it takes nothing now, and always for TLS, whose
    /// records are written the async way.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.try_write(buf),
            Stream::Unix(s) => s.try_write(buf),
            Stream::TlsServer(_) | Stream::TlsClient(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// The DER certificate the peer presented (TLS towards the upstream only), for SCRAM
    /// channel binding.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        match self {
            Stream::TlsClient(s) => s
                .get_ref()
                .1
                .peer_certificates()?
                .first()
                .map(|c| c.as_ref()),
            _ => None,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => $e,
            Stream::TlsServer($s) => $e,
            Stream::TlsClient($s) => $e,
            Stream::Unix($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::TlsServer(s) => s.is_write_vectored(),
            Stream::TlsClient(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
