#!/usr/bin/env bash
# Gateway benchmark: gateway-lite vs Enterprise Gateway 3.3.0 in the same run, same machine,
# SAME EG-style kernelspec (kernel-launcher + ipykernel): POST -> 201, -> kernel_info_reply,
# payload arrival -> 201, execute round trip over the kernel WebSocket next to the raw ZMQ
# floor, launch storms of 20 and 100 kernels, gateway RSS. Method: bench/gateway_bench.py.
#   bench/gateway.sh [REPS]     (default 2; medians over reps)
# Raw JSON: $GATEWAY_BENCH_JSON (default /tmp/gateway-bench-<time>.json). More knobs in the
# header of bench/gateway_bench.py (GATEWAY_BENCH_N, _STORMS, _EG_POLLS, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh >/dev/null
# shellcheck disable=SC1091
source "${KL_CACHE:-$HOME/.cache/kernel-launcher}/env.sh"
cargo build --release --locked -p gateway-lite -p launcher >&2
# The shared Python helpers (tests/support) are imported as the package `support`.
export PYTHONPATH="$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
exec "$KL_PY_EG" bench/gateway_bench.py "$PWD/target/release/gateway-lite" "$PWD/target/release/kernel-launcher" \
    "$KL_PY_KERNEL" "${1:-2}"
