//! What a Docker or Swarm kernel may use: Enterprise Gateway's resource variables read with
//! the gateway's defaults and maximums, and their translation into the Engine's fields.
//!
//! A request names `KERNEL_CPUS`, `KERNEL_MEMORY`, `KERNEL_GPUS` (what the kernel is
//! guaranteed: a reservation) and `KERNEL_CPUS_LIMIT`, `KERNEL_MEMORY_LIMIT`,
//! `KERNEL_GPUS_LIMIT` (what it may not exceed), in the Kubernetes quantity syntax EG's pod
//! template passes on ([`protocol::quantity`]). Absent ones take the gateway's defaults
//! (`--kernel-*-default`); any value above the gateway's maximum (`--kernel-*-max`) or a
//! malformed one refuses the request before anything starts.
//!
//! On a plain container, a memory reservation is `MemoryReservation` (a soft limit the
//! kernel is pushed back to under memory pressure), a CPU reservation is `CpuShares` (1024
//! per CPU: its weight when CPUs are contended); limits are `Memory` (with `MemorySwap` the
//! same, so the limit is not doubled by swap) and `NanoCpus`. On a Swarm service they are the
//! task's `Resources.Reservations` (the scheduler places the task only on a node with that
//! much unreserved) and `Resources.Limits`. GPUs (the larger of the two GPU values) are a
//! Docker device request for the `nvidia` driver, and on Swarm a reservation of the generic
//! resource `NVIDIA-GPU` that nodes advertise; an engine without them refuses the
//! container, and the task finds no suitable node.

use std::collections::BTreeMap;

use bollard::models::{
    DeviceRequest, GenericResourcesInner, GenericResourcesInnerDiscreteResourceSpec, HostConfig,
    Limit, ResourceObject, TaskSpecResources,
};
use protocol::quantity::{self, Bytes, Millicpus, QuantityError};

use crate::config::ResourcePolicy;
use crate::provisioner::launched::LaunchError;

/// The smallest memory limit Docker accepts (6 MiB).
const MIN_MEMORY_LIMIT: u64 = 6 << 20;
/// Swarm's generic resource name for NVIDIA GPUs (as nodes advertise them in
/// `node-generic-resources` of their daemon configuration).
pub(super) const SWARM_GPU_KIND: &str = "NVIDIA-GPU";

/// One kernel's resources, resolved: CPUs in thousandths, memory in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct KernelResources {
    pub(super) cpus: Option<u64>,
    pub(super) cpus_limit: Option<u64>,
    pub(super) memory: Option<u64>,
    pub(super) memory_limit: Option<u64>,
    pub(super) gpus: Option<u32>,
    pub(super) gpus_limit: Option<u32>,
}

fn refuse(message: String) -> LaunchError {
    LaunchError::Request(message)
}

/// Reads `name` from `env` with `parse`; `None` when absent or empty.
fn read<T>(
    env: &BTreeMap<String, String>,
    name: &str,
    parse: fn(&str) -> Result<T, QuantityError>,
    example: &str,
) -> Result<Option<T>, LaunchError> {
    match env.get(name).map(String::as_str).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => parse(v)
            .map(Some)
            .map_err(|e| refuse(format!("{name}={v:?} {e} (e.g. {example})"))),
    }
}

/// A value above the gateway's maximum is refused, naming both.
fn at_most<T: PartialOrd + Copy>(
    name: &str,
    value: Option<T>,
    max: Option<T>,
    option: &str,
    show: impl Fn(T) -> String,
) -> Result<(), LaunchError> {
    match value.zip(max) {
        Some((v, m)) if v > m => Err(refuse(format!(
            "{name}={} is above the gateway's maximum {} ({option}); ask for at most {}",
            show(v),
            show(m),
            show(m)
        ))),
        _ => Ok(()),
    }
}

/// A reservation and a limit of one resource: a reservation the request asked for above its
/// limit is refused; a default reservation above the limit is lowered to it.
fn within_limit<T: PartialOrd + Copy>(
    name: &str,
    reservation: (Option<T>, bool),
    limit: (Option<T>, bool),
    show: impl Fn(T) -> String,
) -> Result<Option<T>, LaunchError> {
    let ((r, r_asked), (l, l_asked)) = (reservation, limit);
    match r.zip(l) {
        Some((rv, lv)) if rv > lv => {
            if !r_asked {
                return Ok(Some(lv));
            }
            let whence = if l_asked {
                format!("{name}_LIMIT")
            } else {
                format!(
                    "the default limit (--kernel-{}-limit-default)",
                    name[7..].to_lowercase()
                )
            };
            Err(refuse(format!(
                "{name}={} is above {whence} {}; a kernel cannot be guaranteed more than its limit",
                show(rv),
                show(lv)
            )))
        }
        _ => Ok(r),
    }
}

impl KernelResources {
    /// The resources `env` asks for under `policy`.
    pub(super) fn resolve(
        env: &BTreeMap<String, String>,
        policy: &ResourcePolicy,
    ) -> Result<Self, LaunchError> {
        let cpu = |n| read(env, n, quantity::parse_millicpus, "0.5, 500m or 2");
        let mem = |n| read(env, n, quantity::parse_bytes, "512Mi, 1G or 536870912");
        let gpu = |n| read(env, n, quantity::parse_count, "1");
        let (cpus, cpus_limit) = (cpu("KERNEL_CPUS")?, cpu("KERNEL_CPUS_LIMIT")?);
        let (memory, memory_limit) = (mem("KERNEL_MEMORY")?, mem("KERNEL_MEMORY_LIMIT")?);
        let (gpus, gpus_limit) = (gpu("KERNEL_GPUS")?, gpu("KERNEL_GPUS_LIMIT")?);

        let show_cpu = |v: u64| Millicpus(v).to_string();
        let show_mem = |v: u64| Bytes(v).to_string();
        for (name, value) in [("KERNEL_CPUS", cpus), ("KERNEL_CPUS_LIMIT", cpus_limit)] {
            at_most(name, value, policy.cpus_max, "--kernel-cpus-max", show_cpu)?;
        }
        for (name, value) in [
            ("KERNEL_MEMORY", memory),
            ("KERNEL_MEMORY_LIMIT", memory_limit),
        ] {
            at_most(
                name,
                value,
                policy.memory_max,
                "--kernel-memory-max",
                show_mem,
            )?;
        }
        for (name, value) in [("KERNEL_GPUS", gpus), ("KERNEL_GPUS_LIMIT", gpus_limit)] {
            at_most(name, value, policy.gpus_max, "--kernel-gpus-max", |v| {
                v.to_string()
            })?;
        }

        let cpus_limit_v = cpus_limit.or(policy.cpus_limit_default);
        let memory_limit_v = memory_limit.or(policy.memory_limit_default);
        let cpus = within_limit(
            "KERNEL_CPUS",
            (cpus.or(policy.cpus_default), cpus.is_some()),
            (cpus_limit_v, cpus_limit.is_some()),
            show_cpu,
        )?;
        let memory = within_limit(
            "KERNEL_MEMORY",
            (memory.or(policy.memory_default), memory.is_some()),
            (memory_limit_v, memory_limit.is_some()),
            show_mem,
        )?;
        if let Some(l) = memory_limit_v.filter(|l| *l < MIN_MEMORY_LIMIT) {
            return Err(refuse(format!(
                "KERNEL_MEMORY_LIMIT={} is below the smallest limit Docker accepts ({}); ask for more",
                show_mem(l),
                show_mem(MIN_MEMORY_LIMIT)
            )));
        }
        if cpus_limit_v == Some(0) {
            return Err(refuse(
                "KERNEL_CPUS_LIMIT=0 would never let the kernel run; ask for more (e.g. 0.5)"
                    .into(),
            ));
        }
        Ok(KernelResources {
            cpus,
            cpus_limit: cpus_limit_v,
            memory,
            memory_limit: memory_limit_v,
            gpus,
            gpus_limit,
        })
    }

    /// GPUs to attach: the larger of the two values, if any.
    fn gpu_count(&self) -> Option<u32> {
        self.gpus.max(self.gpus_limit).filter(|n| *n > 0)
    }

    /// The container's resource fields.
    pub(super) fn apply_to(&self, host: &mut HostConfig) {
        host.memory_reservation = self.memory.and_then(|m| i64::try_from(m).ok());
        host.memory = self.memory_limit.and_then(|m| i64::try_from(m).ok());
        // No swap beyond the limit: the limit is what the kernel gets.
        host.memory_swap = host.memory;
        host.nano_cpus = self.cpus_limit.map(nanocpus);
        // 1024 shares per CPU (Docker's default weight is 1024); the kernel needs at least 2.
        host.cpu_shares = self.cpus.map(|m| {
            i64::try_from(m.saturating_mul(1024) / 1000)
                .unwrap_or(i64::MAX)
                .max(2)
        });
        host.device_requests = self.gpu_count().map(|n| {
            vec![DeviceRequest {
                driver: Some("nvidia".into()),
                count: Some(i64::from(n)),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..DeviceRequest::default()
            }]
        });
    }

    /// The Swarm task's resources, `None` when nothing is asked for.
    pub(super) fn swarm(&self) -> Option<TaskSpecResources> {
        if *self == KernelResources::default() {
            return None;
        }
        let generic = self.gpu_count().map(|n| {
            vec![GenericResourcesInner {
                discrete_resource_spec: Some(GenericResourcesInnerDiscreteResourceSpec {
                    kind: Some(SWARM_GPU_KIND.into()),
                    value: Some(i64::from(n)),
                }),
                ..GenericResourcesInner::default()
            }]
        });
        Some(TaskSpecResources {
            limits: Some(Limit {
                nano_cpus: self.cpus_limit.map(nanocpus),
                memory_bytes: self.memory_limit.and_then(|m| i64::try_from(m).ok()),
                ..Limit::default()
            }),
            reservations: Some(ResourceObject {
                nano_cpus: self.cpus.map(nanocpus),
                memory_bytes: self.memory.and_then(|m| i64::try_from(m).ok()),
                generic_resources: generic,
            }),
            ..TaskSpecResources::default()
        })
    }
}

/// Thousandths of a CPU as nanocpus (the parser bounds them so this fits).
fn nanocpus(milli: u64) -> i64 {
    i64::try_from(milli.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
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
    fn requests_and_limits_map_to_the_engine() {
        let r = KernelResources::resolve(
            &env(&[
                ("KERNEL_CPUS", "500m"),
                ("KERNEL_CPUS_LIMIT", "2"),
                ("KERNEL_MEMORY", "256Mi"),
                ("KERNEL_MEMORY_LIMIT", "1G"),
            ]),
            &ResourcePolicy::default(),
        )
        .unwrap();
        let mut h = HostConfig::default();
        r.apply_to(&mut h);
        assert_eq!(h.memory_reservation, Some(256 << 20));
        assert_eq!(h.memory, Some(1_000_000_000));
        assert_eq!(h.memory_swap, Some(1_000_000_000));
        assert_eq!(h.nano_cpus, Some(2_000_000_000));
        assert_eq!(h.cpu_shares, Some(512));
        assert_eq!(h.device_requests, None);
        let s = r.swarm().unwrap();
        assert_eq!(s.limits.as_ref().unwrap().nano_cpus, Some(2_000_000_000));
        assert_eq!(
            s.reservations.as_ref().unwrap().memory_bytes,
            Some(256 << 20)
        );
        assert_eq!(KernelResources::default().swarm(), None);
    }

    #[test]
    fn gpus_are_device_requests_and_generic_resources() {
        let r = KernelResources::resolve(&env(&[("KERNEL_GPUS", "1")]), &ResourcePolicy::default())
            .unwrap();
        let mut h = HostConfig::default();
        r.apply_to(&mut h);
        let d = &h.device_requests.unwrap()[0];
        assert_eq!((d.driver.as_deref(), d.count), (Some("nvidia"), Some(1)));
        let g = r
            .swarm()
            .unwrap()
            .reservations
            .unwrap()
            .generic_resources
            .unwrap();
        assert_eq!(
            g[0].discrete_resource_spec
                .as_ref()
                .unwrap()
                .kind
                .as_deref(),
            Some(SWARM_GPU_KIND)
        );
    }

    #[test]
    fn defaults_and_maximums() {
        let policy = ResourcePolicy {
            memory_default: Some(1 << 30),
            memory_limit_default: Some(512 << 20),
            memory_max: Some(2 << 30),
            cpus_max: Some(2000),
            gpus_max: Some(0),
            ..ResourcePolicy::default()
        };
        // The default reservation is lowered to the default limit.
        let r = KernelResources::resolve(&env(&[]), &policy).unwrap();
        assert_eq!(
            (r.memory, r.memory_limit),
            (Some(512 << 20), Some(512 << 20))
        );
        let r = KernelResources::resolve(&env(&[("KERNEL_MEMORY_LIMIT", "2Gi")]), &policy).unwrap();
        assert_eq!((r.memory, r.memory_limit), (Some(1 << 30), Some(2 << 30)));

        let e = KernelResources::resolve(&env(&[("KERNEL_MEMORY_LIMIT", "3Gi")]), &policy)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("KERNEL_MEMORY_LIMIT=3Gi")
                && e.contains("maximum 2Gi")
                && e.contains("--kernel-memory-max"),
            "{e}"
        );
        let e = KernelResources::resolve(&env(&[("KERNEL_CPUS", "2.5")]), &policy)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("KERNEL_CPUS=2500m") && e.contains("--kernel-cpus-max"),
            "{e}"
        );
        let e = KernelResources::resolve(&env(&[("KERNEL_GPUS_LIMIT", "1")]), &policy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--kernel-gpus-max"), "{e}");
        // An asked-for reservation above the limit is the request's mistake.
        let e = KernelResources::resolve(&env(&[("KERNEL_MEMORY", "1Gi")]), &policy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--kernel-memory-limit-default"), "{e}");
        let e = KernelResources::resolve(
            &env(&[("KERNEL_CPUS", "1"), ("KERNEL_CPUS_LIMIT", "500m")]),
            &ResourcePolicy::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("above KERNEL_CPUS_LIMIT 500m"), "{e}");
    }

    #[test]
    fn malformed_and_tiny_values_are_refused() {
        for (k, v, want) in [
            (
                "KERNEL_MEMORY",
                "1GB",
                "KERNEL_MEMORY=\"1GB\" has the unknown unit",
            ),
            (
                "KERNEL_CPUS",
                "lots",
                "KERNEL_CPUS=\"lots\" is not a number",
            ),
            (
                "KERNEL_GPUS",
                "0.5",
                "KERNEL_GPUS=\"0.5\" is not a whole number",
            ),
            ("KERNEL_MEMORY_LIMIT", "1Mi", "below the smallest limit"),
            ("KERNEL_CPUS_LIMIT", "0", "never let the kernel run"),
        ] {
            let e =
                KernelResources::resolve(&env(&[(k, v)]), &ResourcePolicy::default()).unwrap_err();
            assert!(matches!(e, LaunchError::Request(_)), "{e:?}");
            assert!(e.to_string().contains(want), "{k}={v}: {e}");
        }
        assert_eq!(
            KernelResources::resolve(&env(&[("KERNEL_CPUS", "")]), &ResourcePolicy::default())
                .unwrap(),
            KernelResources::default(),
            "an empty value is absent"
        );
    }
}
