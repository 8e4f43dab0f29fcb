//! Provisioners: where and how a launcher process is started.
//!
//! The kernel registry decides *what* to run (the launcher argv and env, from the kernelspec)
//! and *when*; a provisioner decides *where*. [`local::Local`] runs the launcher as a child
//! process in its own process group, [`ssh::Ssh`] on one of a list of hosts (through
//! [`local::Local`] when the host chosen is this machine), [`docker::Docker`] as a container or
//! a Swarm service. Each returns a [`Launched`] that reports the launcher's exit, keeps the tail
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
pub mod launched;
pub mod local;
pub mod output;
pub mod ssh;

use std::sync::Arc;

use crate::kernelspecs::{KernelSpec, Runner};
pub use launched::{Control, ExitInfo, LaunchError, LaunchRequest, Launched, Placement, Provision};
pub use output::LogTail;

/// The provisioner chosen for one kernelspec (or one recorded placement).
#[derive(Debug, Clone)]
pub enum Provisioner {
    /// This host.
    Local(Arc<local::Local>),
    /// Remote hosts: the kernelspec's own list, or the configured ones.
    Ssh(Distributed),
    /// Containers, with the kernelspec's `image_name`.
    Docker(Arc<docker::Docker>, Option<String>),
    /// Swarm services, with the kernelspec's `image_name` and placement rules.
    Swarm(Arc<docker::Docker>, Option<String>, docker::SwarmSpec),
}

impl Provisioner {
    /// Starts one launcher.
    pub async fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError> {
        match self {
            Provisioner::Local(p) => p.launch(request).await,
            Provisioner::Ssh(d) => d.launch(request).await,
            Provisioner::Docker(p, image) => p.launch_with(image.as_deref(), None, request).await,
            Provisioner::Swarm(p, image, spec) => {
                p.launch_with(image.as_deref(), Some(spec), request).await
            }
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
            Provisioner::Ssh(d) => d.ssh.reattach(kernel_id, placement).await,
            Provisioner::Docker(p, _) | Provisioner::Swarm(p, _, _) => {
                p.reattach(kernel_id, placement).await
            }
        }
    }
}

/// `DistributedProcessProxy` launches: SSH to one of the hosts, or this host's own
/// provisioner when the host chosen is this machine (as Enterprise Gateway runs such a kernel
/// locally), so a host list naming `localhost` works without sshd.
#[derive(Debug, Clone)]
pub struct Distributed {
    /// The SSH provisioner: host choice, balancing, remote launches.
    pub ssh: Arc<ssh::Ssh>,
    /// The kernelspec's own hosts; `None`: the configured ones.
    pub hosts: Option<Arc<[String]>>,
    /// Runs the launcher when the chosen host is this machine.
    pub local: Arc<local::Local>,
}

impl Distributed {
    /// Chooses a host and starts the launcher there. A launcher started locally this way is
    /// an ordinary local one (its placement too, so a restarted gateway re-attaches to it as
    /// to any local launcher); it counts as a live kernel of its host for least-connection
    /// balancing while it runs.
    async fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError> {
        let hosts: &[String] = match &self.hosts {
            Some(h) => h,
            None => self.ssh.hosts(),
        };
        let host = self.ssh.choose(hosts)?;
        if self.ssh.is_this_machine(&host).await {
            tracing::info!(
                kernel_id = %request.kernel_id,
                %host,
                "remote host {host} is this machine: launching the kernel locally, without ssh"
            );
            let launched = self.local.launch(request).await?;
            self.ssh.count_while_running(&host, &launched);
            return Ok(launched);
        }
        self.ssh.launch_at(host, hosts, request).await
    }
}

/// The configured provisioners, and which one runs a given kernelspec.
///
/// A kernelspec chooses by its `metadata.process_proxy.class_name` (the field Enterprise
/// Gateway uses, so EG kernelspecs keep working unchanged) or its
/// `metadata.kernel_provisioner.provisioner_name` (see [`crate::kernelspecs::proxy`]); a spec
/// with neither runs locally, and a spec asking for a placement gateway-lite does not do is
/// refused, never run somewhere else.
#[derive(Debug, Clone)]
pub struct Provisioners {
    /// Runs launchers on this host.
    pub local: Arc<local::Local>,
    /// Runs launchers on remote hosts over SSH (`DistributedProcessProxy` specs).
    pub ssh: Arc<ssh::Ssh>,
    /// Runs launchers as containers (`DockerProcessProxy` specs) and Swarm services
    /// (`DockerSwarmProcessProxy` specs).
    pub docker: Arc<docker::Docker>,
}

impl Provisioners {
    /// The provisioner for `spec`.
    ///
    /// `DistributedProcessProxy` specs run over SSH on the spec's own
    /// `metadata.process_proxy.config.remote_hosts` (a comma-separated string as in EG, or a
    /// list) or else on `--remote-hosts`; a host that is this machine runs the kernel locally.
    /// With no hosts at all, they run on this host: EG would ssh to `localhost`, which needs
    /// sshd and keys for no gain.
    pub fn for_spec(&self, spec: &KernelSpec) -> Result<Provisioner, LaunchError> {
        match &spec.runner {
            Runner::Local => Ok(Provisioner::Local(self.local.clone())),
            Runner::Docker => Ok(Provisioner::Docker(self.docker.clone(), spec_image(spec))),
            Runner::Swarm => {
                let rules = docker::SwarmSpec::from_config(&spec.proxy_config)
                    .map_err(|e| LaunchError::Docker(format!("kernelspec {}: {e}", spec.name)))?;
                Ok(Provisioner::Swarm(
                    self.docker.clone(),
                    spec_image(spec),
                    rules,
                ))
            }
            Runner::Ssh => {
                let own = spec_hosts(spec)?;
                let hosts = if !own.is_empty() {
                    Some(own.into())
                } else if !self.ssh.hosts().is_empty() {
                    None
                } else {
                    tracing::info!(
                        spec = %spec.name,
                        "a DistributedProcessProxy kernelspec without remote hosts (--remote-hosts): running the kernel on this host"
                    );
                    return Ok(Provisioner::Local(self.local.clone()));
                };
                Ok(Provisioner::Ssh(Distributed {
                    ssh: self.ssh.clone(),
                    hosts,
                    local: self.local.clone(),
                }))
            }
            Runner::Refused(why) => Err(LaunchError::Refused(format!(
                "kernelspec {}: {why}",
                spec.name
            ))),
        }
    }

    /// The provisioner that made `placement`.
    pub fn for_placement(&self, placement: &Placement) -> Provisioner {
        match placement {
            Placement::Local { .. } => Provisioner::Local(self.local.clone()),
            Placement::Ssh { .. } => Provisioner::Ssh(Distributed {
                ssh: self.ssh.clone(),
                hosts: None,
                local: self.local.clone(),
            }),
            Placement::Docker { .. } | Placement::Swarm { .. } => {
                Provisioner::Docker(self.docker.clone(), None)
            }
        }
    }
}

/// A Docker spec's own `image_name`.
fn spec_image(spec: &KernelSpec) -> Option<String> {
    spec.proxy_config
        .get("image_name")
        .and_then(serde_json::Value::as_str)
        .filter(|i| !i.is_empty())
        .map(str::to_owned)
}

/// A spec's own `remote_hosts` (in `metadata.process_proxy.config` or
/// `metadata.kernel_provisioner.config`).
fn spec_hosts(spec: &KernelSpec) -> Result<Vec<String>, LaunchError> {
    use crate::config::names::parse_hosts;
    let bad = |message: String| LaunchError::Remote {
        host: String::new(),
        message: format!("kernelspec {}: config.remote_hosts: {message}", spec.name),
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
