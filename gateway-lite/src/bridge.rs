//! The bridge between one client WebSocket and a kernel's ZeroMQ sockets.
//!
//! Each WebSocket gets its own DEALER sockets for shell, control and stdin (shell and stdin
//! share one routing identity, so the kernel's `input_request` comes back to the client that
//! asked) and its own SUB on iopub, as Jupyter Server does, so every connection of a kernel
//! sees all of its iopub. Three tasks run per connection: a reader (WebSocket → decoded
//! messages), a writer (frames → WebSocket) and the relay in between, which signs client
//! messages with the kernel's key, verifies the kernel's (dropping bad ones with a log line)
//! and forwards the JSON parts and binary buffers unchanged.
//!
//! Everything a browser can fill is bounded. Client → kernel: the WebSocket layer refuses a
//! message over `--max-message-bytes` (the connection is closed with 1009), and at most
//! [`IN_QUEUE`] decoded messages wait for the relay. Kernel → client: at most [`OUT_QUEUE`]
//! frames and [`OUT_BYTES`] bytes wait for the writer. A client that stops reading is
//! **back-pressured, not dropped**: its queue fills, its relay stops reading its own ZeroMQ
//! sockets (the `zeromq` crate reads a socket only when asked, so nothing piles up in the
//! gateway), TCP fills up to the kernel, and the kernel's PUB socket discards iopub for that
//! one subscriber once its high-water mark is reached. Other connections, which have their
//! own sockets, carry on. The stalled connection ends when the client closes it or TCP gives
//! up.
//!
//! The relay follows the kernel's [`Phase`]: it reconnects after a restart (new ports and
//! key), and tells the client `status: restarting` (automatic restarts only, as Jupyter
//! Server) / `status: dead` on iopub.
//!
//! On (re)connect the relay "nudges" the kernel like Jupyter Server: it sends
//! `kernel_info_request` until an iopub message arrives, so the client's first request
//! cannot race the iopub subscription. The nudge's own replies are not forwarded.
//!
//! **Messages while no client is connected.** Like Jupyter Server (`start_buffering` /
//! `get_buffer` in its kernel manager), when the last WebSocket of a kernel closes its
//! sockets stay open and whatever arrives on them (iopub, and replies on shell, control and
//! stdin to that client's requests) is kept in memory, keyed by kernel id and the
//! `session_id` query parameter. A client that reconnects with the same `session_id` takes
//! the sockets back and receives the kept messages, in order, before live traffic; a
//! connection with another `session_id` discards them. Unlike Jupyter Server's list, the
//! backlog is bounded by [`PARK_MAX_MESSAGES`] and [`PARK_MAX_BYTES`] per kernel and by
//! [`PARK_TOTAL_MAX_BYTES`] across all kernels (oldest of the growing backlog dropped first,
//! logged once), and nothing is kept for a client without a `session_id` (no later
//! connection could claim it). The total is the `gateway_lite_kept_bytes` gauge. The backlog lives in a registry of this module keyed by
//! kernel id, not on [`Kernel`]; it is removed when the kernel is shut down.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use protocol::wire::WireMessage;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use zeromq::{
    DealerRecvHalf, DealerSendHalf, SocketRecv, SocketSend, SubSocket, ZmqMessage, ZmqResult,
};

use crate::channels::{self, Channel, KernelEndpoints};
use crate::kernels::{Kernel, Phase};
use crate::wsframe::{self, ClientMessage, Framing, OutFrame};

/// Frames queued toward one client.
pub const OUT_QUEUE: usize = 256;
/// Bytes of frames queued toward one client. A single larger frame still goes through, alone.
pub const OUT_BYTES: usize = 16 * 1024 * 1024;
/// Decoded client messages queued toward the kernel (each at most `--max-message-bytes`).
pub const IN_QUEUE: usize = 64;
/// Messages kept for a kernel while no client is connected.
pub const PARK_MAX_MESSAGES: usize = 10_000;
/// Bytes kept for a kernel while no client is connected.
pub const PARK_MAX_BYTES: usize = 32 * 1024 * 1024;
/// Bytes kept across all kernels while their clients are away: with hundreds of kernels,
/// the per-kernel bound alone would not bound the gateway.
pub const PARK_TOTAL_MAX_BYTES: usize = 256 * 1024 * 1024;
/// How long one nudge waits for iopub before sending another.
const NUDGE_WAIT: Duration = Duration::from_millis(500);
/// How many nudges before giving up (the client still gets a working bridge).
const NUDGE_TRIES: usize = 20;
/// Malformed client messages logged as warnings per connection; the rest go to debug.
const MALFORMED_WARNINGS: usize = 10;
/// How long the socket stays open after a close frame sent because of a bad message.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Pause after a ZeroMQ receive error, so a broken socket cannot spin.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// Pause before connecting again after a failed connect to a running kernel.
const CONNECT_RETRY: Duration = Duration::from_millis(500);
/// Client messages held while the kernel's sockets are not connected (starting, restarting,
/// a failed connect being retried); delivered in order once they are.
const HELD_MAX: usize = 256;

/// Serves one WebSocket until the client or the kernel goes away.
pub async fn serve(socket: WebSocket, kernel: Arc<Kernel>, framing: Framing, session_id: String) {
    let _counted = kernel.connect();
    let resumed = arrive(&kernel, &session_id).await;
    tracing::info!(
        kernel_id = %kernel.id,
        session_id,
        ?framing,
        resumed = resumed.is_some(),
        "client connected"
    );
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<(Message, OwnedSemaphorePermit)>(OUT_QUEUE);
    let out = Outbox {
        tx: out_tx,
        budget: Arc::new(Semaphore::new(OUT_BYTES)),
    };
    let (in_tx, in_rx) = mpsc::channel::<ClientMessage>(IN_QUEUE);
    let (close_tx, close_rx) = oneshot::channel::<CloseFrame>();

    let writer = tokio::spawn(async move {
        while let Some((m, permit)) = out_rx.recv().await {
            let sent = sink.send(m).await;
            drop(permit);
            if let Err(e) = sent {
                tracing::debug!("websocket write failed: {e}");
                return;
            }
        }
        match close_rx.await {
            Ok(frame) => {
                // The rest of the refused message is still unread in our socket, and closing
                // a socket with unread input makes the kernel reset the connection, which can
                // destroy the close frame before the client reads it (browsers then report
                // 1006). So the socket stays open a moment after the close frame.
                if sink.send(Message::Close(Some(frame))).await.is_ok() {
                    tokio::time::sleep(CLOSE_GRACE).await;
                }
            }
            Err(_) => {
                let normal = CloseFrame {
                    code: 1000,
                    reason: "".into(),
                };
                let _ = sink.send(Message::Close(Some(normal))).await;
            }
        }
    });

    let reader_id = kernel.id.clone();
    let reader = tokio::spawn(async move {
        let mut close_tx = Some(close_tx);
        let mut malformed = 0usize;
        while let Some(frame) = stream.next().await {
            let decoded = match frame {
                Ok(Message::Text(t)) => wsframe::decode_text(t.as_str()),
                Ok(Message::Binary(b)) => wsframe::decode_binary(framing, &b),
                Ok(Message::Close(_)) => break,
                Ok(_) => continue,
                Err(e) => {
                    let text = e.to_string();
                    tracing::warn!(kernel_id = %reader_id, "closing websocket: {text}");
                    if let (Some(tx), Some(frame)) = (close_tx.take(), close_frame_for(&text)) {
                        let _ = tx.send(frame);
                    }
                    break;
                }
            };
            match decoded {
                Ok(m) => {
                    if in_tx.send(m).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    // A client can send these as fast as it likes: only the first few are
                    // warnings, so it cannot flood the log.
                    malformed += 1;
                    if malformed <= MALFORMED_WARNINGS {
                        tracing::warn!(kernel_id = %reader_id, "ignored a malformed websocket message: {e}");
                        if malformed == MALFORMED_WARNINGS {
                            tracing::warn!(kernel_id = %reader_id, "further malformed messages on this connection are logged at debug level");
                        }
                    } else {
                        tracing::debug!(kernel_id = %reader_id, "ignored a malformed websocket message: {e}");
                    }
                }
            }
        }
    });

    let left = relay(&kernel, framing, in_rx, &out, resumed).await;
    reader.abort();
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    leave(&kernel, &session_id, left);
    tracing::info!(kernel_id = %kernel.id, session_id, "client disconnected");
}

/// The close frame for a WebSocket read error, by the error's text.
///
/// Interop quirk: axum wraps tungstenite's error in an opaque `axum::Error` and this crate
/// does not depend on tungstenite (whose version must match axum's for a downcast), so the
/// kind is read from the message, whose prefixes tungstenite has kept for years. tungstenite
/// itself only returns the error on a too-large message; the close frame is ours to send.
fn close_frame_for(error: &str) -> Option<CloseFrame> {
    let (code, reason) = if error.starts_with("Space limit exceeded") {
        (1009, "message too big")
    } else if error.starts_with("UTF-8 encoding error") {
        (1007, "invalid UTF-8")
    } else if error.starts_with("WebSocket protocol error") {
        (1002, "protocol error")
    } else {
        return None;
    };
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

/// The queue toward one client's writer, bounded in frames and in bytes.
struct Outbox {
    tx: mpsc::Sender<(Message, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
}

impl Outbox {
    /// Queues `frame`, waiting while the client is behind; false when the writer is gone.
    async fn send(&self, frame: Message) -> bool {
        let len = match &frame {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        };
        // A frame larger than the whole budget waits for an empty queue, then goes alone.
        let permits = u32::try_from(len.clamp(1, OUT_BYTES)).unwrap_or(u32::MAX);
        let permit = tokio::select! {
            p = self.budget.clone().acquire_many_owned(permits) => match p {
                Ok(p) => p,
                Err(_) => return false,
            },
            () = self.tx.closed() => return false,
        };
        self.tx.send((frame, permit)).await.is_ok()
    }

    async fn closed(&self) {
        self.tx.closed().await
    }
}

/// One client's sockets on one kernel incarnation.
struct Sockets {
    ep: Arc<KernelEndpoints>,
    shell: DealerSendHalf,
    shell_rx: DealerRecvHalf,
    control: DealerSendHalf,
    control_rx: DealerRecvHalf,
    stdin: DealerSendHalf,
    stdin_rx: DealerRecvHalf,
    iopub: SubSocket,
    /// Ids of the nudge's requests, whose replies are swallowed.
    nudges: HashSet<String>,
}

impl Sockets {
    async fn connect(ep: Arc<KernelEndpoints>) -> ZmqResult<Self> {
        channels::wait_listening(&ep).await;
        let identity = uuid::Uuid::new_v4().to_string().into_bytes();
        let (shell, shell_rx) = channels::dealer(&ep, Channel::Shell, Some(&identity))
            .await?
            .split();
        let (control, control_rx) = channels::dealer(&ep, Channel::Control, None).await?.split();
        let (stdin, stdin_rx) = channels::dealer(&ep, Channel::Stdin, Some(&identity))
            .await?
            .split();
        let iopub = channels::subscriber(&ep).await?;
        let mut s = Sockets {
            ep,
            shell,
            shell_rx,
            control,
            control_rx,
            stdin,
            stdin_rx,
            iopub,
            nudges: HashSet::new(),
        };
        s.nudge().await;
        Ok(s)
    }

    async fn nudge(&mut self) {
        let session = uuid::Uuid::new_v4().to_string();
        for _ in 0..NUDGE_TRIES {
            let mut msg = channels::message("kernel_info_request", &session, b"{}", json!({}));
            if let Some((_, id)) = channels::header_fields(&msg.header) {
                self.nudges.insert(id);
            }
            self.ep.signer.sign_message(&mut msg);
            if self.shell.send(channels::to_zmq(&msg)).await.is_err() {
                return;
            }
            let deadline = tokio::time::sleep(NUDGE_WAIT);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = &mut deadline => break,
                    m = self.iopub.recv() => if m.is_ok() { return },
                    _ = self.shell_rx.recv() => {}
                }
            }
        }
        tracing::warn!("kernel did not answer kernel_info_request on iopub; continuing");
    }

    async fn send(&mut self, cm: ClientMessage) {
        let mut msg = cm.msg;
        self.ep.signer.sign_message(&mut msg);
        let z = channels::to_zmq(&msg);
        let r = match cm.channel {
            Channel::Shell => self.shell.send(z).await,
            Channel::Control => self.control.send(z).await,
            Channel::Stdin => self.stdin.send(z).await,
            Channel::Iopub => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!(
                channel = cm.channel.as_str(),
                "sending to the kernel failed: {e}"
            );
        }
    }

    async fn recv(&mut self) -> (Channel, ZmqResult<ZmqMessage>) {
        tokio::select! {
            r = self.iopub.recv() => (Channel::Iopub, r),
            r = self.shell_rx.recv() => (Channel::Shell, r),
            r = self.control_rx.recv() => (Channel::Control, r),
            r = self.stdin_rx.recv() => (Channel::Stdin, r),
        }
    }

    /// A received message, verified, unless it is bad or answers one of the nudges.
    async fn accept(&self, channel: Channel, r: ZmqResult<ZmqMessage>) -> Option<WireMessage> {
        let m = match r {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(channel = channel.as_str(), "kernel socket: {e}");
                tokio::time::sleep(RECV_ERROR_PAUSE).await;
                return None;
            }
        };
        let msg = channels::from_zmq(m, &self.ep.signer, channel)?;
        (!self.is_nudge_reply(&msg)).then_some(msg)
    }

    /// Whether `msg` answers one of the nudges.
    fn is_nudge_reply(&self, msg: &WireMessage) -> bool {
        !self.nudges.is_empty()
            && serde_json::from_slice::<Value>(&msg.parent_header)
                .ok()
                .and_then(|p| {
                    p.get("msg_id")
                        .and_then(Value::as_str)
                        .map(|id| self.nudges.contains(id))
                })
                .unwrap_or(false)
    }
}

async fn recv_any(socks: &mut Option<Sockets>) -> (Channel, ZmqResult<ZmqMessage>) {
    match socks {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Moves messages both ways until the client leaves, the writer fails or the kernel is gone.
/// Returns the sockets when the client left while the kernel still runs, so they can be
/// parked for the next connection of the same session.
async fn relay(
    kernel: &Kernel,
    framing: Framing,
    mut in_rx: mpsc::Receiver<ClientMessage>,
    out: &Outbox,
    resumed: Option<Kept>,
) -> Option<Sockets> {
    let mut phase_rx: watch::Receiver<Phase> = kernel.phase();
    let mut socks: Option<Sockets> = None;
    let mut generation = 0;
    if let Some(kept) = resumed {
        if kept.backlog.dropped > 0 {
            tracing::warn!(
                kernel_id = %kernel.id,
                dropped = kept.backlog.dropped,
                "some messages kept while no client was connected were dropped (backlog full)"
            );
        }
        if !kept.backlog.items.is_empty() {
            tracing::info!(kernel_id = %kernel.id, messages = kept.backlog.items.len(), "replaying kept messages");
        }
        for (channel, msg) in &kept.backlog.items {
            if !forward(out, framing, *channel, msg).await {
                return kept.sockets;
            }
        }
        if let Some(s) = kept.sockets {
            generation = s.ep.generation;
            socks = Some(s);
        }
    }
    let mut dirty = true;
    // A connect that failed while the kernel is still running (ports not bound yet, a network
    // cut) is tried again, and the client's messages are held meanwhile instead of dropped.
    let mut retry: Option<tokio::time::Instant> = None;
    let mut held: VecDeque<ClientMessage> = VecDeque::new();
    loop {
        if dirty {
            dirty = false;
            let phase = phase_rx.borrow_and_update().clone();
            match phase {
                Phase::Running(ep) if ep.generation != generation || socks.is_none() => {
                    generation = ep.generation;
                    socks = None;
                    retry = None;
                    match Sockets::connect(ep).await {
                        Ok(mut s) => {
                            for m in held.drain(..) {
                                s.send(m).await;
                            }
                            socks = Some(s);
                        }
                        Err(e) => {
                            tracing::warn!(kernel_id = %kernel.id, "connecting to the kernel failed (retrying): {e}");
                            retry = Some(tokio::time::Instant::now() + CONNECT_RETRY);
                        }
                    }
                }
                Phase::Running(_) => {}
                Phase::Restarting { automatic: false } => {
                    socks = None;
                    generation = 0;
                }
                Phase::Restarting { automatic: true } | Phase::Dead => {
                    socks = None;
                    generation = 0;
                    if matches!(phase, Phase::Dead) && !held.is_empty() {
                        tracing::warn!(kernel_id = %kernel.id, dropped = held.len(), "kernel died; held client messages dropped");
                        held.clear();
                    }
                    let state = if matches!(phase, Phase::Dead) {
                        "dead"
                    } else {
                        "restarting"
                    };
                    if !forward(out, framing, Channel::Iopub, &channels::status(state)).await {
                        return None;
                    }
                }
                Phase::Gone => return None,
            }
        }
        tokio::select! {
            changed = phase_rx.changed() => {
                if changed.is_err() {
                    return None;
                }
                dirty = true;
            }
            m = in_rx.recv() => {
                let Some(m) = m else { return socks };
                kernel.touch();
                match socks.as_mut() {
                    Some(s) => s.send(m).await,
                    None if matches!(&*phase_rx.borrow(), Phase::Dead) => {
                        tracing::warn!(kernel_id = %kernel.id, "kernel is dead; client message dropped");
                    }
                    None => {
                        if held.len() == HELD_MAX {
                            held.pop_front();
                            tracing::warn!(kernel_id = %kernel.id, "kernel not connected; oldest held client message dropped");
                        }
                        held.push_back(m);
                    }
                }
            }
            () = async {
                match retry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                retry = None;
                dirty = true;
            }
            (channel, r) = recv_any(&mut socks) => {
                let Some(s) = socks.as_ref() else { continue };
                let Some(msg) = s.accept(channel, r).await else { continue };
                if !forward(out, framing, channel, &msg).await {
                    return socks;
                }
            }
            () = out.closed() => return socks,
        }
    }
}

/// Queues one message for the client; false when the writer is gone.
async fn forward(out: &Outbox, framing: Framing, channel: Channel, msg: &WireMessage) -> bool {
    let frame = match wsframe::encode(framing, channel, msg) {
        Ok(OutFrame::Text(t)) => Message::Text(t.into()),
        Ok(OutFrame::Binary(b)) => Message::Binary(b.into()),
        Err(e) => {
            tracing::warn!(
                channel = channel.as_str(),
                "message from kernel dropped: {e}"
            );
            return true;
        }
    };
    out.send(frame).await
}

/// Bytes held by backlogs, shared by the backlogs of every kernel.
#[derive(Debug)]
struct Budget {
    used: AtomicUsize,
    max: usize,
}

static BUDGET: Budget = Budget {
    used: AtomicUsize::new(0),
    max: PARK_TOTAL_MAX_BYTES,
};

/// Bytes kept now across all kernels for clients that are away.
pub fn kept_bytes() -> usize {
    BUDGET.used.load(Ordering::Relaxed)
}

/// Messages kept while no client is connected, oldest first, bounded in count and bytes,
/// and drawing on a budget shared with the other kernels' backlogs.
struct Backlog {
    items: VecDeque<(Channel, WireMessage)>,
    bytes: usize,
    dropped: usize,
    budget: &'static Budget,
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog::with_budget(&BUDGET)
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

fn size_of(msg: &WireMessage) -> usize {
    [&msg.header, &msg.parent_header, &msg.metadata, &msg.content]
        .iter()
        .map(|p| p.len())
        .chain(msg.buffers.iter().map(Vec::len))
        .sum()
}

impl Backlog {
    fn with_budget(budget: &'static Budget) -> Self {
        Backlog {
            items: VecDeque::new(),
            bytes: 0,
            dropped: 0,
            budget,
        }
    }

    fn push(&mut self, kernel_id: &str, channel: Channel, msg: WireMessage) {
        let size = size_of(&msg);
        self.bytes += size;
        self.budget.used.fetch_add(size, Ordering::Relaxed);
        self.items.push_back((channel, msg));
        while self.items.len() > PARK_MAX_MESSAGES
            || self.bytes > PARK_MAX_BYTES
            || self.budget.used.load(Ordering::Relaxed) > self.budget.max
        {
            let Some((_, old)) = self.items.pop_front() else {
                break;
            };
            let size = size_of(&old);
            self.bytes -= size;
            self.budget.used.fetch_sub(size, Ordering::Relaxed);
            if self.dropped == 0 {
                tracing::warn!(
                    kernel_id,
                    max_messages = PARK_MAX_MESSAGES,
                    max_bytes = PARK_MAX_BYTES,
                    max_total_bytes = self.budget.max,
                    "no client connected and the backlog is full: dropping the oldest messages"
                );
            }
            self.dropped += 1;
        }
    }
}

/// What a parked connection hands to the next one of its session.
struct Kept {
    /// The sockets, unless the kernel restarted or died meanwhile.
    sockets: Option<Sockets>,
    backlog: Backlog,
}

/// A kernel's last connection, parked after its client left.
struct Parked {
    session_id: String,
    token: u64,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Kept>,
}

/// Per kernel: connected clients, and the parked connection while there are none.
#[derive(Default)]
struct Entry {
    clients: usize,
    parked: Option<Parked>,
}

static REGISTRY: LazyLock<Mutex<HashMap<String, Entry>>> = LazyLock::new(Mutex::default);
static TOKENS: AtomicU64 = AtomicU64::new(1);

fn registry() -> std::sync::MutexGuard<'static, HashMap<String, Entry>> {
    // A panic while holding this lock cannot leave the map inconsistent (every update is a
    // single field write), so a poisoned lock is used as is.
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts a new client of `kernel`; hands it the parked connection if the session matches,
/// and discards a parked connection of another session.
async fn arrive(kernel: &Arc<Kernel>, session_id: &str) -> Option<Kept> {
    let parked = {
        let mut reg = registry();
        let entry = reg.entry(kernel.id.clone()).or_default();
        entry.clients += 1;
        entry.parked.take()
    }?;
    let _ = parked.stop.send(());
    let kept = match parked.task.await {
        Ok(kept) => kept,
        Err(e) => {
            tracing::warn!(kernel_id = %kernel.id, "parked connection task failed: {e}");
            return None;
        }
    };
    if !session_id.is_empty() && parked.session_id == session_id {
        return Some(kept);
    }
    tracing::info!(
        kernel_id = %kernel.id,
        session_id = %parked.session_id,
        messages = kept.backlog.items.len(),
        "discarding messages kept for another session"
    );
    None
}

/// Uncounts a client; parks its sockets if it was the last one and has a session id.
fn leave(kernel: &Arc<Kernel>, session_id: &str, sockets: Option<Sockets>) {
    let mut reg = registry();
    let Some(entry) = reg.get_mut(&kernel.id) else {
        return;
    };
    entry.clients = entry.clients.saturating_sub(1);
    if entry.clients > 0 {
        return;
    }
    match sockets {
        Some(sockets) if !session_id.is_empty() => {
            tracing::info!(kernel_id = %kernel.id, session_id, "no client left: keeping messages for this session");
            let token = TOKENS.fetch_add(1, Ordering::Relaxed);
            let (stop, stop_rx) = oneshot::channel();
            let kept = Kept {
                sockets: Some(sockets),
                backlog: Backlog::default(),
            };
            let task = tokio::spawn(park(kernel.clone(), kept, stop_rx, token));
            entry.parked = Some(Parked {
                session_id: session_id.to_owned(),
                token,
                stop,
                task,
            });
        }
        _ => {
            reg.remove(&kernel.id);
        }
    }
}

/// Removes the parked connection `token` of `kernel_id` (the kernel is gone).
fn forget(kernel_id: &str, token: u64) {
    let mut reg = registry();
    if let Some(entry) = reg.get_mut(kernel_id) {
        if entry.parked.as_ref().is_some_and(|p| p.token == token) {
            entry.parked = None;
        }
        if entry.clients == 0 && entry.parked.is_none() {
            reg.remove(kernel_id);
        }
    }
}

/// Keeps what arrives on a parked connection's sockets until told to stop or the kernel is
/// gone. After a restart or death the old sockets are closed; the backlog stays.
async fn park(
    kernel: Arc<Kernel>,
    mut kept: Kept,
    mut stop: oneshot::Receiver<()>,
    token: u64,
) -> Kept {
    let mut phase_rx = kernel.phase();
    let generation = kept.sockets.as_ref().map(|s| s.ep.generation);
    loop {
        tokio::select! {
            _ = &mut stop => return kept,
            changed = phase_rx.changed() => {
                let gone = changed.is_err() || matches!(&*phase_rx.borrow_and_update(), Phase::Gone);
                if gone {
                    forget(&kernel.id, token);
                    kept.sockets = None;
                    return kept;
                }
                let same = matches!(&*phase_rx.borrow(), Phase::Running(ep) if Some(ep.generation) == generation);
                if !same {
                    kept.sockets = None;
                }
            }
            (channel, r) = recv_any(&mut kept.sockets) => {
                let Some(s) = kept.sockets.as_ref() else { continue };
                if let Some(msg) = s.accept(channel, r).await {
                    kept.backlog.push(&kernel.id, channel, msg);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(content: &[u8]) -> WireMessage {
        WireMessage {
            identities: Vec::new(),
            signature: Vec::new(),
            header: b"{}".to_vec(),
            parent_header: b"{}".to_vec(),
            metadata: b"{}".to_vec(),
            content: content.to_vec(),
            buffers: Vec::new(),
        }
    }

    #[test]
    fn backlog_drops_oldest_by_count() {
        let mut b = Backlog::default();
        for i in 0..PARK_MAX_MESSAGES + 5 {
            b.push("k", Channel::Iopub, msg(i.to_string().as_bytes()));
        }
        assert_eq!(b.items.len(), PARK_MAX_MESSAGES);
        assert_eq!(b.dropped, 5);
        assert_eq!(
            b.items.front().map(|(_, m)| m.content.clone()),
            Some(b"5".to_vec())
        );
    }

    #[test]
    fn backlog_drops_oldest_by_bytes() {
        let mut b = Backlog::default();
        let big = vec![b'x'; PARK_MAX_BYTES / 3];
        for _ in 0..4 {
            b.push("k", Channel::Iopub, msg(&big));
        }
        assert_eq!(b.items.len(), 2);
        assert!(b.bytes <= PARK_MAX_BYTES);
        assert_eq!(
            b.bytes,
            b.items.iter().map(|(_, m)| size_of(m)).sum::<usize>()
        );
        // One message larger than the whole budget is not kept either.
        b.push("k", Channel::Iopub, msg(&vec![b'y'; PARK_MAX_BYTES + 1]));
        assert!(b.items.is_empty() && b.bytes == 0);
    }

    #[test]
    fn backlogs_share_a_total_budget() {
        let budget: &'static Budget = Box::leak(Box::new(Budget {
            used: AtomicUsize::new(0),
            max: 1000,
        }));
        let mut a = Backlog::with_budget(budget);
        let mut b = Backlog::with_budget(budget);
        for _ in 0..6 {
            a.push("a", Channel::Iopub, msg(&[b'a'; 100]));
        }
        let each = size_of(&msg(&[b'a'; 100]));
        assert_eq!(budget.used.load(Ordering::Relaxed), 6 * each);
        // b grows past the total: b's own oldest go, a keeps what it has.
        for _ in 0..6 {
            b.push("b", Channel::Iopub, msg(&[b'b'; 100]));
        }
        assert_eq!(a.items.len(), 6);
        assert_eq!(b.items.len(), 1000 / each - 6);
        assert!(b.dropped > 0);
        assert!(budget.used.load(Ordering::Relaxed) <= budget.max);
        // Replayed (dropped) backlogs give their bytes back.
        drop(a);
        assert_eq!(budget.used.load(Ordering::Relaxed), b.bytes);
        b.push("b", Channel::Iopub, msg(&[b'b'; 100]));
        assert_eq!(
            b.dropped,
            12 - 1000 / each,
            "room again after a's bytes came back"
        );
        drop(b);
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn close_codes() {
        let code = |s: &str| close_frame_for(s).map(|f| f.code);
        assert_eq!(
            code("Space limit exceeded: Message too long: 131300 > 65536"),
            Some(1009)
        );
        assert_eq!(code("UTF-8 encoding error"), Some(1007));
        assert_eq!(code("WebSocket protocol error: bad opcode"), Some(1002));
        assert_eq!(code("IO error: connection reset"), None);
    }
}
