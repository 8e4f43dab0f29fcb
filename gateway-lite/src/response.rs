//! The response listener: where launchers deliver their encrypted connection payloads.
//!
//! Every launcher opens one TCP connection to the address it was given, writes its payload
//! and closes (Enterprise Gateway's launchers do the same; its `ResponseManager` reads them).
//! One listener serves every kernel. Each connection is read on its own task; the payload is
//! decrypted with the gateway's RSA key and handed to the start that waits for that kernel
//! id, through a `oneshot`, so the start completes the moment the payload arrives instead of
//! on EG's 0.5 s poll.
//!
//! **Who may report.** The public key is no secret (every launcher gets it on its command
//! line) and kernel ids show in `ps`, so encryption alone authenticates nothing. A launch of
//! `kernel-launcher` therefore gets a fresh secret in its environment, and the wait for its
//! payload accepts only a report that returns that secret (compared in constant time); any
//! other report for the id is refused, counted and logged, and the wait goes on, so a flood
//! of forged payloads cannot take a launch's place. Such a launcher also seals its payload
//! with the secret (`protocol::signed::seal_payload`): the seal is checked against the
//! pending launches' secrets before anything is decrypted, so forged payloads cost a hash
//! each, not an RSA operation, and cannot crowd out a real one. Launches of other launchers
//! (Enterprise Gateway's own scripts) wait without a secret, as EG does: unsealed payloads
//! are decrypted only while such a launch is pending, [`PLAIN_DECRYPTS`] at a time. Where the
//! payload came from is handed on with it, for the launch to check against where it started
//! the launcher.
//!
//! **Bounded.** Connections are accepted at once and each must deliver its first byte within
//! [`FIRST_BYTE`] and all of it within [`READ_TIMEOUT`] (at most
//! [`payload::MAX_PAYLOAD_LEN`] bytes), so idle or slow peers hold nothing for long; at most
//! [`MAX_PER_PEER`] connections of one address and [`MAX_OPEN`] in all are read at once (more
//! are closed unread), so a few hundred idle connections delay no launch.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::payload::{self, LaunchReport, PrivateKey};
use protocol::signed::{self, same};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};

use crate::tasks::Tasks;

/// How long a new connection may stay silent.
pub const FIRST_BYTE: Duration = Duration::from_secs(1);
/// How long one launcher may take to write its whole payload.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections of one peer address read at the same time.
pub const MAX_PER_PEER: usize = 2048;
/// Connections read at the same time, in all.
pub const MAX_OPEN: usize = 8192;
/// Unsealed payloads decrypted at the same time (only launches of other launchers get
/// them); more wait, up to [`READ_TIMEOUT`].
pub const PLAIN_DECRYPTS: usize = 2;

/// A decrypted report that passed the checks of its wait, and where it came from.
#[derive(Debug)]
pub struct Delivery {
    /// The report.
    pub report: LaunchReport,
    /// The peer that sent it.
    pub peer: SocketAddr,
}

struct Waiter {
    /// The secret the report must return, if the launch has one.
    secret: Option<String>,
    tx: oneshot::Sender<Delivery>,
}

type Waiters = Arc<Mutex<HashMap<String, Waiter>>>;

/// Payloads refused, by reason, for `/metrics`.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Could not be read or decrypted (or too long, or too slow).
    pub unreadable: AtomicU64,
    /// For a kernel id nobody waits for.
    pub unexpected: AtomicU64,
    /// Without the launch's secret, or with a wrong one.
    pub secret: AtomicU64,
    /// From another address than the launcher's, or with ports outside the range (counted
    /// by the launch that checks them).
    pub mismatch: AtomicU64,
    /// Connections closed unread (too many open).
    pub crowded: AtomicU64,
}

impl Refusals {
    /// `(reason, count)` pairs.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("unreadable", get(&self.unreadable)),
            ("unexpected", get(&self.unexpected)),
            ("secret", get(&self.secret)),
            ("mismatch", get(&self.mismatch)),
            ("crowded", get(&self.crowded)),
        ]
    }
}

/// The listener's shared state.
#[derive(Debug, Clone)]
pub struct ResponseListener {
    addr: SocketAddr,
    public_key: String,
    waiters: Waiters,
    refusals: Arc<Refusals>,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A registered wait for one kernel's payload; dropping it unregisters.
#[derive(Debug)]
pub struct Pending {
    kernel_id: String,
    waiters: Waiters,
    /// Completes with the decrypted, checked report.
    pub report: oneshot::Receiver<Delivery>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Ok(mut w) = self.waiters.lock() {
            w.remove(&self.kernel_id);
        }
    }
}

/// Connections open per peer address, and in all.
struct Open {
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    all: Arc<Semaphore>,
}

impl ResponseListener {
    /// Binds `ip:0` and starts accepting payloads for `key`, on `tasks`.
    pub async fn start(
        ip: std::net::IpAddr,
        key: PrivateKey,
        tasks: &Tasks,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let waiters: Waiters = Arc::default();
        let public_key = key.public_key().to_eg_string();
        let refusals = Arc::new(Refusals::default());
        let ctx = Arc::new(Reader {
            key,
            waiters: waiters.clone(),
            refusals: refusals.clone(),
            tasks: tasks.clone(),
            plain: Semaphore::new(PLAIN_DECRYPTS),
        });
        tasks.spawn_until_stopped(accept_loop(listener, ctx, tasks.clone()));
        tracing::info!(%addr, "response listener ready");
        Ok(ResponseListener {
            addr,
            public_key,
            waiters,
            refusals,
        })
    }

    /// `HOST:PORT` for `--response-address` (IPv6 in brackets).
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The address the listener is bound to.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    /// The public key for `--public-key`, in EG's form.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Refusals so far.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Registers a wait for `kernel_id`'s payload, which must return `secret` if given. A
    /// second registration replaces the first.
    pub fn expect(&self, kernel_id: &str, secret: Option<String>) -> Pending {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(kernel_id.to_owned(), Waiter { secret, tx });
        }
        Pending {
            kernel_id: kernel_id.to_owned(),
            waiters: self.waiters.clone(),
            report: rx,
        }
    }
}

/// What every payload reader needs.
struct Reader {
    key: PrivateKey,
    waiters: Waiters,
    refusals: Arc<Refusals>,
    tasks: Tasks,
    /// Decryptions of unsealed payloads under way.
    plain: Semaphore,
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Reader>, tasks: Tasks) {
    let open = Arc::new(Open {
        per_peer: Mutex::default(),
        all: Arc::new(Semaphore::new(MAX_OPEN)),
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("response listener accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&open, peer.ip()) else {
            let n = ctx.refusals.crowded.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(%peer, refused = n, "response listener: too many open connections; closing new ones unread");
            }
            continue;
        };
        let ctx = ctx.clone();
        tasks.spawn_until_stopped(async move {
            if let Err(e) = handle(stream, peer, &ctx).await {
                let counter = match e {
                    ResponseError::Unexpected(_) => &ctx.refusals.unexpected,
                    ResponseError::Secret(_) => &ctx.refusals.secret,
                    _ => &ctx.refusals.unreadable,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "launch payload refused: {e}");
            }
            drop(slot);
        });
    }
}

/// One connection's place under the limits; given back when dropped.
struct Slot {
    open: Arc<Open>,
    peer: IpAddr,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Slot {
    fn take(open: &Arc<Open>, peer: IpAddr) -> Option<Slot> {
        let permit = open.all.clone().try_acquire_owned().ok()?;
        let mut per_peer = open.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_peer.entry(peer).or_default();
        if *n >= MAX_PER_PEER {
            return None;
        }
        *n += 1;
        Some(Slot {
            open: open.clone(),
            peer,
            _permit: permit,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_peer = self.open.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_peer.remove(&self.peer);
            }
        }
    }
}

/// Why one payload connection was dropped.
#[derive(Debug, thiserror::Error)]
enum ResponseError {
    #[error("reading failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer sent nothing within {0:?}")]
    Silent(Duration),
    #[error("peer did not finish within {0:?}")]
    Timeout(Duration),
    #[error("payload longer than {0} bytes")]
    TooLong(usize),
    #[error("{0}")]
    Payload(#[from] payload::PayloadError),
    #[error("decryption task failed")]
    Join,
    #[error("kernel id {0:?} is not starting here (late, duplicate or foreign payload)")]
    Unexpected(String),
    #[error("the report for kernel {0} does not carry its launch's secret (forged or foreign)")]
    Secret(String),
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &Arc<Reader>,
) -> Result<(), ResponseError> {
    let cap = payload::MAX_PAYLOAD_LEN;
    let mut buf = Vec::with_capacity(4096);
    let mut limited = stream.take(cap as u64 + 1);
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(FIRST_BYTE, limited.read(&mut first))
        .await
        .map_err(|_| ResponseError::Silent(FIRST_BYTE))??;
    if n == 0 {
        tracing::debug!(%peer, "empty connection on the response port ignored");
        return Ok(());
    }
    buf.push(first[0]);
    tokio::time::timeout(READ_TIMEOUT, limited.read_to_end(&mut buf))
        .await
        .map_err(|_| ResponseError::Timeout(READ_TIMEOUT))??;
    if buf.len() > cap {
        return Err(ResponseError::TooLong(cap));
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        tracing::debug!(%peer, "empty connection on the response port ignored");
        return Ok(());
    }
    let (report, sealed_for) = match signed::open_payload(&buf) {
        Some((tag, body)) => {
            // Whose launch sealed it? A hash per pending launch, no decryption yet.
            let owner = {
                let waiters = ctx.waiters.lock().unwrap_or_else(|p| p.into_inner());
                waiters.iter().find_map(|(id, w)| {
                    let secret = w.secret.as_deref()?;
                    signed::payload_sealed_with(secret.as_bytes(), body, &tag).then(|| id.clone())
                })
            };
            let Some(owner) = owner else {
                return Err(ResponseError::Secret(
                    "(sealed by no pending launch)".into(),
                ));
            };
            (decrypt(ctx, body.to_vec()).await?, Some(owner))
        }
        None => {
            let any_plain = ctx
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .any(|w| w.secret.is_none());
            if !any_plain {
                return Err(ResponseError::Secret(
                    "(unsealed, and every pending launch has a secret)".into(),
                ));
            }
            let _slot = tokio::time::timeout(READ_TIMEOUT, ctx.plain.acquire())
                .await
                .map_err(|_| ResponseError::Timeout(READ_TIMEOUT))?
                .map_err(|_| ResponseError::Join)?;
            (decrypt(ctx, buf).await?, None)
        }
    };
    let mut waiters = ctx.waiters.lock().unwrap_or_else(|p| p.into_inner());
    let Some(waiter) = waiters.get(&report.kernel_id) else {
        return Err(ResponseError::Unexpected(report.kernel_id));
    };
    if sealed_for.as_ref().is_some_and(|o| *o != report.kernel_id) {
        return Err(ResponseError::Secret(report.kernel_id));
    }
    if let Some(secret) = &waiter.secret {
        let given = report.launch_secret.as_deref().unwrap_or_default();
        if !same(given.as_bytes(), secret.as_bytes()) {
            // The wait stays: the real launcher's report may still come.
            return Err(ResponseError::Secret(report.kernel_id));
        }
    }
    let id = report.kernel_id.clone();
    let Some(waiter) = waiters.remove(&id) else {
        return Err(ResponseError::Unexpected(id));
    };
    drop(waiters);
    waiter
        .tx
        .send(Delivery { report, peer })
        .map_err(|_| ResponseError::Unexpected(id))
}

/// Decrypts a payload (RSA, off the runtime's workers) and reads its report.
async fn decrypt(ctx: &Arc<Reader>, bytes: Vec<u8>) -> Result<LaunchReport, ResponseError> {
    let reader = ctx.clone();
    ctx.tasks
        .spawn_blocking(move || {
            let inner = payload::decrypt(&reader.key, &bytes)?;
            LaunchReport::from_json(&inner)
        })
        .await
        .map_err(|_| ResponseError::Join)?
        .map_err(ResponseError::Payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_peer_and_total_limits() {
        let open = Arc::new(Open {
            per_peer: Mutex::default(),
            all: Arc::new(Semaphore::new(MAX_PER_PEER + 1)),
        });
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let held: Vec<Slot> = (0..MAX_PER_PEER)
            .map(|_| Slot::take(&open, a).unwrap())
            .collect();
        assert!(Slot::take(&open, a).is_none(), "per-peer limit");
        let other = Slot::take(&open, b).expect("another peer still gets in");
        assert!(Slot::take(&open, b).is_none(), "total limit");
        drop(held);
        assert!(Slot::take(&open, a).is_some(), "places come back");
        drop(other);
        assert!(open.per_peer.lock().unwrap().len() <= 1);
    }
}
