//! Shared by the ingestor and the gateway: only what both use.
//!
//! Layout:
//! - [`event`]: the event model and its wire JSON (ARCHITECTURE.md §3).
//! - [`envelope`]: the bytes stored in Redis per event (event + routing metadata).
//! - [`keys`]: Redis key and channel names (ARCHITECTURE.md §4).
//! - [`history`]: reads of a history stream both binaries make (its newest id).
//! - [`message`]: application events sent as Postgres logical messages, validated.
//! - [`postgres_tls`]: libpq `sslmode`/`sslrootcert` for every Postgres connection (rustls).
//! - [`redis_conn`]: the one Redis client constructor (TLS, CA bundle, ACL user) and its start-up errors.
//! - [`redis_target`]: one node or a Redis Cluster (comma-separated seed URLs), and the one connection type over both.
//! - [`config`]: durations and start-up validation helpers (ARCHITECTURE.md §5).
//! - [`telemetry`]: logging setup.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`shutdown`]: SIGTERM/SIGINT as a future.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod envelope;
pub mod event;
pub mod history;
pub mod keys;
pub mod message;
pub mod postgres_tls;
pub mod redis_conn;
pub mod redis_target;
pub mod shutdown;
pub mod telemetry;
