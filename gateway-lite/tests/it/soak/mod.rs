//! Lifecycle soak: many cycles of start → execute → interrupt a running `time.sleep(600)` →
//! restart → execute → shutdown against one gateway, on a few concurrent workers, with faults
//! at points a seeded RNG picks:
//!
//! - clients that hang up on POST /api/kernels, …/restart, …/interrupt and DELETE (a random
//!   delay after writing the request, sometimes before writing all of it), each followed by a
//!   check of what the request may leave behind;
//! - SIGKILL of the kernel or of its launcher: the gateway restarts the kernel, the cycle goes
//!   on once it executes again;
//! - WebSocket clients that vanish in the middle of an execute.
//!
//! At the end every listed kernel must execute `1+1` and is deleted; then no process of the
//! run may be left, the listing must be empty and `/metrics` must say
//! `gateway_lite_kernel_reservations 0`. Every kernel carries `KERNEL_SOAK_RUN=<run id>` in
//! its request env (it reaches the launcher's and the kernel's environment), so processes are
//! found even for kernels whose id no client learned.
//!
//! Knobs: `GATEWAY_LITE_SOAK_CYCLES` (default 100), `GATEWAY_LITE_SOAK_WORKERS` (default 4),
//! `GATEWAY_LITE_SOAK_SEED` (default random; always printed: a failure is replayed with the
//! same seed, up to the timing), `GATEWAY_LITE_SOAK_FAULTS` (comma list of `post`, `restart`,
//! `interrupt`, `delete`, `ws`, `kill`; default all, `none` for none). The run ends with one
//! `SOAK-SUMMARY {json}` line on stdout; bench/soak.sh runs it with 1000 cycles.
//!
//! Timeouts only bound waits; nothing asserts how fast the gateway is.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Display;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{
    Gateway, KernelClient, Options, WAIT, processes_with_env, status_kb, wait_no_processes,
};
use cycle::Cycle;
use plan::{Faults, Plan};
use procs::{describe, ids, metric};

/// Bound for one `1+1` round trip.
const EXECUTE_WAIT: Duration = Duration::from_secs(30);
/// Bound for a kernel to become usable again (an automatic restart, a restart under load).
const USABLE_WAIT: Duration = Duration::from_secs(90);
/// The workers stop taking cycles after this many failed ones.
const MAX_FAILURES: usize = 5;
/// Chance (percent) of each fault in a cycle.
const CHANCE: u64 = 25;
/// Chance (percent) that a hung-up request stops short of its end.
const PARTIAL: u64 = 20;
/// Prints for a while, so a client can vanish in the middle of it.
const CHATTY_CELL: &str =
    "import time\nfor i in range(40):\n    print('tick', i, flush=True)\n    time.sleep(0.02)";

const COUNTERS: [&str; 23] = [
    "cycles_ok",
    "cycles_failed",
    "abandoned_posts",
    "abandoned_posts_partial",
    "posts_answered_before_hangup",
    "posts_hung_up_unanswered_keepalive",
    "posts_hung_up_unanswered_conn_close",
    "posts_answered_after_hangup_keepalive",
    "posts_answered_after_hangup_conn_close",
    "abandoned_interrupts",
    "abandoned_interrupts_partial",
    "interrupt_replies_lost",
    "abandoned_restarts",
    "abandoned_restarts_partial",
    "abandoned_restarts_applied",
    "abandoned_deletes",
    "abandoned_deletes_partial",
    "abandoned_deletes_applied",
    "websocket_drops",
    "sigkills",
    "sigkills_launcher",
    "sigkills_kernel",
    "automatic_restarts_observed",
];

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

mod cycle;
mod plan;
mod procs;

/// What a cycle did, for its failure message.
#[derive(Clone)]
struct Trace {
    began: Instant,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Trace {
    fn new() -> Trace {
        Trace {
            began: Instant::now(),
            lines: Arc::default(),
        }
    }

    fn note(&self, what: impl Display) {
        let line = format!("{:8.2}s {what}", self.began.elapsed().as_secs_f64());
        if let Ok(mut l) = self.lines.lock() {
            l.push(line);
        }
    }

    fn dump(&self) -> String {
        self.lines
            .lock()
            .map(|l| l.iter().map(|s| format!("    {s}\n")).collect())
            .unwrap_or_default()
    }
}

/// The soak's shared state.
struct Soak {
    gw: Gateway,
    /// Value of `KERNEL_SOAK_RUN` in every kernel's env.
    run: String,
    seed: u64,
    faults: Faults,
    /// Every kernel id a client of the soak learned.
    known: Mutex<HashSet<String>>,
    counts: Mutex<BTreeMap<&'static str, u64>>,
    latencies: Mutex<BTreeMap<&'static str, Vec<f64>>>,
    failures: Mutex<Vec<String>>,
}

impl Soak {
    fn count(&self, what: &'static str) {
        debug_assert!(COUNTERS.contains(&what), "{what}");
        if let Ok(mut c) = self.counts.lock() {
            *c.entry(what).or_default() += 1;
        }
    }

    fn counter(&self, what: &str) -> u64 {
        self.counts
            .lock()
            .map(|c| c.get(what).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn latency(&self, step: &'static str, since: Instant) {
        if let Ok(mut l) = self.latencies.lock() {
            l.entry(step)
                .or_default()
                .push(since.elapsed().as_secs_f64() * 1000.0);
        }
    }

    fn learned(&self, id: &str) {
        if let Ok(mut k) = self.known.lock() {
            k.insert(id.to_owned());
        }
    }

    fn fail(&self, why: String) {
        println!("soak: FAILURE {why}");
        if let Ok(mut f) = self.failures.lock() {
            f.push(why);
        }
    }

    fn failed(&self) -> usize {
        self.failures.lock().map(|f| f.len()).unwrap_or(0)
    }

    fn start_body(&self, tag: &str) -> String {
        json!({"name": "py", "env": {"KERNEL_SOAK_RUN": self.run, "KERNEL_SOAK_TAG": tag}})
            .to_string()
    }

    /// Waits until kernel `id` is listed and runs `1+1` on a new connection; returns that
    /// connection. Not listed is an error at once.
    async fn usable(&self, id: &str, v1: bool, when: &str) -> Result<KernelClient, String> {
        let deadline = Instant::now() + USABLE_WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let (status, list) = self.gw.json("GET", "/api/kernels", None).await;
            let model = list
                .as_array()
                .and_then(|l| l.iter().find(|k| k["id"] == id))
                .cloned();
            let Some(model) = model else {
                return Err(format!(
                    "kernel {id} is not listed {when} (GET /api/kernels: {status} {list})"
                ));
            };
            last = format!("state {}", model["execution_state"]);
            match self.gw.try_connect(id, v1).await {
                Err(e) => last.push_str(&format!(", {e}")),
                Ok(mut c) => match tokio::time::timeout(EXECUTE_WAIT, c.try_execute("1+1")).await {
                    Ok(Some(out)) if out.text == "2" => return Ok(c),
                    Ok(Some(out)) => last.push_str(&format!(", 1+1 gave {out:?}")),
                    Ok(None) => last.push_str(", the socket closed during 1+1"),
                    Err(_) => last.push_str(&format!(", no answer to 1+1 in {EXECUTE_WAIT:?}")),
                },
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!(
            "kernel {id} not usable {when} within {USABLE_WAIT:?}: last {last}"
        ))
    }

    /// Deletes kernel `id`; it must go: 204, then 404 and no process.
    async fn delete(&self, id: &str, t: &Trace) -> Result<(), String> {
        let began = Instant::now();
        let (status, _, body) = self
            .gw
            .http("DELETE", &format!("/api/kernels/{id}"), None)
            .await;
        ensure!(status == 204, "DELETE /api/kernels/{id}: {status} {body}");
        self.latency("delete", began);
        t.note("DELETE → 204");
        gone(self, id, "after DELETE").await
    }
}

/// Kernel `id` must end up unknown to the gateway (404) with no process left (bounded wait).
async fn gone(s: &Soak, id: &str, when: &str) -> Result<(), String> {
    let left = wait_no_processes(id).await;
    ensure!(
        left.is_empty(),
        "processes of kernel {id} still run {WAIT:?} {when}: {}",
        describe(&left)
    );
    let (status, model) = s.gw.json("GET", &format!("/api/kernels/{id}"), None).await;
    ensure!(
        status == 404,
        "kernel {id} still known {when}: {status} {model}"
    );
    Ok(())
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .map(|m| format!("panicked: {m}"))
            .unwrap_or_else(|| "panicked".into()),
        Err(e) => format!("cancelled: {e}"),
    }
}

async fn worker(s: Arc<Soak>, next: Arc<AtomicUsize>, cycles: usize) {
    loop {
        if s.failed() >= MAX_FAILURES {
            return;
        }
        let n = next.fetch_add(1, Ordering::SeqCst);
        if n >= cycles {
            return;
        }
        let plan = Plan::draw(s.seed, n, &s.faults);
        let t = Trace::new();
        let began = Instant::now();
        let task = tokio::spawn({
            let (s, plan, t) = (s.clone(), plan.clone(), t.clone());
            async move { Cycle { s: &s, n, plan, t }.run().await }
        });
        let result = task.await.unwrap_or_else(|e| Err(panic_message(e)));
        match result {
            Ok(()) => {
                s.count("cycles_ok");
                println!(
                    "soak: cycle {n} ok in {:.1} s ({})",
                    began.elapsed().as_secs_f64(),
                    plan.faults()
                );
            }
            Err(e) => {
                s.count("cycles_failed");
                s.fail(format!(
                    "cycle {n} ({}): {e}\n  steps:\n{}",
                    plan.faults(),
                    t.dump()
                ));
            }
        }
    }
}

/// p50 and p99 (nearest rank) in ms.
fn percentiles(v: &[f64]) -> Value {
    if v.is_empty() {
        return json!({"n": 0});
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        (v[rank - 1] * 10.0).round() / 10.0
    };
    json!({"n": v.len(), "p50": at(0.50), "p99": at(0.99)})
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: not a number"))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_soak() {
    let cycles = env_number("GATEWAY_LITE_SOAK_CYCLES", 100);
    let workers = env_number("GATEWAY_LITE_SOAK_WORKERS", 4).max(1);
    let seed = std::env::var("GATEWAY_LITE_SOAK_SEED").map_or_else(
        |_| uuid::Uuid::new_v4().as_u64_pair().0,
        |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("GATEWAY_LITE_SOAK_SEED={v:?}: not a number"))
        },
    );
    let faults = Faults::from_env();
    println!(
        "soak: seed {seed} (replay: GATEWAY_LITE_SOAK_SEED={seed}), {cycles} cycles, {workers} workers, faults {faults}"
    );
    let gw = Gateway::start(Options::default());
    let gw_pid = gw.pid() as i32;
    let rss_start = status_kb(gw_pid, "VmRSS");
    let s = Arc::new(Soak {
        gw,
        run: uuid::Uuid::new_v4().to_string(),
        seed,
        faults,
        known: Mutex::default(),
        counts: Mutex::new(COUNTERS.iter().map(|c| (*c, 0)).collect()),
        latencies: Mutex::default(),
        failures: Mutex::default(),
    });
    let began = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| tokio::spawn(worker(s.clone(), next.clone(), cycles)))
        .collect();
    for task in tasks {
        task.await.expect("soak worker");
    }
    let wall = began.elapsed();

    // Every kernel still listed works, then goes.
    let (status, list) = s.gw.json("GET", "/api/kernels", None).await;
    assert_eq!(status, 200, "{list}");
    let listed = ids(&list);
    let known = s.known.lock().map(|k| k.clone()).unwrap_or_default();
    let unknown: Vec<&String> = listed.iter().filter(|i| !known.contains(*i)).collect();
    if !unknown.is_empty() {
        s.fail(format!(
            "kernels no client of the soak learned are listed at the end (started by hung-up POSTs): {unknown:?}"
        ));
    }
    let end = Trace::new();
    for id in &listed {
        if let Err(e) = s.usable(id, false, "at the end").await {
            s.fail(format!("end: {e}"));
        }
        if let Err(e) = s.delete(id, &end).await {
            s.fail(format!("end: {e}"));
        }
    }

    // Nothing of the run is left.
    let marker = format!("KERNEL_SOAK_RUN={}", s.run);
    let deadline = Instant::now() + WAIT;
    let mut leftover = processes_with_env(&marker);
    while !leftover.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        leftover = processes_with_env(&marker);
    }
    if !leftover.is_empty() {
        s.fail(format!(
            "{} process(es) of the soak still run {WAIT:?} after the end: {}",
            leftover.len(),
            describe(&leftover)
        ));
    }
    let (_, list) = s.gw.json("GET", "/api/kernels", None).await;
    let leftover_kernels = ids(&list);
    if list != json!([]) {
        s.fail(format!("GET /api/kernels at the end: {list}, want []"));
    }

    // No launch in flight: the reservations gauge is back to 0.
    let deadline = Instant::now() + WAIT;
    let (reservations, metrics) = loop {
        let (_, _, text) = s.gw.http("GET", "/metrics", None).await;
        let value = metric(&text, "gateway_lite_kernel_reservations");
        if value.is_none_or(|v| v == 0.0) || Instant::now() > deadline {
            break (value, text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    match reservations {
        None => s.fail(
            "GET /metrics has no `gateway_lite_kernel_reservations` line (the gauge of kernel launches in flight, counted against the limits); want `gateway_lite_kernel_reservations 0`".into(),
        ),
        Some(v) if v != 0.0 => s.fail(format!(
            "GET /metrics: `gateway_lite_kernel_reservations {v}` {WAIT:?} after the end, want 0"
        )),
        Some(_) => {}
    }

    // A few 201s after a hang-up are the race of a launch that completes as the hang-up
    // arrives; a gateway that lets launches finish after the client left answers most of them
    // (a client that closed would never learn those kernels: they stay, listed, unused).
    for (kind, what) in [
        ("keepalive", "kept-alive"),
        ("conn_close", "`Connection: close`"),
    ] {
        let hung_up = s.counter(&format!("posts_hung_up_unanswered_{kind}"));
        let answered = s.counter(&format!("posts_answered_after_hangup_{kind}"));
        if answered > 2 && answered * 4 > hung_up {
            s.fail(format!(
                "{answered} of {hung_up} whole {what} POST /api/kernels hung up on before any answer got a 201 after the hang-up: the gateway goes on launching for clients that left"
            ));
        }
    }

    let rss_end = status_kb(gw_pid, "VmRSS");
    let latency: BTreeMap<&str, Value> = s
        .latencies
        .lock()
        .map(|l| l.iter().map(|(k, v)| (*k, percentiles(v))).collect())
        .unwrap_or_default();
    let mut counts = s.counts.lock().map(|c| c.clone()).unwrap_or_default();
    let auto_restarts_metric = metric(
        &metrics,
        "gateway_lite_kernel_restarts_total{cause=\"death\"}",
    );
    counts.remove("cycles_ok");
    let failures = s.failures.lock().map(|f| f.clone()).unwrap_or_default();
    let summary = json!({
        "seed": seed,
        "cycles": cycles,
        "cycles_ok": s.counter("cycles_ok"),
        "workers": workers,
        "faults": s.faults.to_string(),
        "wall_s": (wall.as_secs_f64() * 10.0).round() / 10.0,
        "counts": counts,
        "automatic_restarts_metric": auto_restarts_metric,
        "latency_ms": latency,
        "leftover_processes": leftover.len(),
        "leftover_kernels": leftover_kernels.len(),
        "unknown_kernels": unknown.len(),
        "reservations_gauge": reservations,
        "gateway_rss_kb": {"start": rss_start, "end": rss_end},
        "failures": failures.len(),
    });
    println!("SOAK-SUMMARY {summary}");

    // A failed run leaves nothing behind on the machine.
    for pid in processes_with_env(&marker) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        failures.is_empty(),
        "soak failed (replay: GATEWAY_LITE_SOAK_SEED={seed}); gateway log in {}:\n\n{}",
        s.gw.dir.display(),
        failures.join("\n\n")
    );
}
