//! The bridge between one client WebSocket and a kernel's ZeroMQ sockets.
//!
//! Each WebSocket gets its own sockets ([`ClientSockets`]: DEALERs for shell, control and
//! stdin, a SUB on iopub), as Jupyter Server does, so every connection of a kernel sees all
//! of its iopub and stdin comes back to the client that asked. Three tracked tasks serve a
//! connection: a reader (WebSocket → decoded messages), a writer (frames → WebSocket) and
//! the relay in between, which signs client messages with the kernel's key, verifies the
//! kernel's (dropping bad ones with a log line) and forwards the JSON parts and binary
//! buffers unchanged. All three end when the client leaves, the kernel is gone, or the
//! gateway stops.
//!
//! Everything a browser can fill is bounded. Client → kernel: the WebSocket layer refuses a
//! message over `--max-message-bytes` (the connection is closed with 1009), at most
//! [`IN_QUEUE`] decoded messages wait for the relay, and while the kernel is not connected
//! at most [`HELD_MAX`] messages and [`HELD_MAX_BYTES`] bytes are held for it. Kernel →
//! client: a message over `--max-message-bytes` is dropped and the client is shown why (an
//! iopub `stream` on stderr, under the dropped message's parent, so it appears in the cell
//! that caused it); at most [`OUT_QUEUE`] frames and [`OUT_BYTES`] bytes wait for the writer. A client that stops reading is
//! **back-pressured, not dropped**: its queue fills, its relay stops reading its own ZeroMQ
//! sockets (the `zeromq` crate reads a socket only when asked, so nothing piles up in the
//! gateway; a CurveZMQ kernel's `rzmq` sockets read ahead up to their receive high-water mark,
//! 256 messages per socket, then stop), TCP fills up to the kernel, and the kernel's PUB socket discards iopub for that
//! one subscriber once its high-water mark is reached. Other connections, which have their
//! own sockets, carry on. The stalled connection ends when the client closes it or TCP gives
//! up.
//!
//! The relay follows the kernel's [`Phase`]: it reconnects after a restart (new ports and
//! key), and tells the client `status: restarting` (automatic restarts only, as Jupyter
//! Server) / `status: dead` on iopub.
//!
//! When a connection ends while the kernel still runs, its sockets are handed to the
//! kernel's [`Clients`](crate::kernels::Clients), which keep what arrives for the next
//! connection of the same `session_id` (bounded; see that module).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use protocol::wire::WireMessage;
use protocol::wsframe::{self, ClientMessage, Framing, OutFrame};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::channels::{self, Channel, ClientSockets};
use crate::kernels::{Kept, Kernel, Phase};
use crate::tasks::Tasks;

/// Frames queued toward one client.
pub const OUT_QUEUE: usize = 256;
/// Bytes of frames queued toward one client. A single larger frame still goes through, alone.
pub const OUT_BYTES: usize = 16 * 1024 * 1024;
/// Decoded client messages queued toward the kernel (each at most `--max-message-bytes`).
pub const IN_QUEUE: usize = 64;
/// Malformed client messages logged as warnings per connection; the rest go to debug.
const MALFORMED_WARNINGS: usize = 10;
/// How long the socket stays open after a close frame sent because of a bad message.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long the writer may take to flush after the relay ended.
const WRITER_FLUSH: Duration = Duration::from_secs(5);
/// Pause before connecting again after a failed connect to a running kernel.
const CONNECT_RETRY: Duration = Duration::from_millis(500);
/// Client messages held while the kernel's sockets are not connected (starting, restarting,
/// a failed connect being retried); delivered in order once they are.
const HELD_MAX: usize = 256;
/// Bytes of client messages held so: the oldest go first beyond it.
pub const HELD_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Serves one WebSocket until the client or the kernel goes away, or the gateway stops.
pub async fn serve(
    socket: WebSocket,
    kernel: Arc<Kernel>,
    framing: Framing,
    session_id: String,
    max_message_bytes: usize,
    tasks: Tasks,
) {
    let (presence, resumed) = kernel.clients.arrive(&session_id).await;
    tracing::info!(
        kernel_id = %kernel.id,
        session_id,
        ?framing,
        resumed = resumed.is_some(),
        "client connected"
    );
    let (sink, stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel::<(Message, OwnedSemaphorePermit)>(OUT_QUEUE);
    let out = Outbox {
        tx: out_tx,
        budget: Arc::new(Semaphore::new(OUT_BYTES)),
        max_message_bytes,
    };
    let (in_tx, in_rx) = mpsc::channel::<ClientMessage>(IN_QUEUE);
    let (close_tx, close_rx) = oneshot::channel::<CloseFrame>();

    let writer = tasks.spawn_until_stopped(write(sink, out_rx, close_rx));
    let reader =
        tasks.spawn_until_stopped(read(stream, kernel.id.clone(), framing, in_tx, close_tx));
    let left = tokio::select! {
        left = relay(&kernel, framing, in_rx, &out, resumed) => left,
        () = tasks.closing().cancelled() => None,
    };
    reader.abort();
    drop(out);
    let _ = tokio::time::timeout(WRITER_FLUSH, writer).await;
    presence.leave(&session_id, left, kernel.phase(), &tasks);
    tracing::info!(kernel_id = %kernel.id, session_id, "client disconnected");
}

/// Sends queued frames to the client, then the close frame.
async fn write(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut out_rx: mpsc::Receiver<(Message, OwnedSemaphorePermit)>,
    close_rx: oneshot::Receiver<CloseFrame>,
) {
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
            // The rest of the refused message is still unread in our socket, and closing a
            // socket with unread input makes the kernel reset the connection, which can
            // destroy the close frame before the client reads it (browsers then report 1006).
            // So the socket stays open a moment after the close frame.
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
}

/// Decodes client frames for the relay; a bad frame is skipped, a protocol error ends it.
async fn read(
    mut stream: futures_util::stream::SplitStream<WebSocket>,
    kernel_id: String,
    framing: Framing,
    in_tx: mpsc::Sender<ClientMessage>,
    close_tx: oneshot::Sender<CloseFrame>,
) {
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
                tracing::warn!(kernel_id, "closing websocket: {text}");
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
                    tracing::warn!(kernel_id, "ignored a malformed websocket message: {e}");
                    if malformed == MALFORMED_WARNINGS {
                        tracing::warn!(
                            kernel_id,
                            "further malformed messages on this connection are logged at debug level"
                        );
                    }
                } else {
                    tracing::debug!(kernel_id, "ignored a malformed websocket message: {e}");
                }
            }
        }
    }
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
    /// Larger kernel messages are dropped (with a note to the client).
    max_message_bytes: usize,
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

/// Moves messages both ways until the client leaves, the writer fails or the kernel is gone.
/// Returns the sockets when the client left while the kernel still runs, so they can be
/// parked for the next connection of the same session.
async fn relay(
    kernel: &Kernel,
    framing: Framing,
    mut in_rx: mpsc::Receiver<ClientMessage>,
    out: &Outbox,
    resumed: Option<Kept>,
) -> Option<ClientSockets> {
    let mut phase_rx: watch::Receiver<Phase> = kernel.phase();
    let mut socks: Option<ClientSockets> = None;
    let mut generation = 0;
    if let Some(kept) = resumed {
        if kept.backlog.dropped() > 0 {
            tracing::warn!(
                kernel_id = %kernel.id,
                dropped = kept.backlog.dropped(),
                "some messages kept while no client was connected were dropped (backlog full)"
            );
        }
        if kept.backlog.items().len() > 0 {
            tracing::info!(kernel_id = %kernel.id, messages = kept.backlog.items().len(), "replaying kept messages");
        }
        for (channel, msg) in kept.backlog.items() {
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
    let mut held = Held::default();
    loop {
        if dirty {
            dirty = false;
            let phase = phase_rx.borrow_and_update().clone();
            match phase {
                Phase::Running(ep) if ep.generation != generation || socks.is_none() => {
                    generation = ep.generation;
                    socks = None;
                    retry = None;
                    match ClientSockets::connect(ep).await {
                        Ok(mut s) => {
                            for m in held.drain() {
                                s.send(m.channel, m.msg).await;
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
                    let status = if matches!(phase, Phase::Dead) {
                        channels::dead_status(kernel.death_reason().as_deref())
                    } else {
                        channels::status("restarting")
                    };
                    if !forward(out, framing, Channel::Iopub, &status).await {
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
                    Some(s) => s.send(m.channel, m.msg).await,
                    None if matches!(&*phase_rx.borrow(), Phase::Dead) => {
                        tracing::warn!(kernel_id = %kernel.id, "kernel is dead; client message dropped");
                    }
                    None => {
                        if held.push(m) {
                            tracing::warn!(kernel_id = %kernel.id, "kernel not connected; oldest held client messages dropped");
                        }
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
            (channel, msg) = channels::recv_any(&mut socks) => {
                let Some(msg) = msg else { continue };
                if !forward(out, framing, channel, &msg).await {
                    return socks;
                }
            }
            () = out.closed() => return socks,
        }
    }
}

/// Client messages held for a kernel that is not connected, bounded in count and bytes.
#[derive(Default)]
struct Held {
    items: VecDeque<ClientMessage>,
    bytes: usize,
}

impl Held {
    /// Holds `m`, dropping the oldest while a bound is exceeded; whether any were dropped.
    fn push(&mut self, m: ClientMessage) -> bool {
        self.bytes += m.msg.byte_len();
        self.items.push_back(m);
        let mut dropped = false;
        while self.items.len() > HELD_MAX || self.bytes > HELD_MAX_BYTES {
            let Some(old) = self.items.pop_front() else {
                break;
            };
            self.bytes -= old.msg.byte_len();
            dropped = true;
        }
        dropped
    }

    fn drain(&mut self) -> impl Iterator<Item = ClientMessage> + '_ {
        self.bytes = 0;
        self.items.drain(..)
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }
}

/// Queues one message for the client; false when the writer is gone. A message over
/// `--max-message-bytes` is replaced by a note on stderr under the same parent.
async fn forward(out: &Outbox, framing: Framing, channel: Channel, msg: &WireMessage) -> bool {
    let size = msg.byte_len();
    if size > out.max_message_bytes {
        tracing::warn!(
            channel = channel.as_str(),
            size,
            max = out.max_message_bytes,
            "message from kernel dropped: larger than --max-message-bytes"
        );
        let note = channels::too_large(msg, size, out.max_message_bytes);
        return Box::pin(forward(out, framing, Channel::Iopub, &note)).await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_messages_are_bounded_in_bytes() {
        let m = |n: usize| ClientMessage {
            channel: Channel::Shell,
            msg: WireMessage {
                content: vec![b'x'; n],
                ..WireMessage::default()
            },
        };
        let mut h = Held::default();
        assert!(!h.push(m(HELD_MAX_BYTES / 2)));
        assert!(!h.push(m(HELD_MAX_BYTES / 2)));
        assert!(h.push(m(10)), "the oldest goes");
        assert_eq!(h.len(), 2);
        assert!(h.bytes <= HELD_MAX_BYTES);
        for _ in 0..HELD_MAX {
            h.push(m(1));
        }
        assert_eq!(h.len(), HELD_MAX);
        assert_eq!(h.drain().count(), HELD_MAX);
        assert!(h.is_empty() && h.bytes == 0);
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
