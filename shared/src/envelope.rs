//! What is stored in Redis for one event: the event JSON plus routing metadata.
//!
//! ARCHITECTURE.md §4: each history entry has one field `e`, and PUBLISH carries the
//! same bytes. The bytes are a JSON object
//! `{"event":{…wire event…},"userId":"…"?,"traceparent":"…"?}`:
//! `event` is exactly what clients receive (the gateway can forward it as a raw
//! slice without re-serializing), `userId` addresses the event to one user
//! only (notifications), `traceparent` carries the W3C trace context from
//! ingest to delivery, and `lastBroadcast` (Redis Cluster only) names the
//! last broadcast-scope event published before this organization event.
//!
//! Why `lastBroadcast`: on a cluster the broadcast channel and an
//! organization's channel sit on different shards, read over different
//! connections, so a gateway can read an organization event before the
//! broadcast committed ahead of it. Seeing a `lastBroadcast` it has not yet
//! read, the gateway has the organization's streams fill the gap from
//! history (which holds both, in id order) before the event
//! (ARCHITECTURE.md §4, *Broadcast order*). One node delivers both channels
//! on one connection in publish order, so the ingestor writes it only on a
//! cluster.

//!
//! The wire names live here once, in two forms: [`Envelope`], owned, which
//! the ingestor writes, and [`RawEnvelope`], borrowed, which the gateway
//! reads without copying the event (it forwards `event` as it is).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event::{Event, EventId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub event: Event,
    /// When set, only this user's connections receive the event.
    #[serde(rename = "userId", default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// On a Redis Cluster: the id of the last broadcast-scope event
    /// published before this organization event (module docs).
    #[serde(
        rename = "lastBroadcast",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub last_broadcast: Option<EventId>,
}

impl Envelope {
    pub fn new(event: Event) -> Self {
        Self {
            event,
            user_id: None,
            traceparent: None,
            last_broadcast: None,
        }
    }

    /// `bytes` (an envelope as [`Self::to_bytes`] wrote it, without
    /// `lastBroadcast`) with `"lastBroadcast":"<id>"` added as its last
    /// member. The ingestor's cluster publisher learns the id only when it
    /// publishes, after the envelope was encoded: splicing costs one copy
    /// of the bytes, not a second serialization. Bytes that do not end an
    /// object come back unchanged.
    pub fn with_last_broadcast(bytes: &[u8], id: EventId) -> Vec<u8> {
        use std::io::Write;
        let Some((b'}', head)) = bytes.split_last() else {
            return bytes.to_vec();
        };
        let mut out = Vec::with_capacity(bytes.len() + 48);
        out.extend_from_slice(head);
        // Writing to a Vec cannot fail.
        let _ = write!(out, r#","lastBroadcast":"{id}"}}"#);
        out
    }

    /// The bytes stored in the history stream and published live.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Sized for a typical row change at once (growing from serde_json's
        // 128 bytes cost three reallocations per event in the drain).
        let mut bytes = Vec::with_capacity(1024);
        // Serializing a struct of strings, numbers and a `Value` cannot fail.
        match serde_json::to_writer(&mut bytes, self) {
            Ok(()) => bytes,
            Err(_) => Vec::new(),
        }
    }
}

/// An envelope read in place: `event` is the raw JSON slice (forwarded to
/// clients byte for byte, never re-serialized), the metadata borrowed when
/// it has no escapes.
#[derive(Debug, Deserialize)]
pub struct RawEnvelope<'a> {
    #[serde(borrow)]
    pub event: &'a RawValue,
    #[serde(rename = "userId", default, borrow)]
    pub user_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub traceparent: Option<Cow<'a, str>>,
    #[serde(rename = "lastBroadcast", default)]
    pub last_broadcast: Option<EventId>,
}

impl<'a> RawEnvelope<'a> {
    /// Reads the bytes stored in Redis (the history entry's `e`, or a
    /// published message).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly on purpose
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::{EventType, EventVersion, Source};

    fn event() -> Event {
        Event {
            id: EventId::new(26_748_752, 2),
            event_type: EventType::PropertyUpdate,
            timestamp: 1_795_836_114_457,
            source: Source::Postgres,
            version: EventVersion,
            organization_id: Some("o1".into()),
            payload: json!({"propertyId": "p1", "changes": {"note": "a \"quoted\"\nline"}}),
        }
    }

    #[test]
    fn what_the_ingestor_writes_the_gateway_reads() {
        let mut owned = Envelope::new(event());
        owned.user_id = Some("u\"7".into());
        owned.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        let bytes = owned.to_bytes();
        let raw = RawEnvelope::parse(&bytes).unwrap();
        assert_eq!(
            raw.event.get(),
            serde_json::to_string(&owned.event).unwrap()
        );
        assert_eq!(raw.user_id.as_deref(), Some("u\"7"));
        assert_eq!(raw.traceparent.as_deref(), owned.traceparent.as_deref());
        let back: Event = serde_json::from_str(raw.event.get()).unwrap();
        assert_eq!(back, owned.event);
        // And the owned form reads its own bytes back.
        assert_eq!(serde_json::from_slice::<Envelope>(&bytes).unwrap(), owned);
    }

    #[test]
    fn metadata_is_optional() {
        let bytes = Envelope::new(event()).to_bytes();
        assert!(!String::from_utf8_lossy(&bytes).contains("userId"));
        let raw = RawEnvelope::parse(&bytes).unwrap();
        assert_eq!((raw.user_id, raw.traceparent), (None, None));
        assert_eq!(raw.last_broadcast, None);
        assert!(
            RawEnvelope::parse(b"{\"userId\":\"u\"}").is_err(),
            "event is required"
        );
    }

    #[test]
    fn the_last_broadcast_is_spliced_in_as_if_serialized() {
        let bytes = Envelope::new(event()).to_bytes();
        let id = EventId::new(26_740_000, 0);
        let spliced = Envelope::with_last_broadcast(&bytes, id);
        let mut owned = Envelope::new(event());
        owned.last_broadcast = Some(id);
        assert_eq!(spliced, owned.to_bytes(), "the same bytes as serde writes");
        let raw = RawEnvelope::parse(&spliced).unwrap();
        assert_eq!(raw.last_broadcast, Some(id));
        assert_eq!(serde_json::from_slice::<Envelope>(&spliced).unwrap(), owned);
        assert_eq!(Envelope::with_last_broadcast(b"", id), b"");
    }
}
