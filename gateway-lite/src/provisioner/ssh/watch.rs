//! Following one remote launcher: the watcher session that streams its log and reports its
//! exit, reconnected when the ssh connection is lost, and the signals sent to it.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use tokio::process::Child;

use super::client::Client;
use super::down::{DOWN_FOR, Down};
use super::script::{EXITED, GONE, STARTED, kill_group_script, reattach_script, signal_script};
use crate::provisioner::launched::{Control, ExitInfo};
use crate::provisioner::output::{self, LogTail};
use crate::tasks::Tasks;

/// How many times a lost watcher connection is re-established before the kernel is given up
/// for dead (one second apart, plus the connect timeout each).
const RECONNECTS: u32 = 5;

/// How one watcher session ended.
enum Ended {
    /// The remote script reported the launcher's end (`rc` when it was our child).
    Exited { rc: Option<i32>, tail: Vec<String> },
    /// The pid file names no running launcher.
    Gone,
    /// The connection ended without a report.
    Lost {
        started: bool,
        status: Option<std::process::ExitStatus>,
    },
}

/// One kernel's watcher task.
pub(super) struct Watch {
    pub(super) client: Arc<Client>,
    pub(super) kernel_id: String,
    pub(super) host: String,
    pub(super) log_file: String,
    pub(super) pid_file: String,
    pub(super) log: LogTail,
    /// Where hosts are marked down.
    pub(super) down: Down,
    /// The other hosts a fresh launch could have gone to.
    pub(super) others: Vec<String>,
    /// Where the stderr reader runs.
    pub(super) tasks: Tasks,
}

impl Watch {
    /// Follows the launcher until it ends (or is given up for lost); its exit.
    pub(super) async fn run(&self, mut child: Child, fresh: bool) -> ExitInfo {
        let mut failures = 0;
        let mut seen_running = false;
        loop {
            let ended = self.session(child).await;
            match ended {
                Ended::Exited { rc, tail } => {
                    self.log.replace(tail);
                    return rc.map_or(ExitInfo::UNKNOWN, ExitInfo::from_code);
                }
                Ended::Gone => {
                    self.log.push(format!(
                        "the launcher recorded in {}:{} is no longer running",
                        self.host, self.pid_file
                    ));
                    return ExitInfo::UNKNOWN;
                }
                Ended::Lost { started, status } => {
                    seen_running |= started;
                    if started {
                        failures = 0;
                    }
                    let how = status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "unknown status".into());
                    // A launch whose launcher never showed up is a failed launch: ssh's own
                    // error (e.g. "connect to host ... Connection refused") is in the tail.
                    if (fresh && !seen_running) || failures >= RECONNECTS {
                        self.log.push(format!(
                            "ssh to {} ended ({how}) without the launcher's exit status",
                            self.host
                        ));
                        let code = status.and_then(|s| s.code());
                        // ssh's own failures (connect, auth) are exit status 255; the script
                        // itself never ends with 255 without its exit marker.
                        let unreachable = fresh && !seen_running && code == Some(255);
                        if unreachable {
                            self.down.mark(&self.host);
                            tracing::warn!(kernel_id = %self.kernel_id, host = %self.host, "ssh cannot reach the host; it is skipped for {}s", DOWN_FOR.as_secs());
                        }
                        return ExitInfo {
                            code,
                            signal: status.and_then(|s| s.signal()),
                            retry_elsewhere: unreachable
                                && self.others.iter().any(|h| !self.down.is_down(h)),
                            out_of_memory: false,
                        };
                    }
                    failures += 1;
                    tracing::warn!(kernel_id = %self.kernel_id, host = %self.host, "lost the ssh watcher ({how}); reconnecting ({failures}/{RECONNECTS})");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let script = reattach_script(&self.log_file, &self.pid_file);
                    match self.client.remote(&self.host, &script).spawn() {
                        Ok(c) => child = c,
                        Err(e) => {
                            self.log.push(format!("cannot run ssh: {e}"));
                            return ExitInfo::UNKNOWN;
                        }
                    }
                }
            }
        }
    }

    async fn session(&self, mut child: Child) -> Ended {
        // Held until the session ends: closing it tells the remote watcher to stop.
        let stdin = child.stdin.take();
        let stderr = child.stderr.take().map(|s| {
            let (id, log) = (self.kernel_id.clone(), self.log.clone());
            self.tasks.spawn(output::read_lines(s, move |line| {
                output::log_line(&id, line, Some(&log))
            }))
        });
        let (mut started, mut gone, mut rc, mut tail) = (false, false, None, Vec::new());
        if let Some(out) = child.stdout.take() {
            output::read_lines(out, |line| {
                if rc.is_some() {
                    tail.push(line);
                    if tail.len() > LogTail::LINES {
                        tail.remove(0);
                    }
                } else if let Some(rest) = line.strip_prefix(STARTED) {
                    started = true;
                    self.down.clear(&self.host);
                    tracing::info!(kernel_id = %self.kernel_id, host = %self.host, "remote launcher pid and start time: {rest}");
                } else if line == GONE {
                    gone = true;
                } else if let Some(code) = line.strip_prefix(EXITED) {
                    rc = Some(code.trim().parse::<i32>().ok());
                } else {
                    tracing::debug!(kernel_id = %self.kernel_id, "ssh stdout: {line}");
                }
            })
            .await;
        }
        let status = child.wait().await.ok();
        if let Some(task) = stderr {
            let _ = tokio::time::timeout(Duration::from_millis(300), task).await;
        }
        drop(stdin);
        match rc {
            Some(rc) => Ended::Exited { rc, tail },
            None if gone => Ended::Gone,
            None => Ended::Lost { started, status },
        }
    }
}

/// Signals a remote launcher's process group over a separate ssh.
#[derive(Debug)]
pub struct SshControl {
    pub(super) client: Arc<Client>,
    pub(super) host: String,
    pub(super) pid_file: String,
    pub(super) exited: Arc<AtomicBool>,
}

impl Control for SshControl {
    fn signal(&self, signal: Signal) -> BoxFuture<'_, ()> {
        Box::pin(self.kill(signal))
    }

    fn kill_group(&self, pgid: i32, kernel_id: &str) -> BoxFuture<'_, ()> {
        let script = kill_group_script(pgid, kernel_id);
        let kernel_id = kernel_id.to_owned();
        Box::pin(async move {
            if pgid > 1 && self.run(&script).await {
                tracing::info!(kernel_id, host = %self.host, pgid, "killed the kernel's process group on its host");
            }
        })
    }
}

impl SshControl {
    /// `kill -s SIGNAL -- -PGID` on the host, after checking the pid file's start time.
    async fn kill(&self, signal: Signal) {
        if self.exited.load(Ordering::SeqCst) {
            return;
        }
        if self.run(&signal_script(&self.pid_file, signal)).await {
            tracing::debug!(host = %self.host, "remote {signal} sent");
        }
    }

    /// Runs `script` on the host; whether it succeeded (failures are logged).
    async fn run(&self, script: &str) -> bool {
        let mut cmd = self.client.remote(&self.host, script);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let host = &self.host;
        let limit = self.client.settings.connect_timeout + Duration::from_secs(10);
        match tokio::time::timeout(limit, cmd.output()).await {
            Ok(Ok(out)) if out.status.success() => true,
            Ok(Ok(out)) => {
                tracing::debug!(
                    %host,
                    "remote command did not apply ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(%host, "cannot run ssh: {e}");
                false
            }
            Err(_) => {
                tracing::warn!(%host, "remote command timed out after {limit:?}");
                false
            }
        }
    }
}
