//! [`ReadWake`]: lets a session that waits on two sockets skip the one that has nothing new.
//!
//! A session's task waits on its client and its server socket at once, so every wake-up polls
//! both, and polling a socket that is still waiting re-registers the task with it (a lock in
//! tokio's I/O driver each time). The socket is given its own waker instead, which notes that
//! it fired before waking the task; until it fires, a poll costs the task waker's registration
//! (no clone when it is the same waker) and one atomic load, and `Connection::wait_frame` answers
//! before touching the buffer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// The read side's own waker, and whether the socket holds it unused.
pub(crate) struct ReadWake {
    signal: Arc<Signal>,
    waker: Waker,
    /// The socket returned Pending with `waker` and has not woken it since.
    armed: bool,
}

struct Signal {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl ReadWake {
    pub(crate) fn new() -> Self {
        let signal = Arc::new(Signal {
            fired: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        ReadWake {
            waker: Waker::from(Arc::clone(&signal)),
            signal,
            armed: false,
        }
    }

    /// Whether the socket is known to have nothing new since it last returned Pending;
    /// whoever polls now (`cx`) is who the socket's waker must wake either way.
    pub(crate) fn waiting(&mut self, cx: &mut Context<'_>) -> bool {
        self.signal.task.register(cx.waker());
        self.armed && !self.signal.fired.load(Ordering::Acquire)
    }

    /// Polls `read` with the socket's own waker (after [`ReadWake::waiting`] said no).
    pub(crate) fn poll_read<F: Future>(&mut self, read: Pin<&mut F>) -> Poll<F::Output> {
        // Cleared before the poll, so a wake-up that comes during or after it is kept.
        self.signal.fired.store(false, Ordering::Release);
        match read.poll(&mut Context::from_waker(&self.waker)) {
            Poll::Pending => {
                self.armed = true;
                Poll::Pending
            }
            ready => {
                self.armed = false;
                ready
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A read that is pending until `ready` is set, keeping the last waker it was given.
    struct Gate {
        ready: bool,
        polls: usize,
        waker: Option<Waker>,
    }

    impl Future for Gate {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls += 1;
            if self.ready {
                return Poll::Ready(());
            }
            self.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// What a connection does: polls the read unless the socket is known to be waiting.
    fn poll<F: Future>(
        wake: &mut ReadWake,
        read: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<F::Output> {
        if wake.waiting(cx) {
            return Poll::Pending;
        }
        wake.poll_read(read)
    }

    #[test]
    fn a_waiting_socket_is_polled_again_only_after_it_fired() {
        let task = Arc::new(Count(AtomicUsize::new(0)));
        let task_waker = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&task_waker);
        let mut wake = ReadWake::new();
        let mut read = Gate {
            ready: false,
            polls: 0,
            waker: None,
        };
        assert!(poll(&mut wake, Pin::new(&mut read), &mut cx).is_pending());
        assert!(poll(&mut wake, Pin::new(&mut read), &mut cx).is_pending());
        assert_eq!(
            read.polls, 1,
            "nothing fired, so the socket was not polled again"
        );
        // The socket fires: the task is woken and the next poll reaches the socket.
        read.ready = true;
        read.waker.take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut wake, Pin::new(&mut read), &mut cx).is_ready());
        assert_eq!(read.polls, 2);
        // After data, the socket is polled again (its waker was used up).
        assert!(poll(&mut wake, Pin::new(&mut read), &mut cx).is_ready());
        assert_eq!(read.polls, 3);
    }

    #[test]
    fn every_firing_reaches_the_task_that_polled_last() {
        let first = Arc::new(Count(AtomicUsize::new(0)));
        let first_waker = Waker::from(Arc::clone(&first));
        let mut wake = ReadWake::new();
        let mut read = Gate {
            ready: false,
            polls: 0,
            waker: None,
        };
        for round in 1..=3 {
            // Quiet polls in between: the socket is not polled and nothing is re-registered.
            for _ in 0..3 {
                let mut cx = Context::from_waker(&first_waker);
                assert!(poll(&mut wake, Pin::new(&mut read), &mut cx).is_pending());
            }
            assert_eq!(read.polls, round);
            read.waker.take().unwrap().wake();
            assert_eq!(
                first.0.load(Ordering::SeqCst),
                round,
                "firing {round} was lost"
            );
        }
        // Another task polls: the next firing wakes it, not the one before.
        let second = Arc::new(Count(AtomicUsize::new(0)));
        let second_waker = Waker::from(Arc::clone(&second));
        let mut cx = Context::from_waker(&second_waker);
        assert!(poll(&mut wake, Pin::new(&mut read), &mut cx).is_pending());
        assert!(poll(&mut wake, Pin::new(&mut read), &mut cx).is_pending());
        read.waker.take().unwrap().wake();
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert_eq!(first.0.load(Ordering::SeqCst), 3);
    }
}
