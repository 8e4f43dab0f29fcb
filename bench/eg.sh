#!/usr/bin/env bash
# Through-EG benchmark: kernel-launcher vs EG's launch_ipykernel.py behind real
# EG 3.3.0 (POST -> 201, -> kernel_info_reply), default and fast poll interval.
#   bench/eg.sh [RUNS]     (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh >/dev/null
# shellcheck disable=SC1091
source "${KL_CACHE:-$HOME/.cache/kernel-launcher}/env.sh"
scripts/build-static.sh >/dev/null
# The shared Python helpers (tests/support) are imported as the package `support`.
export PYTHONPATH="$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
exec "$KL_PY_EG" bench/eg_bench.py "$PWD/target/x86_64-unknown-linux-gnu/release/kernel-launcher" "$KL_PY_KERNEL" "$KL_EG_SDIST" "${1:-10}"
