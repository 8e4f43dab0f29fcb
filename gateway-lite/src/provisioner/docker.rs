//! The Docker provisioner: each kernel runs as a container whose entrypoint is
//! `kernel-launcher` (`images/python-kernel/build.sh` builds such an image).
//!
//! Enterprise Gateway's Docker kernelspecs (`DockerProcessProxy`, `DockerSwarmProcessProxy`)
//! have an argv that runs EG's `launch_docker.py`, which starts the container through the
//! Docker API and exits. gateway-lite does not run that script: it starts the container
//! itself with the `docker` CLI, passing what the script would have put in the container's
//! environment (`KERNEL_ID`, `RESPONSE_ADDRESS`, `PUBLIC_KEY`, `PORT_RANGE`,
//! `KERNEL_SPARK_CONTEXT_INIT_MODE`, `KERNEL_CLASS_NAME`, every `KERNEL_*` of the request and
//! the spec's `env`), read from the filled argv in either of its option forms. A spec that is
//! not EG's (gateway-lite wrapped it as `kernel-launcher ... -- ARGV`) has `ARGV` passed as
//! the container's command (`-- ARGV`), so the launcher inside runs it; an EG spec leaves the
//! image's default command (ipykernel for `KERNEL_LANGUAGE=python`). Swarm specs are run as
//! plain containers: there is no Swarm service, and `EG_DOCKER_MODE` is not consulted.
//!
//! The image is the request's `KERNEL_IMAGE`, else the spec's
//! `metadata.process_proxy.config.image_name`, else `--docker-image` (EG's order, with
//! `EG_KERNEL_IMAGE` as the last). The container runs as `KERNEL_UID:KERNEL_GID` (EG's
//! defaults 1000:100; 0 is refused, as EG's default `EG_PROHIBITED_UIDS`/`GIDS` do), is
//! named `<prefix>-<kernel id>`, carries EG's labels (`kernel_id`, `component=kernel`,
//! `app=gateway-lite`) plus `--docker-label`s, and joins `--docker-network`. The kernel is
//! reached at the container's address on that network, so the response address
//! (`--response-ip`) must be an address containers can reach, e.g. the network's gateway
//! address on this host.
//!
//! One `docker logs --follow` child per container carries its output into the gateway's log
//! and the stderr tail; it ends as soon as the container stops, and `docker wait` then gives
//! the exit code. The container is removed after its exit (the tail was read first, so a
//! launch error still shows it) and when it is stopped; signals go through `docker kill
//! --signal`, which reaches the launcher (PID 1), which forwards them to the kernel.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use super::{
    ExitInfo, LaunchError, LaunchRequest, Launched, LogTail, Placement, ProcessControl, Provisioner,
};

/// How long one short `docker` command (inspect, rm, kill, wait after exit) may take.
const SHORT: Duration = Duration::from_secs(15);
/// How long `docker run -d` may take (it creates the container's writable layer).
const RUN: Duration = Duration::from_secs(60);
/// Lines of an existing container's log read when re-attaching.
const REATTACH_TAIL: usize = 20;

/// The Docker provisioner's settings (from [`crate::config::Config`]).
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// The `docker` CLI.
    pub docker: String,
    /// The network containers join (`--docker-network`; EG's `EG_DOCKER_NETWORK`).
    pub network: String,
    /// Image for specs without `image_name` (`--docker-image`; EG's `EG_KERNEL_IMAGE`).
    pub image: Option<String>,
    /// Container names are `<prefix>-<kernel id>`.
    pub name_prefix: String,
    /// Extra labels on every container.
    pub labels: Vec<(String, String)>,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            docker: "docker".into(),
            network: "bridge".into(),
            image: None,
            name_prefix: "gateway-lite".into(),
            labels: Vec::new(),
        }
    }
}

/// Runs launchers as Docker containers.
#[derive(Debug, Clone)]
pub struct Docker {
    config: Arc<DockerConfig>,
}

/// [`Docker`] for one kernelspec: its `image_name`.
#[derive(Debug, Clone)]
pub struct DockerFor {
    /// The provisioner.
    pub docker: Arc<Docker>,
    /// `metadata.process_proxy.config.image_name`.
    pub image: Option<String>,
}

impl Docker {
    /// A provisioner with these settings.
    pub fn new(config: DockerConfig) -> Self {
        Docker {
            config: Arc::new(config),
        }
    }

    /// The settings.
    pub fn config(&self) -> &DockerConfig {
        &self.config
    }

    fn fail(message: impl Into<String>) -> LaunchError {
        LaunchError::Docker(message.into())
    }

    fn launch_with(
        &self,
        spec_image: Option<&str>,
        request: LaunchRequest,
    ) -> Result<Launched, LaunchError> {
        let c = &*self.config;
        let args = GatewayArgs::parse(&request.argv);
        let response_address = args
            .response_address
            .ok_or_else(|| Self::fail("the kernel command line has no --response-address"))?;
        let public_key = args
            .public_key
            .ok_or_else(|| Self::fail("the kernel command line has no --public-key"))?;
        let image = request
            .env
            .get("KERNEL_IMAGE")
            .map(String::as_str)
            .filter(|i| !i.is_empty())
            .or(spec_image)
            .or(c.image.as_deref())
            .ok_or_else(|| {
                Self::fail(
                    "no image: set metadata.process_proxy.config.image_name in the kernelspec, \
                     KERNEL_IMAGE in the request, or --docker-image",
                )
            })?
            .to_owned();
        check_image(&image)?;
        let uid = id_from(&request.env, "KERNEL_UID", 1000)?;
        let gid = id_from(&request.env, "KERNEL_GID", 100)?;

        let mut env: BTreeMap<String, String> = request.env.clone();
        // The image's PATH applies inside the container, as in EG's launch_docker.py.
        env.remove("PATH");
        env.insert("KERNEL_ID".into(), request.kernel_id.clone());
        env.insert("RESPONSE_ADDRESS".into(), response_address);
        env.insert("PUBLIC_KEY".into(), public_key);
        env.insert("KERNEL_IMAGE".into(), image.clone());
        if let Some(v) = args.port_range {
            env.insert("PORT_RANGE".into(), v);
        }
        if let Some(v) = args.spark_mode {
            env.insert("KERNEL_SPARK_CONTEXT_INIT_MODE".into(), v);
        }
        if let Some(v) = args.kernel_class {
            env.insert("KERNEL_CLASS_NAME".into(), v);
        }

        let name = format!("{}-{}", c.name_prefix, request.kernel_id);
        // `--flag=value` everywhere, so no value (an env entry, a label) is ever taken for a
        // flag by the CLI's parser.
        let mut argv: Vec<String> = vec![
            "run".into(),
            "--detach".into(),
            format!("--name={name}"),
            format!("--network={}", c.network),
            format!("--user={uid}:{gid}"),
            format!("--label=kernel_id={}", request.kernel_id),
            "--label=component=kernel".into(),
            "--label=app=gateway-lite".into(),
        ];
        argv.extend(c.labels.iter().map(|(k, v)| format!("--label={k}={v}")));
        for (k, v) in &env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(Self::fail(format!(
                    "environment variable {k:?} cannot be passed to a container"
                )));
            }
            argv.push(format!("--env={k}={v}"));
        }
        argv.push(image.clone());
        if let Some(cmd) = args.kernel_argv {
            argv.push("--".into());
            argv.extend(cmd);
        }

        let out = self.docker_blocking(&argv, RUN)?;
        let out = if out.ok {
            out
        } else if out.stderr.contains("is already in use") {
            // A container of an earlier incarnation of this kernel id (a restart whose old
            // container could not be removed): it is being replaced.
            tracing::warn!(kernel_id = %request.kernel_id, container = %name, "removing a leftover container of the same name");
            let _ = self.docker_blocking(&["rm".into(), "--force".into(), name.clone()], SHORT);
            self.docker_blocking(&argv, RUN)?
        } else {
            out
        };
        if !out.ok {
            return Err(Self::fail(format!(
                "docker run {image} failed: {}",
                out.stderr.trim()
            )));
        }
        let id = out.stdout.trim().to_owned();
        if id.is_empty() {
            return Err(Self::fail("docker run printed no container id"));
        }
        tracing::info!(kernel_id = %request.kernel_id, container = %name, %image, network = %c.network, "container started");
        // The container may already have exited (a launcher that fails at once): then it has
        // no address, and the waiter reports the exit with its log.
        let host = match self.inspect_blocking(&id)? {
            Some(state) if state.running => match state.ip {
                Some(ip) => ip,
                None => {
                    let _ =
                        self.docker_blocking(&["rm".into(), "--force".into(), id.clone()], SHORT);
                    return Err(Self::fail(format!(
                        "container {name} has no address on network {}",
                        c.network
                    )));
                }
            },
            _ => String::from("0.0.0.0"),
        };
        Ok(self.follow(request.kernel_id, id, name, host, None))
    }

    /// Starts the log follower and waiter of container `id`, and returns its [`Launched`].
    fn follow(
        &self,
        kernel_id: String,
        id: String,
        name: String,
        host: String,
        tail: Option<usize>,
    ) -> Launched {
        let log = LogTail::default();
        let exited = Arc::new(AtomicBool::new(false));
        let (tx, rx) = watch::channel(None);
        let docker = self.clone();
        let (flag, tail_log, cid) = (exited.clone(), log.clone(), id.clone());
        tokio::spawn(async move {
            docker.follow_logs(&kernel_id, &cid, tail, &tail_log).await;
            // The log stream ends when the container stops (or the daemon went away); `docker
            // wait` returns at once in the first case and waits for the stop in the second.
            let info = docker.wait(&cid).await;
            flag.store(true, Ordering::SeqCst);
            tracing::info!(kernel_id = %kernel_id, container = %cid, "container ended: {info}");
            // The tail is in memory, so the container can go before the exit is published;
            // removing first also frees the name for a restart under the same kernel id.
            docker.remove(&cid).await;
            let _ = tx.send(Some(info));
        });
        Launched {
            exit: rx,
            log,
            control: Arc::new(DockerControl {
                docker: self.config.docker.clone(),
                container: id,
                exited,
            }),
            host: host.clone(),
            placement: Placement::Docker {
                container: name,
                network: self.config.network.clone(),
                host,
            },
        }
    }

    async fn follow_logs(&self, kernel_id: &str, id: &str, tail: Option<usize>, log: &LogTail) {
        let tail = tail.map_or_else(|| "all".to_owned(), |n| n.to_string());
        let child = Command::new(&self.config.docker)
            .args(["logs", "--follow", &format!("--tail={tail}"), id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(kernel_id, container = id, "cannot run docker logs: {e}");
                return;
            }
        };
        let out = child.stdout.take().map(|s| lines(s, kernel_id, None));
        let err = child.stderr.take().map(|s| lines(s, kernel_id, Some(log)));
        let (_, _) = tokio::join!(
            async {
                if let Some(f) = out {
                    f.await;
                }
            },
            async {
                if let Some(f) = err {
                    f.await;
                }
            }
        );
        let _ = child.wait().await;
    }

    async fn wait(&self, id: &str) -> ExitInfo {
        let unknown = ExitInfo {
            code: None,
            signal: None,
            retry_elsewhere: false,
        };
        let out = Command::new(&self.config.docker)
            .args(["wait", id])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await;
        match out {
            Ok(o) if o.status.success() => {
                let code: Option<i32> = String::from_utf8_lossy(&o.stdout).trim().parse().ok();
                match code {
                    // The launcher exits 128+S when its kernel was killed by signal S; a
                    // container killed by signal S also reports 128+S.
                    Some(c) if c > 128 && c < 128 + 65 => ExitInfo {
                        code: None,
                        signal: Some(c - 128),
                        retry_elsewhere: false,
                    },
                    Some(c) => ExitInfo {
                        code: Some(c),
                        signal: None,
                        retry_elsewhere: false,
                    },
                    None => unknown,
                }
            }
            Ok(o) => {
                tracing::warn!(
                    container = id,
                    "docker wait failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                unknown
            }
            Err(e) => {
                tracing::warn!(container = id, "cannot run docker wait: {e}");
                unknown
            }
        }
    }

    async fn remove(&self, id: &str) {
        let out = tokio::time::timeout(
            SHORT,
            Command::new(&self.config.docker)
                .args(["rm", "--force", id])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await;
        match out {
            Ok(Ok(o)) if o.status.success() => {}
            Ok(Ok(o)) => {
                let e = String::from_utf8_lossy(&o.stderr);
                if !e.contains("No such container") {
                    tracing::warn!(container = id, "docker rm failed: {}", e.trim());
                }
            }
            Ok(Err(e)) => tracing::warn!(container = id, "cannot run docker rm: {e}"),
            Err(_) => tracing::warn!(container = id, "docker rm timed out"),
        }
    }

    /// Runs `docker ARGS` to completion from synchronous code inside the runtime.
    fn docker_blocking(&self, args: &[String], limit: Duration) -> Result<Output, LaunchError> {
        let program = self.config.docker.clone();
        let args = args.to_vec();
        let fut = async move {
            let out = tokio::time::timeout(
                limit,
                Command::new(&program)
                    .args(&args)
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .output(),
            )
            .await;
            match out {
                Err(_) => Err(Self::fail(format!(
                    "`{program} {}` took longer than {limit:?}",
                    args.first().map_or("", String::as_str)
                ))),
                Ok(Err(source)) => Err(LaunchError::Spawn { program, source }),
                Ok(Ok(o)) => Ok(Output {
                    ok: o.status.success(),
                    stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
                }),
            }
        };
        block_on(fut)
    }

    /// The container's state, `None` when there is no such container.
    fn inspect_blocking(&self, id: &str) -> Result<Option<ContainerState>, LaunchError> {
        let out = self.docker_blocking(
            &["inspect".into(), "--type=container".into(), id.into()],
            SHORT,
        )?;
        if !out.ok {
            if out.stderr.contains("No such") {
                return Ok(None);
            }
            return Err(Self::fail(format!(
                "docker inspect {id} failed: {}",
                out.stderr.trim()
            )));
        }
        let doc: Value = serde_json::from_str(&out.stdout)
            .map_err(|e| Self::fail(format!("docker inspect {id}: unreadable output: {e}")))?;
        Ok(ContainerState::from_inspect(&doc, &self.config.network))
    }
}

impl Provisioner for Docker {
    fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError> {
        self.launch_with(None, request)
    }

    fn reattach(&self, kernel_id: &str, placement: &Placement) -> Result<Launched, LaunchError> {
        let Placement::Docker {
            container,
            network,
            host,
        } = placement
        else {
            return Err(LaunchError::Unsupported("non-docker"));
        };
        if network != &self.config.network {
            tracing::warn!(kernel_id, %container, recorded = %network, configured = %self.config.network, "the container was started on another network; following it there");
        }
        let state = match self.inspect_blocking(container)? {
            Some(s) => s,
            None => return Err(LaunchError::Gone(format!("container {container} is gone"))),
        };
        if !state.running {
            // It ended while the gateway was away: nobody will read its log any more.
            let _ =
                self.docker_blocking(&["rm".into(), "--force".into(), container.clone()], SHORT);
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
            kernel_id.to_owned(),
            state.id,
            container.clone(),
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

impl Provisioner for DockerFor {
    fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError> {
        self.docker.launch_with(self.image.as_deref(), request)
    }

    fn reattach(&self, kernel_id: &str, placement: &Placement) -> Result<Launched, LaunchError> {
        self.docker.reattach(kernel_id, placement)
    }
}

/// A finished `docker` command.
#[derive(Debug)]
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// What `docker inspect` says about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ContainerState {
    id: String,
    running: bool,
    /// Its address on the configured network.
    ip: Option<String>,
    networks: BTreeMap<String, String>,
}

impl ContainerState {
    /// From `docker inspect` output (an array of one object).
    fn from_inspect(doc: &Value, network: &str) -> Option<Self> {
        let c = doc.as_array()?.first()?;
        let id = c.get("Id")?.as_str()?.to_owned();
        let running = c
            .pointer("/State/Running")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let networks: BTreeMap<String, String> = c
            .pointer("/NetworkSettings/Networks")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(name, n)| {
                        let ip = n.get("IPAddress")?.as_str()?;
                        (!ip.is_empty()).then(|| (name.clone(), ip.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut s = ContainerState {
            id,
            running,
            ip: None,
            networks,
        };
        s.ip = s.ip_on(network);
        Some(s)
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

/// The gateway's options in a filled kernel command line (EG's container launchers read the
/// same, in the plain or the `--RemoteProcessProxy.` form, `--x v` or `--x=v`).
#[derive(Debug, Default, PartialEq, Eq)]
struct GatewayArgs {
    response_address: Option<String>,
    public_key: Option<String>,
    port_range: Option<String>,
    spark_mode: Option<String>,
    kernel_class: Option<String>,
    /// What follows `--`: the kernel command of a spec gateway-lite wrapped.
    kernel_argv: Option<Vec<String>>,
}

impl GatewayArgs {
    fn parse(argv: &[String]) -> Self {
        let mut out = GatewayArgs::default();
        let mut i = 1;
        while i < argv.len() {
            let arg = &argv[i];
            if arg == "--" {
                out.kernel_argv = Some(argv[i + 1..].to_vec());
                break;
            }
            let Some(opt) = arg.strip_prefix("--") else {
                i += 1;
                continue;
            };
            let opt = opt.strip_prefix("RemoteProcessProxy.").unwrap_or(opt);
            let (name, inline) = match opt.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (opt, None),
            };
            let slot = match name {
                "response-address" => &mut out.response_address,
                "public-key" => &mut out.public_key,
                "port-range" => &mut out.port_range,
                "spark-context-initialization-mode" => &mut out.spark_mode,
                "kernel-class-name" => &mut out.kernel_class,
                _ => {
                    i += 1;
                    continue;
                }
            };
            let value = match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    match argv.get(i) {
                        Some(v) => v.clone(),
                        None => break,
                    }
                }
            };
            // An unfilled placeholder counts as absent, as the launcher treats it.
            let placeholder = value.starts_with('{') && value.ends_with('}');
            if !value.is_empty() && !placeholder {
                *slot = Some(value);
            }
            i += 1;
        }
        out
    }
}

/// Whether `image` has the shape of an image reference, which the CLI cannot mistake for a
/// flag (EG's launch_docker.py checks a similar shape).
pub fn valid_image(image: &str) -> bool {
    image.len() <= 512
        && image
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
}

/// Whether `name` can be a Docker network name or the start of a container name.
pub fn valid_name(name: &str) -> bool {
    name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn check_image(image: &str) -> Result<(), LaunchError> {
    if valid_image(image) {
        Ok(())
    } else {
        Err(Docker::fail(format!(
            "{image:?} is not a valid image reference"
        )))
    }
}

/// `KERNEL_UID` / `KERNEL_GID`: a number, not 0 (EG refuses root by default).
fn id_from(env: &BTreeMap<String, String>, name: &str, default: u32) -> Result<u32, LaunchError> {
    let Some(text) = env.get(name).filter(|v| !v.is_empty()) else {
        return Ok(default);
    };
    match text.trim().parse::<u32>() {
        Ok(0) => Err(Docker::fail(format!(
            "{name}=0 is refused: kernels do not run as root"
        ))),
        Ok(n) => Ok(n),
        Err(_) => Err(Docker::fail(format!("{name}={text:?} is not a number"))),
    }
}

#[derive(Debug)]
struct DockerControl {
    docker: String,
    container: String,
    exited: Arc<AtomicBool>,
}

impl ProcessControl for DockerControl {
    fn signal(&self, signal: Signal) {
        if self.exited.load(Ordering::SeqCst) {
            return;
        }
        // `docker kill` delivers to the container's PID 1, the launcher, which forwards to
        // the kernel's process group (SIGKILL is applied by the runtime and stops the whole
        // container).
        let mut cmd = Command::new(&self.docker);
        cmd.args([
            "kill",
            &format!("--signal={}", signal.as_str()),
            &self.container,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let container = self.container.clone();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(container, "no runtime to run docker kill on");
            return;
        };
        handle.spawn(async move {
            match tokio::time::timeout(SHORT, cmd.output()).await {
                Ok(Ok(o)) if !o.status.success() => tracing::debug!(
                    container,
                    "docker kill {signal}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Ok(Err(e)) => tracing::debug!(container, "cannot run docker kill: {e}"),
                Err(_) => tracing::warn!(container, "docker kill {signal} timed out"),
                Ok(Ok(_)) => {}
            }
        });
    }
}

/// Logs each line of `stream`, keeping them in `tail` if given. docker's json-file driver
/// already splits lines longer than 16 KiB, so lines are bounded.
async fn lines(stream: impl AsyncRead + Unpin, kernel_id: &str, tail: Option<&LogTail>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let text = line.trim_end();
        if text.is_empty() {
            continue;
        }
        tracing::info!(target: "kernel", kernel_id, "{text}");
        if let Some(t) = tail {
            t.push(text.to_owned());
        }
    }
}

/// Runs `fut` to completion from synchronous code: on a multi-threaded runtime without
/// stalling its other tasks, elsewhere on a helper thread with its own runtime (never a
/// panic for calling `block_on` inside a runtime).
fn block_on<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, LaunchError>> + Send + 'static,
) -> Result<T, LaunchError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if let Ok(h) = Handle::try_current()
        && h.runtime_flavor() == RuntimeFlavor::MultiThread
    {
        return tokio::task::block_in_place(|| h.block_on(fut));
    }
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Docker::fail(format!("cannot start a runtime for docker: {e}")))?
            .block_on(fut)
    })
    .join()
    .unwrap_or_else(|_| Err(Docker::fail("the docker helper thread failed")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn eg_argv_in_both_forms() {
        let eg = s(&[
            "python",
            "/k/launch_docker.py",
            "--RemoteProcessProxy.kernel-id",
            "K",
            "--RemoteProcessProxy.port-range",
            "0..0",
            "--RemoteProcessProxy.response-address",
            "10.0.0.1:5000",
            "--RemoteProcessProxy.public-key=PK",
            "--RemoteProcessProxy.spark-context-initialization-mode",
            "{spark_context_initialization_mode}",
        ]);
        let a = GatewayArgs::parse(&eg);
        assert_eq!(a.response_address.as_deref(), Some("10.0.0.1:5000"));
        assert_eq!(a.public_key.as_deref(), Some("PK"));
        assert_eq!(a.port_range.as_deref(), Some("0..0"));
        assert_eq!(a.spark_mode, None, "an unfilled placeholder is absent");
        assert_eq!(a.kernel_argv, None);

        let wrapped = s(&[
            "/bin/kernel-launcher",
            "--kernel-id",
            "K",
            "--response-address",
            "h:1",
            "--public-key",
            "PK",
            "--",
            "python3",
            "-m",
            "ipykernel_launcher",
            "--public-key",
        ]);
        let a = GatewayArgs::parse(&wrapped);
        assert_eq!(a.response_address.as_deref(), Some("h:1"));
        assert_eq!(
            a.kernel_argv,
            Some(s(&["python3", "-m", "ipykernel_launcher", "--public-key"]))
        );
        // A trailing option without a value is not a crash.
        let a = GatewayArgs::parse(&s(&["x", "--public-key"]));
        assert_eq!(a.public_key, None);
    }

    #[test]
    fn images_and_ids() {
        assert!(check_image("gateway-lite/python-kernel:abc").is_ok());
        assert!(check_image("reg.example:5000/a/b@sha256:00ff").is_ok());
        for bad in ["", "-v", "--privileged", "a b", "a;b", "a$b"] {
            assert!(check_image(bad).is_err(), "{bad:?}");
        }
        let env = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert_eq!(id_from(&BTreeMap::new(), "KERNEL_UID", 1000).unwrap(), 1000);
        assert_eq!(
            id_from(&env("KERNEL_UID", "1234"), "KERNEL_UID", 1).unwrap(),
            1234
        );
        assert!(id_from(&env("KERNEL_UID", "0"), "KERNEL_UID", 1).is_err());
        assert!(id_from(&env("KERNEL_UID", "root"), "KERNEL_UID", 1).is_err());
        assert!(id_from(&env("KERNEL_UID", "-1"), "KERNEL_UID", 1).is_err());
    }

    #[test]
    fn inspect_output() {
        let doc = json!([{
            "Id": "abc",
            "State": {"Running": true},
            "NetworkSettings": {"Networks": {
                "net1": {"IPAddress": "10.1.0.2"},
                "net2": {"IPAddress": ""}
            }}
        }]);
        let st = ContainerState::from_inspect(&doc, "net1").unwrap();
        assert!(st.running);
        assert_eq!(st.ip.as_deref(), Some("10.1.0.2"));
        assert_eq!(ContainerState::from_inspect(&doc, "net2").unwrap().ip, None);
        assert_eq!(ContainerState::from_inspect(&json!([]), "n"), None);
        assert_eq!(ContainerState::from_inspect(&json!({"x": 1}), "n"), None);
    }
}
