//! Logging: `tracing` with an env filter (`RUST_LOG`, default `info`), JSON
//! lines when `LOG_FORMAT=json`, human-readable otherwise.
//!
//! Contract kept by every caller: tokens, cookies and row values are never
//! logged (DESIGN §5); log table names, ids and LSNs instead.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once. Later calls (e.g. several in-process
/// instances in tests) are no-ops.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
