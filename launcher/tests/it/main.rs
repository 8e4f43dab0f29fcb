//! Integration tests for the `kernel-launcher` binary: one test binary, one
//! module per topic. Kernels here are real processes: shell scripts where the
//! test needs to observe signals exactly, and real ipykernel / IRkernel for
//! the language tests. EG itself is exercised by the pytest suite in tests/eg.

mod cli;
mod comm;
mod curve;
mod identity;
mod kernels;
mod kernelspec;
mod lifecycle;
mod pid1;
mod ports;
mod support;
