//! Warm pools (`--pool NAME=N`): kernels started before anyone asks for them, so a request
//! gets a kernel that already answered `kernel_info` instead of waiting for its launch.
//!
//! The pooled kernels themselves are ordinary kernels with ordinary owners
//! ([`super::lifecycle`]); the registry keeps them apart until a request claims one (see
//! [`super::registry`]). This module decides the rest: which requests a pooled kernel can
//! serve ([`compatible`]), and the keeper, one tracked task that keeps every pool at its size.
//! Refills launch through one semaphore shared by all pools
//! (`--pool-refill-concurrency`), so a burst of claims, a gateway start with large pools or a
//! run of deaths cannot put more than that many pooled launches on the machine at once; a
//! request's own start never waits for that semaphore, so refills cannot starve live kernels.
//! A pool whose launches fail backs off (doubling, up to [`MAX_BACKOFF`]) instead of
//! relaunching in a loop.
//!
//! **What a claimed kernel carries from its pool time: nothing.** The gateway never runs code
//! in a pooled kernel: the only message it sends is the readiness probe's
//! `kernel_info_request`, which neither executes code nor touches the execution count or the
//! history; nobody can connect to a pooled kernel (it is not listed and its id is not known
//! outside the gateway), and a client's iopub subscription starts when it connects.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use super::Kernels;
use super::kernel::Command;
use crate::config::Pools;
use crate::kernelspecs::{KernelSpec, Runner};

/// The longest pause of a pool whose launches keep failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a refill waits for its kernel to answer `kernel_info` before it counts as ready
/// anyway (the monitor keeps probing; a claim takes only kernels that answered).
const READY_WAIT: Duration = Duration::from_secs(120);
/// How often the keeper looks even when nothing woke it (a safety net, not the mechanism).
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// The request env variables a pooled kernel can serve: [`USERNAME`] (applied at the claim)
/// and `KERNEL_LAUNCH_TIMEOUT` (moot: the kernel is started).
const COMPATIBLE_VARS: [&str; 2] = [USERNAME, "KERNEL_LAUNCH_TIMEOUT"];
const USERNAME: &str = "KERNEL_USERNAME";

/// The pools' configuration and the keeper's bookkeeping.
#[derive(Debug)]
pub(super) struct Pool {
    sizes: BTreeMap<String, usize>,
    refill: Arc<Semaphore>,
    concurrency: usize,
    /// How long a refill waits before it launches (`--pool-refill-delay`). A claim wakes the
    /// keeper at the moment its client connects to the claimed kernel and sends its first
    /// requests; a refill launched at that same moment (a launcher and a kernel interpreter,
    /// for Spark a driver JVM, starting) would take the CPU from them.
    delay: Duration,
    /// Pooled launches in flight (or backing off) per kernelspec.
    launching: Mutex<BTreeMap<String, usize>>,
    /// Consecutive failed launches per kernelspec.
    failures: Mutex<BTreeMap<String, u32>>,
    wake: Notify,
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

    fn launching(&self, name: &str) -> usize {
        lock(&self.launching).get(name).copied().unwrap_or(0)
    }

    fn add_launching(&self, name: &str, delta: isize) {
        let mut l = lock(&self.launching);
        let n = l.entry(name.to_owned()).or_default();
        *n = n.saturating_add_signed(delta);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

impl Kernels {
    /// Keeps every pool at its size until the gateway closes: starts what is missing (through
    /// the refill semaphore), shuts down what is too much (pooled kernels an earlier run left
    /// of a pool that is smaller now, or gone).
    pub(super) async fn keep_pools(self) {
        let pool = self.ctx.pool.clone();
        let closing = self.ctx.tasks.closing().clone();
        let mut backoff_until: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
        let mut seen_failures: BTreeMap<String, u32> = BTreeMap::new();
        loop {
            let now = tokio::time::Instant::now();
            let mut next = now + LOOK_EVERY;
            // Pools an earlier run left that are no longer configured.
            for k in self.ctx.registry.pooled(None) {
                if pool.size(&k.name) == 0 {
                    self.retire(&k.id);
                }
            }
            for (name, &size) in pool.sizes() {
                let pooled = self.ctx.registry.pooled(Some(name));
                for extra in pooled.iter().skip(size) {
                    self.retire(&extra.id);
                }
                let failures = lock(&pool.failures).get(name).copied().unwrap_or(0);
                let seen = seen_failures.entry(name.clone()).or_default();
                if failures > *seen {
                    let pause = Duration::from_secs(1 << failures.min(6)).min(MAX_BACKOFF);
                    backoff_until.insert(name.clone(), now + pause);
                }
                *seen = failures;
                if let Some(until) = backoff_until.get(name).filter(|u| **u > now) {
                    next = next.min(*until);
                    continue;
                }
                let have = pooled.len().min(size) + pool.launching(name);
                for _ in have..size {
                    pool.add_launching(name, 1);
                    self.ctx.tasks.spawn(self.clone().refill(name.clone()));
                }
            }
            tokio::select! {
                () = closing.cancelled() => return,
                () = pool.wake.notified() => {}
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// Shuts down pooled kernel `id` if it is still unclaimed.
    fn retire(&self, id: &str) {
        if let Some(k) = self.ctx.registry.unpool(id) {
            tracing::info!(kernel_id = %k.id, spec = %k.name, "pooled kernel is beyond its pool's size; shutting it down");
            self.ctx.tasks.spawn(async move {
                let _ = k.ask(Command::Shutdown).await;
            });
        }
    }

    /// Starts one kernel for the pool of `name` and waits (holding a refill permit) until it
    /// answered `kernel_info`.
    async fn refill(self, name: String) {
        let pool = self.ctx.pool.clone();
        let permit = tokio::select! {
            p = async {
                tokio::time::sleep(pool.delay).await;
                pool.refill.clone().acquire_owned().await
            } => p,
            () = self.ctx.tasks.closing().cancelled() => {
                pool.add_launching(&name, -1);
                return;
            }
        };
        let began = Instant::now();
        match self.start_pooled(&name).await {
            Ok(kernel) => {
                let mut ready = kernel.ready.subscribe();
                let mut phase = kernel.phase();
                tokio::select! {
                    _ = tokio::time::timeout(READY_WAIT, ready.wait_for(|g| *g >= 1)) => {}
                    _ = phase.wait_for(|p| p.generation().is_none()) => {}
                    () = self.ctx.tasks.closing().cancelled() => {}
                }
                let took = began.elapsed();
                let c = &self.ctx.metrics.pool;
                c.refills.fetch_add(1, Ordering::Relaxed);
                c.refill_micros.fetch_add(
                    u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                lock(&pool.failures).remove(&name);
                tracing::info!(kernel_id = %kernel.id, spec = %name, ready_ms = took.as_millis() as u64, "pooled kernel ready");
            }
            Err(e) => {
                self.ctx
                    .metrics
                    .pool
                    .refill_failures
                    .fetch_add(1, Ordering::Relaxed);
                let failures = {
                    let mut f = lock(&pool.failures);
                    let n = f.entry(name.clone()).or_default();
                    *n = n.saturating_add(1);
                    *n
                };
                if !self.ctx.tasks.stopping() {
                    tracing::warn!(spec = %name, failures, "starting a pooled kernel failed: {e}");
                }
            }
        }
        drop(permit);
        pool.add_launching(&name, -1);
        pool.wake();
    }
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
