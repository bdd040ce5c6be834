//! `realtime-gateway`: see the library docs and `--help`.

use std::process::ExitCode;

use realtime_gateway::{Config, Gateway};
use realtime_shared::config::{parse_args, runtime};
use realtime_shared::{shutdown, telemetry};

/// jemalloc, with its background threads purging freed pages, gives memory
/// back to the OS soon after a burst of connections closes (glibc malloc
/// kept the peak for good).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let config: Config = match parse_args() {
        Ok(config) => config,
        Err(code) => return code,
    };
    telemetry::init("info");
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc background purging unavailable; freed memory returns to the OS more slowly");
    }
    let runtime = match runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async {
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
    })
}
