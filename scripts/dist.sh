#!/usr/bin/env bash
# Release artifacts from one command, into dist/ (or --out DIR):
#
#   kernel-launcher-VERSION-x86_64-linux.tar.gz (+ .sha256)   static kernel-launcher, LICENSE
#   gateway-lite-VERSION-x86_64-linux.tar.gz    (+ .sha256)   static gateway-lite and
#                                                             kernel-launcher, LICENSE, README.md,
#                                                             deploy/ (systemd unit, env file)
#   image kernel-launcher:VERSION   FROM scratch, only /kernel-launcher (for COPY --from=)
#   image gateway-lite:VERSION      FROM scratch, gateway-lite + kernel-launcher, non-root
#
#   scripts/dist.sh [--out DIR] [--no-images]
#
# Tarballs are reproducible (sorted names, fixed mtime and owner, gzip without a timestamp),
# so two builds of the same commit give the same sha256. Verify with `sha256sum -c FILE.sha256`
# in the directory that holds both. Only x86_64 is built: this toolchain has no other target;
# for aarch64 see the README's Install section (the same recipe with
# --target aarch64-unknown-linux-gnu and a cross linker).
# The last lines on stdout are the artifacts' paths and the image references.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
out="$root/dist"
images=1
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$(realpath -m "${2:?--out needs a directory}")"; shift 2 ;;
        --no-images) images=0; shift ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "dist.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done
log() { printf '[dist] %s\n' "$*" >&2; }

version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
[ -n "$version" ] || { log "no version in Cargo.toml's [workspace.package]"; exit 1; }
arch=x86_64
bin="$root/target/$arch-unknown-linux-gnu/release"

mkdir -p "$out"
# One run at a time per output directory (tests running in parallel may all call this).
exec 9>"$out/.lock"
flock 9
scripts/build-static.sh launcher gateway-lite >&2
for b in kernel-launcher gateway-lite; do
    file -b "$bin/$b" | grep -q 'static' || { log "$bin/$b is not statically linked"; exit 1; }
done
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

# tarball NAME FILE... : NAME.tar.gz holding NAME/ with the files, and NAME.tar.gz.sha256.
tarball() {
    local name="$1"; shift
    mkdir -p "$stage/$name"
    cp -R "$@" "$stage/$name/"
    chmod -R u+rwX,go+rX,go-w "$stage/$name"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$stage" -cf - "$name" \
        | gzip -n -9 >"$out/$name.tar.gz"
    (cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
    log "$out/$name.tar.gz: $(stat -c %s "$out/$name.tar.gz") bytes"
}
tarball "kernel-launcher-$version-$arch-linux" "$bin/kernel-launcher" LICENSE
tarball "gateway-lite-$version-$arch-linux" "$bin/gateway-lite" "$bin/kernel-launcher" \
    LICENSE README.md deploy

printed=("$out/kernel-launcher-$version-$arch-linux.tar.gz" "$out/gateway-lite-$version-$arch-linux.tar.gz")
if [ "$images" = 1 ]; then
    command -v docker >/dev/null && docker info >/dev/null 2>&1 \
        || { log "the Docker daemon is not usable (or pass --no-images)"; exit 1; }
    ctx="$stage/launcher-image"
    mkdir -p "$ctx"
    install -m 0755 "$bin/kernel-launcher" "$ctx/kernel-launcher"
    docker build -q -t "kernel-launcher:$version" -f images/kernel-launcher/Dockerfile "$ctx" >&2
    ctx="$stage/gateway-image"
    mkdir -p "$ctx/state" "$ctx/root/tmp"
    # /tmp as a tar entry: COPY makes the directory root-owned 0755 (the legacy builder), ADD
    # of a tar keeps its mode, 1777, so any uid the image is run as can use it.
    chmod 1777 "$ctx/root/tmp"
    tar --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$ctx/root" -cf "$ctx/tmp.tar" tmp
    install -m 0755 "$bin/kernel-launcher" "$bin/gateway-lite" "$ctx/"
    printf 'root:x:0:0:root:/:/sbin/nologin\ngateway-lite:x:65532:65532:gateway-lite:/var/lib/gateway-lite:/sbin/nologin\n' >"$ctx/passwd"
    printf 'root:x:0:\ngateway-lite:x:65532:\n' >"$ctx/group"
    docker build -q -t "gateway-lite:$version" -f images/gateway-lite/Dockerfile "$ctx" >&2
    printed+=("kernel-launcher:$version" "gateway-lite:$version")
fi
printf '%s\n' "${printed[@]}"
