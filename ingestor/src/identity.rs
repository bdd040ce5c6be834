//! Watching the replica identity of routed tables while streaming.
//!
//! Start-up ([`crate::setup`]) requires `REPLICA IDENTITY FULL` on every
//! routed table, but a migration can reset a table to `DEFAULT` later; from
//! then on its deletes carry only the primary key and its updates no old row,
//! so deletes cannot be routed and membership revocations would be lost.
//!
//! Postgres re-sends a table's pgoutput Relation message, which carries its
//! replica identity (`d` default, `n` nothing, `f` full, `i` index), before
//! the first change decoded after the table's definition changed. Each one
//! goes through [`IdentityWatch::observe`]: a routed table that needs old
//! rows and is not `FULL` is logged as an error and counted in
//! `realtime_ingestor_replica_identity_not_full_total{table}`, and with
//! `REALTIME_MANAGE_REPLICA_IDENTITY=true` it is set back to `FULL` over an
//! ordinary SQL connection, off the replication loop (the `ALTER TABLE`
//! waits for a lock that application transactions may hold).
//!
//! Changes decoded before the fix still lack their old rows: the router
//! turns a membership's into a broadcast "unknown" `member.leave`
//! ([`crate::router::unknown_member_leave`]), others are logged and skipped.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::routes::{RouteKind, TableRoute};

use crate::metrics as m;
use crate::pgoutput::Relation;
use crate::setup::{self, SetupError};

/// `pg_class.relreplident` of a table that sends whole old rows.
pub(crate) const FULL: u8 = b'f';

/// Attempts at restoring one table's identity before giving up until its
/// next Relation message (or the next session).
const FIX_ATTEMPTS: u32 = 5;

/// Whether a route reads old rows: deletes are routed by the old row's
/// organization, updates compare old and new. Activity and notification
/// routes use inserts only.
pub(crate) fn needs_old_rows(route: &TableRoute) -> bool {
    match route.kind() {
        RouteKind::Property(_)
        | RouteKind::Membership(_)
        | RouteKind::Organization(_)
        | RouteKind::Sync(_) => true,
        RouteKind::Activity(_) | RouteKind::Notification(_) => false,
    }
}

/// What a `relreplident` letter means, for logs.
pub(crate) fn describe(identity: u8) -> &'static str {
    match identity {
        b'd' => "DEFAULT",
        b'n' => "NOTHING",
        b'f' => "FULL",
        b'i' => "USING INDEX",
        _ => "unknown",
    }
}

/// Checks Relation messages and restores `FULL` when managed.
#[derive(Debug, Clone)]
pub(crate) struct IdentityWatch {
    manage: bool,
    database_url: String,
    io_timeout: Duration,
    /// Tables (qualified names) with a fix in progress: one at a time each.
    fixing: Arc<Mutex<HashSet<String>>>,
}

impl IdentityWatch {
    pub(crate) fn new(manage: bool, database_url: String, io_timeout: Duration) -> Self {
        Self {
            manage,
            database_url,
            io_timeout,
            fixing: Arc::default(),
        }
    }

    /// Checks one Relation message of a routed table. Never blocks: the fix,
    /// when managed, runs in its own task.
    pub(crate) fn observe(&self, relation: &Relation, route: &TableRoute) {
        if relation.replica_identity == FULL || !needs_old_rows(route) {
            return;
        }
        let table = format!(
            "{}.{}",
            setup::quote_ident(&relation.namespace),
            setup::quote_ident(&relation.name)
        );
        metrics::counter!(m::REPLICA_IDENTITY_NOT_FULL, "table" => relation.name.clone())
            .increment(1);
        let identity = describe(relation.replica_identity);
        if !self.manage {
            tracing::error!(
                table = %table,
                identity,
                "routed table lost REPLICA IDENTITY FULL: its deletes cannot be routed (membership deletes become a broadcast member.leave that makes every gateway re-check its streams); run `ALTER TABLE {table} REPLICA IDENTITY FULL` or set REALTIME_MANAGE_REPLICA_IDENTITY=true"
            );
            return;
        }
        tracing::error!(
            table = %table,
            identity,
            "routed table lost REPLICA IDENTITY FULL: its deletes cannot be routed until it is restored; setting it back to FULL (REALTIME_MANAGE_REPLICA_IDENTITY=true)"
        );
        if !self
            .fixing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(table.clone())
        {
            return;
        }
        let this = self.clone();
        let (schema, name) = (relation.namespace.clone(), relation.name.clone());
        tokio::spawn(async move {
            this.restore(&schema, &name, &table).await;
            this.fixing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&table);
        });
    }

    async fn restore(&self, schema: &str, name: &str, table: &str) {
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=FIX_ATTEMPTS {
            match self.restore_once(schema, name).await {
                Ok(true) => {
                    tracing::info!(table, "set REPLICA IDENTITY FULL again");
                    return;
                }
                Ok(false) => return, // already FULL (an older Relation message)
                Err(e) => {
                    tracing::error!(
                        table,
                        attempt,
                        error = %e,
                        "cannot set REPLICA IDENTITY FULL; run `ALTER TABLE {table} REPLICA IDENTITY FULL`"
                    );
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.io_timeout);
        }
    }

    /// `Ok(true)`: altered; `Ok(false)`: it was FULL already (the Relation
    /// message was older than a fix), so no lock is taken.
    async fn restore_once(&self, schema: &str, name: &str) -> Result<bool, SetupError> {
        let client = setup::connect(&self.database_url, self.io_timeout).await?;
        setup::restore_replica_identity(&client, schema, name, self.io_timeout).await
    }
}
