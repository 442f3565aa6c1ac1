//! A socket that is plain TCP, TLS (as the server side towards clients, or as the client side
//! towards the upstream) or a Unix socket (either side, on one machine), so the rest of the
//! proxy handles one type.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::{client, server};

use crate::raw_io;

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
            Stream::Plain(s) => try_send(s, buf),
            Stream::Unix(s) => try_send(s, buf),
            Stream::TlsServer(_) | Stream::TlsClient(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Reads once into `buf`'s spare room, returning how many bytes came (0 at end of stream);
    /// Pending, with `cx` registered, while the socket has nothing.
    pub(crate) fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => poll_recv(s, cx, buf),
            Stream::Unix(s) => poll_recv(s, cx, buf),
            // A read future made afresh per poll holds no state of its own.
            Stream::TlsServer(_) | Stream::TlsClient(_) => {
                std::pin::pin!(self.read_buf(buf)).poll(cx)
            }
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

/// A plain socket registered with tokio's reactor, read and written by direct system calls
/// ([`raw_io`]) while tokio keeps its readiness.
trait Evented: AsRawFd {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn try_io<R>(&self, interest: Interest, io: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

macro_rules! evented {
    ($socket:ty) => {
        impl Evented for $socket {
            fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$socket>::poll_read_ready(self, cx)
            }
            fn try_io<R>(
                &self,
                interest: Interest,
                io: impl FnOnce() -> io::Result<R>,
            ) -> io::Result<R> {
                <$socket>::try_io(self, interest, io)
            }
        }
    };
}

evented!(TcpStream);
evented!(UnixStream);

/// What tokio's own read does, with the system call made directly: a read only while tokio
/// says the socket is readable, and readiness cleared when a read finds nothing or comes back
/// short (a short read emptied the socket, so the next poll waits instead of trying a read
/// that would find nothing). Clearing goes through `try_io`, against the readiness seen before
/// the read, so an event that arrives meanwhile is kept.
fn poll_recv<S: Evented>(
    socket: &S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let fd: RawFd = socket.as_raw_fd();
    if buf.capacity() == buf.len() {
        // A read into no room would look like the end of the stream.
        buf.reserve(64);
    }
    loop {
        let spare = buf.spare_capacity_mut();
        let room = spare.len();
        let mut short_read = None;
        let read = socket.try_io(Interest::READABLE, || {
            let n = raw_io::recv(fd, spare)?;
            if n > 0 && n < room {
                short_read = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let n = match (read, short_read) {
            (_, Some(n)) | (Ok(n), None) => n,
            (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => {
                ready!(socket.poll_read_ready(cx))?;
                continue;
            }
            (Err(e), None) => return Poll::Ready(Err(e)),
        };
        // SAFETY: the kernel initialised the first `n` bytes of the spare room it was given.
        unsafe { buf.set_len(buf.len() + n) };
        return Poll::Ready(Ok(n));
    }
}

/// A write of what the socket takes now, by a direct system call (`WouldBlock`, readiness
/// cleared, when it takes nothing).
fn try_send<S: Evented>(socket: &S, buf: &[u8]) -> io::Result<usize> {
    socket.try_io(Interest::WRITABLE, || raw_io::send(socket.as_raw_fd(), buf))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::io::Write;
    use std::task::Waker;

    /// A socket whose readiness the test holds, as tokio's reactor would: `try_io` runs the
    /// read only while ready and clears readiness when the read says WouldBlock.
    struct Readiness {
        socket: std::os::unix::net::UnixStream,
        ready: Cell<bool>,
        reads: Cell<usize>,
    }

    impl AsRawFd for Readiness {
        fn as_raw_fd(&self) -> RawFd {
            self.socket.as_raw_fd()
        }
    }

    impl Evented for Readiness {
        fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.ready.get() {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }

        fn try_io<R>(&self, _: Interest, io: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
            if !self.ready.get() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.reads.set(self.reads.get() + 1);
            let result = io();
            if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                self.ready.set(false);
            }
            result
        }
    }

    #[test]
    fn a_short_read_clears_readiness_and_a_full_one_keeps_it() {
        let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let socket = Readiness {
            socket: ours,
            ready: Cell::new(true),
            reads: Cell::new(0),
        };
        let mut cx = Context::from_waker(Waker::noop());

        // A read that fills the room may have left more behind: readiness stays.
        peer.write_all(b"0123456789").unwrap();
        let mut buf = BytesMut::with_capacity(4);
        let room = buf.capacity();
        assert!(room < 10);
        let n = poll_recv(&socket, &mut cx, &mut buf);
        assert!(matches!(n, Poll::Ready(Ok(n)) if n == room));
        assert!(socket.ready.get());

        // A read that comes back short emptied the socket: readiness is cleared with it, so
        // the next poll waits without another read.
        let mut buf = BytesMut::with_capacity(64);
        let n = poll_recv(&socket, &mut cx, &mut buf);
        assert!(matches!(n, Poll::Ready(Ok(n)) if n == 10 - room));
        assert_eq!(&buf[..], &b"0123456789"[room..]);
        assert!(!socket.ready.get());
        let reads = socket.reads.get();
        assert!(poll_recv(&socket, &mut cx, &mut buf).is_pending());
        assert_eq!(
            socket.reads.get(),
            reads,
            "a read was tried on an emptied socket"
        );

        // Readiness back with nothing there: the read finds nothing, and waits.
        socket.ready.set(true);
        assert!(poll_recv(&socket, &mut cx, &mut buf).is_pending());
        assert!(!socket.ready.get());
    }
}
