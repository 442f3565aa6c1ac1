//! The statement a client frame carries: what the session loop looks at before forwarding.
//! Borrowed from the frame, so seeing a statement costs no allocation.

use pgstepup_protocol::{tag, FrameRef};

/// A statement-carrying client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statement<'a> {
    /// A simple Query: one or more statements, in the client's encoding.
    Query { sql: &'a [u8] },
    /// An extended-protocol Parse, naming a prepared statement (empty = unnamed).
    Parse { name: &'a [u8], sql: &'a [u8] },
    /// A fast-path FunctionCall: a function called by OID, no SQL.
    FunctionCall { oid: u32 },
}

/// A statement-carrying frame that does not follow the message format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid {0} message format")]
pub struct MalformedStatement(pub &'static str);

impl<'a> Statement<'a> {
    /// The statement in `frame`, `Ok(None)` for frames that carry none.
    pub fn from_frame(frame: FrameRef<'a>) -> Result<Option<Self>, MalformedStatement> {
        match frame.tag() {
            tag::QUERY => {
                let (sql, end) = frame.cstr_at(0).ok_or(MalformedStatement("Query"))?;
                if end != frame.body().len() {
                    return Err(MalformedStatement("Query"));
                }
                Ok(Some(Statement::Query { sql }))
            }
            tag::PARSE => {
                let malformed = MalformedStatement("Parse");
                let (name, at) = frame.cstr_at(0).ok_or(malformed)?;
                let (sql, at) = frame.cstr_at(at).ok_or(malformed)?;
                let types = frame.body().get(at..at + 2).ok_or(malformed)?;
                let count = u16::from_be_bytes([types[0], types[1]]) as usize;
                if frame.body().len() != at + 2 + 4 * count {
                    return Err(malformed);
                }
                Ok(Some(Statement::Parse { name, sql }))
            }
            tag::FUNCTION_CALL => {
                let oid = frame
                    .body()
                    .get(..4)
                    .ok_or(MalformedStatement("FunctionCall"))?;
                Ok(Some(Statement::FunctionCall {
                    oid: u32::from_be_bytes(oid.try_into().expect("4 bytes")),
                }))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgstepup_protocol::Frame;

    #[test]
    fn reads_query_parse_and_function_call() {
        let q = Frame::new(tag::QUERY, b"select 1; select 2\0");
        assert_eq!(
            Statement::from_frame(q.view()),
            Ok(Some(Statement::Query {
                sql: b"select 1; select 2"
            }))
        );
        let p = Frame::new(tag::PARSE, b"s1\0select $1\0\0\x01\0\0\0\x17");
        assert_eq!(
            Statement::from_frame(p.view()),
            Ok(Some(Statement::Parse {
                name: b"s1",
                sql: b"select $1"
            }))
        );
        let f = Frame::new(tag::FUNCTION_CALL, &[0, 0, 3, 0xb8, 0, 0]);
        assert_eq!(
            Statement::from_frame(f.view()),
            Ok(Some(Statement::FunctionCall { oid: 952 }))
        );
        assert_eq!(
            Statement::from_frame(Frame::new(tag::SYNC, b"").view()),
            Ok(None)
        );
    }

    #[test]
    fn refuses_malformed_frames() {
        for frame in [
            Frame::new(tag::QUERY, b"select 1"),
            Frame::new(tag::QUERY, b"select 1\0junk"),
            Frame::new(tag::PARSE, b"s1\0select 1\0"),
            Frame::new(tag::PARSE, b"s1\0select 1\0\0\x02\0\0\0\x17"),
            Frame::new(tag::FUNCTION_CALL, b"ab"),
        ] {
            assert!(Statement::from_frame(frame.view()).is_err(), "{frame:?}");
        }
    }
}
