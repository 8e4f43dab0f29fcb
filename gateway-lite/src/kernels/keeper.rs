//! The warm pools' keeper: one tracked task that keeps every pool ([`super::pool`]) at its
//! size by starting kernels through the shared refill semaphore and retiring extras. It is a
//! module of its own because it drives [`Kernels`] (which owns the pools through its
//! context): kept apart from the pools' state, nothing the lifecycle imports depends back on
//! the gateway's kernel table.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Kernels;
use super::kernel::Command;
use super::pool::lock;

/// The longest pause of a pool whose launches keep failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a refill waits for its kernel to answer `kernel_info` before it counts as ready
/// anyway (the monitor keeps probing; a claim takes only kernels that answered).
const READY_WAIT: Duration = Duration::from_secs(120);
/// How often the keeper looks even when nothing woke it (a safety net, not the mechanism).
const LOOK_EVERY: Duration = Duration::from_secs(5);

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
