#!/usr/bin/env bash
# CurveZMQ's cost (issue 13): execute round trip through gateway-lite with transport encryption
# on (ipykernel 7.4 bound as a CurveZMQ server, gateway-lite's sockets CURVE clients) next to
# the raw ZMQ floor, curve and clear text, in the same run; key line "curve WS p50 - clear floor
# p50" (goal <= 0.5 ms). Method: bench/curve_bench.py (it reuses bench/gateway_bench.py's loops).
#   bench/curve.sh [REPS]     (default 2; medians over reps; N=500 executes after 50 warm-up)
# Raw JSON: $CURVE_BENCH_JSON (default /tmp/curve-bench-<time>.json); GATEWAY_BENCH_N and
# GATEWAY_BENCH_WARMUP change N and the warm-up.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh >/dev/null
# shellcheck disable=SC1091
source "${KL_CACHE:-$HOME/.cache/kernel-launcher}/env.sh"
cargo build --release --locked -p gateway-lite -p launcher >&2
# The shared Python helpers (tests/support) are imported as the package `support`.
export PYTHONPATH="$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
# venv-lab runs the kernels (ipykernel 7.4) and the benchmark client (pyzmq 27.3, the kernel's
# libzmq; jupyter_client 8.10).
exec "$KL_PY_LAB" bench/curve_bench.py "$PWD/target/release/gateway-lite" "$PWD/target/release/kernel-launcher" \
    "$KL_PY_LAB" "${1:-2}"
