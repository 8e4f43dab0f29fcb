//! `kernel-launcher`: one static binary that starts any Jupyter kernel for
//! Enterprise Gateway, gateway_provisioners or gateway-lite, replacing their
//! per-language launcher scripts. `main` only parses configuration, sets up
//! logging and calls [`launch::run`] (or [`kernelspec::main`] for the
//! `kernelspec` subcommand); `kernel-launcher --help` documents the
//! options, environment and exit codes.

mod comm;
mod command;
mod config;
mod connfile;
mod curve;
mod identity;
mod kernel;
mod kernelspec;
mod launch;
mod ports;
mod report;
mod route;
mod spark;
mod supervise;

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("kernelspec") {
        std::process::exit(kernelspec::main(&args[1..]));
    }
    let action = config::parse(&args, &|name| std::env::var(name).ok());
    let config = match action {
        Ok(config::Action::Help) => {
            print!("{}", config::HELP);
            return;
        }
        Ok(config::Action::Version) => {
            println!("kernel-launcher {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Ok(config::Action::Run(config)) => config,
        Err(e) => {
            eprintln!("kernel-launcher: {e}\nRun `kernel-launcher --help` for the options.");
            std::process::exit(config::EXIT_USAGE);
        }
    };
    init_logging(config.log_level);
    std::process::exit(launch::run(*config));
}

/// Logs go to stderr, one line each, prefixed so they stand out in a kernel
/// log that also holds the kernel's own output. Write errors are ignored:
/// a gateway that restarted may have closed our stderr, and the kernel must
/// not die for that.
fn init_logging(level: log::LevelFilter) {
    let pid = std::process::id();
    env_logger::Builder::new()
        .filter_level(level)
        .format(move |buf, record| {
            writeln!(
                buf,
                "[{} kernel-launcher {pid} {}] {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .init();
}
