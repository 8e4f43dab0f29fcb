//! The kernels of this gateway: the registry, one owner task per kernel, and the rules they
//! follow.
//!
//! **Ownership.** Every kernel has exactly one owner, a tracked task ([`lifecycle`]) that
//! holds the kernel's process and takes commands (interrupt, restart, shutdown, detach) one
//! at a time; the launcher's exit is an event of that same task. Everyone else holds a
//! [`Kernel`] handle: it reads what the owner publishes and sends it commands. The
//! [`Kernels`] facade below checks requests, reserves room under the limits, spawns starts
//! as tracked tasks and forwards commands; it never touches a process itself.
//!
//! The pieces: [`registry`] (ids, limits and reservations, the state-file snapshots),
//! [`lifecycle`] (the owners), [`launch`] and [`stop`] (one launcher up, one incarnation
//! down), [`monitor`] (execution state from iopub, the readiness probe), [`clients`] (the one
//! client count, the parked connection and its bounded backlog), [`policy`] (the rules, as
//! pure functions), [`env`] (the request's `KERNEL_*` variables), [`phase`] and [`kernel`]
//! (what a handle shows), [`logs`] (launchers' log files, kept a while after their kernel),
//! [`pool`] (warm pools: kernels started before they are asked for), [`error`].

mod clients;
mod encryption;
mod env;
mod error;
mod keeper;
mod kernel;
mod launch;
mod lifecycle;
pub mod logs;
mod monitor;
mod phase;
pub mod policy;
mod pool;
mod process;
mod registry;
mod stop;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use clients::{Backlog, Clients, Kept, KeptBudget, PARK_TOTAL_MAX_BYTES, Presence};
pub use env::{MAX_ENV_VALUE, kernel_env};
pub use error::KernelError;
pub use kernel::Kernel;
pub use launch::Launcher;
pub use phase::Phase;
use policy::ExecutionState;

use crate::config::{Cull, Limits, Pools, parse_secs};
use crate::kernelspecs::{Catalog, KernelSpecs, Runner};
use crate::metrics::{Gauges, Metrics, PoolGauge};
use crate::state::StateStore;
use crate::tasks::Tasks;
use kernel::Command;
use lifecycle::{Admission, Context, StartRequest};
use logs::KernelLogs;
use registry::Registry;

/// How long a signal interrupt waits for a starting kernel to become ready.
const INTERRUPT_READY_WAIT: Duration = Duration::from_secs(30);

/// How long the gateway's exit waits for its kernels to be stopped or detached.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// The operator's rules for kernels.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Kernel limits.
    pub limits: Limits,
    /// Consecutive automatic restarts of a dead kernel; 0 turns them off.
    pub restart_limit: u32,
    /// Idle culling, when on.
    pub cull: Option<Cull>,
    /// How long a kernel's log file is kept after the kernel ended; zero: deleted at once.
    pub log_retention: Duration,
    /// Warm pools.
    pub pools: Pools,
}

/// All kernels of this gateway. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Kernels {
    ctx: Arc<Context>,
    specs: Arc<Catalog>,
}

impl Kernels {
    /// Opens the registry: re-attaches to the kernels an earlier run recorded in `store`, and
    /// starts the culler when culling is on.
    pub async fn open(
        specs: Arc<Catalog>,
        launcher: Launcher,
        rules: Rules,
        store: Option<StateStore>,
        tasks: Tasks,
    ) -> Self {
        let budget = Arc::new(KeptBudget::new(PARK_TOTAL_MAX_BYTES));
        let logs = store
            .as_ref()
            .map(|s| Arc::new(KernelLogs::new(s.logs_dir(), rules.log_retention)));
        let registry = Arc::new(Registry::new(rules.limits, store, budget, tasks.clone()));
        let ctx = Arc::new(Context {
            launcher,
            registry,
            tasks: tasks.clone(),
            metrics: Arc::default(),
            restart_limit: rules.restart_limit,
            logs: logs.clone(),
            stopping: lifecycle::Stopping::default(),
            pool: Arc::new(pool::Pool::new(&rules.pools)),
        });
        let kernels = Kernels { ctx, specs };
        kernels.restore().await;
        if let Some(logs) = logs {
            kernels.sweep_leftover_logs(&logs).await;
            if !logs.retention().is_zero() {
                logs.spawn_sweeper(&tasks);
            }
        }
        if let Some(cull) = rules.cull {
            tasks.spawn_until_stopped(kernels.clone().cull_loop(cull));
        }
        // Also with no pool configured: it retires pooled kernels an earlier run left.
        tasks.spawn_until_stopped(kernels.clone().keep_pools());
        kernels
    }

    /// Whether kernels are recorded for a gateway restart.
    pub fn persistent(&self) -> bool {
        self.ctx.registry.persistent()
    }

    /// The kernelspecs as their directories hold them now (see [`Catalog`]).
    pub async fn specs(&self) -> Arc<KernelSpecs> {
        self.specs.current().await
    }

    /// Every kernel, by id.
    pub fn list(&self) -> Vec<Arc<Kernel>> {
        self.ctx.registry.list()
    }

    /// The kernel `id`.
    pub fn get(&self, id: &str) -> Result<Arc<Kernel>, KernelError> {
        self.ctx
            .registry
            .get(id)
            .ok_or_else(|| KernelError::NoSuchKernel(id.to_owned()))
    }

    /// The gateway's tasks (the WebSocket bridge spawns its relays there).
    pub fn tasks(&self) -> &Tasks {
        &self.ctx.tasks
    }

    /// Starts a kernel of spec `name` (the default when `None`) with the request's `env`.
    /// A spec whose placement gateway-lite does not do is refused before anything starts.
    ///
    /// The launch runs in its own tracked task: if this future is dropped (the client went
    /// away), the launch is abandoned, its launcher stopped and its reservation released; if
    /// the kernel was registered just before, it is shut down.
    pub async fn start(
        &self,
        name: Option<&str>,
        env: Option<&Value>,
    ) -> Result<Arc<Kernel>, KernelError> {
        let specs = self.specs().await;
        let name = name.unwrap_or(specs.default_name()).to_owned();
        let spec = specs
            .get(&name)
            .cloned()
            .ok_or_else(|| KernelError::NoSuchSpec(name.clone()))?;
        if let Runner::Refused(why) = &spec.runner {
            tracing::info!(spec = %name, class = %why.class, "launch refused: the kernelspec's placement is not one gateway-lite runs");
            return Err(KernelError::Refused {
                spec: name,
                why: why.to_string(),
            });
        }
        encryption::ask(self.ctx.launcher.transport_encryption, &spec).inspect_err(|e| {
            tracing::info!(spec = %name, "launch refused: {e}");
        })?;
        let env = kernel_env(env)?;
        if let Some(kernel) = self.claim_pooled(&spec, &env).await? {
            return Ok(kernel);
        }
        let timeout = env
            .get("KERNEL_LAUNCH_TIMEOUT")
            .and_then(|t| parse_secs(t))
            .unwrap_or(self.ctx.launcher.timeout);
        let user = env.get("KERNEL_USERNAME").cloned().unwrap_or_default();
        let reservation = self.ctx.registry.reserve(&user).map_err(|e| {
            self.ctx
                .metrics
                .starts_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            KernelError::Limit(e.to_string())
        })?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = StartRequest {
            id: uuid::Uuid::new_v4().to_string(),
            spec,
            env,
            timeout,
            admission: Admission::Request(reservation),
            reply,
        };
        self.ctx
            .tasks
            .spawn(lifecycle::start(self.ctx.clone(), request));
        answer
            .await
            .map_err(|_| KernelError::Cancelled("(the gateway is stopping)".into()))?
            .map(kernel::Claim::take)
    }

    /// A pooled kernel of `spec` for a request with `env`, when `spec` has a pool, `env` is
    /// compatible (see [`pool::compatible`]) and the pool has a ready kernel; `None`: start a
    /// fresh one. The claim is checked against the limits like a start.
    async fn claim_pooled(
        &self,
        spec: &crate::kernelspecs::KernelSpec,
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<Arc<Kernel>>, KernelError> {
        use std::sync::atomic::Ordering::Relaxed;
        let pool = &self.ctx.pool;
        let counters = &self.ctx.metrics.pool;
        if pool.size(&spec.name) == 0 {
            return Ok(None);
        }
        let per_user = self
            .ctx
            .launcher
            .provisioners
            .docker
            .settings()
            .network_per_user;
        if let Err(why) = pool::compatible(spec, env, per_user) {
            counters.incompatible.fetch_add(1, Relaxed);
            tracing::info!(spec = %spec.name, "starting a fresh kernel, not a pooled one: {why}");
            return Ok(None);
        }
        let user = env.get("KERNEL_USERNAME").cloned().unwrap_or_default();
        let claimed = self
            .ctx
            .registry
            .claim(&spec.name, &user, env)
            .map_err(|e| {
                self.ctx.metrics.starts_refused.fetch_add(1, Relaxed);
                KernelError::Limit(e.to_string())
            })?;
        let Some((kernel, snapshot)) = claimed else {
            counters.misses.fetch_add(1, Relaxed);
            tracing::info!(spec = %spec.name, "the pool has no ready kernel; starting a fresh one");
            return Ok(None);
        };
        counters.hits.fetch_add(1, Relaxed);
        pool.wake();
        // Recorded as claimed before the client learns the id: a gateway restart must never
        // put a kernel someone uses back into the pool.
        self.ctx.registry.persist(snapshot).await;
        tracing::info!(kernel_id = %kernel.id, spec = %spec.name, "kernel claimed from the pool");
        Ok(Some(kernel))
    }

    /// Starts a kernel of spec `name` for its pool.
    async fn start_pooled(&self, name: &str) -> Result<Arc<Kernel>, KernelError> {
        let specs = self.specs().await;
        let spec = specs
            .get(name)
            .cloned()
            .ok_or_else(|| KernelError::NoSuchSpec(name.to_owned()))?;
        if let Runner::Refused(why) = &spec.runner {
            return Err(KernelError::Refused {
                spec: name.to_owned(),
                why: why.to_string(),
            });
        }
        encryption::ask(self.ctx.launcher.transport_encryption, &spec)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = StartRequest {
            id: uuid::Uuid::new_v4().to_string(),
            spec,
            env: std::collections::BTreeMap::new(),
            timeout: self.ctx.launcher.timeout,
            admission: Admission::Pool,
            reply,
        };
        self.ctx
            .tasks
            .spawn(lifecycle::start(self.ctx.clone(), request));
        answer
            .await
            .map_err(|_| KernelError::Cancelled("(the gateway is stopping)".into()))?
            .map(kernel::Claim::take)
    }

    /// Sweeps the logs earlier runs left of kernels that are no longer here (before any
    /// launch, so no log of a kernel being started is taken for one).
    async fn sweep_leftover_logs(&self, logs: &Arc<KernelLogs>) {
        let live: std::collections::HashSet<String> = self
            .list()
            .iter()
            .chain(&self.ctx.registry.pooled(None))
            .map(|k| k.id.clone())
            .collect();
        let sweeper = logs.clone();
        let swept = self
            .ctx
            .tasks
            .spawn_blocking(move || sweeper.sweep_leftovers(&live, std::time::SystemTime::now()))
            .await
            .unwrap_or(0);
        tracing::info!(
            swept,
            retention_secs = logs.retention().as_secs(),
            dir = %logs.dir().display(),
            "kernel logs of ended kernels are kept for the retention"
        );
    }

    /// Re-attaches to the kernels recorded by an earlier run of the gateway. Kernels whose
    /// launcher is gone are dropped from the record and listed in the log with their pids.
    async fn restore(&self) {
        let records = match self.ctx.registry.recorded() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}; starting without the recorded kernels");
                return;
            }
        };
        if records.is_empty() {
            return;
        }
        let mut lost = Vec::new();
        let specs = self.specs().await;
        for r in records {
            let (id, pid, pgid) = (r.id.clone(), r.pid, r.pgid);
            let Some(spec) = specs.get(&r.name).cloned() else {
                tracing::warn!(kernel_id = %id, ?pid, ?pgid, "not restored: its kernelspec {:?} is no longer served", r.name);
                lost.push(id);
                continue;
            };
            let placement = format!("{:?}", r.placement);
            match lifecycle::restore(self.ctx.clone(), r, spec).await {
                Ok(()) => {
                    self.ctx
                        .metrics
                        .reattached
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(why) => {
                    tracing::warn!(kernel_id = %id, ?pid, ?pgid, placement, "not restored: {why}");
                    lost.push(id);
                }
            }
        }
        // The state file now holds the restored kernels only.
        let snapshot = self.ctx.registry.current();
        self.ctx.registry.persist(snapshot).await;
        if !lost.is_empty() {
            tracing::warn!(kernels = ?lost, "recorded kernels that could not be re-attached");
        }
    }

    /// Interrupts kernel `id`.
    ///
    /// Interop quirk: ipykernel ignores SIGINT between cells, but only once it has set that
    /// up; a SIGINT in the first few hundred milliseconds after the launcher reported kills
    /// the kernel (Enterprise Gateway has the same race). So a signal interrupt waits, up to
    /// [`INTERRUPT_READY_WAIT`], until this incarnation has answered `kernel_info_request`.
    pub async fn interrupt(&self, id: &str) -> Result<(), KernelError> {
        let kernel = self.get(id)?;
        let generation = kernel.phase.borrow().generation();
        if let Some(generation) = generation.filter(|_| !kernel.spec.interrupt_by_message) {
            let mut ready = kernel.ready.subscribe();
            let mut phase = kernel.phase();
            tokio::select! {
                r = tokio::time::timeout(INTERRUPT_READY_WAIT, ready.wait_for(|g| *g >= generation)) => {
                    if r.is_err() {
                        tracing::warn!(kernel_id = id, "interrupting a kernel that has not answered kernel_info yet");
                    }
                }
                // Restarted, shut down or dead meanwhile: the owner answers.
                _ = phase.wait_for(|p| p.generation() != Some(generation)) => {}
            }
        }
        kernel.ask(Command::Interrupt).await?
    }

    /// Restarts kernel `id`: same id, new launcher, new ports and key.
    pub async fn restart(&self, id: &str) -> Result<Arc<Kernel>, KernelError> {
        let kernel = self.get(id)?;
        kernel.ask(Command::Restart).await??;
        Ok(kernel)
    }

    /// Shuts kernel `id` down and forgets it.
    pub async fn shutdown(&self, id: &str) -> Result<(), KernelError> {
        self.get(id)?.ask(Command::Shutdown).await
    }

    /// The gateway exits: every kernel is shut down (`stop`) or left running for the next
    /// gateway, its owner ended either way, and every stop already under way (a DELETE is
    /// answered before its kernel has exited) has ended. Bounded by [`CLOSE_WAIT`].
    pub async fn close(&self, stop: bool) {
        let mut all = self.list();
        all.extend(self.ctx.registry.pooled(None));
        let n = all.len();
        let stopping = &self.ctx.stopping;
        let each = all.into_iter().map(|k| async move {
            if stop {
                let _ = k.ask(Command::Shutdown).await;
            } else {
                let _ = k.ask(Command::Detach).await;
            }
        });
        let all_closed = async {
            futures_util::future::join_all(each).await;
            let left = stopping.count();
            if left > 0 {
                tracing::info!(kernels = left, "waiting for kernels still stopping");
            }
            stopping.settled().await;
        };
        if tokio::time::timeout(CLOSE_WAIT, all_closed).await.is_err() {
            tracing::warn!(
                kernels = n,
                stopping = stopping.count(),
                "not every kernel was closed within {CLOSE_WAIT:?}"
            );
        }
    }

    /// Shuts down every kernel idle longer than the timeout, each [`Cull::interval`].
    async fn cull_loop(self, cull: Cull) {
        let mut tick = tokio::time::interval(cull.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            for k in self.list() {
                let (state, connections, idle) =
                    (k.execution_state(), k.connection_count(), k.idle_for());
                if !policy::should_cull(&cull, state, connections, idle) {
                    continue;
                }
                tracing::info!(
                    kernel_id = %k.id,
                    state = state.as_str(),
                    connections,
                    idle_secs = idle.as_secs(),
                    "culling idle kernel"
                );
                if self.shutdown(&k.id).await.is_ok() {
                    self.ctx
                        .metrics
                        .culled
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    /// The Prometheus text of `/metrics`: the counters, and gauges read from their owners.
    pub fn metrics_text(&self) -> String {
        let kernels = self.list();
        let mut gauges = Gauges {
            kernels_by_state: ExecutionState::ALL
                .iter()
                .map(|s| (s.as_str(), 0))
                .collect(),
            kept_bytes: self.ctx.registry.budget.used() as u64,
            reservations: self.ctx.registry.reservations() as u64,
            tasks: self.ctx.tasks.len() as u64,
            payloads_refused: self.ctx.launcher.response.refusals().counts(),
            pools: self.pool_gauges(),
            pool_refills_in_flight: self.ctx.pool.refills_in_flight() as u64,
            ..Gauges::default()
        };
        for k in &kernels {
            let state = k.execution_state().as_str();
            if let Some(slot) = gauges
                .kernels_by_state
                .iter_mut()
                .find(|(s, _)| *s == state)
            {
                slot.1 += 1;
            }
            gauges.connections += k.connection_count() as u64;
        }
        self.ctx.metrics.render(&gauges)
    }

    /// Each pool's size, ready and starting kernels, for `/metrics`.
    fn pool_gauges(&self) -> Vec<PoolGauge> {
        let pooled = self.ctx.registry.pooled(None);
        let mut names: Vec<&String> = self.ctx.pool.sizes().keys().collect();
        names.extend(pooled.iter().map(|k| &k.name));
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let mine = pooled.iter().filter(|k| &k.name == name);
                let ready = mine.clone().filter(|k| k.is_ready()).count() as u64;
                PoolGauge {
                    name: name.clone(),
                    size: self.ctx.pool.size(name) as u64,
                    ready,
                    starting: mine.count() as u64 - ready,
                }
            })
            .collect()
    }

    /// The counters (for tests and embedders).
    pub fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }
}
