//! Where one kernel is in its life, as its WebSocket clients follow it.

use std::sync::Arc;

use crate::channels::KernelEndpoints;

/// Where a kernel is in its life. Its owner publishes it on a `watch` channel, so a restart
/// or a death reaches every WebSocket relay and every parked connection at once.
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

impl Phase {
    /// The generation running, if any.
    pub fn generation(&self) -> Option<u64> {
        match self {
            Phase::Running(ep) => Some(ep.generation),
            _ => None,
        }
    }
}
