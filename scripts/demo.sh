#!/usr/bin/env bash
# The main job: set up, build the static kernel-launcher, start Jupyter
# Enterprise Gateway 3.3.0 with a kernelspec that runs ipykernel through it,
# and use the kernel over EG's REST API and WebSocket (execute, interrupt,
# shut down). Prints what happens at each step.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh >/dev/null
# shellcheck disable=SC1091
source "${KL_CACHE:-$HOME/.cache/kernel-launcher}/env.sh"
scripts/build-static.sh
exec "$KL_PY_EG" scripts/demo.py "$PWD/target/x86_64-unknown-linux-gnu/release/kernel-launcher" "$KL_PY_KERNEL"
