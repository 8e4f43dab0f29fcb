#!/usr/bin/env bash
# kernel-launcher under real Jupyter Enterprise Gateway 3.3.0 (gateway-lite's counterpart is
# scripts/serve.sh): set up, build the static kernel-launcher, start EG with a kernelspec that
# runs ipykernel through it, and use the kernel over EG's REST API and WebSocket (execute,
# interrupt, shut down). Prints what happens at each step (scripts/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh >/dev/null
# shellcheck disable=SC1091
source "${KL_CACHE:-$HOME/.cache/kernel-launcher}/env.sh"
scripts/build-static.sh
# The shared Python helpers (tests/support) are imported as the package `support`.
export PYTHONPATH="$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
exec "$KL_PY_EG" scripts/demo.py "$PWD/target/x86_64-unknown-linux-gnu/release/kernel-launcher" "$KL_PY_KERNEL"
