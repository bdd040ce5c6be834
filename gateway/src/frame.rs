//! One event as this replica delivers it: parsed once and encoded once into
//! its SSE frame, then shared (`Arc`) by every local connection.

use bytes::{BufMut, Bytes, BytesMut};
use realtime_shared::event::{EventId, EventType};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug)]
pub struct Frame {
    pub id: EventId,
    pub event_type: EventType,
    /// Commit time (ms since the Unix epoch), for the latency histogram.
    pub commit_ms: i64,
    /// Only this user's connections receive the event (notifications).
    pub user_id: Option<Box<str>>,
    /// For `member.leave`: the member who left (revocation).
    pub leaving_member: Option<Box<str>>,
    /// `id: <id>\ndata: <event JSON>\n\n`.
    pub bytes: Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error("not an event envelope: {0}")]
pub struct FrameError(#[from] serde_json::Error);

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: &'a RawValue,
    #[serde(rename = "userId", default)]
    user_id: Option<String>,
}

#[derive(Deserialize)]
struct EventHead {
    id: EventId,
    #[serde(rename = "type")]
    event_type: EventType,
    timestamp: i64,
    #[serde(default)]
    payload: PayloadHead,
}

#[derive(Deserialize, Default)]
struct PayloadHead {
    #[serde(rename = "memberId", default)]
    member_id: Option<String>,
}

impl Frame {
    /// Parses the envelope stored in Redis (DESIGN §4) and encodes the SSE
    /// frame. The event JSON is forwarded byte for byte (compact JSON has no
    /// newline, so it fits one `data:` line).
    pub fn parse(envelope: &[u8]) -> Result<Frame, FrameError> {
        let env: Envelope<'_> = serde_json::from_slice(envelope)?;
        let head: EventHead = serde_json::from_str(env.event.get())?;
        let json = env.event.get().trim();
        let id = head.id.to_string();
        let mut buf = BytesMut::with_capacity(json.len() + id.len() + 16);
        buf.put_slice(b"id: ");
        buf.put_slice(id.as_bytes());
        buf.put_slice(b"\ndata: ");
        buf.put_slice(json.as_bytes());
        buf.put_slice(b"\n\n");
        let leaving_member = match head.event_type {
            EventType::MemberLeave => head.payload.member_id.map(String::into_boxed_str),
            _ => None,
        };
        Ok(Frame {
            id: head.id,
            event_type: head.event_type,
            commit_ms: head.timestamp,
            user_id: env.user_id.map(String::into_boxed_str),
            leaving_member,
            bytes: buf.freeze(),
        })
    }
}

/// A `data:`-only message (no `id:`, so it does not move the client's
/// Last-Event-ID): the connection message and `data.sync`.
pub fn data_only(json: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(json.len() + 8);
    buf.put_slice(b"data: ");
    buf.put_slice(json.as_bytes());
    buf.put_slice(b"\n\n");
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_encodes_once() {
        let env = br#"{"event":{"id":"5-1","type":"member.leave","timestamp":7,"source":"postgres","version":"1.0","organizationId":"o","payload":{"memberId":"u1","organizationId":"o"}},"userId":"u9"}"#;
        let f = Frame::parse(env).unwrap();
        assert_eq!(f.id, EventId::new(5, 1));
        assert_eq!(f.event_type, EventType::MemberLeave);
        assert_eq!(f.user_id.as_deref(), Some("u9"));
        assert_eq!(f.leaving_member.as_deref(), Some("u1"));
        let text = std::str::from_utf8(&f.bytes).unwrap();
        assert!(text.starts_with("id: 5-1\ndata: {\"id\":\"5-1\""));
        assert!(text.ends_with("}\n\n"));
        assert_eq!(text.matches('\n').count(), 3);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [&b"{}"[..], b"null", b"{\"event\":{\"id\":\"x\"}}", b"\xff"] {
            assert!(Frame::parse(bad).is_err());
        }
    }
}
