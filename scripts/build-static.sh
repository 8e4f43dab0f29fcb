#!/usr/bin/env bash
# Builds kernel-launcher (and, when named, gateway-lite) as fully static x86_64 binaries
# (static-pie, glibc).
#   scripts/build-static.sh                      kernel-launcher only
#   scripts/build-static.sh launcher gateway-lite    both (what scripts/dist.sh ships)
# Both the explicit --target and the getrandom cfg are required: the first keeps
# +crt-static away from proc-macros and build scripts, the second makes
# getrandom use the syscall instead of dlsym, so the binary needs no /dev.
# Static glibc cannot load NSS modules: host names resolve from /etc/hosts and DNS only
# (no LDAP/mDNS name services), which is what a container or a YARN node gives anyway.
# Output: target/x86_64-unknown-linux-gnu/release/{kernel-launcher,gateway-lite}
set -euo pipefail
cd "$(dirname "$0")/.."
packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(launcher)
args=()
for p in "${packages[@]}"; do args+=(-p "$p"); done
RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"' \
  cargo build --release --locked --target x86_64-unknown-linux-gnu "${args[@]}"
for p in "${packages[@]}"; do
    case "$p" in launcher) name=kernel-launcher ;; *) name="$p" ;; esac
    bin=target/x86_64-unknown-linux-gnu/release/$name
    echo "$bin: $(stat -c %s "$bin") bytes; $(file -b "$bin" 2>/dev/null || true)"
done
