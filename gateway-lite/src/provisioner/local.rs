//! The local provisioner: the launcher runs as a child of the gateway.
//!
//! The child gets its own process group (as jupyter_client's `start_new_session`), so
//! signals to the gateway's terminal do not hit kernels and the gateway can signal the
//! launcher's whole group. Its stdout and stderr are read line by line into the log (and the
//! stderr tail kept for error messages). One task per child waits for it; that task is the
//! only reaper, and it publishes the exit so a dead kernel is noticed at once.

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

use super::{ExitInfo, LaunchError, LaunchRequest, Launched, LogTail, ProcessControl, Provisioner};

/// Longest log line kept whole; longer ones are split.
const MAX_LINE: usize = 8 * 1024;

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
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        tracing::info!(kernel_id = %request.kernel_id, pid, argv = ?request.argv, "launcher started");
        let log = LogTail::default();
        let id = request.kernel_id.clone();
        let stderr = child
            .stderr
            .take()
            .map(|s| tokio::spawn(read_lines(s, id.clone(), Some(log.clone()))));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(read_lines(out, id.clone(), None));
        }
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
                    }
                }
                Err(e) => {
                    tracing::warn!(kernel_id = %id, "waiting for the launcher failed: {e}");
                    ExitInfo {
                        code: None,
                        signal: None,
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
            control: Arc::new(LocalControl { pgid: pid, exited }),
        })
    }

    fn kernel_host(&self) -> String {
        let ip = if self.kernel_ip.is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            self.kernel_ip
        };
        ip.to_string()
    }
}

#[derive(Debug)]
struct LocalControl {
    pgid: i32,
    exited: Arc<AtomicBool>,
}

impl ProcessControl for LocalControl {
    fn signal(&self, signal: Signal) {
        // After the reaper has run the pid may belong to someone else.
        if self.pgid <= 1 || self.exited.load(Ordering::SeqCst) {
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
