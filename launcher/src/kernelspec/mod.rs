//! `kernel-launcher kernelspec install`: writes ready kernelspecs that run kernels through
//! this launcher, for Enterprise Gateway 3.x, gateway-lite and gateway_provisioners 0.5.
//!
//! A gateway learns how to start a kernel from its kernelspec, and a hand-written one for a
//! gateway is easy to get subtly wrong (the placeholder set, the option form the gateway
//! passes, the process-proxy class, Spark's run script and interrupt mode). This replaces
//! Enterprise Gateway's per-language `jupyter-*-spec` installers and the old Spark installer
//! script with one command that knows every placement:
//!
//! - [`options`]: the command line, parsed and checked.
//! - [`render`]: the spec's `kernel.json` and helper files, computed without touching disk.
//! - [`install`]: where the spec goes and how it is written.
//! - [`archive`]: the launcher packed as a `tar.gz` for YARN's `--archives`.

mod archive;
mod install;
mod options;
mod render;

/// The help text of `kernel-launcher kernelspec install --help`.
pub const HELP: &str = include_str!("help.txt");

/// Exit code of a usage error (BSD `EX_USAGE`), as for the launcher's own options.
pub const EXIT_USAGE: i32 = 64;
/// Exit code when the spec cannot be written (BSD `EX_CANTCREAT`).
pub const EXIT_CANTCREAT: i32 = 73;

/// Why a kernelspec was not written.
#[derive(Debug, thiserror::Error)]
pub enum KernelspecError {
    /// A bad or missing option: which one, and what to give instead.
    #[error("{option}: {problem}")]
    Usage { option: String, problem: String },
    /// The spec directory or one of its files could not be written.
    #[error("{path}: {problem}")]
    Write { path: String, problem: String },
}

impl KernelspecError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            KernelspecError::Usage { .. } => EXIT_USAGE,
            KernelspecError::Write { .. } => EXIT_CANTCREAT,
        }
    }
}

/// Runs `kernel-launcher kernelspec ARGS...`; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let env = |name: &str| std::env::var(name).ok();
    match options::parse(args) {
        Ok(options::Request::Help) => {
            print!("{HELP}");
            0
        }
        Ok(options::Request::Install(o)) => match install::install(&o, &env) {
            Ok(report) => {
                println!(
                    "Installed kernelspec {} in {}",
                    report.name,
                    report.dir.display()
                );
                0
            }
            Err(e) => fail(&e),
        },
        Err(e) => fail(&e),
    }
}

fn fail(e: &KernelspecError) -> i32 {
    eprintln!(
        "kernel-launcher kernelspec install: {e}\nRun `kernel-launcher kernelspec install --help` for the options."
    );
    e.exit_code()
}
