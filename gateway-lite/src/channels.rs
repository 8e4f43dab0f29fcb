//! ZeroMQ channels to a running kernel: endpoints, sockets, and signed messages.
//!
//! A kernel listens on five ZeroMQ sockets (shell, control, stdin, iopub, heartbeat) at the
//! ports its launcher reported. This module turns a [`KernelEndpoints`] into connected
//! `zeromq` sockets, converts between `zeromq` messages and [`protocol::wire`] messages
//! (every kernel message is verified on the way in), builds the few messages the gateway
//! itself sends (`shutdown_request`, `interrupt_request`, `kernel_info_request`) and the
//! `status` messages it synthesizes for clients (`restarting`, `dead`), and holds one
//! client's set of sockets ([`ClientSockets`]), which the WebSocket bridge uses and the
//! kernel registry keeps while that client is away.
//!
//! A kernel whose launcher reported a CurveZMQ server key ([`KernelEndpoints::curve`]) is
//! reached through [`curve`]'s sockets, any other through the `zeromq` crate's: [`Dealer`] and
//! [`Subscriber`] hide which, so callers send and receive [`Frames`] the same way for both.

pub mod curve;
pub mod relay;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protocol::connection::ConnectionInfo;
use protocol::frame_guard::FrameLimits;
pub use protocol::wire::Channel;
use protocol::wire::{self, Signer, WireMessage, header_fields};
use serde_json::{Value, json};
use time::OffsetDateTime;
use zeromq::{
    DealerRecvHalf, DealerSendHalf, DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend,
    SubSocket, ZmqMessage,
};

use curve::CurveSocket;
use relay::Relay;

/// How long connecting one socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one nudge waits for iopub before sending another.
const NUDGE_WAIT: Duration = Duration::from_millis(500);
/// How many nudges before giving up (the client still gets a working bridge).
const NUDGE_TRIES: usize = 20;
/// Pause after a ZeroMQ receive error, so a broken socket cannot spin.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Where one incarnation of a kernel listens, and its key. A restart makes a new one.
#[derive(Debug, Clone)]
pub struct KernelEndpoints {
    /// The reported connection info.
    pub info: ConnectionInfo,
    /// Host the ports are reachable at.
    pub host: String,
    /// Signs and verifies with the kernel's key.
    pub signer: Signer,
    /// The launcher's comm port, if reported.
    pub comm_port: Option<u16>,
    /// Kernel pid as reported.
    pub pid: Option<i64>,
    /// Kernel process group as reported.
    pub pgid: Option<i64>,
    /// Counts incarnations of the same kernel id.
    pub generation: u64,
    /// This incarnation's launch secret: comm-port requests are signed with it.
    pub secret: Option<std::sync::Arc<str>>,
    /// The kernel's CurveZMQ public key, when it binds its channels as CURVE servers: every
    /// socket to it is then a CURVE client trusting this key.
    pub curve: Option<curve::CurveLink>,
    /// Bounds on what the kernel may send on one socket (see [`relay`]).
    pub limits: FrameLimits,
}

impl KernelEndpoints {
    /// The kernel's port for `channel`.
    fn port(&self, channel: Channel) -> u16 {
        match channel {
            Channel::Shell => self.info.shell_port,
            Channel::Control => self.info.control_port,
            Channel::Stdin => self.info.stdin_port,
            Channel::Iopub => self.info.iopub_port,
        }
    }

    /// `tcp://host:port` for `channel`.
    pub fn endpoint(&self, channel: Channel) -> String {
        let port = self.port(channel);
        if self.host.contains(':') {
            format!("tcp://[{}]:{port}", self.host)
        } else {
            format!("tcp://{}:{port}", self.host)
        }
    }
}

/// Most parts the gateway takes in one kernel message (a Jupyter message has its routing
/// identities, the delimiter, signature, four JSON parts and its buffers).
const MAX_PARTS: u64 = 10_000;

/// The bounds on a kernel's sockets for `--max-message-bytes`: twice that per message, so
/// a message somewhat over the limit still reaches the bridge, which tells the client it was
/// dropped; beyond that the kernel's connection is closed (see [`relay`]).
pub fn frame_limits(max_message_bytes: usize) -> FrameLimits {
    FrameLimits {
        max_message_bytes: u64::try_from(max_message_bytes)
            .unwrap_or(u64::MAX)
            .saturating_mul(2),
        max_parts: MAX_PARTS,
    }
}

/// How often [`wait_listening`] tries the kernel's shell port.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// Waits (at most the connect timeout) until the kernel's shell port accepts TCP
/// connections. The payload arrives before the kernel has bound its ports (the launcher
/// reports them first), and the zeromq crate's own connect retries back off exponentially
/// (50 ms, 100 ms, 200 ms, ...), which would add up to a second to a client's first reply;
/// a plain TCP probe every 20 ms finds the port as soon as it is bound. libzmq closes the
/// probe's connection without complaint when no ZMTP greeting follows.
pub async fn wait_listening(ep: &KernelEndpoints) {
    let target = (ep.host.as_str(), ep.info.shell_port);
    let give_up = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    while tokio::time::Instant::now() < give_up {
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(target));
        if let Ok(Ok(_probe)) = attempt.await {
            return;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// One multipart ZeroMQ message, as frames.
pub type Frames = Vec<Bytes>;

/// A socket operation failed, in either library.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A clear-text socket (`zeromq`).
    #[error("zeromq: {0}")]
    Clear(#[from] zeromq::ZmqError),
    /// A CurveZMQ socket (`rzmq`).
    #[error("zeromq (CurveZMQ): {0}")]
    Curve(#[from] curve::ZmqError),
    /// The relay in front of a clear-text socket could not start.
    #[error("starting the relay to the kernel's {} port: {source}", .channel.as_str())]
    Relay {
        /// The socket's channel.
        channel: Channel,
        /// Why.
        source: std::io::Error,
    },
}

/// A connected DEALER, clear text or CurveZMQ.
pub enum Dealer {
    /// `zeromq`, through its relay.
    Clear(DealerSocket, Arc<Relay>),
    /// `rzmq`, CURVE client.
    Curve(Arc<CurveSocket>),
}

impl Dealer {
    /// Sends one message.
    pub async fn send(&mut self, frames: Frames) -> Result<(), SocketError> {
        match self {
            Dealer::Clear(s, _) => Ok(s.send(zmq_message(frames)).await?),
            Dealer::Curve(s) => Ok(s.send(frames).await?),
        }
    }

    /// Receives one message.
    pub async fn recv(&mut self) -> Result<Frames, SocketError> {
        match self {
            Dealer::Clear(s, _) => Ok(s.recv().await?.into_vec()),
            Dealer::Curve(s) => Ok(s.recv().await?),
        }
    }

    /// Sending and receiving halves, for a task that does both at once.
    fn split(self) -> (DealerTx, DealerRx) {
        match self {
            Dealer::Clear(s, relay) => {
                let (tx, rx) = s.split();
                (
                    DealerTx::Clear {
                        half: tx,
                        _relay: relay.clone(),
                    },
                    DealerRx::Clear {
                        half: rx,
                        _relay: relay,
                    },
                )
            }
            Dealer::Curve(s) => (DealerTx::Curve(s.clone()), DealerRx::Curve(s)),
        }
    }
}

/// The sending half of a [`Dealer`].
enum DealerTx {
    /// The relay is held by both halves: it ends with the last of them.
    Clear {
        half: DealerSendHalf,
        _relay: Arc<Relay>,
    },
    Curve(Arc<CurveSocket>),
}

impl DealerTx {
    async fn send(&mut self, frames: Frames) -> Result<(), SocketError> {
        match self {
            DealerTx::Clear { half: s, .. } => Ok(s.send(zmq_message(frames)).await?),
            DealerTx::Curve(s) => Ok(s.send(frames).await?),
        }
    }
}

/// The receiving half of a [`Dealer`].
enum DealerRx {
    Clear {
        half: DealerRecvHalf,
        _relay: Arc<Relay>,
    },
    Curve(Arc<CurveSocket>),
}

impl DealerRx {
    async fn recv(&mut self) -> Result<Frames, SocketError> {
        match self {
            DealerRx::Clear { half: s, .. } => Ok(s.recv().await?.into_vec()),
            DealerRx::Curve(s) => Ok(s.recv().await?),
        }
    }
}

/// A connected SUB, subscribed to everything, clear text or CurveZMQ.
pub enum Subscriber {
    /// `zeromq`, through its relay.
    Clear(SubSocket, Relay),
    /// `rzmq`, CURVE client.
    Curve(CurveSocket),
}

impl Subscriber {
    /// Receives one message.
    pub async fn recv(&mut self) -> Result<Frames, SocketError> {
        match self {
            Subscriber::Clear(s, _) => Ok(s.recv().await?.into_vec()),
            Subscriber::Curve(s) => Ok(s.recv().await?),
        }
    }
}

fn options(identity: Option<&[u8]>) -> SocketOptions {
    let mut o = SocketOptions::default();
    o.connect_timeout(CONNECT_TIMEOUT);
    if let Some(id) = identity.and_then(|i| zeromq::util::PeerIdentity::try_from(i.to_vec()).ok()) {
        o.peer_identity(id);
    }
    o
}

/// A DEALER connected to `channel`. Shell and stdin of one client share `identity`, so the
/// kernel routes its `input_request` to that client's stdin socket.
/// A CurveZMQ kernel gets a CURVE client socket with a key pair of its own.
pub async fn dealer(
    ep: &KernelEndpoints,
    channel: Channel,
    identity: Option<&[u8]>,
) -> Result<Dealer, SocketError> {
    if let Some(link) = &ep.curve {
        return Ok(Dealer::Curve(
            CurveSocket::dealer(link, &ep.endpoint(channel), identity, ep.limits).await?,
        ));
    }
    let relay = relay(ep, channel)?;
    let mut s = DealerSocket::with_options(options(identity));
    s.connect(relay.endpoint()).await?;
    Ok(Dealer::Clear(s, Arc::new(relay)))
}

/// The relay a clear-text socket on `channel` connects through.
fn relay(ep: &KernelEndpoints, channel: Channel) -> Result<Relay, SocketError> {
    Relay::start(
        (ep.host.clone(), ep.port(channel)),
        ep.limits,
        CONNECT_TIMEOUT,
        channel,
    )
    .map_err(|source| SocketError::Relay { channel, source })
}

/// A SUB connected to iopub, subscribed to everything (a CURVE client for a CurveZMQ kernel).
pub async fn subscriber(ep: &KernelEndpoints) -> Result<Subscriber, SocketError> {
    if let Some(link) = &ep.curve {
        return Ok(Subscriber::Curve(
            CurveSocket::subscriber(link, &ep.endpoint(Channel::Iopub), ep.limits).await?,
        ));
    }
    let relay = relay(ep, Channel::Iopub)?;
    let mut s = SubSocket::with_options(options(None));
    s.connect(relay.endpoint()).await?;
    s.subscribe("").await?;
    Ok(Subscriber::Clear(s, relay))
}

/// Frames as a `zeromq` message.
fn zmq_message(frames: Frames) -> ZmqMessage {
    // A wire message always has at least six frames, so the conversion cannot fail.
    ZmqMessage::try_from(frames).unwrap_or_else(|_| ZmqMessage::from(Vec::<u8>::new()))
}

/// Frames of a wire message.
pub fn to_frames(msg: &WireMessage) -> Frames {
    wire::join(msg).into_iter().map(Bytes::from).collect()
}

/// Splits and verifies a message from the kernel. `None` (logged) when malformed or badly
/// signed: such a message is dropped, as ipykernel drops badly signed requests.
pub fn verified(frames: Frames, signer: &Signer, channel: Channel) -> Option<WireMessage> {
    let msg = match wire::split(&frames) {
        Ok(msg) => msg,
        Err(e) => {
            tracing::warn!(
                channel = channel.as_str(),
                "malformed message from kernel dropped: {e}"
            );
            return None;
        }
    };
    if let Err(e) = signer.verify(&msg) {
        tracing::warn!(
            channel = channel.as_str(),
            "message from kernel dropped: {e}"
        );
        return None;
    }
    Some(msg)
}

/// `2024-05-01T12:00:00.123456Z`: the form Jupyter Server's gateway client parses
/// (`%Y-%m-%dT%H:%M:%S.%fZ`).
pub fn timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// A new, unsigned message from the gateway itself.
pub fn message(msg_type: &str, session: &str, parent: &[u8], content: Value) -> WireMessage {
    let header = json!({
        "msg_id": uuid::Uuid::new_v4().to_string(),
        "msg_type": msg_type,
        "username": "gateway-lite",
        "session": session,
        "date": timestamp(OffsetDateTime::now_utc()),
        "version": "5.3",
    });
    WireMessage {
        identities: Vec::new(),
        signature: Vec::new(),
        header: header.to_string().into_bytes(),
        parent_header: parent.to_vec(),
        metadata: b"{}".to_vec(),
        content: content.to_string().into_bytes(),
        buffers: Vec::new(),
    }
}

/// What the client sees instead of a kernel message over the size limit: an iopub `stream`
/// on stderr with the dropped message's parent, so it shows in the cell that caused it.
pub fn too_large(dropped: &WireMessage, size: usize, max: usize) -> WireMessage {
    let (msg_type, _) = header_fields(&dropped.header).unwrap_or_default();
    let text = format!(
        "gateway-lite: a {msg_type} message of {size} bytes from the kernel was dropped: it is larger than --max-message-bytes ({max}).\n"
    );
    let parent = if serde_json::from_slice::<serde_json::Map<String, Value>>(&dropped.parent_header)
        .is_ok()
    {
        dropped.parent_header.as_slice()
    } else {
        b"{}"
    };
    message(
        "stream",
        "",
        parent,
        json!({"name": "stderr", "text": text}),
    )
}

/// An iopub `status` message the gateway tells clients (`restarting`, `dead`).
pub fn status(state: &str) -> WireMessage {
    message("status", "", b"{}", json!({ "execution_state": state }))
}

/// A `status` message for a dead kernel, with gateway-lite's `reason` beside
/// `execution_state` (clients that do not know the field ignore it).
pub fn dead_status(reason: Option<&str>) -> WireMessage {
    let mut content = json!({ "execution_state": "dead" });
    if let Some(r) = reason {
        content["reason"] = json!(r);
    }
    message("status", "", b"{}", content)
}

/// Sends a signed request on `channel` and waits up to `wait` for the reply to it.
pub async fn request(
    ep: &KernelEndpoints,
    channel: Channel,
    msg_type: &str,
    content: Value,
    wait: Duration,
) -> Result<WireMessage, RequestError> {
    let fut = async {
        let mut sock = dealer(ep, channel, None).await?;
        let mut msg = message(msg_type, &uuid::Uuid::new_v4().to_string(), b"{}", content);
        let sent_id = header_fields(&msg.header)
            .map(|(_, id)| id)
            .unwrap_or_default();
        ep.signer.sign_message(&mut msg);
        sock.send(to_frames(&msg)).await?;
        loop {
            let reply = sock.recv().await?;
            let Some(reply) = verified(reply, &ep.signer, channel) else {
                continue;
            };
            if wire::msg_id(&reply.parent_header).as_deref() == Some(sent_id.as_str()) {
                return Ok(reply);
            }
        }
    };
    tokio::time::timeout(wait, fut)
        .await
        .map_err(|_| RequestError::Timeout(wait))?
}

/// Why a gateway-originated request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// ZeroMQ failed (kernel gone, port closed).
    #[error("{0}")]
    Socket(#[from] SocketError),
    /// No reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
}

/// One client's sockets on one kernel incarnation: DEALERs for shell, control and stdin
/// (shell and stdin share one routing identity, so the kernel's `input_request` comes back to
/// the client that asked) and a SUB on iopub, as Jupyter Server gives each connection.
pub struct ClientSockets {
    /// The incarnation these sockets are connected to.
    pub ep: Arc<KernelEndpoints>,
    shell: DealerTx,
    shell_rx: DealerRx,
    control: DealerTx,
    control_rx: DealerRx,
    stdin: DealerTx,
    stdin_rx: DealerRx,
    iopub: Subscriber,
    /// Ids of the nudge's requests, whose replies are swallowed.
    nudges: HashSet<String>,
}

impl ClientSockets {
    /// Connects all four sockets and nudges the kernel (see [`Self::nudge`]).
    pub async fn connect(ep: Arc<KernelEndpoints>) -> Result<Self, SocketError> {
        wait_listening(&ep).await;
        let identity = uuid::Uuid::new_v4().to_string().into_bytes();
        let (shell, shell_rx) = dealer(&ep, Channel::Shell, Some(&identity)).await?.split();
        let (control, control_rx) = dealer(&ep, Channel::Control, None).await?.split();
        let (stdin, stdin_rx) = dealer(&ep, Channel::Stdin, Some(&identity)).await?.split();
        let iopub = subscriber(&ep).await?;
        let mut s = ClientSockets {
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

    /// Sends `kernel_info_request` until an iopub message arrives, as Jupyter Server does, so
    /// a client's first request cannot race the iopub subscription. The nudges' replies are
    /// not forwarded.
    async fn nudge(&mut self) {
        let session = uuid::Uuid::new_v4().to_string();
        for _ in 0..NUDGE_TRIES {
            let mut msg = message("kernel_info_request", &session, b"{}", json!({}));
            if let Some((_, id)) = header_fields(&msg.header) {
                self.nudges.insert(id);
            }
            self.ep.signer.sign_message(&mut msg);
            if self.shell.send(to_frames(&msg)).await.is_err() {
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

    /// Signs and sends a client's message on `channel` (iopub takes none).
    pub async fn send(&mut self, channel: Channel, mut msg: WireMessage) {
        self.ep.signer.sign_message(&mut msg);
        let z = to_frames(&msg);
        let r = match channel {
            Channel::Shell => self.shell.send(z).await,
            Channel::Control => self.control.send(z).await,
            Channel::Stdin => self.stdin.send(z).await,
            Channel::Iopub => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!(
                channel = channel.as_str(),
                "sending to the kernel failed: {e}"
            );
        }
    }

    /// The next message from the kernel on any channel, verified; `None` for a message that
    /// was bad (logged), answered a nudge, or a receive error (after a short pause).
    pub async fn recv(&mut self) -> (Channel, Option<WireMessage>) {
        let (channel, r) = tokio::select! {
            r = self.iopub.recv() => (Channel::Iopub, r),
            r = self.shell_rx.recv() => (Channel::Shell, r),
            r = self.control_rx.recv() => (Channel::Control, r),
            r = self.stdin_rx.recv() => (Channel::Stdin, r),
        };
        let m = match r {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(channel = channel.as_str(), "kernel socket: {e}");
                tokio::time::sleep(RECV_ERROR_PAUSE).await;
                return (channel, None);
            }
        };
        let msg = verified(m, &self.ep.signer, channel);
        (channel, msg.filter(|m| !self.is_nudge_reply(m)))
    }

    /// Whether `msg` answers one of the nudges.
    fn is_nudge_reply(&self, msg: &WireMessage) -> bool {
        !self.nudges.is_empty()
            && wire::msg_id(&msg.parent_header).is_some_and(|id| self.nudges.contains(&id))
    }
}

/// [`ClientSockets::recv`] on `socks`, or never when there are none.
pub async fn recv_any(socks: &mut Option<ClientSockets>) -> (Channel, Option<WireMessage>) {
    match socks {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_has_microseconds_and_z() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        assert_eq!(timestamp(t), "2023-11-14T22:13:20.123456Z");
    }
}
