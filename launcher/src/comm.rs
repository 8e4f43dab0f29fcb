//! The comm port: the gateway's side channel for interrupt, liveness probes
//! and shutdown.
//!
//! EG's client connects with a 5 ms timeout, writes one JSON object, closes,
//! and never waits for a reply. A slow accept loop therefore silently drops
//! interrupts, and EG's own listener (backlog 1, one request at a time) dies
//! on an empty connection (its `json.loads("")` raises), which makes EG think
//! the kernel died when a port scanner or health check touches it. Here the
//! accept loop only accepts; each connection is read on its own short-lived
//! thread, with a size cap, a read timeout and a cap on concurrent readers,
//! and every bad request is logged and dropped.
//!
//! Liveness is the port itself: once the kernel is gone, or after
//! `{"shutdown":1}`, the listener is shut down so the next connect is refused,
//! which is how EG concludes the kernel is dead. A `{"shutdown":1}` that is obeyed
//! is acknowledged on its connection (`protocol::comm::SHUTDOWN_ACK`), so
//! gateway-lite can answer a DELETE without waiting for the kernel's exit.
//!
//! With a launch secret (gateway-lite gives one in `KERNEL_LAUNCHER_SECRET`),
//! only requests signed with it are obeyed, each once and only while fresh
//! (`protocol::signed`); anything else is refused and logged, so a neighbour on
//! the kernel's network cannot interrupt, kill or stop it. Without one the port
//! speaks Enterprise Gateway's unsigned form, as EG expects.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::comm::{self, CommRequest, MAX_REQUEST_LEN};
use protocol::signed::{self, ReplayGuard};

use crate::supervise::Event;

/// Connections read at the same time; more are closed unread.
const MAX_READERS: usize = 32;
/// A peer that has not finished its request by then is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// State shared between the accept loop, its readers and the supervisor.
#[derive(Debug)]
struct Shared {
    listener: TcpListener,
    closed: AtomicBool,
    kernel_alive: AtomicBool,
    readers: AtomicUsize,
    /// Requests must be signed with this, when set.
    secret: Option<String>,
    /// Nonces of the signed requests seen lately.
    replays: Mutex<ReplayGuard>,
}

impl Shared {
    fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            // Shutting a listening socket down wakes the blocked accept() and
            // makes new connects fail with ECONNREFUSED.
            if let Err(e) = nix::sys::socket::shutdown(
                self.listener.as_raw_fd(),
                nix::sys::socket::Shutdown::Both,
            ) {
                log::debug!("comm port shutdown: {e}");
            }
            log::info!("comm port closed");
        }
    }
}

/// The supervisor's handle on the comm port.
#[derive(Debug, Clone)]
pub struct CommPort {
    shared: Arc<Shared>,
}

impl CommPort {
    /// Starts accepting on `listener`; requests go to `events`. With `secret`, only
    /// requests signed with it are obeyed.
    pub fn serve(
        listener: TcpListener,
        events: Sender<Event>,
        secret: Option<String>,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            listener,
            closed: AtomicBool::new(false),
            kernel_alive: AtomicBool::new(true),
            readers: AtomicUsize::new(0),
            secret,
            replays: Mutex::default(),
        });
        let port = CommPort { shared };
        let acceptor = port.clone();
        std::thread::Builder::new()
            .name("comm-accept".into())
            .spawn(move || acceptor.accept_loop(events))?;
        Ok(port)
    }

    /// Stops listening; later connects are refused.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Tells probes that the kernel has exited.
    pub fn kernel_exited(&self) {
        self.shared.kernel_alive.store(false, Ordering::SeqCst);
    }

    fn accept_loop(&self, events: Sender<Event>) {
        loop {
            let accepted = self.shared.listener.accept();
            if self.shared.closed.load(Ordering::SeqCst) {
                break;
            }
            match accepted {
                Ok((stream, peer)) => {
                    if self.shared.readers.fetch_add(1, Ordering::SeqCst) >= MAX_READERS {
                        self.shared.readers.fetch_sub(1, Ordering::SeqCst);
                        log::warn!(
                            "comm port: too many open requests; dropping connection from {peer}"
                        );
                        continue;
                    }
                    let me = self.clone();
                    let tx = events.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("comm-read".into())
                            .spawn(move || {
                                me.handle(stream, &peer.to_string(), &tx);
                                me.shared.readers.fetch_sub(1, Ordering::SeqCst);
                            });
                    if let Err(e) = spawned {
                        self.shared.readers.fetch_sub(1, Ordering::SeqCst);
                        log::warn!("comm port: cannot start a reader: {e}");
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    log::warn!("comm port accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn handle(&self, stream: TcpStream, peer: &str, events: &Sender<Event>) {
        let bytes = match read_request(&stream) {
            Ok(bytes) => bytes,
            Err(e) => {
                log::warn!("comm port: dropped request from {peer}: {e}");
                return;
            }
        };
        if bytes.trim_ascii().is_empty() {
            log::debug!("comm port: empty connection from {peer} ignored");
            return;
        }
        let request = match &self.shared.secret {
            Some(secret) => self.verified(&bytes, secret),
            None => comm::parse(&bytes).map_err(|e| e.to_string()),
        };
        let request: CommRequest = match request {
            Ok(r) => r,
            Err(e) => {
                log::warn!("comm port: refused request from {peer}: {e}");
                return;
            }
        };
        log::debug!("comm port: {request:?} from {peer}");
        if request.signum == Some(0) && !self.shared.kernel_alive.load(Ordering::SeqCst) {
            self.close();
        }
        if request.shutdown {
            self.close();
        }
        if request.shutdown || request.signum.is_some_and(|n| n != 0) {
            let _ = events.send(Event::Comm(request));
        }
        if request.shutdown {
            // The supervisor has the shutdown now (the kernel ends within its grace): say so.
            // EG has closed its end already; the write then fails, harmlessly.
            if let Err(e) = (&stream).write_all(comm::SHUTDOWN_ACK) {
                log::debug!("comm port: shutdown not acknowledged to {peer}: {e}");
            }
        }
    }
}

impl CommPort {
    /// The request in `bytes` if it is signed with `secret`, fresh and not seen before.
    fn verified(&self, bytes: &[u8], secret: &str) -> Result<CommRequest, String> {
        let v = signed::verify(bytes, secret.as_bytes()).map_err(|e| e.to_string())?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut replays = self
            .shared
            .replays
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        replays.admit(&v, now).map_err(|e| e.to_string())?;
        Ok(v.request)
    }
}

/// Reads one request to EOF, refusing more than `MAX_REQUEST_LEN` bytes.
fn read_request(stream: &TcpStream) -> io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut buf = Vec::new();
    stream
        .take(MAX_REQUEST_LEN as u64 + 1)
        .read_to_end(&mut buf)?;
    if buf.len() > MAX_REQUEST_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("request longer than {MAX_REQUEST_LEN} bytes"),
        ));
    }
    Ok(buf)
}
