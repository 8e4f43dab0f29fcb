#!/usr/bin/env bash
# Builds the Docker kernel image gateway-lite/python-kernel:<tag> from Debian packages, with the
# static kernel-launcher as its entrypoint. No registry is needed: nothing is pulled.
#
#   images/python-kernel/build.sh [--launcher PATH] [--tag TAG]
#
# The last line on stdout is the image reference to use (gateway-lite/python-kernel:<hash>);
# the image is also tagged :latest (and TAG when given). Progress and the image size go to
# stderr.
#
# Two stages, each cached (images/lib/image.sh):
#   1. rootfs: debootstrap (bookworm, --variant=minbase, python3-ipykernel and what it depends
#      on, nothing else), apt lists/caches and docs removed, a non-root user jovyan (uid 1000,
#      gid 100 "users", as Enterprise Gateway's images have) added; packed as a tarball under
#      $KL_CACHE/images keyed by the recipe, imported once as gateway-lite/python-kernel-base.
#   2. launcher: a thin layer holding /usr/local/bin/kernel-launcher (and the name EG's images
#      use for their entrypoint, /usr/local/bin/bootstrap-kernel.sh, linked to it), committed
#      with the entrypoint, USER 1000:100, workdir and env. A changed launcher gives a new image
#      in seconds; an unchanged one costs nothing.
#
# Inside the image, the launcher reads everything from the environment Enterprise Gateway's
# container launchers set (KERNEL_ID, RESPONSE_ADDRESS, PUBLIC_KEY, PORT_RANGE,
# KERNEL_LANGUAGE, KERNEL_UID, ...; see launcher/src/help.txt) and, without a command, runs
# `python3 -m ipykernel_launcher -f <connection file>`. So `docker run -e KERNEL_ID=...
# -e RESPONSE_ADDRESS=... -e PUBLIC_KEY=... IMAGE` is a kernel; a command given to
# `docker run` is passed to the launcher as its arguments (e.g. `-- python3 -m ...`).
#
# Environment: KL_CACHE, KL_STATIC_LAUNCHER, KL_DEBIAN_MIRROR (default: this machine's apt
# sources); see images/lib/image.sh. Needs root (debootstrap), docker and debootstrap
# (scripts/setup-env.sh installs it).
set -euo pipefail
# shellcheck source=images/lib/image.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/image.sh"

image_init python-kernel "$@"
# debootstrap does not resolve virtual packages, so the real providers of the two that
# python3-ipykernel's dependencies name are listed too: python3-zmq needs
# python3-cffi-backend-api-{min,max} (python3-cffi-backend), and gdb (python3-debugpy ->
# python3-pydevd -> gdb -> libsource-highlight4v5) needs libboost-regex1.74.0-icu72
# (libboost-regex1.74.0).
image_rootfs python-kernel-base bookworm minbase 1 : \
    python3-ipykernel python3-cffi-backend libboost-regex1.74.0
image_finish python-kernel 'ENV KERNEL_LANGUAGE=python'
