//! Who is connected to a kernel, and what is kept for the last client that left.
//!
//! **The client count.** Each WebSocket connection of a kernel is counted once, here: a
//! [`Presence`] is taken when the connection arrives and given back when it leaves (or when
//! its task ends any other way). The REST model's `connections`, the culler and the metrics
//! read this count.
//!
//! **Messages while no client is connected.** Like Jupyter Server (`start_buffering` /
//! `get_buffer` in its kernel manager), when the last WebSocket of a kernel closes, its
//! sockets stay open and whatever arrives on them (iopub, and replies on shell, control and
//! stdin to that client's requests) is kept in memory, keyed by the `session_id` query
//! parameter. A client that reconnects with the same `session_id` takes the sockets back and
//! receives the kept messages, in order, before live traffic; a connection with another
//! `session_id` discards them. Unlike Jupyter Server's list, the backlog is bounded by
//! [`PARK_MAX_MESSAGES`] and [`PARK_MAX_BYTES`] per kernel and by one [`KeptBudget`] shared by
//! every kernel of the registry (oldest of the growing backlog dropped first, logged once),
//! and nothing is kept for a client without a `session_id` (no later connection could claim
//! it). The parked connection is a tracked task that ends when it is claimed, when the kernel
//! is gone, or when the gateway stops.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use protocol::wire::WireMessage;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::phase::Phase;
use crate::channels::{self, Channel, ClientSockets};
use crate::tasks::Tasks;

/// Messages kept for a kernel while no client is connected.
pub const PARK_MAX_MESSAGES: usize = 10_000;
/// Bytes kept for a kernel while no client is connected.
pub const PARK_MAX_BYTES: usize = 32 * 1024 * 1024;
/// Bytes kept across all kernels while their clients are away: with hundreds of kernels,
/// the per-kernel bound alone would not bound the gateway.
pub const PARK_TOTAL_MAX_BYTES: usize = 256 * 1024 * 1024;

/// Bytes held by backlogs, shared by the backlogs of every kernel of one registry.
#[derive(Debug)]
pub struct KeptBudget {
    used: AtomicUsize,
    max: usize,
}

impl KeptBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Self {
        KeptBudget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Bytes kept now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Messages kept while no client is connected, oldest first, bounded in count and bytes,
/// and drawing on a budget shared with the other kernels' backlogs.
#[derive(Debug)]
pub struct Backlog {
    items: VecDeque<(Channel, WireMessage)>,
    bytes: usize,
    dropped: usize,
    budget: Arc<KeptBudget>,
}

impl Drop for Backlog {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Backlog {
    /// An empty backlog drawing on `budget`.
    pub fn new(budget: Arc<KeptBudget>) -> Self {
        Backlog {
            items: VecDeque::new(),
            bytes: 0,
            dropped: 0,
            budget,
        }
    }

    /// Keeps `msg`, dropping the oldest kept messages while a bound is exceeded.
    pub fn push(&mut self, kernel_id: &str, channel: Channel, msg: WireMessage) {
        let size = msg.byte_len();
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
            let size = old.byte_len();
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

    /// Kept messages, oldest first.
    pub fn items(&self) -> impl ExactSizeIterator<Item = &(Channel, WireMessage)> {
        self.items.iter()
    }

    /// Messages dropped because a bound was reached.
    pub fn dropped(&self) -> usize {
        self.dropped
    }
}

/// What a parked connection hands to the next connection of its session.
pub struct Kept {
    /// The sockets, unless the kernel restarted or died meanwhile.
    pub sockets: Option<ClientSockets>,
    /// What arrived while no client was connected.
    pub backlog: Backlog,
}

/// A kernel's last connection, parked after its client left.
struct Parked {
    session_id: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Option<Kept>>,
}

#[derive(Default)]
struct Room {
    count: usize,
    parked: Option<Parked>,
}

/// A kernel's clients: the one count of its connections, and its parked connection.
#[derive(Clone)]
pub struct Clients {
    kernel_id: Arc<str>,
    budget: Arc<KeptBudget>,
    room: Arc<Mutex<Room>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("kernel_id", &self.kernel_id)
            .field("count", &self.count())
            .finish()
    }
}

/// One connected client, counted until [`Presence::leave`] or drop.
pub struct Presence {
    clients: Clients,
    left: bool,
}

impl Clients {
    /// The clients of kernel `kernel_id`, keeping messages within `budget`.
    pub fn new(kernel_id: &str, budget: Arc<KeptBudget>) -> Self {
        Clients {
            kernel_id: kernel_id.into(),
            budget,
            room: Arc::default(),
        }
    }

    fn room(&self) -> MutexGuard<'_, Room> {
        // Every update is a few field writes that cannot panic half-way, so a poisoned lock
        // still holds a consistent room.
        self.room.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open connections.
    pub fn count(&self) -> usize {
        self.room().count
    }

    /// Counts a new client; hands it the parked connection if the session matches, and
    /// discards a parked connection of another session.
    pub async fn arrive(&self, session_id: &str) -> (Presence, Option<Kept>) {
        let parked = {
            let mut room = self.room();
            room.count += 1;
            room.parked.take()
        };
        let presence = Presence {
            clients: self.clone(),
            left: false,
        };
        let Some(parked) = parked else {
            return (presence, None);
        };
        let _ = parked.stop.send(());
        let kept = match parked.task.await {
            Ok(Some(kept)) => kept,
            Ok(None) => return (presence, None),
            Err(e) => {
                tracing::warn!(kernel_id = %self.kernel_id, "parked connection task failed: {e}");
                return (presence, None);
            }
        };
        if !session_id.is_empty() && parked.session_id == session_id {
            return (presence, Some(kept));
        }
        tracing::info!(
            kernel_id = %self.kernel_id,
            session_id = %parked.session_id,
            messages = kept.backlog.items.len(),
            "discarding messages kept for another session"
        );
        (presence, None)
    }

    /// A new, empty backlog on this registry's budget.
    pub fn backlog(&self) -> Backlog {
        Backlog::new(self.budget.clone())
    }
}

impl Presence {
    /// Uncounts the client; if it was the last one and has a session id, its sockets are
    /// parked on `tasks`, following `phase`, until a client of the same session comes back.
    pub fn leave(
        mut self,
        session_id: &str,
        sockets: Option<ClientSockets>,
        phase: watch::Receiver<Phase>,
        tasks: &Tasks,
    ) {
        self.left = true;
        let clients = self.clients.clone();
        let mut room = clients.room();
        room.count = room.count.saturating_sub(1);
        if room.count > 0 || tasks.stopping() {
            return;
        }
        let Some(sockets) = sockets.filter(|_| !session_id.is_empty()) else {
            return;
        };
        tracing::info!(kernel_id = %clients.kernel_id, session_id, "no client left: keeping messages for this session");
        let (stop, stop_rx) = oneshot::channel();
        let kept = Kept {
            sockets: Some(sockets),
            backlog: clients.backlog(),
        };
        let task = tasks.spawn_until_stopped(park(clients.kernel_id.clone(), kept, stop_rx, phase));
        room.parked = Some(Parked {
            session_id: session_id.to_owned(),
            stop,
            task,
        });
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        if !self.left {
            let mut room = self.clients.room();
            room.count = room.count.saturating_sub(1);
        }
    }
}

/// Keeps what arrives on a parked connection's sockets until told to stop or the kernel is
/// gone. After a restart or death the old sockets are closed; the backlog stays. When the
/// kernel is gone, everything kept is dropped (and its bytes return to the budget).
async fn park(
    kernel_id: Arc<str>,
    mut kept: Kept,
    mut stop: oneshot::Receiver<()>,
    mut phase: watch::Receiver<Phase>,
) -> Kept {
    let generation = kept.sockets.as_ref().map(|s| s.ep.generation);
    loop {
        tokio::select! {
            _ = &mut stop => return kept,
            changed = phase.changed() => {
                let gone = changed.is_err() || matches!(&*phase.borrow_and_update(), Phase::Gone);
                if gone {
                    kept.sockets = None;
                    kept.backlog = Backlog::new(kept.backlog.budget.clone());
                    return kept;
                }
                if phase.borrow().generation() != generation {
                    kept.sockets = None;
                }
            }
            (channel, msg) = channels::recv_any(&mut kept.sockets) => {
                if let Some(msg) = msg {
                    kept.backlog.push(&kernel_id, channel, msg);
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
            header: b"{}".to_vec(),
            parent_header: b"{}".to_vec(),
            metadata: b"{}".to_vec(),
            content: content.to_vec(),
            ..WireMessage::default()
        }
    }

    fn budget() -> Arc<KeptBudget> {
        Arc::new(KeptBudget::new(PARK_TOTAL_MAX_BYTES))
    }

    #[test]
    fn backlog_drops_oldest_by_count() {
        let mut b = Backlog::new(budget());
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
        let mut b = Backlog::new(budget());
        let big = vec![b'x'; PARK_MAX_BYTES / 3];
        for _ in 0..4 {
            b.push("k", Channel::Iopub, msg(&big));
        }
        assert_eq!(b.items.len(), 2);
        assert!(b.bytes <= PARK_MAX_BYTES);
        assert_eq!(
            b.bytes,
            b.items.iter().map(|(_, m)| m.byte_len()).sum::<usize>()
        );
        // One message larger than the whole budget is not kept either.
        b.push("k", Channel::Iopub, msg(&vec![b'y'; PARK_MAX_BYTES + 1]));
        assert!(b.items.is_empty() && b.bytes == 0);
    }

    #[test]
    fn backlogs_share_a_total_budget() {
        let budget = Arc::new(KeptBudget::new(1000));
        let mut a = Backlog::new(budget.clone());
        let mut b = Backlog::new(budget.clone());
        for _ in 0..6 {
            a.push("a", Channel::Iopub, msg(&[b'a'; 100]));
        }
        let each = msg(&[b'a'; 100]).byte_len();
        assert_eq!(budget.used(), 6 * each);
        // b grows past the total: b's own oldest go, a keeps what it has.
        for _ in 0..6 {
            b.push("b", Channel::Iopub, msg(&[b'b'; 100]));
        }
        assert_eq!(a.items.len(), 6);
        assert_eq!(b.items.len(), 1000 / each - 6);
        assert!(b.dropped > 0);
        assert!(budget.used() <= 1000);
        // Replayed (dropped) backlogs give their bytes back.
        drop(a);
        assert_eq!(budget.used(), b.bytes);
        b.push("b", Channel::Iopub, msg(&[b'b'; 100]));
        assert_eq!(
            b.dropped,
            12 - 1000 / each,
            "room again after a's bytes came back"
        );
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn one_count_per_connection_whatever_way_it_ends() {
        let clients = Clients::new("k", budget());
        let (a, kept) = clients.arrive("s1").await;
        assert!(kept.is_none());
        let (b, _) = clients.arrive("s2").await;
        assert_eq!(clients.count(), 2);
        drop(a); // a task that ended without leaving
        assert_eq!(clients.count(), 1);
        let (_tx, phase) = watch::channel(Phase::Dead);
        b.leave("s2", None, phase, &Tasks::new());
        assert_eq!(clients.count(), 0);
    }
}
