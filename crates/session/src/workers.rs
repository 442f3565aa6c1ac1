//! Session threads: each runs its own single-threaded runtime, and the listener hands every
//! accepted connection to the next one in turn. A session lives its whole life on one thread
//! (its sockets registered with that thread's reactor, its timers on that thread's clock), so
//! no message costs a cross-thread wake-up or a work-stealing scheduler's bookkeeping, while
//! a machine with spare cores still gets more than one of them for sessions.

use std::future::Future;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// An accepted client, detached from the accepting runtime's reactor.
struct Accepted {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    id: u64,
}

/// The session threads of one proxy.
pub(crate) struct Workers {
    queues: Vec<mpsc::UnboundedSender<Accepted>>,
    threads: Vec<JoinHandle<()>>,
    next: usize,
}

impl Workers {
    /// Starts `count` threads (at least one); `session` runs each connection handed to them.
    pub(crate) fn start<F, Fut>(count: usize, session: F) -> std::io::Result<Self>
    where
        F: Fn(TcpStream, SocketAddr, u64) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut workers = Workers {
            queues: Vec::new(),
            threads: Vec::new(),
            next: 0,
        };
        for index in 0..count.max(1) {
            let (queue, mut accepted) = mpsc::unbounded_channel::<Accepted>();
            let session = session.clone();
            // The runtime is built on its own thread: a runtime must not be dropped (as on a
            // failed start) inside the async context that calls this.
            let (started, outcome) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("sessions-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
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
                        while let Some(Accepted { tcp, peer, id }) = accepted.recv().await {
                            match TcpStream::from_std(tcp) {
                                Ok(tcp) => {
                                    tokio::spawn(session(tcp, peer, id));
                                }
                                Err(error) => {
                                    tracing::error!(%peer, %error, "cannot register an accepted connection")
                                }
                            }
                        }
                    });
                })?;
            outcome.recv().map_err(std::io::Error::other)??;
            workers.queues.push(queue);
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// Hands an accepted connection to the next thread in turn.
    pub(crate) fn assign(&mut self, tcp: TcpStream, peer: SocketAddr, id: u64) {
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(error) => {
                tracing::error!(%peer, %error, "cannot hand over an accepted connection");
                return;
            }
        };
        let queue = &self.queues[self.next];
        self.next = (self.next + 1) % self.queues.len();
        if queue.send(Accepted { tcp, peer, id }).is_err() {
            tracing::error!(%peer, "a session thread has stopped; connection dropped");
        }
    }

    /// Stops the threads once their sessions are gone (call after draining); what is still
    /// running then is dropped with its thread's runtime.
    pub(crate) async fn stop(self) {
        drop(self.queues);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Connections go to the threads in turn, and each session runs on its thread's own
    /// single-threaded runtime, its socket served there.
    #[tokio::test]
    async fn connections_are_dealt_to_the_threads_in_turn() {
        let (seen, mut sessions) = mpsc::unbounded_channel();
        let mut workers = Workers::start(2, move |mut tcp: TcpStream, _peer, id| {
            let seen = seen.clone();
            async move {
                let thread = std::thread::current().name().map(str::to_owned);
                let flavor = tokio::runtime::Handle::current().runtime_flavor();
                tcp.write_all(&[id as u8]).await.unwrap();
                seen.send((id, thread, flavor)).unwrap();
            }
        })
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        for id in 0..4 {
            let mut client = TcpStream::connect(address).await.unwrap();
            let (tcp, peer) = listener.accept().await.unwrap();
            workers.assign(tcp, peer, id);
            assert_eq!(client.read_u8().await.unwrap(), id as u8);
            let (session, thread, flavor) = sessions.recv().await.unwrap();
            assert_eq!(session, id);
            assert_eq!(
                thread.as_deref(),
                Some(["sessions-0", "sessions-1"][id as usize % 2])
            );
            assert_eq!(flavor, tokio::runtime::RuntimeFlavor::CurrentThread);
        }
        workers.stop().await;
    }
}
