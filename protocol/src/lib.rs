//! Sans-IO wire formats shared by `kernel-launcher` and the gateway side.
//!
//! This crate exists so that every byte that crosses a process boundary between a Jupyter
//! gateway (Enterprise Gateway, gateway_provisioners, gateway-lite), the kernel launcher and a
//! kernel is parsed and produced in exactly one place, by pure functions that can be unit
//! tested, property tested and fuzzed without sockets, threads, files or clocks. Binaries own
//! the I/O; this crate owns the formats:
//!
//! - [`connection`]: the Jupyter connection file.
//! - [`payload`]: Enterprise Gateway's encrypted "version 1" launch report.
//! - [`comm`]: requests on the launcher's communication port.
//! - [`signed`]: the signed form of those requests, for launchers given a per-launch secret.
//! - [`ports`]: Enterprise Gateway's port-range rules.
//! - [`quantity`]: resource amounts in the kernel variables (`KERNEL_MEMORY=512Mi`, ...).
//! - [`wire`]: Jupyter wire-message frames and their HMAC-SHA256 signature; channel names.
//! - [`wsframe`]: the two WebSocket framings of kernel messages (legacy JSON and v1).
//! - [`z85`]: ZeroMQ's base-85 text form of CurveZMQ keys.
//! - [`zmtp`]: the ZMTP 3.x greeting, which names a ZeroMQ socket's security mechanism.
//! - [`frame_guard`]: bounds on the frames and messages of a ZMTP stream, read as it passes.
//! - [`spec`]: prose description of these formats, with the upstream documents they follow.
//! - [`testing`]: a deterministic RNG for tests and fuzzing (never for production).
//!
//! Every parser of peer bytes is total: malformed input yields an error value, never a panic.
//! Where randomness is needed the caller passes an RNG ([`rand_core::TryCryptoRng`]); a
//! convenience wrapper using the operating system RNG is offered next to each such function.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod comm;
pub mod connection;
pub mod frame_guard;
pub mod payload;
pub mod ports;
pub mod quantity;
pub mod signed;
pub mod spec;
pub mod testing;
pub mod wire;
pub mod wsframe;
pub mod z85;
pub mod zmtp;

/// The RNG traits taken by the `*_with_rng` functions (the `rand_core` version used by `rsa`).
pub use rsa::rand_core;
