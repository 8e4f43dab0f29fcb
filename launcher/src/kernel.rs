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

    /// Whether any process (zombies included) is left in the kernel's group.
    pub fn group_exists(&self) -> bool {
        !matches!(killpg(Pid::from_raw(self.pid), None), Err(Errno::ESRCH))
    }
}
