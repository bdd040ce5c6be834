//! `realtime-gateway`: see the library docs and `--help`.

use std::process::ExitCode;

use realtime_gateway::{Config, Gateway};
use realtime_shared::config::runtime;
use realtime_shared::{shutdown, telemetry};

/// jemalloc, with its background threads purging freed pages, gives memory
/// back to the OS soon after a burst of connections closes (glibc malloc
/// kept the peak for good).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let config = match Config::from_process() {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Kept until `run_until_stopped` has returned: dropping it exports the
    // spans still queued (bounded wait), so the last events' traces are kept.
    let telemetry = match telemetry::init("info", "realtime-gateway") {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc background purging unavailable; freed memory returns to the OS more slowly");
    }
    // Before the runtime: its sockets count against this limit, and the
    // connection cap is derived from it.
    realtime_gateway::slots::raise_open_files_limit();
    let runtime = match runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let code = runtime.block_on(async {
        match Gateway::build(config).await {
            Ok(gateway) => {
                gateway.run_until_stopped(shutdown::signal()).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    });
    // The runtime first (its tasks may still hold spans), then the exporter.
    drop(runtime);
    drop(telemetry);
    code
}
