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

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::{self, Display};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio_tungstenite::MaybeTlsStream;

use crate::support::{
    Close, Gateway, HangUp, KernelClient, Options, WAIT, processes_of, processes_with_env,
    wait_no_processes,
};

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

/// SplitMix64: small, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn millis(&mut self, below: u64) -> Duration {
        Duration::from_millis(self.below(below))
    }

    /// A hang-up, or none. Draws the same number of values either way, so a fault kind that
    /// is switched off does not change the others.
    fn hang_up(&mut self, enabled: bool, close: Option<Close>) -> Option<HangUp> {
        let hit = self.chance(CHANCE);
        // Mostly early (inside a launch, a stop), up to a few hundred milliseconds.
        let after = if self.chance(50) {
            self.millis(100)
        } else {
            self.millis(400)
        };
        let whole = !self.chance(PARTIAL);
        let connection_close = self.chance(50);
        let reset = self.chance(30);
        let close = close.unwrap_or(if reset { Close::Reset } else { Close::Fin });
        (enabled && hit).then_some(HangUp {
            after,
            whole,
            connection_close,
            close,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillAfter {
    Start,
    Interrupt,
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Launcher,
    Kernel,
}

/// The faults enabled by `GATEWAY_LITE_SOAK_FAULTS`.
#[derive(Debug, Clone)]
struct Faults(BTreeSet<String>);

impl Faults {
    const ALL: [&'static str; 6] = ["post", "restart", "interrupt", "delete", "ws", "kill"];

    fn from_env() -> Faults {
        let spec = std::env::var("GATEWAY_LITE_SOAK_FAULTS").unwrap_or_else(|_| "all".into());
        let set: BTreeSet<String> = match spec.trim() {
            "all" | "" => Self::ALL.iter().map(|s| (*s).to_owned()).collect(),
            "none" => BTreeSet::new(),
            list => list.split(',').map(|s| s.trim().to_owned()).collect(),
        };
        for f in &set {
            assert!(
                Self::ALL.contains(&f.as_str()),
                "GATEWAY_LITE_SOAK_FAULTS: unknown fault {f:?} (known: {:?}, all, none)",
                Self::ALL
            );
        }
        Faults(set)
    }

    fn on(&self, kind: &str) -> bool {
        self.0.contains(kind)
    }
}

impl Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v: Vec<&str> = self.0.iter().map(String::as_str).collect();
        write!(
            f,
            "{}",
            if v.is_empty() {
                "none".into()
            } else {
                v.join(",")
            }
        )
    }
}

/// What cycle `n` does, drawn from the seed before it starts.
#[derive(Debug, Clone)]
struct Plan {
    /// The v1 WebSocket framing for the cycle's main connection.
    v1: bool,
    post: Option<HangUp>,
    /// Vanish this long after sending a chatty cell; with an RST if true.
    ws_drop: Option<(Duration, bool)>,
    /// Time between the sleep cell starting and the interrupt.
    interrupt_after: Duration,
    interrupt: Option<HangUp>,
    restart: Option<HangUp>,
    delete: Option<HangUp>,
    kill: Option<(KillAfter, Victim)>,
}

impl Plan {
    fn draw(seed: u64, n: usize, faults: &Faults) -> Plan {
        let mut r = Rng(seed ^ (n as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
        let v1 = r.chance(50);
        let post = r.hang_up(faults.on("post"), Some(Close::Shutdown));
        let ws_hit = r.chance(CHANCE);
        let ws_after = r.millis(400);
        let ws_reset = r.chance(50);
        let interrupt_after = r.millis(300);
        let interrupt = r.hang_up(faults.on("interrupt"), None);
        let restart = r.hang_up(faults.on("restart"), None);
        let delete = r.hang_up(faults.on("delete"), None);
        let kill_hit = r.chance(CHANCE);
        let at = [KillAfter::Start, KillAfter::Interrupt, KillAfter::Restart][r.below(3) as usize];
        let victim = if r.chance(50) {
            Victim::Launcher
        } else {
            Victim::Kernel
        };
        Plan {
            v1,
            post,
            ws_drop: (faults.on("ws") && ws_hit).then_some((ws_after, ws_reset)),
            interrupt_after,
            interrupt,
            restart,
            delete,
            kill: (faults.on("kill") && kill_hit).then_some((at, victim)),
        }
    }

    /// The faults of the plan, briefly.
    fn faults(&self) -> String {
        let h = |what: &str, h: &Option<HangUp>| {
            h.map(|h| {
                format!(
                    "hang-up {what} {}ms {:?}{}{}",
                    h.after.as_millis(),
                    h.close,
                    if h.connection_close {
                        " conn-close"
                    } else {
                        ""
                    },
                    if h.whole { "" } else { " partial" }
                )
            })
        };
        let v: Vec<String> = [
            h("POST", &self.post),
            self.ws_drop.map(|(d, rst)| {
                format!(
                    "ws drop {}ms{}",
                    d.as_millis(),
                    if rst { " RST" } else { "" }
                )
            }),
            h("interrupt", &self.interrupt),
            h("restart", &self.restart),
            h("DELETE", &self.delete),
            self.kill.map(|(at, v)| format!("SIGKILL {v:?} {at:?}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if v.is_empty() {
            "no faults".into()
        } else {
            v.join(", ")
        }
    }
}

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

/// Starts a cell that sleeps 600 s; returns its request id once its code runs (its first line
/// printed), so an interrupt lands in the cell. A SIGINT between `execute_input` and the
/// cell's code can end ipykernel's handler without an `execute_reply`.
async fn start_long_sleep(c: &mut KernelClient) -> Result<String, String> {
    let id = c
        .try_send(
            "shell",
            "execute_request",
            json!({"code": "print('sleeping', flush=True)\nimport time\ntime.sleep(600)",
                "silent": false, "stop_on_error": false}),
        )
        .await
        .map_err(|e| format!("sending the sleep cell: {e}"))?;
    loop {
        let m = c
            .recv()
            .await
            .ok_or("the socket closed before the sleep cell ran")?;
        if m.parent_id() == id
            && m.msg_type() == "stream"
            && m.content["text"]
                .as_str()
                .is_some_and(|t| t.contains("sleeping"))
        {
            return Ok(id);
        }
    }
}

fn proc_env(pid: i32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0).find_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn is_launcher(pid: i32) -> bool {
    cmdline(pid)
        .split(' ')
        .next()
        .is_some_and(|a| a.ends_with("kernel-launcher"))
}

/// Pids with their command line, kernel id and soak tag, for failure messages.
fn describe(pids: &[i32]) -> String {
    let v: Vec<String> = pids
        .iter()
        .map(|p| {
            let mut cmd = cmdline(*p);
            cmd.truncate(100);
            format!(
                "{p} [{cmd}] KERNEL_ID={} KERNEL_SOAK_TAG={}",
                proc_env(*p, "KERNEL_ID").unwrap_or_default(),
                proc_env(*p, "KERNEL_SOAK_TAG").unwrap_or_default()
            )
        })
        .collect();
    format!("[{}]", v.join("; "))
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The value of the sample line `name value` in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .filter_map(|k| k["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// One cycle of kernel `n`.
struct Cycle<'a> {
    s: &'a Soak,
    n: usize,
    plan: Plan,
    t: Trace,
}

impl Cycle<'_> {
    async fn run(&self) -> Result<(), String> {
        let (s, plan, t) = (self.s, &self.plan, &self.t);
        if let Some(how) = plan.post {
            self.hang_up_start(how).await?;
        }

        let began = Instant::now();
        let (status, _, body) =
            s.gw.http(
                "POST",
                "/api/kernels",
                Some(&s.start_body(&format!("c{}", self.n))),
            )
            .await;
        ensure!(status == 201, "POST /api/kernels: {status} {body}");
        s.latency("start", began);
        let model: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let id = model["id"]
            .as_str()
            .ok_or_else(|| format!("201 without an id: {body}"))?
            .to_owned();
        s.learned(&id);
        t.note(format_args!("POST /api/kernels → 201 {id}"));

        let started = Instant::now();
        let mut c = s.gw.try_connect(&id, plan.v1).await?;
        let out = tokio::time::timeout(EXECUTE_WAIT, c.try_execute("1+1"))
            .await
            .map_err(|_| format!("no answer to the first 1+1 in {EXECUTE_WAIT:?}"))?
            .ok_or("the socket closed during the first 1+1")?;
        ensure!(out.text == "2", "first 1+1 gave {out:?}");
        s.latency("first_execute", started);
        t.note("first 1+1 → 2");
        // The leak checks count processes by their tag: it must reach them.
        let tagged = processes_with_env(&format!("KERNEL_SOAK_TAG=c{}", self.n));
        let all = processes_of(&id);
        ensure!(
            !all.is_empty() && all.iter().all(|p| tagged.contains(p)),
            "the request env does not reach the processes of kernel {id} (KERNEL_SOAK_TAG on {tagged:?}, processes {}): leaks could not be counted",
            describe(&all)
        );

        c = self.maybe_kill(&id, KillAfter::Start, c).await?;
        if let Some((after, reset)) = plan.ws_drop {
            c = self.drop_mid_execute(&id, c, after, reset).await?;
        }
        c = self.interrupt(&id, c).await?;
        c = self.maybe_kill(&id, KillAfter::Interrupt, c).await?;
        c = self.restart(&id, c).await?;
        let c = self.maybe_kill(&id, KillAfter::Restart, c).await?;

        if let Some(how) = plan.delete
            && self.hang_up_delete(&id, how).await?
        {
            return Ok(());
        }
        // The connection stays open across the DELETE, as a notebook's does.
        s.delete(&id, t).await?;
        drop(c);
        Ok(())
    }

    /// Hangs up on a start. Unless the 201 came (before or after the hang-up: then the kernel
    /// is the client's and is checked and deleted), no kernel may come of it: no process with
    /// its tag, none of its kernel ids listed.
    async fn hang_up_start(&self, how: HangUp) -> Result<(), String> {
        let (s, t) = (self.s, &self.t);
        let tag = format!("c{}-hangup", self.n);
        let r =
            s.gw.hang_up("POST", "/api/kernels", Some(&s.start_body(&tag)), how)
                .await;
        s.count("abandoned_posts");
        if !how.whole {
            s.count("abandoned_posts_partial");
        }
        if r.before.is_none() && how.whole {
            s.count(if how.connection_close {
                "posts_hung_up_unanswered_conn_close"
            } else {
                "posts_hung_up_unanswered_keepalive"
            });
        }
        let answer = match (r.before, r.after) {
            (Some(a), _) => {
                s.count("posts_answered_before_hangup");
                t.note(format_args!(
                    "hang-up POST {how:?}: answered {} before it",
                    a.0
                ));
                Some(a)
            }
            (None, Some(a)) => {
                let what = format!(
                    "hang-up POST {how:?}: answered {} {} ms after it",
                    a.0,
                    r.waited.as_millis()
                );
                if a.0 == 201 {
                    // Rare with a gateway that abandons the launch of a client that left.
                    s.count(if how.connection_close {
                        "posts_answered_after_hangup_conn_close"
                    } else {
                        "posts_answered_after_hangup_keepalive"
                    });
                    println!("soak: cycle {}: {what}", self.n);
                }
                t.note(what);
                Some(a)
            }
            (None, None) => {
                t.note(format_args!("hang-up POST {how:?}: no answer"));
                None
            }
        };
        if let Some((201, _, body)) = &answer {
            let model: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            let id = model["id"]
                .as_str()
                .ok_or_else(|| format!("201 without an id: {body}"))?;
            s.learned(id);
            s.usable(id, false, "(started by a hung-up POST that was answered)")
                .await?;
            return s.delete(id, t).await;
        }

        let needle = format!("KERNEL_SOAK_TAG={tag}");
        let deadline = Instant::now() + WAIT;
        let mut seen = BTreeSet::new();
        loop {
            let pids = processes_with_env(&needle);
            seen.extend(pids.iter().filter_map(|p| proc_env(*p, "KERNEL_ID")));
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let (_, list) = s.gw.json("GET", "/api/kernels", None).await;
                let listed: Vec<String> = ids(&list)
                    .into_iter()
                    .filter(|i| seen.contains(i))
                    .collect();
                return Err(format!(
                    "a POST /api/kernels hung up on ({how:?}, answer {:?}) left processes running for {WAIT:?}: {} (listed: {listed:?})",
                    answer.map(|a| a.0),
                    describe(&pids)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, list) = s.gw.json("GET", "/api/kernels", None).await;
        let listed: Vec<String> = ids(&list)
            .into_iter()
            .filter(|i| seen.contains(i))
            .collect();
        ensure!(
            listed.is_empty(),
            "a POST /api/kernels hung up on ({how:?}) left kernel(s) {listed:?} listed without processes"
        );
        if !seen.is_empty() {
            t.note(format_args!("its launch {seen:?} was cleaned up"));
        }
        Ok(())
    }

    async fn maybe_kill(
        &self,
        id: &str,
        at: KillAfter,
        c: KernelClient,
    ) -> Result<KernelClient, String> {
        let Some((when, victim)) = self.plan.kill.filter(|k| k.0 == at) else {
            return Ok(c);
        };
        let s = self.s;
        let before = processes_of(id);
        let pid = before
            .iter()
            .copied()
            .find(|p| is_launcher(*p) == (victim == Victim::Launcher))
            .ok_or_else(|| {
                format!(
                    "no {victim:?} process of kernel {id} to kill: {}",
                    describe(&before)
                )
            })?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL)
            .map_err(|e| format!("kill -9 {pid}: {e}"))?;
        s.count("sigkills");
        s.count(match victim {
            Victim::Launcher => "sigkills_launcher",
            Victim::Kernel => "sigkills_kernel",
        });
        self.t
            .note(format_args!("SIGKILL {victim:?} {pid} ({when:?})"));
        drop(c);
        // The gateway restarts it: new launcher, new kernel, same id.
        let deadline = Instant::now() + WAIT;
        loop {
            let now = processes_of(id);
            if !now.is_empty() && now.iter().all(|p| !before.contains(p)) {
                break;
            }
            if Instant::now() > deadline {
                let (status, model) = s.gw.json("GET", &format!("/api/kernels/{id}"), None).await;
                return Err(format!(
                    "no automatic restart of kernel {id} within {WAIT:?} after SIGKILL of its {victim:?} {pid}: processes before {before:?}, now {}; model {status} {model}",
                    describe(&now)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s.count("automatic_restarts_observed");
        let c = s
            .usable(id, self.plan.v1, "after its automatic restart")
            .await?;
        self.t.note("restarted automatically, usable");
        Ok(c)
    }

    async fn drop_mid_execute(
        &self,
        id: &str,
        mut c: KernelClient,
        after: Duration,
        reset: bool,
    ) -> Result<KernelClient, String> {
        c.try_send(
            "shell",
            "execute_request",
            json!({"code": CHATTY_CELL, "silent": false, "stop_on_error": false}),
        )
        .await
        .map_err(|e| format!("sending the chatty cell: {e}"))?;
        tokio::time::sleep(after).await;
        if reset && let MaybeTlsStream::Plain(tcp) = c.ws.get_ref() {
            let _ = tcp.set_zero_linger();
        }
        drop(c);
        self.s.count("websocket_drops");
        self.t.note(format_args!(
            "WebSocket dropped {}ms into a cell{}",
            after.as_millis(),
            if reset { " (RST)" } else { "" }
        ));
        self.s
            .usable(
                id,
                self.plan.v1,
                "after a client vanished in the middle of an execute",
            )
            .await
    }

    /// Interrupts a running `time.sleep(600)`: KeyboardInterrupt. With a hung-up interrupt
    /// first, two SIGINTs can reach the cell; the second can land after the cell, in
    /// ipykernel's handler, which then ends without an `execute_reply` ("KeyboardInterrupt
    /// caught in kernel"). So there the check is that the kernel runs `1+1` again well before
    /// the sleep would have ended.
    async fn interrupt(&self, id: &str, mut c: KernelClient) -> Result<KernelClient, String> {
        let (s, plan, t) = (self.s, &self.plan, &self.t);
        let url = format!("/api/kernels/{id}/interrupt");
        let sleep = tokio::time::timeout(EXECUTE_WAIT, start_long_sleep(&mut c))
            .await
            .map_err(|_| format!("the sleep cell did not start in {EXECUTE_WAIT:?}"))??;
        tokio::time::sleep(plan.interrupt_after).await;
        if let Some(how) = plan.interrupt {
            let r = s.gw.hang_up("POST", &url, None, how).await;
            s.count("abandoned_interrupts");
            if !how.whole {
                s.count("abandoned_interrupts_partial");
            }
            t.note(format_args!(
                "hang-up interrupt {how:?}: answered before it: {:?}",
                r.before.map(|a| a.0)
            ));
        }
        let began = Instant::now();
        let (status, _, body) = s.gw.http("POST", &url, None).await;
        ensure!(status == 204, "POST {url}: {status} {body}");
        s.latency("interrupt", began);
        let twice = plan.interrupt.is_some();
        let wait = if twice { EXECUTE_WAIT } else { WAIT };
        match tokio::time::timeout(wait, c.try_collect(&sleep)).await {
            Ok(Some(out))
                if out.ename == "KeyboardInterrupt"
                    || (twice
                        && out.status == "error"
                        && out.text.contains("KeyboardInterrupt")) =>
            {
                t.note("interrupt → 204, KeyboardInterrupt");
            }
            Ok(Some(out)) => return Err(format!("the interrupted sleep gave {out:?}")),
            Ok(None) => return Err("the socket closed during the interrupted sleep".into()),
            Err(_) if twice => {
                s.count("interrupt_replies_lost");
                t.note("interrupt → 204, no reply to the sleep cell");
            }
            Err(_) => return Err(format!("the interrupted sleep did not end in {wait:?}")),
        }
        if !twice {
            return Ok(c);
        }
        drop(c);
        s.usable(id, plan.v1, "after a hung-up interrupt").await
    }

    async fn restart(&self, id: &str, mut c: KernelClient) -> Result<KernelClient, String> {
        let (s, plan, t) = (self.s, &self.plan, &self.t);
        let url = format!("/api/kernels/{id}/restart");
        if let Some(how) = plan.restart {
            let before = processes_of(id);
            let r = s.gw.hang_up("POST", &url, None, how).await;
            s.count("abandoned_restarts");
            if !how.whole {
                s.count("abandoned_restarts_partial");
            }
            t.note(format_args!(
                "hang-up restart {how:?}: answered before it: {:?}",
                r.before.map(|a| a.0)
            ));
            drop(c);
            c = s.usable(id, plan.v1, "after a hung-up restart").await?;
            if processes_of(id).iter().all(|p| !before.contains(p)) {
                s.count("abandoned_restarts_applied");
                t.note("usable, restarted");
            } else {
                t.note("usable, not restarted");
            }
        }
        let began = Instant::now();
        let (status, model) = s.gw.json("POST", &url, None).await;
        ensure!(
            status == 200 && model["id"] == id,
            "POST {url}: {status} {model}"
        );
        s.latency("restart", began);
        // The connection stays across the restart.
        let out = tokio::time::timeout(EXECUTE_WAIT, c.try_execute("1+1"))
            .await
            .map_err(|_| format!("no answer to 1+1 after the restart in {EXECUTE_WAIT:?}"))?
            .ok_or("the socket closed during 1+1 after the restart")?;
        ensure!(out.text == "2", "1+1 after the restart gave {out:?}");
        t.note("restart → 200, 1+1 → 2");
        Ok(c)
    }

    /// Hangs up on a DELETE (returns whether it stopped the kernel). The whole request must
    /// still stop the kernel: 404 and no process left. One cut short must leave it untouched:
    /// listed, the same processes, usable.
    async fn hang_up_delete(&self, id: &str, how: HangUp) -> Result<bool, String> {
        let (s, t) = (self.s, &self.t);
        let url = format!("/api/kernels/{id}");
        let mut before = processes_of(id);
        before.sort_unstable();
        let r = s.gw.hang_up("DELETE", &url, None, how).await;
        s.count("abandoned_deletes");
        if !how.whole {
            s.count("abandoned_deletes_partial");
        }
        t.note(format_args!(
            "hang-up DELETE {how:?}: answered before it: {:?}",
            r.before.as_ref().map(|a| a.0)
        ));
        if !how.whole {
            let (status, model) = s.gw.json("GET", &url, None).await;
            let mut now = processes_of(id);
            now.sort_unstable();
            ensure!(
                status == 200 && now == before,
                "a DELETE cut short ({how:?}) changed kernel {id}: {status} {model}, processes {before:?} → {}",
                describe(&now)
            );
            s.usable(id, false, "after a DELETE cut short").await?;
            t.note("untouched, usable");
            return Ok(false);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, model) = s.gw.json("GET", &url, None).await;
            let now = processes_of(id);
            if status == 404 && now.is_empty() {
                s.count("abandoned_deletes_applied");
                t.note("the hung-up DELETE stopped the kernel");
                return Ok(true);
            }
            ensure!(
                Instant::now() < deadline,
                "a DELETE hung up on ({how:?}) did not stop kernel {id} within {WAIT:?}: {status} {model}, processes {}",
                describe(&now)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
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
    let gw_pid = gw.pid();
    let rss_start = rss_kb(gw_pid);
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

    let rss_end = rss_kb(gw_pid);
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
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    assert!(
        failures.is_empty(),
        "soak failed (replay: GATEWAY_LITE_SOAK_SEED={seed}); gateway log in {}:\n\n{}",
        s.gw.dir.display(),
        failures.join("\n\n")
    );
}
