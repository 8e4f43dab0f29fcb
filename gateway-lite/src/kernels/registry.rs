//! The registry: which kernels exist, which launches are in flight against the limits, and
//! what the state file says.
//!
//! One lock guards all three, so every change is seen whole: a launch's reservation turns
//! into its kernel in one step (the limits never count it twice or not at all), and every
//! change is numbered under the lock that made it. [`StateStore::save_latest`] writes, one
//! write at a time, the newest state unless a change as new was written already: two changes
//! racing to the disk can never leave the older one there, and changes that pile up behind
//! a write (100 DELETEs at once) are written together.
//!
//! Warm pools live here too: a pooled kernel is recorded (the state file keeps it across a
//! gateway restart) but is no kernel of anyone's yet. It is not listed, counts against no
//! limit and cannot be culled, until [`Registry::claim`] moves it, under the same lock as
//! the limit check, from its pool to the kernels.
//!
//! The registry holds data only. Kernels are started, restarted and stopped by their owners
//! ([`super::lifecycle`]), which report here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::clients::KeptBudget;
use super::kernel::Kernel;
use super::policy::{self, LimitError};
use crate::config::Limits;
use crate::state::{KernelRecord, StateStore};
use crate::tasks::Tasks;

/// Launches in flight, counted against the limits before they finish.
#[derive(Debug, Default)]
struct InFlight {
    total: usize,
    by_user: HashMap<String, usize>,
}

#[derive(Debug, Default)]
struct Inner {
    kernels: BTreeMap<String, Arc<Kernel>>,
    records: BTreeMap<String, KernelRecord>,
    in_flight: InFlight,
    /// Unclaimed pooled kernels per kernelspec name, oldest first.
    pooled: BTreeMap<String, Vec<Arc<Kernel>>>,
    /// Number of the latest change.
    seq: u64,
}

/// One change to what the state file must hold: its number ([`Registry::persist`] writes
/// the newest state, which includes it).
#[derive(Debug)]
pub(super) struct Snapshot {
    seq: u64,
}

/// Every kernel of this gateway, the launches in flight, and the state file.
#[derive(Debug)]
pub(super) struct Registry {
    inner: Mutex<Inner>,
    limits: Limits,
    store: Option<Arc<StateStore>>,
    /// Bytes kept for away clients, across all kernels.
    pub(super) budget: Arc<KeptBudget>,
    tasks: Tasks,
}

/// A launch's place in the limits; released when dropped, unless it became a kernel.
#[derive(Debug)]
pub(super) struct Reservation {
    registry: Arc<Registry>,
    user: String,
    held: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held {
            self.registry.lock().in_flight.release(&self.user);
        }
    }
}

impl InFlight {
    fn release(&mut self, user: &str) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.by_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_user.remove(user);
            }
        }
    }
}

impl Registry {
    pub(super) fn new(
        limits: Limits,
        store: Option<StateStore>,
        budget: Arc<KeptBudget>,
        tasks: Tasks,
    ) -> Self {
        Registry {
            inner: Mutex::default(),
            limits,
            store: store.map(Arc::new),
            budget,
            tasks,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update below is a few map operations that cannot panic half-way.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether kernels are recorded for a gateway restart.
    pub(super) fn persistent(&self) -> bool {
        self.store.is_some()
    }

    /// The recorded kernels of an earlier run (see [`StateStore::load`]).
    pub(super) fn recorded(&self) -> Result<Vec<KernelRecord>, crate::state::StateError> {
        match &self.store {
            Some(s) => s.load(),
            None => Ok(Vec::new()),
        }
    }

    /// Counts a launch for `user` against the limits, or refuses it.
    pub(super) fn reserve(self: &Arc<Self>, user: &str) -> Result<Reservation, LimitError> {
        let mut inner = self.lock();
        let total = inner.kernels.len() + inner.in_flight.total;
        let mine = inner.kernels.values().filter(|k| k.is_users(user)).count()
            + inner.in_flight.by_user.get(user).copied().unwrap_or(0);
        policy::admit(&self.limits, total, mine, user)?;
        inner.in_flight.total += 1;
        *inner.in_flight.by_user.entry(user.to_owned()).or_default() += 1;
        Ok(Reservation {
            registry: self.clone(),
            user: user.to_owned(),
            held: true,
        })
    }

    /// Turns `reservation` into `kernel`, recorded as `record`, in one step.
    pub(super) fn admit(
        &self,
        mut reservation: Reservation,
        kernel: Arc<Kernel>,
        record: KernelRecord,
    ) -> Snapshot {
        let mut inner = self.lock();
        inner.in_flight.release(&reservation.user);
        reservation.held = false;
        Self::put(&mut inner, kernel, record)
    }

    /// Puts a started kernel into the pool of its kernelspec, recorded as `record`.
    pub(super) fn pool(&self, kernel: Arc<Kernel>, mut record: KernelRecord) -> Snapshot {
        let mut inner = self.lock();
        record.pool = Some(kernel.name.clone());
        inner.records.insert(kernel.id.clone(), record);
        inner
            .pooled
            .entry(kernel.name.clone())
            .or_default()
            .push(kernel);
        Self::snapshot(&mut inner)
    }

    /// Hands a ready pooled kernel of spec `name` to a request of `user` with `env`, if the
    /// pool has one and the limits admit it: it leaves the pool and becomes the request's
    /// kernel in one step. `Ok(None)`: no ready kernel in the pool.
    pub(super) fn claim(
        &self,
        name: &str,
        user: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Option<(Arc<Kernel>, Snapshot)>, LimitError> {
        let mut inner = self.lock();
        let Some(at) = inner
            .pooled
            .get(name)
            .and_then(|p| p.iter().position(|k| k.is_ready()))
        else {
            return Ok(None);
        };
        let total = inner.kernels.len() + inner.in_flight.total;
        let mine = inner.kernels.values().filter(|k| k.is_users(user)).count()
            + inner.in_flight.by_user.get(user).copied().unwrap_or(0);
        policy::admit(&self.limits, total, mine, user)?;
        let kernel = inner
            .pooled
            .get_mut(name)
            .map(|p| p.remove(at))
            .expect("the position was found under this lock");
        kernel.claimed_with(env.clone());
        if let Some(r) = inner.records.get_mut(&kernel.id) {
            r.pool = None;
            r.env = env.clone();
        }
        inner.kernels.insert(kernel.id.clone(), kernel.clone());
        Ok(Some((kernel, Self::snapshot(&mut inner))))
    }

    /// Takes kernel `id` out of its pool, if it is still there (unclaimed).
    pub(super) fn unpool(&self, id: &str) -> Option<Arc<Kernel>> {
        let mut inner = self.lock();
        Self::take_pooled(&mut inner, id)
    }

    fn take_pooled(inner: &mut Inner, id: &str) -> Option<Arc<Kernel>> {
        inner.pooled.values_mut().find_map(|p| {
            let at = p.iter().position(|k| k.id == id)?;
            Some(p.remove(at))
        })
    }

    /// The unclaimed pooled kernels of spec `name` (`None`: of every pool).
    pub(super) fn pooled(&self, name: Option<&str>) -> Vec<Arc<Kernel>> {
        let inner = self.lock();
        inner
            .pooled
            .iter()
            .filter(|(n, _)| name.is_none_or(|name| name == n.as_str()))
            .flat_map(|(_, p)| p.iter().cloned())
            .collect()
    }

    /// Adds a kernel re-attached from the state file.
    pub(super) fn restored(&self, kernel: Arc<Kernel>, record: KernelRecord) -> Snapshot {
        Self::put(&mut self.lock(), kernel, record)
    }

    fn put(inner: &mut Inner, kernel: Arc<Kernel>, record: KernelRecord) -> Snapshot {
        inner.records.insert(kernel.id.clone(), record);
        inner.kernels.insert(kernel.id.clone(), kernel);
        Self::snapshot(inner)
    }

    /// Replaces the record of kernel `id` (a new incarnation), or drops it (`None`: the
    /// kernel is dead and nothing is left to re-attach to).
    pub(super) fn record(&self, id: &str, record: Option<KernelRecord>) -> Snapshot {
        let mut inner = self.lock();
        match record {
            Some(mut r) if inner.kernels.contains_key(id) || inner.records.contains_key(id) => {
                r.pool = inner.records.get(id).and_then(|old| old.pool.clone());
                inner.records.insert(id.to_owned(), r);
            }
            _ => {
                inner.records.remove(id);
            }
        }
        Self::snapshot(&mut inner)
    }

    /// Removes kernel `id`.
    pub(super) fn remove(&self, id: &str) -> Snapshot {
        let mut inner = self.lock();
        inner.kernels.remove(id);
        Self::take_pooled(&mut inner, id);
        inner.records.remove(id);
        Self::snapshot(&mut inner)
    }

    /// The state as it is now (after a batch of changes that were not persisted one by one).
    pub(super) fn current(&self) -> Snapshot {
        Self::snapshot(&mut self.lock())
    }

    fn snapshot(inner: &mut Inner) -> Snapshot {
        inner.seq += 1;
        Snapshot { seq: inner.seq }
    }

    /// Makes sure the state file holds `snapshot` or a newer state (off the runtime's
    /// workers): changes waiting behind one write are written together, as the newest state.
    pub(super) async fn persist(self: &Arc<Self>, snapshot: Snapshot) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let registry = self.clone();
        let write = self.tasks.spawn_blocking(move || {
            store.save_latest(snapshot.seq, || {
                let inner = registry.lock();
                (inner.seq, inner.records.values().cloned().collect())
            })
        });
        match write.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("writing the state file: {e}"),
            Err(e) => tracing::error!("writing the state file: {e}"),
        }
    }

    /// The state-file record of kernel `id` as it stands (for tests of what a change records).
    #[cfg(test)]
    fn record_of(&self, id: &str) -> Option<KernelRecord> {
        self.lock().records.get(id).cloned()
    }

    /// The kernel `id`.
    pub(super) fn get(&self, id: &str) -> Option<Arc<Kernel>> {
        self.lock().kernels.get(id).cloned()
    }

    /// Every kernel, by id.
    pub(super) fn list(&self) -> Vec<Arc<Kernel>> {
        self.lock().kernels.values().cloned().collect()
    }

    /// Launches in flight.
    pub(super) fn reservations(&self) -> usize {
        self.lock().in_flight.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;

    fn registry(limits: Limits) -> Arc<Registry> {
        Arc::new(Registry::new(
            limits,
            None,
            Arc::new(KeptBudget::new(1024)),
            Tasks::new(),
        ))
    }

    #[test]
    fn reservations_count_and_release() {
        let r = registry(Limits {
            max_kernels: Some(2),
            max_kernels_per_user: None,
        });
        let a = r.reserve("a").unwrap();
        let b = r.reserve("b").unwrap();
        assert_eq!(r.reservations(), 2);
        assert!(matches!(r.reserve("c"), Err(LimitError::Total { max: 2 })));
        drop(a);
        assert_eq!(r.reservations(), 1);
        let _c = r.reserve("c").unwrap();
        drop(b);
        assert_eq!(r.reservations(), 1);
    }

    /// Enterprise Gateway's issue 726: concurrent starts of one user all passed the
    /// per-user check because none had finished. Here launches in flight count: of 16
    /// threads starting at once for the same user with a limit of 3, exactly 3 get through.
    #[test]
    fn per_user_limit_holds_under_concurrent_starts() {
        let r = registry(Limits {
            max_kernels: None,
            max_kernels_per_user: Some(3),
        });
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (r, barrier) = (r.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    r.reserve("alice")
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let admitted = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(admitted, 3);
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(e, LimitError::PerUser { user, max: 3, .. } if user == "alice"),
                "{e}"
            );
        }
        // Another user is not affected.
        assert!(r.reserve("bob").is_ok());
        drop(results);
        assert_eq!(r.reservations(), 0, "every reservation is released");
    }

    fn kernel(id: &str) -> (Arc<Kernel>, KernelRecord) {
        use super::super::kernel::Parts;
        use crate::channels::KernelEndpoints;
        use crate::kernelspecs::KernelSpec;
        use protocol::connection::ConnectionInfo;
        let info: ConnectionInfo = serde_json::from_value(serde_json::json!({
            "shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4,
            "hb_port": 5, "ip": "127.0.0.1", "key": "k"
        }))
        .unwrap();
        let (k, _commands) = Kernel::new(Parts {
            id: id.into(),
            spec: KernelSpec::embedded_python3(),
            env: BTreeMap::new(),
            timeout: std::time::Duration::from_secs(1),
            endpoints: Arc::new(KernelEndpoints {
                info: info.clone(),
                host: "127.0.0.1".into(),
                signer: protocol::wire::Signer::new(b"k"),
                comm_port: None,
                pid: None,
                pgid: None,
                generation: 1,
                secret: None,
                curve: None,
                limits: crate::channels::frame_limits(1024),
            }),
            budget: Arc::new(KeptBudget::new(1024)),
        });
        let record = KernelRecord {
            id: id.into(),
            name: k.name.clone(),
            env: BTreeMap::new(),
            launch_timeout_secs: 1.0,
            generation: 1,
            connection: info,
            host: "127.0.0.1".into(),
            comm_port: None,
            pid: None,
            pgid: None,
            placement: crate::provisioner::Placement::Local {
                pid: 1,
                start_time: 1,
                log_file: None,
            },
            launch_secret: None,
            curve_publickey: None,
            pool: None,
        };
        (k, record)
    }

    /// A claim takes only a ready pooled kernel, checks the limits under the same lock, and
    /// makes the kernel the claimer's (listed, counted, recorded as no longer pooled).
    #[test]
    fn claims_take_ready_pooled_kernels_within_the_limits() {
        let r = registry(Limits {
            max_kernels: None,
            max_kernels_per_user: Some(1),
        });
        let ada = BTreeMap::from([("KERNEL_USERNAME".to_owned(), "ada".to_owned())]);
        assert!(
            r.claim("python3", "ada", &ada).unwrap().is_none(),
            "empty pool"
        );
        let (a, rec) = kernel("a");
        r.pool(a.clone(), rec);
        assert_eq!(r.record_of("a").unwrap().pool.as_deref(), Some("python3"));
        assert!(r.list().is_empty(), "a pooled kernel is not listed");
        assert!(
            r.claim("python3", "ada", &ada).unwrap().is_none(),
            "not ready yet"
        );
        a.mark_ready(1);
        assert!(
            r.claim("other", "ada", &ada).unwrap().is_none(),
            "other spec"
        );
        let (got, _) = r.claim("python3", "ada", &ada).unwrap().unwrap();
        assert_eq!(got.id, "a");
        assert!(got.is_users("ada"));
        assert_eq!(got.env(), ada);
        let record = r.record_of("a").unwrap();
        assert_eq!(record.pool, None);
        assert_eq!(record.env, ada);
        assert_eq!(r.list().len(), 1);
        assert!(r.pooled(None).is_empty());
        // The claimed kernel counts for ada now: her next claim is refused, bob's is not.
        let (b, rec) = kernel("b");
        b.mark_ready(1);
        r.pool(b, rec);
        assert!(matches!(
            r.claim("python3", "ada", &ada),
            Err(LimitError::PerUser { .. })
        ));
        assert_eq!(
            r.pooled(Some("python3")).len(),
            1,
            "a refused claim takes nothing"
        );
        assert!(r.unpool("b").is_some());
        assert!(r.unpool("b").is_none(), "taken once");
        assert!(
            r.claim("python3", "bob", &BTreeMap::new())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn snapshots_are_numbered_in_order() {
        let r = registry(Limits::default());
        let a = r.record("x", None);
        let b = r.remove("y");
        assert!(b.seq > a.seq);
    }
}
