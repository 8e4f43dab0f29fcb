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

#[derive(Debug)]
struct Activity {
    state: ExecutionState,
    last_activity: OffsetDateTime,
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
    /// The request's validated `KERNEL_*` env (restarts reuse it).
    pub(super) env: BTreeMap<String, String>,
    /// Launch timeout, also for restarts.
    pub(super) timeout: Duration,
    /// `KERNEL_USERNAME` of the request, for per-user limits.
    pub(super) username: String,
    commands: mpsc::Sender<Command>,
    pub(super) phase: watch::Sender<Phase>,
    activity: Mutex<Activity>,
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
            username: p.env.get("KERNEL_USERNAME").cloned().unwrap_or_default(),
            clients: Clients::new(&p.id, p.budget),
            id: p.id,
            spec: p.spec,
            env: p.env,
            timeout: p.timeout,
            commands,
            phase: watch::Sender::new(Phase::Running(p.endpoints)),
            activity: Mutex::new(Activity {
                state: ExecutionState::Starting,
                last_activity: OffsetDateTime::now_utc(),
            }),
            ready: watch::Sender::new(0),
        };
        (Arc::new(kernel), rx)
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
        let (state, last) = {
            let a = self.activity();
            (a.state, a.last_activity)
        };
        json!({
            "id": self.id,
            "name": self.name,
            "last_activity": channels::timestamp(last),
            "execution_state": state.as_str(),
            "connections": self.connection_count(),
        })
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
