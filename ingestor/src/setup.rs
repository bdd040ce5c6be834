//! Preparing Postgres at start: checks and idempotent DDL.
//!
//! Checks that logical decoding is on, that every routed table exists with
//! every column its route reads, and that it has REPLICA IDENTITY FULL (so
//! deletes carry the organization column and updates carry the old row);
//! creates the publication when missing and keeps its table list equal to the
//! routed tables; refuses a slot of our name that is not ours (the slot
//! itself is created by [`crate::slot`]); installs `realtime.set_actor`
//! (see [`ACTOR_FUNCTION`]).
//!
//! A publication this role does not own (an admin created it, because adding
//! a table to a publication needs ownership of the table, which a
//! least-privileged ingestor does not have: README "Least privilege") is
//! never altered: its table list is the admin's. Start-up then only checks
//! that it publishes every operation and every routed table, refuses to
//! start when it does not (a routed table missing from it would lose its
//! events silently), and says in one line that the sync is off.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::routes::{Routes, TableRoute};
use realtime_shared::postgres_tls::{self, PgTlsError};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "cannot connect to Postgres at DATABASE_URL ({target}): {}",
        postgres_tls::error_chain(.source)
    )]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot connect to Postgres ({target}): no answer within {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },
    #[error("DATABASE_URL is not a valid Postgres URL: {0}")]
    BadUrl(String),
    /// `sslmode`/`sslrootcert` in DATABASE_URL cannot be used (unknown mode,
    /// unreadable root file).
    #[error("DATABASE_URL: {0}")]
    Tls(#[from] PgTlsError),
    #[error(
        "Postgres has wal_level={0}; logical replication needs wal_level=logical (ALTER SYSTEM SET wal_level = logical; then restart Postgres)"
    )]
    WalLevel(String),
    #[error("routed table {0} does not exist")]
    MissingTable(String),
    #[error("routed table {table} has no column {column:?} (the routing config reads it)")]
    MissingColumn { table: String, column: String },
    #[error(
        "routed table {table} does not have REPLICA IDENTITY FULL, so deletes would not carry its organization column; run `{sql}` or set REALTIME_MANAGE_REPLICA_IDENTITY=true"
    )]
    ReplicaIdentity { table: String, sql: String },
    #[error(
        "replication slot {slot:?} exists but {why}; drop it (SELECT pg_drop_replication_slot('{slot}')) or choose another REALTIME_SLOT"
    )]
    ForeignSlot { slot: String, why: String },
    #[error(
        "publication {publication:?} is owned by {owner:?}, not by this role, so the ingestor does not alter it, and {why}; as its owner run `{sql}`, or let the ingestor's role own the routed tables and the publication"
    )]
    ForeignPublication {
        publication: String,
        owner: String,
        why: String,
        sql: String,
    },
    #[error(
        "Postgres refused `{sql}`: {reason}; adding a table to a publication needs ownership of the table (and CREATE on the database): have the tables' owner run it once (the ingestor then uses that publication as it is), see README \"Least privilege\""
    )]
    CreatePublication {
        sql: String,
        /// The server's message (`must be owner of table …`).
        reason: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("Postgres refused {what}: {}", server_message(.source))]
    Sql {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// The server's own words for a refusal (`must be owner of table t`,
/// `permission denied …`): `tokio_postgres::Error`'s `Display` says only
/// "db error", which names neither the cause nor the fix.
fn server_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |db| db.message().to_owned())
}

impl SetupError {
    fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SetupError {
        let what = what.into();
        move |source| SetupError::Sql { what, source }
    }
}

/// Where a URL points, for messages: host, port and database, never the password.
pub(crate) fn describe_target(url: &str) -> String {
    match postgres_tls::parse(url) {
        Ok((c, _)) => {
            let host = c
                .get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_else(|| "localhost".into());
            let port = c.get_ports().first().copied().unwrap_or(5432);
            let db = c.get_dbname().or(c.get_user()).unwrap_or("?");
            format!("{host}:{port}/{db}")
        }
        Err(_) => "an unparsable URL".into(),
    }
}

/// Opens an ordinary SQL connection (its driver task is spawned), with TLS
/// as the URL's `sslmode`/`sslrootcert` ask (see
/// [`realtime_shared::postgres_tls`]): setup, the heartbeat and the replica
/// identity manager all come through here.
pub(crate) async fn connect(url: &str, timeout: Duration) -> Result<Client, SetupError> {
    let (config, tls) = postgres_tls::parse(url).map_err(bad_url)?;
    let connector = tls.connector()?;
    let target = describe_target(url);
    let (client, connection) = tokio::time::timeout(timeout, config.connect(connector))
        .await
        .map_err(|_| SetupError::ConnectTimeout {
            target: target.clone(),
            timeout,
        })?
        .map_err(|source| SetupError::Connect { target, source })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

/// A URL tokio-postgres cannot parse keeps its historical message; TLS
/// parameter problems get their own.
pub(crate) fn bad_url(e: PgTlsError) -> SetupError {
    match e {
        PgTlsError::BadUrl(why) => SetupError::BadUrl(why),
        other => SetupError::Tls(other),
    }
}

/// `"name"` with embedded quotes doubled.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn qualified(route: &TableRoute) -> String {
    format!(
        "{}.{}",
        quote_ident(route.schema()),
        quote_ident(route.table())
    )
}

/// Runs every check and the idempotent DDL. Safe to run by several
/// ingestors at once (a lost creation race is not an error).
pub(crate) async fn prepare(
    client: &Client,
    routes: &Routes,
    publication: &str,
    slot: &str,
    manage_replica_identity: bool,
) -> Result<(), SetupError> {
    check_wal_level(client).await?;
    for route in routes.tables() {
        check_table(client, route, manage_replica_identity).await?;
    }
    ensure_publication(client, routes, publication).await?;
    ensure_actor_function(client).await?;
    ensure_slot(client, slot).await
}

/// `SELECT realtime.set_actor($1)`: the app names the user acting in its
/// transaction, and every event of the transaction carries it as
/// `updatedBy` / `invitedBy`. A transactional logical message under the
/// `realtime-actor` prefix, so it travels with the transaction, costs no
/// table write, and a rolled-back transaction never names anyone. Any role
/// may call it (`pg_logical_emit_message` is callable by every role, and the
/// function adds no privilege: it is `SECURITY INVOKER`).
pub(crate) const ACTOR_FUNCTION: &str = "\
CREATE SCHEMA IF NOT EXISTS realtime;
GRANT USAGE ON SCHEMA realtime TO PUBLIC;
CREATE OR REPLACE FUNCTION realtime.set_actor(actor text) RETURNS void
    LANGUAGE sql VOLATILE STRICT
    AS $$ SELECT pg_logical_emit_message(true, 'realtime-actor', actor) $$;
COMMENT ON FUNCTION realtime.set_actor(text) IS
    'Names the user acting in the current transaction: realtime events of the transaction carry it as updatedBy/invitedBy.';";

/// Installs [`ACTOR_FUNCTION`] unless it exists. A role that may not create
/// it (no CREATE on the database) logs one line with the SQL for an admin
/// and starts anyway: events then carry `updatedBy: null`, as they do for a
/// transaction that names no actor.
async fn ensure_actor_function(client: &Client) -> Result<(), SetupError> {
    if actor_function_exists(client).await? {
        return Ok(());
    }
    if let Err(e) = client.batch_execute(ACTOR_FUNCTION).await {
        // Another ingestor may have won the creation race.
        if actor_function_exists(client).await? {
            return Ok(());
        }
        tracing::warn!(
            error = %e,
            sql = ACTOR_FUNCTION,
            "cannot install realtime.set_actor (run this SQL as the database owner): until then an app calling it fails, and events carry updatedBy/invitedBy null"
        );
        return Ok(());
    }
    tracing::info!("installed realtime.set_actor(text)");
    Ok(())
}

async fn actor_function_exists(client: &Client) -> Result<bool, SetupError> {
    client
        .query_one(
            "SELECT to_regprocedure('realtime.set_actor(text)') IS NOT NULL",
            &[],
        )
        .await
        .map(|row| row.get::<_, bool>(0))
        .map_err(SetupError::sql("looking up realtime.set_actor"))
}

async fn check_wal_level(client: &Client) -> Result<(), SetupError> {
    let row = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(SetupError::sql("reading wal_level"))?;
    let level: String = row.get(0);
    if level != "logical" {
        return Err(SetupError::WalLevel(level));
    }
    Ok(())
}

async fn check_table(
    client: &Client,
    route: &TableRoute,
    manage_replica_identity: bool,
) -> Result<(), SetupError> {
    let name = qualified(route);
    let row = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&route.schema(), &route.table()],
        )
        .await
        .map_err(SetupError::sql(format!("looking up table {name}")))?
        .ok_or_else(|| SetupError::MissingTable(name.clone()))?;
    let oid: u32 = row.get(0);
    let identity: String = row.get(1);

    let columns: BTreeSet<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
            &[&oid],
        )
        .await
        .map_err(SetupError::sql(format!("listing the columns of {name}")))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for column in route.required_columns() {
        if !columns.contains(column) {
            return Err(SetupError::MissingColumn {
                table: name,
                column: column.to_owned(),
            });
        }
    }

    if identity != "f" {
        let sql = format!("ALTER TABLE {name} REPLICA IDENTITY FULL");
        if !manage_replica_identity {
            return Err(SetupError::ReplicaIdentity { table: name, sql });
        }
        client
            .batch_execute(&sql)
            .await
            .map_err(SetupError::sql(sql.clone()))?;
        tracing::info!(table = %name, "set REPLICA IDENTITY FULL");
    }
    Ok(())
}

/// Sets `REPLICA IDENTITY FULL` on `schema.table` again after it was reset
/// while streaming ([`crate::identity`]). Reads `pg_class` first and does
/// nothing when the table is FULL already, so no lock is taken needlessly;
/// the `ALTER TABLE` waits at most `lock_timeout` for its lock, so it never
/// queues application transactions behind it for long.
/// `Ok(true)`: it was altered.
pub(crate) async fn restore_replica_identity(
    client: &Client,
    schema: &str,
    table: &str,
    lock_timeout: Duration,
) -> Result<bool, SetupError> {
    let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let identity: Option<String> = client
        .query_opt(
            "SELECT c.relreplident::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &table],
        )
        .await
        .map_err(SetupError::sql(format!("looking up table {name}")))?
        .map(|row| row.get(0));
    match identity.as_deref() {
        None => return Err(SetupError::MissingTable(name)),
        Some("f") => return Ok(false),
        Some(_) => {}
    }
    let sql = format!(
        "SET lock_timeout = {}; ALTER TABLE {name} REPLICA IDENTITY FULL",
        lock_timeout.as_millis().max(1)
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(SetupError::sql(format!(
            "ALTER TABLE {name} REPLICA IDENTITY FULL"
        )))?;
    Ok(true)
}

async fn ensure_publication(
    client: &Client,
    routes: &Routes,
    publication: &str,
) -> Result<(), SetupError> {
    let wanted: BTreeSet<(String, String)> = routes
        .tables()
        .iter()
        .map(|r| (r.schema().to_owned(), r.table().to_owned()))
        .collect();
    let table_list = routes
        .tables()
        .iter()
        .map(qualified)
        .collect::<Vec<_>>()
        .join(", ");
    let pub_name = quote_ident(publication);

    let existing = client
        .query_opt(
            "SELECT puballtables, pubinsert AND pubupdate AND pubdelete AND pubtruncate, \
             pg_has_role(pubowner, 'USAGE'), pg_get_userbyid(pubowner)::text \
             FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(SetupError::sql("looking up the publication"))?;
    let Some(existing) = existing else {
        let sql = format!("CREATE PUBLICATION {pub_name} FOR TABLE {table_list}");
        match client.batch_execute(&sql).await {
            Ok(()) => tracing::info!(publication, "created publication"),
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => {}
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                let reason = server_message(&e);
                return Err(SetupError::CreatePublication {
                    sql,
                    reason,
                    source: e,
                });
            }
            Err(e) => return Err(SetupError::sql(sql)(e)),
        }
        return Ok(());
    };
    let owned: bool = existing.get(2);
    if !owned {
        let owner: String = existing.get(3);
        return check_foreign_publication(client, &existing, publication, &owner, &wanted).await;
    }
    let all_tables: bool = existing.get(0);
    let all_ops: bool = existing.get(1);
    if !all_ops {
        let sql = format!(
            "ALTER PUBLICATION {pub_name} SET (publish = 'insert, update, delete, truncate')"
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(SetupError::sql(sql.clone()))?;
    }
    if all_tables {
        // FOR ALL TABLES already covers the routed tables; unrouted changes
        // are dropped by the router.
        return Ok(());
    }
    let current: BTreeSet<(String, String)> = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(SetupError::sql("listing the publication's tables"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if current != wanted {
        let sql = format!("ALTER PUBLICATION {pub_name} SET TABLE {table_list}");
        client
            .batch_execute(&sql)
            .await
            .map_err(SetupError::sql(sql.clone()))?;
        tracing::info!(
            publication,
            "publication table list updated to the routed tables"
        );
    }
    Ok(())
}

/// A publication owned by another role: checked, never altered. `Ok` (and
/// one info line saying the table-list sync is off) when it publishes every
/// operation and every routed table; extra tables are harmless (the router
/// drops their changes).
async fn check_foreign_publication(
    client: &Client,
    existing: &tokio_postgres::Row,
    publication: &str,
    owner: &str,
    wanted: &BTreeSet<(String, String)>,
) -> Result<(), SetupError> {
    let pub_name = quote_ident(publication);
    let all_tables: bool = existing.get(0);
    let all_ops: bool = existing.get(1);
    let refuse = |why: String, sql: String| SetupError::ForeignPublication {
        publication: publication.to_owned(),
        owner: owner.to_owned(),
        why,
        sql,
    };
    if !all_ops {
        return Err(refuse(
            "it does not publish every operation (deletes or truncates would be lost)".into(),
            format!(
                "ALTER PUBLICATION {pub_name} SET (publish = 'insert, update, delete, truncate')"
            ),
        ));
    }
    if !all_tables {
        let current: BTreeSet<(String, String)> = client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(SetupError::sql("listing the publication's tables"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let missing: Vec<String> = wanted
            .difference(&current)
            .map(|(schema, table)| format!("{}.{}", quote_ident(schema), quote_ident(table)))
            .collect();
        if !missing.is_empty() {
            return Err(refuse(
                format!(
                    "it lacks routed table(s) {} (their changes would never arrive)",
                    missing.join(", ")
                ),
                format!(
                    "ALTER PUBLICATION {pub_name} ADD TABLE {}",
                    missing.join(", ")
                ),
            ));
        }
    }
    tracing::info!(
        publication,
        owner,
        "publication is owned by another role: its table list is not kept in sync with the routes (it already holds every routed table)"
    );
    Ok(())
}

/// Refuses a slot of the right name that we cannot stream (physical, another
/// plugin, another database). Creating a missing slot, and noticing one that
/// was lost, is [`crate::slot::reconcile`]'s job: it runs before every
/// session, knows whether we streamed the slot before, and tells clients.
async fn ensure_slot(client: &Client, slot: &str) -> Result<(), SetupError> {
    let row = client
        .query_opt(
            "SELECT coalesce(plugin, ''), slot_type, coalesce(database, '') = current_database() \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(SetupError::sql("looking up the replication slot"))?;
    let Some(row) = row else { return Ok(()) };
    let plugin: String = row.get(0);
    let kind: String = row.get(1);
    let same_db: bool = row.get(2);
    let why = if kind != "logical" {
        Some(format!("is a {kind} slot"))
    } else if plugin != "pgoutput" {
        Some(format!("uses the {plugin} plugin, not pgoutput"))
    } else if !same_db {
        Some("belongs to another database".to_owned())
    } else {
        None
    };
    match why {
        Some(why) => Err(SetupError::ForeignSlot {
            slot: slot.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}
