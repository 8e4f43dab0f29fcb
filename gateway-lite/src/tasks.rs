//! Every background task of the gateway, tracked, and the one way they are all stopped.
//!
//! A gateway runs many small tasks: one owner per kernel, its status monitor, the readers of
//! launchers' output, each WebSocket's reader and writer, the response listener, the culler.
//! None is detached. [`Tasks`] spawns them on one [`TaskTracker`] and hands each a
//! [`CancellationToken`]; gateway shutdown is then a designed sequence (as tokio's
//! mini-redis teaches), in two steps:
//!
//! 1. [`Tasks::close`]: the gateway is closing. WebSocket relays end, launches in flight are
//!    abandoned; what follows kernels (reapers, watchers, owners) goes on, so the kernels can
//!    still be stopped or left running properly.
//! 2. [`Tasks::shutdown`]: cancel everything, close the tracker, and wait for every task
//!    with a deadline, logging how many did not finish in time.
//!
//! Tasks that must finish what they started even when the client that asked has gone (a
//! kernel start, restart or shutdown) are spawned here too: dropping a request handler
//! never drops such a task, and the tracker is what the gateway waits for before it exits.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The gateway's task tracker and its stop signal. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    closing: CancellationToken,
    token: CancellationToken,
}

impl Tasks {
    /// A fresh tracker and token.
    pub fn new() -> Self {
        Tasks::default()
    }

    /// Spawns `fut`, tracked. The task must watch [`Tasks::token`] itself if it should end on
    /// shutdown before it is done.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Spawns `fut`, tracked, and drops it when the gateway stops.
    pub fn spawn_until_stopped<F>(&self, fut: F) -> tokio::task::JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                out = fut => Some(out),
                () = token.cancelled() => None,
            }
        })
    }

    /// Runs blocking work (file writes with `fsync`, RSA) on the blocking pool, tracked.
    pub fn spawn_blocking<F, T>(&self, f: F) -> tokio::task::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.tracker.spawn_blocking(f)
    }

    /// The stop signal: cancelled once, when the gateway stops.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The closing signal: cancelled when the gateway stops taking work (step 1).
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Step 1 of the shutdown: no new work; connections end.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Whether the gateway is closing or stopped.
    pub fn stopping(&self) -> bool {
        self.closing.is_cancelled() || self.token.is_cancelled()
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no task runs.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Step 2: cancels both tokens, closes the tracker and waits up to `deadline` for every
    /// task.
    /// Returns how many were still running at the deadline.
    pub async fn shutdown(&self, deadline: Duration) -> usize {
        self.closing.cancel();
        self.token.cancel();
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            let left = self.tracker.len();
            tracing::warn!(left, "tasks still running at the shutdown deadline");
            return left;
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_cancels_waits_and_counts_stragglers() {
        let tasks = Tasks::new();
        let token = tasks.token().clone();
        let polite = tasks.spawn(async move { token.cancelled().await });
        let dropped = tasks.spawn_until_stopped(std::future::pending::<()>());
        let stubborn = tasks.spawn(tokio::time::sleep(Duration::from_secs(3600)));
        assert_eq!(tasks.len(), 3);
        let left = tasks.shutdown(Duration::from_millis(200)).await;
        assert_eq!(left, 1, "only the task that ignores the token is left");
        assert!(polite.is_finished());
        assert_eq!(dropped.await.unwrap(), None);
        stubborn.abort();
        assert!(tasks.stopping());
    }
}
