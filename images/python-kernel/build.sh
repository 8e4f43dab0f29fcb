#!/usr/bin/env bash
# Builds the Docker kernel image gateway-lite/python-kernel:<tag> from Debian packages, with the
# static kernel-launcher as its entrypoint. No registry is needed: nothing is pulled.
#
#   images/python-kernel/build.sh [--launcher PATH] [--tag TAG]
#
# The last line on stdout is the image reference to use (gateway-lite/python-kernel:<hash>);
# the image is also tagged :latest (and TAG when given). Progress goes to stderr.
#
# Two stages, each cached:
#   1. rootfs: debootstrap (bookworm, --variant=minbase, python3-ipykernel and what it depends
#      on, nothing else), apt lists/caches and docs removed, a non-root user jovyan (uid 1000,
#      gid 100 "users", as Enterprise Gateway's images have) added; packed as a tarball under
#      $KL_CACHE/images keyed by the recipe (suite, variant, package list, recipe version), and
#      imported once as gateway-lite/python-kernel-base:<key>.
#   2. launcher: a thin layer on top holding /usr/local/bin/kernel-launcher, committed with the
#      entrypoint, user, workdir and env. Its tag is a hash of the base key and the launcher
#      binary, so a changed launcher gives a new image in seconds and an unchanged one costs
#      nothing.
#
# Inside the image, the launcher reads everything from the environment Enterprise Gateway's
# container launchers set (KERNEL_ID, RESPONSE_ADDRESS, PUBLIC_KEY, PORT_RANGE,
# KERNEL_LANGUAGE, ...; see launcher/src/help.txt) and, without a command, runs
# `python3 -m ipykernel_launcher -f <connection file>`. So `docker run -e KERNEL_ID=...
# -e RESPONSE_ADDRESS=... -e PUBLIC_KEY=... IMAGE` is a kernel; a command given to
# `docker run` is passed to the launcher as its arguments (e.g. `-- python3 -m ...`).
#
# Environment: KL_CACHE (default ~/.cache/kernel-launcher), KL_STATIC_LAUNCHER (default
# target/x86_64-unknown-linux-gnu/release/kernel-launcher, built by scripts/build-static.sh when
# missing), KL_DEBIAN_MIRROR (default http://deb.debian.org/debian). Needs root (debootstrap),
# docker and debootstrap (scripts/setup-env.sh installs it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
log() { printf '[python-kernel] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

repo=gateway-lite/python-kernel
suite=bookworm
variant=minbase
# debootstrap does not resolve virtual packages, so the real providers of the two that
# python3-ipykernel's dependencies name are listed too: python3-zmq needs
# python3-cffi-backend-api-{min,max} (python3-cffi-backend), and gdb (python3-debugpy ->
# python3-pydevd -> gdb -> libsource-highlight4v5) needs libboost-regex1.74.0-icu72
# (libboost-regex1.74.0).
packages=(python3-ipykernel python3-cffi-backend libboost-regex1.74.0)
# Bump when the rootfs recipe (the steps in build_rootfs) changes.
recipe_version=1
mirror="${KL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache="${KL_CACHE:-$HOME/.cache/kernel-launcher}/images"
launcher="${KL_STATIC_LAUNCHER:-$root/target/x86_64-unknown-linux-gnu/release/kernel-launcher}"
extra_tag=""

while [ $# -gt 0 ]; do
    case "$1" in
        --launcher) launcher="${2:?--launcher needs a path}"; shift 2 ;;
        --tag) extra_tag="${2:?--tag needs a value}"; shift 2 ;;
        -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable (docker info failed)"
start=$SECONDS
mkdir -p "$cache"

# One build at a time (tests running in parallel all call this script).
exec 9>"$cache/.build.lock"
flock 9

if [ ! -f "$launcher" ]; then
    [ -z "${KL_STATIC_LAUNCHER:-}" ] || die "KL_STATIC_LAUNCHER=$launcher does not exist"
    log "building the static launcher (scripts/build-static.sh)"
    "$root/scripts/build-static.sh" >&2
fi
launcher="$(realpath "$launcher")"
# A dynamically linked launcher would not run in the image (no libgcc_s etc. guaranteed).
if command -v file >/dev/null && ! file -b "$launcher" | grep -q 'static'; then
    die "$launcher is not statically linked; build it with scripts/build-static.sh"
fi

key="$(printf '%s\n' "$recipe_version" "$suite" "$variant" "${packages[@]}" | sha256sum | cut -c1-16)"
rootfs="$cache/rootfs-$suite-$key.tar"
base="$repo-base:$key"

build_rootfs() {
    command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap, or scripts/setup-env.sh)"
    [ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
    local tmp
    tmp="$(mktemp -d "$cache/.rootfs-XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    local include
    include="$(IFS=,; echo "${packages[*]}")"
    log "debootstrap $suite ($variant, $include) from $mirror"
    debootstrap --variant="$variant" --include="$include" "$suite" "$tmp/root" "$mirror" >&2
    local r="$tmp/root"
    # Package lists, caches, logs and documentation are not needed at run time.
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old \
        "$r"/var/log/* "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* \
        "$r"/debootstrap
    : >"$r/etc/hostname"
    # The non-root user kernels run as (Enterprise Gateway's default KERNEL_UID 1000 and
    # KERNEL_GID 100). Written directly: useradd would need the chroot's login package.
    grep -q '^users:x:100:' "$r/etc/group" || die "the rootfs has no users group (gid 100)"
    echo 'jovyan:x:1000:100:Jupyter kernel user:/home/jovyan:/bin/sh' >>"$r/etc/passwd"
    echo 'jovyan:*:19000:0:99999:7:::' >>"$r/etc/shadow"
    mkdir -p "$r/home/jovyan"
    chown 1000:100 "$r/home/jovyan"
    chmod 1777 "$r/tmp"
    tar --numeric-owner -C "$r" -cf "$tmp/rootfs.tar" .
    mv "$tmp/rootfs.tar" "$rootfs"
    rm -rf "$tmp"
    trap - EXIT
}

if ! docker image inspect "$base" >/dev/null 2>&1; then
    if [ ! -f "$rootfs" ]; then
        build_rootfs
    else
        log "rootfs cached: $rootfs"
    fi
    log "importing $base"
    docker import --message "debootstrap $suite $variant ${packages[*]}" \
        --change "LABEL org.jupyter.gateway-lite.rootfs=$key" "$rootfs" "$base" >/dev/null
fi

launcher_sum="$(sha256sum "$launcher" | cut -c1-64)"
tag="$(printf '%s\n' "$key" "$launcher_sum" | sha256sum | cut -c1-12)"
image="$repo:$tag"
if docker image inspect "$image" >/dev/null 2>&1; then
    log "up to date: $image"
else
    log "adding the launcher ($launcher) as $image"
    cid="$(docker create "$base" /usr/local/bin/kernel-launcher)"
    # shellcheck disable=SC2064
    trap "docker rm -f '$cid' >/dev/null 2>&1 || true" EXIT
    # docker cp keeps the file's mode (and makes root its owner): copy a 0755 version, so every
    # KERNEL_UID can run it whatever the build left.
    stage="$(mktemp -d)"
    install -m 0755 "$launcher" "$stage/kernel-launcher"
    docker cp "$stage/kernel-launcher" "$cid:/usr/local/bin/kernel-launcher"
    rm -rf "$stage"
    docker commit \
        --change 'ENTRYPOINT ["/usr/local/bin/kernel-launcher"]' \
        --change 'CMD []' \
        --change 'USER 1000:100' \
        --change 'WORKDIR /home/jovyan' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV HOME=/home/jovyan' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV KERNEL_LANGUAGE=python' \
        --change "LABEL org.jupyter.gateway-lite.launcher-sha256=$launcher_sum" \
        --message "kernel-launcher $launcher_sum" \
        "$cid" "$image" >/dev/null
    docker rm -f "$cid" >/dev/null
    trap - EXIT
fi
docker tag "$image" "$repo:latest"
[ -z "$extra_tag" ] || docker tag "$image" "$repo:$extra_tag"
size="$(docker image inspect -f '{{.Size}}' "$image")"
log "$image: $((size / 1024 / 1024)) MiB, $((SECONDS - start)) s"
echo "$image"
