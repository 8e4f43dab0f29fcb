//! The kernel process: spawned in its own process group, signalled as a group.
//!
//! Signalling the group rather than the pid matters because kernels have
//! helpers (pyspark's py4j JVM, R's subprocesses) that must get interrupts and
//! terminations too. The kernel's pgid equals its pid, which is what the
//! payload reports, so EG's own fallback (`kill -N -<pgid>`) reaches the same
//! group. `JPY_PARENT_PID` is set to the launcher so ipykernel's parent poller
//! ends the kernel if the launcher is killed with SIGKILL: the kernel cannot be
//! orphaned. The `Child` handle is dropped on purpose: the supervisor is the
//! only caller of `waitpid` (two reapers race and one gets ECHILD).

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

/// The niceness of a kernel told to shut down. Not the lowest (19): on a machine saturated
/// by other work a kernel at 19 may not get to send its `shutdown_reply` within the gateway's
/// grace, and then ends by SIGTERM instead of its own clean exit; and under Linux's
/// autogroup scheduling a nice value only weighs against processes of the same session (the
/// gateway, its launchers and kernels), so 19 bought no measurable DELETE time over 10.
const STOPPING_NICE: i32 = 10;

/// A running kernel, identified by its pid (= its process group id).
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    pub pid: i32,
}

/// Why the kernel could not be started, with the exit code to report.
#[derive(Debug, thiserror::Error)]
#[error("cannot start kernel `{program}`: {source}")]
pub struct SpawnError {
    pub program: String,
    pub source: io::Error,
}

impl SpawnError {
    /// 127 when the program does not exist, 126 when it cannot be executed.
    pub fn exit_code(&self) -> i32 {
        match self.source.kind() {
            io::ErrorKind::NotFound => 127,
            io::ErrorKind::PermissionDenied => 126,
            _ => 126,
        }
    }
}

impl Kernel {
    /// Starts `argv` in a new process group. Its stdin is a pipe closed at
    /// once (reads see EOF, as from /dev/null, which an empty container or
    /// chroot may not have).
    pub fn spawn(
        argv: &[String],
        working_dir: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Kernel, SpawnError> {
        let (program, args) = argv.split_first().expect("KernelCommand is never empty");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .process_group(0)
            .env("JPY_PARENT_PID", std::process::id().to_string())
            // The launch secret is the launcher's to prove itself with, not the kernel's.
            .env_remove("KERNEL_LAUNCHER_SECRET")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped());
        if let Some(dir) = working_dir {
            cmd.current_dir(dir);
        }
        let child = cmd.spawn().map_err(|source| SpawnError {
            program: program.clone(),
            source,
        })?;
        let pid = i32::try_from(child.id()).expect("pids fit in i32");
        // Dropping the handle closes our end of the stdin pipe and never waits.
        drop(child);
        Ok(Kernel { pid })
    }

    /// Sends `signal` to the kernel's whole process group.
    pub fn signal_group(&self, signal: Signal) {
        match killpg(Pid::from_raw(self.pid), signal) {
            Ok(()) => log::debug!("sent {signal} to process group {}", self.pid),
            Err(Errno::ESRCH) => {
                log::debug!("process group {} is gone; {signal} not sent", self.pid)
            }
            Err(e) => log::warn!("cannot send {signal} to process group {}: {e}", self.pid),
        }
    }

    /// Lowers the scheduling priority of the kernel's process group (to [`STOPPING_NICE`]).
    /// A kernel told to shut down spends a good part of a second of CPU on its exit; at a
    /// low priority that CPU goes to the live kernels and to the launchers and the gateway
    /// answering other shutdowns first (100 kernels stopped at once on 2 cores: each
    /// acknowledgement otherwise waited behind the exits already running).
    pub fn lower_priority(&self) {
        let Some(pgid) = rustix::process::Pid::from_raw(self.pid) else {
            return;
        };
        match rustix::process::setpriority_pgrp(Some(pgid), STOPPING_NICE) {
            Ok(()) => log::debug!(
                "process group {} now runs at nice {STOPPING_NICE}",
                self.pid
            ),
            Err(e) => log::debug!(
                "cannot lower the priority of process group {}: {e}",
                self.pid
            ),
        }
    }

    /// Whether the kernel process ignores SIGINT now (`SigIgn` in `/proc/<pid>/status`);
    /// `None` when that cannot be read.
    pub fn ignores_sigint(&self) -> Option<bool> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        ignores_sigint(&status)
    }

    /// Whether the kernel process itself still runs (exists and is not a zombie).
    pub fn is_running(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
        })
    }

    /// Whether any process (zombies included) is left in the kernel's group.
    pub fn group_exists(&self) -> bool {
        !matches!(killpg(Pid::from_raw(self.pid), None), Err(Errno::ESRCH))
    }
}

/// Reads SIGINT's bit of the `SigIgn:` mask (hex, bit n-1 for signal n) of a
/// `/proc/<pid>/status` text.
fn ignores_sigint(status: &str) -> Option<bool> {
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(str::trim)?;
    let mask = u64::from_str_radix(mask.get(mask.len().saturating_sub(16)..)?, 16).ok()?;
    Some(mask & (1 << (Signal::SIGINT as i32 - 1)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigign_mask() {
        let status = |m: &str| {
            format!(
                "Name:\tpython3\nSigBlk:\t0000000000000000\nSigIgn:\t{m}\nSigCgt:\t0000000000000002\n"
            )
        };
        assert_eq!(ignores_sigint(&status("0000000001001002")), Some(true));
        assert_eq!(ignores_sigint(&status("0000000001001000")), Some(false));
        assert_eq!(ignores_sigint(&status("zz")), None);
        assert_eq!(ignores_sigint("Name:\tx\n"), None);
        // A live process: the mask can be read.
        let me = Kernel {
            pid: std::process::id() as i32,
        };
        assert!(me.ignores_sigint().is_some());
    }
}
