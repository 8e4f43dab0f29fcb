#!/usr/bin/env bash
# Prepare the machine for every test that needs real peers: the Rust integration and end-to-end
# tests (launcher, gateway-lite, tests/tests) and the pytest suites (tests/eg, tests/gateway; tests/spark
# also needs scripts/setup-spark.sh), plus the benchmarks and scripts/demo.sh, scripts/serve.sh.
#   - Debian packages (installed when missing; sudo -n when not root):
#       r-base-core, r-cran-irkernel   R and Debian's IRkernel
#       util-linux, procps, iproute2   unshare (PID 1 tests), process tools, ip (network namespaces)
#       busybox-static                 the static "kernel" of the empty-chroot test
#       debootstrap                    the Docker kernel images (images/*/build.sh)
#       openssh-server, openssh-client gateway-lite's SSH provisioner tests (sshd in network
#                                      namespaces, ssh into them)
#       chromium, chromium-driver      tests/gateway/test_jupyterlab.py (headless JupyterLab via
#                                      /usr/bin/chromedriver; no browser is downloaded)
#       tcpdump                        gateway-lite's capture test (CurveZMQ seen on the wire: a
#                                      marker printed by a cell must not appear on loopback)
#   - five pinned virtualenvs (tests/requirements/{kernel,eg,gp,lab,papermill}.txt)
#       venv-kernel  ipykernel 6 + jupyter_client 8; runs the ipykernel kernels of the Rust tests,
#                    tests/eg and tests/gateway, and EG's launch_ipykernel.py
#       venv-eg      jupyter_enterprise_gateway 3.3.0 (jupyter_client 6, jupyter_server 1); runs EG,
#                    its itests client and pytest for tests/eg and tests/spark
#       venv-gp      gateway_provisioners 0.5.0 (jupyter_client 8, jupyter_server 2)
#       venv-lab     JupyterLab 4 + jupyter_server 2 + selenium; runs pytest for tests/gateway
#       venv-pm      papermill 2.6.0; the reference run `gateway-lite run` is compared with
#   - the EG 3.3.0 sdist from PyPI, sha256-checked (its launchers and itests are used at test
#     time, never committed)
#   - an IRkernel kernelspec in a private JUPYTER_PATH (never installed globally)
#   - $KL_CACHE/env.sh describing all of the above (KL_PY_KERNEL, KL_PY_EG, KL_PY_GP, KL_PY_LAB, KL_PY_PM,
#     KL_EG_SDIST, KL_JUPYTER_PATH, KL_R) for the tests and scripts.
#
# Idempotent: apt runs only for missing packages, a venv is rebuilt only when its requirements
# file (or the base python) changed, the sdist is fetched and unpacked once.
# Usage: scripts/setup-env.sh            (KL_CACHE defaults to ~/.cache/kernel-launcher)
#        KL_PYTHON=/path/to/python3 scripts/setup-env.sh   (base interpreter for the venvs)
#        KL_SKIP_APT=1 scripts/setup-env.sh                 (do not touch system packages)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req_dir="$repo_root/tests/requirements"
KL_CACHE="${KL_CACHE:-$HOME/.cache/kernel-launcher}"
KL_PYTHON="${KL_PYTHON:-python3}"
EG_VERSION="3.3.0"
# sha256 of jupyter_enterprise_gateway-3.3.0.tar.gz as published on PyPI
EG_SDIST_SHA256="58d61fef0f30d8010553bf3755c7d205c072383849c416916b37d3ef940725b7"

log() { printf '[setup-env] %s\n' "$*" >&2; }
start_s=$SECONDS
mkdir -p "$KL_CACHE"

# ---------------------------------------------------------------- system packages
# debootstrap: builds the Docker kernel images (images/*/build.sh) from Debian packages.
apt_packages=(r-base-core r-cran-irkernel util-linux procps iproute2 busybox-static debootstrap)
# openssh: gateway-lite's SSH provisioner tests run sshd in network namespaces and ssh into them.
apt_packages+=(openssh-server openssh-client)
# chromium: tests/gateway/test_jupyterlab.py drives JupyterLab in headless Debian chromium
# through Debian's chromedriver (no browser can be downloaded from elsewhere).
apt_packages+=(chromium chromium-driver)
# systemd (systemd-analyze verify checks deploy/gateway-lite.service), file (scripts/dist.sh
# checks its binaries are static), curl (tests of the gateway-lite image).
apt_packages+=(systemd file curl)
# tcpdump: gateway-lite's capture test records the kernel's loopback traffic and looks for a
# marker printed by a cell (absent under CurveZMQ, present in clear text).
apt_packages+=(tcpdump)
ensure_apt() {
    local missing=() p
    for p in "${apt_packages[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$p")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "apt: all present (${apt_packages[*]})"
        return
    fi
    if [ "${KL_SKIP_APT:-0}" = "1" ]; then
        log "apt: missing ${missing[*]} but KL_SKIP_APT=1"
        return
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then sudo=(sudo -n); fi
    log "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Update the package lists only when they are absent or the install fails with stale lists.
    if ! compgen -G "/var/lib/apt/lists/*_Packages" >/dev/null; then
        "${sudo[@]}" apt-get update -q
    fi
    if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        "${sudo[@]}" apt-get update -q
        "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}
ensure_apt

# ---------------------------------------------------------------- virtualenvs
# shellcheck source=scripts/lib/venv.sh
source "$repo_root/scripts/lib/venv.sh"
ensure_venv kernel "$req_dir/kernel.txt"
ensure_venv eg "$req_dir/eg.txt"
ensure_venv gp "$req_dir/gp.txt"
ensure_venv lab "$req_dir/lab.txt"
ensure_venv pm "$req_dir/papermill.txt"

# ---------------------------------------------------------------- EG sdist (launchers + itests)
sdist_dir="$KL_CACHE/sdist"
sdist_tar="$sdist_dir/jupyter_enterprise_gateway-$EG_VERSION.tar.gz"
sdist_root="$sdist_dir/jupyter_enterprise_gateway-$EG_VERSION"
if [ ! -f "$sdist_root/.kl-unpacked" ]; then
    mkdir -p "$sdist_dir"
    if [ ! -f "$sdist_tar" ] || ! echo "$EG_SDIST_SHA256  $sdist_tar" | sha256sum -c --quiet - 2>/dev/null; then
        log "downloading EG $EG_VERSION sdist from PyPI"
        rm -f "$sdist_tar"
        PIP_DISABLE_PIP_VERSION_CHECK=1 "$KL_CACHE/venv-eg/bin/python" -m pip download -q --no-input \
            --no-deps --no-binary :all: -d "$sdist_dir" "jupyter_enterprise_gateway==$EG_VERSION"
    fi
    echo "$EG_SDIST_SHA256  $sdist_tar" | sha256sum -c --quiet -
    rm -rf "$sdist_root"
    tar -xzf "$sdist_tar" -C "$sdist_dir"
    for f in etc/kernel-launchers/python/scripts/launch_ipykernel.py \
        etc/kernel-launchers/R/scripts/launch_IRkernel.R \
        enterprise_gateway/itests/test_python_kernel.py \
        enterprise_gateway/itests/test_r_kernel.py; do
        [ -f "$sdist_root/$f" ] || { log "sdist lacks $f"; exit 1; }
    done
    touch "$sdist_root/.kl-unpacked"
else
    log "EG sdist: already unpacked"
fi

# ---------------------------------------------------------------- private IRkernel kernelspec
jupyter_prefix="$KL_CACHE/jupyter"
ir_spec="$jupyter_prefix/share/jupyter/kernels/ir/kernel.json"
if [ ! -f "$ir_spec" ]; then
    log "registering Debian's IRkernel kernelspec under $jupyter_prefix (not global)"
    mkdir -p "$jupyter_prefix"
    # IRkernel::installspec shells out to `jupyter kernelspec install`; venv-kernel provides it.
    PATH="$KL_CACHE/venv-kernel/bin:$PATH" JUPYTER_DATA_DIR="$jupyter_prefix/share/jupyter" \
        Rscript -e "IRkernel::installspec(user = FALSE, prefix = '$jupyter_prefix')" >&2
    [ -f "$ir_spec" ] || { log "IRkernel kernelspec was not written to $ir_spec"; exit 1; }
else
    log "IRkernel kernelspec: present"
fi

# ---------------------------------------------------------------- env file for the tests
env_file="$KL_CACHE/env.sh"
tmp_env="$(mktemp "$KL_CACHE/env.sh.XXXXXX")"
cat >"$tmp_env" <<EOF
# Written by scripts/setup-env.sh; read by tests/support/kernels.py and gateway-lite's tests (or: source it).
export KL_CACHE="$KL_CACHE"
export KL_PY_KERNEL="$KL_CACHE/venv-kernel/bin/python"
export KL_PY_EG="$KL_CACHE/venv-eg/bin/python"
export KL_PY_GP="$KL_CACHE/venv-gp/bin/python"
export KL_PY_LAB="$KL_CACHE/venv-lab/bin/python"
export KL_PY_PM="$KL_CACHE/venv-pm/bin/python"
export KL_EG_SDIST="$sdist_root"
export KL_JUPYTER_PATH="$jupyter_prefix/share/jupyter"
export KL_R="$(command -v R || echo /usr/bin/R)"
EOF
mv "$tmp_env" "$env_file"

log "done in $((SECONDS - start_s))s"
log "env file:     $env_file"
log "venv-kernel:  $KL_CACHE/venv-kernel/bin/python"
log "venv-eg:      $KL_CACHE/venv-eg/bin/python"
log "venv-gp:      $KL_CACHE/venv-gp/bin/python"
log "venv-lab:     $KL_CACHE/venv-lab/bin/python"
log "venv-pm:      $KL_CACHE/venv-pm/bin/python"
log "EG sdist:     $sdist_root"
log "JUPYTER_PATH: $jupyter_prefix/share/jupyter (IRkernel spec 'ir')"
