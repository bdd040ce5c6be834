//! Turns decoded row changes, truncates and logical messages into event
//! drafts (ARCHITECTURE.md §6): type, audience and payload, without id or timestamp,
//! which the pipeline adds from the transaction.
//!
//! The one invariant this module owns: a draft is addressed to an
//! organization only when that organization is read from the row (or named by
//! the message). A row whose organization cannot be read is an error for the
//! caller to log and skip, never a broadcast and never a guess, with one
//! exception that carries no data: a membership row that left without its
//! old row becomes [`unknown_member_leave`], a broadcast telling gateways to
//! re-check every stream (a skipped revocation would keep a former member
//! reading).
//!
//! Decisions (the client-visible contract, see also the README):
//! - `updatedFields` is sorted by column name. `Row` is a `serde_json::Map`,
//!   which without serde_json's `preserve_order` does not know the table's
//!   column order, so a sorted list is the only order stable across builds.
//! - A column is changed when its new value differs from its old value as
//!   JSON (jsonb compares by value, not by text). A column absent from the new
//!   row is an unchanged TOAST value and is never reported as changed.
//! - An UPDATE that changed no column still produces its event (empty
//!   `changes`): the application did write, and clients may refetch on it.
//! - An UPDATE that moves a row to another organization produces two drafts:
//!   the old organization sees the row go (property: a `delete`; membership:
//!   `member.leave`, which also revokes the member's streams), the new one
//!   sees it arrive (property: a `create` with the whole row; membership:
//!   `member.join`). A membership row whose user changed is handled alike.
//!   Hence `route_change` returns a `Vec`; the pipeline numbers event ids per
//!   draft, not per change.
//! - Values of rows and messages never appear in error messages (logs).

use crate::routes::{RouteKind, Routes};
use realtime_shared::event::{EventType, Source};
use serde_json::{Map, Value, json};

mod kinds;
#[cfg(test)]
mod tests;

use crate::change::{Operation, Row, RowChange};
use kinds::Ctx;

pub(crate) use realtime_shared::message::{Draft, MESSAGE_PREFIX, MessageError};

/// Which row of a change a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Old,
    New,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Old => "old",
            Side::New => "new",
        })
    }
}

/// Why a change or message produced no event. The caller logs it and skips
/// the change; messages name tables and columns, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RouteError {
    #[error("{table}: {operation:?} without its {side} row (is REPLICA IDENTITY FULL set?)")]
    MissingRow {
        table: String,
        operation: Operation,
        side: Side,
    },
    #[error("{table}: column {column:?} is absent or null in the {side} row")]
    MissingColumn {
        table: String,
        column: String,
        side: Side,
    },
    #[error(
        "{table}: column {column:?} in the {side} row holds {found}, not a string or integer id"
    )]
    BadId {
        table: String,
        column: String,
        side: Side,
        found: &'static str,
    },
    #[error("{table}: every parent column is null in the {side} row")]
    NoParent { table: String, side: Side },
    #[error("logical message {MESSAGE_PREFIX:?}: {0}")]
    Message(#[from] MessageError),
}

/// A row's parent: which routed table (its index in [`Routes::tables`]) and
/// the parent row's id. The child's event goes to that row's organization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ParentKey {
    pub table: usize,
    pub id: String,
}

/// One event of a row change, as routed; the session completes it at commit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Routed {
    /// Complete, except that a child's `organization_id` (and its payload's
    /// `organizationId`) is `None`/`null` until `parent` is resolved, and the
    /// `actor` field holds its value without an actor.
    pub draft: Draft,
    /// A child route's parent row, whose organization the event goes to.
    pub parent: Option<ParentKey>,
    /// The payload field (`updatedBy`, `invitedBy`) that the transaction's
    /// actor (`realtime.set_actor`) sets, when it names one.
    pub actor: Option<&'static str>,
}

impl From<Draft> for Routed {
    /// A complete event: no parent to resolve, no actor field.
    fn from(draft: Draft) -> Self {
        Self::new(draft)
    }
}

impl Routed {
    fn new(draft: Draft) -> Self {
        Self {
            draft,
            parent: None,
            actor: None,
        }
    }

    fn with_actor(mut self, field: &'static str) -> Self {
        self.actor = Some(field);
        self
    }

    /// Addresses the event to `org`: the draft and, when its payload has
    /// one, the payload's `organizationId` (a child's is `null` until now).
    pub(crate) fn address(&mut self, org: &str) {
        self.draft.organization_id = Some(org.to_owned());
        if let Some(slot) = self
            .draft
            .payload
            .as_object_mut()
            .and_then(|p| p.get_mut("organizationId"))
        {
            *slot = Value::String(org.to_owned());
        }
    }

    /// Sets the actor field to the transaction's actor.
    pub(crate) fn set_actor(&mut self, actor: &str) {
        if let (Some(field), Some(p)) = (self.actor, self.draft.payload.as_object_mut()) {
            p.insert(field.into(), Value::String(actor.to_owned()));
        }
    }
}

/// Routes changes by a validated [`Routes`] config.
#[derive(Debug, Clone)]
pub(crate) struct Router {
    routes: Routes,
    /// Per table index: its parents' table indexes (child routes only).
    parents: Vec<Vec<usize>>,
    /// Per table index: whether some route names it as a parent.
    is_parent: Vec<bool>,
}

impl Router {
    pub(crate) fn new(routes: Routes) -> Self {
        let index = |schema: &str, table: &str| {
            routes
                .tables()
                .iter()
                .position(|t| t.schema() == schema && t.table() == table)
        };
        let parents: Vec<Vec<usize>> = routes
            .tables()
            .iter()
            .map(|t| {
                t.parents()
                    .iter()
                    // Routes::parse checked that every parent is routed.
                    .filter_map(|p| index(&p.schema, &p.table))
                    .collect()
            })
            .collect();
        let mut is_parent = vec![false; routes.tables().len()];
        for i in parents.iter().flatten() {
            is_parent[*i] = true;
        }
        Self {
            routes,
            parents,
            is_parent,
        }
    }

    pub(crate) fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The index in [`Routes::tables`] of `schema.table`, if routed.
    pub(crate) fn index_of(&self, schema: &str, table: &str) -> Option<usize> {
        self.routes
            .tables()
            .iter()
            .position(|t| t.schema() == schema && t.table() == table)
    }

    /// Whether the table at `index` is some route's parent: the session then
    /// follows its rows' organizations (see [`crate::parents`]).
    pub(crate) fn is_parent(&self, index: usize) -> bool {
        self.is_parent.get(index).copied().unwrap_or(false)
    }

    /// Whether the events of the table at `index` may be coalesced into a
    /// bulk `data.sync` (ARCHITECTURE.md §2, *Bulk changes*): not a
    /// membership's (each `member.leave` revokes streams, each join is a
    /// person let in) nor a notification's (addressed to one user, not to
    /// the organization a `data.sync` goes to).
    pub(crate) fn may_coalesce(&self, index: usize) -> bool {
        self.routes.tables().get(index).is_some_and(|t| {
            !matches!(
                t.kind(),
                RouteKind::Membership(_) | RouteKind::Notification(_)
            )
        })
    }

    /// The events of one row change, in publishing order. Empty: the table
    /// is not routed, or this operation produces no event for its kind. Two:
    /// an update moved the row between organizations (or users, for a
    /// membership, or parents, for a child), see the module docs.
    #[cfg(test)]
    pub(crate) fn route_change(&self, change: &RowChange<'_>) -> Result<Vec<Routed>, RouteError> {
        match self.index_of(change.schema, change.table) {
            Some(index) => self.route_change_at(index, change),
            None => Ok(Vec::new()),
        }
    }

    /// The same for a change of the routed table at `index` (from
    /// [`Router::index_of`]): the session looks the route up once for this
    /// and for following parent rows.
    pub(crate) fn route_change_at(
        &self,
        index: usize,
        change: &RowChange<'_>,
    ) -> Result<Vec<Routed>, RouteError> {
        let route = &self.routes.tables()[index];
        let c = Ctx {
            route,
            parents: &self.parents[index],
            change,
        };
        match route.kind() {
            RouteKind::Property(p) => c.property(p),
            RouteKind::Membership(m) => c.membership(m),
            RouteKind::Organization(o) => c.organization(o),
            RouteKind::Activity(a) => c.activity(a),
            RouteKind::Notification(n) => c.notification(n),
            RouteKind::Sync(s) => c.sync(s),
        }
    }

    /// Truncate of a routed table → `data.sync {entityType: <table>,
    /// operation: "truncate"}` to every organization: a truncate carries no
    /// rows, so which organizations lost data is unknown.
    pub(crate) fn route_truncate(&self, schema: &str, table: &str) -> Option<Draft> {
        let route = self.routes.find(schema, table)?;
        Some(Draft {
            event_type: EventType::DataSync,
            source: Source::Postgres,
            organization_id: None,
            user_id: None,
            payload: json!({"entityType": route.table(), "operation": "truncate"}),
        })
    }

    /// A logical message. Prefix `realtime`: the content is a JSON object
    /// `{"type", "organizationId"?, "userId"?, "payload"}` (the publish API's
    /// body) → one draft with `source: api`; without `organizationId` it is a
    /// broadcast, with `userId` it reaches only that user. Any other prefix
    /// (`realtime-heartbeat`, other applications') → `Ok(None)`.
    ///
    /// Unknown fields are refused rather than ignored: a misspelt
    /// `organizationId` would otherwise turn an organization's event into a
    /// broadcast to everyone. For the same reason `null` ids are refused:
    /// omit the field to broadcast.
    pub(crate) fn route_message(
        &self,
        prefix: &str,
        content: &[u8],
    ) -> Result<Option<Draft>, RouteError> {
        if prefix != MESSAGE_PREFIX {
            return Ok(None);
        }
        Ok(Some(Draft::from_message(content)?))
    }
}

/// The `member.leave` of a membership row that left without saying whose
/// it was: a delete (or an update) of a membership table whose old row lacks
/// the user or organization column, which happens when the table lost
/// `REPLICA IDENTITY FULL` after start-up.
///
/// Skipping it would lose a revocation, so it is published instead as a
/// **broadcast** (`organizationId: null`) with the payload
/// `{"memberId": null, "organizationId": null, "reason": "unknown"}`: every
/// gateway re-checks the membership of every open stream before sending it
/// anything else, and forwards this event to no browser. It takes its place
/// among the transaction's events like any other (same ids, same publish
/// path), so it is ordered and durable in the broadcast history.
pub(crate) fn unknown_member_leave() -> Draft {
    Draft {
        event_type: EventType::MemberLeave,
        source: Source::Postgres,
        organization_id: None,
        user_id: None,
        payload: json!({"memberId": null, "organizationId": null, "reason": "unknown"}),
    }
}

/// Whether `draft` is an [`unknown_member_leave`].
pub(crate) fn is_unknown_member_leave(draft: &Draft) -> bool {
    draft.event_type == EventType::MemberLeave && draft.organization_id.is_none()
}

/// The columns of `new` whose value differs from `old`, with their new
/// values. Columns absent from `new` (unchanged TOAST) are unchanged; a
/// column absent from `old` only is changed (its previous value is unknown).
fn changed_columns(old: &Row, new: &Row) -> Map<String, Value> {
    new.iter()
        .filter(|(k, v)| old.get(k.as_str()) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The changed field names, sorted (see the module docs); a child route's
/// are prefixed with its field (`listing.marketingStatus`).
fn updated_fields(changes: &Map<String, Value>, prefix: Option<&str>) -> Value {
    let mut names: Vec<&String> = changes.keys().collect();
    names.sort();
    Value::Array(
        names
            .into_iter()
            .map(|k| match prefix {
                Some(p) => Value::String(format!("{p}.{k}")),
                None => Value::String(k.clone()),
            })
            .collect(),
    )
}

/// Copies `row[column]` into `payload[key]` when the column is configured and
/// the value is present and not null (the optional `…?` payload fields).
fn insert_non_null(payload: &mut Map<String, Value>, key: &str, row: &Row, column: Option<&str>) {
    if let Some(v) = column.and_then(|c| row.get(c)).filter(|v| !v.is_null()) {
        payload.insert(key.into(), v.clone());
    }
}
