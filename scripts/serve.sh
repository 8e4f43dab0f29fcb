#!/usr/bin/env bash
# The quick start: build gateway-lite and kernel-launcher, start gateway-lite with no
# configuration (its embedded python3 kernelspec; every kernel started through
# kernel-launcher) and JupyterLab with --gateway-url at it, check that a notebook kernel works
# end to end through Jupyter Server (scripts/serve_check.py: session, the kernel listed by
# gateway-lite, 1+1, the kernel's parent is kernel-launcher, interrupt, deleting the session
# takes the kernel off gateway-lite), then print JupyterLab's URL with its token and serve
# until Ctrl-C.
#   scripts/serve.sh            serve; open the printed JupyterLab URL
#   scripts/serve.sh --check    run the end-to-end check and exit (0 when it passed)
#
# Needs a Rust toolchain and Python 3 with its venv module. Installs one virtualenv (JupyterLab
# and ipykernel, pinned in scripts/serve-requirements.txt) under ~/.cache/kernel-launcher and
# nothing system-wide, except python3-venv through apt when it is missing and this runs as
# root. Runs as any user; as root JupyterLab needs --allow-root, which is then added.
#
# Notebooks: NOTEBOOKS_DIR (default ~/notebooks), created if missing and never deleted.
# Logs: ~/.local/state/gateway-lite/quickstart/{gateway,lab}.log.
# Ports: GATEWAY_LITE_PORT (default 8888) and LAB_PORT (default 8890), on 127.0.0.1.
# Ctrl-C stops JupyterLab, gateway-lite and its kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
log() { printf '[serve] %s\n' "$*" >&2; }
start_s=$SECONDS

command -v cargo >/dev/null || { log "cargo is missing: install a Rust toolchain (rustup)"; exit 1; }
KL_PYTHON="${KL_PYTHON:-python3}"
if ! "$KL_PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        log "installing python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >&2; }
    else
        log "$KL_PYTHON cannot make virtualenvs: install python3-venv (sudo apt-get install python3-venv)"
        exit 1
    fi
fi
KL_CACHE="${KL_CACHE:-$HOME/.cache/kernel-launcher}"
repo_root="$root"
mkdir -p "$KL_CACHE"
# shellcheck source=scripts/lib/venv.sh
source "$root/scripts/lib/venv.sh"
ensure_venv serve "$root/scripts/serve-requirements.txt"
venv="$KL_CACHE/venv-serve"

log "building gateway-lite and kernel-launcher (release)"
cargo build --release --locked -p gateway-lite -p launcher >&2

gw_port="${GATEWAY_LITE_PORT:-8888}"
lab_port="${LAB_PORT:-8890}"
notebooks="${NOTEBOOKS_DIR:-$HOME/notebooks}"
logs="${XDG_STATE_HOME:-$HOME/.local/state}/gateway-lite/quickstart"
mkdir -p "$notebooks" "$logs"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Two tokens, passed through environments (never command lines, which every local user can
# read): the gateway's, which JupyterLab's gateway client presents, and JupyterLab's own.
gw_token="$("$venv/bin/python" -c 'import secrets; print(secrets.token_hex(32))')"
token="$("$venv/bin/python" -c 'import secrets; print(secrets.token_hex(16))')"
# The embedded python3 kernelspec runs `python3 -m ipykernel_launcher`: the venv comes first.
# Kernels run in the notebooks folder, so relative paths in a notebook mean what they show.
(cd "$notebooks" && PATH="$venv/bin:$PATH" GATEWAY_LITE_AUTH_TOKEN="$gw_token" \
    exec "$root/target/release/gateway-lite" --ip 127.0.0.1 --port "$gw_port" \
    --launcher "$root/target/release/kernel-launcher" --shutdown-kernels-on-exit \
    >"$logs/gateway.out" 2>"$logs/gateway.log") &
pids+=("$!")
allow_root=()
if [ "$(id -u)" -eq 0 ]; then
    log "running as root: JupyterLab gets --allow-root (run as a normal user to avoid it)"
    allow_root=(--allow-root)
fi
JUPYTER_TOKEN="$token" JUPYTER_GATEWAY_AUTH_TOKEN="$gw_token" \
    "$venv/bin/jupyter-lab" --no-browser --ip 127.0.0.1 --port "$lab_port" \
    --ServerApp.root_dir="$notebooks" \
    --gateway-url "http://127.0.0.1:$gw_port" "${allow_root[@]}" \
    >"$logs/lab.log" 2>&1 &
pids+=("$!")

if ! GATEWAY_TOKEN="$gw_token" LAB_TOKEN="$token" "$venv/bin/python" scripts/serve_check.py \
    "http://127.0.0.1:$gw_port" "http://127.0.0.1:$lab_port"; then
    echo "--- gateway-lite log ($logs/gateway.log)"; tail -n 40 "$logs/gateway.log"
    echo "--- JupyterLab log ($logs/lab.log)"; tail -n 40 "$logs/lab.log"
    exit 1
fi
log "ready in $((SECONDS - start_s)) s"
if [ "${1:-}" = "--check" ]; then
    exit 0
fi
echo
echo "JupyterLab:   http://127.0.0.1:$lab_port/lab?token=$token"
echo "Notebooks:    $notebooks"
echo "gateway-lite: http://127.0.0.1:$gw_port/ (its token is JupyterLab's business; logs: $logs)"
echo "Ctrl-C stops JupyterLab, gateway-lite and the kernels."
wait
