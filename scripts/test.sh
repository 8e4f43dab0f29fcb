#!/usr/bin/env bash
# Sets up everything the tests need on a fresh Debian machine and runs every test, in order:
#   1. environment: scripts/setup-env.sh (apt packages, pinned Python venvs under
#      ~/.cache/kernel-launcher, EG's sdist) and scripts/setup-spark.sh (the pyspark venvs)
#   2. format and lint: cargo fmt --check, cargo clippy -D warnings
#   3. build: scripts/dist.sh (static kernel-launcher and gateway-lite, tarballs, images) and
#      the debug binaries
#   4. the Docker kernel images (images/{python,r,spark-python,scala}-kernel/build.sh, rootfs
#      and wheels cached)
#   5. the Rust tests (cargo nextest): unit, property, launcher integration (real ipykernel,
#      IRkernel, PID 1 under unshare), gateway-lite integration (real ipykernel; sshd in network
#      namespaces; Docker containers; Swarm services, with gateway-lite in a container on an
#      overlay network: a Swarm is made for the test when none is active), end-to-end (each
#      kernel image run as EG's Docker launcher runs it)
#   6. a short fuzz smoke run (scripts/fuzz-smoke.sh, which installs cargo-fuzz when missing)
#   7. the pytest suites: real EG 3.3.0, gateway_provisioners 0.5.0, IRkernel and Spark 3.5 / 4.3
#      (tests/eg, tests/spark, in venv-eg; tests/eg also runs the four kernel images through
#      EG's Docker and Swarm process proxies, creating a single-node swarm if none is active and
#      leaving it afterwards, and through EG's Kubernetes pod template); then gateway-lite is
#      built and Jupyter Server 2, JupyterLab 4 (headless chromium) and EG's own itests run
#      against it (tests/gateway, in venv-lab)
# Not installed here: a Rust toolchain with cargo-nextest, Java 17 (for pyspark) and a usable
# Docker Engine.
#   scripts/test.sh              everything
#   KL_FUZZ_SECONDS=0 scripts/test.sh   skip the fuzz smoke run (default: 5 s per target)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
step() { printf '\n==> %s\n' "$*"; }

step "environment"
scripts/setup-env.sh
scripts/setup-spark.sh
cache="${KL_CACHE:-$HOME/.cache/kernel-launcher}"
# shellcheck disable=SC1091
source "$cache/env.sh"
# shellcheck disable=SC1091
source "$cache/spark-env.sh"

step "format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build (scripts/dist.sh: static binaries, release tarballs, the launcher and gateway-lite images)"
scripts/dist.sh --out "$root/target/dist"
export KL_DIST_DIR="$root/target/dist"
cargo build --locked -p launcher -p gateway-lite
export KL_STATIC_LAUNCHER="$root/target/x86_64-unknown-linux-gnu/release/kernel-launcher"
export KL_BUSYBOX=/bin/busybox
export KERNEL_LAUNCHER="$root/target/debug/kernel-launcher"

step "Docker kernel images (debootstrap rootfs and wheels cached under \$HOME/.cache)"
# The gateway-lite Docker tests and tests/tests/e2e/images.rs need them; they fail (not skip)
# when Docker is unusable or a variable is missing.
KL_KERNEL_IMAGE="$(images/python-kernel/build.sh | tail -n 1)"
KL_R_KERNEL_IMAGE="$(images/r-kernel/build.sh | tail -n 1)"
KL_SPARK_KERNEL_IMAGE="$(images/spark-python-kernel/build.sh | tail -n 1)"
KL_SCALA_KERNEL_IMAGE="$(images/scala-kernel/build.sh | tail -n 1)"
export KL_KERNEL_IMAGE KL_R_KERNEL_IMAGE KL_SPARK_KERNEL_IMAGE KL_SCALA_KERNEL_IMAGE

step "Rust tests (unit, property, launcher integration, end-to-end)"
cargo nextest run --workspace --locked --no-fail-fast

if [ "${KL_FUZZ_SECONDS:-5}" != 0 ]; then
    step "fuzz smoke (${KL_FUZZ_SECONDS:-5} s per target)"
    scripts/fuzz-smoke.sh "${KL_FUZZ_SECONDS:-5}"
fi

step "real peers: EG 3.3.0, gateway_provisioners 0.5.0, IRkernel, Spark"
"$KL_PY_EG" -m pytest -p no:cacheprovider -v tests/eg tests/spark

step "real peers against gateway-lite: Jupyter Server 2, JupyterLab 4 (headless chromium), EG 3.3.0 itests"
cargo build --locked -p gateway-lite
"$KL_PY_LAB" -m pytest -p no:cacheprovider -v -rxX tests/gateway
