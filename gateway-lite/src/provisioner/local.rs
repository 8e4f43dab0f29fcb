//! The local provisioner: the launcher runs as a child of the gateway.
//!
//! The child gets its own process group (as jupyter_client's `start_new_session`), so
//! signals to the gateway's terminal do not hit kernels and the gateway can signal the
//! launcher's whole group. Its stdout and stderr are either read line by line into the
//! gateway's log through the shared bounded reader (the stderr tail kept for error messages)
//! or, when the gateway persists its kernels, appended to a log file, so the launcher never
//! writes into a pipe whose reader has gone. One tracked task per child waits for it; that
//! task is the only reaper, and it publishes the exit so a dead kernel is noticed at once.
//!
//! A launcher re-attached after a gateway restart is no longer our child and cannot be
//! waited for; a task polls `/proc/<pid>/stat` instead (every [`POLL`], so a death is still
//! noticed within a second), comparing the process start time so that a recycled pid is
//! never mistaken for the launcher, and treating a zombie as dead.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::watch;

use super::launched::{
    Control, ExitInfo, LaunchError, LaunchRequest, Launched, Placement, Provision,
};
use super::output::{self, LogTail};
use crate::tasks::Tasks;

/// How often a re-attached launcher is checked.
const POLL: Duration = Duration::from_millis(250);

/// Runs launchers on this host.
#[derive(Debug, Clone)]
pub struct Local {
    /// Address kernels bind (passed as `KERNEL_LAUNCHER_IP`) and the gateway connects to.
    pub kernel_ip: IpAddr,
    /// What launchers get of the gateway's environment (an allow-list, captured at start);
    /// the rest of their environment is the kernelspec's and the request's.
    pub base_env: BTreeMap<String, String>,
    /// Where the reapers and output readers run.
    pub tasks: Tasks,
}

impl Provision for Local {
    async fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError> {
        let (program, args) = request.argv.split_first().ok_or(LaunchError::EmptyArgv)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(&self.base_env)
            .envs(&request.env)
            .env("KERNEL_LAUNCHER_IP", self.kernel_ip.to_string())
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(secret) = &request.secret {
            cmd.env("KERNEL_LAUNCHER_SECRET", secret);
        }
        let log = match &request.log_file {
            Some(path) => {
                let open = || {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|source| LaunchError::Log {
                            path: path.clone(),
                            source,
                        })
                };
                cmd.stdout(open()?).stderr(open()?);
                LogTail::file(path.clone())
            }
            None => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
                LogTail::default()
            }
        };
        let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        tracing::info!(kernel_id = %request.kernel_id, pid, argv = ?request.argv, log_file = ?request.log_file, "launcher started");
        let id = request.kernel_id.clone();
        let stderr = child.stderr.take().map(|s| {
            let (id, tail) = (id.clone(), log.clone());
            self.tasks.spawn(output::read_lines(s, move |l| {
                output::log_line(&id, l, Some(&tail))
            }))
        });
        if let Some(out) = child.stdout.take() {
            let id = id.clone();
            self.tasks.spawn(output::read_lines(out, move |l| {
                output::log_line(&id, l, None)
            }));
        }
        let start_time = proc_start_time(pid).unwrap_or(0);
        let exited = Arc::new(AtomicBool::new(false));
        let (tx, rx) = watch::channel(None);
        let flag = exited.clone();
        // The reaper is not cancelled at gateway exit: it ends with the launcher, or with the
        // runtime when the gateway leaves its kernels running.
        self.tasks.spawn_until_stopped(async move {
            let status = child.wait().await;
            flag.store(true, Ordering::SeqCst);
            let info = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    ExitInfo {
                        code: s.code(),
                        signal: s.signal(),
                        retry_elsewhere: false,
                        out_of_memory: false,
                    }
                }
                Err(e) => {
                    tracing::warn!(kernel_id = %id, "waiting for the launcher failed: {e}");
                    ExitInfo::UNKNOWN
                }
            };
            // Let the last stderr lines land in the tail before anyone reads it; an orphaned
            // kernel may hold the pipe open, hence the bound.
            if let Some(task) = stderr {
                let _ = tokio::time::timeout(Duration::from_millis(300), task).await;
            }
            tracing::info!(kernel_id = %id, "launcher ended: {info}");
            let _ = tx.send(Some(info));
        });
        Ok(Launched {
            exit: rx,
            log,
            control: Box::new(LocalControl {
                pgid: pid,
                start_time: None,
                exited,
            }),
            host: self.host(),
            placement: Placement::Local {
                pid,
                start_time,
                log_file: request.log_file,
            },
        })
    }

    async fn reattach(
        &self,
        kernel_id: &str,
        placement: &Placement,
    ) -> Result<Launched, LaunchError> {
        let Placement::Local {
            pid,
            start_time,
            log_file,
        } = placement
        else {
            return Err(LaunchError::Unsupported("non-local"));
        };
        let (pid, start_time) = (*pid, *start_time);
        if pid <= 1 || !alive(pid, start_time) {
            return Err(LaunchError::Gone(format!(
                "pid {pid} (started at tick {start_time}) is not running"
            )));
        }
        let exited = Arc::new(AtomicBool::new(false));
        let (tx, rx) = watch::channel(None);
        let flag = exited.clone();
        let id = kernel_id.to_owned();
        self.tasks.spawn_until_stopped(async move {
            while alive(pid, start_time) {
                tokio::time::sleep(POLL).await;
            }
            flag.store(true, Ordering::SeqCst);
            tracing::info!(kernel_id = %id, pid, "re-attached launcher ended");
            // Not our child: its status went to whoever reaped it.
            let _ = tx.send(Some(ExitInfo::UNKNOWN));
        });
        tracing::info!(kernel_id, pid, "re-attached to a running launcher");
        Ok(Launched {
            exit: rx,
            log: log_file.clone().map(LogTail::file).unwrap_or_default(),
            control: Box::new(LocalControl {
                pgid: pid,
                start_time: Some(start_time),
                exited,
            }),
            host: self.host(),
            placement: placement.clone(),
        })
    }
}

impl Local {
    fn host(&self) -> String {
        let ip = if self.kernel_ip.is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            self.kernel_ip
        };
        ip.to_string()
    }
}

/// The start time (clock ticks since boot) of process `pid`, unless it is gone or a zombie.
fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after it are
    // counted from the last ')'. Field 3 is the state, field 22 the start time.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Whether `pid` is still the process that started at `start_time`.
fn alive(pid: i32, start_time: u64) -> bool {
    proc_start_time(pid) == Some(start_time)
}

/// Signals a local launcher's process group.
#[derive(Debug)]
pub struct LocalControl {
    pgid: i32,
    /// For a re-attached launcher: checked before each signal, as its pid is not ours.
    start_time: Option<u64>,
    exited: Arc<AtomicBool>,
}

impl Control for LocalControl {
    /// `killpg(signal)`, unless the launcher was reaped or its pid now names another process.
    fn signal(&self, signal: Signal) -> BoxFuture<'_, ()> {
        self.killpg(signal);
        Box::pin(std::future::ready(()))
    }

    fn is_local(&self) -> bool {
        true
    }

    fn kill_group(&self, pgid: i32, kernel_id: &str) -> BoxFuture<'_, ()> {
        if pgid > 1 && leader_is(pgid, kernel_id) {
            match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
                Ok(()) => tracing::info!(kernel_id, pgid, "killed the kernel's process group"),
                Err(e) => tracing::debug!(kernel_id, pgid, "killpg: {e}"),
            }
        }
        Box::pin(std::future::ready(()))
    }
}

/// Whether process `pid` carries `KERNEL_ID=<kernel_id>` in its environment.
fn leader_is(pid: i32, kernel_id: &str) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("KERNEL_ID={kernel_id}");
    env.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
}

impl LocalControl {
    fn killpg(&self, signal: Signal) {
        // After the reaper has run the pid may belong to someone else.
        if self.pgid <= 1 || self.exited.load(Ordering::SeqCst) {
            return;
        }
        if let Some(t) = self.start_time
            && !alive(self.pgid, t)
        {
            return;
        }
        if let Err(e) = killpg(Pid::from_raw(self.pgid), signal) {
            tracing::debug!(pgid = self.pgid, "killpg {signal} failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_leaders_are_recognised_by_their_kernel_id() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(!leader_is(me, "no-such-kernel-id"));
        assert!(!leader_is(i32::MAX, "x"));
    }

    #[test]
    fn start_time_of_this_process_and_of_no_process() {
        let me = i32::try_from(std::process::id()).unwrap();
        let t = proc_start_time(me).expect("own /proc/<pid>/stat");
        assert!(alive(me, t));
        assert!(
            !alive(me, t + 1),
            "a different start time is another process"
        );
        assert_eq!(proc_start_time(i32::MAX), None);
    }
}
