//! Per-test isolation on shared servers: a fresh database with the Oikion
//! schema, and unique slot, publication and Redis key prefix names.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use rand::distr::Alphanumeric;
use redis::aio::MultiplexedConnection;
use tempfile::TempDir;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::postgres::PostgresServer;
use crate::redis::RedisServer;
use crate::services::shared;

/// Where the Oikion schema fixture lives (the app's tables as Prisma creates them).
pub const OIKION_SCHEMA_PATH: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/oikion-schema.sql");

/// The Oikion tables every test database starts with.
pub const OIKION_SCHEMA: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/oikion-schema.sql"
));

/// Set to keep test databases after the test (for a post-mortem with psql).
const KEEP_DB_VAR: &str = "REALTIME_TEST_KEEP_DB";

/// One test's own corner of the servers:
///
/// - a database `t_<id>` created from `template0` with [`OIKION_SCHEMA`];
/// - names for the replication slot (`slot_<id>`) and publication
///   (`pub_<id>`) that nobody else uses;
/// - a Redis key prefix `t<id>`;
/// - a temp dir for files the test writes (routes, configs).
///
/// Cloning is cheap and shares all of it. When the last clone is dropped,
/// the slot is dropped (ending a walsender still holding it), then the
/// database, best-effort: slots must not pile up against
/// `max_replication_slots`, nor databases on disk. `REALTIME_TEST_KEEP_DB=1`
/// keeps the database. Redis keys are left (the server keeps nothing).
#[derive(Clone)]
pub struct TestContext {
    redis_url: String,
    /// The CA bundle of a TLS Redis ([`RedisServer::start_tls`]).
    redis_ca: Option<std::path::PathBuf>,
    db: Arc<TestDatabase>,
}

impl TestContext {
    /// A fresh context on the shared servers ([`crate::shared`]), which are
    /// started on first use. Panics if the database cannot be created.
    pub async fn new() -> Self {
        shared().context().await
    }

    /// A fresh context whose database lives on `postgres` (a server the test
    /// controls: to restart or stop it), with the shared Redis.
    pub async fn on(postgres: &PostgresServer) -> Self {
        let redis = blocking(|| shared().redis().url()).await;
        Self::create(postgres, redis).await
    }

    /// The same context, pointed at `cluster` (a Redis Cluster the test
    /// controls): `REDIS_URL` is its seed list.
    pub fn with_redis_cluster(mut self, cluster: &crate::RedisCluster) -> Self {
        self.redis_url = cluster.url();
        self.redis_ca = None;
        self
    }

    /// A fresh context on the shared Postgres and the shared Redis Cluster.
    pub async fn new_on_cluster() -> Self {
        shared().cluster_context().await
    }

    /// The same context, pointed at `redis` (a server the test controls)
    /// instead of the shared one.
    pub fn with_redis(mut self, redis: &RedisServer) -> Self {
        self.redis_url = redis.url();
        self.redis_ca = redis.ca_path();
        self
    }

    pub(crate) async fn create(postgres: &PostgresServer, redis_url: String) -> Self {
        let id: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(12)
            .map(|b| char::from(b).to_ascii_lowercase())
            .collect();
        let name = format!("t_{id}");
        let admin_url = postgres.url("postgres");
        let admin = connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {admin_url}: {e}"));
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\" TEMPLATE template0"))
            .await
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        drop(admin);
        let url = postgres.url(&name);
        let client = connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        client
            .batch_execute(OIKION_SCHEMA)
            .await
            .unwrap_or_else(|e| panic!("loading {OIKION_SCHEMA_PATH} into {name}: {e}"));
        let temp = tempfile::Builder::new()
            .prefix(&format!("realtime-{name}-"))
            .tempdir()
            .expect("creating the test's temp dir");
        Self {
            redis_url,
            redis_ca: None,
            db: Arc::new(TestDatabase {
                slot: format!("slot_{id}"),
                publication: format!("pub_{id}"),
                key_prefix: format!("t{id}"),
                name,
                url,
                admin_url,
                temp,
            }),
        }
    }

    /// `postgres://postgres:postgres@127.0.0.1:PORT/t_<id>`.
    pub fn database_url(&self) -> String {
        self.db.url.clone()
    }

    /// The database name, `t_<id>`.
    pub fn database(&self) -> &str {
        &self.db.name
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn redis_url(&self) -> String {
        self.redis_url.clone()
    }

    /// A replication slot name no other test uses.
    pub fn slot(&self) -> &str {
        &self.db.slot
    }

    /// A publication name no other test uses.
    pub fn publication(&self) -> &str {
        &self.db.publication
    }

    /// A Redis key prefix no other test uses (for `REALTIME_KEY_PREFIX`).
    pub fn key_prefix(&self) -> &str {
        &self.db.key_prefix
    }

    /// The environment a real `realtime-ingestor` binary needs for this
    /// context: its database, Redis, slot, publication and key prefix,
    /// replica identity managed, admin on a free port. Callers append their
    /// own settings; a variable given twice takes the later value.
    pub fn ingestor_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("DATABASE_URL", self.database_url()),
            ("REDIS_URL", self.redis_url()),
            ("REALTIME_SLOT", self.slot().to_owned()),
            ("REALTIME_PUBLICATION", self.publication().to_owned()),
            ("REALTIME_KEY_PREFIX", self.key_prefix().to_owned()),
            ("REALTIME_MANAGE_REPLICA_IDENTITY", "true".to_owned()),
            ("REALTIME_ADMIN_LISTEN", "127.0.0.1:0".to_owned()),
        ];
        env.extend(self.redis_ca_env());
        env
    }

    /// The same for a real `realtime-gateway` binary listening on `listen`
    /// and accepting bearer JWTs signed with `jwt_secret`.
    pub fn gateway_env(
        &self,
        listen: std::net::SocketAddr,
        jwt_secret: &str,
    ) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("DATABASE_URL", self.database_url()),
            ("REDIS_URL", self.redis_url()),
            ("REALTIME_KEY_PREFIX", self.key_prefix().to_owned()),
            ("REALTIME_JWT_SECRET", jwt_secret.to_owned()),
            ("REALTIME_LISTEN", listen.to_string()),
            ("REALTIME_ADMIN_LISTEN", "127.0.0.1:0".to_owned()),
        ];
        env.extend(self.redis_ca_env());
        env
    }

    /// `REALTIME_REDIS_CA` when the test's Redis is a TLS one.
    fn redis_ca_env(&self) -> Option<(&'static str, String)> {
        self.redis_ca
            .as_ref()
            .map(|ca| ("REALTIME_REDIS_CA", ca.display().to_string()))
    }

    /// A temp dir of this test, removed with the context.
    pub fn temp_dir(&self) -> &Path {
        self.db.temp.path()
    }

    /// A new connection to the test database (its connection task spawned
    /// on the current runtime). Panics if it cannot connect.
    pub async fn pg(&self) -> Client {
        self.try_pg()
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.db.url))
    }

    /// [`pg`](Self::pg) without the panic, for use while a server restarts.
    pub async fn try_pg(&self) -> Result<Client, tokio_postgres::Error> {
        connect(&self.db.url).await
    }

    /// A new multiplexed connection to the test's Redis. Panics on failure.
    pub async fn redis(&self) -> MultiplexedConnection {
        self.try_redis()
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.redis_url))
    }

    /// A command connection to the test's Redis, one node or a cluster
    /// (`REDIS_URL` with several seeds): for reads that must work on both.
    /// Panics on failure.
    pub async fn redis_commands(&self) -> realtime_shared::redis_target::RedisConn {
        realtime_shared::redis_target::RedisTarget::parse(&self.redis_url, self.redis_ca.as_deref())
            .unwrap_or_else(|e| panic!("{e}"))
            .command_connection(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.redis_url))
    }

    /// [`redis`](Self::redis) without the panic.
    pub async fn try_redis(&self) -> redis::RedisResult<MultiplexedConnection> {
        realtime_shared::redis_conn::redis_client(&self.redis_url, self.redis_ca.as_deref())
            .map_err(|e| redis::RedisError::from(std::io::Error::other(e.to_string())))?
            .get_multiplexed_async_connection()
            .await
    }

    /// Runs one statement on a new connection; returns the rows affected.
    /// Panics on error, quoting the statement.
    pub async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> u64 {
        self.pg()
            .await
            .execute(sql, params)
            .await
            .unwrap_or_else(|e| panic!("executing `{sql}`: {e}"))
    }

    /// Runs one query on a new connection. Panics on error.
    pub async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<Row> {
        self.pg()
            .await
            .query(sql, params)
            .await
            .unwrap_or_else(|e| panic!("querying `{sql}`: {e}"))
    }

    /// Runs `;`-separated statements (no parameters) in one round trip, as
    /// one implicit transaction unless they contain their own `BEGIN`/`COMMIT`.
    /// Panics on error, quoting the SQL.
    pub async fn batch(&self, sql: &str) {
        self.pg()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("executing `{sql}`: {e}"));
    }
}

impl std::fmt::Debug for TestContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestContext")
            .field("database_url", &self.db.url)
            .field("redis_url", &self.redis_url)
            .field("slot", &self.db.slot)
            .field("publication", &self.db.publication)
            .field("key_prefix", &self.db.key_prefix)
            .finish()
    }
}

/// What a [`TestContext`] owns on the Postgres server; cleaned up on drop.
struct TestDatabase {
    name: String,
    url: String,
    /// The `postgres` database of the same server, to drop `name` from.
    admin_url: String,
    slot: String,
    publication: String,
    key_prefix: String,
    temp: TempDir,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop is synchronous and may run inside a runtime (or while one
        // shuts down): do the async cleanup on a thread with its own runtime.
        let url = format!("{}?connect_timeout=2", self.url);
        let admin_url = format!("{}?connect_timeout=2", self.admin_url);
        let (name, slot) = (self.name.clone(), self.slot.clone());
        let keep_db = std::env::var_os(KEEP_DB_VAR).is_some();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(5), drop_slot(&url, &slot)).await;
                if !keep_db {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        drop_database(&admin_url, &name),
                    )
                    .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Drops replication slot `slot`, first ending the walsender that holds it
/// (a test's ingestor may still be shutting down).
async fn drop_slot(url: &str, slot: &str) -> Result<(), tokio_postgres::Error> {
    let client = connect(url).await?;
    loop {
        let row = client
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?;
        let Some(row) = row else {
            return Ok(());
        };
        match row.get::<_, Option<i32>>(0) {
            Some(pid) => {
                client
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await?;
            }
            None => {
                // It may turn active again in between; then loop.
                let _ = client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `DROP DATABASE … WITH (FORCE)`: ends the sessions still connected.
async fn drop_database(admin_url: &str, name: &str) -> Result<(), tokio_postgres::Error> {
    let client = connect(admin_url).await?;
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
}

/// Connects with TLS as the URL's `sslmode` asks (`prefer` by default: TLS
/// when the server offers it, so the harness also works against a
/// TLS-only server) and spawns the connection task on the current runtime.
/// Panics on a URL whose TLS part cannot be used (a test bug).
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (config, tls) =
        realtime_shared::postgres_tls::parse(url).unwrap_or_else(|e| panic!("test URL {url}: {e}"));
    let connector = tls
        .connector()
        .unwrap_or_else(|e| panic!("test URL {url}: {e}"));
    let (client, connection) = config.connect(connector).await?;
    tokio::spawn(async move {
        // Ends with the client, or with an error the client also reports.
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs a blocking closure (server start-up) off the async workers,
/// propagating its panic.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("blocking task failed: {e}"),
        },
    }
}
