//! Warm pools (`--pool NAME=N`): kernels started before anyone asks for them, so a request
//! gets a kernel that already answered `kernel_info` instead of waiting for its launch.
//!
//! The pooled kernels themselves are ordinary kernels with ordinary owners
//! ([`super::lifecycle`]); the registry keeps them apart until a request claims one (see
//! [`super::registry`]). This module decides the rest: which requests a pooled kernel can
//! serve ([`compatible`]) and the pools' counts; the keeper, one tracked task that keeps every
//! pool at its size, is [`super::keeper`].
//! Refills launch through one semaphore shared by all pools
//! (`--pool-refill-concurrency`), so a burst of claims, a gateway start with large pools or a
//! run of deaths cannot put more than that many pooled launches on the machine at once; a
//! request's own start never waits for that semaphore, so refills cannot starve live kernels.
//! A pool whose launches fail backs off (doubling, up to a minute) instead of
//! relaunching in a loop.
//!
//! **What a claimed kernel carries from its pool time: nothing.** The gateway never runs code
//! in a pooled kernel: the only message it sends is the readiness probe's
//! `kernel_info_request`, which neither executes code nor touches the execution count or the
//! history; nobody can connect to a pooled kernel (it is not listed and its id is not known
//! outside the gateway), and a client's iopub subscription starts when it connects.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::config::Pools;
use crate::kernelspecs::{KernelSpec, Runner};

/// The request env variables a pooled kernel can serve: [`USERNAME`] (applied at the claim)
/// and `KERNEL_LAUNCH_TIMEOUT` (moot: the kernel is started).
const COMPATIBLE_VARS: [&str; 2] = [USERNAME, "KERNEL_LAUNCH_TIMEOUT"];
const USERNAME: &str = "KERNEL_USERNAME";

/// The pools' configuration and the keeper's bookkeeping.
#[derive(Debug)]
pub(super) struct Pool {
    pub(super) sizes: BTreeMap<String, usize>,
    pub(super) refill: Arc<Semaphore>,
    pub(super) concurrency: usize,
    /// How long a refill waits before it launches (`--pool-refill-delay`). A claim wakes the
    /// keeper at the moment its client connects to the claimed kernel and sends its first
    /// requests; a refill launched at that same moment (a launcher and a kernel interpreter,
    /// for Spark a driver JVM, starting) would take the CPU from them.
    pub(super) delay: Duration,
    /// Pooled launches in flight (or backing off) per kernelspec.
    pub(super) launching: Mutex<BTreeMap<String, usize>>,
    /// Consecutive failed launches per kernelspec.
    pub(super) failures: Mutex<BTreeMap<String, u32>>,
    pub(super) wake: Notify,
}

impl Pool {
    pub(super) fn new(config: &Pools) -> Self {
        Pool {
            sizes: config.sizes.clone(),
            refill: Arc::new(Semaphore::new(config.refill_concurrency.max(1))),
            concurrency: config.refill_concurrency.max(1),
            delay: config.refill_delay,
            launching: Mutex::default(),
            failures: Mutex::default(),
            wake: Notify::new(),
        }
    }

    /// The size of the pool of kernelspec `name` (0: not pooled).
    pub(super) fn size(&self, name: &str) -> usize {
        self.sizes.get(name).copied().unwrap_or(0)
    }

    /// The configured pools.
    pub(super) fn sizes(&self) -> &BTreeMap<String, usize> {
        &self.sizes
    }

    /// Pooled launches running now.
    pub(super) fn refills_in_flight(&self) -> usize {
        self.concurrency
            .saturating_sub(self.refill.available_permits())
    }

    /// Something changed (a claim, a death): the keeper looks again.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    pub(super) fn launching(&self, name: &str) -> usize {
        lock(&self.launching).get(name).copied().unwrap_or(0)
    }

    pub(super) fn add_launching(&self, name: &str, delta: isize) {
        let mut l = lock(&self.launching);
        let n = l.entry(name.to_owned()).or_default();
        *n = n.saturating_add_signed(delta);
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain maps of counts, updated in one statement: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a pooled kernel of `spec` can serve a request with the (validated) `env`; `Err`
/// says why not.
///
/// Compatible means: the request sets no `KERNEL_*` variable but `KERNEL_USERNAME` and
/// `KERNEL_LAUNCH_TIMEOUT`. `KERNEL_USERNAME` is applied at the claim (the kernel is that
/// user's for limits and the state file, and its restarts launch with it); the pooled process
/// itself was launched without it, so where the launch itself uses it (a Docker or Swarm spec
/// with `--docker-network-per-user`, which picks the user's network; a spec whose env sets
/// `EG_IMPERSONATION_ENABLED=True`, which runs spark-submit as the user) a request naming a
/// user is not compatible.
pub(super) fn compatible(
    spec: &KernelSpec,
    env: &BTreeMap<String, String>,
    network_per_user: bool,
) -> Result<(), String> {
    if let Some(other) = env.keys().find(|k| !COMPATIBLE_VARS.contains(&k.as_str())) {
        return Err(format!("the request sets {other}"));
    }
    let user = env.get(USERNAME).is_some_and(|u| !u.is_empty());
    let by_network = network_per_user && matches!(spec.runner, Runner::Docker | Runner::Swarm);
    let impersonates = spec
        .env
        .get("EG_IMPERSONATION_ENABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if user && (by_network || impersonates) {
        return Err(format!(
            "the kernelspec's launch uses {USERNAME} ({})",
            if by_network {
                "--docker-network-per-user"
            } else {
                "EG_IMPERSONATION_ENABLED"
            }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn compatibility_rules() {
        let local = KernelSpec::embedded_python3();
        assert!(compatible(&local, &env(&[]), false).is_ok());
        assert!(
            compatible(
                &local,
                &env(&[("KERNEL_USERNAME", "ada"), ("KERNEL_LAUNCH_TIMEOUT", "5")]),
                true
            )
            .is_ok(),
            "a local spec does not use the user's network"
        );
        for other in ["KERNEL_WORKING_DIR", "KERNEL_IMAGE", "KERNEL_MEMORY_LIMIT"] {
            let why = compatible(&local, &env(&[(other, "x")]), false).unwrap_err();
            assert!(why.contains(other), "{why}");
        }
        let mut docker = KernelSpec::embedded_python3();
        docker.runner = Runner::Docker;
        assert!(compatible(&docker, &env(&[("KERNEL_USERNAME", "ada")]), false).is_ok());
        let why = compatible(&docker, &env(&[("KERNEL_USERNAME", "ada")]), true).unwrap_err();
        assert!(why.contains("--docker-network-per-user"), "{why}");
        assert!(compatible(&docker, &env(&[]), true).is_ok());
        let mut spark = KernelSpec::embedded_python3();
        spark
            .env
            .insert("EG_IMPERSONATION_ENABLED".into(), "True".into());
        assert!(compatible(&spark, &env(&[("KERNEL_USERNAME", "ada")]), false).is_err());
        assert!(compatible(&spark, &env(&[]), false).is_ok());
    }
}
