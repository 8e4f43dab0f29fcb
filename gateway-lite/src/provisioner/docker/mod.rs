//! The Docker provisioner: each kernel runs as a container, or as a Swarm service, whose
//! entrypoint is `kernel-launcher` (`images/python-kernel/build.sh` builds such an image).
//!
//! Enterprise Gateway's Docker kernelspecs (`DockerProcessProxy`, `DockerSwarmProcessProxy`)
//! have an argv that runs EG's `launch_docker.py`, which starts the container (or service)
//! through the Docker API and exits. gateway-lite does not run that script: it starts the
//! container or service itself, passing what the script would have put in its environment
//! ([`request`] builds it). A spec that is not EG's (gateway-lite wrapped it as
//! `kernel-launcher ... -- ARGV`) has `ARGV` passed as the container's command (`-- ARGV`), so
//! the launcher inside runs it; an EG spec leaves the image's default command (ipykernel for
//! `KERNEL_LANGUAGE=python`). `DockerProcessProxy` and `docker-provisioner` specs run as
//! plain containers ([`container`]); `DockerSwarmProcessProxy` and `docker-swarm-provisioner`
//! specs as one-replica Swarm services ([`service`]). `EG_DOCKER_MODE` is not consulted: the
//! spec's class decides.
//!
//! The Docker Engine API is spoken directly over its Unix socket with `bollard` (the async
//! client on the same hyper stack as the gateway's HTTP server), not by running the `docker`
//! CLI: a start is a few API calls on the runtime instead of a blocking `docker run` (~0.5 s
//! of a runtime worker each), and logs, exit and signals are streams and calls, not children.
//! The client negotiates the API version once, so older engines (Debian's 20.10 speaks
//! 1.41) work.
//!
//! The image is the request's `KERNEL_IMAGE`, else the spec's
//! `metadata.process_proxy.config.image_name`, else `--docker-image` (EG's order, with
//! `EG_KERNEL_IMAGE` as the last). The kernel runs as `KERNEL_UID:KERNEL_GID` (EG's
//! defaults 1000:100; 0 is refused, as EG's default `EG_PROHIBITED_UIDS`/`GIDS` do), is
//! named `<prefix>-<kernel id>`, carries EG's labels (`kernel_id`, `component=kernel`,
//! `app=gateway-lite`) plus `--docker-label`s, and joins `--docker-network` (or, with
//! `--docker-network-per-user`, a network of its `KERNEL_USERNAME`'s own, so one user's
//! kernels cannot reach another's; Swarm kernels join `--swarm-network`). It runs with every
//! capability dropped, `no-new-privileges` (a setuid binary in the image gains nothing) and,
//! unless `--docker-writable-root`, a read-only root filesystem with a private `/tmp`. A
//! request's `KERNEL_IMAGE` must be one of the `--docker-image`s. Its CPUs, memory and GPUs
//! come from the request's `KERNEL_CPUS`, `KERNEL_MEMORY`, `KERNEL_GPUS` (and `_LIMIT`
//! forms) within the gateway's defaults and maximums ([`resources`]). The kernel is
//! reached at its address on that network, so the response address (`--response-ip`) must
//! be an address the kernels can reach, e.g. the network's gateway address on this host (or,
//! for Swarm, the gateway's own address on the overlay network).

mod container;
mod request;
mod resources;
mod service;
mod swarm_spec;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;

use super::launched::{LaunchError, LaunchRequest, Launched, Placement, Provision};
use crate::config::DockerSettings;
use crate::config::names::valid_image;
use crate::tasks::Tasks;
use resources::KernelResources;
pub use swarm_spec::SwarmSpec;

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

    /// Starts a launcher for `request`, with the kernelspec's image `spec_image`: a container,
    /// or with `swarm` a Swarm service placed as it says.
    pub async fn launch_with(
        &self,
        spec_image: Option<&str>,
        swarm: Option<&SwarmSpec>,
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
        // Everything the request decides is checked before the Engine is asked for anything.
        let resources = KernelResources::resolve(&request.env, &s.resources)?;
        request::id_from(&request.env, "KERNEL_UID", 1000)?;
        request::id_from(&request.env, "KERNEL_GID", 100)?;
        match swarm {
            None => self.launch_container(request, image, resources).await,
            Some(spec) => {
                let placement = spec.with_request(&request.env)?;
                self.launch_service(request, image, resources, placement)
                    .await
            }
        }
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
}

impl Provision for Docker {
    async fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError> {
        self.launch_with(None, None, request).await
    }

    async fn reattach(
        &self,
        kernel_id: &str,
        placement: &Placement,
    ) -> Result<Launched, LaunchError> {
        match placement {
            Placement::Docker {
                container,
                network,
                host,
            } => {
                self.reattach_container(kernel_id, container, network, host)
                    .await
            }
            Placement::Swarm {
                service,
                name,
                network,
                host,
            } => {
                self.reattach_service(kernel_id, service, name, network, host)
                    .await
            }
            _ => Err(LaunchError::Unsupported("non-docker")),
        }
    }
}
