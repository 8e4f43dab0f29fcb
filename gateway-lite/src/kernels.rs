//! The kernel registry and each kernel's lifecycle: start, interrupt, restart, shut down,
//! and noticing death.
//!
//! This is the one place that decides when a launcher is started or stopped and how long
//! each step of a shutdown may take ([`Grace`]). A start registers a wait with the response
//! listener, has the provisioner run the launcher, and returns as soon as the payload
//! arrives, the launcher exits (the error carries its stderr tail), or the launch timeout
//! expires. Each incarnation of a kernel gets a watcher that notices the launcher's exit at
//! once (the provisioner's reaper reports it) and marks the kernel dead, and a monitor that
//! follows the kernel's iopub `status` for the REST model. Clients of a kernel follow its
//! [`Phase`] through a `watch` channel, so a restart or a death reaches every WebSocket.
//!
//! The registry also applies the operator's [`Policy`]: kernel limits (in total and per
//! `KERNEL_USERNAME`, counting launches still in flight), automatic restart of a kernel that
//! died (up to a limit of consecutive attempts, as jupyter_client's restarter), and idle
//! culling with Jupyter Server's settings. With a [`StateStore`] it records every change, so
//! a restarted gateway re-attaches to the kernels that kept running ([`Kernels::restore`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use protocol::comm::CommRequest;
use protocol::payload::LaunchReport;
use protocol::wire::Signer;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use zeromq::SocketRecv;

use crate::channels::{self, Channel, KernelEndpoints};
use crate::config::parse_secs;
use crate::kernelspecs::{KernelSpec, KernelSpecs, Placeholders};
use crate::metrics::Metrics;
use crate::provisioner::{LaunchRequest, Launched, Placement, Provisioners};
use crate::response::ResponseListener;
use crate::state::{KernelRecord, StateStore};

/// Every wait of a shutdown, in one place.
#[derive(Debug, Clone, Copy)]
pub struct Grace {
    /// Waiting for `shutdown_reply` and then for the launcher to exit.
    pub shutdown_request: Duration,
    /// After the comm port's `{"shutdown":1}`.
    pub comm_shutdown: Duration,
    /// After SIGTERM to the launcher's group, before SIGKILL.
    pub terminate: Duration,
    /// After SIGKILL.
    pub kill: Duration,
    /// Connecting to the comm port.
    pub comm_connect: Duration,
    /// Waiting for `interrupt_reply` (`interrupt_mode: message`).
    pub interrupt_reply: Duration,
}

impl Default for Grace {
    fn default() -> Self {
        Grace {
            shutdown_request: Duration::from_secs(3),
            comm_shutdown: Duration::from_secs(1),
            terminate: Duration::from_secs(5),
            kill: Duration::from_secs(2),
            comm_connect: Duration::from_secs(2),
            interrupt_reply: Duration::from_secs(5),
        }
    }
}

/// How long the readiness probe waits for `kernel_info_reply`.
const READY_WAIT: Duration = Duration::from_secs(60);

/// How long a signal interrupt waits for a starting kernel to become ready.
const INTERRUPT_READY_WAIT: Duration = Duration::from_secs(30);

/// Longest value of a `KERNEL_*` variable.
pub const MAX_ENV_VALUE: usize = 4096;

/// A kernel that stays up this long after an automatic restart resets the attempt count.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Most places one kernel start tries: a launcher that could not be run where it was sent
/// (an unreachable SSH host) is sent elsewhere, up to this many times in all.
const MAX_PLACEMENTS: u32 = 8;

/// What the operator allows.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Most kernels at once (EG's `max_kernels`).
    pub max_kernels: Option<usize>,
    /// Most kernels at once per `KERNEL_USERNAME` (EG's `max_kernels_per_user`).
    pub max_kernels_per_user: Option<usize>,
    /// Consecutive automatic restarts of a dying kernel before it is left dead; 0 turns
    /// automatic restart off.
    pub restart_limit: u32,
    /// Idle culling, when on.
    pub cull: Option<Cull>,
}

/// Idle culling, with Jupyter Server's `MappingKernelManager` settings.
#[derive(Debug, Clone, Copy)]
pub struct Cull {
    /// `cull_idle_timeout`: idle this long means culled.
    pub idle_timeout: Duration,
    /// `cull_interval`: how often to look.
    pub interval: Duration,
    /// `cull_connected`: cull kernels with WebSocket connections too.
    pub connected: bool,
    /// `cull_busy`: cull busy kernels too.
    pub busy: bool,
}

/// Errors of kernel operations; [`crate::api`] maps them to HTTP statuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// No kernelspec of that name (client's fault; EG answers 500, we answer 404).
    #[error("No such kernelspec: {0:?}")]
    NoSuchSpec(String),
    /// No kernel of that id (client's fault).
    #[error("Kernel does not exist: {0}")]
    NoSuchKernel(String),
    /// The request's env is unacceptable (client's fault).
    #[error("{0}")]
    BadEnv(String),
    /// The launcher failed before reporting (kernelspec or host fault).
    #[error("Error occurred during launch of KernelID: {kernel_id}. {message}")]
    Launch {
        /// The kernel id.
        kernel_id: String,
        /// What happened, with the launcher's stderr tail.
        message: String,
    },
    /// No payload within the launch timeout.
    #[error(
        "KernelID: '{kernel_id}' launch timeout due to: Waited too long ({secs}s) to get connection info. {log}"
    )]
    Timeout {
        /// The kernel id.
        kernel_id: String,
        /// The timeout.
        secs: f64,
        /// The launcher's stderr tail.
        log: String,
    },
    /// The operation needs a running kernel.
    #[error("Kernel {0} is not running (it died or is restarting)")]
    NotRunning(String),
    /// A kernel limit is reached (EG answers 403).
    #[error("{0}")]
    Limit(String),
    /// Interrupting failed.
    #[error("Interrupting kernel {kernel_id} failed: {message}")]
    Interrupt {
        /// The kernel id.
        kernel_id: String,
        /// Why.
        message: String,
    },
}

/// Where a kernel is in its life, as its WebSocket clients see it.
#[derive(Debug, Clone)]
pub enum Phase {
    /// Running at these endpoints.
    Running(Arc<KernelEndpoints>),
    /// Being restarted: asked for by a client, or `automatic` after a death. Clients are
    /// told `status: restarting` only for the automatic kind, as Jupyter Server does (for a
    /// requested restart JupyterLab would read that as the kernel having died).
    Restarting {
        /// After a death, by the restart policy.
        automatic: bool,
    },
    /// The launcher exited on its own (or a restart failed).
    Dead,
    /// Shut down and removed.
    Gone,
}

#[derive(Debug)]
struct Activity {
    execution_state: String,
    last_activity: OffsetDateTime,
}

/// One running (or dead) incarnation's process.
#[derive(Debug)]
struct Process {
    launched: Launched,
    endpoints: Arc<KernelEndpoints>,
}

/// One kernel.
#[derive(Debug)]
pub struct Kernel {
    /// Kernel id.
    pub id: String,
    /// Kernelspec name.
    pub name: String,
    spec: KernelSpec,
    env: BTreeMap<String, String>,
    timeout: Duration,
    /// `KERNEL_USERNAME` of the request, for per-user limits.
    username: String,
    phase: watch::Sender<Phase>,
    activity: Mutex<Activity>,
    connections: AtomicUsize,
    /// Serializes interrupt, restart and shutdown; holds the current process.
    process: tokio::sync::Mutex<Option<Process>>,
    /// Set while the gateway itself stops the process, so its exit is not a death.
    stopping: AtomicBool,
    /// What the state file holds for the current incarnation.
    record: Mutex<Option<KernelRecord>>,
    /// Consecutive automatic restarts, and when the last one happened.
    auto_restarts: Mutex<(u32, Option<Instant>)>,
    /// The latest generation that answered the readiness probe (`kernel_info_reply`).
    ready: watch::Sender<u64>,
}

impl Kernel {
    fn new(
        id: String,
        spec: KernelSpec,
        env: BTreeMap<String, String>,
        timeout: Duration,
        endpoints: Arc<KernelEndpoints>,
    ) -> Self {
        Kernel {
            id,
            name: spec.name.clone(),
            username: env.get("KERNEL_USERNAME").cloned().unwrap_or_default(),
            spec,
            env,
            timeout,
            phase: watch::Sender::new(Phase::Running(endpoints)),
            activity: Mutex::new(Activity {
                execution_state: "starting".into(),
                last_activity: OffsetDateTime::now_utc(),
            }),
            connections: AtomicUsize::new(0),
            process: tokio::sync::Mutex::new(None),
            stopping: AtomicBool::new(false),
            record: Mutex::new(None),
            auto_restarts: Mutex::new((0, None)),
            ready: watch::Sender::new(0),
        }
    }

    /// The execution state of the REST model.
    pub fn execution_state(&self) -> String {
        self.activity
            .lock()
            .map(|a| a.execution_state.clone())
            .unwrap_or_else(|_| "unknown".into())
    }

    /// Open WebSocket connections.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn idle_for(&self) -> Duration {
        self.activity
            .lock()
            .map(|a| OffsetDateTime::now_utc() - a.last_activity)
            .ok()
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default()
    }

    /// Sets the state-file record from the incarnation `p`.
    fn remember(&self, p: &Process) {
        let ep = &p.endpoints;
        let record = KernelRecord {
            id: self.id.clone(),
            name: self.name.clone(),
            env: self.env.clone(),
            launch_timeout_secs: self.timeout.as_secs_f64(),
            generation: ep.generation,
            connection: ep.info.clone(),
            host: ep.host.clone(),
            comm_port: ep.comm_port,
            pid: ep.pid,
            pgid: ep.pgid,
            placement: p.launched.placement.clone(),
        };
        if let Ok(mut r) = self.record.lock() {
            *r = Some(record);
        }
    }

    /// The REST model.
    pub fn model(&self) -> Value {
        let (state, last) = self
            .activity
            .lock()
            .map(|a| (a.execution_state.clone(), a.last_activity))
            .unwrap_or_else(|_| ("unknown".into(), OffsetDateTime::now_utc()));
        json!({
            "id": self.id,
            "name": self.name,
            "last_activity": channels::timestamp(last),
            "execution_state": state,
            "connections": self.connections.load(Ordering::SeqCst),
        })
    }

    /// Follows the kernel's phase.
    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Records activity (a message to or from the kernel).
    pub fn touch(&self) {
        if let Ok(mut a) = self.activity.lock() {
            a.last_activity = OffsetDateTime::now_utc();
        }
    }

    fn set_state(&self, state: &str) {
        if let Ok(mut a) = self.activity.lock() {
            a.execution_state = state.to_owned();
            a.last_activity = OffsetDateTime::now_utc();
        }
    }

    /// Counts a WebSocket connection until the guard is dropped.
    pub fn connect(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard(self.clone())
    }
}

/// Keeps a kernel's connection count up while alive.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Kernel>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What starting a launcher needs.
#[derive(Debug)]
pub struct Launcher {
    /// Where launchers run.
    pub provisioners: Provisioners,
    /// Where payloads arrive.
    pub response: ResponseListener,
    /// The kernel-launcher binary used to wrap plain kernelspecs.
    pub launcher: PathBuf,
    /// Default launch timeout.
    pub timeout: Duration,
    /// Directory for `{connection_file}` in specs that run a launcher themselves.
    pub runtime_dir: PathBuf,
    /// Shutdown waits.
    pub grace: Grace,
}

/// Launches in flight, counted against the limits before they finish.
#[derive(Debug, Default)]
struct InFlight {
    total: usize,
    by_user: HashMap<String, usize>,
}

/// All kernels of this gateway.
#[derive(Debug)]
pub struct Kernels {
    map: Mutex<HashMap<String, Arc<Kernel>>>,
    specs: Arc<KernelSpecs>,
    launcher: Launcher,
    policy: Policy,
    state: Option<StateStore>,
    in_flight: Mutex<InFlight>,
    deaths: mpsc::Sender<String>,
    death_rx: Mutex<Option<mpsc::Receiver<String>>>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
}

/// Releases a launch's place in [`InFlight`] when dropped.
struct Reservation<'a> {
    kernels: &'a Kernels,
    user: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Ok(mut f) = self.kernels.in_flight.lock() {
            f.total = f.total.saturating_sub(1);
            if let Some(n) = f.by_user.get_mut(&self.user) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    f.by_user.remove(&self.user);
                }
            }
        }
    }
}

impl Kernels {
    /// An empty registry. Call [`Kernels::restore`] and [`Kernels::spawn_tasks`] next.
    pub fn new(
        specs: Arc<KernelSpecs>,
        launcher: Launcher,
        policy: Policy,
        state: Option<StateStore>,
    ) -> Self {
        // Deaths are rare and each kernel reports at most one per incarnation.
        let (deaths, death_rx) = mpsc::channel(1024);
        Kernels {
            map: Mutex::default(),
            specs,
            launcher,
            policy,
            state,
            in_flight: Mutex::default(),
            deaths,
            death_rx: Mutex::new(Some(death_rx)),
            metrics: Metrics::default(),
        }
    }

    /// Whether kernels are recorded for a gateway restart.
    pub fn persistent(&self) -> bool {
        self.state.is_some()
    }

    /// Writes the state file from the current records.
    fn persist(&self) {
        let Some(state) = &self.state else { return };
        let records: Vec<KernelRecord> = self
            .list()
            .iter()
            .filter_map(|k| k.record.lock().ok().and_then(|r| r.clone()))
            .collect();
        if let Err(e) = state.save(records) {
            tracing::error!("writing the state file: {e}");
        }
    }

    /// Counts a launch against the limits, or refuses it.
    fn reserve(&self, user: &str) -> Result<Reservation<'_>, KernelError> {
        let running_total;
        let running_user;
        {
            let map = self
                .map
                .lock()
                .map_err(|_| KernelError::Limit("registry poisoned".into()))?;
            running_total = map.len();
            running_user = map.values().filter(|k| k.username == user).count();
        }
        let mut f = self
            .in_flight
            .lock()
            .map_err(|_| KernelError::Limit("registry poisoned".into()))?;
        if let Some(max) = self.policy.max_kernels
            && running_total + f.total >= max
        {
            return Err(KernelError::Limit(format!(
                "The limit of {max} kernels on this gateway is reached; shut a kernel down first."
            )));
        }
        let mine = running_user + f.by_user.get(user).copied().unwrap_or(0);
        if let Some(max) = self.policy.max_kernels_per_user
            && mine >= max
        {
            return Err(KernelError::Limit(format!(
                "User '{user}' already has {mine} of the {max} kernels allowed per user (KERNEL_USERNAME); shut one down first."
            )));
        }
        f.total += 1;
        *f.by_user.entry(user.to_owned()).or_default() += 1;
        Ok(Reservation {
            kernels: self,
            user: user.to_owned(),
        })
    }

    /// The kernelspecs.
    pub fn specs(&self) -> &KernelSpecs {
        &self.specs
    }

    /// Every kernel.
    pub fn list(&self) -> Vec<Arc<Kernel>> {
        let mut v: Vec<_> = self
            .map
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The kernel `id`.
    pub fn get(&self, id: &str) -> Result<Arc<Kernel>, KernelError> {
        self.map
            .lock()
            .ok()
            .and_then(|m| m.get(id).cloned())
            .ok_or_else(|| KernelError::NoSuchKernel(id.to_owned()))
    }

    /// Starts a kernel of spec `name` (the default when `None`) with the request's `env`.
    pub async fn start(
        &self,
        name: Option<&str>,
        env: Option<&Value>,
    ) -> Result<Arc<Kernel>, KernelError> {
        let name = name.unwrap_or(self.specs.default_name()).to_owned();
        let spec = self
            .specs
            .get(&name)
            .cloned()
            .ok_or_else(|| KernelError::NoSuchSpec(name.clone()))?;
        let env = kernel_env(env)?;
        let timeout = env
            .get("KERNEL_LAUNCH_TIMEOUT")
            .and_then(|t| parse_secs(t))
            .unwrap_or(self.launcher.timeout);
        let user = env.get("KERNEL_USERNAME").cloned().unwrap_or_default();
        let reservation = self.reserve(&user).inspect_err(|_| {
            self.metrics.starts_refused.fetch_add(1, Ordering::Relaxed);
        })?;
        let id = uuid::Uuid::new_v4().to_string();
        let began = Instant::now();
        let process = match self.launch(&id, &spec, &env, timeout, 1).await {
            Ok(p) => p,
            Err(e) => {
                let counter = if matches!(e, KernelError::Timeout { .. }) {
                    &self.metrics.starts_timed_out
                } else {
                    &self.metrics.starts_failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        self.metrics.observe_start(began.elapsed());
        self.metrics.starts_ok.fetch_add(1, Ordering::Relaxed);
        let kernel = Arc::new(Kernel::new(
            id.clone(),
            spec,
            env,
            timeout,
            process.endpoints.clone(),
        ));
        self.install(&kernel, process).await;
        if let Ok(mut m) = self.map.lock() {
            m.insert(id, kernel.clone());
        }
        drop(reservation);
        self.persist();
        Ok(kernel)
    }

    /// Makes `process` the kernel's current incarnation: watchers, record.
    async fn install(&self, kernel: &Arc<Kernel>, process: Process) {
        watch_process(kernel, &process, self.deaths.clone());
        kernel.remember(&process);
        *kernel.process.lock().await = Some(process);
    }

    /// Re-attaches to the kernels recorded by an earlier run of the gateway. Kernels whose
    /// launcher is gone are dropped from the record (and logged).
    pub async fn restore(&self) {
        let Some(state) = &self.state else { return };
        let records = match state.load() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        for r in records {
            let id = r.id.clone();
            match self.reattach(r).await {
                Ok(()) => {
                    self.metrics.reattached.fetch_add(1, Ordering::Relaxed);
                }
                Err(why) => tracing::warn!(kernel_id = %id, "not restored: {why}"),
            }
        }
        self.persist();
    }

    async fn reattach(&self, r: KernelRecord) -> Result<(), String> {
        let spec = self
            .specs
            .get(&r.name)
            .cloned()
            .ok_or_else(|| format!("its kernelspec {:?} is no longer served", r.name))?;
        let launched = self
            .launcher
            .provisioners
            .for_placement(&r.placement)
            .and_then(|p| p.reattach(&r.id, &r.placement))
            .map_err(|e| e.to_string())?;
        let endpoints = Arc::new(KernelEndpoints {
            signer: Signer::new(r.connection.key.as_bytes()),
            info: r.connection,
            host: r.host,
            comm_port: r.comm_port,
            pid: r.pid,
            pgid: r.pgid,
            generation: r.generation,
        });
        let timeout =
            Duration::try_from_secs_f64(r.launch_timeout_secs).unwrap_or(self.launcher.timeout);
        let kernel = Arc::new(Kernel::new(
            r.id.clone(),
            spec,
            r.env,
            timeout,
            endpoints.clone(),
        ));
        // Past its start-up: interrupts need not wait for the readiness probe, which a long
        // cell running across the gateway restart would hold up (shell is sequential).
        kernel.ready.send_replace(r.generation);
        let process = Process {
            launched,
            endpoints,
        };
        self.install(&kernel, process).await;
        tracing::info!(kernel_id = %r.id, "kernel restored from the state file");
        if let Ok(mut m) = self.map.lock() {
            m.insert(r.id, kernel);
        }
        Ok(())
    }

    /// Starts the background work: automatic restarts of dead kernels and idle culling.
    pub fn spawn_tasks(self: &Arc<Self>) {
        let rx = self.death_rx.lock().ok().and_then(|mut r| r.take());
        if let Some(mut rx) = rx {
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                while let Some(id) = rx.recv().await {
                    let Some(kernels) = weak.upgrade() else {
                        return;
                    };
                    kernels.on_death(&id).await;
                }
            });
        }
        if let Some(cull) = self.policy.cull {
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(cull.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(kernels) = weak.upgrade() else {
                        return;
                    };
                    kernels.cull_once(cull).await;
                }
            });
        }
    }

    /// A kernel died on its own: restart it if the policy allows, else leave it dead.
    async fn on_death(self: &Arc<Self>, id: &str) {
        self.metrics.deaths.fetch_add(1, Ordering::Relaxed);
        let Ok(kernel) = self.get(id) else { return };
        if kernel.stopping.load(Ordering::SeqCst) {
            return;
        }
        let limit = self.policy.restart_limit;
        let attempt = {
            let Ok(mut a) = kernel.auto_restarts.lock() else {
                return;
            };
            if a.1.is_some_and(|t| t.elapsed() >= STABLE_AFTER) {
                a.0 = 0;
            }
            a.0 += 1;
            a.1 = Some(Instant::now());
            a.0
        };
        if attempt > limit {
            if limit > 0 {
                tracing::warn!(
                    kernel_id = id,
                    "kernel died {limit} times in a row; leaving it dead"
                );
            }
            kernel.phase.send_replace(Phase::Dead);
            self.persist();
            return;
        }
        tracing::warn!(kernel_id = id, attempt, limit, "kernel died; restarting it");
        self.metrics
            .restarts_automatic
            .fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.restart_inner(id, true).await {
            tracing::error!(kernel_id = id, "automatic restart failed: {e}");
        }
    }

    /// Shuts down every kernel idle longer than the timeout (see [`Cull`]).
    async fn cull_once(&self, cull: Cull) {
        for k in self.list() {
            let state = k.execution_state();
            let eligible = match state.as_str() {
                "idle" | "dead" | "starting" => true,
                "busy" => cull.busy,
                _ => false,
            };
            if !eligible || (!cull.connected && k.connection_count() > 0) {
                continue;
            }
            let idle = k.idle_for();
            if idle < cull.idle_timeout {
                continue;
            }
            tracing::info!(
                kernel_id = %k.id,
                state,
                connections = k.connection_count(),
                idle_secs = idle.as_secs(),
                "culling idle kernel"
            );
            if self.shutdown(&k.id).await.is_ok() {
                self.metrics.culled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Runs a launcher for kernel `id` and waits for its payload.
    async fn launch(
        &self,
        id: &str,
        spec: &KernelSpec,
        env: &BTreeMap<String, String>,
        timeout: Duration,
        generation: u64,
    ) -> Result<Process, KernelError> {
        let l = &self.launcher;
        let mut pending = l.response.expect(id);
        let connection_file = l.runtime_dir.join(format!("kernel-{id}.json"));
        let connection_file = connection_file.to_string_lossy();
        let response_address = l.response.address();
        let fill = Placeholders {
            kernel_id: id,
            response_address: &response_address,
            public_key: l.response.public_key(),
            connection_file: &connection_file,
        };
        let argv = spec.command(&fill, &l.launcher);
        let mut launch_env = spec.env.clone();
        launch_env.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        launch_env.insert("KERNEL_ID".into(), id.to_owned());
        let launch_error = |e: crate::provisioner::LaunchError| KernelError::Launch {
            kernel_id: id.to_owned(),
            message: e.to_string(),
        };
        let provisioner = l.provisioners.for_spec(spec).map_err(launch_error)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut attempts = 0;
        let (launched, report) = loop {
            attempts += 1;
            let launched = provisioner
                .launch(LaunchRequest {
                    kernel_id: id.to_owned(),
                    argv: argv.clone(),
                    env: launch_env.clone(),
                    log_file: self.state.as_ref().map(|s| s.log_file(id)),
                })
                .map_err(launch_error)?;
            let mut exit = launched.exit.clone();
            let report = tokio::select! {
                r = &mut pending.report => r.map_err(|_| KernelError::Launch {
                    kernel_id: id.to_owned(),
                    message: "the payload wait was replaced".into(),
                }),
                e = exit.wait_for(Option::is_some) => {
                    let e = e.ok().and_then(|e| *e);
                    // The launcher never ran where it was sent (an unreachable SSH host) and
                    // the provisioner has somewhere else: launch again, within the timeout.
                    if e.is_some_and(|e| e.retry_elsewhere) && attempts < MAX_PLACEMENTS {
                        tracing::warn!(kernel_id = id, attempts, "launching elsewhere: {}", launched.log.text());
                        continue;
                    }
                    let how = e.map(|e| e.to_string()).unwrap_or_default();
                    Err(KernelError::Launch {
                        kernel_id: id.to_owned(),
                        message: format!("The launcher ended ({how}) before reporting its connection info:\n{}", launched.log.text()),
                    })
                }
                () = tokio::time::sleep_until(deadline) => Err(KernelError::Timeout {
                    kernel_id: id.to_owned(),
                    secs: timeout.as_secs_f64(),
                    log: launched.log.text(),
                }),
            };
            break (launched, report);
        };
        let report = match report.and_then(|r| endpoints(id, r, launched.host.clone(), generation))
        {
            Ok(ep) => ep,
            Err(e) => {
                tracing::warn!(kernel_id = id, "{e}");
                let grace = l.grace;
                tokio::spawn(async move { terminate(&launched, None, grace).await });
                return Err(e);
            }
        };
        let i = &report.info;
        tracing::info!(
            kernel_id = id,
            generation,
            shell = i.shell_port,
            iopub = i.iopub_port,
            stdin = i.stdin_port,
            control = i.control_port,
            hb = i.hb_port,
            comm_port = ?report.comm_port,
            pid = ?report.pid,
            "kernel started"
        );
        Ok(Process {
            launched,
            endpoints: Arc::new(report),
        })
    }

    /// Interrupts kernel `id`: `interrupt_request` on control for `interrupt_mode: message`,
    /// else `{"signum": 2}` on the comm port (SIGINT to the launcher's group without one).
    ///
    /// Interop quirk: ipykernel ignores SIGINT between cells, but only once it has set that
    /// up; a SIGINT in the first few hundred milliseconds after the launcher reported kills
    /// the kernel (Enterprise Gateway has the same race). So a signal interrupt waits, up to
    /// [`INTERRUPT_READY_WAIT`], until this incarnation has answered `kernel_info_request`.
    pub async fn interrupt(&self, id: &str) -> Result<(), KernelError> {
        let kernel = self.get(id)?;
        let generation = match &*kernel.phase.borrow() {
            Phase::Running(ep) => Some(ep.generation),
            _ => None,
        };
        if let Some(generation) = generation.filter(|_| !kernel.spec.interrupt_by_message) {
            let mut ready = kernel.ready.subscribe();
            let mut phase = kernel.phase();
            tokio::select! {
                r = tokio::time::timeout(INTERRUPT_READY_WAIT, ready.wait_for(|g| *g >= generation)) => {
                    if r.is_err() {
                        tracing::warn!(kernel_id = id, "interrupting a kernel that has not answered kernel_info yet");
                    }
                }
                // Restarted, shut down or dead meanwhile: answered below.
                _ = phase.wait_for(|p| !matches!(p, Phase::Running(e) if e.generation == generation)) => {}
            }
        }
        let guard = kernel.process.lock().await;
        let Some(p) = guard
            .as_ref()
            .filter(|_| matches!(*kernel.phase.borrow(), Phase::Running(_)))
        else {
            return Err(KernelError::NotRunning(id.to_owned()));
        };
        let fail = |message: String| KernelError::Interrupt {
            kernel_id: id.to_owned(),
            message,
        };
        if kernel.spec.interrupt_by_message {
            channels::request(
                &p.endpoints,
                Channel::Control,
                "interrupt_request",
                json!({}),
                self.launcher.grace.interrupt_reply,
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
            return Ok(());
        }
        match p.endpoints.comm_port {
            Some(port) => comm_send(
                &p.endpoints.host,
                port,
                CommRequest {
                    signum: Some(2),
                    shutdown: false,
                },
                self.launcher.grace.comm_connect,
            )
            .await
            .map_err(|e| fail(format!("comm port {port}: {e}"))),
            None => {
                p.launched.control.signal(Signal::SIGINT);
                Ok(())
            }
        }
    }

    /// Restarts kernel `id`: same id, new launcher, new ports and key.
    pub async fn restart(&self, id: &str) -> Result<Arc<Kernel>, KernelError> {
        self.metrics
            .restarts_requested
            .fetch_add(1, Ordering::Relaxed);
        self.restart_inner(id, false).await
    }

    async fn restart_inner(&self, id: &str, automatic: bool) -> Result<Arc<Kernel>, KernelError> {
        let kernel = self.get(id)?;
        let mut guard = kernel.process.lock().await;
        kernel.stopping.store(true, Ordering::SeqCst);
        kernel.phase.send_replace(Phase::Restarting { automatic });
        kernel.set_state("restarting");
        let generation = guard.as_ref().map_or(0, |p| p.endpoints.generation) + 1;
        if let Some(old) = guard.take() {
            stop(&old, true, self.launcher.grace).await;
        }
        let result = self
            .launch(id, &kernel.spec, &kernel.env, kernel.timeout, generation)
            .await;
        kernel.stopping.store(false, Ordering::SeqCst);
        match result {
            Ok(process) => {
                kernel.set_state("starting");
                kernel
                    .phase
                    .send_replace(Phase::Running(process.endpoints.clone()));
                watch_process(&kernel, &process, self.deaths.clone());
                kernel.remember(&process);
                *guard = Some(process);
                drop(guard);
                self.persist();
                Ok(kernel)
            }
            Err(e) => {
                kernel.set_state("dead");
                kernel.phase.send_replace(Phase::Dead);
                self.persist();
                Err(e)
            }
        }
    }

    /// Shuts kernel `id` down and forgets it.
    pub async fn shutdown(&self, id: &str) -> Result<(), KernelError> {
        let kernel = self.get(id)?;
        if let Ok(mut m) = self.map.lock() {
            m.remove(id);
        }
        let mut guard = kernel.process.lock().await;
        kernel.stopping.store(true, Ordering::SeqCst);
        if let Some(p) = guard.take() {
            stop(&p, false, self.launcher.grace).await;
        }
        kernel.set_state("dead");
        kernel.phase.send_replace(Phase::Gone);
        if let Ok(mut r) = kernel.record.lock() {
            *r = None;
        }
        self.persist();
        if let Some(state) = &self.state {
            let _ = std::fs::remove_file(state.log_file(id));
        }
        self.metrics.shutdowns.fetch_add(1, Ordering::Relaxed);
        tracing::info!(kernel_id = id, "kernel shut down");
        Ok(())
    }

    /// Shuts every kernel down (gateway exit).
    pub async fn shutdown_all(&self) {
        let ids: Vec<String> = self.list().iter().map(|k| k.id.clone()).collect();
        let tasks = ids.iter().map(|id| self.shutdown(id));
        futures_util::future::join_all(tasks).await;
    }
}

/// Validates the request's `env`: an object; `KERNEL_*` values are strings of at most
/// [`MAX_ENV_VALUE`] characters without `$`, backquote, CR, LF or NUL (they end up in
/// command lines and shell scripts of launchers). Other names are ignored, as EG does
/// unless they are allow-listed.
pub fn kernel_env(env: Option<&Value>) -> Result<BTreeMap<String, String>, KernelError> {
    let mut out = BTreeMap::new();
    let obj = match env {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(KernelError::BadEnv(
                "\"env\" must be a JSON object of strings".into(),
            ));
        }
    };
    for (k, v) in obj {
        if !k.starts_with("KERNEL_") {
            tracing::debug!("request env {k} ignored (only KERNEL_* is passed to kernels)");
            continue;
        }
        let Some(s) = v.as_str() else {
            return Err(KernelError::BadEnv(format!("env {k} must be a string")));
        };
        if s.chars().count() > MAX_ENV_VALUE {
            return Err(KernelError::BadEnv(format!(
                "env {k} is longer than {MAX_ENV_VALUE} characters"
            )));
        }
        if let Some(c) = s
            .chars()
            .find(|c| matches!(c, '$' | '`' | '\r' | '\n' | '\0'))
        {
            return Err(KernelError::BadEnv(format!(
                "env {k} contains the forbidden character {c:?}"
            )));
        }
        if k.len() > 256 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(KernelError::BadEnv(format!(
                "env name {k:?} is not a valid variable name"
            )));
        }
        out.insert(k.clone(), s.to_owned());
    }
    Ok(out)
}

fn endpoints(
    id: &str,
    report: LaunchReport,
    host: String,
    generation: u64,
) -> Result<KernelEndpoints, KernelError> {
    let fail = |message: String| KernelError::Launch {
        kernel_id: id.to_owned(),
        message,
    };
    let info = report.connection;
    if info.transport != "tcp" {
        return Err(fail(format!(
            "unsupported transport {:?} in the connection info",
            info.transport
        )));
    }
    if info.signature_scheme != "hmac-sha256" {
        return Err(fail(format!(
            "unsupported signature scheme {:?}",
            info.signature_scheme
        )));
    }
    if info.key.is_empty() {
        return Err(fail(
            "the connection info has an empty key; unsigned kernels are refused".into(),
        ));
    }
    Ok(KernelEndpoints {
        signer: Signer::new(info.key.as_bytes()),
        info,
        host,
        comm_port: report.comm_port.filter(|p| *p != 0),
        pid: report.pid,
        pgid: report.pgid,
        generation,
    })
}

/// Spawns the death watcher and the status monitor of one incarnation. A death is reported
/// on `deaths` for the automatic-restart policy.
fn watch_process(kernel: &Arc<Kernel>, process: &Process, deaths: mpsc::Sender<String>) {
    let weak = Arc::downgrade(kernel);
    let mut exit = process.launched.exit.clone();
    let generation = process.endpoints.generation;
    tokio::spawn(async move {
        let info = exit.wait_for(Option::is_some).await.ok().and_then(|e| *e);
        let Some(kernel) = weak.upgrade() else { return };
        let current =
            matches!(&*kernel.phase.borrow(), Phase::Running(ep) if ep.generation == generation);
        if current && !kernel.stopping.load(Ordering::SeqCst) {
            tracing::warn!(kernel_id = %kernel.id, "kernel died: launcher ended with {}", info.map(|i| i.to_string()).unwrap_or_default());
            kernel.set_state("dead");
            // The restart policy decides between `Dead` and an automatic restart, so clients
            // never see a "dead" that is followed by a restart.
            if deaths.try_send(kernel.id.clone()).is_err() {
                tracing::warn!(kernel_id = %kernel.id, "death not handed to the restart policy (queue full)");
                kernel.phase.send_replace(Phase::Dead);
            }
        }
    });
    tokio::spawn(monitor(
        Arc::downgrade(kernel),
        process.endpoints.clone(),
        kernel.phase(),
    ));
}

/// Follows iopub `status` for the REST model while this incarnation runs.
async fn monitor(
    kernel: Weak<Kernel>,
    ep: Arc<KernelEndpoints>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut sub = match channels::subscriber(&ep).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("status monitor could not subscribe to iopub: {e}");
            return;
        }
    };
    // Readiness probe: ipykernel answers shell requests once it is ready, so the reply (or
    // the busy/idle it causes on iopub) moves the model from "starting" to "idle" even when
    // no client is connected.
    let probe_ep = ep.clone();
    let probe_kernel = kernel.clone();
    tokio::spawn(async move {
        let r = channels::request(
            &probe_ep,
            Channel::Shell,
            "kernel_info_request",
            json!({}),
            READY_WAIT,
        )
        .await;
        match (r, probe_kernel.upgrade()) {
            (Ok(_), Some(k)) => {
                if let Ok(mut a) = k.activity.lock()
                    && a.execution_state == "starting"
                {
                    a.execution_state = "idle".into();
                }
                k.ready.send_if_modified(|g| {
                    let newer = *g < probe_ep.generation;
                    *g = (*g).max(probe_ep.generation);
                    newer
                });
            }
            (Err(e), _) => tracing::debug!("readiness probe: {e}"),
            _ => {}
        }
    });
    loop {
        tokio::select! {
            changed = phase.changed() => {
                let still = changed.is_ok() && matches!(&*phase.borrow(), Phase::Running(e) if e.generation == ep.generation);
                if !still {
                    return;
                }
            }
            m = sub.recv() => {
                let Ok(m) = m else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Some(msg) = channels::from_zmq(m, &ep.signer, Channel::Iopub) else { continue };
                let Some(kernel) = kernel.upgrade() else { return };
                kernel.touch();
                if channels::header_fields(&msg.header).is_some_and(|(t, _)| t == "status") {
                    let state = serde_json::from_slice::<Value>(&msg.content)
                        .ok()
                        .and_then(|c| c.get("execution_state").and_then(Value::as_str).map(str::to_owned));
                    if let Some(state) = state {
                        kernel.set_state(&state);
                    }
                }
            }
        }
    }
}

/// Stops one incarnation: `shutdown_request` on control, then the comm port's
/// `{"shutdown":1}`, then SIGTERM and SIGKILL of the launcher's group, waiting [`Grace`]
/// between steps and stopping as soon as the launcher has exited.
async fn stop(p: &Process, restart: bool, grace: Grace) {
    let ep = &p.endpoints;
    let mut exit = p.launched.exit.clone();
    if exit.borrow().is_some() {
        return;
    }
    let wait = grace.shutdown_request;
    let asked = tokio::time::timeout(wait, async {
        let request = channels::request(
            ep,
            Channel::Control,
            "shutdown_request",
            json!({ "restart": restart }),
            wait,
        );
        tokio::select! {
            r = request => if let Err(e) = r {
                tracing::debug!("shutdown_request: {e}");
            },
            _ = exit.wait_for(Option::is_some) => return,
        }
        let _ = exit.wait_for(Option::is_some).await;
    })
    .await;
    if asked.is_ok() {
        return;
    }
    if let Some(port) = ep.comm_port {
        let req = CommRequest {
            signum: None,
            shutdown: true,
        };
        if let Err(e) = comm_send(&ep.host, port, req, grace.comm_connect).await {
            tracing::debug!("comm port shutdown: {e}");
        }
        if tokio::time::timeout(grace.comm_shutdown, exit.wait_for(Option::is_some))
            .await
            .is_ok()
        {
            return;
        }
    }
    terminate(&p.launched, ep.pgid, grace).await;
}

/// SIGTERM to the launcher's group, then SIGKILL (of the kernel's group too).
async fn terminate(launched: &Launched, kernel_pgid: Option<i64>, grace: Grace) {
    let mut exit = launched.exit.clone();
    if exit.borrow().is_some() {
        return;
    }
    launched.control.signal(Signal::SIGTERM);
    if tokio::time::timeout(grace.terminate, exit.wait_for(Option::is_some))
        .await
        .is_ok()
    {
        return;
    }
    tracing::warn!(
        "launcher ignored SIGTERM for {:?}; killing it",
        grace.terminate
    );
    // The reported pgid is only meaningful on this host: for a remote or containerized
    // kernel the same number names some unrelated local process group.
    let local = matches!(launched.placement, Placement::Local { .. });
    if let Some(pgid) = kernel_pgid
        .and_then(|p| i32::try_from(p).ok())
        .filter(|p| local && *p > 1)
    {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGKILL);
    }
    launched.control.signal(Signal::SIGKILL);
    let _ = tokio::time::timeout(grace.kill, exit.wait_for(Option::is_some)).await;
}

/// Writes one request to a launcher's comm port and closes (no reply comes).
async fn comm_send(
    host: &str,
    port: u16,
    req: CommRequest,
    connect: Duration,
) -> std::io::Result<()> {
    let addr: SocketAddr = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("host has no address"))?,
    };
    let mut s = tokio::time::timeout(connect, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.write_all(&req.to_json()).await?;
    s.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_rules() {
        assert!(kernel_env(None).unwrap().is_empty());
        let ok = kernel_env(Some(
            &json!({"KERNEL_USERNAME": "a", "PATH": "x", "OTHER": 1}),
        ))
        .unwrap();
        assert_eq!(ok.len(), 1);
        for bad in [
            json!({"KERNEL_X": "a$b"}),
            json!({"KERNEL_X": "a`b"}),
            json!({"KERNEL_X": "a\nb"}),
            json!({"KERNEL_X": "a\rb"}),
            json!({"KERNEL_X": "a\u{0}b"}),
            json!({"KERNEL_X": 1}),
            json!({"KERNEL_X": "x".repeat(MAX_ENV_VALUE + 1)}),
            json!({"KERNEL_X-Y": "a"}),
            json!([1]),
        ] {
            assert!(kernel_env(Some(&bad)).is_err(), "{bad}");
        }
        assert!(kernel_env(Some(&json!({"KERNEL_X": "x".repeat(MAX_ENV_VALUE)}))).is_ok());
    }
}
