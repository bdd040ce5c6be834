//! Bulk changes (ARCHITECTURE.md §2, *Bulk changes*): past
//! `REALTIME_BULK_THRESHOLD` events of one organization and one table in one
//! transaction, that organization gets one `data.sync`
//! `{entityType: <table>, operation: "bulk", count}` instead of them.
//!
//! A migration's backfill or an import of 50,000 rows would otherwise flood
//! Redis and every client of the organization, and trim its history so that
//! resuming clients get a gap anyway; one refetch serves them better.
//!
//! - Counting happens as events are completed ([`super::Session::complete`]),
//!   when children know their organizations; an event of a key already past
//!   the threshold is dropped there and its index stays a hole (ids never
//!   shift). The events of a transaction wait for its commit up to
//!   [`super::Limits::hold`] (four times the threshold) and
//!   [`super::HOLD_BYTES`]; a key that crosses the threshold within that
//!   window loses all its events. Only a transaction that holds more than
//!   that before one key crosses can have published some of that key's
//!   events before the `data.sync`: the count is still the key's total.
//! - The `data.sync` events are published at the commit, after every other
//!   event of the transaction, with indexes after its last change's, in the
//!   order the keys crossed the threshold: ids stay deterministic and
//!   ordered, and the refetch they ask for covers everything before them.
//! - Membership and notification events are never counted
//!   ([`crate::router::Router::may_coalesce`]), nor messages and truncates.
//! - At most [`MAX_KEYS`] organization-and-table keys are counted per
//!   transaction, so a transaction touching millions of organizations keeps
//!   its memory bounded; keys past that are published event by event.

use std::collections::HashMap;

use serde_json::json;

use super::*;

/// The most organization-and-table keys counted in one transaction.
const MAX_KEYS: usize = 100_000;

/// One transaction's events per organization and table.
#[derive(Debug, Default)]
pub(super) struct Counts {
    /// Per routed table index: events per organization.
    tables: Vec<HashMap<String, u64>>,
    keys: usize,
    /// Keys past the threshold, in the order they crossed it.
    crossed: Vec<(usize, String)>,
    /// Whether a key was left uncounted (logged once per transaction).
    full: bool,
}

impl Counts {
    /// Counts one event of `org` in `table`.
    pub(super) fn count(&mut self, org: &str, table: usize, threshold: u64) {
        if self.tables.len() <= table {
            self.tables.resize_with(table + 1, HashMap::new);
        }
        let orgs = &mut self.tables[table];
        if !orgs.contains_key(org) {
            if self.keys >= MAX_KEYS {
                if !self.full {
                    self.full = true;
                    tracing::warn!(
                        keys = MAX_KEYS,
                        "a transaction changed more organization-and-table pairs than are counted for bulk changes: the others are published event by event"
                    );
                }
                return;
            }
            self.keys += 1;
            orgs.insert(org.to_owned(), 0);
        }
        let Some(n) = orgs.get_mut(org) else {
            return;
        };
        *n += 1;
        if *n == threshold + 1 {
            self.crossed.push((table, org.to_owned()));
        }
    }

    /// Whether `org`'s events in `table` are past the threshold.
    pub(super) fn is_bulk(&self, org: &str, table: usize, threshold: u64) -> bool {
        self.tables
            .get(table)
            .and_then(|orgs| orgs.get(org))
            .is_some_and(|n| *n > threshold)
    }

    /// The keys past the threshold with their counts, in crossing order.
    fn crossed(&self) -> impl Iterator<Item = (usize, &str, u64)> {
        self.crossed.iter().map(|(table, org)| {
            let n = self.tables[*table].get(org).copied().unwrap_or_default();
            (*table, org.as_str(), n)
        })
    }
}

impl<'a> super::Session<'a> {
    /// At a commit, after [`Session::complete`]: one `data.sync` bulk per
    /// key past the threshold, each with the next index of the transaction.
    pub(super) fn publish_bulk(&mut self) {
        let Some(txn) = &mut self.txn else {
            return;
        };
        if txn.bulk.crossed.is_empty() {
            return;
        }
        let counts = std::mem::take(&mut txn.bulk);
        let final_lsn = txn.final_lsn;
        let router = self.router;
        for (table, org, count) in counts.crossed() {
            let entity_type = router
                .routes()
                .tables()
                .get(table)
                .map(|t| t.table())
                .unwrap_or_default();
            let draft = Draft {
                event_type: EventType::DataSync,
                source: Source::Postgres,
                organization_id: Some(org.to_owned()),
                user_id: None,
                payload: json!({"entityType": entity_type, "operation": "bulk", "count": count}),
            };
            let index = self.next_index();
            tracing::info!(
                table = entity_type,
                count,
                event_id = %self.event_id(final_lsn, index),
                threshold = self.limits.bulk_threshold,
                "a transaction changed more rows of one organization's table than REALTIME_BULK_THRESHOLD: publishing one data.sync bulk instead of its events"
            );
            metrics::counter!(m::BULK_SYNCS).increment(1);
            self.push(draft, index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cross_once_and_in_order() {
        let mut c = Counts::default();
        for _ in 0..3 {
            c.count("o1", 2, 2);
        }
        c.count("o2", 0, 2);
        assert!(c.is_bulk("o1", 2, 2));
        assert!(!c.is_bulk("o2", 0, 2));
        assert!(!c.is_bulk("o1", 0, 2), "another table of the same org");
        for _ in 0..5 {
            c.count("o2", 0, 2);
            c.count("o1", 2, 2);
        }
        let crossed: Vec<_> = c.crossed().collect();
        assert_eq!(crossed, [(2, "o1", 8), (0, "o2", 6)]);
    }

    #[test]
    fn at_the_threshold_nothing_is_bulk() {
        let mut c = Counts::default();
        for _ in 0..1000 {
            c.count("o", 0, 1000);
        }
        assert!(!c.is_bulk("o", 0, 1000));
        assert_eq!(c.crossed().count(), 0);
        c.count("o", 0, 1000);
        assert!(c.is_bulk("o", 0, 1000));
    }

    #[test]
    fn keys_past_the_cap_are_not_counted() {
        let mut c = Counts::default();
        for i in 0..MAX_KEYS {
            c.count(&i.to_string(), 0, 0);
        }
        c.count("late", 0, 0);
        c.count("late", 0, 0);
        assert!(!c.is_bulk("late", 0, 0));
        assert!(c.is_bulk("0", 0, 0));
        assert_eq!(c.keys, MAX_KEYS);
    }
}
