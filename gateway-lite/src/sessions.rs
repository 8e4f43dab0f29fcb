//! Jupyter sessions: the notebook-path ↔ kernel association of `/api/sessions`.
//!
//! A session names which document (path, name, type) uses which kernel. The store holds
//! only that association, in memory; kernel state lives in [`crate::kernels`]. Sessions
//! whose kernel was shut down elsewhere are pruned when listed or read, as Jupyter Server
//! does.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::kernels::Kernels;

/// One session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Session id.
    pub id: String,
    /// Document path.
    pub path: String,
    /// Document name.
    pub name: String,
    /// `notebook`, `console`, `file`, ...
    pub kind: String,
    /// The kernel.
    pub kernel_id: String,
}

impl Session {
    /// The REST model, with the kernel's model embedded.
    pub fn model(&self, kernel: Value) -> Value {
        json!({
            "id": self.id,
            "path": self.path,
            "name": self.name,
            "type": self.kind,
            "kernel": kernel,
            "notebook": {"path": self.path, "name": self.name},
        })
    }
}

/// All sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Adds a session.
    pub fn insert(&self, s: Session) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(s.id.clone(), s);
        }
    }

    /// Removes a session.
    pub fn remove(&self, id: &str) -> Option<Session> {
        self.map.lock().ok()?.remove(id)
    }

    /// The session `id`, if its kernel still exists.
    pub fn get(&self, id: &str, kernels: &Kernels) -> Option<Session> {
        self.prune(kernels);
        self.map.lock().ok()?.get(id).cloned()
    }

    /// The session for `path`, if any.
    pub fn by_path(&self, path: &str, kernels: &Kernels) -> Option<Session> {
        self.prune(kernels);
        self.map
            .lock()
            .ok()?
            .values()
            .find(|s| s.path == path)
            .cloned()
    }

    /// Every session whose kernel still exists, by id.
    pub fn list(&self, kernels: &Kernels) -> Vec<Session> {
        self.prune(kernels);
        let mut v: Vec<Session> = self
            .map
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn prune(&self, kernels: &Kernels) {
        if let Ok(mut m) = self.map.lock() {
            m.retain(|_, s| kernels.get(&s.kernel_id).is_ok());
        }
    }
}
