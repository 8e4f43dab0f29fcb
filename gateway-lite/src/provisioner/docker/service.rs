//! Kernels as Swarm services: create a one-replica service, wait for its task to run, follow
//! its logs and its task's state, signal it, remove it, find it again after a gateway
//! restart.
//!
//! The Engine has no "wait" for a service, so the follower polls the service's tasks every
//! [`POLL`] while it streams the service's logs (which work for a task on any node): the
//! kernel is reported dead when the task is complete, failed, rejected or shut down (or the
//! service is gone), with the container's exit code from the task status, and OOM when the
//! task's container, inspected on this node, was `OOMKilled` (a task on another node is
//! reported by its exit code, 137). The service is then removed. A task that cannot be
//! scheduled (Swarm's "no suitable node": an unknown constraint, resources no node has) fails
//! the start at once, naming the constraints, and its service is removed: nothing is left.
//!
//! The kernel's address is its task's address on the overlay network. The Engine's task
//! model in `bollard` does not carry the network attachments, so it is read from the task's
//! container when the task runs on this node, else resolved through Swarm's DNS as
//! `tasks.<service name>` (answered on the overlay network, where the gateway runs too).
//!
//! Signals go to the task's container through this node's Engine (the launcher, PID 1,
//! forwards them to the kernel); interrupts normally travel as messages to the launcher's
//! comm port and need no signal at all. SIGTERM and SIGKILL for a task on another node remove
//! the service, which stops its task.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bollard::query_parameters::{
    InspectServiceOptions, KillContainerOptionsBuilder, ListTasksOptions, LogsOptionsBuilder,
};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use tokio::sync::watch;

use super::container::LogPump;
use super::resources::KernelResources;
use super::swarm_spec::{self, Placement as SwarmPlacement, Progress};
use super::{API_TIMEOUT, Docker, REATTACH_TAIL, request};
use crate::provisioner::launched::{
    Control, ExitInfo, LaunchError, LaunchRequest, Launched, Placement,
};
use crate::provisioner::output::LogTail;

/// How often a service's task is looked at.
const POLL: Duration = Duration::from_millis(500);
/// How long the last log lines of an ended task may take to arrive (the log stream of a
/// service does not end with its task).
const LOG_DRAIN: Duration = Duration::from_secs(2);
/// A pause in that stream after which no more lines are expected.
const LOG_QUIET: Duration = Duration::from_millis(250);
/// How long a running task's name may take to appear in Swarm's DNS, and a task that just
/// ended to be reported ended, before the gateway says it cannot reach the task.
const DNS_SETTLE: Duration = Duration::from_secs(3);

fn fail(message: impl Into<String>) -> LaunchError {
    LaunchError::Docker(message.into())
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl Docker {
    /// The overlay network of Swarm kernels.
    fn swarm_network(&self) -> &str {
        self.settings
            .swarm_network
            .as_deref()
            .unwrap_or(&self.settings.network)
    }

    /// Starts a launcher as a one-replica Swarm service and waits until its task runs (or
    /// ended, or cannot be scheduled).
    pub(super) async fn launch_service(
        &self,
        request: LaunchRequest,
        image: String,
        resources: KernelResources,
        placement: SwarmPlacement,
    ) -> Result<Launched, LaunchError> {
        let s = &*self.settings;
        let network = self.swarm_network().to_owned();
        if network == "bridge" || network == "host" {
            return Err(fail(format!(
                "Swarm kernels need an attachable overlay network, not {network:?}: create one \
                 (docker network create -d overlay --attachable NAME) and pass it as \
                 --swarm-network or --docker-network"
            )));
        }
        let body = request::container_body(s, &request, &image, &network)?;
        let name = format!("{}-{}", s.name_prefix, request.kernel_id);
        let spec = swarm_spec::service_spec(body, &name, &network, resources.swarm(), &placement);
        let client = self.client().await?;
        let created = match client.create_service(spec.clone(), None).await {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                // A service of an earlier incarnation of this kernel id: it is replaced.
                tracing::warn!(kernel_id = %request.kernel_id, service = %name, "removing a leftover service of the same name");
                remove(&client, &name).await;
                client.create_service(spec, None).await
            }
            other => other,
        }
        .map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 503,
                message,
            } => fail(format!(
                "this Docker Engine is not a Swarm manager ({message}); run `docker swarm init` \
                 or point --docker-host at a manager's socket"
            )),
            e => fail(format!("creating service {name} of {image}: {e}")),
        })?;
        let id = created
            .id
            .ok_or_else(|| fail(format!("the Engine created service {name} without an id")))?;
        tracing::info!(kernel_id = %request.kernel_id, service = %name, %image, %network, "service created");
        let started = self
            .until_running(&client, &id, &name, &network, &placement)
            .await;
        let host = match started {
            Ok(host) => host,
            Err(e) => {
                remove(&client, &id).await;
                return Err(e);
            }
        };
        Ok(self.follow_service(client, request.kernel_id, id, name, network, host, None))
    }

    /// Waits for the service's task to run; its address. A task that ended already gives
    /// `0.0.0.0` (the follower reports the exit with the log).
    async fn until_running(
        &self,
        client: &bollard::Docker,
        id: &str,
        name: &str,
        network: &str,
        placement: &SwarmPlacement,
    ) -> Result<String, LaunchError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(API_TIMEOUT);
        loop {
            match task_progress(client, id).await? {
                Progress::Running { container } => {
                    return self
                        .address(client, id, name, network, container.as_deref())
                        .await;
                }
                Progress::Ended { .. } => return Ok("0.0.0.0".into()),
                Progress::Unschedulable(why) => {
                    return Err(fail(format!(
                        "Swarm cannot place the kernel's service {name}: {why}; its placement \
                         constraints are {:?} (the kernelspec's config.constraints and the \
                         request's KERNEL_SWARM_CONSTRAINTS) and its resources come from \
                         KERNEL_CPUS/MEMORY/GPUS: check them against the nodes' labels and \
                         resources (docker node inspect); the service was removed",
                        placement.constraints
                    )));
                }
                Progress::Waiting => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(fail(format!(
                    "the task of service {name} did not start within {API_TIMEOUT}s; the service was removed"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The task's address on `network`: from its container on this node, else from Swarm's
    /// DNS. `0.0.0.0` when the task ended meanwhile (the follower reports the exit with the
    /// log).
    ///
    /// A kernel that fails at once (a launcher refusing its request exits within
    /// milliseconds) is often seen running by one poll and gone by the next: its container is
    /// stopped and off the network, and `tasks.NAME` no longer resolves. That is an ended
    /// task, not one on another node, so the task's state decides before the error is given.
    async fn address(
        &self,
        client: &bollard::Docker,
        id: &str,
        name: &str,
        network: &str,
        container: Option<&str>,
    ) -> Result<String, LaunchError> {
        if let Some(c) = container
            && let Ok(Some(state)) = self.inspect(client, c).await
        {
            if let Some(ip) = state.ip_on(network) {
                return Ok(ip);
            }
            if !state.running {
                return Ok("0.0.0.0".into());
            }
        }
        let deadline = tokio::time::Instant::now() + DNS_SETTLE;
        loop {
            let lookup = tokio::net::lookup_host((format!("tasks.{name}"), 0)).await;
            if let Some(a) = lookup.ok().and_then(|mut a| a.next()) {
                return Ok(a.ip().to_string());
            }
            if let Progress::Ended { .. } = task_progress(client, id).await? {
                return Ok("0.0.0.0".into());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(fail(format!(
                    "cannot find the address of service {name}'s task on network {network}: it \
                     runs on another node and tasks.{name} does not resolve here; run \
                     gateway-lite on the network {network} (as a Swarm service or an attached \
                     container)"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts the follower of service `id` and returns its [`Launched`].
    #[allow(clippy::too_many_arguments)]
    fn follow_service(
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
        let (flag, tail_log, sid, c) = (exited.clone(), log.clone(), id.clone(), client.clone());
        self.tasks.spawn_until_stopped(async move {
            let info = docker.watch(&c, &kernel_id, &sid, tail, &tail_log).await;
            flag.store(true, Ordering::SeqCst);
            tracing::info!(kernel_id = %kernel_id, service = %sid, "service's task ended: {info}");
            remove(&c, &sid).await;
            let _ = tx.send(Some(info));
        });
        Launched {
            exit: rx,
            log,
            control: Box::new(ServiceControl {
                client,
                service: id.clone(),
                exited,
            }),
            host: host.clone(),
            placement: Placement::Swarm {
                service: id,
                name,
                network,
                host,
            },
        }
    }

    /// Streams the service's logs until its task ended; how it ended.
    async fn watch(
        &self,
        client: &bollard::Docker,
        kernel_id: &str,
        id: &str,
        tail: Option<usize>,
        log: &LogTail,
    ) -> ExitInfo {
        let tail = tail.map_or_else(|| "all".to_owned(), |n| n.to_string());
        let options = LogsOptionsBuilder::new()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let mut stream = client.service_logs(id, Some(options));
        let mut pump = LogPump::new(kernel_id, log);
        let mut streaming = true;
        let mut tick = tokio::time::interval(POLL);
        let ended = loop {
            tokio::select! {
                item = stream.next(), if streaming => match item {
                    Some(item) => streaming = pump.push(item),
                    None => streaming = false,
                },
                _ = tick.tick() => match task_progress(client, id).await {
                    Ok(p @ Progress::Ended { .. }) => break p,
                    Ok(_) => {}
                    // The service was removed under the gateway (or by a shutdown).
                    Err(LaunchError::Gone(_)) => break Progress::Ended { code: None, container: None, error: None },
                    Err(e) => tracing::debug!(kernel_id, service = id, "{e}"),
                },
            }
        };
        if streaming {
            // The last lines come at once or not at all: read until the stream is quiet.
            let _ = tokio::time::timeout(LOG_DRAIN, async {
                while let Ok(Some(item)) = tokio::time::timeout(LOG_QUIET, stream.next()).await {
                    if !pump.push(item) {
                        break;
                    }
                }
            })
            .await;
        }
        pump.finish();
        let Progress::Ended {
            code,
            container,
            error,
        } = ended
        else {
            return ExitInfo::UNKNOWN;
        };
        if let Some(e) = &error {
            log.push(format!("swarm: {e}"));
        }
        let mut info = code
            .and_then(|c| i32::try_from(c).ok())
            .map_or(ExitInfo::UNKNOWN, ExitInfo::from_code);
        if let Some(c) = container
            && let Ok(Some(state)) = self.inspect(client, &c).await
        {
            info.out_of_memory = state.oom_killed;
        }
        info
    }

    /// Finds the service of a recorded placement again and follows it.
    pub(super) async fn reattach_service(
        &self,
        kernel_id: &str,
        service: &str,
        name: &str,
        network: &str,
        host: &str,
    ) -> Result<Launched, LaunchError> {
        let client = self.client().await?;
        match client
            .inspect_service(service, None::<InspectServiceOptions>)
            .await
        {
            Ok(_) => {}
            Err(e) if not_found(&e) => {
                return Err(LaunchError::Gone(format!("service {name} is gone")));
            }
            Err(e) => return Err(fail(format!("inspecting service {name}: {e}"))),
        }
        let now = match task_progress(&client, service).await? {
            Progress::Running { container } => self
                .address(&client, service, name, network, container.as_deref())
                .await
                .unwrap_or_else(|_| host.to_owned()),
            _ => {
                // It ended (or never ran) while the gateway was away.
                remove(&client, service).await;
                return Err(LaunchError::Gone(format!(
                    "the task of service {name} is no longer running"
                )));
            }
        };
        if now != host {
            tracing::warn!(kernel_id, service = %name, recorded = %host, now = %now, "the task's address changed");
        }
        tracing::info!(kernel_id, service = %name, "re-attached to a running service");
        Ok(self.follow_service(
            client,
            kernel_id.to_owned(),
            service.to_owned(),
            name.to_owned(),
            network.to_owned(),
            now,
            Some(REATTACH_TAIL),
        ))
    }
}

/// The state of service `id`'s newest task; [`LaunchError::Gone`] when the service is.
async fn task_progress(client: &bollard::Docker, id: &str) -> Result<Progress, LaunchError> {
    let options = ListTasksOptions {
        filters: Some(HashMap::from([("service".to_owned(), vec![id.to_owned()])])),
    };
    match client.list_tasks(Some(options)).await {
        Ok(tasks) => Ok(swarm_spec::newest(&tasks).map_or(Progress::Waiting, swarm_spec::progress)),
        Err(e) if not_found(&e) => Err(LaunchError::Gone(format!("service {id} is gone"))),
        Err(e) => Err(fail(format!("listing the tasks of service {id}: {e}"))),
    }
}

/// Removes a service (which stops its task); a missing one is fine.
async fn remove(client: &bollard::Docker, id: &str) {
    match client.delete_service(id).await {
        Ok(()) => {}
        Err(e) if not_found(&e) => {}
        Err(e) => tracing::warn!(service = id, "removing the service failed: {e}"),
    }
}

/// Signals a service's task.
#[derive(Debug)]
pub struct ServiceControl {
    client: bollard::Docker,
    service: String,
    exited: Arc<AtomicBool>,
}

impl Control for ServiceControl {
    fn signal(&self, signal: Signal) -> BoxFuture<'_, ()> {
        Box::pin(self.kill(signal))
    }
}

impl ServiceControl {
    /// Delivers `signal` to the task's container on this node; a task elsewhere is stopped by
    /// removing its service (SIGTERM, SIGKILL) and cannot take other signals.
    async fn kill(&self, signal: Signal) {
        if self.exited.load(Ordering::SeqCst) {
            return;
        }
        let call = async {
            let container = match task_progress(&self.client, &self.service).await {
                Ok(Progress::Running { container }) => container,
                Ok(_) | Err(_) => None,
            };
            let options = KillContainerOptionsBuilder::new()
                .signal(signal.as_str())
                .build();
            let delivered = match &container {
                Some(c) => match self.client.kill_container(c, Some(options)).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(service = %self.service, "kill {signal}: {e}");
                        !not_found(&e)
                    }
                },
                None => false,
            };
            if !delivered && matches!(signal, Signal::SIGTERM | Signal::SIGKILL) {
                remove(&self.client, &self.service).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(API_TIMEOUT), call)
            .await
            .is_err()
        {
            tracing::warn!(service = %self.service, "kill {signal} timed out");
        }
    }
}
