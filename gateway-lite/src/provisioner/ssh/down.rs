//! Hosts ssh could not reach, and for how long they are skipped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a host whose ssh connection failed is skipped by the balancing.
pub const DOWN_FOR: Duration = Duration::from_secs(30);

/// Hosts whose ssh connection failed, and when.
#[derive(Debug, Clone, Default)]
pub(crate) struct Down(pub(super) Arc<Mutex<HashMap<String, Instant>>>);

impl Down {
    pub(crate) fn mark(&self, host: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(host.to_owned(), Instant::now());
        }
    }

    pub(crate) fn clear(&self, host: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(host);
        }
    }

    pub(crate) fn is_down(&self, host: &str) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(host).map(|t| t.elapsed() < DOWN_FOR))
            .unwrap_or(false)
    }
}
