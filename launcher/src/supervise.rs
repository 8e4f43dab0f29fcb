//! The supervisor: the one owner of `waitpid`, of signal forwarding and of
//! every grace period.
//!
//! Everything that can happen to a running kernel arrives here as an
//! [`Event`] on one channel (signals from the signal thread, comm-port
//! requests, the payload delivery result, the parent going away), and a single
//! loop decides. This is what a PID-1 entrypoint must do, as tini, dumb-init
//! and catatonit do: handle every forwarded signal (Linux drops a signal sent
//! to PID 1 that has no handler for it), reap every child including
//! re-parented grandchildren, and exit with the kernel's status, 128+signal
//! when it was killed.
//!
//! It also closes EG's orphan gap: EG's launcher stops listening on
//! `{"shutdown":1}` but leaves the kernel running; here the kernel gets a
//! grace period, then SIGTERM, then SIGKILL.
//!
//! Interop quirk, start-up interrupts: ipykernel ignores SIGINT between cells, but
//! only once `IPKernelApp.init_signal` has run; a SIGINT before that (a gateway's
//! interrupt in the first few hundred milliseconds after the payload, which EG and
//! JupyterLab allow) lands in Python's default handler during start-up and leaves
//! the kernel dead or hung. So for an ipykernel argv, the supervisor watches
//! `SigIgn` in `/proc/<pid>/status` every [`INTERRUPT_GATE_POLL`] from the start
//! until it first shows SIGINT ignored (ipykernel's state after `init_signal`,
//! which lasts well over 100 ms before the first cell can run and again between
//! cells); until then, or [`INTERRUPT_GATE_MAX`] after the start at the latest,
//! an interrupt is held and delivered then. The watch has to start early: while a
//! cell runs, ipykernel catches SIGINT rather than ignoring it, so a first look
//! taken when an interrupt arrives would mistake a busy kernel for a starting one.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getppid};
use protocol::comm::CommRequest;
use signal_hook::consts::signal::*;

use crate::comm::CommPort;
use crate::curve::EXIT_NO_CURVE;
use crate::kernel::Kernel;
use crate::report::ReportError;

/// Longest an interrupt is held for a starting ipykernel.
pub const INTERRUPT_GATE_MAX: Duration = Duration::from_secs(20);
/// How often a held interrupt checks whether the kernel is ready.
const INTERRUPT_GATE_POLL: Duration = Duration::from_millis(20);

/// Exit code when the payload could not be delivered (BSD `EX_UNAVAILABLE`).
pub const EXIT_UNDELIVERED: i32 = 69;

/// Signals relayed to the kernel's process group.
pub const FORWARDED: [i32; 6] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];
/// Signals that end the kernel: forwarded, then SIGKILL after the grace period.
const TERMINATING: [i32; 3] = [SIGTERM, SIGHUP, SIGQUIT];
/// Job-control signals the launcher receives and ignores.
pub const IGNORED: [i32; 3] = [SIGTTIN, SIGTTOU, SIGTSTP];

/// Everything the supervisor reacts to.
#[derive(Debug)]
pub enum Event {
    /// A signal delivered to the launcher.
    Signal(i32),
    /// A request from the comm port (`signum` > 0 and/or `shutdown`).
    Comm(CommRequest),
    /// The payload delivery finished.
    Reported(Result<u32, ReportError>),
    /// The launcher's parent went away (exit-with-parent mode).
    ParentGone(&'static str),
    /// `--transport-encryption required`, and the kernel does not do CurveZMQ (already logged).
    CurveRefused,
}

/// How the kernel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelExit {
    Code(i32),
    Signal(i32),
}

impl KernelExit {
    /// The shell convention: the code, or 128 + the signal number.
    pub fn exit_code(self) -> i32 {
        match self {
            KernelExit::Code(c) => c,
            KernelExit::Signal(s) => 128 + s,
        }
    }
}

/// Runs the signal-receiving thread; each signal becomes an [`Event::Signal`].
pub fn watch_signals(events: Sender<Event>) -> std::io::Result<()> {
    let wanted: Vec<i32> = FORWARDED
        .iter()
        .chain(IGNORED.iter())
        .copied()
        .chain([SIGCHLD])
        .collect();
    let mut signals = signal_hook::iterator::Signals::new(wanted)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if events.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })?;
    Ok(())
}

/// Watches stdin for EOF: under spark-submit it is a pipe from the driver JVM,
/// and EOF means the JVM is gone.
pub fn watch_stdin(events: Sender<Event>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = events.send(Event::ParentGone("stdin reached EOF"));
        })?;
    Ok(())
}

/// The event loop around one kernel.
pub struct Supervisor {
    kernel: Kernel,
    comm: Option<CommPort>,
    grace: Duration,
    /// When to send SIGTERM (armed by `{"shutdown":1}`).
    term_at: Option<Instant>,
    /// When to send SIGKILL (armed by any termination).
    kill_at: Option<Instant>,
    /// The parent pid to watch in exit-with-parent mode.
    parent: Option<Pid>,
    parent_gone: bool,
    /// An exit code that wins over the kernel's (payload not delivered).
    failure: Option<i32>,
    /// Until when interrupts wait for the kernel to ignore SIGINT; `None` once they
    /// go straight through.
    interrupt_gate: Option<Instant>,
    /// An interrupt is being held.
    interrupt_held: bool,
}

impl Supervisor {
    pub fn new(
        kernel: Kernel,
        comm: Option<CommPort>,
        grace: Duration,
        watch_parent: bool,
        gate_interrupts: bool,
    ) -> Self {
        Supervisor {
            kernel,
            comm,
            grace,
            term_at: None,
            kill_at: None,
            parent: watch_parent.then(getppid),
            parent_gone: false,
            failure: None,
            interrupt_gate: gate_interrupts.then(|| Instant::now() + INTERRUPT_GATE_MAX),
            interrupt_held: false,
        }
    }

    /// Runs until the kernel has exited and its group is gone; returns the exit code.
    pub fn run(mut self, events: &Receiver<Event>) -> i32 {
        let status = loop {
            if let Some(status) = self.reap() {
                break status;
            }
            self.check_parent();
            let wait = self.next_wakeup();
            match events.recv_timeout(wait) {
                Ok(event) => self.on_event(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
            }
            self.on_timers();
        };
        match status {
            KernelExit::Code(c) => log::info!("kernel {} exited with code {c}", self.kernel.pid),
            KernelExit::Signal(s) => {
                log::info!("kernel {} was killed by signal {s}", self.kernel.pid)
            }
        }
        if let Some(comm) = &self.comm {
            comm.kernel_exited();
            comm.close();
        }
        self.end_group(events);
        self.failure.unwrap_or(status.exit_code())
    }

    fn next_wakeup(&self) -> Duration {
        let now = Instant::now();
        let tick = if self.parent.is_some() {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        };
        let held = self.interrupt_gate.is_some().then_some(INTERRUPT_GATE_POLL);
        [self.term_at, self.kill_at]
            .into_iter()
            .flatten()
            .map(|t| t.saturating_duration_since(now))
            .chain(held)
            .fold(tick, Duration::min)
            .max(Duration::from_millis(1))
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Signal(SIGCHLD) => {}
            Event::Signal(sig) if IGNORED.contains(&sig) => {}
            Event::Signal(sig) => {
                log::info!("received signal {sig}; forwarding to the kernel's process group");
                self.forward(sig);
            }
            Event::Comm(req) => {
                if let Some(n) = req.signum.filter(|n| *n > 0) {
                    log::info!("comm port: signal {n}");
                    self.forward(n);
                }
                if req.shutdown {
                    log::info!(
                        "comm port: shutdown; the kernel gets {:?} to exit before SIGTERM",
                        self.grace
                    );
                    self.kernel.lower_priority();
                    self.term_at.get_or_insert(Instant::now() + self.grace);
                }
            }
            Event::Reported(Ok(attempts)) => {
                log::info!("connection payload delivered ({attempts} attempt(s))");
            }
            Event::Reported(Err(e)) => {
                log::error!("{e}; stopping the kernel");
                self.failure = Some(EXIT_UNDELIVERED);
                self.terminate();
            }
            Event::ParentGone(why) => self.on_parent_gone(why),
            Event::CurveRefused => {
                log::info!(
                    "stopping the kernel: it cannot do the required transport encryption (exit {EXIT_NO_CURVE})"
                );
                self.failure = Some(EXIT_NO_CURVE);
                self.terminate();
            }
        }
    }

    fn check_parent(&mut self) {
        if let Some(parent) = self.parent
            && getppid() != parent
        {
            self.on_parent_gone("the parent process exited");
        }
    }

    fn on_parent_gone(&mut self, why: &str) {
        if !self.parent_gone {
            self.parent_gone = true;
            log::info!("{why}; shutting the kernel down (exit-with-parent)");
            self.terminate();
        }
    }

    /// SIGTERM now, SIGKILL after the grace period.
    fn terminate(&mut self) {
        self.forward(SIGTERM);
    }

    /// Whether an interrupt may reach the kernel now (see the module notes).
    fn interrupt_gate_open(&mut self) -> bool {
        let Some(until) = self.interrupt_gate else {
            return true;
        };
        let open = match self.kernel.ignores_sigint() {
            Some(true) => true,
            // The kernel process is gone or unreadable: nothing to protect.
            None => true,
            Some(false) if Instant::now() >= until => {
                log::info!(
                    "the kernel has not ignored SIGINT in the {INTERRUPT_GATE_MAX:?} after its start; interrupts now go straight through"
                );
                true
            }
            Some(false) => false,
        };
        if open {
            self.interrupt_gate = None;
        }
        open
    }

    fn forward(&mut self, sig: i32) {
        if sig == SIGINT {
            if !self.interrupt_gate_open() {
                if !self.interrupt_held {
                    log::info!(
                        "the kernel is still starting (it has not ignored SIGINT yet); the interrupt is held until it does"
                    );
                }
                self.interrupt_held = true;
                return;
            }
            self.interrupt_held = false;
        }
        let Ok(signal) = Signal::try_from(sig) else {
            log::warn!("signal {sig} is not supported; not forwarded");
            return;
        };
        self.kernel.signal_group(signal);
        if TERMINATING.contains(&sig) {
            self.kill_at.get_or_insert(Instant::now() + self.grace);
        }
    }

    fn on_timers(&mut self) {
        if self.interrupt_gate.is_some() && self.interrupt_gate_open() {
            log::debug!("the kernel ignores SIGINT: past its start-up");
            if self.interrupt_held {
                log::info!("the kernel is ready; delivering the held interrupt");
                self.forward(SIGINT);
            }
        }
        let now = Instant::now();
        if self.term_at.is_some_and(|t| now >= t) {
            self.term_at = None;
            log::warn!(
                "the kernel is still running {:?} after shutdown; sending SIGTERM",
                self.grace
            );
            self.forward(SIGTERM);
        }
        if self.kill_at.is_some_and(|t| now >= t) {
            self.kill_at = None;
            log::warn!(
                "the kernel ignored SIGTERM for {:?}; sending SIGKILL",
                self.grace
            );
            self.kernel.signal_group(Signal::SIGKILL);
        }
    }

    /// Reaps every exited child; returns the kernel's status once it has exited.
    fn reap(&mut self) -> Option<KernelExit> {
        let mut kernel_exit = None;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    if pid.as_raw() == self.kernel.pid {
                        kernel_exit = Some(KernelExit::Code(code));
                    } else {
                        log::debug!("reaped process {pid} (exit {code})");
                    }
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    if pid.as_raw() == self.kernel.pid {
                        kernel_exit = Some(KernelExit::Signal(sig as i32));
                    } else {
                        log::debug!("reaped process {pid} (signal {sig})");
                    }
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("waitpid: {e}");
                    break;
                }
            }
        }
        kernel_exit
    }

    /// After the kernel exits: SIGTERM what is left of its group, wait up to
    /// the grace period while reaping, then SIGKILL.
    fn end_group(&mut self, events: &Receiver<Event>) {
        if !self.kernel.group_exists() {
            return;
        }
        log::info!("terminating the rest of the kernel's process group");
        self.kernel.signal_group(Signal::SIGTERM);
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            self.reap();
            if !self.kernel.group_exists() {
                return;
            }
            // Keep draining events so signal and comm threads never block.
            let _ = events.recv_timeout(Duration::from_millis(20));
        }
        log::warn!("the kernel's process group outlived the grace period; sending SIGKILL");
        self.kernel.signal_group(Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && self.kernel.group_exists() {
            self.reap();
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
