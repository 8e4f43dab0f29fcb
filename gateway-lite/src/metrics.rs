//! Prometheus metrics at `/metrics`, in the text exposition format.
//!
//! Operators watch a gateway the way they watch everything else: kernel counts by state,
//! launch outcomes and durations, deaths, restarts, culls, and the gateway's own memory. The
//! counters are atomics bumped where the events happen (the kernel registry owns them);
//! gauges are read from their owners at scrape time and handed in as [`Gauges`], so this
//! module depends on nothing else in the gateway. The format is small enough to write by
//! hand, which keeps a metrics framework out of the dependency tree.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the launch-duration histogram buckets.
const START_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// What the owners of live state report at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Kernels per execution state (`idle`, `busy`, ...).
    pub kernels_by_state: Vec<(&'static str, u64)>,
    /// Open kernel WebSocket connections.
    pub connections: u64,
    /// Kernels whose channels are CurveZMQ.
    pub curve_kernels: u64,
    /// Bytes of kernel messages kept for clients that are away.
    pub kept_bytes: u64,
    /// Kernel launches in flight, counted against the limits (reservations).
    pub reservations: u64,
    /// Tasks the gateway runs (tracked).
    pub tasks: u64,
    /// Launch payloads refused, by reason (a counter kept by the response listener).
    pub payloads_refused: Vec<(&'static str, u64)>,
    /// The warm pools.
    pub pools: Vec<PoolGauge>,
    /// Pooled launches running now (bounded by `--pool-refill-concurrency`).
    pub pool_refills_in_flight: u64,
}

/// One warm pool at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolGauge {
    /// Its kernelspec.
    pub name: String,
    /// Kernels it keeps (`--pool NAME=N`; 0 for kernels an earlier run left of a pool no
    /// longer configured).
    pub size: u64,
    /// Unclaimed kernels that answered `kernel_info`.
    pub ready: u64,
    /// Unclaimed kernels started but not yet ready.
    pub starting: u64,
}

/// Counters of the warm pools.
#[derive(Debug, Default)]
pub struct PoolCounters {
    /// Requests served from a pool.
    pub hits: AtomicU64,
    /// Compatible requests for a pooled kernelspec that found its pool empty.
    pub misses: AtomicU64,
    /// Requests for a pooled kernelspec whose env a pooled kernel cannot serve.
    pub incompatible: AtomicU64,
    /// Pooled kernels started and ready (refills).
    pub refills: AtomicU64,
    /// Pooled launches that failed.
    pub refill_failures: AtomicU64,
    /// Pooled kernels that died unclaimed (and were replaced).
    pub deaths: AtomicU64,
    /// Sum of refill times (launch to `kernel_info_reply`), microseconds.
    pub refill_micros: AtomicU64,
}

/// Every counter of the gateway.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Kernels started (POST) successfully.
    pub starts_ok: AtomicU64,
    /// Starts that failed (launcher error or early exit).
    pub starts_failed: AtomicU64,
    /// Starts that hit the launch timeout.
    pub starts_timed_out: AtomicU64,
    /// Starts refused by a kernel limit.
    pub starts_refused: AtomicU64,
    /// Starts abandoned because their client went away (or the gateway stopped).
    pub starts_abandoned: AtomicU64,
    /// Restarts asked for through the API.
    pub restarts_requested: AtomicU64,
    /// Restarts after a kernel died.
    pub restarts_automatic: AtomicU64,
    /// Kernels that died on their own.
    pub deaths: AtomicU64,
    /// Kernels shut down for being idle.
    pub culled: AtomicU64,
    /// Kernels found again after a gateway restart.
    pub reattached: AtomicU64,
    /// Kernels shut down (API, cull or gateway exit).
    pub shutdowns: AtomicU64,
    /// The warm pools' counters.
    pub pool: PoolCounters,
    start_buckets: [AtomicU64; START_BUCKETS.len()],
    start_count: AtomicU64,
    start_micros: AtomicU64,
}

impl Metrics {
    /// Records the duration of a successful launch (request to connection info).
    pub fn observe_start(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (bound, bucket) in START_BUCKETS.iter().zip(&self.start_buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.start_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.start_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        head(
            &mut out,
            "gateway_lite_kernels",
            "gauge",
            "Kernels by execution state.",
        );
        for (state, n) in &gauges.kernels_by_state {
            let _ = writeln!(
                out,
                "gateway_lite_kernels{{execution_state=\"{}\"}} {n}",
                escape(state)
            );
        }
        head(
            &mut out,
            "gateway_lite_kernels_curve",
            "gauge",
            "Kernels whose ZeroMQ channels are CurveZMQ (--transport-encryption).",
        );
        let _ = writeln!(out, "gateway_lite_kernels_curve {}", gauges.curve_kernels);
        head(
            &mut out,
            "gateway_lite_websocket_connections",
            "gauge",
            "Open kernel WebSocket connections.",
        );
        let _ = writeln!(
            out,
            "gateway_lite_websocket_connections {}",
            gauges.connections
        );
        head(
            &mut out,
            "gateway_lite_kept_bytes",
            "gauge",
            "Bytes of kernel messages kept for clients that are away.",
        );
        let _ = writeln!(out, "gateway_lite_kept_bytes {}", gauges.kept_bytes);
        head(
            &mut out,
            "gateway_lite_kernel_reservations",
            "gauge",
            "Kernel launches in flight, counted against the kernel limits.",
        );
        let _ = writeln!(
            out,
            "gateway_lite_kernel_reservations {}",
            gauges.reservations
        );
        head(
            &mut out,
            "gateway_lite_tasks",
            "gauge",
            "Background tasks of the gateway (kernel owners, monitors, WebSocket relays, ...).",
        );
        let _ = writeln!(out, "gateway_lite_tasks {}", gauges.tasks);
        head(
            &mut out,
            "gateway_lite_payloads_refused_total",
            "counter",
            "Launch payloads refused, by reason (unreadable, unexpected kernel id, wrong secret, address or ports, too many open).",
        );
        for (reason, n) in &gauges.payloads_refused {
            let _ = writeln!(
                out,
                "gateway_lite_payloads_refused_total{{reason=\"{reason}\"}} {n}"
            );
        }
        head(
            &mut out,
            "gateway_lite_kernel_starts_total",
            "counter",
            "Kernel starts by outcome.",
        );
        for (outcome, c) in [
            ("ok", &self.starts_ok),
            ("failed", &self.starts_failed),
            ("timeout", &self.starts_timed_out),
            ("refused", &self.starts_refused),
            ("abandoned", &self.starts_abandoned),
        ] {
            let _ = writeln!(
                out,
                "gateway_lite_kernel_starts_total{{outcome=\"{outcome}\"}} {}",
                get(c)
            );
        }
        head(
            &mut out,
            "gateway_lite_kernel_restarts_total",
            "counter",
            "Kernel restarts by cause.",
        );
        for (cause, c) in [
            ("request", &self.restarts_requested),
            ("death", &self.restarts_automatic),
        ] {
            let _ = writeln!(
                out,
                "gateway_lite_kernel_restarts_total{{cause=\"{cause}\"}} {}",
                get(c)
            );
        }
        for (name, help, c) in [
            (
                "gateway_lite_kernel_deaths_total",
                "Kernels that died on their own.",
                &self.deaths,
            ),
            (
                "gateway_lite_kernels_culled_total",
                "Kernels shut down for being idle.",
                &self.culled,
            ),
            (
                "gateway_lite_kernels_reattached_total",
                "Kernels found again after a gateway restart.",
                &self.reattached,
            ),
            (
                "gateway_lite_kernel_shutdowns_total",
                "Kernels shut down.",
                &self.shutdowns,
            ),
        ] {
            head(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", get(c));
        }
        head(
            &mut out,
            "gateway_lite_kernel_start_seconds",
            "histogram",
            "Time from a start request to the kernel's connection info.",
        );
        for (bound, bucket) in START_BUCKETS.iter().zip(&self.start_buckets) {
            let _ = writeln!(
                out,
                "gateway_lite_kernel_start_seconds_bucket{{le=\"{bound}\"}} {}",
                get(bucket)
            );
        }
        let count = get(&self.start_count);
        let _ = writeln!(
            out,
            "gateway_lite_kernel_start_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "gateway_lite_kernel_start_seconds_sum {}",
            get(&self.start_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "gateway_lite_kernel_start_seconds_count {count}");
        self.pool
            .render(&mut out, &gauges.pools, gauges.pool_refills_in_flight);
        if let Some(rss) = resident_bytes() {
            head(
                &mut out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory of the gateway process.",
            );
            let _ = writeln!(out, "process_resident_memory_bytes {rss}");
        }
        out
    }
}

impl PoolCounters {
    /// The pool lines: per pool its size, ready and starting kernels; the claims by outcome;
    /// refills, their failures and time; deaths of unclaimed kernels.
    fn render(&self, out: &mut String, pools: &[PoolGauge], in_flight: u64) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, help, pick) in [
            (
                "gateway_lite_pool_size",
                "Kernels a warm pool keeps (--pool NAME=N).",
                (|p: &PoolGauge| p.size) as fn(&PoolGauge) -> u64,
            ),
            (
                "gateway_lite_pool_ready",
                "Unclaimed pooled kernels that answered kernel_info.",
                |p: &PoolGauge| p.ready,
            ),
            (
                "gateway_lite_pool_starting",
                "Unclaimed pooled kernels not yet ready.",
                |p: &PoolGauge| p.starting,
            ),
        ] {
            head(out, name, "gauge", help);
            for p in pools {
                let _ = writeln!(
                    out,
                    "{name}{{kernel_name=\"{}\"}} {}",
                    escape(&p.name),
                    pick(p)
                );
            }
        }
        head(
            out,
            "gateway_lite_pool_refills_in_flight",
            "gauge",
            "Pooled kernel launches running now (at most --pool-refill-concurrency).",
        );
        let _ = writeln!(out, "gateway_lite_pool_refills_in_flight {in_flight}");
        head(
            out,
            "gateway_lite_pool_requests_total",
            "counter",
            "Starts of a pooled kernelspec: served from the pool (hit), pool empty (miss), env not compatible (incompatible).",
        );
        for (outcome, c) in [
            ("hit", &self.hits),
            ("miss", &self.misses),
            ("incompatible", &self.incompatible),
        ] {
            let _ = writeln!(
                out,
                "gateway_lite_pool_requests_total{{outcome=\"{outcome}\"}} {}",
                get(c)
            );
        }
        for (name, help, c) in [
            (
                "gateway_lite_pool_refills_total",
                "Pooled kernels started and ready.",
                &self.refills,
            ),
            (
                "gateway_lite_pool_refill_failures_total",
                "Pooled kernel launches that failed.",
                &self.refill_failures,
            ),
            (
                "gateway_lite_pool_deaths_total",
                "Pooled kernels that died unclaimed (replaced).",
                &self.deaths,
            ),
        ] {
            head(out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", get(c));
        }
        head(
            out,
            "gateway_lite_pool_refill_seconds",
            "summary",
            "Time from a refill's launch to its kernel_info_reply.",
        );
        let _ = writeln!(
            out,
            "gateway_lite_pool_refill_seconds_sum {}",
            get(&self.refill_micros) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "gateway_lite_pool_refill_seconds_count {}",
            get(&self.refills)
        );
    }
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value (`\`, `"` and newlines).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `VmRSS` of this process, in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_and_counters_render() {
        let m = Metrics::default();
        m.observe_start(Duration::from_millis(80));
        m.observe_start(Duration::from_secs(3));
        m.starts_ok.fetch_add(2, Ordering::Relaxed);
        let text = m.render(&Gauges {
            kernels_by_state: vec![("idle", 0), ("busy", 2)],
            reservations: 1,
            curve_kernels: 1,
            ..Gauges::default()
        });
        assert!(text.contains("gateway_lite_kernels_curve 1\n"), "{text}");
        assert!(
            text.contains("gateway_lite_kernel_start_seconds_bucket{le=\"0.05\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("gateway_lite_kernel_start_seconds_bucket{le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("gateway_lite_kernel_start_seconds_bucket{le=\"5\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("gateway_lite_kernel_start_seconds_count 2\n"),
            "{text}"
        );
        assert!(
            text.contains("gateway_lite_kernel_starts_total{outcome=\"ok\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("gateway_lite_kernels{execution_state=\"idle\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("gateway_lite_kernels{execution_state=\"busy\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("gateway_lite_kernel_reservations 1\n"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }
}
