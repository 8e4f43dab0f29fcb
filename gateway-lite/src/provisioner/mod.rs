//! Provisioners: where and how a launcher process is started.
//!
//! The kernel registry decides *what* to run (the launcher argv and env, from the kernelspec)
//! and *when*; a provisioner decides *where*. This round has one, [`local::Local`], which runs
//! the launcher as a child process in its own process group. SSH hosts and Docker containers
//! fit the same trait later: each returns a [`Launched`] that reports the launcher's exit,
//! keeps the tail of its log, and can signal it, and says at which host the kernel's ports
//! are reachable.

pub mod local;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// What to start.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// The kernel id (for logs).
    pub kernel_id: String,
    /// The launcher command line, placeholders filled.
    pub argv: Vec<String>,
    /// Environment added to the launcher's.
    pub env: BTreeMap<String, String>,
}

/// Why a launcher could not be started at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The program could not be executed (missing, not executable). Operator's fault
    /// (kernelspec or `--launcher`).
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        /// argv\[0\].
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The command line is empty. The kernelspec's fault.
    #[error("the kernel command line is empty")]
    EmptyArgv,
}

/// How a launcher ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when it was killed.
    pub signal: Option<i32>,
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "signal {s}"),
            (None, None) => f.write_str("unknown status"),
        }
    }
}

/// The last lines a launcher wrote to stderr, for error messages.
#[derive(Debug, Clone, Default)]
pub struct LogTail {
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl LogTail {
    /// Lines kept.
    pub const LINES: usize = 20;

    /// Appends a line, dropping the oldest beyond [`Self::LINES`].
    pub fn push(&self, line: String) {
        if let Ok(mut l) = self.lines.lock() {
            if l.len() == Self::LINES {
                l.pop_front();
            }
            l.push_back(line);
        }
    }

    /// The kept lines, joined with newlines.
    pub fn text(&self) -> String {
        self.lines
            .lock()
            .map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

/// Signals for a launcher (which forwards them to its kernel's process group).
pub trait ProcessControl: Send + Sync + fmt::Debug {
    /// Sends `signal` to the launcher's process group, if it is still running.
    fn signal(&self, signal: nix::sys::signal::Signal);
}

/// A started launcher.
#[derive(Debug)]
pub struct Launched {
    /// Becomes `Some` when the launcher has exited (and was reaped).
    pub exit: watch::Receiver<Option<ExitInfo>>,
    /// Its stderr tail.
    pub log: LogTail,
    /// Signalling.
    pub control: Arc<dyn ProcessControl>,
}

/// Starts launchers somewhere.
pub trait Provisioner: Send + Sync + fmt::Debug + 'static {
    /// Starts one launcher.
    fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError>;
    /// The host at which the kernel's ZeroMQ and comm ports are reachable (EG likewise
    /// replaces the payload's `ip` with the host's address).
    fn kernel_host(&self) -> String;
}
