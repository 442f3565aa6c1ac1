//! [`Connection`]: the one type that owns a socket's framing. Reads land in a buffer lent by
//! the thread's pool and come out as zero-copy [`Frame`]s; writes are queued and go out in one
//! syscall per flush.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use crate::buffer_pool::{self, CHUNK as READ_CHUNK, IDLE_CAP as IDLE_BUFFER_CAP};
use crate::frame::{Frame, FrameRef, HEADER_LEN};
use crate::read_wake::ReadWake;
use crate::stream::Stream;

/// Default cap on one frame (PostgreSQL itself refuses most messages above 1 GiB).
pub const DEFAULT_MAX_FRAME: usize = 256 * 1024 * 1024;

/// Startup-phase packets (StartupMessage, SSLRequest, CancelRequest) are small; PostgreSQL caps
/// them at 10 000 bytes.
const MAX_STARTUP_PACKET: usize = 10_000;

/// Queue size past which callers should flush even mid-exchange.
pub const FLUSH_THRESHOLD: usize = 64 * 1024;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("connection closed")]
    Closed,
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("invalid message length {0}")]
    InvalidLength(i64),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("unencrypted data received after an SSL or GSS encryption request")]
    DataAfterEncryptionRequest,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A framed PostgreSQL connection (either side of the proxy).
pub struct Connection {
    stream: Stream,
    /// Empty and unallocated while the connection waits with nothing buffered: it is lent by
    /// the thread's pool for a read and given back when a read finds nothing more.
    read_buf: BytesMut,
    /// How much of `read_buf`'s front was consumed in place. Dropped in one go (cleared once
    /// all of it is consumed, so the next read lands at the same place) instead of advancing
    /// the buffer frame by frame.
    read_at: usize,
    /// The read buffer was grown past the idle size for a large message.
    read_grown: bool,
    /// The read buffer came from the pool (or was reclaimed back to its start) and has not
    /// been split, advanced or grown since: once drained it can go back to the pool as it is.
    read_poolable: bool,
    /// Skips re-polling the socket while it has nothing new.
    read_wake: ReadWake,
    /// Queued output; `written` bytes of it are already sent. Lent by the thread's pool when
    /// something is queued and given back once all of it is sent, so the kernel copies from
    /// the same few cache-hot lines every time, whichever connection writes.
    write_buf: Vec<u8>,
    written: usize,
    max_frame: usize,
}

/// The whole length (tag included) of the frame whose header this is, checked: a length
/// field below 4 or past `max_frame` is refused.
fn frame_len(header: &[u8; HEADER_LEN], max_frame: usize) -> Result<usize, ConnectionError> {
    Ok(1 + checked_len(&header[1..], 4, max_frame)?)
}

/// The whole length of the frame `input` starts with, once its header is there (the frame
/// itself may still be incomplete).
#[inline]
fn announced_len(input: &[u8], max_frame: usize) -> Result<Option<usize>, ConnectionError> {
    input
        .first_chunk::<HEADER_LEN>()
        .map(|header| frame_len(header, max_frame))
        .transpose()
}

/// The big-endian length field `field` starts with, refused below `min` or past `max`.
fn checked_len(field: &[u8], min: i32, max: usize) -> Result<usize, ConnectionError> {
    let len = i32::from_be_bytes(field[..4].try_into().expect("4 bytes"));
    if len < min {
        return Err(ConnectionError::InvalidLength(len.into()));
    }
    let len = len as usize;
    if len > max {
        return Err(ConnectionError::TooLarge { len, max });
    }
    Ok(len)
}

impl Connection {
    /// Wraps a stream; frames longer than `max_frame` bytes are refused.
    pub fn new(stream: Stream, max_frame: usize) -> Self {
        Connection {
            stream,
            read_buf: BytesMut::new(),
            read_at: 0,
            read_grown: false,
            read_poolable: false,
            read_wake: ReadWake::new(),
            write_buf: Vec::new(),
            written: 0,
            max_frame,
        }
    }

    /// The underlying transport.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Gives the stream back for a TLS upgrade. Refuses when the peer already sent bytes beyond
    /// the request, as PostgreSQL does (those bytes would escape the encryption).
    pub fn into_stream(self) -> Result<Stream, ConnectionError> {
        if self.has_partial_input() {
            return Err(ConnectionError::DataAfterEncryptionRequest);
        }
        Ok(self.stream)
    }

    /// Reads one untagged startup-phase packet (length-prefixed, no tag byte) and returns it
    /// whole, length included.
    pub async fn read_startup_packet(&mut self) -> Result<Bytes, ConnectionError> {
        loop {
            let input = self.input();
            if input.len() >= 4 {
                let len = checked_len(input, 8, MAX_STARTUP_PACKET)?;
                if input.len() >= len {
                    self.drop_consumed();
                    self.read_poolable = false;
                    return Ok(self.read_buf.split_to(len).freeze());
                }
            }
            self.fill().await?;
        }
    }

    /// Reads the next whole frame. Cancel-safe: partial input stays buffered.
    pub async fn read_frame(&mut self) -> Result<Frame, ConnectionError> {
        loop {
            if let Some(frame) = self.try_read_frame()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Returns a frame if one is already complete in the buffer, without touching the socket.
    fn try_read_frame(&mut self) -> Result<Option<Frame>, ConnectionError> {
        let Some(total) = self.whole_frame_len()? else {
            return Ok(None);
        };
        self.drop_consumed();
        self.read_poolable = false;
        let frame = Frame::from_bytes(self.read_buf.split_to(total).freeze());
        self.release_drained_grown_buffer();
        Ok(Some(frame))
    }

    /// Waits until a whole frame is buffered, for [`Connection::peek_frame`]. Cancel-safe.
    pub fn wait_frame(&mut self) -> WaitFrame<'_> {
        WaitFrame { conn: self }
    }

    /// [`Connection::wait_frame`] as a poll, for a loop that polls its sockets by hand.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        while self.whole_frame_len()?.is_none() {
            ready!(self.poll_fill(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// The next frame if one is complete in the buffer, left where it lies until
    /// [`Connection::consume`]: relaying it this way costs no reference count and no
    /// allocation (the frame is copied once, into the other side's output).
    pub fn peek_frame(&mut self) -> Result<Option<FrameRef<'_>>, ConnectionError> {
        Ok(self
            .whole_frame_len()?
            .map(|total| FrameRef::new(&self.input()[..total])))
    }

    /// The frame that starts `offset` bytes into the input not yet consumed (past frames the
    /// caller looked at and will consume together), if it is all there. Unlike
    /// [`Connection::peek_frame`] it makes no room for an incomplete frame: the next wait
    /// does, once what lies before it is consumed.
    pub fn peek_frame_at(&self, offset: usize) -> Result<Option<FrameRef<'_>>, ConnectionError> {
        let input = &self.input()[offset..];
        let Some(total) = announced_len(input, self.max_frame)? else {
            return Ok(None);
        };
        Ok((input.len() >= total).then(|| FrameRef::new(&input[..total])))
    }

    /// The whole frames at the front of the buffer that `include` accepts (it sees each whole
    /// frame once, in order, until it refuses one), as one run of bytes: a relay sends them
    /// to the other side at once, then [`Connection::consume`]s the run's length, so effects
    /// `include` applies happen once per frame. The run stops at the first frame refused, at
    /// an incomplete or invalid one (which [`Connection::peek_frame`] then reports), and once
    /// it holds at least the flush threshold, so a long result still goes out in pieces.
    pub fn peek_run(&self, mut include: impl FnMut(FrameRef<'_>) -> bool) -> &[u8] {
        let input = self.input();
        let mut run = 0;
        while run < FLUSH_THRESHOLD {
            match announced_len(&input[run..], self.max_frame) {
                Ok(Some(total))
                    if input.len() - run >= total
                        && include(FrameRef::new(&input[run..run + total])) =>
                {
                    run += total
                }
                _ => break,
            }
        }
        &input[..run]
    }

    /// How many bytes are buffered and not yet consumed.
    #[inline]
    fn buffered_len(&self) -> usize {
        self.read_buf.len() - self.read_at
    }

    /// Drops a frame seen with [`Connection::peek_frame`] (`len`: its whole length).
    pub fn consume(&mut self, len: usize) {
        self.read_at += len;
        debug_assert!(self.read_at <= self.read_buf.len());
        if self.read_at == self.read_buf.len() {
            self.read_buf.clear();
            self.read_at = 0;
            // Kept for the read that follows; given back if that read finds nothing.
            self.release_drained_grown_buffer();
        }
    }

    /// The input not yet consumed.
    #[inline]
    fn input(&self) -> &[u8] {
        &self.read_buf[self.read_at..]
    }

    /// Makes room in the buffer for a frame of `total` bytes whose start is buffered.
    #[cold]
    #[inline(never)]
    fn make_room_for(&mut self, total: usize) {
        self.drop_consumed();
        self.read_poolable = false;
        self.read_buf.reserve(total - self.read_buf.len());
        self.read_grown |= self.read_buf.capacity() > IDLE_BUFFER_CAP;
    }

    /// Drops the bytes consumed in place from the front of the buffer (before an owned frame
    /// is split off it, or room is made).
    fn drop_consumed(&mut self) {
        if self.read_at > 0 {
            self.read_buf.advance(self.read_at);
            self.read_at = 0;
        }
    }

    /// The length of the whole frame at the front of the buffer, once it is all there (the
    /// buffer is made room for the rest of it otherwise).
    #[inline]
    fn whole_frame_len(&mut self) -> Result<Option<usize>, ConnectionError> {
        let input = self.input();
        let Some(total) = announced_len(input, self.max_frame)? else {
            return Ok(None);
        };
        if input.len() < total {
            if self.read_buf.capacity() - self.read_at < total {
                self.make_room_for(total);
            }
            return Ok(None);
        }
        Ok(Some(total))
    }

    fn release_drained_grown_buffer(&mut self) {
        if self.read_buf.is_empty() && self.read_grown {
            // The buffer was grown for a large message. Its (now empty) tail still pins that
            // whole allocation, so let go of it: the memory goes once the frames sliced from
            // it are dropped, and the next read borrows a small buffer.
            self.read_buf = BytesMut::new();
            self.read_poolable = false;
            self.read_grown = false;
        }
    }

    /// Hands the drained read buffer to the thread's pool, so the next connection to read
    /// reuses its hot lines. One that owned frames were split from stays (it is reclaimed,
    /// or swapped for a pooled one, at the next read).
    fn give_back_read_buffer(&mut self) {
        if self.read_poolable {
            buffer_pool::give_read(std::mem::take(&mut self.read_buf));
            self.read_poolable = false;
        }
    }

    /// Whether nothing is buffered or queued either way and the peer has sent nothing since
    /// the last read: the connection is exactly where the last exchange left it.
    pub fn is_quiet(&self) -> bool {
        !self.has_partial_input() && !self.has_queued() && !self.stream.has_unread_input()
    }

    /// Whether bytes of a not yet complete frame are waiting in the read buffer, meaning the
    /// peer is mid-message and more input is certain to follow.
    pub fn has_partial_input(&self) -> bool {
        self.read_at < self.read_buf.len()
    }

    async fn fill(&mut self) -> Result<(), ConnectionError> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Reads once into the buffer. A socket that has not fired since it last had nothing is
    /// Pending at once, before any buffer or read is touched.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        if self.read_wake.waiting(cx) {
            // Only a read that found nothing arms the wait, and it gave back an empty buffer.
            return Poll::Pending;
        }
        if self.read_buf.is_empty() && self.read_buf.capacity() < READ_CHUNK {
            // Back to the start of the allocation when no frame still points into it (no copy,
            // no allocation), else a buffer from the pool: the kernel then writes into the
            // same cache-hot lines every time.
            if self.read_buf.capacity() != 0 && self.read_buf.try_reclaim(READ_CHUNK) {
                self.read_poolable = !self.read_grown;
            } else {
                self.read_buf = buffer_pool::take_read();
                self.read_grown = false;
                self.read_poolable = true;
            }
        }
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.drop_consumed();
            self.read_poolable = false;
            self.read_buf.reserve(READ_CHUNK);
            self.read_grown |= self.read_buf.capacity() > IDLE_BUFFER_CAP;
        }
        let Connection {
            stream,
            read_buf,
            read_wake,
            ..
        } = self;
        let read = std::future::poll_fn(|cx| stream.poll_read_into(cx, read_buf));
        let Poll::Ready(n) = read_wake.poll_read(std::pin::pin!(read)) else {
            if self.read_buf.is_empty() {
                self.give_back_read_buffer();
            }
            return Poll::Pending;
        };
        if n? == 0 {
            return Poll::Ready(Err(if !self.has_partial_input() {
                ConnectionError::Closed
            } else {
                ConnectionError::Truncated
            }));
        }
        Poll::Ready(Ok(()))
    }

    /// Queues bytes to send; nothing reaches the socket before [`Connection::flush`].
    #[inline]
    pub fn queue(&mut self, bytes: &[u8]) {
        if self.write_buf.capacity() == 0 {
            self.write_buf = buffer_pool::take_write();
        }
        self.write_buf.extend_from_slice(bytes);
    }

    /// Passes on the first `len` bytes of `from`'s input (whole frames peeked there) and
    /// consumes them. When they are all `from` holds, the exchange ends with them, where a
    /// flush would follow a queue: they go out from `from`'s read buffer at once
    /// ([`Connection::send_or_queue`]: the same system calls, no copy, no write buffer).
    /// Otherwise they are queued, to go with what follows.
    pub fn forward_from(&mut self, from: &mut Connection, len: usize) -> io::Result<()> {
        let bytes = &from.input()[..len];
        let sent = if len == from.buffered_len() {
            self.send_or_queue(bytes)
        } else {
            self.queue(bytes);
            Ok(())
        };
        from.consume(len);
        sent
    }

    /// Sends `bytes` straight to the socket when nothing is queued ahead of them, without
    /// copying them into the write buffer; whatever the socket does not take at once is
    /// queued for the next flush.
    fn send_or_queue(&mut self, bytes: &[u8]) -> io::Result<()> {
        let sent = if self.has_queued() {
            0
        } else {
            match self.stream.try_write(bytes) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            }
        };
        if sent < bytes.len() {
            self.queue(&bytes[sent..]);
        }
        Ok(())
    }

    /// Queues a frame's original bytes.
    #[inline]
    pub fn queue_frame(&mut self, frame: &Frame) {
        self.queue(frame.as_bytes());
    }

    /// Whether enough output is queued that it should go out now, mid-exchange.
    #[inline]
    pub fn should_flush(&self) -> bool {
        self.write_buf.len() - self.written >= FLUSH_THRESHOLD
    }

    /// Whether anything is queued.
    #[inline]
    pub fn has_queued(&self) -> bool {
        self.written < self.write_buf.len()
    }

    /// Writes everything queued in as few syscalls as the kernel allows, then flushes the
    /// transport (TLS records included).
    pub async fn flush(&mut self) -> io::Result<()> {
        while self.written < self.write_buf.len() {
            // Progress is kept in `self`, so a flush cut short resumes where it stopped. A
            // socket with room takes the bytes at once, without tokio's readiness poll.
            let rest = &self.write_buf[self.written..];
            let n = match self.stream.try_write(rest) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.stream.write(rest).await?,
                written => written?,
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.written += n;
        }
        self.written = 0;
        if self.write_buf.capacity() != 0 {
            buffer_pool::give_write(std::mem::take(&mut self.write_buf));
        }
        // Only TLS holds bytes back (a record being built); a plain socket has nothing to flush.
        if self.stream.is_tls() {
            self.stream.flush().await?;
        }
        self.release_idle_buffers();
        Ok(())
    }

    /// Queues bytes and flushes at once (handshake replies).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.queue(bytes);
        self.flush().await
    }

    /// Ends a session with the server as a client does: Terminate after whatever is queued,
    /// then a clean close.
    pub async fn terminate(&mut self) {
        self.queue_frame(&Frame::new(crate::tag::TERMINATE, &[]));
        self.shutdown().await;
    }

    /// Closes the write side cleanly (TLS close_notify included).
    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    fn release_idle_buffers(&mut self) {
        if !self.has_partial_input() && self.read_buf.capacity() > IDLE_BUFFER_CAP {
            self.read_buf = BytesMut::new();
            self.read_poolable = false;
            self.read_at = 0;
            self.read_grown = false;
        }
    }
}

/// [`Connection::wait_frame`]'s future, a plain poll function: a session polls its quiet
/// side on every wake-up, and a socket known to have nothing new answers at once.
pub struct WaitFrame<'a> {
    conn: &'a mut Connection,
}

impl Future for WaitFrame<'_> {
    type Output = Result<(), ConnectionError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().conn.poll_frame(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection accepted on loopback, and the peer socket that talks to it.
    async fn connected(max_frame: usize) -> (Connection, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (Connection::new(Stream::Plain(accepted), max_frame), peer)
    }

    #[tokio::test]
    async fn a_large_message_does_not_leave_a_large_buffer_behind() {
        let (mut conn, mut peer) = connected(1 << 20).await;
        let body = vec![b'x'; 300 * 1024];
        let mut message = vec![b'D'];
        message.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        message.extend_from_slice(&body);
        message.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
        peer.write_all(&message).await.unwrap();
        let large = conn.read_frame().await.unwrap();
        assert_eq!(large.body().len(), body.len());
        let small = conn.read_frame().await.unwrap();
        assert_eq!(small.tag(), b'Z');
        assert!(
            !conn.read_grown && conn.read_buf.capacity() <= READ_CHUNK,
            "the read buffer still pins the large allocation"
        );

        // The same for output: a large result written out leaves a small write buffer.
        conn.queue(&message);
        assert!(conn.write_buf.capacity() > IDLE_BUFFER_CAP);
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            peer.read_to_end(&mut sink).await.unwrap();
            sink.len()
        });
        conn.flush().await.unwrap();
        assert!(conn.write_buf.capacity() <= READ_CHUNK);
        conn.shutdown().await;
        assert_eq!(reader.await.unwrap(), message.len());
    }

    #[tokio::test]
    async fn a_flush_larger_than_the_socket_takes_waits_for_room_and_keeps_order() {
        let (mut conn, mut peer) = connected(1 << 20).await;
        let bytes: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        conn.queue(&bytes);
        let reader = tokio::spawn(async move {
            // Nothing read at first: the socket fills, and the flush must wait for room.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut sink = Vec::new();
            peer.read_to_end(&mut sink).await.unwrap();
            sink
        });
        conn.flush().await.unwrap();
        conn.shutdown().await;
        assert!(reader.await.unwrap() == bytes, "bytes lost or out of order");
    }

    #[tokio::test]
    async fn startup_packets_with_impossible_lengths_are_refused() {
        let refusal = |length: i32| async move {
            let (mut conn, mut peer) = connected(DEFAULT_MAX_FRAME).await;
            peer.write_all(&length.to_be_bytes()).await.unwrap();
            conn.read_startup_packet().await.unwrap_err()
        };
        assert!(matches!(
            refusal(7).await,
            ConnectionError::InvalidLength(7)
        ));
        assert!(matches!(
            refusal(MAX_STARTUP_PACKET as i32 + 1).await,
            ConnectionError::TooLarge { len, max: MAX_STARTUP_PACKET } if len == MAX_STARTUP_PACKET + 1
        ));
        let (mut conn, mut peer) = connected(DEFAULT_MAX_FRAME).await;
        peer.write_all(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f])
            .await
            .unwrap();
        assert_eq!(conn.read_startup_packet().await.unwrap().len(), 8);
    }

    #[tokio::test]
    async fn drained_buffers_start_again_at_their_beginning() {
        let (mut conn, mut peer) = connected(1 << 20).await;
        let query = b"Q\0\0\0\x0eSELECT 1;\0";
        let (mut starts, mut outs) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            peer.write_all(query).await.unwrap();
            let frame = conn.read_frame().await.unwrap();
            starts.push(frame.as_bytes().as_ptr());
            drop(frame);
            conn.queue(query);
            outs.push(conn.write_buf.as_ptr());
            conn.flush().await.unwrap();
            assert_eq!((conn.written, conn.write_buf.capacity()), (0, 0));
        }
        // Each message landed where the last one did, not after it, and went out from where
        // the last reply did.
        assert!(starts.windows(2).all(|w| w[0] == w[1]), "{starts:?}");
        assert!(outs.windows(2).all(|w| w[0] == w[1]), "{outs:?}");
    }

    #[tokio::test]
    async fn connections_of_a_thread_share_buffers_and_hold_none_while_idle() {
        let (mut first, mut first_peer) = connected(1 << 20).await;
        let (mut second, mut second_peer) = connected(1 << 20).await;
        let query = b"Q\0\0\0\x0eSELECT 1;\0";
        let mut read_at = Vec::new();
        let mut write_at = Vec::new();
        for (conn, peer) in [
            (&mut first, &mut first_peer),
            (&mut second, &mut second_peer),
        ] {
            peer.write_all(query).await.unwrap();
            conn.wait_frame().await.unwrap();
            let frame = conn.peek_frame().unwrap().unwrap();
            read_at.push(frame.as_bytes().as_ptr());
            let len = frame.as_bytes().len();
            conn.consume(len);
            conn.queue(query);
            write_at.push(conn.write_buf.as_ptr());
            conn.flush().await.unwrap();
            // Drained both ways: the connection holds no buffer once it waits.
            let waiting =
                tokio::time::timeout(std::time::Duration::from_millis(20), conn.wait_frame());
            assert!(waiting.await.is_err());
            assert_eq!(
                (conn.read_buf.capacity(), conn.write_buf.capacity()),
                (0, 0)
            );
            // Kept by the thread's pool, not freed, for the next connection to take.
            assert_eq!(buffer_pool::spares(), (1, 1));
        }
        // The second connection read into and wrote from the buffers the first gave back.
        assert_eq!(read_at[0], read_at[1]);
        assert_eq!(write_at[0], write_at[1]);

        // A buffer an owned frame still points into is kept, not pooled, while that frame lives.
        second_peer.write_all(query).await.unwrap();
        let owned = second.read_frame().await.unwrap();
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(20), second.wait_frame());
        assert!(waiting.await.is_err());
        let spare = buffer_pool::take_read();
        let spare = spare.as_ptr() as usize..spare.as_ptr() as usize + spare.capacity();
        assert!(!spare.contains(&(owned.as_bytes().as_ptr() as usize)));
        assert_eq!(owned.as_bytes(), query);

        // A partial frame keeps its buffer through a wait.
        first_peer.write_all(&query[..3]).await.unwrap();
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), first.wait_frame());
        assert!(waiting.await.is_err());
        assert!(first.has_partial_input() && first.read_buf.capacity() > 0);
        first_peer.write_all(&query[3..]).await.unwrap();
        first.wait_frame().await.unwrap();
        assert_eq!(first.peek_frame().unwrap().unwrap().as_bytes(), query);
    }

    #[tokio::test]
    async fn frames_can_be_relayed_where_they_lie() {
        let (mut conn, mut peer) = connected(64).await;
        // Two whole frames and the first byte of a third.
        peer.write_all(b"1\0\0\0\x04Z\0\0\0\x05IC").await.unwrap();
        conn.wait_frame().await.unwrap();
        let first = conn.peek_frame().unwrap().unwrap();
        assert_eq!((first.tag(), first.as_bytes().len()), (b'1', 5));
        // Peeking again sees the same frame until it is consumed.
        assert_eq!(conn.peek_frame().unwrap().unwrap().tag(), b'1');
        conn.consume(5);
        let second = conn.peek_frame().unwrap().unwrap();
        assert_eq!((second.tag(), second.body()), (b'Z', &b"I"[..]));
        conn.consume(6);
        assert!(conn.peek_frame().unwrap().is_none());
        assert!(conn.has_partial_input());
        // A length past the limit is refused before anything is buffered for it.
        peer.write_all(b"\0\0\x10\0").await.unwrap();
        assert!(matches!(
            conn.wait_frame().await,
            Err(ConnectionError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn frames_past_a_pending_run_are_peeked_in_place() {
        let (mut conn, mut peer) = connected(64).await;
        peer.write_all(b"1\0\0\0\x04Z\0\0\0\x05IC\0").await.unwrap();
        conn.wait_frame().await.unwrap();
        while conn.buffered_len() < 13 {
            conn.fill().await.unwrap();
        }
        assert_eq!(conn.peek_frame_at(0).unwrap().unwrap().tag(), b'1');
        let second = conn.peek_frame_at(5).unwrap().unwrap();
        assert_eq!((second.tag(), second.body()), (b'Z', &b"I"[..]));
        // The third is incomplete; nothing was consumed by peeking.
        assert!(conn.peek_frame_at(11).unwrap().is_none());
        assert_eq!(conn.buffered_len(), 13);
        conn.consume(11);
        assert_eq!(conn.buffered_len(), 2);
        assert!(conn.peek_frame_at(0).unwrap().is_none());
        // A length past the limit is an error wherever the frame starts.
        peer.write_all(b"\0\x10\0Q\0\0\x10\0").await.unwrap();
        while conn.buffered_len() < 10 {
            conn.fill().await.unwrap();
        }
        assert!(matches!(
            conn.peek_frame_at(0),
            Err(ConnectionError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn bytes_sent_in_place_go_out_without_the_write_buffer_and_after_what_is_queued() {
        let (mut conn, mut peer) = connected(64).await;
        // Nothing queued: straight to the socket, no write buffer taken.
        conn.send_or_queue(b"first").unwrap();
        assert!(!conn.has_queued());
        assert_eq!(conn.write_buf.capacity(), 0);
        // Something queued: these bytes wait behind it, in order.
        conn.queue(b"-second");
        conn.send_or_queue(b"-third").unwrap();
        assert!(conn.has_queued());
        conn.flush().await.unwrap();
        let mut got = vec![0; 18];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"first-second-third");
        // What the socket does not take is queued and flushed later, none of it lost.
        let big = vec![7u8; 8 << 20];
        conn.send_or_queue(&big).unwrap();
        assert!(conn.has_queued());
        let (flushed, received) = tokio::join!(conn.flush(), async {
            let mut got = vec![0; big.len()];
            peer.read_exact(&mut got).await.unwrap();
            got
        });
        flushed.unwrap();
        assert!(received == big);
    }

    #[tokio::test]
    async fn forwarded_frames_go_in_place_only_when_they_are_all_that_was_read() {
        let (mut from, mut from_peer) = connected(64).await;
        let (mut to, mut to_peer) = connected(64).await;
        // A whole frame and the start of the next: more input is certain, so it is queued.
        from_peer.write_all(b"1\0\0\0\x04Z\0").await.unwrap();
        from.wait_frame().await.unwrap();
        while from.buffered_len() < 7 {
            from.fill().await.unwrap();
        }
        to.forward_from(&mut from, 5).unwrap();
        assert!(to.has_queued());
        assert_eq!(from.buffered_len(), 2);
        // The rest arrives: the frame is all there is, so it goes out now, after the queue.
        from_peer.write_all(b"\0\0\x05I").await.unwrap();
        from.wait_frame().await.unwrap();
        to.flush().await.unwrap();
        to.forward_from(&mut from, 6).unwrap();
        assert!(!to.has_queued());
        assert_eq!(to.write_buf.capacity(), 0);
        assert_eq!(from.buffered_len(), 0);
        let mut got = vec![0; 11];
        to_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"1\0\0\0\x04Z\0\0\0\x05I");
    }

    #[tokio::test]
    async fn runs_of_untouched_frames_are_peeked_as_one() {
        let (mut conn, mut peer) = connected(64).await;
        let not_ready = |frame: FrameRef<'_>| frame.tag() != b'Z';
        // ParseComplete, BindComplete, DataRow, ReadyForQuery, then a CommandComplete whose
        // last byte has not arrived.
        peer.write_all(b"1\0\0\0\x042\0\0\0\x04D\0\0\0\x06\0\0Z\0\0\0\x05IC\0\0\0\x08SEL")
            .await
            .unwrap();
        conn.wait_frame().await.unwrap();
        while conn.input().len() < 29 {
            conn.fill().await.unwrap();
        }
        // `include` sees each whole frame once, in order, up to the one it refuses.
        let mut seen = Vec::new();
        let run = conn.peek_run(|frame| {
            seen.push(frame.as_bytes().to_vec());
            frame.tag() != b'Z'
        });
        assert_eq!(run.len(), 17);
        assert_eq!(
            seen,
            [
                &b"1\0\0\0\x04"[..],
                b"2\0\0\0\x04",
                b"D\0\0\0\x06\0\0",
                b"Z\0\0\0\x05I"
            ]
        );
        // The run stops before the frame the relay must look at.
        assert_eq!(
            conn.peek_run(not_ready),
            b"1\0\0\0\x042\0\0\0\x04D\0\0\0\x06\0\0"
        );
        conn.consume(17);
        assert!(conn.peek_run(not_ready).is_empty());
        assert_eq!(conn.peek_frame().unwrap().unwrap().tag(), b'Z');
        conn.consume(6);
        // An incomplete frame is not part of a run.
        assert!(conn.peek_run(not_ready).is_empty());
        peer.write_all(b"T\0").await.unwrap();
        conn.wait_frame().await.unwrap();
        assert_eq!(conn.peek_run(not_ready), b"C\0\0\0\x08SELT");
        conn.consume(9);
        // Nor is one with an impossible length, or one past the limit: peek_frame reports those.
        peer.write_all(b"D\0\0\0\x02").await.unwrap();
        conn.fill().await.unwrap();
        assert!(conn.peek_run(not_ready).is_empty());
        assert!(conn.peek_frame().is_err());
    }

    #[tokio::test]
    async fn quiet_means_nothing_sent_unread_queued_or_closed() {
        let (mut conn, mut peer) = connected(DEFAULT_MAX_FRAME).await;
        assert!(conn.is_quiet());
        conn.queue(b"x");
        assert!(!conn.is_quiet(), "output queued");
        conn.flush().await.unwrap();
        assert!(conn.is_quiet());
        peer.write_all(&Frame::new(b'Z', b"I").as_bytes()[..3])
            .await
            .unwrap();
        wait_until(|| !conn.is_quiet()).await;
        peer.write_all(&Frame::new(b'Z', b"I").as_bytes()[3..])
            .await
            .unwrap();
        conn.read_frame().await.unwrap();
        assert!(conn.is_quiet(), "everything read");
        drop(peer);
        wait_until(|| !conn.is_quiet()).await;
    }

    /// The peer's bytes (or its close) take a moment to arrive over loopback.
    async fn wait_until(mut condition: impl FnMut() -> bool) {
        for _ in 0..200 {
            if condition() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("condition not met within a second");
    }
}
