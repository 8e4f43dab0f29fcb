//! Provisioners: where and how a launcher process is started.
//!
//! The kernel registry decides *what* to run (the launcher argv and env, from the kernelspec)
//! and *when*; a provisioner decides *where*. [`local::Local`] runs the launcher as a child
//! process in its own process group; other provisioners run it on other hosts or in
//! containers. Each returns a [`Launched`] that reports the launcher's exit, keeps the tail of
//! its log, can signal it, says at which host the kernel's ports are reachable, and carries a
//! [`Placement`]: the few facts the gateway writes to its state file so that, after the
//! gateway itself restarts, [`Provisioner::reattach`] can find the same launcher again.

pub mod docker;
pub mod local;
pub mod ssh;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use tokio::sync::watch;

use crate::kernelspecs::KernelSpec;

/// What to start.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// The kernel id (for logs).
    pub kernel_id: String,
    /// The launcher command line, placeholders filled.
    pub argv: Vec<String>,
    /// Environment added to the launcher's.
    pub env: BTreeMap<String, String>,
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
    /// The placement was written by a provisioner this gateway is not configured with.
    #[error("no provisioner for a {0} placement is configured")]
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

/// The last lines a launcher wrote, for error messages: kept in memory when the output is
/// piped through the gateway, read back from the end of the file when it goes to a file.
#[derive(Debug, Clone, Default)]
pub struct LogTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    file: Option<PathBuf>,
}

impl LogTail {
    /// Lines kept.
    pub const LINES: usize = 20;

    /// A tail read from `path` on demand.
    pub fn file(path: PathBuf) -> Self {
        LogTail {
            lines: Arc::default(),
            file: Some(path),
        }
    }

    /// Appends a line, dropping the oldest beyond [`Self::LINES`].
    pub fn push(&self, line: String) {
        if let Ok(mut l) = self.lines.lock() {
            if l.len() == Self::LINES {
                l.pop_front();
            }
            l.push_back(line);
        }
    }

    /// Replaces the kept lines with `lines` (the last [`Self::LINES`] of them).
    pub fn replace(&self, lines: Vec<String>) {
        if let Ok(mut l) = self.lines.lock() {
            l.clear();
            let skip = lines.len().saturating_sub(Self::LINES);
            l.extend(lines.into_iter().skip(skip));
        }
    }

    /// The kept lines, joined with newlines.
    pub fn text(&self) -> String {
        if let Some(path) = &self.file {
            return file_tail(path, Self::LINES);
        }
        self.lines
            .lock()
            .map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

/// The last `lines` lines of `path` (at most the last 64 KiB are read).
fn file_tail(path: &std::path::Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 64 * 1024;
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(MAX))).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.take(MAX).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
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
    /// The host at which the kernel's ZeroMQ and comm ports are reachable (EG likewise
    /// replaces the payload's `ip` with the host's address).
    pub host: String,
    /// How to find this launcher again after a gateway restart.
    pub placement: Placement,
}

/// Starts launchers somewhere.
pub trait Provisioner: Send + Sync + fmt::Debug + 'static {
    /// Starts one launcher.
    fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError>;
    /// Finds a launcher started by an earlier run of the gateway, from its recorded
    /// placement, and follows it as if it had just been launched. Fails with
    /// [`LaunchError::Gone`] when it is no longer running.
    fn reattach(&self, kernel_id: &str, placement: &Placement) -> Result<Launched, LaunchError>;
}

/// The configured provisioners, and which one runs a given kernelspec.
///
/// A kernelspec chooses by its `metadata.process_proxy.class_name`, the field Enterprise
/// Gateway uses, so EG kernelspecs keep working unchanged; a spec without one runs locally.
#[derive(Debug, Clone)]
pub struct Provisioners {
    /// Runs launchers on this host.
    pub local: Arc<dyn Provisioner>,
    /// Runs launchers on remote hosts over SSH (`DistributedProcessProxy` specs).
    pub ssh: Option<Arc<ssh::Ssh>>,
    /// Runs launchers as containers (`DockerProcessProxy` and `DockerSwarmProcessProxy`
    /// specs; Swarm ones run as plain containers too).
    pub docker: Option<Arc<docker::Docker>>,
}

impl Provisioners {
    /// The provisioner for `spec`.
    ///
    /// `DistributedProcessProxy` specs run over SSH on the spec's own
    /// `metadata.process_proxy.config.remote_hosts` (a comma-separated string as in EG, or a
    /// list) or else on `--remote-hosts`. With neither, they run on this host: EG would ssh
    /// to `localhost`, which needs sshd and keys for no gain.
    pub fn for_spec(&self, spec: &KernelSpec) -> Result<Arc<dyn Provisioner>, LaunchError> {
        let class = spec.process_proxy.as_deref().unwrap_or_default();
        if class.ends_with("DockerProcessProxy") || class.ends_with("DockerSwarmProcessProxy") {
            let docker = self
                .docker
                .clone()
                .ok_or(LaunchError::Unsupported("docker"))?;
            let image = spec
                .proxy_config
                .get("image_name")
                .and_then(serde_json::Value::as_str)
                .filter(|i| !i.is_empty())
                .map(str::to_owned);
            return Ok(Arc::new(docker::DockerFor { docker, image }));
        }
        if class.ends_with("DistributedProcessProxy") {
            let own = spec_hosts(spec)?;
            if let Some(ssh) = &self.ssh {
                if !own.is_empty() {
                    return Ok(Arc::new(ssh::SshOn {
                        ssh: ssh.clone(),
                        hosts: own,
                    }));
                }
                if !ssh.hosts().is_empty() {
                    return Ok(ssh.clone());
                }
            }
            tracing::info!(
                spec = %spec.name,
                "{class} without remote hosts (--remote-hosts): running the kernel on this host"
            );
        }
        Ok(self.local.clone())
    }

    /// The provisioner that made `placement`.
    pub fn for_placement(
        &self,
        placement: &Placement,
    ) -> Result<Arc<dyn Provisioner>, LaunchError> {
        match placement {
            Placement::Local { .. } => Ok(self.local.clone()),
            Placement::Ssh { .. } => match &self.ssh {
                Some(ssh) => Ok(ssh.clone()),
                None => Err(LaunchError::Unsupported("ssh")),
            },
            Placement::Docker { .. } => match &self.docker {
                Some(docker) => Ok(docker.clone()),
                None => Err(LaunchError::Unsupported("docker")),
            },
        }
    }
}

/// A spec's own `metadata.process_proxy.config.remote_hosts`.
fn spec_hosts(spec: &KernelSpec) -> Result<Vec<String>, LaunchError> {
    let bad = |message: String| LaunchError::Remote {
        host: String::new(),
        message: format!(
            "kernelspec {}: metadata.process_proxy.config.remote_hosts: {message}",
            spec.name
        ),
    };
    match spec.proxy_config.get("remote_hosts") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::String(s)) => ssh::parse_hosts(s).map_err(bad),
        Some(serde_json::Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                let h = item
                    .as_str()
                    .ok_or_else(|| bad(format!("{item} is not a string")))?;
                out.extend(ssh::parse_hosts(h).map_err(bad)?);
            }
            Ok(out)
        }
        Some(other) => Err(bad(format!(
            "{other} is neither a comma-separated string nor a list"
        ))),
    }
}
