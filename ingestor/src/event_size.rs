//! The event size limit, `REALTIME_MAX_EVENT_BYTES` (ARCHITECTURE.md §2,
//! *Event size*).
//!
//! Two rules keep one row from weighing on Redis, on every client of its
//! organization, and on the ingestor's own memory:
//!
//! - **A column value larger than the limit is never materialized.** Its text
//!   (a 5 MB jsonb, a 100 MB TOASTed text) would only be thrown away by the
//!   second rule, after costing several copies of itself in memory. The
//!   value mapper ([`crate::value::row`]) puts an [`oversize`] marker in its
//!   place: a short string holding the value's length and a 64-bit hash of
//!   its bytes, so that an update can still tell whether the column changed
//!   (two markers are equal exactly when length and hash are). The router
//!   refuses a marker as an id ([`is_oversize`]), and no marker ever reaches
//!   Redis: [`truncate`] removes every one.
//! - **An event whose envelope is larger than the limit is truncated**: it
//!   keeps its id, type, organization, ids and keys (`propertyId`,
//!   `entityId`, `operation`, `updatedFields`, `updatedBy`…) but drops the
//!   row values, `changes` (property.update, organization.change), `data`
//!   (a routed data.sync) and `metadata` (user.activity, notification.new),
//!   any marker left in another field becomes `null`, and it gets
//!   `"truncated": true`, so the client refetches that entity. An event
//!   still over the limit after that (its other fields together are that
//!   large: long ids, titles) is not published: the caller logs and counts
//!   it. Application messages (`source: api`) are not rows: the session
//!   publishes them whole.
//!
//! The marker starts with a NUL character, which no Postgres text value
//! holds (text types refuse NUL); only a `json` column whose whole value is
//! a string spelling a marker exactly could imitate one, and that would only
//! truncate its own event.

use std::hash::Hasher;

use serde_json::Value;

/// What starts every [`oversize`] marker.
const MARKER: &str = "\u{0}oversize:";

/// The payload fields that carry row values: a truncated event drops them.
const ROW_VALUE_FIELDS: [&str; 3] = ["changes", "data", "metadata"];

/// The marker standing for a column value of `bytes` larger than the limit:
/// equal for equal bytes (length and hash), short whatever the value's size.
pub(crate) fn oversize(bytes: &[u8]) -> Value {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hasher.write(bytes);
    Value::String(format!("{MARKER}{}:{:016x}", bytes.len(), hasher.finish()))
}

/// Whether `value` is an [`oversize`] marker.
pub(crate) fn is_oversize(value: &Value) -> bool {
    matches!(value, Value::String(s) if s.starts_with(MARKER))
}

/// Whether a marker is anywhere in `value`.
pub(crate) fn contains_oversize(value: &Value) -> bool {
    match value {
        Value::String(_) => is_oversize(value),
        Value::Array(items) => items.iter().any(contains_oversize),
        Value::Object(map) => map.values().any(contains_oversize),
        _ => false,
    }
}

/// Truncates `payload`: drops the row values, replaces any marker left
/// anywhere with `null` and sets `"truncated": true`. `false` when there is
/// nothing to truncate: the payload is not an object, or it already is
/// truncated.
pub(crate) fn truncate(payload: &mut Value) -> bool {
    let Some(map) = payload.as_object_mut() else {
        return false;
    };
    if map.get("truncated") == Some(&Value::Bool(true)) {
        return false;
    }
    for field in ROW_VALUE_FIELDS {
        map.remove(field);
    }
    for value in map.values_mut() {
        clear_markers(value);
    }
    map.insert("truncated".into(), Value::Bool(true));
    true
}

fn clear_markers(value: &mut Value) {
    match value {
        Value::String(_) if is_oversize(value) => *value = Value::Null,
        Value::Array(items) => items.iter_mut().for_each(clear_markers),
        Value::Object(map) => map.values_mut().for_each(clear_markers),
        _ => {}
    }
}

/// The length of `value` serialized as JSON, without building the text.
pub(crate) fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` into a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn markers_compare_by_content_and_stay_short() {
        let big = vec![b'x'; 1 << 20];
        let mut other = big.clone();
        other[12345] = b'y';
        assert_eq!(oversize(&big), oversize(&big.clone()));
        assert_ne!(oversize(&big), oversize(&other));
        assert_ne!(oversize(&big), oversize(&big[1..]));
        assert!(is_oversize(&oversize(&big)));
        assert!(json_len(&oversize(&big)) < 64);
        assert!(!is_oversize(&json!("oversize:1:2")));
        assert!(!is_oversize(&json!(1)));
    }

    #[test]
    fn truncation_keeps_ids_and_drops_row_values() {
        let mut p = json!({
            "propertyId": "p1", "organizationId": "o1", "operation": "update",
            "updatedFields": ["description"], "changes": {"description": "…"},
            "data": {"a": 1}, "updatedBy": "u1", "metadata": {"k": 1},
            "title": oversize(b"abc"), "nested": [oversize(b"abc"), "kept"],
        });
        assert!(truncate(&mut p));
        assert_eq!(
            p,
            json!({
                "propertyId": "p1", "organizationId": "o1", "operation": "update",
                "updatedFields": ["description"], "updatedBy": "u1",
                "title": null, "nested": [null, "kept"], "truncated": true,
            })
        );
        assert!(!truncate(&mut p), "once");
        assert!(!truncate(&mut json!("a string")));
    }

    #[test]
    fn markers_are_found_anywhere() {
        assert!(contains_oversize(
            &json!({"changes": {"a": [1, oversize(b"x")]}})
        ));
        assert!(!contains_oversize(&json!({"changes": {"a": [1, "x"]}})));
    }

    #[test]
    fn json_len_is_the_serialized_length() {
        let v = json!({"a": "b\"c", "n": [1, 2.5, null], "u": "é"});
        assert_eq!(json_len(&v), serde_json::to_vec(&v).unwrap().len());
    }
}
