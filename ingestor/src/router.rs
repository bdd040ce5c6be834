//! Turns decoded row changes, truncates and logical messages into event
//! drafts (DESIGN §6): type, audience and payload, without id or timestamp,
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

use crate::routes::{
    ActivityRoute, MembershipRoute, NotificationRoute, OrgSource, OrganizationRoute, PropertyRoute,
    RouteKind, Routes, SyncRoute, TableRoute,
};
use realtime_shared::event::{EventType, Source};
use serde_json::{Map, Value, json};

use crate::change::{Operation, Row, RowChange};

pub use realtime_shared::message::{Draft, MESSAGE_PREFIX, MessageError};

/// Which row of a change a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
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
pub enum RouteError {
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
pub struct ParentKey {
    pub table: usize,
    pub id: String,
}

/// One event of a row change, as routed; the session completes it at commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
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
    pub fn address(&mut self, org: &str) {
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
    pub fn set_actor(&mut self, actor: &str) {
        if let (Some(field), Some(p)) = (self.actor, self.draft.payload.as_object_mut()) {
            p.insert(field.into(), Value::String(actor.to_owned()));
        }
    }
}

/// Routes changes by a validated [`Routes`] config.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Routes,
    /// Per table index: its parents' table indexes (child routes only).
    parents: Vec<Vec<usize>>,
    /// Per table index: whether some route names it as a parent.
    is_parent: Vec<bool>,
}

impl Router {
    pub fn new(routes: Routes) -> Self {
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

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The index in [`Routes::tables`] of `schema.table`, if routed.
    pub fn index_of(&self, schema: &str, table: &str) -> Option<usize> {
        self.routes
            .tables()
            .iter()
            .position(|t| t.schema() == schema && t.table() == table)
    }

    /// Whether the table at `index` is some route's parent: the session then
    /// follows its rows' organizations (see [`crate::parents`]).
    pub fn is_parent(&self, index: usize) -> bool {
        self.is_parent.get(index).copied().unwrap_or(false)
    }

    /// The events of one row change, in publishing order. Empty: the table
    /// is not routed, or this operation produces no event for its kind. Two:
    /// an update moved the row between organizations (or users, for a
    /// membership, or parents, for a child), see the module docs.
    pub fn route_change(&self, change: &RowChange<'_>) -> Result<Vec<Routed>, RouteError> {
        let Some(index) = self.index_of(change.schema, change.table) else {
            return Ok(Vec::new());
        };
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
    pub fn route_truncate(&self, schema: &str, table: &str) -> Option<Draft> {
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
    pub fn route_message(&self, prefix: &str, content: &[u8]) -> Result<Option<Draft>, RouteError> {
        if prefix != MESSAGE_PREFIX {
            return Ok(None);
        }
        Ok(Some(Draft::from_message(content)?))
    }
}

/// One change being routed by one route.
struct Ctx<'c, 'a> {
    route: &'c TableRoute,
    /// The table indexes of `route.parents()`, in the same order.
    parents: &'c [usize],
    change: &'c RowChange<'a>,
}

/// Where one event goes: an organization read from the row, or a parent row
/// whose organization the session looks up.
enum Target {
    Org(String),
    Parent(ParentKey),
}

impl Target {
    /// The organization to write into the draft now (`None` until resolved).
    fn org(&self) -> Option<String> {
        match self {
            Target::Org(o) => Some(o.clone()),
            Target::Parent(_) => None,
        }
    }

    fn parent(self) -> Option<ParentKey> {
        match self {
            Target::Org(_) => None,
            Target::Parent(p) => Some(p),
        }
    }
}

impl Ctx<'_, '_> {
    fn table(&self) -> String {
        format!("{}.{}", self.change.schema, self.change.table)
    }

    fn row(&self, side: Side) -> Result<&Row, RouteError> {
        let row = match side {
            Side::Old => self.change.old.as_ref(),
            Side::New => self.change.new.as_ref(),
        };
        row.ok_or_else(|| RouteError::MissingRow {
            table: self.table(),
            operation: self.change.operation,
            side,
        })
    }

    /// A non-null column value (null is the same as absent for ids).
    fn value<'r>(&self, row: &'r Row, column: &str, side: Side) -> Result<&'r Value, RouteError> {
        match row.get(column) {
            Some(Value::Null) | None => Err(RouteError::MissingColumn {
                table: self.table(),
                column: column.to_owned(),
                side,
            }),
            Some(v) => Ok(v),
        }
    }

    /// An id column as a string: text as is, an integer as its decimal form.
    /// Anything else (empty text, floats, objects…) cannot name an
    /// organization or a user.
    fn id(&self, row: &Row, column: &str, side: Side) -> Result<String, RouteError> {
        let bad = |found| RouteError::BadId {
            table: self.table(),
            column: column.to_owned(),
            side,
            found,
        };
        match self.value(row, column, side)? {
            Value::String(s) if s.is_empty() => Err(bad("an empty string")),
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
            Value::Number(_) => Err(bad("a non-integer number")),
            Value::Bool(_) => Err(bad("a boolean")),
            Value::Array(_) => Err(bad("an array")),
            Value::Object(_) => Err(bad("an object")),
            Value::Null => Err(bad("null")),
        }
    }

    /// Where the row's events go: its organization column, or the first of
    /// its parent columns that is not null. Also returns the parent column's
    /// value (a child property's `propertyId`).
    fn target(&self, row: &Row, side: Side) -> Result<Target, RouteError> {
        match self.route.org_source() {
            OrgSource::Column(column) => Ok(Target::Org(self.id(row, column, side)?)),
            OrgSource::Parents(parents) => {
                for (parent, &table) in parents.iter().zip(self.parents) {
                    if matches!(row.get(&parent.column), None | Some(Value::Null)) {
                        continue;
                    }
                    let id = self.id(row, &parent.column, side)?;
                    return Ok(Target::Parent(ParentKey { table, id }));
                }
                Err(RouteError::NoParent {
                    table: self.table(),
                    side,
                })
            }
        }
    }

    fn draft(&self, event_type: EventType, target: Target, payload: Value) -> Routed {
        let organization_id = target.org();
        Routed {
            draft: Draft {
                event_type,
                source: Source::Postgres,
                organization_id,
                user_id: None,
                payload,
            },
            parent: target.parent(),
            actor: None,
        }
    }

    /// `row` with its columns under their field names.
    fn fields(&self, row: &Row) -> Map<String, Value> {
        row.iter()
            .map(|(k, v)| (self.route.field_name(k).to_owned(), v.clone()))
            .collect()
    }

    /// Whether this update sets the archive column to the archive value.
    fn archives(&self, p: &PropertyRoute, old: &Row, new: &Row) -> bool {
        p.archive.as_ref().is_some_and(|a| {
            let is_archived =
                |row: &Row| row.get(&a.column).and_then(Value::as_str) == Some(&a.value);
            is_archived(new) && !is_archived(old)
        })
    }

    fn property(&self, p: &PropertyRoute) -> Result<Vec<Routed>, RouteError> {
        if p.field.is_some() {
            return self.property_child(p);
        }
        let org_value = |t: &Target| t.org().map_or(Value::Null, Value::String);
        // `updatedBy` without an actor: the configured column's value on
        // creates and updates; a deleted row's column would name its last
        // editor, not whoever deleted it, so a delete has null.
        let updated_by = |row: Option<&Row>| {
            p.updated_by_column
                .as_deref()
                .zip(row)
                .and_then(|(c, row)| row.get(c))
                .cloned()
                .unwrap_or(Value::Null)
        };
        let create = |row: &Row, target: Target| -> Result<Routed, RouteError> {
            let payload = json!({
                "propertyId": self.value(row, &p.id_column, Side::New)?,
                "organizationId": org_value(&target),
                "operation": "create",
                "changes": self.fields(row),
                "updatedBy": updated_by(Some(row)),
            });
            Ok(self
                .draft(EventType::PropertyUpdate, target, payload)
                .with_actor("updatedBy"))
        };
        let delete = |row: &Row, target: Target| -> Result<Routed, RouteError> {
            let payload = json!({
                "propertyId": self.value(row, &p.id_column, Side::Old)?,
                "organizationId": org_value(&target),
                "operation": "delete",
                "changes": self.fields(row),
                "updatedBy": updated_by(None),
            });
            Ok(self
                .draft(EventType::PropertyUpdate, target, payload)
                .with_actor("updatedBy"))
        };
        match self.change.operation {
            Operation::Insert => {
                let new = self.row(Side::New)?;
                Ok(vec![create(new, self.target(new, Side::New)?)?])
            }
            Operation::Delete => {
                let old = self.row(Side::Old)?;
                Ok(vec![delete(old, self.target(old, Side::Old)?)?])
            }
            Operation::Update => {
                let (old, new) = (self.row(Side::Old)?, self.row(Side::New)?);
                let (old_org, new_org) =
                    (self.target(old, Side::Old)?, self.target(new, Side::New)?);
                let (Target::Org(old_id), Target::Org(new_id)) = (&old_org, &new_org) else {
                    unreachable!("a property route without a field has an org_column")
                };
                if old_id != new_id {
                    return Ok(vec![delete(old, old_org)?, create(new, new_org)?]);
                }
                let changes = self.fields(&changed_columns(old, new));
                let operation = if self.archives(p, old, new) {
                    "archive"
                } else {
                    "update"
                };
                let payload = json!({
                    "propertyId": self.value(new, &p.id_column, Side::New)?,
                    "organizationId": org_value(&new_org),
                    "operation": operation,
                    "updatedFields": updated_fields(&changes, None),
                    "changes": changes,
                    "updatedBy": updated_by(Some(new)),
                });
                Ok(vec![
                    self.draft(EventType::PropertyUpdate, new_org, payload)
                        .with_actor("updatedBy"),
                ])
            }
        }
    }

    /// A child of a property (`listings`, `addresses`, …): every change is an
    /// `update` (or `archive`) of the parent property, the child's columns
    /// nested under the route's `field`. A child that moved to another parent
    /// updates both: the old one loses it (`{field: null}`), the new one
    /// gains it.
    fn property_child(&self, p: &PropertyRoute) -> Result<Vec<Routed>, RouteError> {
        let field = p.field.as_deref().unwrap_or_default();
        let updated_by = |row: Option<&Row>| {
            p.updated_by_column
                .as_deref()
                .zip(row)
                .and_then(|(c, row)| row.get(c))
                .cloned()
                .unwrap_or(Value::Null)
        };
        let event =
            |target: Target, operation: &str, updated: Value, nested: Value, by: Value| -> Routed {
                let property_id = match &target {
                    Target::Parent(k) => Value::String(k.id.clone()),
                    Target::Org(_) => Value::Null,
                };
                let payload = json!({
                    "propertyId": property_id,
                    "organizationId": null,
                    "operation": operation,
                    "updatedFields": updated,
                    "changes": {field: nested},
                    "updatedBy": by,
                });
                self.draft(EventType::PropertyUpdate, target, payload)
                    .with_actor("updatedBy")
            };
        let whole = || json!([field]);
        match self.change.operation {
            Operation::Insert => {
                let new = self.row(Side::New)?;
                let target = self.target(new, Side::New)?;
                Ok(vec![event(
                    target,
                    "update",
                    whole(),
                    Value::Object(self.fields(new)),
                    updated_by(Some(new)),
                )])
            }
            Operation::Delete => {
                let old = self.row(Side::Old)?;
                let target = self.target(old, Side::Old)?;
                Ok(vec![event(
                    target,
                    "update",
                    whole(),
                    Value::Null,
                    updated_by(None),
                )])
            }
            Operation::Update => {
                let (old, new) = (self.row(Side::Old)?, self.row(Side::New)?);
                let (from, to) = (self.target(old, Side::Old)?, self.target(new, Side::New)?);
                let moved = match (&from, &to) {
                    (Target::Parent(a), Target::Parent(b)) => a != b,
                    _ => false,
                };
                if moved {
                    return Ok(vec![
                        event(from, "update", whole(), Value::Null, updated_by(None)),
                        event(
                            to,
                            "update",
                            whole(),
                            Value::Object(self.fields(new)),
                            updated_by(Some(new)),
                        ),
                    ]);
                }
                let changes = self.fields(&changed_columns(old, new));
                let operation = if self.archives(p, old, new) {
                    "archive"
                } else {
                    "update"
                };
                Ok(vec![event(
                    to,
                    operation,
                    updated_fields(&changes, Some(field)),
                    Value::Object(changes),
                    updated_by(Some(new)),
                )])
            }
        }
    }

    /// `data.sync {entityType, entityId, operation, data}` in the app's
    /// shape. A row that moved between organizations (or parents) is a
    /// `delete` where it was and a `create` where it is.
    fn sync(&self, s: &SyncRoute) -> Result<Vec<Routed>, RouteError> {
        let event = |row: &Row,
                     side: Side,
                     target: Target,
                     operation: &str|
         -> Result<Routed, RouteError> {
            let payload = json!({
                "entityType": s.entity_type,
                "entityId": self.value(row, &s.id_column, side)?,
                "operation": operation,
                "data": self.fields(row),
            });
            Ok(self.draft(EventType::DataSync, target, payload))
        };
        match self.change.operation {
            Operation::Insert => {
                let new = self.row(Side::New)?;
                Ok(vec![event(
                    new,
                    Side::New,
                    self.target(new, Side::New)?,
                    "create",
                )?])
            }
            Operation::Delete => {
                let old = self.row(Side::Old)?;
                Ok(vec![event(
                    old,
                    Side::Old,
                    self.target(old, Side::Old)?,
                    "delete",
                )?])
            }
            Operation::Update => {
                let (old, new) = (self.row(Side::Old)?, self.row(Side::New)?);
                let (from, to) = (self.target(old, Side::Old)?, self.target(new, Side::New)?);
                let moved = match (&from, &to) {
                    (Target::Org(a), Target::Org(b)) => a != b,
                    (Target::Parent(a), Target::Parent(b)) => a != b,
                    _ => true,
                };
                if moved {
                    return Ok(vec![
                        event(old, Side::Old, from, "delete")?,
                        event(new, Side::New, to, "create")?,
                    ]);
                }
                Ok(vec![event(new, Side::New, to, "update")?])
            }
        }
    }

    fn membership(&self, m: &MembershipRoute) -> Result<Vec<Routed>, RouteError> {
        let org = |row: &Row, side| self.target(row, side).map(|t| t.org().unwrap_or_default());
        let join = |row: &Row| -> Result<Routed, RouteError> {
            let org = org(row, Side::New)?;
            let payload = json!({
                "memberId": self.id(row, &m.user_column, Side::New)?,
                "organizationId": org,
                "role": row.get(&m.role_column).unwrap_or(&Value::Null),
                "invitedBy": null,
            });
            Ok(self
                .draft(EventType::MemberJoin, Target::Org(org), payload)
                .with_actor("invitedBy"))
        };
        // A row delete has no reason to give; `reason` is for messages.
        let leave = |row: &Row| -> Result<Routed, RouteError> {
            let org = org(row, Side::Old)?;
            let payload = json!({
                "memberId": self.id(row, &m.user_column, Side::Old)?,
                "organizationId": org,
            });
            Ok(self.draft(EventType::MemberLeave, Target::Org(org), payload))
        };
        // Who left, and from where: `None` when the old row is missing or
        // lacks its ids (the table lost REPLICA IDENTITY FULL).
        let old_member = || -> Option<(&Row, String, String)> {
            let old = self.change.old.as_ref()?;
            let org = org(old, Side::Old).ok()?;
            let user = self.id(old, &m.user_column, Side::Old).ok()?;
            Some((old, org, user))
        };
        let unknown = || Routed::new(unknown_member_leave());
        match self.change.operation {
            Operation::Insert => Ok(vec![join(self.row(Side::New)?)?]),
            Operation::Delete => match old_member() {
                Some((old, _, _)) => Ok(vec![leave(old)?]),
                None => Ok(vec![unknown()]),
            },
            Operation::Update => {
                let new = self.row(Side::New)?;
                let Some((old, old_org, old_user)) = old_member() else {
                    // Without the old row a changed user or organization is
                    // invisible: someone may have left. The new row's join
                    // follows when it can be read; the leave goes out anyway.
                    return Ok(match join(new) {
                        Ok(join) => vec![unknown(), join],
                        Err(_) => vec![unknown()],
                    });
                };
                let moved = old_org != org(new, Side::New)?
                    || old_user != self.id(new, &m.user_column, Side::New)?;
                if moved {
                    Ok(vec![leave(old)?, join(new)?])
                } else {
                    Ok(vec![join(new)?])
                }
            }
        }
    }

    /// `changeType`: the one change type the changed columns map to (by
    /// `change_types`), else `default_change_type`. Changing the
    /// organization's id (which cascades to its members' rows) informs both
    /// ids.
    fn organization(&self, o: &OrganizationRoute) -> Result<Vec<Routed>, RouteError> {
        if self.change.operation != Operation::Update {
            return Ok(Vec::new());
        }
        let (old, new) = (self.row(Side::Old)?, self.row(Side::New)?);
        let org = |row: &Row, side| self.target(row, side).map(|t| t.org().unwrap_or_default());
        let (old_org, new_org) = (org(old, Side::Old)?, org(new, Side::New)?);
        let changed = changed_columns(old, new);
        let mut types = changed
            .keys()
            .filter_map(|c| o.change_types.get(c.as_str()))
            .collect::<Vec<_>>();
        types.sort();
        types.dedup();
        let change_type = match types.as_slice() {
            [only] => only.as_str(),
            _ => o.default_change_type.as_str(),
        };
        let changes = self.fields(&changed);
        let draft = |org: String| {
            let payload = json!({
                "organizationId": org,
                "changeType": change_type,
                "changes": changes,
                "updatedBy": null,
            });
            self.draft(EventType::OrganizationChange, Target::Org(org), payload)
                .with_actor("updatedBy")
        };
        if old_org == new_org {
            Ok(vec![draft(new_org)])
        } else {
            Ok(vec![draft(old_org), draft(new_org)])
        }
    }

    fn activity(&self, a: &ActivityRoute) -> Result<Vec<Routed>, RouteError> {
        if self.change.operation != Operation::Insert {
            return Ok(Vec::new());
        }
        let new = self.row(Side::New)?;
        let target = self.target(new, Side::New)?;
        let get = |column: &str| new.get(column).cloned().unwrap_or(Value::Null);
        let mut payload = Map::new();
        payload.insert("userId".into(), get(&a.actor_column));
        payload.insert("action".into(), get(&a.action_column));
        payload.insert("resource".into(), get(&a.resource_column));
        insert_non_null(&mut payload, "resourceId", new, Some(&a.resource_id_column));
        payload.insert("metadata".into(), get(&a.metadata_column));
        Ok(vec![self.draft(
            EventType::UserActivity,
            target,
            Value::Object(payload),
        )])
    }

    /// Addressed to the row's user only; a row without one is an error, never
    /// a notification to the whole organization.
    fn notification(&self, n: &NotificationRoute) -> Result<Vec<Routed>, RouteError> {
        if self.change.operation != Operation::Insert {
            return Ok(Vec::new());
        }
        let new = self.row(Side::New)?;
        let target = self.target(new, Side::New)?;
        let user = self.id(new, &n.user_column, Side::New)?;
        let get = |column: &str| new.get(column).cloned().unwrap_or(Value::Null);
        let mut payload = Map::new();
        payload.insert("userId".into(), Value::String(user.clone()));
        payload.insert("title".into(), get(&n.title_column));
        payload.insert("message".into(), get(&n.message_column));
        payload.insert("priority".into(), get(&n.priority_column));
        payload.insert("category".into(), get(&n.category_column));
        insert_non_null(&mut payload, "metadata", new, Some(&n.metadata_column));
        let mut routed = self.draft(EventType::NotificationNew, target, Value::Object(payload));
        routed.draft.user_id = Some(user);
        Ok(vec![routed])
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
pub fn unknown_member_leave() -> Draft {
    Draft {
        event_type: EventType::MemberLeave,
        source: Source::Postgres,
        organization_id: None,
        user_id: None,
        payload: json!({"memberId": null, "organizationId": null, "reason": "unknown"}),
    }
}

/// Whether `draft` is an [`unknown_member_leave`].
pub fn is_unknown_member_leave(draft: &Draft) -> bool {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly on purpose
mod tests {
    use super::*;

    impl Router {
        /// The drafts of a change as routed (children unaddressed, no actor).
        fn route_drafts(&self, c: &RowChange<'_>) -> Result<Vec<Draft>, RouteError> {
            Ok(self.route_change(c)?.into_iter().map(|r| r.draft).collect())
        }
    }

    fn router() -> Router {
        let mut toml = include_str!("../routes/oikion.toml").to_owned();
        toml.push_str(
            r#"
[[tables]]
table = "notifications"
kind = "notification"
org_column = "organizationId"
user_column = "userId"

[[tables]]
schema = "app"
table = "listings"
kind = "property"
org_column = "orgId"
updated_by_column = "updatedBy"
"#,
        );
        Router::new(Routes::from_toml_str(&toml).unwrap())
    }

    fn row(v: Value) -> Row {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn change<'a>(
        table: &'a str,
        operation: Operation,
        old: Option<Value>,
        new: Option<Value>,
    ) -> RowChange<'a> {
        RowChange {
            schema: "public",
            table,
            operation,
            old: old.map(row),
            new: new.map(row),
        }
    }

    fn one(r: &Router, c: &RowChange<'_>) -> Draft {
        let mut drafts = r.route_drafts(c).unwrap();
        assert_eq!(drafts.len(), 1, "{drafts:?}");
        drafts.remove(0)
    }

    fn property_row() -> Value {
        json!({
            "id": "p1", "organizationId": "org1", "createdBy": "u1", "price": "100.00",
            "bedrooms": 2, "features": {"pool": true, "rooms": [1, 2]}, "description": null,
        })
    }

    // --- child routes, sync, actor ---

    fn listing_row() -> Value {
        json!({"id": "l1", "propertyId": "p1", "listPrice": "10.00",
               "marketingStatus": "ACTIVE", "archivedAt": null})
    }

    fn routed(r: &Router, c: &RowChange<'_>) -> Vec<Routed> {
        r.route_change(c).unwrap()
    }

    #[test]
    fn a_listing_archive_is_an_archive_of_its_property_addressed_by_the_parent() {
        let r = router();
        let properties = r.index_of("public", "properties").unwrap();
        assert!(r.is_parent(properties));
        assert!(!r.is_parent(r.index_of("public", "listings").unwrap()));
        let mut new = listing_row();
        new["marketingStatus"] = json!("ARCHIVED");
        new["archivedAt"] = json!("2026-01-01T00:00:00.000");
        let mut out = routed(
            &r,
            &change(
                "listings",
                Operation::Update,
                Some(listing_row()),
                Some(new),
            ),
        );
        assert_eq!(out.len(), 1);
        let mut e = out.remove(0);
        assert_eq!(
            e.parent,
            Some(ParentKey {
                table: properties,
                id: "p1".into()
            })
        );
        // Unaddressed until the session resolves the parent.
        assert_eq!(e.draft.organization_id, None);
        assert_eq!(
            e.draft.payload,
            json!({"propertyId": "p1", "organizationId": null, "operation": "archive",
                   "updatedFields": ["listing.archivedAt", "listing.marketingStatus"],
                   "changes": {"listing": {"marketingStatus": "ARCHIVED",
                                           "archivedAt": "2026-01-01T00:00:00.000"}},
                   "updatedBy": null})
        );
        e.address("org9");
        e.set_actor("u7");
        assert_eq!(e.draft.organization_id.as_deref(), Some("org9"));
        assert_eq!(e.draft.payload["organizationId"], "org9");
        assert_eq!(e.draft.payload["updatedBy"], "u7");

        // Any other listing change is an update; an insert nests the whole row.
        let mut new = listing_row();
        new["listPrice"] = json!("11.00");
        let e = &routed(
            &r,
            &change(
                "listings",
                Operation::Update,
                Some(listing_row()),
                Some(new),
            ),
        )[0];
        assert_eq!(e.draft.payload["operation"], "update");
        let e = &routed(
            &r,
            &change("listings", Operation::Insert, None, Some(listing_row())),
        )[0];
        assert_eq!(e.draft.payload["operation"], "update");
        assert_eq!(e.draft.payload["updatedFields"], json!(["listing"]));
        assert_eq!(e.draft.payload["changes"]["listing"]["listPrice"], "10.00");
        let e = &routed(
            &r,
            &change("listings", Operation::Delete, Some(listing_row()), None),
        )[0];
        assert_eq!(e.draft.payload["changes"], json!({"listing": null}));
    }

    #[test]
    fn a_child_moved_to_another_parent_updates_both() {
        let r = router();
        let mut new = listing_row();
        new["propertyId"] = json!("p2");
        let out = routed(
            &r,
            &change(
                "listings",
                Operation::Update,
                Some(listing_row()),
                Some(new),
            ),
        );
        let parents: Vec<_> = out
            .iter()
            .map(|e| e.parent.as_ref().unwrap().id.as_str())
            .collect();
        assert_eq!(parents, ["p1", "p2"]);
        assert_eq!(out[0].draft.payload["changes"], json!({"listing": null}));
        assert_eq!(
            out[1].draft.payload["changes"]["listing"]["propertyId"],
            "p2"
        );
    }

    #[test]
    fn a_note_takes_its_first_non_null_parent() {
        let r = router();
        let clients = r.index_of("public", "clients").unwrap();
        let properties = r.index_of("public", "properties").unwrap();
        let note = |client: Value, property: Value| {
            json!({"id": "n1", "clientId": client, "propertyId": property, "content": "hi",
                   "created_at": "2026-01-01T00:00:00.000"})
        };
        let e = &routed(
            &r,
            &change(
                "notes",
                Operation::Insert,
                None,
                Some(note(json!("c1"), json!("p1"))),
            ),
        )[0];
        assert_eq!(
            e.parent,
            Some(ParentKey {
                table: clients,
                id: "c1".into()
            })
        );
        assert_eq!(e.draft.event_type, EventType::DataSync);
        assert_eq!(
            e.draft.payload,
            json!({"entityType": "note", "entityId": "n1", "operation": "create",
                   "data": {"id": "n1", "clientId": "c1", "propertyId": "p1", "content": "hi",
                            "createdAt": "2026-01-01T00:00:00.000"}})
        );
        let e = &routed(
            &r,
            &change(
                "notes",
                Operation::Insert,
                None,
                Some(note(Value::Null, json!("p1"))),
            ),
        )[0];
        assert_eq!(
            e.parent,
            Some(ParentKey {
                table: properties,
                id: "p1".into()
            })
        );
        let err = r
            .route_change(&change(
                "notes",
                Operation::Insert,
                None,
                Some(note(Value::Null, Value::Null)),
            ))
            .unwrap_err();
        assert!(matches!(err, RouteError::NoParent { .. }), "{err}");
    }

    #[test]
    fn clients_and_tasks_are_data_sync_in_the_apps_shape() {
        let r = router();
        let client = json!({"id": "c1", "organizationId": "org1", "name": "Ann",
                            "created_at": "2026-01-01T00:00:00.000", "updated_at": "2026-01-01T00:00:00.000"});
        let d = one(
            &r,
            &change("clients", Operation::Insert, None, Some(client.clone())),
        );
        assert_eq!(d.organization_id.as_deref(), Some("org1"));
        assert_eq!(
            d.payload,
            json!({"entityType": "client", "entityId": "c1", "operation": "create",
                   "data": {"id": "c1", "organizationId": "org1", "name": "Ann",
                            "createdAt": "2026-01-01T00:00:00.000",
                            "updatedAt": "2026-01-01T00:00:00.000"}})
        );
        let mut renamed = client.clone();
        renamed["name"] = json!("Anna");
        let d = one(
            &r,
            &change(
                "clients",
                Operation::Update,
                Some(client.clone()),
                Some(renamed),
            ),
        );
        assert_eq!(d.payload["operation"], "update");
        assert_eq!(d.payload["data"]["name"], "Anna");
        let d = one(
            &r,
            &change("clients", Operation::Delete, Some(client.clone()), None),
        );
        assert_eq!(d.payload["operation"], "delete");
        assert_eq!(d.payload["data"]["name"], "Ann");
        // Moved between organizations: gone from one, new in the other.
        let mut moved = client.clone();
        moved["organizationId"] = json!("org2");
        let out = r
            .route_drafts(&change(
                "clients",
                Operation::Update,
                Some(client),
                Some(moved),
            ))
            .unwrap();
        let seen: Vec<_> = out
            .iter()
            .map(|d| {
                (
                    d.organization_id.as_deref().unwrap(),
                    d.payload["operation"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(seen, [("org1", "delete"), ("org2", "create")]);
        let task = json!({"id": "t1", "organizationId": "org1", "status": "PENDING"});
        let d = one(&r, &change("tasks", Operation::Insert, None, Some(task)));
        assert_eq!(d.payload["entityType"], "task");
    }

    #[test]
    fn only_actor_fields_take_the_actor() {
        let r = router();
        let mut e = routed(
            &r,
            &change("properties", Operation::Insert, None, Some(property_row())),
        )
        .remove(0);
        assert_eq!(e.actor, Some("updatedBy"));
        e.set_actor("u9");
        assert_eq!(e.draft.payload["updatedBy"], "u9");
        let mut e = routed(
            &r,
            &change(
                "organization_members",
                Operation::Insert,
                None,
                Some(
                    json!({"id": "m1", "userId": "u1", "organizationId": "org1", "role": "AGENT"}),
                ),
            ),
        )
        .remove(0);
        e.set_actor("u9");
        assert_eq!(e.draft.payload["invitedBy"], "u9");
        let mut e = routed(
            &r,
            &change(
                "clients",
                Operation::Insert,
                None,
                Some(json!({"id": "c1", "organizationId": "o"})),
            ),
        )
        .remove(0);
        assert_eq!(e.actor, None);
        e.set_actor("u9");
        assert!(e.draft.payload.get("updatedBy").is_none());
    }

    // --- property ---

    #[test]
    fn property_insert_is_a_create_with_the_whole_row() {
        let d = one(
            &router(),
            &change("properties", Operation::Insert, None, Some(property_row())),
        );
        assert_eq!(d.event_type, EventType::PropertyUpdate);
        assert_eq!(d.source, Source::Postgres);
        assert_eq!(d.organization_id.as_deref(), Some("org1"));
        assert_eq!(d.user_id, None);
        assert_eq!(
            d.payload,
            json!({"propertyId": "p1", "organizationId": "org1", "operation": "create",
                   "changes": property_row(), "updatedBy": null})
        );
    }

    #[test]
    fn property_update_lists_only_changed_columns() {
        let old = property_row();
        let mut new = property_row();
        new["price"] = json!("120.00");
        new["description"] = json!("sunny"); // NULL → value
        // jsonb equal by value, built in another key order.
        new["features"] = json!({"rooms": [1, 2], "pool": true});
        let d = one(
            &router(),
            &change("properties", Operation::Update, Some(old), Some(new)),
        );
        assert_eq!(d.organization_id.as_deref(), Some("org1"));
        assert_eq!(
            d.payload,
            json!({"propertyId": "p1", "organizationId": "org1", "operation": "update",
                   "updatedFields": ["description", "price"],
                   "changes": {"description": "sunny", "price": "120.00"}, "updatedBy": null})
        );
    }

    #[test]
    fn value_to_null_and_jsonb_changes_are_changes() {
        let old = property_row();
        let mut new = property_row();
        new["bedrooms"] = Value::Null;
        new["features"] = json!({"pool": false, "rooms": [1, 2]});
        let d = one(
            &router(),
            &change("properties", Operation::Update, Some(old), Some(new)),
        );
        assert_eq!(d.payload["updatedFields"], json!(["bedrooms", "features"]));
        assert_eq!(
            d.payload["changes"],
            json!({"bedrooms": null, "features": {"pool": false, "rooms": [1, 2]}})
        );
    }

    #[test]
    fn toast_absent_column_is_unchanged() {
        let old = property_row();
        let mut new = row(property_row());
        new.remove("description");
        new.remove("features");
        new.insert("bedrooms".into(), json!(3));
        let c = RowChange {
            schema: "public",
            table: "properties",
            operation: Operation::Update,
            old: Some(row(old)),
            new: Some(new),
        };
        let d = one(&router(), &c);
        assert_eq!(d.payload["updatedFields"], json!(["bedrooms"]));
        assert_eq!(d.payload["changes"], json!({"bedrooms": 3}));
    }

    #[test]
    fn update_without_changes_still_produces_an_event() {
        let d = one(
            &router(),
            &change(
                "properties",
                Operation::Update,
                Some(property_row()),
                Some(property_row()),
            ),
        );
        assert_eq!(d.payload["operation"], "update");
        assert_eq!(d.payload["updatedFields"], json!([]));
        assert_eq!(d.payload["changes"], json!({}));
    }

    #[test]
    fn property_delete_carries_the_old_row() {
        let d = one(
            &router(),
            &change("properties", Operation::Delete, Some(property_row()), None),
        );
        assert_eq!(d.organization_id.as_deref(), Some("org1"));
        assert_eq!(
            d.payload,
            json!({"propertyId": "p1", "organizationId": "org1", "operation": "delete",
                   "changes": property_row(), "updatedBy": null})
        );
    }

    #[test]
    fn property_moved_to_another_org_leaves_the_old_and_enters_the_new() {
        let old = property_row();
        let mut new = property_row();
        new["organizationId"] = json!("org2");
        let drafts = router()
            .route_drafts(&change(
                "properties",
                Operation::Update,
                Some(old.clone()),
                Some(new.clone()),
            ))
            .unwrap();
        assert_eq!(drafts.len(), 2);
        assert_eq!(drafts[0].organization_id.as_deref(), Some("org1"));
        assert_eq!(
            drafts[0].payload,
            json!({"propertyId": "p1", "organizationId": "org1", "operation": "delete", "changes": old,
                   "updatedBy": null})
        );
        assert_eq!(drafts[1].organization_id.as_deref(), Some("org2"));
        assert_eq!(
            drafts[1].payload,
            json!({"propertyId": "p1", "organizationId": "org2", "operation": "create", "changes": new,
                   "updatedBy": null})
        );
    }

    #[test]
    fn updated_by_column_on_create_and_update_null_on_delete() {
        let r = router();
        let base = json!({"id": 7, "orgId": 42, "title": "a", "updatedBy": "u1"});
        let c = |op, old: Option<Value>, new: Option<Value>| RowChange {
            schema: "app",
            table: "listings",
            operation: op,
            old: old.map(row),
            new: new.map(row),
        };
        let d = one(&r, &c(Operation::Insert, None, Some(base.clone())));
        // An integer org id becomes its decimal string; propertyId stays as stored.
        assert_eq!(d.organization_id.as_deref(), Some("42"));
        assert_eq!(d.payload["organizationId"], "42");
        assert_eq!(d.payload["propertyId"], 7);
        assert_eq!(d.payload["updatedBy"], "u1");
        let mut new = base.clone();
        new["title"] = json!("b");
        new["updatedBy"] = json!("u2");
        let d = one(&r, &c(Operation::Update, Some(base.clone()), Some(new)));
        assert_eq!(d.payload["updatedBy"], "u2");
        assert_eq!(d.payload["updatedFields"], json!(["title", "updatedBy"]));
        // A delete's column names the row's last editor, not who deleted it.
        let d = one(&r, &c(Operation::Delete, Some(base.clone()), None));
        assert_eq!(d.payload["updatedBy"], Value::Null);
        let mut anonymous = base;
        anonymous["updatedBy"] = Value::Null;
        let d = one(&r, &c(Operation::Insert, None, Some(anonymous)));
        assert_eq!(d.payload["updatedBy"], Value::Null);
    }

    // --- organization id errors ---

    #[test]
    fn missing_or_null_org_is_an_error_not_a_broadcast() {
        let r = router();
        let mut no_org = row(property_row());
        no_org.remove("organizationId");
        let c = RowChange {
            schema: "public",
            table: "properties",
            operation: Operation::Insert,
            old: None,
            new: Some(no_org),
        };
        let err = r.route_drafts(&c).unwrap_err();
        assert_eq!(
            err,
            RouteError::MissingColumn {
                table: "public.properties".into(),
                column: "organizationId".into(),
                side: Side::New
            }
        );
        let mut null_org = property_row();
        null_org["organizationId"] = Value::Null;
        assert!(matches!(
            r.route_drafts(&change(
                "properties",
                Operation::Delete,
                Some(null_org),
                None
            )),
            Err(RouteError::MissingColumn {
                side: Side::Old,
                ..
            })
        ));
        for (bad, found) in [
            (json!(""), "an empty string"),
            (json!(1.5), "a non-integer number"),
            (json!({"a": 1}), "an object"),
        ] {
            let mut r0 = property_row();
            r0["organizationId"] = bad;
            let err = r
                .route_drafts(&change("properties", Operation::Insert, None, Some(r0)))
                .unwrap_err();
            assert!(
                matches!(err, RouteError::BadId { found: f, .. } if f == found),
                "{err}"
            );
        }
    }

    #[test]
    fn errors_never_quote_values() {
        let mut secret = property_row();
        secret["organizationId"] = json!({"secret": "s3cr3t"});
        let err = router()
            .route_drafts(&change("properties", Operation::Insert, None, Some(secret)))
            .unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    #[test]
    fn update_without_old_row_is_an_error() {
        let err = router()
            .route_drafts(&change(
                "properties",
                Operation::Update,
                None,
                Some(property_row()),
            ))
            .unwrap_err();
        assert!(
            matches!(
                err,
                RouteError::MissingRow {
                    side: Side::Old,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("REPLICA IDENTITY FULL"), "{err}");
    }

    #[test]
    fn unrouted_tables_produce_nothing() {
        let r = router();
        assert!(
            r.route_drafts(&change(
                "sessions",
                Operation::Insert,
                None,
                Some(json!({"id": "s"}))
            ))
            .unwrap()
            .is_empty()
        );
        let other_schema = RowChange {
            schema: "audit",
            table: "properties",
            operation: Operation::Insert,
            old: None,
            new: Some(row(property_row())),
        };
        assert!(r.route_drafts(&other_schema).unwrap().is_empty());
    }

    // --- membership ---

    fn member_row() -> Value {
        json!({"id": "m1", "userId": "u1", "organizationId": "org1", "role": "AGENT", "joined_at": "2024-01-01T00:00:00.000"})
    }

    #[test]
    fn membership_insert_update_delete() {
        let r = router();
        let d = one(
            &r,
            &change(
                "organization_members",
                Operation::Insert,
                None,
                Some(member_row()),
            ),
        );
        assert_eq!(d.event_type, EventType::MemberJoin);
        assert_eq!(d.organization_id.as_deref(), Some("org1"));
        assert_eq!(
            d.payload,
            json!({"memberId": "u1", "organizationId": "org1", "role": "AGENT", "invitedBy": null})
        );

        let mut new = member_row();
        new["role"] = json!("ADMIN");
        let d = one(
            &r,
            &change(
                "organization_members",
                Operation::Update,
                Some(member_row()),
                Some(new),
            ),
        );
        assert_eq!(d.event_type, EventType::MemberJoin);
        assert_eq!(
            d.payload,
            json!({"memberId": "u1", "organizationId": "org1", "role": "ADMIN", "invitedBy": null})
        );

        let d = one(
            &r,
            &change(
                "organization_members",
                Operation::Delete,
                Some(member_row()),
                None,
            ),
        );
        assert_eq!(d.event_type, EventType::MemberLeave);
        assert_eq!(d.organization_id.as_deref(), Some("org1"));
        assert_eq!(
            d.payload,
            json!({"memberId": "u1", "organizationId": "org1"})
        );
    }

    #[test]
    fn membership_moved_to_another_org_or_user_leaves_then_joins() {
        let r = router();
        for (column, value) in [("organizationId", "org2"), ("userId", "u2")] {
            let mut new = member_row();
            new[column] = json!(value);
            let drafts = r
                .route_drafts(&change(
                    "organization_members",
                    Operation::Update,
                    Some(member_row()),
                    Some(new),
                ))
                .unwrap();
            assert_eq!(drafts.len(), 2, "{column}");
            assert_eq!(drafts[0].event_type, EventType::MemberLeave);
            assert_eq!(
                drafts[0].payload,
                json!({"memberId": "u1", "organizationId": "org1"})
            );
            assert_eq!(drafts[1].event_type, EventType::MemberJoin);
            let org = if column == "organizationId" {
                "org2"
            } else {
                "org1"
            };
            let user = if column == "userId" { "u2" } else { "u1" };
            assert_eq!(drafts[1].organization_id.as_deref(), Some(org));
            assert_eq!(
                drafts[1].payload,
                json!({"memberId": user, "organizationId": org, "role": "AGENT", "invitedBy": null})
            );
        }
    }

    #[test]
    fn membership_join_without_user_is_an_error() {
        let mut bad = member_row();
        bad["userId"] = Value::Null;
        let err = router()
            .route_drafts(&change(
                "organization_members",
                Operation::Insert,
                None,
                Some(bad),
            ))
            .unwrap_err();
        assert!(
            matches!(err, RouteError::MissingColumn { ref column, .. } if column == "userId"),
            "{err}"
        );
    }

    fn assert_unknown_leave(d: &Draft) {
        assert_eq!(d.event_type, EventType::MemberLeave);
        assert_eq!(d.source, Source::Postgres);
        assert_eq!(d.organization_id, None, "a broadcast");
        assert_eq!(d.user_id, None);
        assert_eq!(
            d.payload,
            json!({"memberId": null, "organizationId": null, "reason": "unknown"})
        );
        assert!(is_unknown_member_leave(d));
    }

    #[test]
    fn membership_delete_without_its_old_row_is_a_broadcast_unknown_leave() {
        // REPLICA IDENTITY DEFAULT: the old row is the primary key only.
        let key_only = json!({"id": "m1"});
        let mut null_user = member_row();
        null_user["userId"] = Value::Null;
        let mut no_org = member_row();
        no_org.as_object_mut().unwrap().remove("organizationId");
        for old in [Some(key_only), Some(null_user), Some(no_org), None] {
            let d = one(
                &router(),
                &change("organization_members", Operation::Delete, old, None),
            );
            assert_unknown_leave(&d);
        }
    }

    #[test]
    fn membership_update_without_its_old_row_leaves_unknown_then_joins() {
        let mut new = member_row();
        new["userId"] = json!("u2");
        let drafts = router()
            .route_drafts(&change(
                "organization_members",
                Operation::Update,
                None,
                Some(new),
            ))
            .unwrap();
        assert_eq!(drafts.len(), 2, "{drafts:?}");
        assert_unknown_leave(&drafts[0]);
        assert_eq!(drafts[1].event_type, EventType::MemberJoin);
        assert_eq!(drafts[1].payload["memberId"], "u2");
        // Even when the new row cannot be read, the leave still goes out.
        let mut bad_new = member_row();
        bad_new["userId"] = Value::Null;
        let drafts = router()
            .route_drafts(&change(
                "organization_members",
                Operation::Update,
                Some(json!({"id": "m1"})),
                Some(bad_new),
            ))
            .unwrap();
        assert_eq!(drafts.len(), 1, "{drafts:?}");
        assert_unknown_leave(&drafts[0]);
    }

    #[test]
    fn a_routed_leave_is_not_an_unknown_leave() {
        let d = one(
            &router(),
            &change(
                "organization_members",
                Operation::Delete,
                Some(member_row()),
                None,
            ),
        );
        assert!(!is_unknown_member_leave(&d));
    }

    #[test]
    fn property_delete_without_its_org_stays_an_error() {
        let err = router()
            .route_drafts(&change(
                "properties",
                Operation::Delete,
                Some(json!({"id": "p1"})),
                None,
            ))
            .unwrap_err();
        assert!(
            matches!(
                err,
                RouteError::MissingColumn {
                    side: Side::Old,
                    ..
                }
            ),
            "{err}"
        );
    }

    // --- organization ---

    fn org_row() -> Value {
        json!({"id": "org1", "name": "Acme", "plan": "FREE", "isPersonal": false, "updated_at": "2024-01-01T00:00:00.000"})
    }

    #[test]
    fn organization_update_and_change_type() {
        let r = router();
        let mut new = org_row();
        new["name"] = json!("Acme Realty");
        new["updated_at"] = json!("2024-01-02T00:00:00.000");
        let d = one(
            &r,
            &change(
                "organizations",
                Operation::Update,
                Some(org_row()),
                Some(new),
            ),
        );
        assert_eq!(d.event_type, EventType::OrganizationChange);
        assert_eq!(d.organization_id.as_deref(), Some("org1"));
        assert_eq!(
            d.payload,
            json!({"organizationId": "org1", "changeType": "name", "updatedBy": null,
                   "changes": {"name": "Acme Realty", "updatedAt": "2024-01-02T00:00:00.000"}})
        );

        let mut new = org_row();
        new["name"] = json!("B");
        new["plan"] = json!("STARTER");
        let d = one(
            &r,
            &change(
                "organizations",
                Operation::Update,
                Some(org_row()),
                Some(new),
            ),
        );
        // Two change types at once: the default.
        assert_eq!(d.payload["changeType"], "settings");
        let mut new = org_row();
        new["plan"] = json!("STARTER");
        let d = one(
            &r,
            &change(
                "organizations",
                Operation::Update,
                Some(org_row()),
                Some(new),
            ),
        );
        assert_eq!(d.payload["changeType"], "billing");

        let mut new = org_row();
        new["isPersonal"] = json!(true);
        let d = one(
            &r,
            &change(
                "organizations",
                Operation::Update,
                Some(org_row()),
                Some(new),
            ),
        );
        assert_eq!(d.payload["changeType"], "settings");
        assert_eq!(d.payload["changes"], json!({"isPersonal": true}));
    }

    #[test]
    fn organization_insert_and_delete_produce_nothing() {
        let r = router();
        assert!(
            r.route_drafts(&change(
                "organizations",
                Operation::Insert,
                None,
                Some(org_row())
            ))
            .unwrap()
            .is_empty()
        );
        assert!(
            r.route_drafts(&change(
                "organizations",
                Operation::Delete,
                Some(org_row()),
                None
            ))
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn organization_id_change_informs_both_ids() {
        let mut new = org_row();
        new["id"] = json!("org9");
        let drafts = router()
            .route_drafts(&change(
                "organizations",
                Operation::Update,
                Some(org_row()),
                Some(new),
            ))
            .unwrap();
        let orgs: Vec<_> = drafts
            .iter()
            .map(|d| d.organization_id.as_deref())
            .collect();
        assert_eq!(orgs, [Some("org1"), Some("org9")]);
        assert_eq!(drafts[0].payload["changes"], json!({"id": "org9"}));
        assert_eq!(drafts[0].payload["organizationId"], "org1");
    }

    // --- activity ---

    fn activity_row() -> Value {
        json!({"id": "a1", "organizationId": "org1", "actorId": "u1", "actionType": "PROPERTY_CREATED",
               "entityType": "PROPERTY", "entityId": "p1", "payload": {"price": 1}, "created_at": "2024-01-01T00:00:00.000"})
    }

    #[test]
    fn activity_insert() {
        let d = one(
            &router(),
            &change("activities", Operation::Insert, None, Some(activity_row())),
        );
        assert_eq!(d.event_type, EventType::UserActivity);
        assert_eq!(d.organization_id.as_deref(), Some("org1"));
        assert_eq!(d.user_id, None);
        assert_eq!(
            d.payload,
            json!({"userId": "u1", "action": "PROPERTY_CREATED", "resource": "PROPERTY",
                   "resourceId": "p1", "metadata": {"price": 1}})
        );
        let mut sparse = activity_row();
        sparse["entityId"] = Value::Null;
        sparse["payload"] = Value::Null;
        sparse["actorId"] = Value::Null;
        let d = one(
            &router(),
            &change("activities", Operation::Insert, None, Some(sparse)),
        );
        assert_eq!(
            d.payload,
            json!({"userId": null, "action": "PROPERTY_CREATED", "resource": "PROPERTY", "metadata": null})
        );
    }

    #[test]
    fn activity_update_and_delete_produce_nothing() {
        let r = router();
        let up = change(
            "activities",
            Operation::Update,
            Some(activity_row()),
            Some(activity_row()),
        );
        assert!(r.route_drafts(&up).unwrap().is_empty());
        let del = change("activities", Operation::Delete, Some(activity_row()), None);
        assert!(r.route_drafts(&del).unwrap().is_empty());
    }

    // --- notification ---

    fn notification_row() -> Value {
        json!({"id": "n1", "organizationId": "org1", "userId": "u1", "title": "Hi", "message": "New lead",
               "priority": "high", "category": "lead", "metadata": {"leadId": "l1"}})
    }

    #[test]
    fn notification_insert_goes_to_its_user_only() {
        let d = one(
            &router(),
            &change(
                "notifications",
                Operation::Insert,
                None,
                Some(notification_row()),
            ),
        );
        assert_eq!(d.event_type, EventType::NotificationNew);
        assert_eq!(d.organization_id.as_deref(), Some("org1"));
        assert_eq!(d.user_id.as_deref(), Some("u1"));
        assert_eq!(
            d.payload,
            json!({"userId": "u1", "title": "Hi", "message": "New lead", "priority": "high",
                   "category": "lead", "metadata": {"leadId": "l1"}})
        );
        let mut plain = notification_row();
        plain["metadata"] = Value::Null;
        let d = one(
            &router(),
            &change("notifications", Operation::Insert, None, Some(plain)),
        );
        assert!(d.payload.get("metadata").is_none());
    }

    #[test]
    fn notification_without_user_is_an_error_and_updates_produce_nothing() {
        let r = router();
        let mut no_user = notification_row();
        no_user["userId"] = Value::Null;
        assert!(matches!(
            r.route_drafts(&change(
                "notifications",
                Operation::Insert,
                None,
                Some(no_user)
            )),
            Err(RouteError::MissingColumn { .. })
        ));
        let up = change(
            "notifications",
            Operation::Update,
            Some(notification_row()),
            Some(notification_row()),
        );
        assert!(r.route_drafts(&up).unwrap().is_empty());
        let del = change(
            "notifications",
            Operation::Delete,
            Some(notification_row()),
            None,
        );
        assert!(r.route_drafts(&del).unwrap().is_empty());
    }

    // --- truncate ---

    #[test]
    fn truncate_of_a_routed_table_is_a_data_sync_to_everyone() {
        let r = router();
        let d = r.route_truncate("public", "properties").unwrap();
        assert_eq!(d.event_type, EventType::DataSync);
        assert_eq!(d.source, Source::Postgres);
        assert_eq!(d.organization_id, None);
        assert_eq!(d.user_id, None);
        assert_eq!(
            d.payload,
            json!({"entityType": "properties", "operation": "truncate"})
        );
        assert!(r.route_truncate("public", "sessions").is_none());
    }

    // --- messages ---

    fn message(content: &str) -> Result<Option<Draft>, RouteError> {
        router().route_message("realtime", content.as_bytes())
    }

    fn message_error(content: &str) -> MessageError {
        match message(content) {
            Err(RouteError::Message(e)) => e,
            other => panic!("expected a message error, got {other:?}"),
        }
    }

    #[test]
    fn message_to_an_organization() {
        let d =
            message(r#"{"type":"user.activity","organizationId":"org1","payload":{"action":"x"}}"#)
                .unwrap()
                .unwrap();
        assert_eq!(
            d,
            Draft {
                event_type: EventType::UserActivity,
                source: Source::Api,
                organization_id: Some("org1".into()),
                user_id: None,
                payload: json!({"action": "x"}),
            }
        );
    }

    #[test]
    fn message_broadcast_and_user_targeted() {
        let d = message(r#"{"type":"system.alert","payload":{"message":"maintenance"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!((d.organization_id, d.user_id), (None, None));
        assert_eq!(d.event_type, EventType::SystemAlert);

        let d = message(r#"{"type":"notification.new","organizationId":"org1","userId":"u1","payload":{"title":"t"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(d.organization_id.as_deref(), Some("org1"));
        assert_eq!(d.user_id.as_deref(), Some("u1"));

        let d = message(r#"{"type":"notification.new","userId":"u1","payload":{}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            (d.organization_id, d.user_id.as_deref()),
            (None, Some("u1"))
        );
    }

    #[test]
    fn other_prefixes_are_ignored() {
        let r = router();
        assert_eq!(r.route_message("realtime-heartbeat", b"").unwrap(), None);
        assert_eq!(r.route_message("other-app", b"not json").unwrap(), None);
        assert_eq!(r.route_message("Realtime", b"{}").unwrap(), None);
    }

    #[test]
    fn bad_messages_are_refused() {
        assert!(matches!(message_error("{not json"), MessageError::Json(_)));
        assert!(matches!(message_error(""), MessageError::Json(_)));
        assert_eq!(message_error("[1]"), MessageError::NotObject);
        assert_eq!(
            message_error(r#"{"type":"nope","payload":{}}"#),
            MessageError::UnknownType("nope".into())
        );
        assert_eq!(
            message_error(r#"{"type":1,"payload":{}}"#),
            MessageError::NotString("type")
        );
        assert_eq!(
            message_error(r#"{"payload":{}}"#),
            MessageError::MissingField("type")
        );
        assert_eq!(
            message_error(r#"{"type":"system.alert"}"#),
            MessageError::MissingField("payload")
        );
        assert_eq!(
            message_error(r#"{"type":"system.alert","payload":"hi"}"#),
            MessageError::PayloadNotObject
        );
        assert_eq!(
            message_error(r#"{"type":"system.alert","payload":[1]}"#),
            MessageError::PayloadNotObject
        );
        // A misspelt organizationId must not become a broadcast.
        assert_eq!(
            message_error(r#"{"type":"system.alert","organizationID":"org1","payload":{}}"#),
            MessageError::UnknownField("organizationID".into())
        );
        assert_eq!(
            message_error(r#"{"type":"system.alert","organizationId":null,"payload":{}}"#),
            MessageError::NotString("organizationId")
        );
        assert_eq!(
            message_error(r#"{"type":"system.alert","organizationId":5,"payload":{}}"#),
            MessageError::NotString("organizationId")
        );
        assert_eq!(
            message_error(r#"{"type":"system.alert","userId":"","payload":{}}"#),
            MessageError::Empty("userId")
        );
        assert_eq!(
            message_error(r#"{"type":"notification.new","organizationId":"org1","payload":{}}"#),
            MessageError::NotificationWithoutUser
        );
    }

    #[test]
    fn message_errors_do_not_quote_values() {
        let e = message_error(
            r#"{"type":"system.alert","organizationId":{"secret":"s3cr3t"},"payload":{}}"#,
        );
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }
}
