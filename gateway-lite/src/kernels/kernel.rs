//! The handle of one kernel: what everyone may read about it, and the one way to ask its
//! owner to do something.
//!
//! A [`Kernel`] is shared (the registry, WebSocket relays, request handlers hold it), but it
//! owns no process: the kernel's launcher, its ports and its restarts belong to one task, its
//! owner (see [`super::lifecycle`]). The handle carries what that owner publishes (the
//! [`Phase`], the execution state and last activity, which incarnation answered the
//! readiness probe), the kernel's clients ([`Clients`]), and a command channel to the owner.
//! A command carries a reply channel; the owner finishes a command even when nobody waits for
//! the reply any more (a client that disconnected mid-request).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};

use super::clients::{Clients, KeptBudget};
use super::error::KernelError;
use super::phase::Phase;
use super::policy::ExecutionState;
use crate::channels::{self, KernelEndpoints};
use crate::kernelspecs::KernelSpec;

/// Commands queued for a kernel's owner.
pub(super) const COMMAND_QUEUE: usize = 16;

/// What a kernel's owner can be asked to do.
#[derive(Debug)]
pub(super) enum Command {
    /// Interrupt the running cell.
    Interrupt(oneshot::Sender<Result<(), KernelError>>),
    /// Restart under the same id.
    Restart(oneshot::Sender<Result<(), KernelError>>),
    /// Stop the kernel and remove it.
    Shutdown(oneshot::Sender<()>),
    /// The gateway exits and leaves the kernel running for the next gateway.
    Detach(oneshot::Sender<()>),
}

/// Whose a kernel is: its request's env and user.
#[derive(Debug)]
struct Who {
    env: BTreeMap<String, String>,
    username: String,
}

impl Who {
    fn of(env: BTreeMap<String, String>) -> Self {
        Who {
            username: env.get("KERNEL_USERNAME").cloned().unwrap_or_default(),
            env,
        }
    }
}

#[derive(Debug)]
struct Activity {
    state: ExecutionState,
    last_activity: OffsetDateTime,
    /// Why the kernel last died (its launcher's exit; OOM when killed at its memory limit),
    /// until it runs again.
    reason: Option<String>,
}

/// One kernel, as everyone but its owner sees it.
#[derive(Debug)]
pub struct Kernel {
    /// Kernel id.
    pub id: String,
    /// Kernelspec name.
    pub name: String,
    /// The kernelspec it was started from.
    pub(super) spec: KernelSpec,
    /// The request's validated `KERNEL_*` env (restarts reuse it) and its `KERNEL_USERNAME`
    /// (per-user limits); a pooled kernel gets its claimer's at the claim.
    who: Mutex<Who>,
    /// Launch timeout, also for restarts.
    pub(super) timeout: Duration,
    commands: mpsc::Sender<Command>,
    pub(super) phase: watch::Sender<Phase>,
    activity: Mutex<Activity>,
    /// Its latest incarnation's channels are CurveZMQ (`transport_encryption` in the model).
    encrypted: AtomicBool,
    /// The latest generation that answered the readiness probe (`kernel_info_reply`).
    pub(super) ready: watch::Sender<u64>,
    /// Its WebSocket clients.
    pub clients: Clients,
}

/// What a new kernel handle is made from.
pub(super) struct Parts {
    pub id: String,
    pub spec: KernelSpec,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    pub endpoints: Arc<KernelEndpoints>,
    pub budget: Arc<KeptBudget>,
}

impl Kernel {
    /// A handle and the receiving end of its command channel, for its owner.
    pub(super) fn new(p: Parts) -> (Arc<Self>, mpsc::Receiver<Command>) {
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let kernel = Kernel {
            name: p.spec.name.clone(),
            who: Mutex::new(Who::of(p.env)),
            clients: Clients::new(&p.id, p.budget),
            id: p.id,
            spec: p.spec,
            timeout: p.timeout,
            commands,
            encrypted: AtomicBool::new(p.endpoints.curve.is_some()),
            phase: watch::Sender::new(Phase::Running(p.endpoints)),
            activity: Mutex::new(Activity {
                state: ExecutionState::Starting,
                last_activity: OffsetDateTime::now_utc(),
                reason: None,
            }),
            ready: watch::Sender::new(0),
        };
        (Arc::new(kernel), rx)
    }

    fn who(&self) -> std::sync::MutexGuard<'_, Who> {
        // Replaced whole, never left half-written.
        self.who.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The request's `KERNEL_*` env (restarts reuse it).
    pub(super) fn env(&self) -> BTreeMap<String, String> {
        self.who().env.clone()
    }

    /// Whether the current incarnation has answered the readiness probe.
    pub(super) fn is_ready(&self) -> bool {
        let generation = self.phase.borrow().generation();
        generation.is_some_and(|g| *self.ready.borrow() >= g)
    }

    /// Whether the kernel counts for `user`.
    pub(super) fn is_users(&self, user: &str) -> bool {
        self.who().username == user
    }

    /// A pooled kernel is claimed by a request with `env`: from now on it is that request's
    /// (its user, and what a restart launches with).
    pub(super) fn claimed_with(&self, env: BTreeMap<String, String>) {
        *self.who() = Who::of(env);
    }

    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        // Two plain fields, never left half-written: a poisoned lock is still consistent.
        self.activity.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The execution state of the REST model.
    pub fn execution_state(&self) -> ExecutionState {
        self.activity().state
    }

    /// Open WebSocket connections.
    pub fn connection_count(&self) -> usize {
        self.clients.count()
    }

    /// How long since the last message to or from the kernel.
    pub fn idle_for(&self) -> Duration {
        let last = self.activity().last_activity;
        Duration::try_from(OffsetDateTime::now_utc() - last).unwrap_or_default()
    }

    /// The REST model.
    pub fn model(&self) -> Value {
        let (state, last, reason) = {
            let a = self.activity();
            (a.state, a.last_activity, a.reason.clone())
        };
        let mut model = json!({
            "id": self.id,
            "name": self.name,
            "last_activity": channels::timestamp(last),
            "execution_state": state.as_str(),
            "connections": self.connection_count(),
            // gateway-lite's addition: whether the channels to the kernel are CurveZMQ.
            "transport_encryption": if self.is_encrypted() { "curve" } else { "none" },
        });
        // gateway-lite's addition: why a dead kernel died.
        if let Some(r) = reason {
            model["reason"] = json!(r);
        }
        model
    }

    /// Whether its latest incarnation's channels are CurveZMQ.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted.load(Ordering::Relaxed)
    }

    /// Records whether a new incarnation's channels are CurveZMQ.
    pub(super) fn set_encrypted(&self, curve: bool) {
        self.encrypted.store(curve, Ordering::Relaxed);
    }

    /// Why the kernel last died, until it runs again.
    pub fn death_reason(&self) -> Option<String> {
        self.activity().reason.clone()
    }

    /// Records why the kernel died (`None` when a new incarnation runs).
    pub(super) fn set_death_reason(&self, reason: Option<String>) {
        self.activity().reason = reason;
    }

    /// Follows the kernel's phase.
    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Records activity (a message to or from the kernel).
    pub fn touch(&self) {
        self.activity().last_activity = OffsetDateTime::now_utc();
    }

    /// Sets the execution state (and counts it as activity).
    pub(super) fn set_state(&self, state: ExecutionState) {
        let mut a = self.activity();
        a.state = state;
        a.last_activity = OffsetDateTime::now_utc();
    }

    /// Moves `starting` to `idle` (the kernel answered the readiness probe); other states
    /// stay, since iopub already said more.
    pub(super) fn mark_ready(&self, generation: u64) {
        {
            let mut a = self.activity();
            if a.state == ExecutionState::Starting {
                a.state = ExecutionState::Idle;
            }
        }
        self.ready.send_if_modified(|g| {
            let newer = *g < generation;
            *g = (*g).max(generation);
            newer
        });
    }

    /// Sends a command to the owner and waits for its reply. The owner is gone (the kernel
    /// was shut down meanwhile) when the command cannot be delivered or is dropped unanswered.
    pub(super) async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, KernelError> {
        let (tx, rx) = oneshot::channel();
        let gone = || KernelError::NoSuchKernel(self.id.clone());
        self.commands.send(command(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

/// A started kernel on its way to the client that asked for it. The owner hands it over
/// through a oneshot channel; if the request is dropped between the owner's send and the
/// handler's next poll (the client hung up just then), the value dies in the channel. Nobody
/// else knows the new kernel's id, so a claim dropped before [`Claim::take`] asks the owner to
/// shut the kernel down (the soak found this leak: one kernel in ~1,000 hung-up starts).
pub(super) struct Claim {
    kernel: Arc<Kernel>,
    claimed: bool,
}

impl Claim {
    pub(super) fn new(kernel: Arc<Kernel>) -> Self {
        Claim {
            kernel,
            claimed: false,
        }
    }

    /// The kernel, now the caller's to deliver.
    pub(super) fn take(mut self) -> Arc<Kernel> {
        self.claimed = true;
        self.kernel.clone()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.claimed {
            return;
        }
        let (reply, _) = oneshot::channel();
        // A fresh kernel's command queue is empty; should it be full or closed, the kernel is
        // already being acted on.
        if self
            .kernel
            .commands
            .try_send(Command::Shutdown(reply))
            .is_ok()
        {
            tracing::info!(kernel_id = %self.kernel.id, "the request for this kernel was dropped before it got the kernel; shutting it down");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::KernelEndpoints;
    use protocol::connection::ConnectionInfo;
    use protocol::wire::Signer;

    fn kernel() -> (Arc<Kernel>, mpsc::Receiver<Command>) {
        let info: ConnectionInfo = serde_json::from_value(serde_json::json!({
            "shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4,
            "hb_port": 5, "ip": "127.0.0.1", "key": "k"
        }))
        .unwrap();
        Kernel::new(Parts {
            id: "k1".into(),
            spec: KernelSpec::embedded_python3(),
            env: BTreeMap::new(),
            timeout: Duration::from_secs(1),
            endpoints: Arc::new(KernelEndpoints {
                info,
                host: "127.0.0.1".into(),
                signer: Signer::new(b"k"),
                comm_port: None,
                pid: None,
                pgid: None,
                generation: 1,
                secret: None,
                curve: None,
                limits: crate::channels::frame_limits(1024),
            }),
            budget: Arc::new(KeptBudget::new(1024)),
        })
    }

    #[test]
    fn a_claim_dropped_untaken_shuts_the_kernel_down() {
        let (k, mut commands) = kernel();
        drop(Claim::new(k));
        assert!(matches!(commands.try_recv(), Ok(Command::Shutdown(_))));
    }

    #[test]
    fn a_taken_claim_leaves_the_kernel_alone() {
        let (k, mut commands) = kernel();
        let taken = Claim::new(k).take();
        assert_eq!(taken.id, "k1");
        assert!(commands.try_recv().is_err());
    }
}
