//! `realtime-ingestor`: see the library docs and `--help`.

use std::process::ExitCode;

use realtime_ingestor::{Config, Ingestor};
use realtime_shared::config::{parse_args, runtime};
use realtime_shared::{shutdown, telemetry};

fn main() -> ExitCode {
    let config: Config = match parse_args() {
        Ok(config) => config,
        Err(code) => return code,
    };
    telemetry::init("info");
    // One thread: the ingestor is a single ordered pipeline (replication
    // reader → decoder → Redis pipeline), and a single-threaded runtime
    // spares it the cross-thread wake-ups that dominated its CPU profile.
    let runtime = match runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async {
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
    })
}
