//! CurveZMQ client sockets, for kernels that bind their channels as CURVE servers.
//!
//! A launcher asked for transport encryption (`TRANSPORT_ENCRYPTION=auto|required`) reports the
//! kernel's CurveZMQ public key in its payload when the kernel took the key pair (ipykernel >=
//! 7.3). Every socket gateway-lite then connects to that kernel is a CURVE client trusting that
//! key, with a key pair of its own made for that one socket and forgotten with it: the kernel
//! accepts any client key (ipykernel sets no ZAP handler), so a client key proves nothing and
//! need not outlive its socket.
//!
//! The `zeromq` crate the clear-text channels use has no CURVE, so these sockets come from
//! `rzmq` (its `curve` feature). Why that one: the `zmq` crate always builds its own libzmq
//! without libsodium, so without CURVE; no crate links the system libzmq (and a hand-written
//! binding would be blocking, `unsafe` and not static); `omq-tokio` works too but changed its
//! API in most of its 65 releases in six months and rests on a crypto crate weeks old;
//! `rustzmq2` was not in the registry here. `rzmq` is pure Rust on tokio, builds static, and
//! measured at the clear-text floor against ipykernel 7.4 (round trip p50 2.51 ms against
//! 2.40 ms for `zeromq` without CURVE, same run). Interop notes, found against ipykernel 7.4 /
//! libzmq:
//! - A wrong server key fails the handshake without an error on our side: sends queue and
//!   receives wait. Callers bound every wait with a timeout, as they do for clear text.
//! - An `rzmq` socket is an actor: dropping the handle does not close it, so [`CurveSocket`]
//!   closes it when dropped (on the runtime, without waiting; LINGER is 0).
//! - `rzmq`'s DEALER puts an empty frame before the message (and expects one back); the
//!   kernel's ROUTER keeps it with the routing identity, and the Jupyter message itself starts
//!   at `<IDS|MSG>` either way, so [`protocol::wire::split`] reads it unchanged.
//! - `ROUTING_ID` is honoured, so one client's shell and stdin share an identity here too.
//! - `MAXMSGSIZE` bounds each frame (a header announcing more closes the connection before
//!   its body is read), but `rzmq` keeps the parts of a multipart message until its last one
//!   without a bound on their number, and under CURVE the MORE flag is encrypted, so no relay
//!   could count them either (the clear-text sockets' [`super::relay`] does): a CurveZMQ
//!   kernel can still make the gateway hold one message of many parts.

use std::sync::Arc;

use bytes::Bytes;
use protocol::frame_guard::FrameLimits;
use protocol::z85::KEY_LEN;
use rzmq::socket::options::{
    CURVE_PUBLIC_KEY, CURVE_SECRET_KEY, CURVE_SERVER_KEY, LINGER, MAXMSGSIZE, ROUTING_ID, SUBSCRIBE,
};
use rzmq::{Context, Msg, MsgFlags, SocketType};

pub use rzmq::ZmqError;

/// A kernel incarnation's CurveZMQ link: the server key every socket to it trusts, and the
/// `rzmq` context those sockets are made in. One per incarnation, held by its
/// [`super::KernelEndpoints`], so the context ends with the last holder of those endpoints
/// (each socket is closed by its own [`CurveSocket`] before that).
#[derive(Clone)]
pub struct CurveLink {
    server_key: [u8; KEY_LEN],
    context: Context,
}

impl CurveLink {
    /// A link trusting `server_key` (the kernel's `curve_publickey`, decoded).
    pub fn new(server_key: [u8; KEY_LEN]) -> Result<Self, ZmqError> {
        let context = Context::new()?.with_blocky(false);
        Ok(CurveLink {
            server_key,
            context,
        })
    }

    /// The kernel's public key.
    pub fn server_key(&self) -> &[u8; KEY_LEN] {
        &self.server_key
    }
}

impl std::fmt::Debug for CurveLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurveLink")
            .field("server_key", &protocol::z85::encode_key(&self.server_key))
            .finish_non_exhaustive()
    }
}

/// A fresh X25519 key pair for one client socket: (public, secret), raw bytes.
fn client_key_pair() -> Result<([u8; KEY_LEN], x25519_dalek::StaticSecret), ZmqError> {
    let mut seed = [0u8; KEY_LEN];
    getrandom::fill(&mut seed)
        .map_err(|e| ZmqError::Internal(format!("no random bytes for a CurveZMQ key: {e}")))?;
    let secret = x25519_dalek::StaticSecret::from(seed);
    seed.fill(0);
    let public = x25519_dalek::PublicKey::from(&secret);
    Ok((public.to_bytes(), secret))
}

/// One connected CURVE client socket; closed when dropped.
#[derive(Debug)]
pub struct CurveSocket {
    socket: rzmq::Socket,
}

impl CurveSocket {
    /// A socket of `kind` (DEALER or SUB) trusting `server_key`, connected to `endpoint`.
    async fn connect(
        kind: SocketType,
        link: &CurveLink,
        endpoint: &str,
        identity: Option<&[u8]>,
        limits: FrameLimits,
    ) -> Result<CurveSocket, ZmqError> {
        let socket = link.context.socket(kind)?;
        // Owned from here on: an error below closes it.
        let s = CurveSocket { socket };
        s.socket.set_option_raw(LINGER, &0i32.to_ne_bytes()).await?;
        // rzmq's bound on one frame (each part of a message is one encrypted frame); the
        // number of parts it keeps is not bounded (see the module notes).
        let max = i64::try_from(limits.max_message_bytes).unwrap_or(i64::MAX);
        s.socket
            .set_option_raw(MAXMSGSIZE, &max.to_ne_bytes())
            .await?;
        let (public, secret) = client_key_pair()?;
        s.socket
            .set_option_raw(CURVE_SERVER_KEY, &link.server_key)
            .await?;
        s.socket.set_option_raw(CURVE_PUBLIC_KEY, &public).await?;
        // StaticSecret zeroizes itself when dropped at the end of this function.
        s.socket
            .set_option_raw(CURVE_SECRET_KEY, secret.as_bytes())
            .await?;
        if let Some(id) = identity {
            s.socket.set_option_raw(ROUTING_ID, id).await?;
        }
        if kind == SocketType::Sub {
            s.socket.set_option_raw(SUBSCRIBE, b"").await?;
        }
        s.socket.connect(endpoint).await?;
        Ok(s)
    }

    /// A DEALER; see [`super::dealer`].
    pub async fn dealer(
        link: &CurveLink,
        endpoint: &str,
        identity: Option<&[u8]>,
        limits: FrameLimits,
    ) -> Result<Arc<CurveSocket>, ZmqError> {
        Self::connect(SocketType::Dealer, link, endpoint, identity, limits)
            .await
            .map(Arc::new)
    }

    /// A SUB subscribed to everything; see [`super::subscriber`].
    pub async fn subscriber(
        link: &CurveLink,
        endpoint: &str,
        limits: FrameLimits,
    ) -> Result<CurveSocket, ZmqError> {
        Self::connect(SocketType::Sub, link, endpoint, None, limits).await
    }

    /// Sends one multipart message.
    pub async fn send(&self, frames: Vec<Bytes>) -> Result<(), ZmqError> {
        let n = frames.len();
        let msgs = frames
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                let mut m = Msg::from_bytes(f);
                if i + 1 < n {
                    m.set_flags(MsgFlags::MORE);
                }
                m
            })
            .collect();
        self.socket.send_multipart(msgs).await
    }

    /// Receives one multipart message.
    pub async fn recv(&self) -> Result<Vec<Bytes>, ZmqError> {
        let msgs = self.socket.recv_multipart().await?;
        Ok(msgs
            .into_iter()
            .map(|m| m.data_bytes().unwrap_or_default())
            .collect())
    }
}

impl Drop for CurveSocket {
    fn drop(&mut self) {
        let socket = self.socket.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = socket.close().await {
                    tracing::debug!("closing a CurveZMQ socket: {e}");
                }
            });
        }
    }
}
