//! What each soak cycle does: a seeded RNG draws every cycle's faults before it starts, so a
//! failure replays from its seed (up to the timing).

use std::collections::BTreeSet;
use std::fmt::{self, Display};
use std::time::Duration;

use super::{CHANCE, PARTIAL};
use crate::support::{Close, HangUp};

/// SplitMix64: small, seedable, good enough to pick faults.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub(super) fn millis(&mut self, below: u64) -> Duration {
        Duration::from_millis(self.below(below))
    }

    /// A hang-up, or none. Draws the same number of values either way, so a fault kind that
    /// is switched off does not change the others.
    pub(super) fn hang_up(&mut self, enabled: bool, close: Option<Close>) -> Option<HangUp> {
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
pub(super) enum KillAfter {
    Start,
    Interrupt,
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Victim {
    Launcher,
    Kernel,
}

/// The faults enabled by `GATEWAY_LITE_SOAK_FAULTS`.
#[derive(Debug, Clone)]
pub(super) struct Faults(BTreeSet<String>);

impl Faults {
    pub(super) const ALL: [&'static str; 6] =
        ["post", "restart", "interrupt", "delete", "ws", "kill"];

    pub(super) fn from_env() -> Faults {
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

    pub(super) fn on(&self, kind: &str) -> bool {
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
pub(super) struct Plan {
    /// The v1 WebSocket framing for the cycle's main connection.
    pub(super) v1: bool,
    pub(super) post: Option<HangUp>,
    /// Vanish this long after sending a chatty cell; with an RST if true.
    pub(super) ws_drop: Option<(Duration, bool)>,
    /// Time between the sleep cell starting and the interrupt.
    pub(super) interrupt_after: Duration,
    pub(super) interrupt: Option<HangUp>,
    pub(super) restart: Option<HangUp>,
    pub(super) delete: Option<HangUp>,
    pub(super) kill: Option<(KillAfter, Victim)>,
}

impl Plan {
    pub(super) fn draw(seed: u64, n: usize, faults: &Faults) -> Plan {
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
    pub(super) fn faults(&self) -> String {
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
