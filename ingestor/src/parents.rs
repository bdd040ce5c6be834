//! The organizations of parent rows, for child routes (`listings` →
//! `properties` by `"propertyId"`, see [`crate::routes::OrgSource`]).
//!
//! A child row has no organization column: its events go to the
//! organization its parent row has **at the end of the child's
//! transaction** (a listing whose property moved to another organization in
//! the same transaction goes to the new one, whatever the order of the two
//! statements). The session therefore completes a transaction's events at
//! its commit, after it has seen all of the transaction's changes.
//!
//! Where the answer comes from, in order:
//! 1. The stream. Every parent table is itself routed with its own
//!    organization column, so each insert, update and delete of a parent row
//!    passes through [`Parents::observe`], which records the row's
//!    organization (or, for a delete in this transaction, that it is gone).
//! 2. The database, for parents that did not change since the session
//!    started: one `SELECT … WHERE id = ANY($1)` per parent table and
//!    commit, over an ordinary connection (its role must be able to read the
//!    parent table: with row-level security, `BYPASSRLS` or a policy). The
//!    database is read after the transaction committed, so it can only be
//!    newer than the transaction: a parent that moved again since then is
//!    found in its newer organization, which owns it and its children now;
//!    the stream corrects the cache when that later move arrives.
//!
//! A child whose parent was deleted in the same transaction, or no longer
//! exists, is skipped with a log line and `realtime_ingestor_skipped_total
//! {reason="parent"}`: the parent's own event (its delete) stands for its
//! children, and a missing parent never stalls the stream. A failing lookup
//! is a session error: nothing of the transaction was acknowledged, so it
//! is streamed again after the reconnect.
//!
//! The cache is per session (a replay after a reconnect must not see
//! organizations from ahead of it) and bounded: past [`MAX_CACHED`] entries
//! it starts over, which costs lookups, never correctness.

use std::collections::{HashMap, HashSet};

use crate::routes::Routes;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::change::{Operation, RowChange};
use crate::router::ParentKey;
use crate::setup::quote_ident;

/// Cached parent organizations before the cache starts over.
pub(crate) const MAX_CACHED: usize = 200_000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ParentsError {
    #[error("looking up the organizations of {table} rows: {source}")]
    Lookup {
        table: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// What is known about one parent row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParentOrg<'a> {
    /// Its organization.
    Org(&'a str),
    /// Deleted in the current transaction, or not found in the database.
    Gone,
}

/// One parent table's lookup: its names and, once read, the SQL type of its
/// id column (the query casts the ids to it, so its index is used).
struct Table {
    name: String,
    key: String,
    org: String,
    query: Option<String>,
}

type Hasher = foldhash::fast::RandomState;

pub(crate) struct Parents {
    /// Per routed table index: `Some` for tables that are parents.
    tables: Vec<Option<Table>>,
    /// Hashed with foldhash (seeded per process): every change of a parent
    /// table touches these maps, and SipHash showed in the drain's profile.
    cache: HashMap<ParentKey, String, Hasher>,
    /// Parent rows deleted in the current transaction (no later insert).
    gone: HashSet<ParentKey, Hasher>,
    /// Looked up and not found, in the current transaction.
    missing: HashSet<ParentKey, Hasher>,
    client: Client,
}

impl Parents {
    /// `is_parent(i)`: whether routed table `i` is some route's parent.
    pub(crate) fn new(routes: &Routes, is_parent: impl Fn(usize) -> bool, client: Client) -> Self {
        let tables = routes
            .tables()
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if !is_parent(i) {
                    return None;
                }
                Some(Table {
                    name: format!("{}.{}", quote_ident(t.schema()), quote_ident(t.table())),
                    key: t.key_column()?.to_owned(),
                    org: t.org_column()?.to_owned(),
                    query: None,
                })
            })
            .collect();
        Self {
            tables,
            cache: HashMap::default(),
            gone: HashSet::default(),
            missing: HashSet::default(),
            client,
        }
    }

    /// A new transaction: forgets what was deleted or missing in the last.
    pub(crate) fn begin(&mut self) {
        self.gone.clear();
        self.missing.clear();
    }

    /// Follows one change of routed table `index` (a no-op unless it is a
    /// parent table): the row's organization after the change.
    pub(crate) fn observe(&mut self, index: usize, change: &RowChange<'_>) {
        let Some(Some(table)) = self.tables.get(index) else {
            return;
        };
        let id = |row: Option<&crate::change::Row>, column: &str| -> Option<String> {
            match row?.get(column)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let old = id(change.old.as_ref(), &table.key).map(|id| ParentKey { table: index, id });
        let new = match change.operation {
            Operation::Delete => None,
            _ => id(change.new.as_ref(), &table.key).map(|id| ParentKey { table: index, id }),
        };
        let org = id(change.new.as_ref(), &table.org);
        if let Some(old) = old.filter(|o| Some(o) != new.as_ref()) {
            self.cache.remove(&old);
            self.gone.insert(old);
        }
        if let Some(new) = new {
            self.gone.remove(&new);
            self.missing.remove(&new);
            match org {
                Some(org) => {
                    self.bound();
                    self.cache.insert(new, org);
                }
                None => {
                    self.cache.remove(&new);
                }
            }
        }
    }

    /// What is known of `key` (call [`Parents::fetch`] for it first).
    pub(crate) fn org(&self, key: &ParentKey) -> ParentOrg<'_> {
        if self.gone.contains(key) || self.missing.contains(key) {
            return ParentOrg::Gone;
        }
        match self.cache.get(key) {
            Some(org) => ParentOrg::Org(org),
            None => ParentOrg::Gone,
        }
    }

    /// Looks up in the database every key that is neither cached nor known
    /// gone: one query per parent table.
    pub(crate) async fn fetch<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k ParentKey>,
    ) -> Result<(), ParentsError> {
        let mut wanted: HashMap<usize, Vec<&str>> = HashMap::new();
        for key in keys {
            if self.cache.contains_key(key) || self.gone.contains(key) || self.missing.contains(key)
            {
                continue;
            }
            let ids = wanted.entry(key.table).or_default();
            if !ids.contains(&key.id.as_str()) {
                ids.push(&key.id);
            }
        }
        for (index, ids) in wanted {
            let query = self.query(index).await?;
            let table_name = self.table_name(index);
            let params: [&(dyn ToSql + Sync); 1] = [&ids];
            let rows = self.client.query(&query, &params).await.map_err(|source| {
                ParentsError::Lookup {
                    table: table_name.clone(),
                    source,
                }
            })?;
            let mut found = HashSet::with_capacity(rows.len());
            self.bound();
            for row in rows {
                let (id, org): (String, Option<String>) = (row.get(0), row.get(1));
                found.insert(id.clone());
                if let Some(org) = org {
                    self.cache.insert(ParentKey { table: index, id }, org);
                }
            }
            for id in ids {
                if !found.contains(id) {
                    self.missing.insert(ParentKey {
                        table: index,
                        id: id.to_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    fn table_name(&self, index: usize) -> String {
        self.tables
            .get(index)
            .and_then(Option::as_ref)
            .map_or_else(String::new, |t| t.name.clone())
    }

    /// The lookup query of parent table `index`, reading its id column's
    /// type the first time.
    async fn query(&mut self, index: usize) -> Result<String, ParentsError> {
        let Some(Some(table)) = self.tables.get_mut(index) else {
            return Ok(String::new());
        };
        if let Some(q) = &table.query {
            return Ok(q.clone());
        }
        let row = self
            .client
            .query_one(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = $1::text::regclass AND attname = $2",
                &[&table.name, &table.key],
            )
            .await
            .map_err(|source| ParentsError::Lookup {
                table: table.name.clone(),
                source,
            })?;
        let key_type: String = row.get(0);
        let query = format!(
            "SELECT {key}::text, {org}::text FROM {name} WHERE {key} = ANY($1::text[]::{key_type}[])",
            key = quote_ident(&table.key),
            org = quote_ident(&table.org),
            name = table.name,
        );
        table.query = Some(query.clone());
        Ok(query)
    }

    fn bound(&mut self) {
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
    }
}
