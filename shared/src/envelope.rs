//! What is stored in Redis for one event: the event JSON plus routing metadata.
//!
//! DESIGN §4: each history entry has one field `e`, and PUBLISH carries the
//! same bytes. The bytes are a JSON object
//! `{"event":{…wire event…},"userId":"…"?,"traceparent":"…"?}`:
//! `event` is exactly what clients receive (the gateway can forward it as a raw
//! slice without re-serializing), `userId` addresses the event to one user
//! only (notifications), and `traceparent` carries the W3C trace context from
//! ingest to delivery.

use serde::{Deserialize, Serialize};

use crate::event::Event;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub event: Event,
    /// When set, only this user's connections receive the event.
    #[serde(rename = "userId", default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Envelope {
    pub fn new(event: Event) -> Self {
        Self {
            event,
            user_id: None,
            traceparent: None,
        }
    }

    /// The bytes stored in the history stream and published live.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing a struct of strings, numbers and a `Value` cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}
