//! Provisioners: where and how a launcher process is started.
//!
//! The kernel registry decides *what* to run (the launcher argv and env, from the kernelspec)
//! and *when*; a provisioner decides *where*. [`local::Local`] runs the launcher as a child
//! process in its own process group, [`ssh::Ssh`] on one of a list of hosts, [`docker::Docker`]
//! as a container. Each returns a [`Launched`] that reports the launcher's exit, keeps the tail
//! of its log, can signal it ([`Control`]), says at which host the kernel's ports are
//! reachable, and carries a [`Placement`]: the few facts the gateway writes to its state file
//! so that, after the gateway itself restarts, [`Provision::reattach`] can find the same
//! launcher again.
//!
//! The interface is async all the way: starting a container is an Engine API call, resolving
//! an ssh host runs `ssh -G` and a DNS look-up, and none of it may hold a runtime worker. The
//! tasks a provisioner starts to follow a launcher (its output reader, its reaper or watcher)
//! are spawned on the gateway's [`Tasks`](crate::tasks::Tasks), and every launcher's output
//! goes through the one bounded reader in [`output`].

pub mod docker;
pub mod local;
pub mod output;
pub mod ssh;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::kernelspecs::KernelSpec;
pub use output::LogTail;

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
}

impl ExitInfo {
    /// An exit whose status is not known (the launcher was not our child).
    pub const UNKNOWN: ExitInfo = ExitInfo {
        code: None,
        signal: None,
        retry_elsewhere: false,
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
        }
    }
}

/// Signals a launcher (which forwards them to its kernel's process group).
#[derive(Debug)]
pub enum Control {
    /// A process on this host.
    Local(local::LocalControl),
    /// A launcher on a remote host.
    Ssh(ssh::SshControl),
    /// A container.
    Docker(docker::DockerControl),
}

impl Control {
    /// Sends `signal` to the launcher (its process group), if it is still running. Failures
    /// are logged: a launcher that is already gone needs no signal.
    pub async fn signal(&self, signal: Signal) {
        match self {
            Control::Local(c) => c.signal(signal),
            Control::Ssh(c) => c.signal(signal).await,
            Control::Docker(c) => c.signal(signal).await,
        }
    }

    /// Whether the launcher runs on this host (its reported pgid names a local process group).
    pub fn is_local(&self) -> bool {
        matches!(self, Control::Local(_))
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
    pub control: Control,
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

/// The provisioner chosen for one kernelspec (or one recorded placement).
#[derive(Debug, Clone)]
pub enum Provisioner {
    /// This host.
    Local(Arc<local::Local>),
    /// Remote hosts: the kernelspec's own list, or the configured ones.
    Ssh(Arc<ssh::Ssh>, Option<Arc<[String]>>),
    /// Containers, with the kernelspec's `image_name`.
    Docker(Arc<docker::Docker>, Option<String>),
}

impl Provisioner {
    /// Starts one launcher.
    pub async fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError> {
        match self {
            Provisioner::Local(p) => p.launch(request).await,
            Provisioner::Ssh(p, None) => p.launch(request).await,
            Provisioner::Ssh(p, Some(hosts)) => p.launch_on(hosts, request).await,
            Provisioner::Docker(p, image) => p.launch_with(image.as_deref(), request).await,
        }
    }

    /// See [`Provision::reattach`].
    pub async fn reattach(
        &self,
        kernel_id: &str,
        placement: &Placement,
    ) -> Result<Launched, LaunchError> {
        match self {
            Provisioner::Local(p) => p.reattach(kernel_id, placement).await,
            Provisioner::Ssh(p, _) => p.reattach(kernel_id, placement).await,
            Provisioner::Docker(p, _) => p.reattach(kernel_id, placement).await,
        }
    }
}

/// The configured provisioners, and which one runs a given kernelspec.
///
/// A kernelspec chooses by its `metadata.process_proxy.class_name`, the field Enterprise
/// Gateway uses, so EG kernelspecs keep working unchanged; a spec without one runs locally.
#[derive(Debug, Clone)]
pub struct Provisioners {
    /// Runs launchers on this host.
    pub local: Arc<local::Local>,
    /// Runs launchers on remote hosts over SSH (`DistributedProcessProxy` specs).
    pub ssh: Arc<ssh::Ssh>,
    /// Runs launchers as containers (`DockerProcessProxy` and `DockerSwarmProcessProxy`
    /// specs; Swarm ones run as plain containers too).
    pub docker: Arc<docker::Docker>,
}

impl Provisioners {
    /// The provisioner for `spec`.
    ///
    /// `DistributedProcessProxy` specs run over SSH on the spec's own
    /// `metadata.process_proxy.config.remote_hosts` (a comma-separated string as in EG, or a
    /// list) or else on `--remote-hosts`. With neither, they run on this host: EG would ssh
    /// to `localhost`, which needs sshd and keys for no gain.
    pub fn for_spec(&self, spec: &KernelSpec) -> Result<Provisioner, LaunchError> {
        let class = spec.process_proxy.as_deref().unwrap_or_default();
        if class.ends_with("DockerProcessProxy") || class.ends_with("DockerSwarmProcessProxy") {
            let image = spec
                .proxy_config
                .get("image_name")
                .and_then(serde_json::Value::as_str)
                .filter(|i| !i.is_empty())
                .map(str::to_owned);
            return Ok(Provisioner::Docker(self.docker.clone(), image));
        }
        if class.ends_with("DistributedProcessProxy") {
            let own = spec_hosts(spec)?;
            if !own.is_empty() {
                return Ok(Provisioner::Ssh(self.ssh.clone(), Some(own.into())));
            }
            if !self.ssh.hosts().is_empty() {
                return Ok(Provisioner::Ssh(self.ssh.clone(), None));
            }
            tracing::info!(
                spec = %spec.name,
                "{class} without remote hosts (--remote-hosts): running the kernel on this host"
            );
        }
        Ok(Provisioner::Local(self.local.clone()))
    }

    /// The provisioner that made `placement`.
    pub fn for_placement(&self, placement: &Placement) -> Provisioner {
        match placement {
            Placement::Local { .. } => Provisioner::Local(self.local.clone()),
            Placement::Ssh { .. } => Provisioner::Ssh(self.ssh.clone(), None),
            Placement::Docker { .. } => Provisioner::Docker(self.docker.clone(), None),
        }
    }
}

/// A spec's own `metadata.process_proxy.config.remote_hosts`.
fn spec_hosts(spec: &KernelSpec) -> Result<Vec<String>, LaunchError> {
    use crate::config::names::parse_hosts;
    let bad = |message: String| LaunchError::Remote {
        host: String::new(),
        message: format!(
            "kernelspec {}: metadata.process_proxy.config.remote_hosts: {message}",
            spec.name
        ),
    };
    match spec.proxy_config.get("remote_hosts") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::String(s)) => parse_hosts(s).map_err(bad),
        Some(serde_json::Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                let h = item
                    .as_str()
                    .ok_or_else(|| bad(format!("{item} is not a string")))?;
                out.extend(parse_hosts(h).map_err(bad)?);
            }
            Ok(out)
        }
        Some(other) => Err(bad(format!(
            "{other} is neither a comma-separated string nor a list"
        ))),
    }
}
