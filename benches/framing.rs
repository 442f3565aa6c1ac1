//! Framing: how fast a `Connection` frames what one read brings in and queues it for the
//! other side, the way the session relays server output (in place, no allocation per frame):
//! frame by frame, and as runs of the frames the session does not look into.
//! Real loopback sockets; a batch of frames per iteration amortises the two syscalls.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgstepup_protocol::{Connection, Stream, DEFAULT_MAX_FRAME};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// What pgbench's SELECT gets back: BindComplete, DataRow, CommandComplete, ReadyForQuery.
fn pgbench_reply() -> Vec<u8> {
    let mut out = Vec::new();
    let mut frame = |tag: u8, body: &[u8]| {
        out.push(tag);
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
    };
    frame(b'2', b"");
    frame(b'D', b"\0\x01\0\0\0\x041234");
    frame(b'C', b"SELECT 1\0");
    frame(b'Z', b"I");
    out
}

const REPLIES: usize = 200;

fn relay(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut server_side, mut peer) = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let peer = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let server_side = Connection::new(Stream::Plain(accepted), DEFAULT_MAX_FRAME);
        (server_side, peer)
    });
    // Stands for the client's queued output (`Connection::queue` appends to a Vec the same
    // way), cleared where a flush would send it.
    let mut client_output: Vec<u8> = Vec::with_capacity(64 * 1024);
    let batch = pgbench_reply().repeat(REPLIES);
    let frames = (REPLIES * 4) as u64;
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Elements(frames));
    group.bench_function(
        "relay pgbench replies in place (per batch of 800 frames)",
        |b| {
            b.iter(|| {
                runtime.block_on(async {
                    peer.write_all(&batch).await.expect("write");
                    let mut relayed = 0;
                    while relayed < frames {
                        server_side.wait_frame().await.expect("frame");
                        while let Some(frame) = server_side.peek_frame().expect("valid") {
                            let len = frame.as_bytes().len();
                            client_output.extend_from_slice(frame.as_bytes());
                            server_side.consume(len);
                            relayed += 1;
                        }
                    }
                    client_output.clear();
                })
            })
        },
    );
    group.bench_function(
        "relay pgbench replies as runs (per batch of 800 frames)",
        |b| {
            b.iter(|| {
                runtime.block_on(async {
                    peer.write_all(&batch).await.expect("write");
                    let mut relayed = 0;
                    let mut ready = 0;
                    while relayed < batch.len() {
                        server_side.wait_frame().await.expect("frame");
                        loop {
                            // As the session does: ReadyForQuery is read as it joins the run.
                            let run = server_side.peek_run(|frame| {
                                ready += usize::from(frame.tag() == b'Z');
                                true
                            });
                            let len = if run.is_empty() {
                                match server_side.peek_frame().expect("valid") {
                                    Some(frame) => {
                                        client_output.extend_from_slice(frame.as_bytes());
                                        frame.as_bytes().len()
                                    }
                                    None => break,
                                }
                            } else {
                                client_output.extend_from_slice(run);
                                run.len()
                            };
                            server_side.consume(len);
                            relayed += len;
                        }
                    }
                    assert_eq!(ready, REPLIES);
                    client_output.clear();
                })
            })
        },
    );
    group.finish();
}

criterion_group!(benches, relay);
criterion_main!(benches);
