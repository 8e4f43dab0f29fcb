//! The Docker provisioner: each kernel runs as a container whose entrypoint is
//! `kernel-launcher` (`images/python-kernel/build.sh` builds such an image).
//!
//! Enterprise Gateway's Docker kernelspecs (`DockerProcessProxy`, `DockerSwarmProcessProxy`)
//! have an argv that runs EG's `launch_docker.py`, which starts the container through the
//! Docker API and exits. gateway-lite does not run that script: it starts the container
//! itself, passing what the script would have put in the container's environment
//! ([`request`] builds it). A spec that is not EG's (gateway-lite wrapped it as
//! `kernel-launcher ... -- ARGV`) has `ARGV` passed as the container's command (`-- ARGV`), so
//! the launcher inside runs it; an EG spec leaves the image's default command (ipykernel for
//! `KERNEL_LANGUAGE=python`). Swarm specs are run as plain containers: there is no Swarm
//! service, and `EG_DOCKER_MODE` is not consulted.
//!
//! The Docker Engine API is spoken directly over its Unix socket with `bollard` (the async
//! client on the same hyper stack as the gateway's HTTP server), not by running the `docker`
//! CLI: a start is two API calls on the runtime instead of a blocking `docker run` (~0.5 s of
//! a runtime worker each), and logs, exit and signals are streams and calls, not children.
//! The client negotiates the API version once, so older engines (Debian's 20.10 speaks
//! 1.41) work.
//!
//! The image is the request's `KERNEL_IMAGE`, else the spec's
//! `metadata.process_proxy.config.image_name`, else `--docker-image` (EG's order, with
//! `EG_KERNEL_IMAGE` as the last). The container runs as `KERNEL_UID:KERNEL_GID` (EG's
//! defaults 1000:100; 0 is refused, as EG's default `EG_PROHIBITED_UIDS`/`GIDS` do), is
//! named `<prefix>-<kernel id>`, carries EG's labels (`kernel_id`, `component=kernel`,
//! `app=gateway-lite`) plus `--docker-label`s, and joins `--docker-network` (or, with
//! `--docker-network-per-user`, a network of its `KERNEL_USERNAME`'s own, so one user's
//! kernels cannot reach another's). It runs with every capability dropped,
//! `no-new-privileges` (a setuid binary in the image gains nothing) and, unless
//! `--docker-writable-root`, a read-only root filesystem with a private `/tmp`. A request's
//! `KERNEL_IMAGE` must be one of the `--docker-image`s. The kernel is
//! reached at the container's address on that network, so the response address
//! (`--response-ip`) must be an address containers can reach, e.g. the network's gateway
//! address on this host.
//!
//! One tracked task per container follows its log stream into the gateway's log and the
//! stderr tail (through the shared bounded line reader); the stream ends when the container
//! stops, and the wait call then gives the exit code. The container is removed after its exit
//! (the tail was read first, so a launch error still shows it) and when it is stopped;
//! signals go through the kill call, which reaches the launcher (PID 1), which forwards them
//! to the kernel.

mod request;

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
use tokio::sync::{Mutex, watch};

use super::launched::{
    Control, ExitInfo, LaunchError, LaunchRequest, Launched, Placement, Provision,
};
use super::output::{self, LineSplitter, LogTail};
use crate::config::DockerSettings;
use crate::config::names::valid_image;
use crate::tasks::Tasks;

/// Seconds one Engine API call may take before a response arrives.
const API_TIMEOUT: u64 = 120;
/// Lines of an existing container's log read when re-attaching.
const REATTACH_TAIL: usize = 20;

/// Runs launchers as Docker containers.
#[derive(Debug, Clone)]
pub struct Docker {
    settings: Arc<DockerSettings>,
    /// Connected (and version-negotiated) at first use: a gateway without Docker kernelspecs
    /// never needs the socket.
    client: Arc<Mutex<Option<bollard::Docker>>>,
    /// Held while a user's network is looked up and created.
    networks: Arc<Mutex<()>>,
    tasks: Tasks,
}

/// What the Engine says about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ContainerState {
    id: String,
    running: bool,
    /// Address per network.
    networks: HashMap<String, String>,
}

impl ContainerState {
    fn from_inspect(c: &bollard::models::ContainerInspectResponse) -> Option<Self> {
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
            networks,
        })
    }

    /// The address on `network`; for the default network (`bridge`), the only address.
    fn ip_on(&self, network: &str) -> Option<String> {
        if let Some(ip) = self.networks.get(network) {
            return Some(ip.clone());
        }
        (self.networks.len() == 1 && network == "bridge")
            .then(|| self.networks.values().next().cloned())
            .flatten()
    }
}

impl Docker {
    /// A provisioner with these settings; its followers run on `tasks`.
    pub fn new(settings: DockerSettings, tasks: Tasks) -> Self {
        Docker {
            settings: Arc::new(settings),
            client: Arc::default(),
            networks: Arc::default(),
            tasks,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &DockerSettings {
        &self.settings
    }

    fn fail(message: impl Into<String>) -> LaunchError {
        LaunchError::Docker(message.into())
    }

    /// The Engine API client, connected at first use.
    async fn client(&self) -> Result<bollard::Docker, LaunchError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let socket = self.settings.socket.to_string_lossy().into_owned();
        let c =
            bollard::Docker::connect_with_unix(&socket, API_TIMEOUT, bollard::API_DEFAULT_VERSION)
                .map_err(|e| {
                    Self::fail(format!(
                        "cannot use the Docker socket {socket} (--docker-host): {e}"
                    ))
                })?
                .negotiate_version()
                .await
                .map_err(|e| {
                    Self::fail(format!(
                        "the Docker Engine at {socket} does not answer: {e}"
                    ))
                })?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Starts a launcher container for `request`, with the kernelspec's image `spec_image`.
    pub async fn launch_with(
        &self,
        spec_image: Option<&str>,
        request: LaunchRequest,
    ) -> Result<Launched, LaunchError> {
        let s = &*self.settings;
        let asked = request
            .env
            .get("KERNEL_IMAGE")
            .map(String::as_str)
            .filter(|i| !i.is_empty());
        if let Some(i) = asked.filter(|i| !s.allowed_images.iter().any(|a| a == i)) {
            return Err(Self::fail(format!(
                "KERNEL_IMAGE {i:?} is not an allowed image; the operator allows them with --docker-image (allowed: {:?})",
                s.allowed_images
            )));
        }
        let image = asked
            .or(spec_image)
            .or(s.image.as_deref())
            .ok_or_else(|| {
                Self::fail(
                    "no image: set metadata.process_proxy.config.image_name in the kernelspec, \
                     KERNEL_IMAGE in the request, or --docker-image",
                )
            })?
            .to_owned();
        if !valid_image(&image) {
            return Err(Self::fail(format!(
                "{image:?} is not a valid image reference"
            )));
        }
        let client = self.client().await?;
        let network = self.network_for(&client, &request).await?;
        let body = request::container_body(s, &request, &image, &network)?;
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

    /// The network of `request`'s container: `--docker-network`, or with
    /// `--docker-network-per-user` its user's own (created the first time it is needed).
    async fn network_for(
        &self,
        client: &bollard::Docker,
        request: &LaunchRequest,
    ) -> Result<String, LaunchError> {
        let s = &*self.settings;
        if !s.network_per_user {
            return Ok(s.network.clone());
        }
        let user = request
            .env
            .get("KERNEL_USERNAME")
            .map(String::as_str)
            .unwrap_or_default();
        let name = request::user_network(&s.name_prefix, user);
        // One at a time: the engine accepts two networks of one name, then refuses both.
        let _one = self.networks.lock().await;
        match client
            .inspect_network(
                &name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(_) => return Ok(name),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(Self::fail(format!("inspecting network {name}: {e}"))),
        }
        let labels = HashMap::from([
            ("app".to_owned(), "gateway-lite".to_owned()),
            ("kernel_user".to_owned(), user.to_owned()),
        ]);
        let create = bollard::models::NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            labels: Some(labels),
            ..Default::default()
        };
        match client.create_network(create).await {
            Ok(_) => {
                tracing::info!(network = %name, user, "created the user's kernel network");
                Ok(name)
            }
            Err(e) => Err(Self::fail(format!("creating network {name}: {e}"))),
        }
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
            let info = wait(&c, &cid).await;
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

    async fn remove(&self, client: &bollard::Docker, id: &str) {
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
    async fn inspect(
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
}

impl Provision for Docker {
    async fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError> {
        self.launch_with(None, request).await
    }

    async fn reattach(
        &self,
        kernel_id: &str,
        placement: &Placement,
    ) -> Result<Launched, LaunchError> {
        let Placement::Docker {
            container,
            network,
            host,
        } = placement
        else {
            return Err(LaunchError::Unsupported("non-docker"));
        };
        if network != &self.settings.network && !self.settings.network_per_user {
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
        let now = state.ip_on(network).unwrap_or_else(|| host.clone());
        if &now != host {
            tracing::warn!(kernel_id, %container, recorded = %host, now = %now, "the container's address changed");
        }
        tracing::info!(kernel_id, %container, "re-attached to a running container");
        let mut launched = self.follow(
            client,
            kernel_id.to_owned(),
            state.id,
            container.clone(),
            network.clone(),
            now,
            Some(REATTACH_TAIL),
        );
        launched.placement = Placement::Docker {
            container: container.clone(),
            network: network.clone(),
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
    let mut stream = client.logs(id, Some(options));
    let (mut out, mut err) = (LineSplitter::default(), LineSplitter::default());
    while let Some(item) = stream.next().await {
        match item {
            Ok(bollard::container::LogOutput::StdErr { message }) => {
                for line in err.push(&message) {
                    output::log_line(kernel_id, line, Some(log));
                }
            }
            Ok(
                bollard::container::LogOutput::StdOut { message }
                | bollard::container::LogOutput::Console { message },
            ) => {
                for line in out.push(&message) {
                    output::log_line(kernel_id, line, None);
                }
            }
            Ok(bollard::container::LogOutput::StdIn { .. }) => {}
            Err(e) => {
                tracing::debug!(kernel_id, container = id, "log stream ended: {e}");
                break;
            }
        }
    }
    if let Some(line) = err.finish() {
        output::log_line(kernel_id, line, Some(log));
    }
    if let Some(line) = out.finish() {
        output::log_line(kernel_id, line, None);
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
