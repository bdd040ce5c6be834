//! Why a routing config was refused: one line naming the file, the line,
//! the entry and the key.

use std::fmt;
use std::path::PathBuf;

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
    pub(super) fn of(text: &str, offset: usize) -> Position {
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
    pub(super) fn new(number: usize, schema: &str, table: &str) -> Entry {
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
