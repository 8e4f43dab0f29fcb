//! The response listener: where launchers deliver their encrypted connection payloads.
//!
//! Every launcher opens one TCP connection to the address it was given, writes its payload
//! and closes (Enterprise Gateway's launchers do the same; its `ResponseManager` reads them).
//! One listener serves every kernel. Each connection is
//! read to EOF on its own task, with a size cap and a deadline, so a silent or endless peer
//! delays nobody (EG reads one connection at a time with no timeout). The payload is
//! decrypted with the gateway's RSA key and handed to the start that waits for that kernel
//! id, through a `oneshot`, so the start completes the moment the payload arrives instead of
//! on EG's 0.5 s poll. A payload for an id nobody waits for is logged and dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::payload::{self, LaunchReport, PrivateKey};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::tasks::Tasks;

/// How long one launcher may take to write its payload.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Payload connections read at the same time; more wait in the listen backlog.
const MAX_CONCURRENT: usize = 64;

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<LaunchReport>>>>;

/// The listener's shared state.
#[derive(Debug, Clone)]
pub struct ResponseListener {
    addr: SocketAddr,
    public_key: String,
    waiters: Waiters,
}

/// A registered wait for one kernel's payload; dropping it unregisters.
#[derive(Debug)]
pub struct Pending {
    kernel_id: String,
    waiters: Waiters,
    /// Completes with the decrypted report.
    pub report: oneshot::Receiver<LaunchReport>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Ok(mut w) = self.waiters.lock() {
            w.remove(&self.kernel_id);
        }
    }
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
        let key = Arc::new(key);
        tasks.spawn_until_stopped(accept_loop(listener, key, waiters.clone(), tasks.clone()));
        tracing::info!(%addr, "response listener ready");
        Ok(ResponseListener {
            addr,
            public_key,
            waiters,
        })
    }

    /// `HOST:PORT` for `--response-address` (IPv6 in brackets).
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The public key for `--public-key`, in EG's form.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Registers a wait for `kernel_id`'s payload. A second registration replaces the first.
    pub fn expect(&self, kernel_id: &str) -> Pending {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(kernel_id.to_owned(), tx);
        }
        Pending {
            kernel_id: kernel_id.to_owned(),
            waiters: self.waiters.clone(),
            report: rx,
        }
    }
}

async fn accept_loop(listener: TcpListener, key: Arc<PrivateKey>, waiters: Waiters, tasks: Tasks) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let key = key.clone();
                let waiters = waiters.clone();
                let blocking = tasks.clone();
                tasks.spawn_until_stopped(async move {
                    if let Err(e) = handle(stream, key, waiters, &blocking).await {
                        tracing::warn!(%peer, "launch payload rejected: {e}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!("response listener accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Why one payload connection was dropped.
#[derive(Debug, thiserror::Error)]
enum ResponseError {
    #[error("reading failed: {0}")]
    Io(#[from] std::io::Error),
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
}

async fn handle(
    stream: TcpStream,
    key: Arc<PrivateKey>,
    waiters: Waiters,
    tasks: &Tasks,
) -> Result<(), ResponseError> {
    let cap = payload::MAX_PAYLOAD_LEN;
    let mut buf = Vec::with_capacity(4096);
    let read = async {
        let mut limited = stream.take(cap as u64 + 1);
        limited.read_to_end(&mut buf).await
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| ResponseError::Timeout(READ_TIMEOUT))??;
    if buf.len() > cap {
        return Err(ResponseError::TooLong(cap));
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        tracing::debug!("empty connection on the response port ignored");
        return Ok(());
    }
    let report = tasks
        .spawn_blocking(move || {
            let inner = payload::decrypt(&key, &buf)?;
            LaunchReport::from_json(&inner)
        })
        .await
        .map_err(|_| ResponseError::Join)??;
    let waiter = waiters
        .lock()
        .ok()
        .and_then(|mut w| w.remove(&report.kernel_id));
    match waiter {
        Some(tx) => {
            let id = report.kernel_id.clone();
            if tx.send(report).is_err() {
                return Err(ResponseError::Unexpected(id));
            }
            Ok(())
        }
        None => Err(ResponseError::Unexpected(report.kernel_id)),
    }
}
