//! One event as this replica delivers it: parsed once and encoded once into
//! its SSE frame, then shared (`Arc`) by every local connection.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use realtime_shared::envelope::RawEnvelope;
use realtime_shared::event::{EventId, EventType};
use serde::Deserialize;

#[derive(Debug)]
pub(crate) struct Frame {
    pub id: EventId,
    pub event_type: EventType,
    /// Commit time (ms since the Unix epoch), for the latency histogram.
    pub commit_ms: i64,
    /// Only this user's connections receive the event (notifications).
    pub user_id: Option<Box<str>>,
    /// For `member.leave`: the member who left (revocation). `None` for a
    /// leave that names no member (see [`Leave::Unknown`]).
    pub leaving_member: Option<Box<str>>,
    /// On a Redis Cluster, the last broadcast published before this
    /// organization event (`lastBroadcast`; the hub's cluster subscriber
    /// checks it has read it, ARCHITECTURE.md §4 *Broadcast order*).
    pub last_broadcast: Option<EventId>,
    /// `id: <id>\ndata: <event JSON>\n\n`.
    pub bytes: Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error("not an event envelope: {0}")]
pub(crate) struct FrameError(#[from] serde_json::Error);

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
    /// Parses the envelope stored in Redis (ARCHITECTURE.md §4; the wire names in `realtime_shared::envelope`) and encodes the SSE
    /// frame. The event JSON is forwarded byte for byte (compact JSON has no
    /// newline, so it fits one `data:` line).
    pub(crate) fn parse(envelope: &[u8]) -> Result<Frame, FrameError> {
        let env = RawEnvelope::parse(envelope)?;
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
            user_id: env.user_id.map(|u| Box::from(&*u)),
            leaving_member,
            last_broadcast: env.last_broadcast,
            bytes: buf.freeze(),
        })
    }
}

/// What a `member.leave` takes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leave<'a> {
    /// This member left the event's organization.
    Member(&'a str),
    /// Some membership ended but the ingestor could not tell whose (the
    /// table's replica identity lost its old row): a broadcast leave with a
    /// null `memberId`. Every stream re-checks its membership before it
    /// sends anything after it; it is never forwarded to a browser.
    Unknown,
}

impl Frame {
    /// `Some` for a `member.leave`: whose membership it ends.
    pub(crate) fn leave(&self) -> Option<Leave<'_>> {
        if self.event_type != EventType::MemberLeave {
            return None;
        }
        Some(match self.leaving_member.as_deref() {
            Some(member) => Leave::Member(member),
            None => Leave::Unknown,
        })
    }

    /// Whether the stream of `user` must act on this frame before anything
    /// after it is sent: the user's own leave, or a leave naming nobody.
    pub(crate) fn revokes(&self, user: &str) -> bool {
        match self.leave() {
            Some(Leave::Member(member)) => member == user,
            Some(Leave::Unknown) => true,
            None => false,
        }
    }
}

/// Milliseconds since the Unix epoch: the clock of [`Frame::commit_ms`].
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Frame {
    /// Commit → `now_ms`, in seconds (never negative): what the
    /// commit-to-send histogram records for a live delivery.
    pub(crate) fn latency_secs(&self, now_ms: i64) -> f64 {
        (now_ms - self.commit_ms).max(0) as f64 / 1000.0
    }
}

/// A `data:`-only message (no `id:`, so it does not move the client's
/// Last-Event-ID): the connection message and `data.sync`.
pub(crate) fn data_only(json: &str) -> Bytes {
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
    fn a_leave_without_a_member_revokes_everyone() {
        let env = br#"{"event":{"id":"5-1","type":"member.leave","timestamp":7,"source":"postgres","version":"1.0","organizationId":null,"payload":{"memberId":null,"organizationId":null,"reason":"unknown"}}}"#;
        let f = Frame::parse(env).unwrap();
        assert_eq!(f.leave(), Some(Leave::Unknown));
        assert!(f.revokes("anyone"));
        let named = br#"{"event":{"id":"5-2","type":"member.leave","timestamp":7,"source":"postgres","version":"1.0","organizationId":"o","payload":{"memberId":"u1","organizationId":"o"}}}"#;
        let f = Frame::parse(named).unwrap();
        assert_eq!(f.leave(), Some(Leave::Member("u1")));
        assert!(f.revokes("u1"));
        assert!(!f.revokes("u2"));
        let other = br#"{"event":{"id":"5-3","type":"member.join","timestamp":7,"source":"postgres","version":"1.0","organizationId":"o","payload":{"memberId":"u1"}}}"#;
        let f = Frame::parse(other).unwrap();
        assert_eq!(f.leave(), None);
        assert!(!f.revokes("u1"));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [&b"{}"[..], b"null", b"{\"event\":{\"id\":\"x\"}}", b"\xff"] {
            assert!(Frame::parse(bad).is_err());
        }
    }
}
