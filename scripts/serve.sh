#!/usr/bin/env bash
# The main job: set up, build gateway-lite and kernel-launcher, start gateway-lite with no
# configuration (its embedded python3 kernelspec, every kernel started through
# kernel-launcher) and JupyterLab with --gateway-url at it, check that a notebook kernel
# works end to end through Jupyter Server (scripts/serve_check.py: session, the kernel listed by
# gateway-lite, 1+1, the kernel's parent is kernel-launcher, interrupt, and deleting the session
# takes the kernel off gateway-lite), then serve until Ctrl-C.
#   scripts/serve.sh            serve; open the printed JupyterLab URL
#   scripts/serve.sh --check    run the end-to-end check and exit (0 when it passed)
# Ports: GATEWAY_LITE_PORT (default 8888) and LAB_PORT (default 8890), on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
scripts/setup-env.sh >/dev/null
# shellcheck disable=SC1091
source "${KL_CACHE:-$HOME/.cache/kernel-launcher}/env.sh"
cargo build --release --locked -p gateway-lite -p launcher
gw_port="${GATEWAY_LITE_PORT:-8888}"
lab_port="${LAB_PORT:-8890}"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Two tokens, passed through environments (never command lines, which every local user can
# read): the gateway's, which JupyterLab's gateway client presents, and JupyterLab's own.
gw_token="$("$KL_PY_LAB" -c 'import secrets; print(secrets.token_hex(32))')"
token="$("$KL_PY_LAB" -c 'import secrets; print(secrets.token_hex(16))')"
# The embedded python3 kernelspec runs `python3 -m ipykernel_launcher`: put the kernel venv first.
PATH="$(dirname "$KL_PY_KERNEL"):$PATH" GATEWAY_LITE_AUTH_TOKEN="$gw_token" \
    "$root/target/release/gateway-lite" --ip 127.0.0.1 --port "$gw_port" \
    --launcher "$root/target/release/kernel-launcher" --no-state-dir \
    >"$work/gateway.out" 2>"$work/gateway.log" &
pids+=("$!")
mkdir -p "$work/notebooks"
JUPYTER_TOKEN="$token" JUPYTER_GATEWAY_AUTH_TOKEN="$gw_token" \
    "$(dirname "$KL_PY_LAB")/jupyter-lab" --no-browser --ip 127.0.0.1 --port "$lab_port" \
    --ServerApp.root_dir="$work/notebooks" \
    --gateway-url "http://127.0.0.1:$gw_port" --allow-root \
    >"$work/lab.log" 2>&1 &
pids+=("$!")

if ! GATEWAY_TOKEN="$gw_token" LAB_TOKEN="$token" "$KL_PY_LAB" scripts/serve_check.py \
    "http://127.0.0.1:$gw_port" "http://127.0.0.1:$lab_port"; then
    echo "--- gateway-lite log"; tail -n 40 "$work/gateway.log"
    echo "--- JupyterLab log"; tail -n 40 "$work/lab.log"
    exit 1
fi
if [ "${1:-}" = "--check" ]; then
    exit 0
fi
echo
echo "gateway-lite: http://127.0.0.1:$gw_port/   (log: $work/gateway.log)"
echo "JupyterLab:   http://127.0.0.1:$lab_port/lab?token=$token"
echo "Ctrl-C stops both."
wait
