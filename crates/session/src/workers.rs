//! Session threads: each runs its own single-threaded runtime, and the listener hands every
//! accepted connection to the first thread serving fewer than `proxy.spill_after_sessions`,
//! else to the one with the fewest live sessions (in turn among equals, so connections
//! closing unevenly do not leave one thread with most of the load). A few sessions thus share
//! one thread and its wake-ups, and many spread over the cores. A session
//! lives its whole life on one thread (its sockets registered with that thread's reactor, its
//! timers on that thread's clock), so no message costs a cross-thread wake-up or a
//! work-stealing scheduler's bookkeeping, while a machine with spare cores still gets more
//! than one of them for sessions. Before a session thread sleeps it may offer the CPU once
//! (`proxy.yield_before_sleep`, [`session_runtime`]).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use crate::client_socket::{ClientAddr, ClientSocket, DetachedSocket};

/// An accepted client, detached from the accepting runtime's reactor.
struct Accepted {
    socket: DetachedSocket,
    peer: ClientAddr,
    id: u64,
}

/// The session threads of one proxy.
pub(crate) struct Workers {
    threads: Vec<SessionThread>,
    /// Sessions a thread takes before the next gets any (0: none, the least busy gets each).
    spill_after: usize,
    /// Where the search for the least busy thread starts.
    next: usize,
}

struct SessionThread {
    queue: mpsc::UnboundedSender<Accepted>,
    /// Live sessions: counted up when handed over, down when the session's task ends (or is
    /// dropped with its runtime).
    live: Arc<AtomicUsize>,
    handle: JoinHandle<()>,
}

/// Counts a session out of its thread's load when its task ends, however it ends.
struct LiveSession(Arc<AtomicUsize>);

impl Drop for LiveSession {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `count` threads (at least one), each filled to `spill_after` sessions before the
    /// next gets any; `session` runs each connection handed to them.
    pub(crate) fn start<F, Fut>(
        count: usize,
        spill_after: usize,
        yield_before_sleep: bool,
        session: F,
    ) -> std::io::Result<Self>
    where
        F: Fn(ClientSocket, ClientAddr, u64) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut workers = Workers {
            threads: Vec::new(),
            spill_after,
            next: 0,
        };
        for index in 0..count.max(1) {
            let (queue, mut accepted) = mpsc::unbounded_channel::<Accepted>();
            let session = session.clone();
            let live = Arc::new(AtomicUsize::new(0));
            let thread_live = live.clone();
            // The runtime is built on its own thread: a runtime must not be dropped (as on a
            // failed start) inside the async context that calls this.
            let (started, outcome) = std::sync::mpsc::channel();
            let handle = std::thread::Builder::new()
                .name(format!("sessions-{index}"))
                .spawn(move || {
                    let runtime = match session_runtime(yield_before_sleep) {
                        Ok(runtime) => {
                            let _ = started.send(Ok(()));
                            runtime
                        }
                        Err(error) => {
                            let _ = started.send(Err(error));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        while let Some(Accepted { socket, peer, id }) = accepted.recv().await {
                            let counted = LiveSession(thread_live.clone());
                            match socket.attach() {
                                Ok(socket) => {
                                    let session = session(socket, peer, id);
                                    tokio::spawn(async move {
                                        let _counted = counted;
                                        session.await;
                                    });
                                }
                                Err(error) => {
                                    tracing::error!(%peer, %error, "cannot register an accepted connection")
                                }
                            }
                        }
                    });
                })?;
            outcome.recv().map_err(std::io::Error::other)??;
            workers.threads.push(SessionThread {
                queue,
                live,
                handle,
            });
        }
        Ok(workers)
    }

    /// Hands an accepted connection to the first thread not yet serving `spill_after`
    /// sessions, else to the one with the fewest live sessions (the first such from the one
    /// after the last chosen, so equal loads take turns).
    pub(crate) fn assign(&mut self, socket: ClientSocket, peer: ClientAddr, id: u64) {
        let socket = match socket.detach() {
            Ok(socket) => socket,
            Err(error) => {
                tracing::error!(%peer, %error, "cannot hand over an accepted connection");
                return;
            }
        };
        let count = self.threads.len();
        let live = |index: usize| self.threads[index].live.load(Ordering::Relaxed);
        let chosen = (0..count)
            .find(|&index| live(index) < self.spill_after)
            .or_else(|| {
                (0..count)
                    .map(|offset| (self.next + offset) % count)
                    .min_by_key(|&index| live(index))
            })
            .unwrap_or(0);
        self.next = (chosen + 1) % count;
        let thread = &self.threads[chosen];
        // Counted before it is queued, so the next connection sees this one.
        thread.live.fetch_add(1, Ordering::Relaxed);
        if thread.queue.send(Accepted { socket, peer, id }).is_err() {
            thread.live.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(%peer, "a session thread has stopped; connection dropped");
        }
    }

    /// Stops the threads once their sessions are gone (call after draining); what is still
    /// running then is dropped with its thread's runtime.
    pub(crate) async fn stop(self) {
        // Closing a thread's queue ends its accept loop.
        let handles: Vec<_> = self.threads.into_iter().map(|t| t.handle).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for handle in handles {
                let _ = handle.join();
            }
        })
        .await;
    }
}

/// A session thread's runtime: single-threaded, with I/O and timers. With `yield_before_sleep`
/// it offers the CPU once each time it runs out of work, before it waits in `epoll_wait`: on a
/// machine it shares with PostgreSQL and the clients, the processes it has just written to
/// run and answer first, so the thread is seldom put to sleep and woken again for their
/// answers (a wake-up costs the sender more than an event queued for a thread that is still
/// runnable), and it finds more sessions ready at once. Where nothing else wants the CPU the
/// yield returns at once.
fn session_runtime(yield_before_sleep: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if yield_before_sleep {
        builder.on_thread_park(std::thread::yield_now);
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Connects a client to `listener` and hands the accepted socket to `workers`.
    async fn hand_over(listener: &TcpListener, workers: &mut Workers, id: u64) -> TcpStream {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        workers.assign(ClientSocket::Tcp(tcp), ClientAddr::Tcp(peer), id);
        client
    }

    /// The session's end of a TCP hand-over.
    fn into_tcp(socket: ClientSocket) -> TcpStream {
        match socket {
            ClientSocket::Tcp(tcp) => tcp,
            ClientSocket::Unix(_) => unreachable!("the tests hand over TCP"),
        }
    }

    fn thread_name() -> Option<String> {
        std::thread::current().name().map(str::to_owned)
    }

    /// Threads whose sessions report the thread they run on, then live until the client
    /// hangs up.
    fn reporting_workers(spill_after: usize) -> (Workers, mpsc::UnboundedReceiver<Option<String>>) {
        let (seen, sessions) = mpsc::unbounded_channel();
        let workers = Workers::start(2, spill_after, true, move |socket, _peer, _id| {
            let seen = seen.clone();
            let mut tcp = into_tcp(socket);
            async move {
                seen.send(thread_name()).unwrap();
                let _ = tcp.read_u8().await;
            }
        })
        .unwrap();
        (workers, sessions)
    }

    /// Hands over a connection per id; each with the thread its session reported.
    async fn open_sessions(
        listener: &TcpListener,
        workers: &mut Workers,
        sessions: &mut mpsc::UnboundedReceiver<Option<String>>,
        ids: std::ops::Range<u64>,
    ) -> Vec<(TcpStream, Option<String>)> {
        let mut open = Vec::new();
        for id in ids {
            let client = hand_over(listener, workers, id).await;
            open.push((client, sessions.recv().await.unwrap()));
        }
        open
    }

    /// Connections go to the threads in turn, and each session runs on its thread's own
    /// single-threaded runtime, its socket served there.
    #[tokio::test]
    async fn connections_are_dealt_to_the_threads_in_turn() {
        let (seen, mut sessions) = mpsc::unbounded_channel();
        let mut workers = Workers::start(2, 0, true, move |socket, _peer, id| {
            let seen = seen.clone();
            let mut tcp = into_tcp(socket);
            async move {
                let flavor = tokio::runtime::Handle::current().runtime_flavor();
                tcp.write_all(&[id as u8]).await.unwrap();
                seen.send((id, thread_name(), flavor)).unwrap();
            }
        })
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        for id in 0..4 {
            let mut client = hand_over(&listener, &mut workers, id).await;
            assert_eq!(client.read_u8().await.unwrap(), id as u8);
            let (session, thread, flavor) = sessions.recv().await.unwrap();
            assert_eq!(session, id);
            assert_eq!(
                thread.as_deref(),
                Some(["sessions-0", "sessions-1"][id as usize % 2])
            );
            assert_eq!(flavor, tokio::runtime::RuntimeFlavor::CurrentThread);
            // The session has ended; once its thread counts it out, both threads are equal
            // again, so only the turn decides where the next connection goes.
            workers.wait_until_idle().await;
        }
        workers.stop().await;
    }

    impl Workers {
        /// Waits (at most 5 s) until no thread counts a live session.
        async fn wait_until_idle(&self) {
            let idle = async {
                while self
                    .threads
                    .iter()
                    .any(|thread| thread.live.load(Ordering::Relaxed) > 0)
                {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(5), idle)
                .await
                .expect("ended sessions were not counted out within 5 s");
        }
    }

    /// When sessions end unevenly, new connections go where fewer sessions live.
    #[tokio::test]
    async fn connections_go_to_the_thread_with_fewest_sessions() {
        let (mut workers, mut sessions) = reporting_workers(0);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut open = open_sessions(&listener, &mut workers, &mut sessions, 0..4).await;
        let first = Some("sessions-0".to_owned());
        let threads: Vec<_> = open.iter().map(|(_, thread)| thread.clone()).collect();
        let second = Some("sessions-1".to_owned());
        assert_eq!(
            threads,
            [first.clone(), second.clone(), first.clone(), second]
        );
        // Both sessions of the first thread end.
        open.retain(|(_, thread)| *thread != first);
        while workers.threads[0].live.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        for id in 4..6 {
            let client = hand_over(&listener, &mut workers, id).await;
            assert_eq!(
                sessions.recv().await.unwrap(),
                first,
                "the emptier thread takes the connection"
            );
            open.push((client, first.clone()));
        }
        drop(open);
        workers.stop().await;
    }

    /// With a spill threshold, a thread is filled to it before the next gets a connection;
    /// once all are that full, the least busy takes each; a thread that drops below it again
    /// is filled first.
    #[tokio::test]
    async fn a_thread_is_filled_before_the_next_gets_a_connection() {
        let (mut workers, mut sessions) = reporting_workers(2);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut open = open_sessions(&listener, &mut workers, &mut sessions, 0..6).await;
        let threads: Vec<_> = open.iter().map(|(_, t)| t.clone().unwrap()).collect();
        assert_eq!(
            threads,
            [
                "sessions-0",
                "sessions-0",
                "sessions-1",
                "sessions-1",
                "sessions-0",
                "sessions-1"
            ]
        );
        // Two of the first thread's three sessions end: it is below the threshold again.
        let first = Some("sessions-0".to_owned());
        let mut ended = 0;
        open.retain(|(_, thread)| {
            let end = *thread == first && ended < 2;
            ended += usize::from(end);
            !end
        });
        let first_thread_drained = async {
            while workers.threads[0].live.load(Ordering::Relaxed) > 1 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), first_thread_drained)
            .await
            .expect("the first thread's two ended sessions were not counted out within 5 s");
        let client = hand_over(&listener, &mut workers, 6).await;
        assert_eq!(sessions.recv().await.unwrap(), first);
        open.push((client, first));
        drop(open);
        workers.stop().await;
    }

    /// This thread's involuntary context switches so far (a yield that lets another thread run
    /// is one).
    fn involuntary_switches() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            .map(|count| count.trim().parse().unwrap())
            .unwrap()
    }

    /// Pins the calling thread to `cpu`.
    fn pin_to(cpu: usize) {
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it (cpu is below
        // CPU_SETSIZE: it came from sched_getcpu), and sched_setaffinity only reads it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0,
                "sched_setaffinity: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    /// Runs a session runtime through `sleeps` timer waits on one CPU with a spinning thread
    /// beside it, so there is always someone to yield to; returns the runtime thread's
    /// involuntary switches over them.
    fn switches_over_sleeps(yield_before_sleep: bool, sleeps: u64) -> u64 {
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinning = stop.clone();
        let spinner = std::thread::spawn(move || {
            pin_to(cpu);
            while !spinning.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        pin_to(cpu);
        let runtime = session_runtime(yield_before_sleep).unwrap();
        let before = involuntary_switches();
        runtime.block_on(async {
            for _ in 0..sleeps {
                tokio::time::sleep(std::time::Duration::from_micros(200)).await;
            }
        });
        let switches = involuntary_switches() - before;
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        switches
    }

    /// With `yield_before_sleep` the thread gives the CPU away before it sleeps (such a yield
    /// is an involuntary switch to the spinner: 68-92 over 100 sleeps where this was written);
    /// without it, it only sleeps, and a thread that runs for microseconds at a time is seldom
    /// preempted (0 there).
    #[test]
    fn a_session_thread_yields_the_cpu_before_it_sleeps() {
        let sleeps = 100;
        let yielding = switches_over_sleeps(true, sleeps);
        let sleeping = switches_over_sleeps(false, sleeps);
        assert!(
            yielding >= sleeps / 4,
            "{yielding} involuntary switches over {sleeps} sleeps"
        );
        assert!(
            sleeping < yielding / 2,
            "without the yield: {sleeping} involuntary switches, with it {yielding}"
        );
    }
}
