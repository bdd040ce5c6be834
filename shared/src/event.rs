//! The event model: what the ingestor publishes and the gateway serves.
//!
//! Wire shape (ARCHITECTURE.md §3), one JSON object per event:
//! `{"id","type","timestamp","source","version":"1.0","organizationId","payload"}`.
//! `timestamp` is the commit time in milliseconds since the Unix epoch;
//! `organizationId` is `null` for broadcast events (to every organization).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The event types of ARCHITECTURE.md §3/§6. The set is closed: channels filter on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "property.update")]
    PropertyUpdate,
    #[serde(rename = "organization.change")]
    OrganizationChange,
    #[serde(rename = "member.join")]
    MemberJoin,
    #[serde(rename = "member.leave")]
    MemberLeave,
    #[serde(rename = "user.activity")]
    UserActivity,
    #[serde(rename = "notification.new")]
    NotificationNew,
    #[serde(rename = "system.alert")]
    SystemAlert,
    #[serde(rename = "data.sync")]
    DataSync,
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        EventType::PropertyUpdate,
        EventType::OrganizationChange,
        EventType::MemberJoin,
        EventType::MemberLeave,
        EventType::UserActivity,
        EventType::NotificationNew,
        EventType::SystemAlert,
        EventType::DataSync,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PropertyUpdate => "property.update",
            EventType::OrganizationChange => "organization.change",
            EventType::MemberJoin => "member.join",
            EventType::MemberLeave => "member.leave",
            EventType::UserActivity => "user.activity",
            EventType::NotificationNew => "notification.new",
            EventType::SystemAlert => "system.alert",
            EventType::DataSync => "data.sync",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?}")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

/// Where an event came from: a row change, or an application message
/// (`pg_logical_emit_message` / the publish API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Postgres,
    Api,
}

/// A deterministic event id, `<commit LSN as u64>-<index in its transaction>`.
///
/// It doubles as the Redis stream entry id, so the ordering of ids is the
/// commit order and a stream refuses an id it already holds: a change replayed
/// after a crash is skipped, not delivered twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub lsn: u64,
    pub index: u64,
}

impl EventId {
    pub const fn new(lsn: u64, index: u64) -> Self {
        Self { lsn, index }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.lsn, self.index)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event id: expected <u64>-<u64>")]
pub struct InvalidEventId;

impl FromStr for EventId {
    type Err = InvalidEventId;
    /// Parses `<u64>-<u64>` strictly: digits only, no sign, no whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (lsn, index) = s.split_once('-').ok_or(InvalidEventId)?;
        let digits = |p: &str| {
            if p.is_empty() || p.len() > 20 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidEventId);
            }
            p.parse::<u64>().map_err(|_| InvalidEventId)
        };
        Ok(EventId::new(digits(lsn)?, digits(index)?))
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One event, exactly as clients receive it in `data:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Commit time, milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub source: Source,
    pub version: EventVersion,
    /// `None` for a broadcast (every organization).
    #[serde(rename = "organizationId")]
    pub organization_id: Option<String>,
    pub payload: Value,
}

/// The wire format version, always `"1.0"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventVersion;

impl Serialize for EventVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("1.0")
    }
}

impl<'de> Deserialize<'de> for EventVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if s == "1.0" {
            Ok(EventVersion)
        } else {
            Err(serde::de::Error::custom("unsupported event version"))
        }
    }
}

/// Which audience an event is for, before the gateway looks at users.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Organization(String),
    Broadcast,
}

impl Event {
    pub fn scope(&self) -> Scope {
        match &self.organization_id {
            Some(org) => Scope::Organization(org.clone()),
            None => Scope::Broadcast,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_round_trips_and_orders_numerically() {
        let a: EventId = "22954552-0".parse().unwrap();
        let b: EventId = "22954552-10".parse().unwrap();
        let c: EventId = "100000000-0".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "22954552-10");
    }

    #[test]
    fn event_id_rejects_garbage() {
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1--1",
            "+1-0",
            "1-0 ",
            "a-b",
            "99999999999999999999999-0",
            "18446744073709551616-0",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn event_serializes_to_the_wire_shape() {
        let e = Event {
            id: EventId::new(5, 1),
            event_type: EventType::PropertyUpdate,
            timestamp: 1_700_000_000_000,
            source: Source::Postgres,
            version: EventVersion,
            organization_id: Some("org1".into()),
            payload: serde_json::json!({"propertyId": "p1"}),
        };
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(
            s,
            r#"{"id":"5-1","type":"property.update","timestamp":1700000000000,"source":"postgres","version":"1.0","organizationId":"org1","payload":{"propertyId":"p1"}}"#
        );
        let back: Event = serde_json::from_str(&s).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn event_type_parses_every_name() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
        }
        assert!("property".parse::<EventType>().is_err());
    }
}
