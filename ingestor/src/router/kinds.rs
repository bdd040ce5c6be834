//! Each route kind's events: one row change read through its route
//! ([`Ctx`]) into [`Routed`] events.

use serde_json::{Map, Value, json};

use realtime_shared::event::{EventType, Source};

use super::{
    Draft, ParentKey, RouteError, Routed, Side, changed_columns, insert_non_null,
    unknown_member_leave, updated_fields,
};
use crate::change::{Operation, Row, RowChange};
use crate::routes::{
    ActivityRoute, MembershipRoute, NotificationRoute, OrgSource, OrganizationRoute, PropertyRoute,
    SyncRoute, TableRoute,
};

/// One change being routed by one route.
pub(super) struct Ctx<'c, 'a> {
    pub(super) route: &'c TableRoute,
    /// The table indexes of `route.parents()`, in the same order.
    pub(super) parents: &'c [usize],
    pub(super) change: &'c RowChange<'a>,
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
            v if crate::event_size::is_oversize(v) => {
                Err(bad("a value larger than REALTIME_MAX_EVENT_BYTES"))
            }
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
        // A copy of the map as it is (no lookup per column, no sort), then
        // the renamed columns it has moved to their field names. The row
        // and the renames are both in column order: one walk finds the
        // renamed columns present (usually none or one).
        let mut fields = row.clone();
        let mut present = Vec::new();
        let mut columns = row.keys().map(String::as_str).peekable();
        for (column, field) in self.route.renames() {
            while columns.next_if(|c| *c < column).is_some() {}
            if columns.peek() == Some(&column) {
                present.push((column, field));
            }
        }
        if !present.is_empty() {
            // All taken out first: a field named like another renamed
            // column is not lost.
            let moved: Vec<(String, Value)> = present
                .into_iter()
                .filter_map(|(column, field)| Some((field.to_owned(), fields.remove(column)?)))
                .collect();
            fields.extend(moved);
        }
        fields
    }

    /// Whether this update sets the archive column to the archive value.
    fn archives(&self, p: &PropertyRoute, old: &Row, new: &Row) -> bool {
        p.archive.as_ref().is_some_and(|a| {
            let is_archived =
                |row: &Row| row.get(&a.column).and_then(Value::as_str) == Some(&a.value);
            is_archived(new) && !is_archived(old)
        })
    }

    pub(super) fn property(&self, p: &PropertyRoute) -> Result<Vec<Routed>, RouteError> {
        if p.field.is_some() {
            return self.property_child(p);
        }
        let org_value = |t: &Target| t.org().map_or(Value::Null, Value::String);
        let updated_by = |row: Option<&Row>| updated_by(p, row);
        // A whole row as the property's creation (new row) or deletion
        // (old row; a deletion names no updater).
        let whole = |row: &Row, target: Target, side: Side| -> Result<Routed, RouteError> {
            let (operation, by) = match side {
                Side::New => ("create", updated_by(Some(row))),
                Side::Old => ("delete", updated_by(None)),
            };
            let payload = object([
                ("propertyId", self.value(row, &p.id_column, side)?.clone()),
                ("organizationId", org_value(&target)),
                ("operation", Value::from(operation)),
                ("changes", Value::Object(self.fields(row))),
                ("updatedBy", by),
            ]);
            Ok(self
                .draft(EventType::PropertyUpdate, target, payload)
                .with_actor("updatedBy"))
        };
        let create = |row: &Row, target: Target| whole(row, target, Side::New);
        let delete = |row: &Row, target: Target| whole(row, target, Side::Old);
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
                let payload = object([
                    (
                        "propertyId",
                        self.value(new, &p.id_column, Side::New)?.clone(),
                    ),
                    ("organizationId", org_value(&new_org)),
                    ("operation", Value::from(operation)),
                    ("updatedFields", updated_fields(&changes, None)),
                    ("changes", Value::Object(changes)),
                    ("updatedBy", updated_by(Some(new))),
                ]);
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
        let updated_by = |row: Option<&Row>| updated_by(p, row);
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
    pub(super) fn sync(&self, s: &SyncRoute) -> Result<Vec<Routed>, RouteError> {
        let event = |row: &Row,
                     side: Side,
                     target: Target,
                     operation: &str|
         -> Result<Routed, RouteError> {
            let payload = object([
                ("entityType", Value::from(s.entity_type.as_str())),
                ("entityId", self.value(row, &s.id_column, side)?.clone()),
                ("operation", Value::from(operation)),
                ("data", Value::Object(self.fields(row))),
            ]);
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

    pub(super) fn membership(&self, m: &MembershipRoute) -> Result<Vec<Routed>, RouteError> {
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
    pub(super) fn organization(&self, o: &OrganizationRoute) -> Result<Vec<Routed>, RouteError> {
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
            let payload = object([
                ("organizationId", Value::String(org.clone())),
                ("changeType", Value::from(change_type)),
                ("changes", Value::Object(changes.clone())),
                ("updatedBy", Value::Null),
            ]);
            self.draft(EventType::OrganizationChange, Target::Org(org), payload)
                .with_actor("updatedBy")
        };
        if old_org == new_org {
            Ok(vec![draft(new_org)])
        } else {
            Ok(vec![draft(old_org), draft(new_org)])
        }
    }

    pub(super) fn activity(&self, a: &ActivityRoute) -> Result<Vec<Routed>, RouteError> {
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
    pub(super) fn notification(&self, n: &NotificationRoute) -> Result<Vec<Routed>, RouteError> {
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

/// `updatedBy` without an actor: the configured `updated_by_column`'s value
/// on creates and updates (`row`); a deleted row's column would name its last
/// editor, not whoever deleted it, so a delete (`None`) has null.
fn updated_by(p: &PropertyRoute, row: Option<&Row>) -> Value {
    p.updated_by_column
        .as_deref()
        .zip(row)
        .and_then(|(c, row)| row.get(c))
        .cloned()
        .unwrap_or(Value::Null)
}

/// A JSON object of `entries`, their values moved in. `json!` serializes
/// every interpolated value into a new copy: for a row's `changes` that
/// copy was the largest single cost of routing a change in the drain's
/// profile.
fn object<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Object(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}
