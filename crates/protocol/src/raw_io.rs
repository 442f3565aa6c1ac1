//! The relay's two system calls on plain sockets, made directly. glibc's `recv` and `send` are
//! pthread cancellation points: every call switches the thread into asynchronous-cancel mode
//! and back, two more calls that touch the thread descriptor's cache line on every message.
//! pgstepup never cancels a thread, so its sockets read and write through `syscall(2)`, which
//! makes the call and nothing else (`benches/RESULTS.md` has what it saves per transaction).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

/// recv(2): reads what `fd` holds into `buf`, returning how many bytes the kernel wrote there
/// (0 at end of stream).
pub(crate) fn recv(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call, and the kernel
    // writes at most that many.
    unsafe {
        socket_call(
            libc::SYS_recvfrom,
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
        )
    }
}

/// send(2) with MSG_NOSIGNAL (a closed peer is an error, never a SIGPIPE): returns how many of
/// `buf`'s bytes the socket took.
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole call.
    unsafe {
        socket_call(
            libc::SYS_sendto,
            fd,
            buf.as_ptr(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    }
}

/// recvfrom(2) or sendto(2) on a connected socket (no address: null and 0), made again when a
/// signal interrupted it; -1 becomes the thread's errno.
///
/// # Safety
/// `bytes` must be valid for `len` bytes, for writes when `call` is recvfrom and for reads when
/// it is sendto, until the call returns.
unsafe fn socket_call(
    call: libc::c_long,
    fd: RawFd,
    bytes: *const u8,
    len: usize,
    flags: libc::c_int,
) -> io::Result<usize> {
    loop {
        // Every argument at full register width: syscall(2) is variadic.
        let n = libc::syscall(
            call,
            fd as libc::c_long,
            bytes as libc::c_long,
            len as libc::c_long,
            flags as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
        );
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn bytes_sent_arrive_whole_and_errors_carry_errno() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        assert_eq!(send(ours.as_raw_fd(), b"hello").unwrap(), 5);
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");

        peer.write_all(b"world!").unwrap();
        let mut buf = [MaybeUninit::<u8>::uninit(); 16];
        let n = recv(ours.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(n, 6);
        // SAFETY: the kernel wrote the first `n` bytes.
        let read: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        assert_eq!(read, b"world!");

        ours.set_nonblocking(true).unwrap();
        let empty = recv(ours.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
        // A closed peer: end of stream for reads, EPIPE (not a signal) for writes.
        drop(peer);
        assert_eq!(recv(ours.as_raw_fd(), &mut buf).unwrap(), 0);
        let closed = send(ours.as_raw_fd(), b"x").unwrap_err();
        assert_eq!(closed.kind(), io::ErrorKind::BrokenPipe);
    }
}
