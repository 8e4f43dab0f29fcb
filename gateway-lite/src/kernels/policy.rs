//! The rules of a kernel's life, as pure functions of plain values.
//!
//! Whether a start is admitted under the kernel limits, whether a dead kernel is restarted,
//! whether an idle kernel is culled, what execution state a kernel is in, and how long each
//! step of a shutdown may take: the registry and the kernel owners ask these functions and do
//! what they say, so each rule is tested here, with no process, socket or clock (time is
//! passed in).

use std::time::{Duration, Instant};

use crate::config::{Cull, Limits};

/// A kernel's execution state, as the REST model and the metrics report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecutionState {
    /// Launched, not yet answered `kernel_info_request`.
    Starting,
    /// Waiting for requests.
    Idle,
    /// Running a request.
    Busy,
    /// Being restarted by the gateway.
    Restarting,
    /// The kernel died (and is not being restarted).
    Dead,
}

impl ExecutionState {
    /// Every state, in the order metrics list them.
    pub const ALL: [ExecutionState; 5] = [
        ExecutionState::Starting,
        ExecutionState::Idle,
        ExecutionState::Busy,
        ExecutionState::Restarting,
        ExecutionState::Dead,
    ];

    /// The name Jupyter uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionState::Starting => "starting",
            ExecutionState::Idle => "idle",
            ExecutionState::Busy => "busy",
            ExecutionState::Restarting => "restarting",
            ExecutionState::Dead => "dead",
        }
    }

    /// The state an iopub `status` message from the kernel announces (`starting`, `idle`,
    /// `busy`); anything else is not the kernel's to say.
    pub fn from_kernel_status(s: &str) -> Option<Self> {
        match s {
            "starting" => Some(ExecutionState::Starting),
            "idle" => Some(ExecutionState::Idle),
            "busy" => Some(ExecutionState::Busy),
            _ => None,
        }
    }
}

/// Why a start is refused by a kernel limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// `--max-kernels` is reached.
    #[error("The limit of {max} kernels on this gateway is reached; shut a kernel down first.")]
    Total {
        /// The limit.
        max: usize,
    },
    /// `--max-kernels-per-user` is reached for this `KERNEL_USERNAME`.
    #[error(
        "User '{user}' already has {have} of the {max} kernels allowed per user (KERNEL_USERNAME); shut one down first."
    )]
    PerUser {
        /// The user.
        user: String,
        /// Kernels the user has, running and starting.
        have: usize,
        /// The limit.
        max: usize,
    },
}

/// Whether one more kernel for `user` is admitted, given the kernels that exist or are being
/// launched: `total` in all, `mine` for this user. Launches in flight count, or concurrent
/// starts would all see room for themselves (Enterprise Gateway's issue 726).
pub fn admit(limits: &Limits, total: usize, mine: usize, user: &str) -> Result<(), LimitError> {
    if let Some(max) = limits.max_kernels
        && total >= max
    {
        return Err(LimitError::Total { max });
    }
    if let Some(max) = limits.max_kernels_per_user
        && mine >= max
    {
        return Err(LimitError::PerUser {
            user: user.to_owned(),
            have: mine,
            max,
        });
    }
    Ok(())
}

/// A kernel that stays up this long after an automatic restart resets the attempt count.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// What to do with a kernel that died on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDeath {
    /// Start it again under the same id; this is attempt `attempt` in a row.
    Restart {
        /// 1 for the first restart after a stable run.
        attempt: u32,
    },
    /// Leave it dead: restarts are off (`limit` 0), or `limit` attempts in a row failed.
    StayDead {
        /// The limit was reached (rather than restarts being off).
        gave_up: bool,
    },
}

/// Consecutive automatic restarts of one kernel, as jupyter_client's restarter counts them.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestartBudget {
    attempts: u32,
    last: Option<Instant>,
}

impl RestartBudget {
    /// Records a death at `now` and says what to do, with at most `limit` restarts in a row.
    /// A kernel that ran [`STABLE_AFTER`] since the last automatic restart starts a new row.
    pub fn on_death(&mut self, now: Instant, limit: u32) -> AfterDeath {
        if limit == 0 {
            return AfterDeath::StayDead { gave_up: false };
        }
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) >= STABLE_AFTER)
        {
            self.attempts = 0;
        }
        self.attempts += 1;
        self.last = Some(now);
        if self.attempts > limit {
            AfterDeath::StayDead { gave_up: true }
        } else {
            AfterDeath::Restart {
                attempt: self.attempts,
            }
        }
    }
}

/// Whether a kernel is culled: idle (no message either way) for `idle`, in `state`, with
/// `connections` WebSocket clients, under Jupyter Server's rules (`cull_busy`,
/// `cull_connected`). A kernel being restarted is never culled.
pub fn should_cull(cull: &Cull, state: ExecutionState, connections: usize, idle: Duration) -> bool {
    let by_state = match state {
        ExecutionState::Idle | ExecutionState::Dead | ExecutionState::Starting => true,
        ExecutionState::Busy => cull.busy,
        ExecutionState::Restarting => false,
    };
    by_state && (cull.connected || connections == 0) && idle >= cull.idle_timeout
}

/// Every wait of a shutdown, in one place.
///
/// The launcher has a grace of its own (SIGTERM to the kernel, then SIGKILL), which the
/// gateway sets ([`Grace::launcher`], passed as `KERNEL_LAUNCHER_GRACE_PERIOD`; a request
/// cannot change it). The gateway's wait after SIGTERM to the launcher is longer, so the
/// launcher always gets to kill its kernel before the gateway kills the launcher: a launcher
/// killed first would leave its kernel running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grace {
    /// The launcher's own SIGTERM-to-SIGKILL grace for its kernel.
    pub launcher: Duration,
    /// Waiting for `shutdown_reply` and then for the launcher to exit.
    pub shutdown_request: Duration,
    /// After the comm port's `{"shutdown":1}`.
    pub comm_shutdown: Duration,
    /// After SIGTERM to the launcher's group, before SIGKILL.
    pub terminate: Duration,
    /// After SIGKILL.
    pub kill: Duration,
    /// Connecting to the comm port.
    pub comm_connect: Duration,
    /// Waiting for `interrupt_reply` (`interrupt_mode: message`).
    pub interrupt_reply: Duration,
}

impl Default for Grace {
    fn default() -> Self {
        let launcher = Duration::from_secs(5);
        Grace {
            launcher,
            shutdown_request: Duration::from_secs(3),
            comm_shutdown: Duration::from_secs(1),
            terminate: launcher + Duration::from_secs(3),
            kill: Duration::from_secs(2),
            comm_connect: Duration::from_secs(2),
            interrupt_reply: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cull(connected: bool, busy: bool) -> Cull {
        Cull {
            idle_timeout: Duration::from_secs(60),
            interval: Duration::from_secs(5),
            connected,
            busy,
        }
    }

    #[test]
    fn execution_states_round_trip_and_kernels_say_only_three() {
        for s in ExecutionState::ALL {
            assert!(!s.as_str().is_empty());
        }
        assert_eq!(
            ExecutionState::from_kernel_status("busy"),
            Some(ExecutionState::Busy)
        );
        assert_eq!(
            ExecutionState::from_kernel_status("idle"),
            Some(ExecutionState::Idle)
        );
        assert_eq!(
            ExecutionState::from_kernel_status("starting"),
            Some(ExecutionState::Starting)
        );
        // A kernel cannot declare itself dead or restarting: only the gateway knows that.
        assert_eq!(ExecutionState::from_kernel_status("dead"), None);
        assert_eq!(ExecutionState::from_kernel_status("restarting"), None);
        assert_eq!(ExecutionState::from_kernel_status(""), None);
    }

    #[test]
    fn no_limits_admit_everything() {
        assert!(admit(&Limits::default(), 10_000, 10_000, "u").is_ok());
    }

    #[test]
    fn total_limit_counts_everyone() {
        let l = Limits {
            max_kernels: Some(2),
            max_kernels_per_user: None,
        };
        assert!(admit(&l, 1, 0, "a").is_ok());
        assert_eq!(admit(&l, 2, 0, "a"), Err(LimitError::Total { max: 2 }));
        assert!(
            admit(&l, 2, 0, "a")
                .unwrap_err()
                .to_string()
                .contains("limit of 2 kernels")
        );
    }

    #[test]
    fn per_user_limit_names_the_user() {
        let l = Limits {
            max_kernels: Some(10),
            max_kernels_per_user: Some(1),
        };
        assert!(admit(&l, 5, 0, "alice").is_ok());
        let e = admit(&l, 5, 1, "alice").unwrap_err();
        assert_eq!(
            e,
            LimitError::PerUser {
                user: "alice".into(),
                have: 1,
                max: 1
            }
        );
        assert!(e.to_string().contains("alice"), "{e}");
        // The total is checked first.
        let l = Limits {
            max_kernels: Some(1),
            max_kernels_per_user: Some(1),
        };
        assert_eq!(admit(&l, 1, 1, "a"), Err(LimitError::Total { max: 1 }));
    }

    #[test]
    fn restarts_off_means_dead_at_once() {
        let mut b = RestartBudget::default();
        let t = Instant::now();
        assert_eq!(b.on_death(t, 0), AfterDeath::StayDead { gave_up: false });
    }

    #[test]
    fn restarts_in_a_row_are_capped() {
        let mut b = RestartBudget::default();
        let t = Instant::now();
        for attempt in 1..=3 {
            let at = t + Duration::from_secs(u64::from(attempt));
            assert_eq!(b.on_death(at, 3), AfterDeath::Restart { attempt });
        }
        assert_eq!(
            b.on_death(t + Duration::from_secs(4), 3),
            AfterDeath::StayDead { gave_up: true }
        );
    }

    #[test]
    fn a_stable_run_starts_a_new_row() {
        let mut b = RestartBudget::default();
        let t = Instant::now();
        assert_eq!(b.on_death(t, 2), AfterDeath::Restart { attempt: 1 });
        assert_eq!(
            b.on_death(t + Duration::from_secs(1), 2),
            AfterDeath::Restart { attempt: 2 }
        );
        // Up for STABLE_AFTER since the last restart: the count starts over.
        let later = t + Duration::from_secs(1) + STABLE_AFTER;
        assert_eq!(b.on_death(later, 2), AfterDeath::Restart { attempt: 1 });
        // Just short of it: still the same row.
        let soon = later + STABLE_AFTER - Duration::from_millis(1);
        assert_eq!(b.on_death(soon, 2), AfterDeath::Restart { attempt: 2 });
    }

    #[test]
    fn idle_kernels_are_culled_after_the_timeout() {
        let c = cull(false, false);
        let long = Duration::from_secs(61);
        let short = Duration::from_secs(59);
        for s in [
            ExecutionState::Idle,
            ExecutionState::Dead,
            ExecutionState::Starting,
        ] {
            assert!(should_cull(&c, s, 0, long), "{s:?}");
            assert!(!should_cull(&c, s, 0, short), "{s:?}");
        }
        assert!(
            should_cull(&c, ExecutionState::Idle, 0, Duration::from_secs(60)),
            "at the timeout exactly"
        );
    }

    #[test]
    fn busy_kernels_only_with_cull_busy() {
        let long = Duration::from_secs(3600);
        assert!(!should_cull(
            &cull(false, false),
            ExecutionState::Busy,
            0,
            long
        ));
        assert!(should_cull(
            &cull(false, true),
            ExecutionState::Busy,
            0,
            long
        ));
    }

    #[test]
    fn connected_kernels_only_with_cull_connected() {
        let long = Duration::from_secs(3600);
        assert!(!should_cull(
            &cull(false, false),
            ExecutionState::Idle,
            1,
            long
        ));
        assert!(should_cull(
            &cull(true, false),
            ExecutionState::Idle,
            3,
            long
        ));
    }

    #[test]
    fn restarting_kernels_are_never_culled() {
        let long = Duration::from_secs(3600);
        assert!(!should_cull(
            &cull(true, true),
            ExecutionState::Restarting,
            0,
            long
        ));
    }

    #[test]
    fn grace_steps_are_bounded_and_positive() {
        let g = Grace::default();
        assert!(
            g.terminate > g.launcher + Duration::from_secs(1),
            "the gateway outwaits the launcher's own grace"
        );
        for d in [
            g.shutdown_request,
            g.comm_shutdown,
            g.terminate,
            g.kill,
            g.comm_connect,
            g.interrupt_reply,
            g.launcher,
        ] {
            assert!(d > Duration::ZERO && d <= Duration::from_secs(10), "{d:?}");
        }
    }
}
