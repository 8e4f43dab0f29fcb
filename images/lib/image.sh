# shellcheck shell=bash
# Shared machinery of the kernel image recipes (images/<name>/build.sh), sourced, not run.
#
# A recipe sets its name and the rootfs recipe, then calls, in order:
#   image_init NAME "$@"          options (--launcher PATH, --tag TAG, --help), checks, the lock
#   image_rootfs NAME-base SUITE VARIANT VERSION HOOK PACKAGE...
#                                 a debootstrap rootfs of PACKAGE... (+ what HOOK adds), packed
#                                 under $KL_CACHE/images keyed by the recipe, imported once;
#                                 sets IMAGE_BASE. HOOK (a function, or : for none) gets the
#                                 rootfs directory and runs after the common clean-up.
#   image_layer FROM NAME KEY HOOK  optional: a layer of files on FROM (HOOK fills a staging
#                                 directory that is copied to / of the container), committed
#                                 once per KEY; sets IMAGE_BASE to the result.
#   image_finish NAME CHANGE...   the launcher layer (kernel-launcher, the bootstrap-kernel.sh
#                                 link, entrypoint, user 1000:100, the given Dockerfile
#                                 CHANGEs), tags :latest (and --tag), reports the size on
#                                 stderr and prints the image reference as the last stdout line.
#
# Environment: KL_CACHE (default ~/.cache/kernel-launcher), KL_STATIC_LAUNCHER (default
# target/x86_64-unknown-linux-gnu/release/kernel-launcher, built by scripts/build-static.sh when
# missing), KL_DEBIAN_MIRROR (default: the machine's own apt sources, see image_debian_mirror),
# KL_IMAGE_PREFIX (default gateway-lite: the images are <prefix>/<name>:<tag>).
# Python packages come from the host's pip with its own configuration (index, find-links,
# certificates; KL_PYTHON picks the python): see image_pip.

IMAGE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMAGE_CACHE="${KL_CACHE:-$HOME/.cache/kernel-launcher}/images"
IMAGE_WHEELS="${KL_CACHE:-$HOME/.cache/kernel-launcher}/wheels"
IMAGE_PREFIX="${KL_IMAGE_PREFIX:-gateway-lite}"
IMAGE_NAME=image
IMAGE_BASE=""
IMAGE_TAG=""
IMAGE_LAUNCHER=""
IMAGE_START=$SECONDS

log() { printf '[%s] %s\n' "$IMAGE_NAME" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# image_init NAME ARGS...: options, tools, the build lock and the static launcher.
image_init() {
    IMAGE_NAME="$1"
    shift
    IMAGE_LAUNCHER="${KL_STATIC_LAUNCHER:-$IMAGE_ROOT/target/x86_64-unknown-linux-gnu/release/kernel-launcher}"
    local script="$0"
    while [ $# -gt 0 ]; do
        case "$1" in
            --launcher) IMAGE_LAUNCHER="${2:?--launcher needs a path}"; shift 2 ;;
            --tag) IMAGE_TAG="${2:?--tag needs a value}"; shift 2 ;;
            -h|--help) sed -n '2,/^set -euo/p' "$script" | sed '$d;s/^# \{0,1\}//'; exit 0 ;;
            *) die "unknown argument $1 (see --help)" ;;
        esac
    done
    command -v docker >/dev/null || die "docker is not installed"
    docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable (docker info failed)"
    mkdir -p "$IMAGE_CACHE"
    # One build at a time (tests running in parallel all call the recipes; they share rootfs
    # tarballs and layers).
    exec 9>"$IMAGE_CACHE/.build.lock"
    flock 9
    if [ ! -f "$IMAGE_LAUNCHER" ]; then
        [ -z "${KL_STATIC_LAUNCHER:-}" ] || die "KL_STATIC_LAUNCHER=$IMAGE_LAUNCHER does not exist"
        log "building the static launcher (scripts/build-static.sh)"
        "$IMAGE_ROOT/scripts/build-static.sh" >&2
    fi
    IMAGE_LAUNCHER="$(realpath "$IMAGE_LAUNCHER")"
    # A dynamically linked launcher would not run in the image (no libgcc_s etc. guaranteed).
    if command -v file >/dev/null && ! file -b "$IMAGE_LAUNCHER" | grep -q 'static'; then
        die "$IMAGE_LAUNCHER is not statically linked; build it with scripts/build-static.sh"
    fi
}

# image_debian_mirror SUITE: prints the Debian mirror to debootstrap SUITE from: KL_DEBIAN_MIRROR,
# else the URI of this machine's apt source for SUITE with the main component (deb822
# /etc/apt/sources.list.d/*.sources first, then one-line `deb` entries).
image_debian_mirror() {
    local suite="$1" uri=""
    if [ -n "${KL_DEBIAN_MIRROR:-}" ]; then
        echo "$KL_DEBIAN_MIRROR"
        return
    fi
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822: blank-line separated stanzas; fields may repeat values separated by spaces.
        uri="$(awk -v suite="$suite" '
            function has(list, word,   n, a, i) { n = split(list, a, /[ \t]+/); for (i = 1; i <= n; i++) if (a[i] == word) return 1; return 0 }
            function flush() { if (has(types, "deb") && has(suites, suite) && has(comps, "main") && enabled != "no" && uris != "" && !found) { split(uris, u, /[ \t]+/); print u[1]; found = 1 } types = suites = comps = uris = ""; enabled = "" }
            /^[ \t]*$/ { flush(); next }
            /^#/ { next }
            { key = tolower($1); sub(/:$/, "", key); val = $0; sub(/^[^:]*:[ \t]*/, "", val) }
            key == "types" { types = val } key == "suites" { suites = val }
            key == "components" { comps = val } key == "uris" { uris = val }
            key == "enabled" { enabled = tolower(val) }
            END { flush() }' "$f")"
        [ -z "$uri" ] || break
    done
    if [ -z "$uri" ]; then
        local lists=()
        [ -f /etc/apt/sources.list ] && lists+=(/etc/apt/sources.list)
        for f in /etc/apt/sources.list.d/*.list; do [ -f "$f" ] && lists+=("$f"); done
        if [ ${#lists[@]} -gt 0 ]; then
            # deb [options] URI SUITE COMPONENT...
            uri="$(awk -v suite="$suite" '
                $1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                    if ($(i + 1) != suite) next
                    for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i; exit } }' "${lists[@]}")"
        fi
    fi
    [ -n "$uri" ] || die "no Debian mirror for $suite: this machine's apt sources (/etc/apt/sources.list.d/*.sources, /etc/apt/sources.list) have no $suite entry with the main component; set KL_DEBIAN_MIRROR=<mirror URL>"
    echo "${uri%/}"
}

# image_pip: prints the python whose pip (with this machine's own pip configuration: index,
# find-links, certificates) fetches wheels: KL_PYTHON or python3, else the kernel venv of
# scripts/setup-env.sh (KL_PY_KERNEL), whichever has pip.
image_pip() {
    local py
    for py in "${KL_PYTHON:-python3}" "${KL_PY_KERNEL:-}"; do
        if [ -n "$py" ] && "$py" -m pip --version >/dev/null 2>&1; then
            echo "$py"
            return
        fi
    done
    die "no pip found for Python wheels: ${KL_PYTHON:-python3} has no pip module and KL_PY_KERNEL is unset; install python3-pip, set KL_PYTHON to a python with pip, or run scripts/setup-env.sh and source \$HOME/.cache/kernel-launcher/env.sh"
}

# image_wheels SPEC...: makes sure a wheel for each pinned SPEC (name==version) is in
# $IMAGE_WHEELS, built by pip when the index has only a source distribution.
image_wheels() {
    local py spec name version
    py="$(image_pip)"
    mkdir -p "$IMAGE_WHEELS"
    for spec in "$@"; do
        name="${spec%%==*}" version="${spec#*==}"
        [ "$name" != "$spec" ] || die "image_wheels: pin $spec as NAME==VERSION"
        if compgen -G "$IMAGE_WHEELS/${name//-/_}-$version-*.whl" >/dev/null; then
            continue
        fi
        log "wheel $spec ($py -m pip)"
        "$py" -m pip wheel --no-deps --wheel-dir "$IMAGE_WHEELS" "$spec" >&2
    done
}

# image_pip_install ROOTFS TARGET SPEC...: installs the cached wheels of SPEC... (no index, no
# dependencies: list them all) into ROOTFS/TARGET, not compiled (the rootfs's own python
# compiles them).
image_pip_install() {
    local rootfs="$1" target="$2"
    shift 2
    image_wheels "$@"
    "$(image_pip)" -m pip install --no-index --find-links "$IMAGE_WHEELS" --no-deps --no-compile \
        --target "$rootfs$target" "$@" >&2
}

# Steps every rootfs gets after debootstrap: no package lists, caches, logs or docs, and the
# non-root user kernels run as (Enterprise Gateway's default KERNEL_UID 1000, KERNEL_GID 100).
image_rootfs_common() {
    local r="$1"
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old \
        "$r"/var/log/* "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* \
        "$r"/debootstrap
    : >"$r/etc/hostname"
    # Written directly: useradd would need the chroot's login package.
    grep -q '^users:x:100:' "$r/etc/group" || die "the rootfs has no users group (gid 100)"
    echo 'jovyan:x:1000:100:Jupyter kernel user:/home/jovyan:/bin/sh' >>"$r/etc/passwd"
    echo 'jovyan:*:19000:0:99999:7:::' >>"$r/etc/shadow"
    mkdir -p "$r/home/jovyan"
    chown 1000:100 "$r/home/jovyan"
    chmod 1777 "$r/tmp"
}

# image_rootfs NAME SUITE VARIANT VERSION HOOK PACKAGE...: sets IMAGE_BASE
# (<prefix>/NAME:<key>).
# The key covers VERSION, SUITE, VARIANT and the packages; bump VERSION when HOOK changes.
image_rootfs() {
    local repo="$IMAGE_PREFIX/$1" suite="$2" variant="$3" version="$4" hook="$5"
    shift 5
    local packages=("$@") key
    key="$(printf '%s\n' "$version" "$suite" "$variant" "${packages[@]}" | sha256sum | cut -c1-16)"
    local rootfs="$IMAGE_CACHE/rootfs-$suite-$key.tar"
    IMAGE_BASE="$repo:$key"
    if docker image inspect "$IMAGE_BASE" >/dev/null 2>&1; then
        return
    fi
    if [ -f "$rootfs" ]; then
        log "rootfs cached: $rootfs"
    else
        command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap, or scripts/setup-env.sh)"
        [ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
        local mirror tmp include
        mirror="$(image_debian_mirror "$suite")"
        tmp="$(mktemp -d "$IMAGE_CACHE/.rootfs-XXXXXX")"
        # shellcheck disable=SC2064
        trap "rm -rf '$tmp'" EXIT
        include="$(IFS=,; echo "${packages[*]}")"
        log "debootstrap $suite ($variant, $include) from $mirror"
        debootstrap --variant="$variant" --include="$include" "$suite" "$tmp/root" "$mirror" >&2
        image_rootfs_common "$tmp/root"
        "$hook" "$tmp/root"
        tar --numeric-owner -C "$tmp/root" -cf "$tmp/rootfs.tar" .
        mv "$tmp/rootfs.tar" "$rootfs"
        rm -rf "$tmp"
        trap - EXIT
    fi
    log "importing $IMAGE_BASE"
    docker import --message "debootstrap $suite $variant ${packages[*]}" \
        --change "LABEL org.jupyter.gateway-lite.rootfs=$key" "$rootfs" "$IMAGE_BASE" >/dev/null
}

# image_commit_files FROM IMAGE STAGE MESSAGE [CHANGE...]: copies STAGE/. onto / of a container
# of FROM and commits it as IMAGE.
image_commit_files() {
    local from="$1" image="$2" stage="$3" message="$4"
    shift 4
    local cid changes=()
    cid="$(docker create "$from" /bin/true)"
    # shellcheck disable=SC2064
    trap "docker rm -f '$cid' >/dev/null 2>&1 || true" EXIT
    # docker cp keeps the files' modes and owners: the stage decides them.
    # The top-level entries only: "." would carry the staging directory's mode onto /.
    local entries=()
    mapfile -t entries < <(ls -A "$stage")
    tar --numeric-owner -C "$stage" -cf - "${entries[@]}" | docker cp - "$cid:/"
    local c
    for c in "$@"; do changes+=(--change "$c"); done
    docker commit "${changes[@]}" --message "$message" "$cid" "$image" >/dev/null
    docker rm -f "$cid" >/dev/null
    trap - EXIT
}

# image_layer FROM NAME KEY HOOK: a layer of files HOOK writes into a staging directory (its
# argument), committed on FROM as <prefix>/NAME:<hash of FROM's id and KEY>; sets IMAGE_BASE.
image_layer() {
    local from="$1" repo="$IMAGE_PREFIX/$2" key="$3" hook="$4" id tag
    id="$(docker image inspect -f '{{.Id}}' "$from")"
    tag="$(printf '%s\n' "$id" "$key" | sha256sum | cut -c1-16)"
    IMAGE_BASE="$repo:$tag"
    if docker image inspect "$IMAGE_BASE" >/dev/null 2>&1; then
        return
    fi
    local stage
    stage="$(mktemp -d "$IMAGE_CACHE/.layer-XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$stage'" EXIT
    log "adding a layer ($key) as $IMAGE_BASE"
    "$hook" "$stage"
    trap - EXIT
    image_commit_files "$from" "$IMAGE_BASE" "$stage" "$key"
    rm -rf "$stage"
}

# image_finish NAME CHANGE...: the launcher layer on IMAGE_BASE, as <prefix>/NAME:<tag>; prints
# the image reference.
image_finish() {
    local repo="$IMAGE_PREFIX/$1"
    shift
    local launcher_sum tag image
    launcher_sum="$(sha256sum "$IMAGE_LAUNCHER" | cut -c1-64)"
    tag="$(printf '%s\n' "$(docker image inspect -f '{{.Id}}' "$IMAGE_BASE")" "$launcher_sum" "$@" | sha256sum | cut -c1-12)"
    image="$repo:$tag"
    if docker image inspect "$image" >/dev/null 2>&1; then
        log "up to date: $image"
    else
        log "adding the launcher ($IMAGE_LAUNCHER) as $image"
        local stage
        stage="$(mktemp -d)"
        # 0755 and root-owned, so every KERNEL_UID can run it and none can replace it.
        install -d -m 0755 "$stage/usr" "$stage/usr/local" "$stage/usr/local/bin"
        install -m 0755 "$IMAGE_LAUNCHER" "$stage/usr/local/bin/kernel-launcher"
        # Enterprise Gateway's images start kernels with this name (its Swarm and Kubernetes
        # templates and deployments name it); kernel-launcher ignores its argv[0].
        ln -s kernel-launcher "$stage/usr/local/bin/bootstrap-kernel.sh"
        chown -R 0:0 "$stage/usr"
        image_commit_files "$IMAGE_BASE" "$image" "$stage" "kernel-launcher $launcher_sum" \
            'ENTRYPOINT ["/usr/local/bin/kernel-launcher"]' \
            'CMD []' \
            'USER 1000:100' \
            'WORKDIR /home/jovyan' \
            'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            'ENV HOME=/home/jovyan' \
            'ENV LANG=C.UTF-8' \
            "LABEL org.jupyter.gateway-lite.launcher-sha256=$launcher_sum" \
            "$@"
        rm -rf "$stage"
    fi
    docker tag "$image" "$repo:latest"
    [ -z "$IMAGE_TAG" ] || docker tag "$image" "$repo:$IMAGE_TAG"
    local size
    size="$(docker image inspect -f '{{.Size}}' "$image")"
    log "$image: $((size / 1024 / 1024)) MiB, $((SECONDS - IMAGE_START)) s"
    echo "$image"
}
