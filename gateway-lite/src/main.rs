//! The `gateway-lite` binary: parse the configuration, set up logging, run.
//!
//! Everything else lives in the library (`gateway_lite::run`), so integration tests and
//! future embedders use the same code path.

#![forbid(unsafe_code)]

use gateway_lite::config::{Config, EXIT_USAGE};

fn main() {
    // `gateway-lite run NOTEBOOK …` is the notebook client (gateway_lite::client).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "run") {
        std::process::exit(gateway_lite::client::main(argv[1..].to_vec()));
    }
    let config = match Config::from_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gateway-lite: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    if let Err(e) = gateway_lite::logging::init(config.log_format) {
        eprintln!("gateway-lite: cannot set up logging: {e}");
        std::process::exit(71);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gateway-lite: cannot start the async runtime: {e}");
            std::process::exit(71);
        }
    };
    if let Err(e) = runtime.block_on(gateway_lite::run(config)) {
        tracing::error!("{e:#}");
        eprintln!("gateway-lite: {e:#}");
        std::process::exit(1);
    }
}
