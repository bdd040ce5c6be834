//! Events published over HTTP (ARCHITECTURE.md §3): `POST /api/realtime/stream`
//! (a member's `user.activity`) and `POST /api/realtime/publish` (server-side,
//! any type). Both are written to Postgres with
//! `pg_logical_emit_message(true, 'realtime', json)`, so they travel the
//! replication stream like row changes: ordered with the transactions around
//! them, given an id by the ingestor, kept in history and resumable. Bodies
//! are validated here with the ingestor's own rules
//! ([`realtime_shared::message`]), so what is accepted is never skipped later.
//!
//! The role in `DATABASE_URL` needs `EXECUTE` on `pg_logical_emit_message`
//! (superusers and, from Postgres 16, replication roles have it).

use deadpool_postgres::Pool;
use realtime_shared::event::EventType;
use realtime_shared::message::{Draft, MESSAGE_PREFIX};
use serde_json::{Map, Value, json};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The body is refused: the message says why (fields, never values).
    #[error("{0}")]
    BadBody(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

/// Writes messages through Postgres.
#[derive(Clone)]
pub struct Emitter {
    pool: Pool,
}

impl Emitter {
    pub fn new(pool: Pool) -> Self {
        Emitter { pool }
    }

    /// Emits one transactional message; returns its LSN.
    pub async fn emit(&self, content: &str) -> Result<String, PublishError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))?;
        let row = client
            .query_one(
                "SELECT pg_logical_emit_message(true, $1, $2)::text",
                &[&MESSAGE_PREFIX, &content],
            )
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))?;
        row.try_get::<_, String>(0)
            .map_err(|e| PublishError::Unavailable(e.to_string()))
    }
}

/// The logical-message content for a server-side publish body
/// `{"type","organizationId"?,"userId"?,"payload"}`, re-encoded from the
/// validated draft.
pub fn api_message(body: &[u8]) -> Result<String, PublishError> {
    let draft = Draft::from_message(body).map_err(|e| PublishError::BadBody(e.to_string()))?;
    if draft.event_type == EventType::DataSync {
        // data.sync is the gateway's own signal (history gap) and the
        // ingestor's (truncate); clients refetch on it, never a publisher's.
        return Err(PublishError::BadBody(
            "type \"data.sync\" cannot be published".into(),
        ));
    }
    Ok(encode(&draft))
}

/// The logical-message content for a member's `POST /api/realtime/stream`
/// body `{"type":"user.activity","payload":{"action","resource","metadata"?}}`:
/// `payload.userId` is the caller, whatever the body says.
pub fn activity_message(org: &str, user: &str, body: &[u8]) -> Result<String, PublishError> {
    let bad = |m: &str| PublishError::BadBody(m.to_owned());
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| PublishError::BadBody(format!("body is not JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(bad("body must be a JSON object"));
    };
    if let Some(key) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "type" | "payload"))
    {
        return Err(PublishError::BadBody(format!(
            "unknown field {:?} (expected type, payload)",
            key.chars().take(64).collect::<String>()
        )));
    }
    match fields.remove("type") {
        None => {}
        Some(Value::String(t)) if t == EventType::UserActivity.as_str() => {}
        Some(_) => return Err(bad("\"type\" must be \"user.activity\"")),
    }
    let Some(Value::Object(mut payload)) = fields.remove("payload") else {
        return Err(bad("\"payload\" must be a JSON object"));
    };
    let mut out = Map::new();
    for key in ["action", "resource"] {
        match payload.remove(key) {
            Some(Value::String(s)) if !s.is_empty() => {
                out.insert(key.to_owned(), Value::String(s));
            }
            _ => {
                return Err(PublishError::BadBody(format!(
                    "\"payload.{key}\" must be a non-empty string"
                )));
            }
        }
    }
    match payload.remove("metadata") {
        None | Some(Value::Null) => {}
        Some(m @ Value::Object(_)) => {
            out.insert("metadata".to_owned(), m);
        }
        Some(_) => return Err(bad("\"payload.metadata\" must be a JSON object")),
    }
    if let Some(key) = payload.keys().next() {
        return Err(PublishError::BadBody(format!(
            "unknown field \"payload.{}\" (expected action, resource, metadata)",
            key.chars().take(64).collect::<String>()
        )));
    }
    out.insert("userId".to_owned(), Value::String(user.to_owned()));
    let content = json!({
        "type": EventType::UserActivity.as_str(),
        "organizationId": org,
        "payload": out,
    })
    .to_string();
    // The ingestor's rules, to be sure it will route what we accept.
    Draft::from_message(content.as_bytes()).map_err(|e| PublishError::BadBody(e.to_string()))?;
    Ok(content)
}

fn encode(draft: &Draft) -> String {
    let mut m = Map::new();
    m.insert("type".into(), json!(draft.event_type.as_str()));
    if let Some(org) = &draft.organization_id {
        m.insert("organizationId".into(), json!(org));
    }
    if let Some(user) = &draft.user_id {
        m.insert("userId".into(), json!(user));
    }
    m.insert("payload".into(), draft.payload.clone());
    Value::Object(m).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_forces_the_caller_as_user() {
        let c = activity_message(
            "org1",
            "alice",
            br#"{"type":"user.activity","payload":{"action":"viewed","resource":"property/1","userId":"mallory"}}"#,
        );
        // A userId in the payload is an unknown field, refused rather than
        // silently replaced.
        assert!(matches!(c, Err(PublishError::BadBody(m)) if m.contains("payload.userId")));
        let c = activity_message(
            "org1",
            "alice",
            br#"{"payload":{"action":"viewed","resource":"property/1","metadata":{"a":1}}}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_str(&c).unwrap();
        assert_eq!(v["payload"]["userId"], "alice");
        assert_eq!(v["organizationId"], "org1");
        assert_eq!(v["type"], "user.activity");
        assert_eq!(v["payload"]["metadata"]["a"], 1);
    }

    #[test]
    fn activity_bodies_are_checked() {
        for body in [
            &b"nope"[..],
            br#"[]"#,
            br#"{"type":"system.alert","payload":{"action":"a","resource":"r"}}"#,
            br#"{"payload":{"action":"","resource":"r"}}"#,
            br#"{"payload":{"action":"a"}}"#,
            br#"{"payload":{"action":"a","resource":"r","metadata":3}}"#,
            br#"{"payload":{"action":"a","resource":"r"},"extra":1}"#,
            br#"{"payload":"x"}"#,
        ] {
            assert!(
                matches!(
                    activity_message("o", "u", body),
                    Err(PublishError::BadBody(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn api_bodies_use_the_ingestor_rules() {
        let c = api_message(br#"{"type":"system.alert","payload":{"m":"x"}}"#).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&c).unwrap(),
            json!({"type": "system.alert", "payload": {"m": "x"}})
        );
        assert!(api_message(br#"{"type":"nope","payload":{}}"#).is_err());
        assert!(
            api_message(br#"{"type":"notification.new","organizationId":"o","payload":{}}"#)
                .is_err()
        );
        assert!(api_message(br#"{"type":"data.sync","payload":{}}"#).is_err());
        assert!(api_message(br#"{"type":"system.alert"}"#).is_err());
    }
}
