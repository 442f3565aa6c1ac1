//! Simple queries pgstepup itself runs on an upstream connection while no client request is
//! in flight: the pool's reset and liveness check, and the question a session starts with
//! (its search_path). What the server reports on the way replaces what the login said.

use pgstepup_protocol::{tag, Connection, Frame};
use pgstepup_upstream::LoginReply;

/// Runs `sql` as a simple query and reads its answer, which must end idle and without an
/// error; returns the first column of its first row (`None` without rows, or for NULL). The
/// parameters the server reports on the way replace those of the login, so the client is
/// told the values it will really have.
pub(crate) async fn exchange(
    server: &mut Connection,
    login: &mut LoginReply,
    sql: &str,
) -> Result<Option<Vec<u8>>, &'static str> {
    let mut query = Vec::with_capacity(sql.len() + 1);
    query.extend_from_slice(sql.as_bytes());
    query.push(0);
    server.queue_frame(&Frame::new(tag::QUERY, &query));
    server.flush().await.map_err(|_| "the server went away")?;
    let mut failed = false;
    let mut first_value = None;
    loop {
        let frame = server
            .read_frame()
            .await
            .map_err(|_| "the server went away")?;
        match frame.tag() {
            tag::ERROR_RESPONSE => failed = true,
            tag::PARAMETER_STATUS => replace_parameter(&mut login.relay, frame),
            tag::DATA_ROW if first_value.is_none() => {
                first_value = Some(first_column(frame.body()).ok_or("a malformed row")?)
            }
            tag::READY_FOR_QUERY => {
                return match (failed, frame.body().first()) {
                    (false, Some(b'I')) => Ok(first_value.flatten()),
                    (true, _) => Err("the query failed"),
                    _ => Err("the server is not idle after it"),
                };
            }
            // RowDescription, more rows, CommandComplete, EmptyQueryResponse, notices,
            // notifications still pending before UNLISTEN.
            _ => {}
        }
    }
}

/// A DataRow's first column: `Some(None)` for NULL, `None` when the row is malformed.
fn first_column(row: &[u8]) -> Option<Option<Vec<u8>>> {
    let columns = i16::from_be_bytes(row.get(..2)?.try_into().ok()?);
    if columns < 1 {
        return None;
    }
    let len = i32::from_be_bytes(row.get(2..6)?.try_into().ok()?);
    if len < 0 {
        return Some(None);
    }
    Some(Some(row.get(6..6 + usize::try_from(len).ok()?)?.to_vec()))
}

/// Puts `status` in place of the login's ParameterStatus of the same name (or adds it).
fn replace_parameter(relay: &mut Vec<Frame>, status: Frame) {
    let name = |f: &Frame| f.cstr_at(0).map(|(name, _)| name.to_vec());
    let new_name = name(&status);
    match relay
        .iter_mut()
        .find(|f| f.tag() == tag::PARAMETER_STATUS && name(f) == new_name)
    {
        Some(old) => *old = status,
        None => relay.push(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, value: &str) -> Frame {
        Frame::new(
            tag::PARAMETER_STATUS,
            format!("{name}\0{value}\0").as_bytes(),
        )
    }

    #[test]
    fn the_first_column_of_a_row_is_read_with_its_nulls() {
        assert_eq!(
            first_column(b"\0\x02\0\0\0\x03abc\xff\xff\xff\xff"),
            Some(Some(b"abc".to_vec()))
        );
        assert_eq!(first_column(b"\0\x01\xff\xff\xff\xff"), Some(None));
        assert_eq!(first_column(b"\0\x01\0\0\0\x09abc"), None);
        assert_eq!(first_column(b"\0\0"), None);
        assert_eq!(first_column(b"\0"), None);
    }

    #[test]
    fn reported_parameters_replace_the_logins_by_name() {
        let notice = Frame::new(tag::NOTICE_RESPONSE, b"SNOTICE\0\0");
        let mut relay = vec![
            status("in_hot_standby", "on"),
            notice.clone(),
            status("TimeZone", "UTC"),
        ];
        replace_parameter(&mut relay, status("in_hot_standby", "off"));
        replace_parameter(&mut relay, status("application_name", "app"));
        assert_eq!(
            relay,
            [
                status("in_hot_standby", "off"),
                notice,
                status("TimeZone", "UTC"),
                status("application_name", "app"),
            ]
        );
    }
}
