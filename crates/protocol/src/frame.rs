//! One protocol frame: a tag byte, a length, a body, kept as the original bytes.

use bytes::Bytes;

/// Tag bytes of the messages pgstepup looks at. Anything else passes through untouched.
pub mod tag {
    // Frontend (client to server).
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const EXECUTE: u8 = b'E';
    pub const DESCRIBE: u8 = b'D';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const TERMINATE: u8 = b'X';
    pub const PASSWORD: u8 = b'p';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';

    // Backend (server to client).
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const DATA_ROW: u8 = b'D';
}

/// A complete tagged frame: `bytes` holds the tag, the length and the body exactly as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
}

/// Tag byte plus the Int32 length.
pub(crate) const HEADER_LEN: usize = 5;

impl Frame {
    /// Wraps bytes that already hold one whole frame.
    pub(crate) fn from_bytes(bytes: Bytes) -> Self {
        debug_assert!(bytes.len() >= HEADER_LEN);
        Frame { bytes }
    }

    /// Builds a frame from a tag and a body (for messages pgstepup originates).
    pub fn new(tag: u8, body: &[u8]) -> Self {
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.push(tag);
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
        Frame {
            bytes: Bytes::from(out),
        }
    }

    /// This frame with another message after it, to be sent as one unit (a substitute that
    /// must end its own cycle: a Parse and its Sync). Only its bytes are whole then: its
    /// body runs on into the second message.
    pub fn followed_by(self, tag: u8, body: &[u8]) -> Self {
        let mut out = Vec::with_capacity(self.bytes.len() + HEADER_LEN + body.len());
        out.extend_from_slice(&self.bytes);
        out.extend_from_slice(Frame::new(tag, body).as_bytes());
        Frame {
            bytes: Bytes::from(out),
        }
    }

    /// Copies a borrowed frame out of the buffer it lies in (to keep it past that buffer's
    /// next read).
    pub fn copied(frame: FrameRef<'_>) -> Self {
        Frame::from_bytes(Bytes::copy_from_slice(frame.as_bytes()))
    }

    /// A borrowed view of the frame.
    #[inline]
    pub fn view(&self) -> FrameRef<'_> {
        FrameRef { bytes: &self.bytes }
    }

    /// The message type byte.
    #[inline]
    pub fn tag(&self) -> u8 {
        self.view().tag()
    }

    /// The payload after the tag and length.
    #[inline]
    pub fn body(&self) -> &[u8] {
        self.view().body()
    }

    /// The whole frame as received, ready to forward.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The whole frame as shared bytes (for decoding with pgwire or keeping it).
    #[inline]
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Reads a NUL-terminated string from the start of `body[at..]`, returning it and the offset
    /// after the NUL; `None` when there is no terminator.
    pub fn cstr_at(&self, at: usize) -> Option<(&[u8], usize)> {
        self.view().cstr_at(at)
    }
}

/// A complete frame borrowed where it lies (in a connection's read buffer, or in a [`Frame`]):
/// relaying it needs no reference count and no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef<'a> {
    bytes: &'a [u8],
}

impl<'a> FrameRef<'a> {
    /// Views bytes that hold one whole frame.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        debug_assert!(bytes.len() >= HEADER_LEN);
        FrameRef { bytes }
    }

    /// The message type byte.
    #[inline]
    pub fn tag(self) -> u8 {
        self.bytes[0]
    }

    /// The payload after the tag and length.
    #[inline]
    pub fn body(self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// The whole frame as received, ready to forward.
    #[inline]
    pub fn as_bytes(self) -> &'a [u8] {
        self.bytes
    }

    /// Reads a NUL-terminated string from the start of `body[at..]`, returning it and the offset
    /// after the NUL; `None` when there is no terminator.
    pub fn cstr_at(self, at: usize) -> Option<(&'a [u8], usize)> {
        let rest = self.body().get(at..)?;
        // The unnamed statement and portal, the usual names: no search at all.
        if rest.first() == Some(&0) {
            return Some((&[], at + 1));
        }
        // SQL text is most of a Query or Parse body: a vectorised search pays off.
        let nul = memchr::memchr(0, rest)?;
        Some((&rest[..nul], at + nul + 1))
    }
}

/// Reads the `M` (message) field of an ErrorResponse or NoticeResponse body, for logs.
pub fn error_message(body: &[u8]) -> Option<String> {
    error_field(body, b'M')
}

/// Reads one field of an ErrorResponse or NoticeResponse body.
pub fn error_field(mut body: &[u8], field: u8) -> Option<String> {
    while let Some((&code, rest)) = body.split_first() {
        if code == 0 {
            return None;
        }
        let nul = rest.iter().position(|&b| b == 0)?;
        if code == field {
            return Some(String::from_utf8_lossy(&rest[..nul]).into_owned());
        }
        body = &rest[nul + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_frame_has_header_and_body() {
        let f = Frame::new(tag::QUERY, b"select 1\0");
        assert_eq!(f.tag(), b'Q');
        assert_eq!(&f.as_bytes()[1..5], &13u32.to_be_bytes());
        assert_eq!(f.body(), b"select 1\0");
        assert_eq!(f.cstr_at(0), Some((&b"select 1"[..], 9)));
        assert_eq!(f.cstr_at(9), None);
        // A Bind to the unnamed portal of statement "s1".
        let bind = Frame::new(tag::BIND, b"\0s1\0\0\0");
        assert_eq!(bind.cstr_at(0), Some((&b""[..], 1)));
        assert_eq!(bind.cstr_at(1), Some((&b"s1"[..], 4)));
        assert_eq!(bind.cstr_at(4), Some((&b""[..], 5)));
        assert_eq!(bind.cstr_at(7), None);
    }
}
