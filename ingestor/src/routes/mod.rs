//! The routing config: which tables become which events (DESIGN §2, §6).
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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The built-in default: the Oikion schema of DESIGN §6.
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

/// The payload shape of a table (DESIGN §6), with the columns it reads.
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

// === errors ===

/// Why a routing config was refused. `Display` is the whole one-line message
/// (file, line, entry, key and cause), so callers print it as is.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("cannot read routing config {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// TOML syntax, a wrong value type, an unknown or missing key.
    #[error("routing config {origin}{}: {}", Position::suffix(position), error.message().trim_end())]
    Parse {
        origin: String,
        position: Option<Position>,
        /// Boxed: toml's error is large and this is a cold path.
        error: Box<toml::de::Error>,
    },
    /// Well-formed TOML that is not a usable routing config.
    #[error("routing config {origin}{}: {problem}", Position::suffix(position))]
    Invalid {
        origin: String,
        position: Option<Position>,
        /// Boxed: a cold path, kept off every `Result`'s size.
        problem: Box<Problem>,
    },
}

/// A 1-based line and column in the config text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    fn of(text: &str, offset: usize) -> Position {
        let before = text.get(..offset).unwrap_or(text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Position {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }

    fn suffix(position: &Option<Position>) -> String {
        position.map_or_else(String::new, |p| {
            format!(" line {}, column {}", p.line, p.column)
        })
    }
}

/// Which `[[tables]]` entry a problem is in: `[[tables]] #2 (public.properties)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based, in file order.
    pub number: usize,
    /// `schema.table`, or empty when the table name itself is the problem.
    pub name: String,
}

impl Entry {
    fn new(number: usize, schema: &str, table: &str) -> Entry {
        let name = if table.is_empty() {
            String::new()
        } else {
            format!("{schema}.{table}")
        };
        Entry { number, name }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[[tables]] #{}", self.number)?;
        if !self.name.is_empty() {
            write!(f, " ({})", self.name)?;
        }
        Ok(())
    }
}

const KINDS: &str = "property, membership, organization, activity, notification, sync";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("no [[tables]] entries: at least one table must be routed")]
    NoTables,
    #[error("{entry}: unknown kind {kind:?} (expected one of {KINDS})")]
    UnknownKind { entry: Entry, kind: String },
    #[error("{entry}: kind {kind} requires `{key}`")]
    Missing {
        entry: Entry,
        kind: &'static str,
        key: &'static str,
    },
    #[error("{entry}: `{key}` does not apply to kind {kind}")]
    NotApplicable {
        entry: Entry,
        kind: &'static str,
        key: &'static str,
    },
    #[error("{entry}: `{key}` {reason}")]
    BadName {
        entry: Entry,
        key: &'static str,
        reason: &'static str,
    },
    #[error("{entry}: the same table as entry #{first}; route a table once")]
    Duplicate { entry: Entry, first: usize },
    #[error("{entry}: set exactly one of `org_column` and `parent`")]
    OrgSource { entry: Entry },
    #[error("{entry}: parent {parent} {reason}")]
    BadParent {
        entry: Entry,
        parent: String,
        reason: &'static str,
    },
    #[error(
        "{entry}: `rename` maps {column:?} to the field name {field:?} that another column already has"
    )]
    RenameClash {
        entry: Entry,
        column: String,
        field: String,
    },
}

// === the file format ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Column → field renames applied to every table (Prisma `@map`).
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    tables: Vec<Spanned<RawTable>>,
}

/// One `[[tables]]` entry as written; every kind's keys, checked by `validate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
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
    fn validate(
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
fn check_parents(
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly on purpose
mod tests {
    use super::*;

    fn problem(toml: &str) -> Problem {
        match Routes::from_toml_str(toml) {
            Err(RoutesError::Invalid { problem, .. }) => *problem,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn oikion_default_routes_the_oikion_tables() {
        let routes = Routes::oikion_default();
        let names: Vec<_> = routes
            .tables()
            .iter()
            .map(|t| (t.table(), t.kind().name(), t.org_column()))
            .collect();
        assert_eq!(
            names,
            [
                ("properties", "property", Some("organizationId")),
                ("listings", "property", None),
                ("addresses", "property", None),
                ("media_assets", "property", None),
                ("organization_members", "membership", Some("organizationId")),
                ("organizations", "organization", Some("id")),
                ("activities", "activity", Some("organizationId")),
                ("clients", "sync", Some("organizationId")),
                ("tasks", "sync", Some("organizationId")),
                ("notes", "sync", None),
                ("interactions", "sync", None),
            ]
        );
        assert!(routes.tables().iter().all(|t| t.schema() == "public"));
        let listings = routes.find("public", "listings").unwrap();
        assert_eq!(
            listings.required_columns(),
            ["propertyId", "marketingStatus"]
        );
        assert_eq!(
            listings.parents(),
            [Parent {
                schema: "public".into(),
                table: "properties".into(),
                column: "propertyId".into()
            }]
        );
        let notes = routes.find("public", "notes").unwrap();
        assert_eq!(notes.required_columns(), ["clientId", "propertyId", "id"]);
        assert_eq!(notes.field_name("created_at"), "createdAt");
        assert_eq!(notes.field_name("content"), "content");
        let members = routes.find("public", "organization_members").unwrap();
        assert_eq!(
            members.required_columns(),
            ["organizationId", "userId", "role"]
        );
        let activities = routes.find("public", "activities").unwrap();
        assert_eq!(
            activities.required_columns(),
            [
                "organizationId",
                "actorId",
                "actionType",
                "entityType",
                "entityId",
                "payload"
            ]
        );
        assert_eq!(
            routes
                .find("public", "properties")
                .unwrap()
                .required_columns(),
            ["organizationId", "id"]
        );
        assert_eq!(
            routes
                .find("public", "organizations")
                .unwrap()
                .required_columns(),
            ["id"]
        );
        assert!(routes.find("other", "properties").is_none());
        assert!(routes.find("public", "sessions").is_none());
    }

    #[test]
    fn defaults_fill_omitted_options() {
        let routes = Routes::from_toml_str(
            r#"
            [[tables]]
            table = "notifications"
            kind = "notification"
            org_column = "orgId"
            user_column = "recipient"

            [[tables]]
            schema = "crm"
            table = "events"
            kind = "activity"
            org_column = "orgId"

            [[tables]]
            table = "orgs"
            kind = "organization"
            org_column = "id"

            [[tables]]
            table = "listings"
            kind = "property"
            org_column = "orgId"
            updated_by_column = "editor"
            "#,
        )
        .unwrap();
        let n = routes.find("public", "notifications").unwrap();
        assert_eq!(
            n.kind(),
            &RouteKind::Notification(NotificationRoute {
                user_column: "recipient".into(),
                title_column: "title".into(),
                message_column: "message".into(),
                priority_column: "priority".into(),
                category_column: "category".into(),
                metadata_column: "metadata".into(),
            })
        );
        assert_eq!(
            n.required_columns(),
            [
                "orgId",
                "recipient",
                "title",
                "message",
                "priority",
                "category",
                "metadata"
            ]
        );
        let a = routes.find("crm", "events").unwrap();
        assert_eq!(
            a.kind(),
            &RouteKind::Activity(ActivityRoute {
                actor_column: "actorId".into(),
                action_column: "actionType".into(),
                resource_column: "entityType".into(),
                resource_id_column: "entityId".into(),
                metadata_column: "payload".into(),
            })
        );
        assert_eq!(
            routes.find("public", "orgs").unwrap().kind(),
            &RouteKind::Organization(OrganizationRoute {
                change_types: BTreeMap::from([
                    ("name".into(), "name".into()),
                    ("plan".into(), "billing".into())
                ]),
                default_change_type: "settings".into(),
            })
        );
        let p = routes.find("public", "listings").unwrap();
        assert_eq!(p.required_columns(), ["orgId", "id", "editor"]);
    }

    #[test]
    fn required_columns_are_deduplicated() {
        let routes = Routes::from_toml_str(
            r#"
            [[tables]]
            table = "p"
            kind = "property"
            org_column = "id"
            "#,
        )
        .unwrap();
        assert_eq!(routes.tables()[0].required_columns(), ["id"]);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let err = Routes::from_toml_str(
            "[[tables]]\ntable = \"p\"\nkind = \"property\"\norg_column = \"o\"\norg_colum = \"x\"\n",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RoutesError::Parse { .. }), "{msg}");
        assert!(msg.contains("org_colum"), "{msg}");
        assert!(msg.contains("line 5, column 1"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");

        let err = Routes::from_toml_str("table = \"p\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `table`"), "{err}");
    }

    #[test]
    fn toml_syntax_errors_keep_line_and_column() {
        let err = Routes::from_toml_str("[[tables]]\ntable = \"p\nkind = 1\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("routing config <inline> line 2, column"),
            "{msg}"
        );
    }

    #[test]
    fn missing_table_or_kind_key_is_a_parse_error() {
        let err = Routes::from_toml_str("[[tables]]\nkind = \"property\"\norg_column = \"o\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("missing field `table`"), "{err}");
        let err =
            Routes::from_toml_str("[[tables]]\ntable = \"p\"\norg_column = \"o\"\n").unwrap_err();
        assert!(err.to_string().contains("missing field `kind`"), "{err}");
    }

    #[test]
    fn no_tables_is_refused() {
        assert_eq!(problem(""), Problem::NoTables);
        assert_eq!(problem("tables = []"), Problem::NoTables);
    }

    #[test]
    fn unknown_kind_is_refused() {
        let p = problem("[[tables]]\ntable = \"p\"\nkind = \"properties\"\norg_column = \"o\"\n");
        assert_eq!(
            p,
            Problem::UnknownKind {
                entry: Entry::new(1, "public", "p"),
                kind: "properties".into()
            }
        );
        assert!(
            p.to_string()
                .contains("expected one of property, membership")
        );
    }

    #[test]
    fn empty_and_quoted_names_are_refused() {
        let p = problem("[[tables]]\ntable = \"\"\nkind = \"property\"\norg_column = \"o\"\n");
        assert!(
            matches!(
                p,
                Problem::BadName {
                    key: "table",
                    reason: "must not be empty",
                    ..
                }
            ),
            "{p}"
        );
        assert_eq!(p.to_string(), "[[tables]] #1: `table` must not be empty");
        let p = problem(
            "[[tables]]\ntable = \"p\"\nkind = \"property\"\norg_column = \"o\"\nid_column = \"\"\n",
        );
        assert!(
            matches!(
                p,
                Problem::BadName {
                    key: "id_column",
                    ..
                }
            ),
            "{p}"
        );
        let p = problem(
            "[[tables]]\nschema = \"\"\ntable = \"p\"\nkind = \"property\"\norg_column = \"o\"\n",
        );
        assert!(matches!(p, Problem::BadName { key: "schema", .. }), "{p}");
        let p = problem(
            "[[tables]]\ntable = \"p\"\nkind = \"property\"\norg_column = '\"organizationId\"'\n",
        );
        assert!(
            matches!(
                p,
                Problem::BadName {
                    key: "org_column",
                    ..
                }
            ),
            "{p}"
        );
        let long = "x".repeat(64);
        let p = problem(&format!(
            "[[tables]]\ntable = \"{long}\"\nkind = \"property\"\norg_column = \"o\"\n"
        ));
        assert!(matches!(p, Problem::BadName { key: "table", .. }), "{p}");
        let p = problem(
            "[[tables]]\ntable = \"o\"\nkind = \"organization\"\norg_column = \"id\"\nchange_types = { \"\" = \"name\" }\n",
        );
        assert!(
            matches!(
                p,
                Problem::BadName {
                    key: "change_types",
                    ..
                }
            ),
            "{p}"
        );
    }

    #[test]
    fn duplicate_tables_are_refused() {
        let err = Routes::from_toml_str(
            r#"
[[tables]]
table = "p"
kind = "property"
org_column = "o"

[[tables]]
schema = "public"
table = "p"
kind = "activity"
org_column = "o"
"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "routing config <inline> line 7, column 1: [[tables]] #2 (public.p): \
             the same table as entry #1; route a table once"
        );
        // The same name in another schema is another table.
        Routes::from_toml_str(
            "[[tables]]\ntable = \"p\"\nkind = \"property\"\norg_column = \"o\"\n\
             [[tables]]\nschema = \"s\"\ntable = \"p\"\nkind = \"property\"\norg_column = \"o\"\n",
        )
        .unwrap();
    }

    #[test]
    fn missing_required_options_are_refused() {
        let p = problem("[[tables]]\ntable = \"p\"\nkind = \"property\"\n");
        assert_eq!(
            p.to_string(),
            "[[tables]] #1 (public.p): set exactly one of `org_column` and `parent`"
        );
        let p = problem("[[tables]]\ntable = \"a\"\nkind = \"activity\"\n");
        assert_eq!(
            p,
            Problem::Missing {
                entry: Entry::new(1, "public", "a"),
                kind: "activity",
                key: "org_column"
            }
        );
        let p = problem("[[tables]]\ntable = \"m\"\nkind = \"membership\"\norg_column = \"o\"\n");
        assert_eq!(
            p.to_string(),
            "[[tables]] #1 (public.m): kind membership requires `user_column`"
        );
        let p = problem("[[tables]]\ntable = \"n\"\nkind = \"notification\"\norg_column = \"o\"\n");
        assert!(
            matches!(
                p,
                Problem::Missing {
                    key: "user_column",
                    ..
                }
            ),
            "{p}"
        );
    }

    const PARENT: &str =
        "[[tables]]\ntable = \"properties\"\nkind = \"property\"\norg_column = \"org\"\n";

    #[test]
    fn parents_must_be_routed_tables_with_their_own_organization() {
        let ok = format!(
            "{PARENT}[[tables]]\ntable = \"listings\"\nkind = \"property\"\nfield = \"listing\"\n\
             parent = {{ table = \"properties\", column = \"propertyId\" }}\n"
        );
        let routes = Routes::from_toml_str(&ok).unwrap();
        assert_eq!(
            routes.find("public", "listings").unwrap().org_column(),
            None
        );

        let missing = "[[tables]]\ntable = \"listings\"\nkind = \"sync\"\n\
             parent = { table = \"properties\", column = \"propertyId\" }\n";
        assert_eq!(
            problem(missing).to_string(),
            "[[tables]] #1 (public.listings): parent public.properties is not a routed table of this file"
        );
        let chained = format!(
            "{ok}[[tables]]\ntable = \"notes\"\nkind = \"sync\"\n\
             parent = [{{ table = \"listings\", column = \"listingId\" }}]\n"
        );
        assert!(
            matches!(problem(&chained), Problem::BadParent { reason, .. } if reason.contains("has a parent itself")),
            "{}",
            problem(&chained)
        );
        let not_keyed = "[[tables]]\ntable = \"orgs\"\nkind = \"organization\"\norg_column = \"id\"\n\
             [[tables]]\ntable = \"x\"\nkind = \"sync\"\nparent = { table = \"orgs\", column = \"orgId\" }\n";
        assert!(matches!(problem(not_keyed), Problem::BadParent { .. }));
        let both = format!(
            "{PARENT}[[tables]]\ntable = \"l\"\nkind = \"sync\"\norg_column = \"o\"\n\
             parent = {{ table = \"properties\", column = \"p\" }}\n"
        );
        assert!(matches!(problem(&both), Problem::OrgSource { .. }));
        let no_field = format!(
            "{PARENT}[[tables]]\ntable = \"l\"\nkind = \"property\"\n\
             parent = {{ table = \"properties\", column = \"p\" }}\n"
        );
        assert!(matches!(
            problem(&no_field),
            Problem::Missing { key: "field", .. }
        ));
        let stray_field =
            "[[tables]]\ntable = \"p\"\nkind = \"property\"\norg_column = \"o\"\nfield = \"f\"\n";
        assert!(matches!(
            problem(stray_field),
            Problem::NotApplicable { key: "field", .. }
        ));
        let membership_parent = format!(
            "{PARENT}[[tables]]\ntable = \"m\"\nkind = \"membership\"\nuser_column = \"u\"\n\
             parent = {{ table = \"properties\", column = \"p\" }}\n"
        );
        assert!(matches!(
            problem(&membership_parent),
            Problem::NotApplicable { key: "parent", .. }
        ));
    }

    #[test]
    fn renames_merge_and_must_not_clash() {
        let routes = Routes::from_toml_str(
            "[rename]\ncreated_at = \"createdAt\"\n\
             [[tables]]\ntable = \"p\"\nkind = \"property\"\norg_column = \"o\"\n\
             rename = { updated_at = \"updatedAt\" }\n\
             [[tables]]\ntable = \"q\"\nkind = \"sync\"\norg_column = \"o\"\n",
        )
        .unwrap();
        let p = routes.find("public", "p").unwrap();
        assert_eq!(p.field_name("created_at"), "createdAt");
        assert_eq!(p.field_name("updated_at"), "updatedAt");
        let q = routes.find("public", "q").unwrap();
        assert_eq!(q.field_name("updated_at"), "updated_at");
        assert_eq!(q.field_name("created_at"), "createdAt");
        let clash = "[rename]\na = \"x\"\n[[tables]]\ntable = \"p\"\nkind = \"sync\"\norg_column = \"o\"\n\
             rename = { b = \"x\" }\n";
        assert!(
            matches!(problem(clash), Problem::RenameClash { .. }),
            "{}",
            problem(clash)
        );
    }

    #[test]
    fn keys_of_another_kind_are_refused() {
        let p = problem(
            "[[tables]]\ntable = \"p\"\nkind = \"property\"\norg_column = \"o\"\nuser_column = \"u\"\n",
        );
        assert_eq!(
            p.to_string(),
            "[[tables]] #1 (public.p): `user_column` does not apply to kind property"
        );
        let p = problem(
            "[[tables]]\ntable = \"a\"\nkind = \"activity\"\norg_column = \"o\"\ntitle_column = \"t\"\n",
        );
        assert!(
            matches!(
                p,
                Problem::NotApplicable {
                    key: "title_column",
                    ..
                }
            ),
            "{p}"
        );
        let p = problem(
            "[[tables]]\ntable = \"o\"\nkind = \"organization\"\norg_column = \"id\"\nid_column = \"id\"\n",
        );
        assert!(
            matches!(
                p,
                Problem::NotApplicable {
                    key: "id_column",
                    ..
                }
            ),
            "{p}"
        );
        let p = problem(
            "[[tables]]\ntable = \"n\"\nkind = \"notification\"\norg_column = \"o\"\nuser_column = \"u\"\nrole_column = \"r\"\n",
        );
        assert!(
            matches!(
                p,
                Problem::NotApplicable {
                    key: "role_column",
                    ..
                }
            ),
            "{p}"
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("routes-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("routes.toml");
        std::fs::write(
            &path,
            "[[tables]]\ntable = \"p\"\nkind = \"nope\"\norg_column = \"o\"\n",
        )
        .unwrap();
        let msg = Routes::load(&path).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!(
                "routing config {} line 1, column 1:",
                path.display()
            )),
            "{msg}"
        );
        std::fs::write(&path, OIKION_TOML).unwrap();
        assert_eq!(Routes::load(&path).unwrap(), Routes::oikion_default());
        std::fs::remove_dir_all(&dir).unwrap();

        let err = Routes::load(&dir.join("missing.toml")).unwrap_err();
        assert!(matches!(err, RoutesError::Read { .. }));
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }
}
