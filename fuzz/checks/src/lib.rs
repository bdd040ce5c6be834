//! What each fuzz target checks, one module per input the project parses
//! from the outside: pgoutput messages from Postgres, request heads from
//! clients, credentials (cookies, JWTs, JWEs), the routing config and
//! publish bodies. Each check takes arbitrary bytes and panics only when a
//! property is broken (a panic in the code under test counts too); none
//! may hang or allocate without bound.
//!
//! The libFuzzer targets in `fuzz/fuzz_targets` are one line each over
//! [`TARGETS`]; `tests/corpora.rs` replays the committed corpora and
//! regression inputs through the same functions under `cargo test`.

pub mod auth;
pub mod pgoutput;
pub mod publish;
pub mod request_head;
pub mod routes;

/// A target's check: panics when a property is broken.
pub type Check = fn(&[u8]);

/// Every fuzz target: its name (the `fuzz/fuzz_targets/<name>.rs` binary
/// and the `fuzz/corpus/<name>` directory) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("pgoutput", pgoutput::check),
    ("request_head", request_head::check),
    ("auth", auth::check),
    ("routes", routes::check),
    ("publish", publish::check),
];
