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
//! A [`KernelSpecs`] is one consistent snapshot: every request works from one, so a listing
//! and its default always agree. Unless a `python3` spec is found, the snapshot holds an
//! embedded `python3` spec that runs ipykernel.

pub mod catalog;
pub mod proxy;
pub mod search;
pub mod spec;

pub use catalog::{Catalog, KernelSpecs};
pub use proxy::{Refusal, Runner};
pub use spec::{KernelSpec, Placeholders, SpecError};
