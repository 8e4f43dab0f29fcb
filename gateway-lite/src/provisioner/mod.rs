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
pub mod launched;
pub mod local;
pub mod output;
pub mod ssh;

use std::sync::Arc;

use crate::kernelspecs::KernelSpec;
pub use launched::{Control, ExitInfo, LaunchError, LaunchRequest, Launched, Placement, Provision};
pub use output::LogTail;

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
