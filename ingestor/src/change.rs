//! A decoded row change, with column values already mapped to JSON, as the
//! router sees it.

use serde_json::{Map, Value};

/// Column name → JSON value (ARCHITECTURE.md §2 mapping).
pub(crate) type Row = Map<String, Value>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Insert,
    Update,
    Delete,
}

/// One row change of one table.
///
/// `old` is present for updates and deletes when the table has REPLICA
/// IDENTITY FULL (the ingestor requires it for routed tables). Unchanged
/// TOASTed columns of `new` are filled from `old` when `old` has them and are
/// otherwise absent from `new`: "absent" never means NULL.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowChange<'a> {
    pub schema: &'a str,
    pub table: &'a str,
    pub operation: Operation,
    pub old: Option<Row>,
    pub new: Option<Row>,
}
