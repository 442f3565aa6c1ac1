//! The session loop: one task per client, relaying frames both ways between the client and its
//! own upstream connection. Every statement-carrying frame (and every Bind of a remembered
//! statement) passes the gate before it is forwarded, as is or swapped for a refusal;
//! everything else passes through as the original bytes. Output is coalesced and flushed once
//! per batch of input, not per message.

use pgstepup_protocol::backend::{self, sqlstate, PgError};
use pgstepup_protocol::{tag, Connection, ConnectionError, Frame};
use pgstepup_upstream::LoginReply;

use crate::cancel::Registration;
use crate::gate::{Gate, Verdict};
use crate::statement::Statement;

/// A live, authenticated session.
pub(crate) struct Session {
    client: Connection,
    server: Connection,
    gate: Gate,
    _cancel_key: Option<Registration>,
}

/// Which side produced input.
enum Input {
    Client(Result<Frame, ConnectionError>),
    Server(Result<Frame, ConnectionError>),
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    ClientTerminated,
    ClientGone,
    ClientProtocolError,
    ServerGone,
    /// The server reported a setting under which pgstepup cannot read SQL safely.
    UnsafeSetting,
}

impl Session {
    /// Sends the client the rest of its startup reply (parameters, pgstepup's own cancel key,
    /// ReadyForQuery) and returns the session ready to run.
    pub(crate) async fn start(
        mut client: Connection,
        server: Connection,
        reply: LoginReply,
        cancel_key: Option<(Registration, i32, Vec<u8>)>,
        mut gate: Gate,
    ) -> Result<Self, (Connection, PgError)> {
        for frame in &reply.relay {
            if frame.tag() == tag::PARAMETER_STATUS {
                if let Err(error) = gate.on_parameter_status(frame) {
                    return Err((client, error));
                }
            }
        }
        for frame in &reply.relay {
            client.queue_frame(frame);
        }
        let registration = cancel_key.map(|(registration, pid, secret)| {
            client.queue(&backend::backend_key_data(pid, &secret));
            registration
        });
        client.queue(&backend::ready_for_query(reply.ready_status));
        if let Err(e) = client.flush().await {
            tracing::debug!(error = %e, "client left during startup");
        }
        Ok(Session {
            client,
            server,
            gate,
            _cancel_key: registration,
        })
    }

    /// Relays until either side ends the session.
    pub(crate) async fn run(mut self) -> Ending {
        let ending = loop {
            let input = tokio::select! {
                // Server output first: it frees server memory and keeps notifications timely.
                biased;
                r = self.server.read_frame() => Input::Server(r),
                r = self.client.read_frame() => Input::Client(r),
            };
            let step = match input {
                Input::Server(r) => self.on_server_input(r).await,
                Input::Client(r) => self.on_client_input(r).await,
            };
            if let Err(ending) = step {
                break ending;
            }
        };
        self.close(&ending).await;
        ending
    }

    async fn on_server_input(
        &mut self,
        first: Result<Frame, ConnectionError>,
    ) -> Result<(), Ending> {
        let mut next = Some(first.map_err(|_| Ending::ServerGone)?);
        while let Some(frame) = next {
            self.relay_server_frame(&frame)?;
            if self.client.should_flush() {
                self.client.flush().await.map_err(|_| Ending::ClientGone)?;
            }
            next = self
                .server
                .try_read_frame()
                .map_err(|_| Ending::ServerGone)?;
        }
        // Drained: unless the server is mid-message (more bytes certainly follow), the
        // exchange is over for now, so the client gets everything.
        if self.client.has_queued() && !self.server.has_partial_input() {
            self.client.flush().await.map_err(|_| Ending::ClientGone)?;
        }
        Ok(())
    }

    fn relay_server_frame(&mut self, frame: &Frame) -> Result<(), Ending> {
        match frame.tag() {
            // Clients hold pgstepup's key, never the upstream's.
            tag::BACKEND_KEY_DATA => {}
            tag::ERROR_RESPONSE => match self.gate.rewrite_error(frame) {
                Some(ours) => self.client.queue(&ours),
                None => self.client.queue_frame(frame),
            },
            tag::READY_FOR_QUERY => {
                self.gate.on_ready_for_query();
                self.client.queue_frame(frame);
            }
            tag::PARAMETER_STATUS => {
                self.client.queue_frame(frame);
                if let Err(error) = self.gate.on_parameter_status(frame) {
                    self.refuse_fatal(error);
                    return Err(Ending::UnsafeSetting);
                }
            }
            _ => self.client.queue_frame(frame),
        }
        Ok(())
    }

    async fn on_client_input(
        &mut self,
        first: Result<Frame, ConnectionError>,
    ) -> Result<(), Ending> {
        let mut next = Some(first.map_err(|e| self.client_error(e))?);
        while let Some(frame) = next {
            if frame.tag() == tag::TERMINATE {
                self.server.queue_frame(&frame);
                return Err(Ending::ClientTerminated);
            }
            match Statement::from_frame(&frame) {
                Ok(Some(statement)) => match self.gate.check(statement) {
                    Verdict::Forward => self.server.queue_frame(&frame),
                    Verdict::Substitute(substitute) => self.server.queue_frame(&substitute),
                },
                Ok(None) if frame.tag() == tag::BIND => match self.gate.check_bind(&frame) {
                    Verdict::Forward => self.server.queue_frame(&frame),
                    Verdict::Substitute(substitute) => self.server.queue_frame(&substitute),
                },
                Ok(None) => {
                    if frame.tag() == tag::CLOSE {
                        self.gate.on_close(&frame);
                    }
                    self.server.queue_frame(&frame)
                }
                Err(malformed) => {
                    // Never forward what cannot be read: the server would see something else
                    // than pgstepup did.
                    self.refuse_fatal(PgError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        malformed.to_string(),
                    ));
                    return Err(Ending::ClientProtocolError);
                }
            }
            self.gate.note_forwarded(frame.tag());
            if self.server.should_flush() {
                self.server.flush().await.map_err(|_| Ending::ServerGone)?;
            }
            next = self
                .client
                .try_read_frame()
                .map_err(|e| self.client_error(e))?;
        }
        if self.server.has_queued() && !self.client.has_partial_input() {
            self.server.flush().await.map_err(|_| Ending::ServerGone)?;
        }
        Ok(())
    }

    fn client_error(&mut self, e: ConnectionError) -> Ending {
        match e {
            ConnectionError::Closed | ConnectionError::Truncated | ConnectionError::Io(_) => {
                Ending::ClientGone
            }
            ConnectionError::TooLarge { .. } => {
                self.refuse_fatal(PgError::fatal(
                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    e.to_string(),
                ));
                Ending::ClientProtocolError
            }
            other => {
                self.refuse_fatal(PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    other.to_string(),
                ));
                Ending::ClientProtocolError
            }
        }
    }

    fn refuse_fatal(&mut self, error: PgError) {
        tracing::info!(%error, "closing session");
        self.client.queue(&error.to_error_response());
    }

    async fn close(&mut self, ending: &Ending) {
        match ending {
            Ending::ServerGone => {
                // Whatever the server said last (often its own FATAL) is already queued.
                self.client.queue(
                    &PgError::fatal(
                        sqlstate::CONNECTION_FAILURE,
                        "the upstream server closed the connection",
                    )
                    .to_error_response(),
                );
                self.client.shutdown().await;
            }
            Ending::ClientTerminated => {
                self.server.shutdown().await;
                self.client.shutdown().await;
            }
            Ending::ClientGone | Ending::ClientProtocolError | Ending::UnsafeSetting => {
                // Only whole frames were ever forwarded, so the server holds no half message;
                // Terminate ends the session and rolls back an open transaction.
                self.server.queue_frame(&Frame::new(tag::TERMINATE, &[]));
                self.server.shutdown().await;
                self.client.shutdown().await;
            }
        }
    }
}
