#!/usr/bin/env bash
# Builds the Docker kernel image gateway-lite/r-kernel:<tag>: IRkernel from Debian
# (r-cran-irkernel on bookworm's R), with the static kernel-launcher as its entrypoint.
#
#   images/r-kernel/build.sh [--launcher PATH] [--tag TAG]
#
# Same stages, caching and output contract as images/python-kernel/build.sh (the last stdout
# line is the image reference; it is also tagged :latest). The image sets KERNEL_LANGUAGE=r, so
# without a command the launcher runs its R default,
# `R --slave -e IRkernel::main() --args <connection file>`; EG's container launchers pass only
# environment (KERNEL_ID, RESPONSE_ADDRESS, PUBLIC_KEY, ...), which is all it needs.
#
# Environment: KL_CACHE, KL_STATIC_LAUNCHER, KL_DEBIAN_MIRROR; see images/lib/image.sh.
set -euo pipefail
# shellcheck source=images/lib/image.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/image.sh"

image_init r-kernel "$@"
# r-base-core is listed because debootstrap does not resolve the virtual r-api-4.0 that
# r-cran-irkernel depends on.
image_rootfs r-kernel-base bookworm minbase 1 : r-cran-irkernel r-base-core
image_finish r-kernel 'ENV KERNEL_LANGUAGE=r'
