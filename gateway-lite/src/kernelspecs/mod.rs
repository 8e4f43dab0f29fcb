//! Kernelspecs: finding them, serving them, and turning one into a launcher command line.
//!
//! Clients choose a kernel by kernelspec name, and the spec's `argv` is how a kernel gets
//! started. The pieces:
//!
//! - [`search`]: which directories are searched, in which order (`--kernelspec-dir`, then
//!   Jupyter's data path).
//! - [`spec`]: one `kernel.json`, read and checked; its REST model; its launcher command line.
//! - [`proxy`]: where a spec says its kernel runs (`process_proxy` / `kernel_provisioner`),
//!   and whether gateway-lite can run it there.
//! - [`catalog`]: the specs on disk now, re-read when a request needs them and the last look
//!   is more than a moment old, so specs added, changed or removed are served without a
//!   restart; changes and broken files are logged once each.
//!
//! [`KernelSpecs`] is one consistent snapshot: every request works from one, so a listing
//! and its default always agree. Unless a `python3` spec is found, the snapshot holds an
//! embedded `python3` spec that runs ipykernel.

pub mod catalog;
pub mod proxy;
pub mod search;
pub mod spec;

use std::collections::BTreeMap;

pub use catalog::Catalog;
pub use proxy::{Refusal, Runner};
pub use spec::{KernelSpec, Placeholders, SpecError};

/// The kernelspecs found by one scan, and the default among them.
#[derive(Debug, Clone, Default)]
pub struct KernelSpecs {
    specs: BTreeMap<String, KernelSpec>,
    default: String,
}

impl KernelSpecs {
    /// `specs`, with `default` as the default when it is among them, else `python3`, else
    /// the first by name.
    pub fn new(specs: BTreeMap<String, KernelSpec>, default: Option<&str>) -> Self {
        let default = default
            .filter(|d| specs.contains_key(*d))
            .map(str::to_owned)
            .or_else(|| specs.contains_key("python3").then(|| "python3".to_owned()))
            .or_else(|| specs.keys().next().cloned())
            .unwrap_or_default();
        KernelSpecs { specs, default }
    }

    /// The spec called `name`.
    pub fn get(&self, name: &str) -> Option<&KernelSpec> {
        self.specs.get(name)
    }

    /// The default spec's name.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// Every spec, by name.
    pub fn iter(&self) -> impl Iterator<Item = &KernelSpec> {
        self.specs.values()
    }
}
