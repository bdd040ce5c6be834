//! The test harness: real PostgreSQL and Redis servers started from the
//! installed binaries, per-test isolation on them, and the workspace's
//! binaries run as child processes.
//!
//! # Layout
//!
//! - [`postgres`]: [`PostgresServer`], a throwaway cluster (`initdb` into a
//!   temp dir, `wal_level=logical`, SCRAM auth, a free port; `runuser -u
//!   postgres` when running as root). Start, stop, crash, restart on the
//!   same port.
//! - [`redis`]: [`RedisServer`], a `redis-server` without persistence
//!   (optionally TLS-only with an ACL user).
//! - [`redis_cluster`]: [`RedisCluster`], three primaries with a replica
//!   each (`redis-cli --cluster create`), with failover, kill and slot
//!   migration for fault tests.
//! - [`certs`]: [`TestCerts`], a CA and server certificate made at test time.
//! - [`services`]: [`shared()`], one Postgres and one Redis per test process
//!   (every integration test: they are one binary), started on first use.
//! - [`context`]: [`TestContext`], a test's own database (Oikion schema),
//!   slot, publication and Redis key prefix on those servers.
//! - [`process`]: [`ChildProcess`] and [`binary_path`], for running
//!   `realtime-ingestor` / `realtime-gateway` for real (crash tests).
//! - [`wait`]: [`wait_until`], the only way tests wait: a polled condition
//!   with a deadline, never a bare sleep.
//! - [`front`]: [`Front`], a test-side origin that serves a page and
//!   forwards `/api/realtime/` to gateway replicas (a load balancer), for
//!   browser code that opens a relative stream URL.
//! - [`browser`]: [`Browser`], headless Chromium on such a page.
//! - [`oracle`]: the fault oracle (seeded faults on the real processes,
//!   resuming SSE clients, the database as the truth), shared by
//!   `tests/fault_oracle.rs` and `make soak`.
//! - `watchdog` (private): how servers die with the test process even though
//!   statics are never dropped.
//!
//! The servers never use the machine's own services on 5432/6379.
//!
//! # Example
//!
//! ```ignore
//! #[tokio::test]
//! async fn inserts_are_visible() {
//!     let ctx = TestContext::new().await;
//!     ctx.batch("INSERT INTO organizations (id, name) VALUES ('o1', 'Acme')").await;
//!     let rows = ctx.query("SELECT name FROM organizations", &[]).await;
//!     assert_eq!(rows[0].get::<_, String>(0), "Acme");
//! }
//! ```
#![forbid(unsafe_code)]

pub mod bench;
pub mod browser;
pub mod certs;
pub mod context;
pub mod front;
mod logfile;
pub mod oracle;
mod ports;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod redis_cluster;
pub mod services;
pub mod wait;
mod watchdog;

pub use browser::Browser;
pub use certs::TestCerts;
pub use context::{OIKION_SCHEMA, OIKION_SCHEMA_PATH, TestContext, connect};
pub use front::Front;
pub use ports::free_port;
pub use postgres::{PostgresServer, TestCa, TlsOptions};
pub use process::{ChildProcess, binary_path};
pub use redis::RedisServer;
pub use redis_cluster::RedisCluster;
pub use services::{Services, shared};
pub use wait::wait_until;
