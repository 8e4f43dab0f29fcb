#!/usr/bin/env bash
# Launcher benchmark: kernel-launcher vs EG 3.3.0's launch_ipykernel.py, same
# run, same machine, same ipykernel. Prints medians and ratios.
#   bench/launcher.sh [RUNS]      (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh >/dev/null
# shellcheck disable=SC1091
source "${KL_CACHE:-$HOME/.cache/kernel-launcher}/env.sh"
scripts/build-static.sh >/dev/null
export KL_STATIC_LAUNCHER="$PWD/target/x86_64-unknown-linux-gnu/release/kernel-launcher"
cargo bench --locked -p launcher --bench startup -- "${1:-20}"
