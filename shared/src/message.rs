//! Application events written as Postgres logical messages
//! (`pg_logical_emit_message(true, 'realtime', json)`, ARCHITECTURE.md §3): the one
//! validation shared by the ingestor, which routes them, and the gateway's
//! publish API, which refuses with a 400 what the ingestor would skip.

use std::str::FromStr;

use serde_json::{Map, Value};

use crate::event::{EventType, Source};

/// The logical-message prefix that carries application events
/// (`pg_logical_emit_message(true, 'realtime', json)`).
pub const MESSAGE_PREFIX: &str = "realtime";

/// An event before it has an id and a timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub event_type: EventType,
    pub source: Source,
    /// `None`: a broadcast, to every organization.
    pub organization_id: Option<String>,
    /// `Some`: only this user's connections receive the event.
    pub user_id: Option<String>,
    pub payload: Value,
}

/// Why a `realtime` logical message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("content is not JSON: {0}")]
    Json(String),
    #[error("content is not a JSON object")]
    NotObject,
    #[error("unknown field {0:?} (expected type, organizationId, userId, payload)")]
    UnknownField(String),
    #[error("missing field {0:?}")]
    MissingField(&'static str),
    #[error("{0:?} must be a string")]
    NotString(&'static str),
    #[error("{0:?} must not be empty")]
    Empty(&'static str),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("\"payload\" must be a JSON object")]
    PayloadNotObject,
    #[error("notification.new requires \"userId\"")]
    NotificationWithoutUser,
}

impl Draft {
    /// Parses and validates a message's content (the JSON object
    /// `{"type","organizationId"?,"userId"?,"payload"}`); errors name
    /// fields, never values.
    pub fn from_message(content: &[u8]) -> Result<Draft, MessageError> {
        // Parsing into a `Value` first keeps serde's type errors, which quote
        // values, out of the messages; syntax errors only name a position.
        let value: Value =
            serde_json::from_slice(content).map_err(|e| MessageError::Json(e.to_string()))?;
        let Value::Object(mut fields) = value else {
            return Err(MessageError::NotObject);
        };
        if let Some(key) = fields
            .keys()
            .find(|k| !matches!(k.as_str(), "type" | "organizationId" | "userId" | "payload"))
        {
            return Err(MessageError::UnknownField(truncate(key)));
        }
        let event_type = match fields.remove("type") {
            Some(Value::String(t)) => {
                EventType::from_str(&t).map_err(|_| MessageError::UnknownType(truncate(&t)))?
            }
            Some(_) => return Err(MessageError::NotString("type")),
            None => return Err(MessageError::MissingField("type")),
        };
        let organization_id = optional_id(&mut fields, "organizationId")?;
        let user_id = optional_id(&mut fields, "userId")?;
        let payload = match fields.remove("payload") {
            Some(p @ Value::Object(_)) => p,
            Some(_) => return Err(MessageError::PayloadNotObject),
            None => return Err(MessageError::MissingField("payload")),
        };
        if event_type == EventType::NotificationNew && user_id.is_none() {
            return Err(MessageError::NotificationWithoutUser);
        }
        Ok(Draft {
            event_type,
            source: Source::Api,
            organization_id,
            user_id,
            payload,
        })
    }
}

fn optional_id(
    fields: &mut Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, MessageError> {
    match fields.remove(key) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Err(MessageError::Empty(key)),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(MessageError::NotString(key)),
    }
}

/// Bounds names echoed into error messages.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}
