//! Per-thread pools of I/O buffers. A [`Connection`](crate::Connection) holds a read or write
//! buffer only while bytes are in it and hands it back once drained, so the sessions of one
//! thread keep passing the same few cache-hot buffers around (as pgbouncer's pooled I/O
//! buffers do) instead of each touching its own cold ones, and an idle connection holds none.

use std::cell::RefCell;
use std::thread::LocalKey;

use bytes::BytesMut;

/// What a pooled buffer holds: how much a connection asks the kernel for at a time.
pub(crate) const CHUNK: usize = 16 * 1024;

/// Buffers grown past this by one large message are dropped once empty, not pooled.
pub(crate) const IDLE_CAP: usize = 64 * 1024;

/// Spare buffers kept per thread and direction; a thread's sessions use one or two at a time,
/// so more are only kept after a burst, and at most this many (256 KiB each way).
const SPARES: usize = 16;

thread_local! {
    static READ: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static WRITE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// The spare given back most recently, if any.
fn take<T>(spares: &'static LocalKey<RefCell<Vec<T>>>) -> Option<T> {
    spares.with_borrow_mut(Vec::pop)
}

/// Keeps a spare unless the thread already holds [`SPARES`] of them.
fn keep<T>(spares: &'static LocalKey<RefCell<Vec<T>>>, buf: T) {
    spares.with_borrow_mut(|spares| {
        if spares.len() < SPARES {
            spares.push(buf);
        }
    });
}

/// An empty read buffer of at least [`CHUNK`] bytes, the one drained most recently if any.
pub(crate) fn take_read() -> BytesMut {
    take(&READ).unwrap_or_else(|| BytesMut::with_capacity(CHUNK))
}

/// Takes back a drained read buffer that no frame points into and that starts where its
/// allocation does (the caller tracks this, cheaper than checking it here with
/// `try_reclaim`). One grown for a large message is dropped instead.
pub(crate) fn give_read(buf: BytesMut) {
    debug_assert!(buf.is_empty());
    if buf.capacity() <= IDLE_CAP {
        keep(&READ, buf);
    }
}

/// An empty write buffer of at least [`CHUNK`] bytes, the one flushed most recently if any.
pub(crate) fn take_write() -> Vec<u8> {
    take(&WRITE).unwrap_or_else(|| Vec::with_capacity(CHUNK))
}

/// Takes back a flushed write buffer (dropped if grown for a large message).
pub(crate) fn give_write(mut buf: Vec<u8>) {
    if buf.capacity() <= IDLE_CAP {
        buf.clear();
        keep(&WRITE, buf);
    }
}

/// How many spare read and write buffers this thread holds.
#[cfg(test)]
pub(crate) fn spares() -> (usize, usize) {
    (READ.with_borrow(Vec::len), WRITE.with_borrow(Vec::len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_the_next_one_taken() {
        let mut read = take_read();
        read.extend_from_slice(b"frame");
        read.clear();
        let at = read.as_ptr();
        give_read(read);
        // An allocation in between would get the memory back had it been freed.
        let unrelated = vec![0u8; CHUNK];
        assert_eq!(take_read().as_ptr(), at);
        drop(unrelated);

        let mut write = take_write();
        write.extend_from_slice(b"reply");
        let at = write.as_ptr();
        give_write(write);
        let unrelated = vec![0u8; CHUNK];
        let again = take_write();
        drop(unrelated);
        assert_eq!((again.as_ptr(), again.len()), (at, 0));
    }

    #[test]
    fn grown_buffers_are_not_pooled() {
        give_read(BytesMut::with_capacity(IDLE_CAP * 2));
        give_write(Vec::with_capacity(IDLE_CAP * 2));
        assert_eq!(spares(), (0, 0));
    }

    #[test]
    fn the_spares_are_bounded() {
        let buffers: Vec<_> = (0..SPARES * 2).map(|_| take_write()).collect();
        for buf in buffers {
            give_write(buf);
        }
        assert_eq!(WRITE.with_borrow(Vec::len), SPARES);
        let buffers: Vec<_> = (0..SPARES * 2).map(|_| take_read()).collect();
        for buf in buffers {
            give_read(buf);
        }
        assert_eq!(READ.with_borrow(Vec::len), SPARES);
    }
}
