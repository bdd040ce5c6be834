//! The integration tests, one binary (`cargo test -p realtime-tests --test
//! integration`): each file of this directory is one module, an area of the
//! system, and `support` holds their shared helpers. One binary links once,
//! and its tests share one Postgres and one Redis (`realtime_tests::shared`
//! is per process); each test still gets its own database, replication slot,
//! publication and Redis key prefix (`TestContext`).
//!
//! One test, or one area: `cargo test -p realtime-tests --test integration
//! gateway_protection::` (a name filter, as for any test).
//!
//! Tests of different files share the process, so process-wide state is
//! shared too: the metrics recorder of the in-process ingestors and gateways
//! (see `support::gateway::RunningGateway::start_alone`), the panic hook,
//! the open-files limit. Tests that need a server to themselves start their
//! own (`PostgresServer::start`, `RedisServer::start`).

mod support;

mod app_hook;
mod app_payloads;
mod client_js;
mod fault_oracle;
mod gateway_auth;
mod gateway_bad_input;
mod gateway_degraded;
mod gateway_heads;
mod gateway_limits;
mod gateway_process;
mod gateway_protection;
mod gateway_recovery;
mod gateway_revocation;
mod gateway_stream;
mod harness;
mod ingestor_crash;
mod ingestor_events;
mod ingestor_limits;
mod ingestor_recovery;
mod ingestor_replica_identity;
mod ingestor_slot_lost;
mod ingestor_startup;
mod least_privilege;
mod local_cluster;
mod ops_metrics;
mod postgres_tls;
mod redis_cluster;
mod redis_tls;
mod tracing_otlp;
