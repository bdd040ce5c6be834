//! The ingestor: Postgres logical replication (pgoutput) → per-organization
//! events in Redis, each exactly once, acknowledged only once Redis holds them.
#![forbid(unsafe_code)]

pub mod change;
pub mod pgoutput;
pub mod router;
pub mod value;
