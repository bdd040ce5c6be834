//! `realtime-gateway`: see the library docs and `--help`.

use std::process::ExitCode;

use realtime_gateway::{Config, Gateway};
use realtime_shared::config::{parse_args, runtime};
use realtime_shared::{shutdown, telemetry};

fn main() -> ExitCode {
    let config: Config = match parse_args() {
        Ok(config) => config,
        Err(code) => return code,
    };
    telemetry::init("info");
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
