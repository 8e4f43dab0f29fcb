//! Kernels as plain containers: create and start one, follow its log and its exit, signal
//! it, find it again after a gateway restart.
//!
//! One tracked task per container follows its log stream into the gateway's log and the
//! stderr tail (through the shared bounded line reader); the stream ends when the container
//! stops, and the wait call then gives the exit code, and the inspect whether the kernel was
//! killed for its memory limit (`State.OOMKilled`). The container is removed after its exit
//! (the tail was read first, so a launch error still shows it) and when it is stopped;
//! signals go through the kill call, which reaches the launcher (PID 1), which forwards them
//! to the kernel.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, KillContainerOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use tokio::sync::watch;

use super::resources::KernelResources;
use super::{API_TIMEOUT, Docker, REATTACH_TAIL, request};
use crate::provisioner::launched::{
    Control, ExitInfo, LaunchError, LaunchRequest, Launched, Placement,
};
use crate::provisioner::output::{self, LineSplitter, LogTail};

/// What the Engine says about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ContainerState {
    pub(super) id: String,
    pub(super) running: bool,
    /// Killed for exceeding its memory limit.
    pub(super) oom_killed: bool,
    /// Address per network.
    networks: HashMap<String, String>,
}

impl ContainerState {
    pub(super) fn from_inspect(c: &bollard::models::ContainerInspectResponse) -> Option<Self> {
        let networks = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .map(|m| {
                m.iter()
                    .filter_map(|(name, e)| {
                        let ip = e.ip_address.as_deref().filter(|ip| !ip.is_empty())?;
                        Some((name.clone(), ip.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(ContainerState {
            id: c.id.clone()?,
            running: c.state.as_ref().and_then(|s| s.running).unwrap_or(false),
            oom_killed: c.state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false),
            networks,
        })
    }

    /// The address on `network`; for the default network (`bridge`), the only address.
    pub(super) fn ip_on(&self, network: &str) -> Option<String> {
        if let Some(ip) = self.networks.get(network) {
            return Some(ip.clone());
        }
        (self.networks.len() == 1 && network == "bridge")
            .then(|| self.networks.values().next().cloned())
            .flatten()
    }
}

impl Docker {
    /// Starts a launcher container for `request` with `image` (chosen and allowed) and
    /// `resources` (resolved).
    pub(super) async fn launch_container(
        &self,
        request: LaunchRequest,
        image: String,
        resources: KernelResources,
    ) -> Result<Launched, LaunchError> {
        let s = &*self.settings;
        let client = self.client().await?;
        let network = self.network_for(&client, &request).await?;
        let mut body = request::container_body(s, &request, &image, &network)?;
        if let Some(host) = body.host_config.as_mut() {
            resources.apply_to(host);
        }
        let name = format!("{}-{}", s.name_prefix, request.kernel_id);
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = match client
            .create_container(Some(options.clone()), body.clone())
            .await
        {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                // A container of an earlier incarnation of this kernel id (a restart whose old
                // container could not be removed): it is being replaced.
                tracing::warn!(kernel_id = %request.kernel_id, container = %name, "removing a leftover container of the same name");
                self.remove(&client, &name).await;
                client.create_container(Some(options), body).await
            }
            other => other,
        }
        .map_err(|e| Self::fail(format!("creating a container of {image}: {e}")))?;
        if let Err(e) = client.start_container(&created.id, None).await {
            self.remove(&client, &created.id).await;
            return Err(Self::fail(format!("starting container {name}: {e}")));
        }
        tracing::info!(kernel_id = %request.kernel_id, container = %name, %image, %network, "container started");
        // The container may already have exited (a launcher that fails at once): then it has
        // no address, and the follower reports the exit with its log.
        let host = match self.inspect(&client, &created.id).await? {
            Some(state) if state.running => match state.ip_on(&network) {
                Some(ip) => ip,
                None => {
                    self.remove(&client, &created.id).await;
                    return Err(Self::fail(format!(
                        "container {name} has no address on network {network}"
                    )));
                }
            },
            _ => String::from("0.0.0.0"),
        };
        Ok(self.follow(
            client,
            request.kernel_id,
            created.id,
            name,
            network,
            host,
            None,
        ))
    }

    /// Starts the follower of container `id` (log stream, then wait, then removal), and
    /// returns its [`Launched`].
    #[allow(clippy::too_many_arguments)]
    fn follow(
        &self,
        client: bollard::Docker,
        kernel_id: String,
        id: String,
        name: String,
        network: String,
        host: String,
        tail: Option<usize>,
    ) -> Launched {
        let log = LogTail::default();
        let exited = Arc::new(AtomicBool::new(false));
        let (tx, rx) = watch::channel(None);
        let docker = self.clone();
        let (flag, tail_log, cid, c) = (exited.clone(), log.clone(), id.clone(), client.clone());
        self.tasks.spawn_until_stopped(async move {
            follow_logs(&c, &kernel_id, &cid, tail, &tail_log).await;
            // The log stream ends when the container stops (or the engine went away); the
            // wait returns at once in the first case and waits for the stop in the second.
            let mut info = wait(&c, &cid).await;
            // Killed by the kernel's OOM killer at the container's memory limit: the reason
            // the kernel died, for the log, the kernel model and its clients.
            if let Ok(Some(state)) = docker.inspect(&c, &cid).await {
                info.out_of_memory = state.oom_killed;
            }
            flag.store(true, Ordering::SeqCst);
            tracing::info!(kernel_id = %kernel_id, container = %cid, "container ended: {info}");
            // The tail is in memory, so the container can go before the exit is published;
            // removing first also frees the name for a restart under the same kernel id.
            docker.remove(&c, &cid).await;
            let _ = tx.send(Some(info));
        });
        Launched {
            exit: rx,
            log,
            control: Box::new(DockerControl {
                client,
                container: id,
                exited,
            }),
            host: host.clone(),
            placement: Placement::Docker {
                container: name,
                network,
                host,
            },
        }
    }

    pub(super) async fn remove(&self, client: &bollard::Docker, id: &str) {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match client.remove_container(id, Some(options)).await {
            Ok(()) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            // Removal already under way (the follower and a launch error both remove).
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            Err(e) => tracing::warn!(container = id, "removing the container failed: {e}"),
        }
    }

    /// The container's state, `None` when there is no such container.
    pub(super) async fn inspect(
        &self,
        client: &bollard::Docker,
        id: &str,
    ) -> Result<Option<ContainerState>, LaunchError> {
        match client
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(ContainerState::from_inspect(&c)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(Self::fail(format!("inspecting container {id}: {e}"))),
        }
    }
    /// Finds the container of `placement` again and follows it.
    pub(super) async fn reattach_container(
        &self,
        kernel_id: &str,
        container: &str,
        network: &str,
        host: &str,
    ) -> Result<Launched, LaunchError> {
        if network != self.settings.network && !self.settings.network_per_user {
            tracing::warn!(kernel_id, %container, recorded = %network, configured = %self.settings.network, "the container was started on another network; following it there");
        }
        let client = self.client().await?;
        let state = match self.inspect(&client, container).await? {
            Some(s) => s,
            None => return Err(LaunchError::Gone(format!("container {container} is gone"))),
        };
        if !state.running {
            // It ended while the gateway was away: nobody will read its log any more.
            self.remove(&client, container).await;
            return Err(LaunchError::Gone(format!(
                "container {container} is no longer running"
            )));
        }
        // The address as recorded (the kernel's endpoints use it); a container that is
        // momentarily off its network has none, which is not a reason to give it up.
        let now = state.ip_on(network).unwrap_or_else(|| host.to_owned());
        if now != host {
            tracing::warn!(kernel_id, %container, recorded = %host, now = %now, "the container's address changed");
        }
        tracing::info!(kernel_id, %container, "re-attached to a running container");
        let mut launched = self.follow(
            client,
            kernel_id.to_owned(),
            state.id,
            container.to_owned(),
            network.to_owned(),
            now,
            Some(REATTACH_TAIL),
        );
        launched.placement = Placement::Docker {
            container: container.to_owned(),
            network: network.to_owned(),
            host: launched.host.clone(),
        };
        Ok(launched)
    }
}

/// Streams a container's stdout and stderr into the gateway's log (stderr into `log` too),
/// until the container stops.
async fn follow_logs(
    client: &bollard::Docker,
    kernel_id: &str,
    id: &str,
    tail: Option<usize>,
    log: &LogTail,
) {
    let tail = tail.map_or_else(|| "all".to_owned(), |n| n.to_string());
    let options = LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .tail(&tail)
        .build();
    let mut pump = LogPump::new(kernel_id, log);
    let mut stream = client.logs(id, Some(options));
    while let Some(item) = stream.next().await {
        if !pump.push(item) {
            break;
        }
    }
    pump.finish();
}

/// Splits a log stream of the Engine (a container's or a service's) into lines for the
/// gateway's log, stderr also into the kernel's tail.
pub(super) struct LogPump<'a> {
    kernel_id: &'a str,
    log: &'a LogTail,
    out: LineSplitter,
    err: LineSplitter,
}

impl<'a> LogPump<'a> {
    pub(super) fn new(kernel_id: &'a str, log: &'a LogTail) -> Self {
        LogPump {
            kernel_id,
            log,
            out: LineSplitter::default(),
            err: LineSplitter::default(),
        }
    }

    /// Takes one item of the stream; `false` when the stream failed.
    pub(super) fn push(
        &mut self,
        item: Result<bollard::container::LogOutput, bollard::errors::Error>,
    ) -> bool {
        match item {
            Ok(bollard::container::LogOutput::StdErr { message }) => {
                for line in self.err.push(&message) {
                    output::log_line(self.kernel_id, line, Some(self.log));
                }
            }
            Ok(
                bollard::container::LogOutput::StdOut { message }
                | bollard::container::LogOutput::Console { message },
            ) => {
                for line in self.out.push(&message) {
                    output::log_line(self.kernel_id, line, None);
                }
            }
            Ok(bollard::container::LogOutput::StdIn { .. }) => {}
            Err(e) => {
                tracing::debug!(kernel_id = self.kernel_id, "log stream ended: {e}");
                return false;
            }
        }
        true
    }

    /// Flushes unterminated last lines.
    pub(super) fn finish(mut self) {
        if let Some(line) = self.err.finish() {
            output::log_line(self.kernel_id, line, Some(self.log));
        }
        if let Some(line) = self.out.finish() {
            output::log_line(self.kernel_id, line, None);
        }
    }
}

/// Waits for the container to stop; its exit.
async fn wait(client: &bollard::Docker, id: &str) -> ExitInfo {
    let mut stream = client.wait_container(id, None);
    let code = match stream.next().await {
        Some(Ok(r)) => Some(r.status_code),
        // bollard reports a non-zero exit as this error.
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Some(code),
        Some(Err(e)) => {
            tracing::warn!(container = id, "waiting for the container failed: {e}");
            None
        }
        None => None,
    };
    // The launcher exits 128+S when its kernel was killed by signal S; a container killed by
    // signal S also reports 128+S.
    code.and_then(|c| i32::try_from(c).ok())
        .map_or(ExitInfo::UNKNOWN, ExitInfo::from_code)
}

/// Signals a container's launcher (PID 1) through the Engine.
#[derive(Debug)]
pub struct DockerControl {
    client: bollard::Docker,
    container: String,
    exited: Arc<AtomicBool>,
}

impl Control for DockerControl {
    fn signal(&self, signal: Signal) -> BoxFuture<'_, ()> {
        Box::pin(self.kill(signal))
    }
}

impl DockerControl {
    /// Delivers `signal` to the container's PID 1, the launcher, which forwards it to the
    /// kernel's process group (SIGKILL is applied by the runtime and stops the whole
    /// container).
    async fn kill(&self, signal: Signal) {
        if self.exited.load(Ordering::SeqCst) {
            return;
        }
        let options = KillContainerOptionsBuilder::new()
            .signal(signal.as_str())
            .build();
        let call = self.client.kill_container(&self.container, Some(options));
        match tokio::time::timeout(Duration::from_secs(API_TIMEOUT), call).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(container = %self.container, "kill {signal}: {e}"),
            Err(_) => tracing::warn!(container = %self.container, "kill {signal} timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ContainerInspectResponse, ContainerState as State, EndpointSettings, NetworkSettings,
    };

    #[test]
    fn inspect_output() {
        let net = |ip: &str| EndpointSettings {
            ip_address: Some(ip.into()),
            ..EndpointSettings::default()
        };
        let c = ContainerInspectResponse {
            id: Some("abc".into()),
            state: Some(State {
                running: Some(true),
                ..State::default()
            }),
            network_settings: Some(NetworkSettings {
                networks: Some(HashMap::from([
                    ("net1".to_owned(), net("10.1.0.2")),
                    ("net2".to_owned(), net("")),
                ])),
                ..NetworkSettings::default()
            }),
            ..ContainerInspectResponse::default()
        };
        let st = ContainerState::from_inspect(&c).unwrap();
        assert!(st.running);
        assert_eq!(st.ip_on("net1").as_deref(), Some("10.1.0.2"));
        assert_eq!(st.ip_on("net2"), None);
        assert_eq!(
            st.ip_on("bridge"),
            Some("10.1.0.2".into()),
            "the only address"
        );
        assert_eq!(
            ContainerState::from_inspect(&ContainerInspectResponse::default()),
            None
        );
    }
}
