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
use zeromq::SocketRecv;

use super::kernel::Kernel;
use super::policy::ExecutionState;
use crate::channels::{self, Channel, KernelEndpoints};
use crate::tasks::Tasks;

/// How long the readiness probe waits for `kernel_info_reply`.
const READY_WAIT: Duration = Duration::from_secs(60);
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

async fn probe(kernel: Weak<Kernel>, ep: Arc<KernelEndpoints>) {
    let r = channels::request(
        &ep,
        Channel::Shell,
        "kernel_info_request",
        json!({}),
        READY_WAIT,
    )
    .await;
    match (r, kernel.upgrade()) {
        (Ok(_), Some(k)) => k.mark_ready(ep.generation),
        (Err(e), _) => tracing::debug!("readiness probe: {e}"),
        _ => {}
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
        let Some(msg) = channels::from_zmq(m, &ep.signer, Channel::Iopub) else {
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
            }
        }
    }
}
