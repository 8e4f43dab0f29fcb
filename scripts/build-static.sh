#!/usr/bin/env bash
# Builds kernel-launcher as one fully static x86_64 binary (static-pie, glibc).
# Both the explicit --target and the getrandom cfg are required: the first keeps
# +crt-static away from proc-macros and build scripts, the second makes
# getrandom use the syscall instead of dlsym, so the binary needs no /dev.
# Output: target/x86_64-unknown-linux-gnu/release/kernel-launcher
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"' \
  cargo build --release --locked --target x86_64-unknown-linux-gnu -p launcher
bin=target/x86_64-unknown-linux-gnu/release/kernel-launcher
echo "$bin: $(stat -c %s "$bin") bytes; $(file -b "$bin" 2>/dev/null || true)"
