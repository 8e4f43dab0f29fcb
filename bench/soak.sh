#!/usr/bin/env bash
# Lifecycle soak of gateway-lite: CYCLES cycles of start -> execute -> interrupt a running
# sleep -> restart -> execute -> shutdown against one gateway (debug build, real
# kernel-launcher and ipykernel), on 4 concurrent workers, with faults placed by a seeded RNG:
# clients hanging up on POST /api/kernels, restart, interrupt and DELETE (sometimes before the
# whole request is sent), SIGKILL of kernels and launchers (the gateway restarts them),
# WebSocket clients vanishing mid-execute. It fails on anything a fault must not leave (leaked
# or orphaned processes, unusable or stray kernels) and on a non-zero
# gateway_lite_kernel_reservations at the end. It measures per-step latency (p50/p99 of
# POST -> 201, first execute, interrupt, restart, DELETE), fault counts and the gateway's RSS
# at start and end, printed last as one SOAK-SUMMARY JSON line (the full log is kept).
# Method: gateway-lite/tests/it/soak.rs; CI runs the same test with 100 cycles.
#   bench/soak.sh [CYCLES]        (default 1000; about 2-3 s per cycle per worker, more
#                                 when interrupts wait for a kernel's readiness)
# Replay a failure: GATEWAY_LITE_SOAK_SEED=<the seed it printed> bench/soak.sh [CYCLES]
# Other knobs: GATEWAY_LITE_SOAK_WORKERS (4), GATEWAY_LITE_SOAK_FAULTS (all, none, or a
# comma list of post,restart,interrupt,delete,ws,kill), GATEWAY_LITE_SOAK_LOG (log file).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh >/dev/null
# shellcheck disable=SC1091
source "${KL_CACHE:-$HOME/.cache/kernel-launcher}/env.sh"
cargo build --locked -p launcher >&2
cargo test --locked -p gateway-lite --test it --no-run >&2
export KERNEL_LAUNCHER="${KERNEL_LAUNCHER:-$PWD/target/debug/kernel-launcher}"
export GATEWAY_LITE_SOAK_CYCLES="${1:-1000}"
log="${GATEWAY_LITE_SOAK_LOG:-/tmp/gateway-soak-$(date +%Y%m%d-%H%M%S).log}"
status=0
cargo test --locked -p gateway-lite --test it soak::lifecycle_soak -- --exact --nocapture 2>&1 |
    tee "$log" || status=$?
echo >&2 "soak log: $log"
grep '^SOAK-SUMMARY ' "$log" || echo "no SOAK-SUMMARY line: the soak did not finish (see $log)"
exit "$status"
