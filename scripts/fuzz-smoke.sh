#!/usr/bin/env bash
# Smoke-fuzz every target in fuzz/ (the `protocol` crate's parsers of kernel, launcher and
# browser bytes, WebSocket framing included) for a few seconds each.
#
#   scripts/fuzz-smoke.sh [SECONDS]      # default 10 seconds per target
#   FUZZ_ASAN=1 scripts/fuzz-smoke.sh    # AddressSanitizer build (RUSTC_BOOTSTRAP on stable)
#   FUZZ_TARGETS="ws_client_frame ws_kernel_frame" scripts/fuzz-smoke.sh 60   # only these
#
# Installs cargo-fuzz 0.13.2 into $HOME/.cargo/bin if it is missing (cached there afterwards).
# Exits non-zero on the first crash; the crashing input is left in fuzz/artifacts/<target>/.
set -euo pipefail

secs="${1:-10}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version 2>/dev/null | grep -q '^cargo-fuzz 0\.13\.2$'; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

cd "$root/fuzz"
if [[ "${FUZZ_ASAN:-0}" == 1 ]]; then
    export RUSTC_BOOTSTRAP=1
    sanitizer=(-s address)
else
    sanitizer=(-s none)
fi

# Build all targets first so compile time does not count against the fuzzing time.
cargo fuzz build "${sanitizer[@]}"

for target in ${FUZZ_TARGETS:-$(cargo fuzz list)}; do
    mkdir -p "corpus/$target"
    seeds=()
    [[ -d "seeds/$target" ]] && seeds=("seeds/$target")
    log="$(mktemp)"
    if ! cargo fuzz run "${sanitizer[@]}" "$target" "corpus/$target" "${seeds[@]}" -- \
        -max_total_time="$secs" >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz-smoke: $target FAILED (input saved under fuzz/artifacts/$target/)" >&2
        rm -f "$log"
        exit 1
    fi
    runs="$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1)"
    echo "fuzz-smoke: $target ok: ${runs:-no summary}"
    rm -f "$log"
done
