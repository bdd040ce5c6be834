//! `realtime-ingestor`: see the library docs and `--help`.

use std::process::ExitCode;

use realtime_ingestor::{Config, Ingestor};
use realtime_shared::config::{parse_args, runtime};
use realtime_shared::{shutdown, telemetry};

/// jemalloc: the drain's many small allocations cost a quarter of the
/// ingestor's CPU under glibc malloc, and its background threads give a
/// huge row's memory back once it is freed (ARCHITECTURE.md §2, *Memory*).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let config: Config = match parse_args() {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Kept until `run_until_stopped` has returned: dropping it exports the
    // spans still queued (bounded wait), so the last events' traces are kept.
    let telemetry = match telemetry::init("info", "realtime-ingestor") {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc background purging unavailable; freed memory returns to the OS more slowly");
    }
    // One thread: the ingestor is a single ordered pipeline (replication
    // reader → decoder → Redis pipeline), and a single-threaded runtime
    // spares it the cross-thread wake-ups that dominated its CPU profile.
    let runtime = match runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let code = runtime.block_on(async {
        match Ingestor::build(config).await {
            Ok(ingestor) => {
                ingestor.run_until_stopped(shutdown::signal()).await;
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
