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
    retry_interrupted(|| {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call and the
        // kernel writes at most that many; a null address and length ask for no source address.
        unsafe {
            libc::syscall(
                libc::SYS_recvfrom,
                fd as libc::c_long,
                buf.as_mut_ptr() as libc::c_long,
                buf.len() as libc::c_long,
                0 as libc::c_long,
                0 as libc::c_long,
                0 as libc::c_long,
            )
        }
    })
}

/// send(2) with MSG_NOSIGNAL (a closed peer is an error, never a SIGPIPE): returns how many of
/// `buf`'s bytes the socket took.
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    retry_interrupted(|| {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole call; a null
        // address of length 0 is what send(2) passes for a connected socket.
        unsafe {
            libc::syscall(
                libc::SYS_sendto,
                fd as libc::c_long,
                buf.as_ptr() as libc::c_long,
                buf.len() as libc::c_long,
                libc::MSG_NOSIGNAL as libc::c_long,
                0 as libc::c_long,
                0 as libc::c_long,
            )
        }
    })
}

/// Makes the call again when a signal interrupted it; maps -1 to the thread's errno.
fn retry_interrupted(mut call: impl FnMut() -> libc::c_long) -> io::Result<usize> {
    loop {
        let n = call();
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
