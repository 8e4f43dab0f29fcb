//! What a provisioner is asked to start and what it hands back: the request, the
//! [`Launched`] launcher (its exit, log tail, signals, address, [`Placement`]), and the errors.
//!
//! These types sit below every provisioner, so that `local`, `ssh` and `docker` depend on
//! them and not on each other or on the dispatch in the parent module.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;

use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::output::LogTail;

/// What to start.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// The kernel id (for logs).
    pub kernel_id: String,
    /// The launcher command line, placeholders filled.
    pub argv: Vec<String>,
    /// Environment added to the launcher's.
    pub env: BTreeMap<String, String>,
    /// The launch secret, for the launcher's `KERNEL_LAUNCHER_SECRET`: in its environment,
    /// never on a command line (over ssh it travels on the session's stdin).
    pub secret: Option<String>,
    /// Where the launcher's output goes. `None`: into the gateway's own log through pipes,
    /// which ties the launcher to the gateway's lifetime (a dead reader means write errors);
    /// a file lets the kernel outlive a gateway restart.
    pub log_file: Option<PathBuf>,
}

/// Where a launcher runs, in the terms its provisioner needs to find it again. Written to
/// the gateway's state file; every field must stay meaningful across a gateway restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Placement {
    /// A process on this host.
    Local {
        /// The launcher's pid (it leads its own process group).
        pid: i32,
        /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22), so a
        /// recycled pid is never mistaken for the launcher.
        start_time: u64,
        /// Its log file, when it has one.
        log_file: Option<PathBuf>,
    },
    /// A launcher on a remote host, started over SSH by [`ssh::Ssh`].
    Ssh {
        /// The ssh destination, as configured (`host`, `user@host` or a config alias).
        host: String,
        /// The IP the kernel binds and the gateway connects to.
        address: String,
        /// The launcher's log file on that host.
        log_file: String,
        /// The file on that host holding the launcher's pid and start time (it leads its
        /// own process group); removed when the watcher sees it end.
        pid_file: String,
    },
    /// A launcher running as a container, started by [`docker::Docker`].
    Docker {
        /// The container's name (`<prefix>-<kernel id>`).
        container: String,
        /// The network it was started on.
        network: String,
        /// Its address on that network when it was last seen.
        host: String,
    },
    /// A launcher running as the one task of a Swarm service, started by
    /// [`docker::Docker`].
    Swarm {
        /// The service's id.
        service: String,
        /// Its name (`<prefix>-<kernel id>`).
        name: String,
        /// The overlay network it was started on.
        network: String,
        /// The task's address on that network when it was last seen.
        host: String,
    },
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
    /// A launcher's output file could not be opened.
    #[error("cannot open the launcher log {path}: {source}")]
    Log {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The recorded launcher is no longer running (or its pid now belongs to another
    /// process), so there is nothing to re-attach to.
    #[error("the launcher is gone: {0}")]
    Gone(String),
    /// A remote host cannot be used (bad name, unresolvable, none configured).
    #[error("remote host {host:?}: {message}")]
    Remote {
        /// The host.
        host: String,
        /// Why.
        message: String,
    },
    /// The Docker daemon refused or failed to run a kernel's container, or the request
    /// cannot be turned into one (no image, a bad `KERNEL_UID`, ...).
    #[error("docker: {0}")]
    Docker(String),
    /// The request asks for something the gateway does not allow (resources above the
    /// maximum, a malformed quantity or placement constraint); nothing was started. The
    /// client's fault.
    #[error("{0}")]
    Request(String),
    /// The kernelspec asks for a placement gateway-lite does not do (Kubernetes, YARN
    /// cluster, an unknown process proxy); nothing was started.
    #[error("{0}")]
    Refused(String),
    /// A placement of another kind was handed to this provisioner (a bug).
    #[error("a {0} placement cannot be followed here")]
    Unsupported(&'static str),
}

/// How a launcher ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExitInfo {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when it was killed.
    pub signal: Option<i32>,
    /// The launcher never ran because the place it was sent to could not be reached (an SSH
    /// host that refused or timed out the connection), and the provisioner has another place
    /// that may work: launching again is safe and may succeed.
    pub retry_elsewhere: bool,
    /// The kernel was killed for exceeding its memory limit (the container's `OOMKilled`).
    pub out_of_memory: bool,
}

impl ExitInfo {
    /// An exit whose status is not known (the launcher was not our child).
    pub const UNKNOWN: ExitInfo = ExitInfo {
        code: None,
        signal: None,
        retry_elsewhere: false,
        out_of_memory: false,
    };

    /// The launcher's own status; a code of 128+S (how a launcher, a shell or a container
    /// runtime reports a death by signal S) is read as signal S.
    pub fn from_code(code: i32) -> Self {
        if (129..128 + 65).contains(&code) {
            ExitInfo {
                signal: Some(code - 128),
                ..Self::UNKNOWN
            }
        } else {
            ExitInfo {
                code: Some(code),
                ..Self::UNKNOWN
            }
        }
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "signal {s}"),
            (None, None) => f.write_str("unknown status"),
        }?;
        if self.out_of_memory {
            f.write_str(
                " (OOM: killed for exceeding its memory limit, KERNEL_MEMORY_LIMIT or --kernel-memory-limit-default)",
            )?;
        }
        Ok(())
    }
}

/// Signals a launcher (which forwards them to its kernel's process group). Each provisioner
/// has its own way (a process group here, a remote `kill` over ssh, the Engine's kill call).
pub trait Control: Send + Sync + fmt::Debug {
    /// Sends `signal` to the launcher (its process group), if it is still running. Failures
    /// are logged: a launcher that is already gone needs no signal.
    fn signal(&self, signal: Signal) -> BoxFuture<'_, ()>;

    /// Whether the launcher runs on this host (its reported pgid names a local process group).
    fn is_local(&self) -> bool {
        false
    }

    /// SIGKILL to the kernel's own process group `pgid` where the launcher runs, if its
    /// leader is still that kernel (its environment names `kernel_id`), so a recycled pid is
    /// never hit: what is left when a launcher died before its kernel. Nothing for a
    /// container (it ends whole).
    fn kill_group(&self, pgid: i32, kernel_id: &str) -> BoxFuture<'_, ()> {
        let _ = (pgid, kernel_id);
        Box::pin(std::future::ready(()))
    }
}

/// A started launcher.
#[derive(Debug)]
pub struct Launched {
    /// Becomes `Some` when the launcher has exited (and was reaped).
    pub exit: watch::Receiver<Option<ExitInfo>>,
    /// Its stderr tail.
    pub log: LogTail,
    /// Signalling.
    pub control: Box<dyn Control>,
    /// The host at which the kernel's ZeroMQ and comm ports are reachable (EG likewise
    /// replaces the payload's `ip` with the host's address).
    pub host: String,
    /// How to find this launcher again after a gateway restart.
    pub placement: Placement,
}

/// Starts launchers somewhere, and finds them again after a gateway restart.
pub trait Provision: Send + Sync {
    /// Starts one launcher.
    fn launch(
        &self,
        request: LaunchRequest,
    ) -> impl Future<Output = Result<Launched, LaunchError>> + Send;
    /// Finds a launcher started by an earlier run of the gateway, from its recorded
    /// placement, and follows it as if it had just been launched. Fails with
    /// [`LaunchError::Gone`] when it is no longer running.
    fn reattach(
        &self,
        kernel_id: &str,
        placement: &Placement,
    ) -> impl Future<Output = Result<Launched, LaunchError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_read_and_say_oom() {
        assert_eq!(ExitInfo::from_code(137).signal, Some(9));
        assert_eq!(ExitInfo::from_code(64).code, Some(64));
        assert_eq!(ExitInfo::from_code(64).to_string(), "exit code 64");
        let oom = ExitInfo {
            out_of_memory: true,
            ..ExitInfo::from_code(137)
        };
        let text = oom.to_string();
        assert!(text.starts_with("signal 9 (OOM: "), "{text}");
        assert!(text.contains("KERNEL_MEMORY_LIMIT"), "{text}");
    }
}
