//! The routing config: which tables become which events (ARCHITECTURE.md §2, §6).
//!
//! A TOML file (`REALTIME_ROUTES`) of `[[tables]]` entries; the built-in
//! default is `ingestor/routes/oikion.toml`, embedded and parsed like any other
//! file, which also documents the format:
//!
//! ```toml
//! [[tables]]
//! table = "properties"            # schema = "public" is the default
//! kind = "property"               # property | membership | organization | activity | notification
//! org_column = "organizationId"   # required for every kind
//! id_column = "id"                # kind-specific column options, most with defaults
//! ```
//!
//! Everything is validated at parse time so that a bad file stops start-up
//! with one message naming the file, the line, the entry and the key, rather
//! than silently routing nothing: unknown keys, keys that do not apply to the
//! entry's kind, unknown kinds, empty or quoted names, a table listed twice, a
//! file without tables and a missing required option are all errors.

mod error;
mod file;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub use error::{Entry, Position, Problem, RoutesError};
use file::{RawConfig, check_parents};

/// The built-in default: the Oikion schema of ARCHITECTURE.md §6.
const OIKION_TOML: &str = include_str!("../../routes/oikion.toml");

/// The schema of an entry that names none.
pub const DEFAULT_SCHEMA: &str = "public";

/// Postgres truncates identifiers to `NAMEDATALEN - 1` bytes, so a longer
/// name could never match a relation or column.
const MAX_IDENTIFIER_LEN: usize = 63;

/// A validated routing config: at most one route per `(schema, table)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    tables: Vec<TableRoute>,
}

/// How one table's row changes become events.
///
/// Fields are private so that every `TableRoute` is a validated one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRoute {
    schema: String,
    table: String,
    org: OrgSource,
    kind: RouteKind,
    /// Column name → payload field name (Prisma `@map`), the file's
    /// top-level `[rename]` merged with the entry's own `rename`.
    rename: BTreeMap<String, String>,
}

/// Where a row's organization comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgSource {
    /// A column of the row itself (`org_column`).
    Column(String),
    /// The organization of a parent row (`parent`): the first of these
    /// whose column is not null in the row names the parent. Each parent is
    /// itself a routed table with an `org_column` (checked at parse time), so
    /// the ingestor sees every change of it in the stream.
    Parents(Vec<Parent>),
}

/// A parent table a child row takes its organization from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub schema: String,
    pub table: String,
    /// The child's column holding the parent's id (e.g. `propertyId`).
    pub column: String,
}

/// The payload shape of a table (ARCHITECTURE.md §6), with the columns it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKind {
    /// I/U/D → `property.update`.
    Property(PropertyRoute),
    /// I → `member.join`, U → `member.join` (new role), D → `member.leave`.
    Membership(MembershipRoute),
    /// U → `organization.change`; the org column is the organization's id.
    Organization(OrganizationRoute),
    /// I → `user.activity`.
    Activity(ActivityRoute),
    /// I → `notification.new`, to one user only.
    Notification(NotificationRoute),
    /// I/U/D → `data.sync {entityType, entityId, operation, data}`.
    Sync(SyncRoute),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyRoute {
    /// `propertyId`. Default `id`; a child route's `propertyId` is its
    /// parent column instead.
    pub id_column: String,
    /// `updatedBy` when the transaction named no actor; none by default.
    pub updated_by_column: Option<String>,
    /// A child route's payload field: its columns appear in `changes` under
    /// this name (`{"listing": {...}}`) and in `updatedFields` as
    /// `listing.<field>`. Required with `parent`, refused without.
    pub field: Option<String>,
    /// An update that sets this column to this value is `operation: "archive"`.
    pub archive: Option<Archive>,
}

/// `archive = { column = "marketingStatus", value = "ARCHIVED" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub column: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipRoute {
    /// `memberId`. Required.
    pub user_column: String,
    /// `role`. Default `role`.
    pub role_column: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganizationRoute {
    /// Column → `changeType`: when the changed columns map to exactly one
    /// change type, it is that one, otherwise `default_change_type`. Default
    /// `{name = "name", plan = "billing"}`. Only compared with the changed
    /// column names, never read, so the columns need not exist.
    pub change_types: BTreeMap<String, String>,
    /// Default `"settings"`.
    pub default_change_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRoute {
    /// `entityType`. Default: the table name.
    pub entity_type: String,
    /// `entityId`. Default `id`.
    pub id_column: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityRoute {
    /// `userId`. Default `actorId`.
    pub actor_column: String,
    /// `action`. Default `actionType`.
    pub action_column: String,
    /// `resource`. Default `entityType`.
    pub resource_column: String,
    /// `resourceId`, omitted when null. Default `entityId`.
    pub resource_id_column: String,
    /// `metadata`. Default `payload`.
    pub metadata_column: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRoute {
    /// The one user the notification is delivered to (`userId`). Required.
    pub user_column: String,
    /// Default `title`.
    pub title_column: String,
    /// Default `message`.
    pub message_column: String,
    /// Default `priority`.
    pub priority_column: String,
    /// Default `category`.
    pub category_column: String,
    /// `metadata`, omitted when null. Default `metadata`.
    pub metadata_column: String,
}

impl RouteKind {
    /// The name used for `kind` in the file.
    pub fn name(&self) -> &'static str {
        match self {
            RouteKind::Property(_) => "property",
            RouteKind::Membership(_) => "membership",
            RouteKind::Organization(_) => "organization",
            RouteKind::Activity(_) => "activity",
            RouteKind::Notification(_) => "notification",
            RouteKind::Sync(_) => "sync",
        }
    }
}

impl Routes {
    /// The built-in Oikion routes (`ingestor/routes/oikion.toml`).
    pub fn oikion_default() -> Routes {
        // The embedded file is a compile-time constant covered by the tests.
        Self::parse("built-in oikion.toml", OIKION_TOML)
            .expect("the built-in ingestor/routes/oikion.toml is a valid routing config")
    }

    /// Parses a routing config held in memory (errors say `<inline>` for the file).
    pub fn from_toml_str(s: &str) -> Result<Routes, RoutesError> {
        Self::parse("<inline>", s)
    }

    /// Reads and parses the routing config file at `path`.
    pub fn load(path: &Path) -> Result<Routes, RoutesError> {
        let text = std::fs::read_to_string(path).map_err(|error| RoutesError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// The route of `schema.table`, if it is routed. Names match exactly.
    pub fn find(&self, schema: &str, table: &str) -> Option<&TableRoute> {
        self.tables
            .iter()
            .find(|t| t.table == table && t.schema == schema)
    }

    /// Every route, in file order.
    pub fn tables(&self) -> &[TableRoute] {
        &self.tables
    }

    fn parse(origin: &str, text: &str) -> Result<Routes, RoutesError> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| RoutesError::Parse {
            origin: origin.to_owned(),
            position: error.span().map(|span| Position::of(text, span.start)),
            error: Box::new(error),
        })?;
        let invalid = |position: Option<Position>, problem: Problem| RoutesError::Invalid {
            origin: origin.to_owned(),
            position,
            problem: Box::new(problem),
        };
        if raw.tables.is_empty() {
            return Err(invalid(None, Problem::NoTables));
        }
        let mut tables = Vec::with_capacity(raw.tables.len());
        let mut entries = Vec::with_capacity(raw.tables.len());
        // (schema, table) → 1-based entry number, to name both duplicates.
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        for (i, entry) in raw.tables.into_iter().enumerate() {
            let position = Some(Position::of(text, entry.span().start));
            let entry_no = i + 1;
            let route = entry
                .into_inner()
                .validate(entry_no, &raw.rename)
                .map_err(|p| invalid(position, p))?;
            let key = (route.schema.clone(), route.table.clone());
            if let Some(&first) = seen.get(&key) {
                return Err(invalid(
                    position,
                    Problem::Duplicate {
                        entry: Entry::new(entry_no, &route.schema, &route.table),
                        first,
                    },
                ));
            }
            seen.insert(key, entry_no);
            tables.push(route);
            entries.push((entry_no, position));
        }
        check_parents(&tables, &entries).map_err(|(position, p)| invalid(position, p))?;
        Ok(Routes { tables })
    }
}

impl TableRoute {
    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The column holding the organization id every event is addressed to;
    /// `None` for a child route, whose organization is its parent's.
    pub fn org_column(&self) -> Option<&str> {
        match &self.org {
            OrgSource::Column(c) => Some(c),
            OrgSource::Parents(_) => None,
        }
    }

    /// A child route's parents, in the order they are tried; empty when the
    /// route has its own `org_column`.
    pub fn parents(&self) -> &[Parent] {
        match &self.org {
            OrgSource::Column(_) => &[],
            OrgSource::Parents(p) => p,
        }
    }

    pub fn org_source(&self) -> &OrgSource {
        &self.org
    }

    pub fn kind(&self) -> &RouteKind {
        &self.kind
    }

    /// The column naming a row of this table when another route uses it as
    /// its parent: the `id_column` of a property or sync route.
    pub fn key_column(&self) -> Option<&str> {
        match &self.kind {
            RouteKind::Property(p) if self.parents().is_empty() => Some(&p.id_column),
            RouteKind::Sync(s) => Some(&s.id_column),
            _ => None,
        }
    }

    /// The payload field name of `column`: its `rename`, else itself.
    pub fn field_name<'c>(&'c self, column: &'c str) -> &'c str {
        self.rename.get(column).map_or(column, String::as_str)
    }

    /// The columns with a payload field name of their own (`rename`), and
    /// that name.
    pub fn renames(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rename.iter().map(|(c, f)| (c.as_str(), f.as_str()))
    }

    /// Every column this route reads, org column (or parent columns) first,
    /// without duplicates: the ingestor checks at start that the table has
    /// all of them.
    pub fn required_columns(&self) -> Vec<&str> {
        let mut cols: Vec<&str> = match &self.org {
            OrgSource::Column(c) => vec![c],
            OrgSource::Parents(parents) => parents.iter().map(|p| p.column.as_str()).collect(),
        };
        match &self.kind {
            RouteKind::Property(p) => {
                if self.parents().is_empty() {
                    cols.push(&p.id_column);
                }
                cols.extend(p.updated_by_column.as_deref());
                cols.extend(p.archive.as_ref().map(|a| a.column.as_str()));
            }
            RouteKind::Membership(m) => cols.extend([&*m.user_column, &m.role_column]),
            RouteKind::Organization(_) => {}
            RouteKind::Activity(a) => cols.extend([
                &*a.actor_column,
                &a.action_column,
                &a.resource_column,
                &a.resource_id_column,
                &a.metadata_column,
            ]),
            RouteKind::Notification(n) => cols.extend([
                &*n.user_column,
                &n.title_column,
                &n.message_column,
                &n.priority_column,
                &n.category_column,
                &n.metadata_column,
            ]),
            RouteKind::Sync(s) => cols.push(&s.id_column),
        }
        let mut unique = Vec::with_capacity(cols.len());
        for c in cols {
            if !unique.contains(&c) {
                unique.push(c);
            }
        }
        unique
    }
}
