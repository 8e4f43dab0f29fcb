//! One code cell run on the kernel: the `execute_request`, the replies gathered until the
//! kernel is idle again, the cell timeout and the stop signal, and what is written back into
//! the cell (outputs, execution count, nbclient's timing metadata).
//!
//! A cell is done when both its `execute_reply` (shell) and its `status: idle` (iopub) have
//! arrived; the order between the two channels is not defined. On a timeout or a stop
//! signal the kernel is interrupted over REST (`POST …/interrupt`, which works for both
//! signal and message interrupt modes on either gateway) and the cell gets
//! [`INTERRUPT_GRACE`] to finish, so the `KeyboardInterrupt` traceback lands in the saved
//! notebook; a second signal ends the wait at once.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::channel::{ChannelError, KernelChannel};
use super::http::Gateway;
use super::outputs::{CellOutputs, DisplayUpdate, Displays};
use super::progress::Progress;

/// How long an interrupted cell may take to report back.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(10);
/// How long after its `execute_reply` a cell's iopub may take to go idle (nbclient waits 4 s
/// by default); past it the cell counts as done, with what arrived.
pub const IOPUB_GRACE: Duration = Duration::from_secs(10);

/// A stop request from a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT (Ctrl-C).
    Int,
    /// SIGTERM.
    Term,
}

/// Stop requests: the latest, and how many so far.
pub type StopRx = watch::Receiver<(Option<Stop>, u32)>;

/// How a cell ended.
#[derive(Debug)]
pub enum CellEnd {
    /// It ran; `error` holds (ename, evalue, traceback) if it raised.
    Ran {
        /// The error, if the cell raised one.
        error: Option<(String, String, Vec<String>)>,
    },
    /// It ran past the cell timeout and was interrupted.
    TimedOut,
    /// A signal stopped it (it was interrupted).
    Stopped(Stop),
    /// The kernel died or restarted under it.
    KernelDied(String),
    /// The connection failed.
    Channel(ChannelError),
}

/// What a cell needs from the run.
pub struct CellContext<'a> {
    /// The gateway, for interrupts.
    pub gateway: &'a Gateway,
    /// The kernel.
    pub kernel_id: &'a str,
    /// Its WebSocket.
    pub channel: &'a mut KernelChannel,
    /// Stop requests.
    pub stop: &'a mut StopRx,
    /// The progress display.
    pub progress: &'a mut Progress,
    /// `--cell-timeout`.
    pub timeout: Option<Duration>,
    /// `--log-output`.
    pub log_output: bool,
    /// Where earlier cells' displays are; this cell's are recorded into it.
    pub displays: &'a mut Displays,
    /// The cell's index in the notebook.
    pub index: usize,
    /// Display updates this cell sent, for the run to apply to earlier cells.
    pub updates: Vec<DisplayUpdate>,
}

/// Runs `code` and writes the result into `cell`.
pub async fn run_cell(
    ctx: &mut CellContext<'_>,
    cell: &mut Map<String, Value>,
    code: &str,
) -> CellEnd {
    let mut timing = Map::new();
    let mut outputs = CellOutputs::default();
    let content = json!({
        "code": code,
        "silent": false,
        "store_history": true,
        "user_expressions": {},
        "allow_stdin": false,
        "stop_on_error": true,
    });
    let msg_id = match ctx.channel.send("shell", "execute_request", content).await {
        Ok(id) => id,
        Err(e) => return CellEnd::Channel(e),
    };
    let mut reply: Option<Value> = None;
    let mut idle = false;
    let mut execution_count = Value::Null;
    let mut deadline = ctx.timeout.map(|t| Instant::now() + t);
    let mut iopub_deadline: Option<Instant> = None;
    // Set once the kernel was interrupted: why, and how long the cell still gets.
    let mut interrupted: Option<(CellEnd, Instant)> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let end = loop {
        if reply.is_some() && idle {
            break None;
        }
        let grace_end = interrupted.as_ref().map(|(_, t)| *t);
        let wake = [deadline, grace_end, iopub_deadline]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            msg = ctx.channel.recv() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => break Some(CellEnd::Channel(e)),
                };
                if msg.channel == "iopub" && msg.msg_type == "status" {
                    let state = msg.content.get("execution_state").and_then(Value::as_str).unwrap_or("");
                    if matches!(state, "dead" | "restarting") {
                        break Some(CellEnd::KernelDied(format!("the kernel's status became {state:?}")));
                    }
                }
                if msg.parent_id.as_deref() != Some(msg_id.as_str()) {
                    continue;
                }
                let date = msg.date.clone().map_or(Value::Null, Value::String);
                match (msg.channel.as_str(), msg.msg_type.as_str()) {
                    ("shell", "execute_reply") => {
                        timing.insert("shell.execute_reply".into(), date);
                        if let Some(n) = msg.content.get("execution_count").filter(|n| n.is_u64()) {
                            execution_count = n.clone();
                        }
                        reply = Some(msg.content);
                        iopub_deadline = Some(Instant::now() + IOPUB_GRACE);
                    }
                    ("iopub", "status") => match msg.content.get("execution_state").and_then(Value::as_str) {
                        Some("busy") => { timing.insert("iopub.status.busy".into(), date); }
                        Some("idle") => { timing.insert("iopub.status.idle".into(), date); idle = true; }
                        _ => {}
                    },
                    ("iopub", "execute_input") => {
                        timing.insert("iopub.execute_input".into(), date);
                        if let Some(n) = msg.content.get("execution_count").filter(|n| n.is_u64()) {
                            execution_count = n.clone();
                        }
                    }
                    ("iopub", kind) => {
                        if ctx.log_output && kind == "stream" {
                            echo_stream(ctx.progress, &msg.content);
                        }
                        outputs.handle(kind, &msg.content);
                    }
                    _ => {}
                }
            }
            _ = sleep_until(wake) => {
                if iopub_deadline.is_some_and(|t| Instant::now() >= t) {
                    eprintln!("gateway-lite run: no idle status {IOPUB_GRACE:?} after the cell's reply; going on with the outputs received");
                    idle = true;
                    continue;
                }
                if interrupted.is_some() {
                    break Some(interrupted.take().map(|(why, _)| why).expect("checked above"));
                }
                deadline = None;
                interrupt(ctx).await;
                interrupted = Some((CellEnd::TimedOut, Instant::now() + INTERRUPT_GRACE));
            }
            changed = ctx.stop.changed() => {
                let (stop, count) = *ctx.stop.borrow_and_update();
                let stop = match (changed, stop) {
                    (Ok(()), Some(s)) => s,
                    // The signal listener is gone: keep running.
                    _ => { continue; }
                };
                if interrupted.is_some() && count > 1 {
                    break Some(CellEnd::Stopped(stop));
                }
                if interrupted.is_none() {
                    interrupt(ctx).await;
                }
                deadline = None;
                interrupted = Some((CellEnd::Stopped(stop), Instant::now() + INTERRUPT_GRACE));
            }
            _ = ticker.tick() => ctx.progress.tick(),
        }
    };
    ctx.displays.record(ctx.index, &outputs);
    ctx.updates = outputs.take_updates();
    cell.insert("outputs".into(), outputs.to_value());
    cell.insert("execution_count".into(), execution_count);
    let meta = super::notebook::object_field(cell, "metadata");
    meta.insert("execution".into(), Value::Object(timing));
    if let Some(end) = end {
        return end;
    }
    if let Some((why, _)) = interrupted {
        return why;
    }
    let reply = reply.unwrap_or(Value::Null);
    let error = if reply.get("status").and_then(Value::as_str) == Some("error") {
        outputs
            .error()
            .cloned()
            .or_else(|| Some(super::outputs::error_fields(&reply)))
    } else {
        None
    };
    CellEnd::Ran { error }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn interrupt(ctx: &mut CellContext<'_>) {
    if let Err(e) = ctx.gateway.interrupt(ctx.kernel_id).await {
        eprintln!(
            "{}",
            format_args!("gateway-lite run: interrupting the kernel failed: {e}")
        );
    }
}

fn echo_stream(progress: &mut Progress, content: &Value) {
    let text = content.get("text").and_then(Value::as_str).unwrap_or("");
    let text = text.strip_suffix('\n').unwrap_or(text);
    if content.get("name").and_then(Value::as_str) == Some("stderr") {
        eprintln!("{text}");
    } else {
        progress.println(text);
    }
}
