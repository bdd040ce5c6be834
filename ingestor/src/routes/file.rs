//! The file format as written (`RawConfig`, `RawTable`) and its validation
//! into [`TableRoute`]s: every key checked against its kind, every name
//! against Postgres's rules, every parent against the other entries.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use toml::Spanned;

use super::error::{Entry, Position, Problem};
use super::{
    ActivityRoute, Archive, DEFAULT_SCHEMA, MAX_IDENTIFIER_LEN, MembershipRoute, NotificationRoute,
    OrgSource, OrganizationRoute, Parent, PropertyRoute, RouteKind, SyncRoute, TableRoute,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// Column → field renames applied to every table (Prisma `@map`).
    #[serde(default)]
    pub(super) rename: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) tables: Vec<Spanned<RawTable>>,
}

/// One `[[tables]]` entry as written; every kind's keys, checked by `validate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTable {
    schema: Option<String>,
    table: String,
    kind: String,
    org_column: Option<String>,
    parent: Option<OneOrMany<RawParent>>,
    rename: Option<BTreeMap<String, String>>,
    // property, sync
    id_column: Option<String>,
    // property
    updated_by_column: Option<String>,
    field: Option<String>,
    archive: Option<RawArchive>,
    // membership, notification
    user_column: Option<String>,
    // membership
    role_column: Option<String>,
    // organization
    change_types: Option<BTreeMap<String, String>>,
    default_change_type: Option<String>,
    // activity
    actor_column: Option<String>,
    action_column: Option<String>,
    resource_column: Option<String>,
    resource_id_column: Option<String>,
    // activity, notification
    metadata_column: Option<String>,
    // notification
    title_column: Option<String>,
    message_column: Option<String>,
    priority_column: Option<String>,
    category_column: Option<String>,
    // sync
    entity_type: Option<String>,
}

/// `parent = {…}` or `parent = [{…}, {…}]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParent {
    schema: Option<String>,
    table: String,
    column: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArchive {
    column: String,
    value: String,
}

/// Validates names and kind-specific keys of one entry.
struct Checker {
    entry: Entry,
    kind: &'static str,
}

impl Checker {
    fn name(&self, key: &'static str, value: &str) -> Result<(), Problem> {
        let reason = if value.is_empty() {
            Some("must not be empty")
        } else if value.len() > MAX_IDENTIFIER_LEN {
            Some("is longer than Postgres's 63-byte identifier limit")
        } else if value.contains('\0') {
            Some("must not contain NUL")
        } else if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
            Some("must be written without SQL quotes (the identifier itself)")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Problem::BadName {
                entry: self.entry.clone(),
                key,
                reason,
            }),
            None => Ok(()),
        }
    }

    /// An optional column option with a default.
    fn column(
        &self,
        key: &'static str,
        value: Option<String>,
        default: &str,
    ) -> Result<String, Problem> {
        let value = value.unwrap_or_else(|| default.to_owned());
        self.name(key, &value)?;
        Ok(value)
    }

    /// A column option without a default.
    fn required(&self, key: &'static str, value: Option<String>) -> Result<String, Problem> {
        let value = value.ok_or_else(|| Problem::Missing {
            entry: self.entry.clone(),
            kind: self.kind,
            key,
        })?;
        self.name(key, &value)?;
        Ok(value)
    }

    /// Refuses a key that was set but means nothing for this kind: it is
    /// almost always a typo or a kind mix-up, and ignoring it would route
    /// something else than the author intended.
    fn only_for(&self, keys: &[(&'static str, bool)], kinds: &[&str]) -> Result<(), Problem> {
        if kinds.contains(&self.kind) {
            return Ok(());
        }
        match keys.iter().find(|(_, set)| *set) {
            Some((key, _)) => Err(Problem::NotApplicable {
                entry: self.entry.clone(),
                kind: self.kind,
                key,
            }),
            None => Ok(()),
        }
    }

    /// Names in a `rename` map: both sides non-empty, and no two columns
    /// ending up with the same field name.
    fn rename(&self, map: &BTreeMap<String, String>) -> Result<(), Problem> {
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for (column, field) in map {
            self.name("rename", column)?;
            self.name("rename", field)?;
            if fields.insert(field, column).is_some() {
                return Err(Problem::RenameClash {
                    entry: self.entry.clone(),
                    column: column.clone(),
                    field: field.clone(),
                });
            }
        }
        Ok(())
    }
}

impl RawTable {
    pub(super) fn validate(
        self,
        number: usize,
        global_rename: &BTreeMap<String, String>,
    ) -> Result<TableRoute, Problem> {
        let schema = self.schema.unwrap_or_else(|| DEFAULT_SCHEMA.to_owned());
        let kind: &'static str = match self.kind.as_str() {
            "property" => "property",
            "membership" => "membership",
            "organization" => "organization",
            "activity" => "activity",
            "notification" => "notification",
            "sync" => "sync",
            _ => {
                return Err(Problem::UnknownKind {
                    entry: Entry::new(number, &schema, &self.table),
                    kind: self.kind,
                });
            }
        };
        let c = Checker {
            entry: Entry::new(number, &schema, &self.table),
            kind,
        };
        c.name("table", &self.table)?;
        c.name("schema", &schema)?;

        let set = |key: &'static str, v: bool| (key, v);
        c.only_for(
            &[set("id_column", self.id_column.is_some())],
            &["property", "sync"],
        )?;
        c.only_for(
            &[set("parent", self.parent.is_some())],
            &["property", "sync"],
        )?;
        c.only_for(
            &[
                set("updated_by_column", self.updated_by_column.is_some()),
                set("field", self.field.is_some()),
                set("archive", self.archive.is_some()),
            ],
            &["property"],
        )?;
        c.only_for(
            &[set("user_column", self.user_column.is_some())],
            &["membership", "notification"],
        )?;
        c.only_for(
            &[set("role_column", self.role_column.is_some())],
            &["membership"],
        )?;
        c.only_for(
            &[
                set("change_types", self.change_types.is_some()),
                set("default_change_type", self.default_change_type.is_some()),
            ],
            &["organization"],
        )?;
        c.only_for(
            &[
                set("actor_column", self.actor_column.is_some()),
                set("action_column", self.action_column.is_some()),
                set("resource_column", self.resource_column.is_some()),
                set("resource_id_column", self.resource_id_column.is_some()),
            ],
            &["activity"],
        )?;
        c.only_for(
            &[set("metadata_column", self.metadata_column.is_some())],
            &["activity", "notification"],
        )?;
        c.only_for(
            &[
                set("title_column", self.title_column.is_some()),
                set("message_column", self.message_column.is_some()),
                set("priority_column", self.priority_column.is_some()),
                set("category_column", self.category_column.is_some()),
            ],
            &["notification"],
        )?;
        c.only_for(&[set("entity_type", self.entity_type.is_some())], &["sync"])?;

        let org = match (self.org_column, self.parent) {
            (Some(column), None) => {
                c.name("org_column", &column)?;
                OrgSource::Column(column)
            }
            (None, Some(parent)) => {
                let raw = match parent {
                    OneOrMany::One(p) => vec![p],
                    OneOrMany::Many(ps) => ps,
                };
                if raw.is_empty() {
                    return Err(Problem::Missing {
                        entry: c.entry.clone(),
                        kind,
                        key: "parent",
                    });
                }
                let mut parents = Vec::with_capacity(raw.len());
                for p in raw {
                    let p = Parent {
                        schema: p.schema.unwrap_or_else(|| DEFAULT_SCHEMA.to_owned()),
                        table: p.table,
                        column: p.column,
                    };
                    c.name("parent", &p.schema)?;
                    c.name("parent", &p.table)?;
                    c.name("parent", &p.column)?;
                    parents.push(p);
                }
                OrgSource::Parents(parents)
            }
            (None, None) if kind == "property" || kind == "sync" => {
                return Err(Problem::OrgSource { entry: c.entry });
            }
            (None, None) => {
                return Err(Problem::Missing {
                    entry: c.entry,
                    kind,
                    key: "org_column",
                });
            }
            (Some(_), Some(_)) => return Err(Problem::OrgSource { entry: c.entry }),
        };
        let child = matches!(org, OrgSource::Parents(_));

        let mut rename = global_rename.clone();
        if let Some(own) = self.rename {
            rename.extend(own);
        }
        c.rename(&rename)?;

        let kind = match kind {
            "property" => {
                if child && self.id_column.is_some() {
                    return Err(Problem::NotApplicable {
                        entry: c.entry,
                        kind: "property with a parent (its propertyId is the parent column)",
                        key: "id_column",
                    });
                }
                let field = match (child, self.field) {
                    (true, Some(f)) => {
                        c.name("field", &f)?;
                        Some(f)
                    }
                    (true, None) => {
                        return Err(Problem::Missing {
                            entry: c.entry,
                            kind: "property with a parent",
                            key: "field",
                        });
                    }
                    (false, Some(_)) => {
                        return Err(Problem::NotApplicable {
                            entry: c.entry,
                            kind: "property without a parent",
                            key: "field",
                        });
                    }
                    (false, None) => None,
                };
                let updated_by_column = self.updated_by_column;
                if let Some(col) = &updated_by_column {
                    c.name("updated_by_column", col)?;
                }
                let archive = match self.archive {
                    Some(a) => {
                        c.name("archive", &a.column)?;
                        Some(Archive {
                            column: a.column,
                            value: a.value,
                        })
                    }
                    None => None,
                };
                RouteKind::Property(PropertyRoute {
                    id_column: c.column("id_column", self.id_column, "id")?,
                    updated_by_column,
                    field,
                    archive,
                })
            }
            "membership" => RouteKind::Membership(MembershipRoute {
                user_column: c.required("user_column", self.user_column)?,
                role_column: c.column("role_column", self.role_column, "role")?,
            }),
            "organization" => {
                let change_types = self.change_types.unwrap_or_else(|| {
                    BTreeMap::from([
                        ("name".to_owned(), "name".to_owned()),
                        ("plan".to_owned(), "billing".to_owned()),
                    ])
                });
                for (column, change_type) in &change_types {
                    c.name("change_types", column)?;
                    c.name("change_types", change_type)?;
                }
                let default_change_type = self
                    .default_change_type
                    .unwrap_or_else(|| "settings".to_owned());
                c.name("default_change_type", &default_change_type)?;
                RouteKind::Organization(OrganizationRoute {
                    change_types,
                    default_change_type,
                })
            }
            "activity" => RouteKind::Activity(ActivityRoute {
                actor_column: c.column("actor_column", self.actor_column, "actorId")?,
                action_column: c.column("action_column", self.action_column, "actionType")?,
                resource_column: c.column("resource_column", self.resource_column, "entityType")?,
                resource_id_column: c.column(
                    "resource_id_column",
                    self.resource_id_column,
                    "entityId",
                )?,
                metadata_column: c.column("metadata_column", self.metadata_column, "payload")?,
            }),
            "notification" => RouteKind::Notification(NotificationRoute {
                user_column: c.required("user_column", self.user_column)?,
                title_column: c.column("title_column", self.title_column, "title")?,
                message_column: c.column("message_column", self.message_column, "message")?,
                priority_column: c.column("priority_column", self.priority_column, "priority")?,
                category_column: c.column("category_column", self.category_column, "category")?,
                metadata_column: c.column("metadata_column", self.metadata_column, "metadata")?,
            }),
            _ => {
                let entity_type = self.entity_type.unwrap_or_else(|| self.table.clone());
                c.name("entity_type", &entity_type)?;
                RouteKind::Sync(SyncRoute {
                    entity_type,
                    id_column: c.column("id_column", self.id_column, "id")?,
                })
            }
        };
        Ok(TableRoute {
            schema,
            table: self.table,
            org,
            kind,
            rename,
        })
    }
}

/// Every parent must be another entry of the file that has its own
/// `org_column` and an id column (a property or sync route): the ingestor
/// then sees each parent change in the stream and knows which column of the
/// parent names it and which holds its organization.
pub(super) fn check_parents(
    tables: &[TableRoute],
    entries: &[(usize, Option<Position>)],
) -> Result<(), (Option<Position>, Problem)> {
    for (route, (number, position)) in tables.iter().zip(entries) {
        for parent in route.parents() {
            let name = format!("{}.{}", parent.schema, parent.table);
            let bad = |reason| {
                (
                    *position,
                    Problem::BadParent {
                        entry: Entry::new(*number, &route.schema, &route.table),
                        parent: name.clone(),
                        reason,
                    },
                )
            };
            let Some(target) = tables
                .iter()
                .find(|t| t.schema == parent.schema && t.table == parent.table)
            else {
                return Err(bad("is not a routed table of this file"));
            };
            if target.org_column().is_none() {
                return Err(bad(
                    "has a parent itself; a parent needs its own org_column",
                ));
            }
            if target.key_column().is_none() {
                return Err(bad("is not a property or sync route (it has no id_column)"));
            }
        }
    }
    Ok(())
}
