//! PostgreSQL wire framing for pgstepup.
//!
//! This crate owns everything about bytes on a socket and nothing about policy:
//! [`Connection`] reads frames into zero-copy [`Frame`]s from buffers its thread's pool lends
//! and coalesces writes; [`startup`] parses the untagged first packets (SSLRequest, GSSENCRequest,
//! CancelRequest, StartupMessage); [`backend`] builds the few messages pgstepup originates
//! itself (errors, notices, authentication, key data); [`Stream`] is the socket under a
//! connection, [`SocketFile`] a listening Unix socket's file. Frames that pass through are
//! forwarded as the original bytes and never re-encoded.

pub mod backend;
mod buffer_pool;
mod connection;
mod frame;
mod raw_io;
mod read_wake;
mod socket_file;
pub mod startup;
mod stream;

pub use connection::{Connection, ConnectionError, DEFAULT_MAX_FRAME, FLUSH_THRESHOLD};
pub use frame::{error_field, error_message, tag, Frame, FrameRef};
pub use socket_file::SocketFile;
pub use stream::Stream;
