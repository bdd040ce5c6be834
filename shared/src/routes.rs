//! The routing config: which tables become which events (DESIGN §2, §6).
//!
//! A TOML file (`REALTIME_ROUTES`) of `[[tables]]` entries; the built-in
//! default is `shared/routes/oikion.toml`, embedded and parsed like any other
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

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The built-in default: the Oikion schema of DESIGN §6.
const OIKION_TOML: &str = include_str!("../routes/oikion.toml");

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
    org_column: String,
    kind: RouteKind,
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyRoute {
    /// `propertyId`. Default `id`.
    pub id_column: String,
    /// `updatedBy` on create/update events; none by default.
    pub updated_by_column: Option<String>,
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
    /// When exactly one of these columns changed, `changeType` is its name,
    /// otherwise `"update"`. Default `["name", "plan", "settings"]`. They are
    /// only compared with the changed column names, never read, so they need
    /// not exist in the table.
    pub change_type_columns: Vec<String>,
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
        }
    }
}

impl Routes {
    /// The built-in Oikion routes (`shared/routes/oikion.toml`).
    pub fn oikion_default() -> Routes {
        // The embedded file is a compile-time constant covered by the tests.
        Self::parse("built-in oikion.toml", OIKION_TOML)
            .expect("the built-in shared/routes/oikion.toml is a valid routing config")
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
            problem,
        };
        if raw.tables.is_empty() {
            return Err(invalid(None, Problem::NoTables));
        }
        let mut tables = Vec::with_capacity(raw.tables.len());
        // (schema, table) → 1-based entry number, to name both duplicates.
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        for (i, entry) in raw.tables.into_iter().enumerate() {
            let position = Some(Position::of(text, entry.span().start));
            let entry_no = i + 1;
            let route = entry
                .into_inner()
                .validate(entry_no)
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
        }
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

    /// The column holding the organization id every event is addressed to.
    pub fn org_column(&self) -> &str {
        &self.org_column
    }

    pub fn kind(&self) -> &RouteKind {
        &self.kind
    }

    /// Every column this route reads, org column first, without duplicates:
    /// the ingestor checks at start that the table has all of them.
    pub fn required_columns(&self) -> Vec<&str> {
        let mut cols: Vec<&str> = vec![&self.org_column];
        match &self.kind {
            RouteKind::Property(p) => {
                cols.push(&p.id_column);
                cols.extend(p.updated_by_column.as_deref());
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
        problem: Problem,
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

const KINDS: &str = "property, membership, organization, activity, notification";

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
}

// === the file format ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
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
    // property
    id_column: Option<String>,
    updated_by_column: Option<String>,
    // membership, notification
    user_column: Option<String>,
    // membership
    role_column: Option<String>,
    // organization
    change_type_columns: Option<Vec<String>>,
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
    fn not_applicable(&self, keys: &[(&'static str, bool)]) -> Result<(), Problem> {
        match keys.iter().find(|(_, set)| *set) {
            Some((key, _)) => Err(Problem::NotApplicable {
                entry: self.entry.clone(),
                kind: self.kind,
                key,
            }),
            None => Ok(()),
        }
    }
}

impl RawTable {
    fn validate(self, number: usize) -> Result<TableRoute, Problem> {
        let schema = self.schema.unwrap_or_else(|| DEFAULT_SCHEMA.to_owned());
        let kind: &'static str = match self.kind.as_str() {
            "property" => "property",
            "membership" => "membership",
            "organization" => "organization",
            "activity" => "activity",
            "notification" => "notification",
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
        let org_column = c.required("org_column", self.org_column)?;

        let set = |key: &'static str, v: &Option<String>| (key, v.is_some());
        let property_keys = [
            set("id_column", &self.id_column),
            set("updated_by_column", &self.updated_by_column),
        ];
        let activity_keys = [
            set("actor_column", &self.actor_column),
            set("action_column", &self.action_column),
            set("resource_column", &self.resource_column),
            set("resource_id_column", &self.resource_id_column),
        ];
        let notification_keys = [
            set("title_column", &self.title_column),
            set("message_column", &self.message_column),
            set("priority_column", &self.priority_column),
            set("category_column", &self.category_column),
        ];
        let user = set("user_column", &self.user_column);
        let role = set("role_column", &self.role_column);
        let metadata = set("metadata_column", &self.metadata_column);
        let change_type = ("change_type_columns", self.change_type_columns.is_some());

        let kind = match kind {
            "property" => {
                c.not_applicable(&[user, role, metadata, change_type])?;
                c.not_applicable(&activity_keys)?;
                c.not_applicable(&notification_keys)?;
                let updated_by_column = self.updated_by_column;
                if let Some(col) = &updated_by_column {
                    c.name("updated_by_column", col)?;
                }
                RouteKind::Property(PropertyRoute {
                    id_column: c.column("id_column", self.id_column, "id")?,
                    updated_by_column,
                })
            }
            "membership" => {
                c.not_applicable(&property_keys)?;
                c.not_applicable(&[metadata, change_type])?;
                c.not_applicable(&activity_keys)?;
                c.not_applicable(&notification_keys)?;
                RouteKind::Membership(MembershipRoute {
                    user_column: c.required("user_column", self.user_column)?,
                    role_column: c.column("role_column", self.role_column, "role")?,
                })
            }
            "organization" => {
                c.not_applicable(&property_keys)?;
                c.not_applicable(&[user, role, metadata])?;
                c.not_applicable(&activity_keys)?;
                c.not_applicable(&notification_keys)?;
                let change_type_columns = match self.change_type_columns {
                    Some(cols) => cols,
                    None => vec!["name".into(), "plan".into(), "settings".into()],
                };
                for col in &change_type_columns {
                    c.name("change_type_columns", col)?;
                }
                RouteKind::Organization(OrganizationRoute {
                    change_type_columns,
                })
            }
            "activity" => {
                c.not_applicable(&property_keys)?;
                c.not_applicable(&[user, role, change_type])?;
                c.not_applicable(&notification_keys)?;
                RouteKind::Activity(ActivityRoute {
                    actor_column: c.column("actor_column", self.actor_column, "actorId")?,
                    action_column: c.column("action_column", self.action_column, "actionType")?,
                    resource_column: c.column(
                        "resource_column",
                        self.resource_column,
                        "entityType",
                    )?,
                    resource_id_column: c.column(
                        "resource_id_column",
                        self.resource_id_column,
                        "entityId",
                    )?,
                    metadata_column: c.column(
                        "metadata_column",
                        self.metadata_column,
                        "payload",
                    )?,
                })
            }
            _ => {
                c.not_applicable(&property_keys)?;
                c.not_applicable(&[role, change_type])?;
                c.not_applicable(&activity_keys)?;
                RouteKind::Notification(NotificationRoute {
                    user_column: c.required("user_column", self.user_column)?,
                    title_column: c.column("title_column", self.title_column, "title")?,
                    message_column: c.column("message_column", self.message_column, "message")?,
                    priority_column: c.column(
                        "priority_column",
                        self.priority_column,
                        "priority",
                    )?,
                    category_column: c.column(
                        "category_column",
                        self.category_column,
                        "category",
                    )?,
                    metadata_column: c.column(
                        "metadata_column",
                        self.metadata_column,
                        "metadata",
                    )?,
                })
            }
        };
        Ok(TableRoute {
            schema,
            table: self.table,
            org_column,
            kind,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly on purpose
mod tests {
    use super::*;

    fn problem(toml: &str) -> Problem {
        match Routes::from_toml_str(toml) {
            Err(RoutesError::Invalid { problem, .. }) => problem,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn oikion_default_routes_the_four_oikion_tables() {
        let routes = Routes::oikion_default();
        let names: Vec<_> = routes
            .tables()
            .iter()
            .map(|t| (t.schema(), t.table(), t.kind().name(), t.org_column()))
            .collect();
        assert_eq!(
            names,
            [
                ("public", "properties", "property", "organizationId"),
                (
                    "public",
                    "organization_members",
                    "membership",
                    "organizationId"
                ),
                ("public", "organizations", "organization", "id"),
                ("public", "activities", "activity", "organizationId"),
            ]
        );
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
                change_type_columns: vec!["name".into(), "plan".into(), "settings".into()],
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
            "[[tables]]\ntable = \"o\"\nkind = \"organization\"\norg_column = \"id\"\nchange_type_columns = [\"\"]\n",
        );
        assert!(
            matches!(
                p,
                Problem::BadName {
                    key: "change_type_columns",
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
            p,
            Problem::Missing {
                entry: Entry::new(1, "public", "p"),
                kind: "property",
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
