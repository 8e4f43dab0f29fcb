//! `gateway-lite run`: a client that runs a notebook, cell by cell, on a kernel started through
//! any Kernel Gateway API (gateway-lite itself or Enterprise Gateway), the way papermill runs
//! one on a local kernel.
//!
//! Pipelines (Airflow, Elyra, cron) want "run this notebook with these parameters on the
//! cluster, keep the result"; papermill does it against local kernels only. This client
//! speaks the gateway's REST API (`POST /api/kernels`, `POST …/interrupt`, `DELETE`) and its
//! WebSocket (`/api/kernels/{id}/channels`, Jupyter's legacy JSON framing, which every
//! gateway accepts), and follows papermill's conventions for parameters and output metadata,
//! so papermill users get the notebook they expect. The pieces:
//!
//! - [`args`]: the command line, and the exit codes.
//! - [`notebook`]: the nbformat 4 document, kept as JSON so unknown fields survive.
//! - [`params`]: `-p NAME VALUE` typed and rendered as papermill does, and the injected cell.
//! - [`http`]: connections (TCP or TLS) and the REST calls.
//! - [`channel`]: the kernel's WebSocket: Jupyter messages out and in.
//! - [`cell`]: one cell run: the request, the replies, timeout and stop, the cell written.
//! - [`markers`]: papermill's error marker cells.
//! - [`outputs`]: one cell's outputs built from iopub messages as Jupyter clients build them.
//! - [`progress`]: a one-line progress bar on a terminal, plain lines otherwise.
//! - [`runner`]: start the kernel, run every cell, save, and always delete the kernel.

pub mod args;
pub mod cell;
pub mod channel;
pub mod http;
pub mod markers;
pub mod notebook;
pub mod outputs;
pub mod params;
pub mod progress;
pub mod runner;

use std::ffi::OsString;

use clap::Parser;

/// Runs `gateway-lite run …` (`argv` includes the program name and `run`) and returns the
/// process exit code (see [`args::EXIT_CODES`]).
pub fn main(argv: Vec<OsString>) -> i32 {
    let args = match args::RunArgs::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { args::EXIT_USAGE } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gateway-lite run: cannot start the async runtime: {e}");
            return args::EXIT_SOFTWARE;
        }
    };
    runtime.block_on(runner::run(args))
}
