//! The owner of one kernel: a task that holds the kernel's process and does everything that
//! changes it.
//!
//! **One owner per kernel.** Each kernel has exactly one task, spawned when its first launch
//! starts (or when a restarted gateway re-attaches to it), that owns its current incarnation
//! ([`Process`]: the launcher and where the kernel listens). Interrupt, restart and shutdown
//! reach it as [`Command`]s, one at a time, and the launcher's exit reaches it as an event;
//! nothing else signals, stops or replaces the process. So there is no lock around a kernel's
//! process and no flag saying "the gateway is stopping this one": the owner knows, because it
//! is the one doing it. A death it did not cause goes through the restart policy
//! ([`RestartBudget`]); a death it did cause is just the end of a stop.
//!
//! **Requests whose client leaves.** The owner finishes every command it took, whether or not
//! anyone still waits for the reply: a cancelled restart leaves the kernel running its new
//! incarnation, a cancelled DELETE still stops and removes it. A start whose client leaves
//! before the kernel is registered is abandoned (its launcher stopped, its reservation
//! released); one whose client leaves after is shut down, since nobody learned its id. A
//! shutdown or gateway exit that arrives during a restart's launch abandons that launch.
//!
//! The owner also starts, per incarnation, the status monitor ([`super::monitor`]), and
//! cancels it when the incarnation ends; it reports every change of incarnation to the
//! registry, which writes the state file.

use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::Signal;
use protocol::comm::CommRequest;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::error::KernelError;
use super::kernel::{Claim, Command, Kernel, Parts};
use super::launch::{Job, Launcher};
use super::logs::KernelLogs;
use super::monitor;
use super::phase::Phase;
use super::policy::{AfterDeath, ExecutionState, RestartBudget};
use super::pool::Pool;
use super::process::Process;
use super::registry::{Registry, Reservation};
use super::stop;
use crate::channels::{self, Channel};
use crate::kernelspecs::KernelSpec;
use crate::metrics::Metrics;
use crate::provisioner::Placement;
use crate::state::KernelRecord;
use crate::tasks::Tasks;

/// What every kernel owner shares.
#[derive(Debug)]
pub(super) struct Context {
    pub launcher: Launcher,
    pub registry: Arc<Registry>,
    pub tasks: Tasks,
    pub metrics: Arc<Metrics>,
    /// Consecutive automatic restarts of a dying kernel; 0 turns them off.
    pub restart_limit: u32,
    /// Kernels' log files, with a state directory.
    pub logs: Option<Arc<KernelLogs>>,
    /// The warm pools.
    pub pool: Arc<Pool>,
    /// How many owners are stopping their kernel (see [`Stopping`]).
    pub stopping: Stopping,
}

/// The count of owners stopping their kernel. A DELETE is answered once the kernel has
/// acknowledged its shutdown, while its owner still waits for the exit (and kills a kernel
/// that does not exit); the gateway's exit waits for this count to reach zero before it
/// cancels the tasks that follow launchers, so no kernel is left half-stopped.
#[derive(Debug, Default)]
pub(super) struct Stopping(tokio::sync::watch::Sender<usize>);

/// One owner's stop, counted while it lives.
struct StopGuard(tokio::sync::watch::Sender<usize>);

impl Stopping {
    fn enter(&self) -> StopGuard {
        self.0.send_modify(|n| *n += 1);
        StopGuard(self.0.clone())
    }

    /// Owners stopping their kernel now.
    pub(super) fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Completes when no owner is stopping its kernel.
    pub(super) async fn settled(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Context {
    /// Where the launcher of kernel `id` writes its output, when it has a file.
    fn log_file(&self, id: &str) -> Option<std::path::PathBuf> {
        self.logs.as_ref().map(|l| l.path(id))
    }

    /// Kernel `id` has ended: its log file is kept for the retention (returned) or deleted.
    fn log_ended(&self, id: &str) -> Option<std::path::PathBuf> {
        self.logs.as_ref().and_then(|l| l.ended(id))
    }
}

/// A kernel start: the request's part, checked.
pub(super) struct StartRequest {
    pub id: String,
    pub spec: KernelSpec,
    pub env: std::collections::BTreeMap<String, String>,
    pub timeout: std::time::Duration,
    pub admission: Admission,
    pub reply: oneshot::Sender<Result<Claim, KernelError>>,
}

/// Where a started kernel goes.
pub(super) enum Admission {
    /// To the request that reserved its place under the limits.
    Request(Reservation),
    /// Into the pool of its kernelspec, counted against no limit until claimed.
    Pool,
}

/// Launches a kernel, registers it and replies, then owns it until it is shut down or the
/// gateway leaves it running.
pub(super) async fn start(ctx: Arc<Context>, mut req: StartRequest) {
    let began = Instant::now();
    let job = Job {
        id: &req.id,
        spec: &req.spec,
        env: &req.env,
        timeout: req.timeout,
        generation: 1,
        log_file: ctx.log_file(&req.id),
    };
    let launched = {
        let token = ctx.tasks.closing().clone();
        let reply = &mut req.reply;
        let abandon = async move {
            tokio::select! {
                () = reply.closed() => {}
                () = token.cancelled() => {}
            }
        };
        ctx.launcher.launch(job, abandon).await
    };
    let process = match launched {
        Ok(p) => p,
        Err(e) => {
            let counter = match e {
                KernelError::Timeout { .. } => &ctx.metrics.starts_timed_out,
                KernelError::Cancelled(_) => &ctx.metrics.starts_abandoned,
                _ => &ctx.metrics.starts_failed,
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(log) = ctx.log_ended(&req.id) {
                tracing::info!(kernel_id = %req.id, log_file = %log.display(), "kernel start failed; its log is kept");
            }
            // The reservation goes with `req`; the client, if still there, gets the error.
            let _ = req.reply.send(Err(e));
            return;
        }
    };
    ctx.metrics.observe_start(began.elapsed());
    ctx.metrics
        .starts_ok
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (kernel, commands) = Kernel::new(Parts {
        id: req.id,
        spec: req.spec,
        env: req.env,
        timeout: req.timeout,
        endpoints: process.endpoints.clone(),
        budget: ctx.registry.budget.clone(),
    });
    let record = record_of(&kernel, &process);
    let snapshot = match req.admission {
        Admission::Request(reservation) => ctx.registry.admit(reservation, kernel.clone(), record),
        Admission::Pool => ctx.registry.pool(kernel.clone(), record),
    };
    ctx.registry.persist(snapshot).await;
    let mut owner = Owner::new(ctx, kernel.clone(), commands, process);
    if let Err(unsent) = req.reply.send(Ok(Claim::new(kernel))) {
        if let Ok(claim) = unsent {
            // Shut down right here, not through the queue.
            claim.take();
        }
        tracing::info!(kernel_id = %owner.kernel.id, "the client that asked for this kernel has gone; shutting it down");
        owner.shutdown(None).await;
        return;
    }
    owner.run().await;
}

/// Re-attaches to a kernel recorded by an earlier run of the gateway and owns it. Returns
/// why it could not.
pub(super) async fn restore(
    ctx: Arc<Context>,
    record: KernelRecord,
    spec: KernelSpec,
) -> Result<(), String> {
    let provisioner = ctx.launcher.provisioners.for_placement(&record.placement);
    let launched = provisioner
        .reattach(&record.id, &record.placement)
        .await
        .map_err(|e| e.to_string())?;
    let curve = record
        .curve_publickey
        .as_deref()
        .map(protocol::z85::decode_key)
        .transpose()
        .map_err(|e| format!("its recorded curve_publickey is not a CurveZMQ key: {e}"))?
        .map(channels::curve::CurveLink::new)
        .transpose()
        .map_err(|e| format!("cannot set up its CurveZMQ link: {e}"))?;
    let endpoints = Arc::new(channels::KernelEndpoints {
        signer: protocol::wire::Signer::new(record.connection.key.as_bytes()),
        info: record.connection.clone(),
        host: record.host.clone(),
        comm_port: record.comm_port,
        pid: record.pid,
        pgid: record.pgid,
        generation: record.generation,
        secret: record.launch_secret.clone().map(Into::into),
        curve,
        limits: ctx.launcher.frame_limits,
    });
    let timeout = std::time::Duration::try_from_secs_f64(record.launch_timeout_secs)
        .unwrap_or(ctx.launcher.timeout);
    let (kernel, commands) = Kernel::new(Parts {
        id: record.id.clone(),
        spec,
        env: record.env.clone(),
        timeout,
        endpoints: endpoints.clone(),
        budget: ctx.registry.budget.clone(),
    });
    // Past its start-up: interrupts need not wait for the readiness probe, which a long cell
    // running across the gateway restart would hold up (shell is sequential).
    kernel.ready.send_replace(record.generation);
    let process = Process {
        launched,
        endpoints,
    };
    let pooled = record.pool.is_some();
    let current = record_of(&kernel, &process);
    if pooled {
        let _ = ctx.registry.pool(kernel.clone(), current);
    } else {
        let _ = ctx.registry.restored(kernel.clone(), current);
    }
    tracing::info!(kernel_id = %kernel.id, pooled, "kernel restored from the state file");
    let owner = Owner::new(ctx.clone(), kernel, commands, process);
    ctx.tasks.spawn(owner.run());
    Ok(())
}

/// The state-file record of `kernel`'s incarnation `p`.
fn record_of(kernel: &Kernel, p: &Process) -> KernelRecord {
    let ep = &p.endpoints;
    KernelRecord {
        id: kernel.id.clone(),
        name: kernel.name.clone(),
        env: kernel.env(),
        launch_timeout_secs: kernel.timeout.as_secs_f64(),
        generation: ep.generation,
        connection: ep.info.clone(),
        host: ep.host.clone(),
        comm_port: ep.comm_port,
        pid: ep.pid,
        pgid: ep.pgid,
        placement: p.launched.placement.clone(),
        launch_secret: ep.secret.as_deref().map(str::to_owned),
        curve_publickey: ep
            .curve
            .as_ref()
            .map(|c| protocol::z85::encode_key(c.server_key())),
        pool: None,
    }
}

/// How the owner's life ends.
enum End {
    /// Stop the kernel and remove it; reply when done.
    Shutdown(Option<oneshot::Sender<()>>),
    /// Leave it running for the next gateway; reply when done.
    Detach(oneshot::Sender<()>),
    /// A pooled kernel died unclaimed and was removed: nothing left to do.
    Retired,
}

/// The task that owns one kernel.
struct Owner {
    ctx: Arc<Context>,
    kernel: Arc<Kernel>,
    commands: mpsc::Receiver<Command>,
    /// The current incarnation; `None` once it died for good (or was stopped).
    process: Option<Process>,
    /// Cancels the current incarnation's monitor.
    incarnation: CancellationToken,
    restarts: RestartBudget,
    /// An end asked for while a restart was launching.
    end: Option<End>,
}

impl Owner {
    fn new(
        ctx: Arc<Context>,
        kernel: Arc<Kernel>,
        commands: mpsc::Receiver<Command>,
        process: Process,
    ) -> Self {
        let mut owner = Owner {
            ctx,
            kernel,
            commands,
            process: None,
            incarnation: CancellationToken::new(),
            restarts: RestartBudget::default(),
            end: None,
        };
        owner.install(process);
        owner
    }

    /// Makes `process` the current incarnation and starts its monitor.
    fn install(&mut self, process: Process) {
        self.incarnation.cancel();
        self.incarnation = self.ctx.tasks.token().child_token();
        monitor::spawn(
            &self.ctx.tasks,
            &self.kernel,
            process.endpoints.clone(),
            self.incarnation.clone(),
        );
        self.kernel.set_death_reason(None);
        self.kernel.set_encrypted(process.endpoints.curve.is_some());
        self.kernel
            .phase
            .send_replace(Phase::Running(process.endpoints.clone()));
        self.process = Some(process);
    }

    /// Takes commands and follows the launcher until the kernel is shut down or detached.
    async fn run(mut self) {
        loop {
            if let Some(end) = self.end.take() {
                return self.finish(end).await;
            }
            let exit = self
                .process
                .as_ref()
                .map(|p| p.launched.exit.clone())
                .filter(|e| e.borrow().is_none());
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Interrupt(reply)) => {
                        let _ = reply.send(self.interrupt().await);
                    }
                    Some(Command::Restart(reply)) => {
                        self.ctx.metrics.restarts_requested.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let r = self.restart(false).await;
                        let _ = reply.send(r);
                    }
                    Some(Command::Shutdown(reply)) => self.end = Some(End::Shutdown(Some(reply))),
                    Some(Command::Detach(reply)) => self.end = Some(End::Detach(reply)),
                    // Every handle is gone: nobody can reach this kernel any more.
                    None => self.end = Some(End::Shutdown(None)),
                },
                () = exited(exit) => self.on_death().await,
            }
        }
    }

    async fn finish(mut self, end: End) {
        match end {
            End::Shutdown(reply) => self.shutdown(reply).await,
            End::Detach(reply) => {
                self.incarnation.cancel();
                tracing::info!(kernel_id = %self.kernel.id, "left running for the next gateway");
                let _ = reply.send(());
            }
            End::Retired => {}
        }
    }

    /// The launcher ended on its own: restart the kernel if the policy allows, else leave it
    /// dead.
    async fn on_death(&mut self) {
        let id = self.kernel.id.clone();
        if self.ctx.registry.unpool(&id).is_some() {
            return self.retire_dead().await;
        }
        let exit = self
            .process
            .as_ref()
            .and_then(|p| *p.launched.exit.borrow());
        let info = exit.map(|i| i.to_string()).unwrap_or_default();
        let reason = if exit.is_some_and(|e| e.out_of_memory) {
            format!("OOM: the kernel exceeded its memory limit; launcher ended with {info}")
        } else {
            format!("launcher ended with {info}")
        };
        self.kernel.set_death_reason(Some(reason));
        match self
            .process
            .as_ref()
            .and_then(|p| log_place(&p.launched.placement))
        {
            Some(log) => {
                tracing::warn!(kernel_id = %id, log_file = %log, "kernel died: launcher ended with {info}");
            }
            None => tracing::warn!(kernel_id = %id, "kernel died: launcher ended with {info}"),
        }
        self.ctx
            .metrics
            .deaths
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.kernel.set_state(ExecutionState::Dead);
        match self
            .restarts
            .on_death(Instant::now(), self.ctx.restart_limit)
        {
            AfterDeath::Restart { attempt } => {
                tracing::warn!(kernel_id = %id, attempt, limit = self.ctx.restart_limit, "restarting the kernel");
                self.ctx
                    .metrics
                    .restarts_automatic
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = self.restart(true).await {
                    tracing::error!(kernel_id = %id, "automatic restart failed: {e}");
                }
            }
            AfterDeath::StayDead { gave_up } => {
                if gave_up {
                    let limit = self.ctx.restart_limit;
                    tracing::warn!(kernel_id = %id, "kernel died {limit} times in a row; leaving it dead");
                }
                self.bury().await;
            }
        }
    }

    /// A pooled kernel died before anyone claimed it: it is removed (nothing of it left
    /// running) and the pool starts a replacement; no restart, since nobody waits for it.
    async fn retire_dead(&mut self) {
        let id = self.kernel.id.clone();
        let exit = self
            .process
            .as_ref()
            .and_then(|p| *p.launched.exit.borrow())
            .map(|i| i.to_string())
            .unwrap_or_default();
        tracing::warn!(kernel_id = %id, spec = %self.kernel.name, "pooled kernel died unclaimed (launcher ended with {exit}); replacing it");
        self.ctx
            .metrics
            .deaths
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.ctx
            .metrics
            .pool
            .deaths
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.bury().await;
        let snapshot = self.ctx.registry.remove(&id);
        self.ctx.registry.persist(snapshot).await;
        self.kernel.phase.send_replace(Phase::Gone);
        let _ = self.ctx.log_ended(&id);
        self.end = Some(End::Retired);
        self.ctx.pool.wake();
    }

    /// Ends the current incarnation for good: nothing left running, the kernel shown dead.
    async fn bury(&mut self) {
        self.incarnation.cancel();
        if let Some(p) = self.process.take() {
            stop::kill_orphaned_group(&p, &self.kernel.id).await;
        }
        self.kernel.set_state(ExecutionState::Dead);
        self.kernel.phase.send_replace(Phase::Dead);
        let snapshot = self.ctx.registry.record(&self.kernel.id, None);
        self.ctx.registry.persist(snapshot).await;
    }

    /// Replaces the incarnation: stops the old one (if any), launches a new one under the
    /// same id with the same spec and env. A shutdown or gateway exit that arrives meanwhile
    /// abandons the launch and is carried out next.
    async fn restart(&mut self, automatic: bool) -> Result<(), KernelError> {
        let kernel = self.kernel.clone();
        kernel.phase.send_replace(Phase::Restarting { automatic });
        kernel.set_state(ExecutionState::Restarting);
        let generation = self
            .process
            .as_ref()
            .map_or(kernel.phase.borrow().generation().unwrap_or(0), |p| {
                p.endpoints.generation
            })
            + 1;
        self.incarnation.cancel();
        if let Some(old) = self.process.take() {
            stop::stop(&old, &kernel.id, true, self.ctx.launcher.grace, || {}).await;
            stop::kill_orphaned_group(&old, &kernel.id).await;
        }
        let env = kernel.env();
        let job = Job {
            id: &kernel.id,
            spec: &kernel.spec,
            env: &env,
            timeout: kernel.timeout,
            generation,
            log_file: self.ctx.log_file(&kernel.id),
        };
        let mut waiting: Vec<oneshot::Sender<Result<(), KernelError>>> = Vec::new();
        let launched = {
            let id = kernel.id.clone();
            let (commands, end, waiting) = (&mut self.commands, &mut self.end, &mut waiting);
            let abandon = async move {
                while end.is_none() {
                    match commands.recv().await {
                        Some(Command::Shutdown(r)) => *end = Some(End::Shutdown(Some(r))),
                        Some(Command::Detach(r)) => *end = Some(End::Detach(r)),
                        Some(Command::Interrupt(r)) => {
                            let _ = r.send(Err(KernelError::NotRunning(id.clone())));
                        }
                        // Answered with this restart's outcome.
                        Some(Command::Restart(r)) => waiting.push(r),
                        None => std::future::pending::<()>().await,
                    }
                }
            };
            self.ctx.launcher.launch(job, abandon).await
        };
        let outcome = match launched {
            Ok(process) => {
                self.kernel.set_state(ExecutionState::Starting);
                let record = record_of(&self.kernel, &process);
                self.install(process);
                let snapshot = self.ctx.registry.record(&self.kernel.id, Some(record));
                self.ctx.registry.persist(snapshot).await;
                Ok(())
            }
            Err(KernelError::Cancelled(id)) => Err(KernelError::NotRunning(id)),
            Err(e) => {
                self.bury().await;
                Err(e)
            }
        };
        for r in waiting {
            let _ = r.send(match &outcome {
                Ok(()) => Ok(()),
                Err(_) => Err(KernelError::NotRunning(self.kernel.id.clone())),
            });
        }
        outcome
    }

    /// Interrupts the running cell: `interrupt_request` on control for `interrupt_mode:
    /// message`, else `{"signum": 2}` on the comm port (SIGINT to the launcher's group
    /// without one).
    async fn interrupt(&self) -> Result<(), KernelError> {
        let id = &self.kernel.id;
        let Some(p) = self
            .process
            .as_ref()
            .filter(|_| matches!(*self.kernel.phase.borrow(), Phase::Running(_)))
        else {
            return Err(KernelError::NotRunning(id.clone()));
        };
        let fail = |message: String| KernelError::Interrupt {
            kernel_id: id.clone(),
            message,
        };
        let grace = self.ctx.launcher.grace;
        if self.kernel.spec.interrupt_by_message {
            channels::request(
                &p.endpoints,
                Channel::Control,
                "interrupt_request",
                json!({}),
                grace.interrupt_reply,
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
            return Ok(());
        }
        match p.endpoints.comm_port {
            Some(port) => stop::comm_send(
                &p.endpoints,
                port,
                CommRequest {
                    signum: Some(2),
                    shutdown: false,
                },
                grace.comm_connect,
            )
            .await
            .map_err(|e| fail(format!("comm port {port}: {e}"))),
            None => {
                p.launched.control.signal(Signal::SIGINT).await;
                Ok(())
            }
        }
    }

    /// Stops the kernel and removes it. It leaves the registry first, so it is gone from the
    /// listing at once, then its process is stopped. `reply` (a DELETE's) is answered as soon
    /// as the kernel has acknowledged its shutdown or exited; the wait for its exit, and the
    /// kill of a kernel that does not exit, go on here. A kernel that does not acknowledge is
    /// answered for once it is gone.
    async fn shutdown(&mut self, mut reply: Option<oneshot::Sender<()>>) {
        let _stopping = self.ctx.stopping.enter();
        let id = self.kernel.id.clone();
        let snapshot = self.ctx.registry.remove(&id);
        self.ctx.registry.persist(snapshot).await;
        self.incarnation.cancel();
        if let Some(p) = self.process.take() {
            let kernel = &self.kernel;
            let acknowledged = || gone(kernel, reply.take());
            stop::stop(&p, &id, false, self.ctx.launcher.grace, acknowledged).await;
            stop::kill_orphaned_group(&p, &id).await;
        }
        gone(&self.kernel, reply.take());
        self.ctx
            .metrics
            .shutdowns
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.ctx.log_ended(&id) {
            Some(log) => {
                let kept_secs = self
                    .ctx
                    .logs
                    .as_ref()
                    .map_or(0, |l| l.retention().as_secs());
                tracing::info!(kernel_id = %id, log_file = %log.display(), kept_secs, "kernel shut down; its log is kept");
            }
            None => tracing::info!(kernel_id = %id, "kernel shut down"),
        }
    }
}

/// `kernel` is gone for its clients: shown dead, its relays closed, `reply` answered.
fn gone(kernel: &Kernel, reply: Option<oneshot::Sender<()>>) {
    kernel.set_state(ExecutionState::Dead);
    if !matches!(*kernel.phase.borrow(), Phase::Gone) {
        kernel.phase.send_replace(Phase::Gone);
    }
    if let Some(r) = reply {
        let _ = r.send(());
    }
}

/// Where a launcher's log file is, for the operator: a local path, or `host:path` for a
/// launcher over SSH. `None` when its output went to the gateway's own log (or Docker's).
fn log_place(placement: &Placement) -> Option<String> {
    match placement {
        Placement::Local {
            log_file: Some(f), ..
        } => Some(f.display().to_string()),
        Placement::Ssh { host, log_file, .. } => Some(format!("{host}:{log_file}")),
        _ => None,
    }
}

/// Completes when the launcher followed by `exit` has exited; never without one.
async fn exited(exit: Option<tokio::sync::watch::Receiver<Option<crate::provisioner::ExitInfo>>>) {
    match exit {
        Some(mut e) => {
            // A follower that ended without a report (the gateway is stopping) is no death.
            if e.wait_for(Option::is_some).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
