//! `realtime-ingestor`: see the library docs and `--help`.

use std::process::ExitCode;

use clap::Parser;
use realtime_ingestor::{Config, Ingestor};
use realtime_shared::{shutdown, telemetry};

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line naming the variable and why, not clap's usage block.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid settings");
            eprintln!("error: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    telemetry::init("info");
    // One thread: the ingestor is a single ordered pipeline (replication
    // reader → decoder → Redis pipeline), and a single-threaded runtime
    // spares it the cross-thread wake-ups that dominated its CPU profile.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
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
