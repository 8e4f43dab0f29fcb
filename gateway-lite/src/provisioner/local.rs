//! The local provisioner: the launcher runs as a child of the gateway.
//!
//! The child gets its own process group (as jupyter_client's `start_new_session`), so
//! signals to the gateway's terminal do not hit kernels and the gateway can signal the
//! launcher's whole group. Its stdout and stderr are either read line by line into the
//! gateway's log (the stderr tail kept for error messages) or, when the gateway persists its
//! kernels, appended to a log file, so the launcher never writes into a pipe whose reader has
//! gone. One task per child waits for it; that task is the only reaper, and it publishes the
//! exit so a dead kernel is noticed at once.
//!
//! A launcher re-attached after a gateway restart is no longer our child and cannot be
//! waited for; a task polls `/proc/<pid>/stat` instead (every [`POLL`], so a death is still
//! noticed within a second), comparing the process start time so that a recycled pid is
//! never mistaken for the launcher, and treating a zombie as dead.

use std::net::IpAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::watch;

use super::{
    ExitInfo, LaunchError, LaunchRequest, Launched, LogTail, Placement, ProcessControl, Provisioner,
};

/// Longest log line kept whole; longer ones are split.
const MAX_LINE: usize = 8 * 1024;

/// How often a re-attached launcher is checked.
const POLL: Duration = Duration::from_millis(250);

/// Runs launchers on this host.
#[derive(Debug, Clone)]
pub struct Local {
    /// Address kernels bind (passed as `KERNEL_LAUNCHER_IP`) and the gateway connects to.
    pub kernel_ip: IpAddr,
}

impl Provisioner for Local {
    fn launch(&self, request: LaunchRequest) -> Result<Launched, LaunchError> {
        let (program, args) = request.argv.split_first().ok_or(LaunchError::EmptyArgv)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("KERNEL_LAUNCHER_IP", self.kernel_ip.to_string())
            .envs(&request.env)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(false);
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
        let stderr = child
            .stderr
            .take()
            .map(|s| tokio::spawn(read_lines(s, id.clone(), Some(log.clone()))));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(read_lines(out, id.clone(), None));
        }
        let start_time = proc_start_time(pid).unwrap_or(0);
        let exited = Arc::new(AtomicBool::new(false));
        let (tx, rx) = watch::channel(None);
        let flag = exited.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            flag.store(true, Ordering::SeqCst);
            let info = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    ExitInfo {
                        code: s.code(),
                        signal: s.signal(),
                        retry_elsewhere: false,
                    }
                }
                Err(e) => {
                    tracing::warn!(kernel_id = %id, "waiting for the launcher failed: {e}");
                    ExitInfo {
                        code: None,
                        signal: None,
                        retry_elsewhere: false,
                    }
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
            control: Arc::new(LocalControl {
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

    fn reattach(&self, kernel_id: &str, placement: &Placement) -> Result<Launched, LaunchError> {
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
        tokio::spawn(async move {
            while alive(pid, start_time) {
                tokio::time::sleep(POLL).await;
            }
            flag.store(true, Ordering::SeqCst);
            tracing::info!(kernel_id = %id, pid, "re-attached launcher ended");
            // Not our child: its status went to whoever reaped it.
            let _ = tx.send(Some(ExitInfo {
                code: None,
                signal: None,
                retry_elsewhere: false,
            }));
        });
        tracing::info!(kernel_id, pid, "re-attached to a running launcher");
        Ok(Launched {
            exit: rx,
            log: log_file.clone().map(LogTail::file).unwrap_or_default(),
            control: Arc::new(LocalControl {
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

#[derive(Debug)]
struct LocalControl {
    pgid: i32,
    /// For a re-attached launcher: checked before each signal, as its pid is not ours.
    start_time: Option<u64>,
    exited: Arc<AtomicBool>,
}

impl ProcessControl for LocalControl {
    fn signal(&self, signal: Signal) {
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

/// Logs each line of `stream`, keeping them in `tail` if given. Lines are bounded.
async fn read_lines(mut stream: impl AsyncRead + Unpin, kernel_id: String, tail: Option<LogTail>) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf
            .iter()
            .position(|&b| b == b'\n')
            .or_else(|| (buf.len() > MAX_LINE).then_some(MAX_LINE))
        {
            let line: Vec<u8> = buf.drain(..=pos.min(buf.len() - 1)).collect();
            emit(&line, &kernel_id, tail.as_ref());
        }
    }
    if !buf.is_empty() {
        emit(&buf, &kernel_id, tail.as_ref());
    }
}

fn emit(line: &[u8], kernel_id: &str, tail: Option<&LogTail>) {
    let text = String::from_utf8_lossy(line).trim_end().to_owned();
    if text.is_empty() {
        return;
    }
    tracing::info!(target: "kernel", kernel_id, "{text}");
    if let Some(t) = tail {
        t.push(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
