//! The bridge between one client WebSocket and a kernel's ZeroMQ sockets.
//!
//! Each WebSocket gets its own DEALER sockets for shell, control and stdin (shell and stdin
//! share one routing identity, so the kernel's `input_request` comes back to the client that
//! asked) and its own SUB on iopub, as Jupyter Server does. Three tasks run per connection:
//! a reader (WebSocket → decoded messages), a writer (frames → WebSocket) and the relay in
//! between, which signs client messages with the kernel's key, verifies the kernel's
//! (dropping bad ones with a log line) and forwards the JSON parts unchanged. The queues
//! between them are bounded: a client that stops reading stalls only its own relay, while
//! the kernel's PUB drops iopub for that one subscriber and everyone else carries on.
//!
//! The relay follows the kernel's [`Phase`]: it reconnects after a restart (new ports and
//! key), and tells the client `status: restarting` / `status: dead` on iopub.
//!
//! On (re)connect the relay "nudges" the kernel like Jupyter Server: it sends
//! `kernel_info_request` until an iopub message arrives, so the client's first request
//! cannot race the iopub subscription. The nudge's own replies are not forwarded.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use protocol::wire::WireMessage;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use zeromq::{
    DealerRecvHalf, DealerSendHalf, SocketRecv, SocketSend, SubSocket, ZmqMessage, ZmqResult,
};

use crate::channels::{self, Channel, KernelEndpoints};
use crate::kernels::{Kernel, Phase};
use crate::wsframe::{self, ClientMessage, Framing, OutFrame};

/// Frames queued toward one client.
const OUT_QUEUE: usize = 256;
/// Decoded client messages queued toward the kernel.
const IN_QUEUE: usize = 64;
/// How long one nudge waits for iopub before sending another.
const NUDGE_WAIT: Duration = Duration::from_millis(500);
/// How many nudges before giving up (the client still gets a working bridge).
const NUDGE_TRIES: usize = 20;

/// Serves one WebSocket until the client or the kernel goes away.
pub async fn serve(socket: WebSocket, kernel: Arc<Kernel>, framing: Framing, session_id: String) {
    let _counted = kernel.connect();
    let span = tracing::info_span!("ws", kernel_id = %kernel.id, session_id = %session_id);
    let _enter = span.enter();
    tracing::info!(?framing, "client connected");
    drop(_enter);
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(OUT_QUEUE);
    let (in_tx, in_rx) = mpsc::channel::<ClientMessage>(IN_QUEUE);

    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if let Err(e) = sink.send(m).await {
                tracing::debug!("websocket write failed: {e}");
                return;
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    });

    let reader_id = kernel.id.clone();
    let reader = tokio::spawn(async move {
        while let Some(frame) = stream.next().await {
            let decoded = match frame {
                Ok(Message::Text(t)) => wsframe::decode_text(t.as_str()),
                Ok(Message::Binary(b)) => wsframe::decode_binary(framing, &b),
                Ok(Message::Close(_)) => break,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(kernel_id = %reader_id, "closing websocket: {e}");
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
                    tracing::warn!(kernel_id = %reader_id, "ignored a malformed websocket message: {e}")
                }
            }
        }
    });

    relay(&kernel, framing, in_rx, &out_tx).await;
    reader.abort();
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    tracing::info!(kernel_id = %kernel.id, session_id, "client disconnected");
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
async fn relay(
    kernel: &Kernel,
    framing: Framing,
    mut in_rx: mpsc::Receiver<ClientMessage>,
    out: &mpsc::Sender<Message>,
) {
    let mut phase_rx: watch::Receiver<Phase> = kernel.phase();
    let mut socks: Option<Sockets> = None;
    let mut generation = 0;
    let mut dirty = true;
    loop {
        if dirty {
            dirty = false;
            let phase = phase_rx.borrow_and_update().clone();
            match phase {
                Phase::Running(ep) if ep.generation != generation => {
                    generation = ep.generation;
                    socks = None;
                    match Sockets::connect(ep).await {
                        Ok(s) => socks = Some(s),
                        Err(e) => {
                            tracing::warn!(kernel_id = %kernel.id, "connecting to the kernel failed: {e}")
                        }
                    }
                }
                Phase::Running(_) => {}
                Phase::Restarting | Phase::Dead => {
                    socks = None;
                    let state = if matches!(phase, Phase::Dead) {
                        "dead"
                    } else {
                        "restarting"
                    };
                    if !forward(out, framing, Channel::Iopub, &channels::status(state)).await {
                        return;
                    }
                }
                Phase::Gone => return,
            }
        }
        tokio::select! {
            changed = phase_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                dirty = true;
            }
            m = in_rx.recv() => {
                let Some(m) = m else { return };
                kernel.touch();
                match socks.as_mut() {
                    Some(s) => s.send(m).await,
                    None => tracing::warn!(kernel_id = %kernel.id, "kernel not running; client message dropped"),
                }
            }
            (channel, r) = recv_any(&mut socks) => {
                let Some(s) = socks.as_ref() else { continue };
                let m = match r {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(channel = channel.as_str(), "kernel socket: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(msg) = channels::from_zmq(m, &s.ep.signer, channel) else { continue };
                if s.is_nudge_reply(&msg) {
                    continue;
                }
                if !forward(out, framing, channel, &msg).await {
                    return;
                }
            }
            () = out.closed() => return,
        }
    }
}

/// Queues one message for the client; false when the writer is gone.
async fn forward(
    out: &mpsc::Sender<Message>,
    framing: Framing,
    channel: Channel,
    msg: &WireMessage,
) -> bool {
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
    out.send(frame).await.is_ok()
}
