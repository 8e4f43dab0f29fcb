//! The status monitor of one incarnation: the execution state and last activity of the REST
//! model, with or without clients.
//!
//! It subscribes to the kernel's iopub and follows `status` messages, and it probes the kernel
//! once with `kernel_info_request`: ipykernel answers shell requests once it is ready, so the
//! reply moves the model from `starting` to `idle` even when no client is connected, and
//! marks the incarnation ready for signal interrupts (see [`super::Kernels::interrupt`]). The
//! owner spawns both for each incarnation and cancels them when the incarnation ends.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::kernel::Kernel;
use super::policy::ExecutionState;
use crate::channels::{self, Channel, KernelEndpoints};
use crate::tasks::Tasks;

/// How long the readiness probe keeps asking for `kernel_info_reply`.
const READY_WAIT: Duration = Duration::from_secs(60);
/// How long one probe waits for its reply before it asks again.
const PROBE_TRY: Duration = Duration::from_secs(5);
/// Pause after an iopub receive error, so a broken socket cannot spin.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Starts the monitor and the readiness probe of incarnation `ep` of `kernel`, until `stop`.
pub(super) fn spawn(
    tasks: &Tasks,
    kernel: &Arc<Kernel>,
    ep: Arc<KernelEndpoints>,
    stop: CancellationToken,
) {
    let weak = Arc::downgrade(kernel);
    let (probe_ep, probe_kernel, probe_stop) = (ep.clone(), weak.clone(), stop.clone());
    tasks.spawn(async move {
        tokio::select! {
            () = probe_stop.cancelled() => {}
            () = probe(probe_kernel, probe_ep) => {}
        }
    });
    tasks.spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = follow(weak, ep) => {}
        }
    });
}

/// Asks the kernel for `kernel_info` until it answers (or [`READY_WAIT`] passes).
///
/// The payload arrives before the kernel has bound its ports, so the first connect can be
/// refused outright; a probe that gave up then would leave the incarnation "not ready" for
/// good, and every signal interrupt would wait the whole [`super::INTERRUPT_READY_WAIT`].
async fn probe(kernel: Weak<Kernel>, ep: Arc<KernelEndpoints>) {
    let give_up = tokio::time::Instant::now() + READY_WAIT;
    loop {
        channels::wait_listening(&ep).await;
        let left = give_up.saturating_duration_since(tokio::time::Instant::now());
        let r = channels::request(
            &ep,
            Channel::Shell,
            "kernel_info_request",
            json!({}),
            left.min(PROBE_TRY),
        )
        .await;
        match r {
            Ok(_) => {
                if let Some(k) = kernel.upgrade() {
                    k.mark_ready(ep.generation);
                }
                return;
            }
            Err(e) if tokio::time::Instant::now() < give_up => {
                tracing::debug!("readiness probe: {e}; asking again");
                tokio::time::sleep(RECV_ERROR_PAUSE).await;
            }
            Err(e) => {
                tracing::debug!("readiness probe gave up: {e}");
                return;
            }
        }
    }
}

async fn follow(kernel: Weak<Kernel>, ep: Arc<KernelEndpoints>) {
    let mut sub = match channels::subscriber(&ep).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("status monitor could not subscribe to iopub: {e}");
            return;
        }
    };
    loop {
        let Ok(m) = sub.recv().await else {
            tokio::time::sleep(RECV_ERROR_PAUSE).await;
            continue;
        };
        let Some(msg) = channels::verified(m, &ep.signer, Channel::Iopub) else {
            continue;
        };
        let Some(kernel) = kernel.upgrade() else {
            return;
        };
        kernel.touch();
        if protocol::wire::header_fields(&msg.header).is_some_and(|(t, _)| t == "status") {
            let state = serde_json::from_slice::<Value>(&msg.content)
                .ok()
                .and_then(|c| {
                    c.get("execution_state")
                        .and_then(Value::as_str)
                        .and_then(ExecutionState::from_kernel_status)
                });
            if let Some(state) = state {
                kernel.set_state(state);
                // Busy or idle: the kernel has handled a request, so it is past its start-up
                // (a client's own kernel_info may get there before the probe).
                if state != ExecutionState::Starting {
                    kernel.mark_ready(ep.generation);
                }
            }
        }
    }
}
