//! `realtime-gateway`: serves per-organization events to browsers over
//! Server-Sent Events, from the Redis histories and channels the ingestor
//! writes. Replicas are stateless; any number can run behind a load balancer.
//!
//! Layout:
//! - [`config`]: settings (environment variables and flags).
//! - [`auth`]: credentials → a verified user (JWTs, Auth.js/NextAuth cookies).
//! - [`membership`]: the membership query with its cache, and database sessions.
//! - [`sessions`]: streams opened with a database session, re-checked at an interval.
//! - [`delivery`]: live delivery: one Redis subscription per organization per replica, each
//!   organization's feed, parked streams written directly, and the rule of who gets a frame.
//! - [`frame`]: an event parsed and encoded once into its SSE frame.
//! - [`chunked`]: HTTP/1.1 chunked encoding written straight to a socket.
//! - [`history`]: reading the Redis histories for resume and catch-up.
//! - [`channels`]: channel filters.
//! - [`trace`]: OpenTelemetry fan-out spans continuing the ingestor's traces.
//! - [`connection`]: one SSE stream's task: its body, from resume and catch-up to close.
//! - [`registry`]: this replica's open streams, by connection id.
//! - [`caps`]: per-user and per-organization connection caps, leased in Redis.
//! - [`control`]: PUT/DELETE on a stream held by any replica.
//! - [`client_ip`]: the client address behind trusted proxies (connect rate limit).
//! - [`origin`]: the `Origin` check of cookie-authenticated changes.
//! - [`strikes`]: failed publish keys per client IP.
//! - [`publishing`]: events posted over HTTP, written through Postgres.
//! - [`serve`]: the listener: SSE streams written directly, other requests through hyper.
//! - [`slots`]: the listener's connection cap, evicting connections still waiting for a head.
//! - [`shutdown`]: draining, stop and the listener's connections, in one struct.
//! - [`api`]: the HTTP routes, one file per endpoint; [`gateway`]: build and run a replica, and drain it.
#![forbid(unsafe_code)]

mod api;
pub mod auth;
mod caps;
pub mod channels;
mod chunked;
mod client_ip;
mod config;
mod connection;
mod control;
mod delivery;
mod frame;
mod gateway;
mod history;
mod membership;
mod metrics;
mod origin;
pub mod publishing;
mod registry;
pub mod serve;
mod sessions;
mod shared_reads;
mod shutdown;
pub mod slots;
mod strikes;
mod trace;

pub use crate::config::Config;
/// The `data.sync` gap notice a stream sends (for the client schema test).
pub use crate::connection::gap_message;
pub use crate::gateway::Gateway;
