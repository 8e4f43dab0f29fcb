//! One incarnation of a kernel: the launcher that runs it and where it listens. A restart
//! makes a new one under the same kernel id; only the kernel's owner holds it.

use std::sync::Arc;

use crate::channels::KernelEndpoints;
use crate::provisioner::Launched;

/// One running (or dead) incarnation of a kernel: its launcher and where it listens.
#[derive(Debug)]
pub(crate) struct Process {
    pub launched: Launched,
    pub endpoints: Arc<KernelEndpoints>,
}
