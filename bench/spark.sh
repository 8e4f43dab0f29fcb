#!/usr/bin/env bash
# Spark pre-warm benchmark (bench/spark_bench.py): kernel-launcher in Spark init modes
# none / lazy / eager against EG 3.3.0's own launch_ipykernel.py (lazy), all under the same
# spark-submit --master local[*] with pyspark 4.3.0, same machine, same run. Prints a table of
# medians (min–max) and ratios; raw JSON lines and per-run logs go to a temp dir it names.
# Then, in the same run, a pooled Spark kernel's first count() through gateway-lite --pool
# against gateway-lite launching on demand (bench/spark_pool_bench.py).
#   bench/spark.sh [RUNS]      (default 3 runs per variant)
# KERNEL_LAUNCHER=/path/to/kernel-launcher uses that binary; otherwise a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh >/dev/null 2>&1 || scripts/setup-env.sh
scripts/setup-spark.sh >/dev/null 2>&1 || scripts/setup-spark.sh
cache="${KL_CACHE:-$HOME/.cache/kernel-launcher}"
# shellcheck disable=SC1091
source "$cache/env.sh"
# shellcheck disable=SC1091
source "$cache/spark-env.sh"
cargo build --locked --release -p gateway-lite >&2
if [ -z "${KERNEL_LAUNCHER:-}" ]; then
    cargo build --locked --release -p launcher >&2
    KERNEL_LAUNCHER="$PWD/target/release/kernel-launcher"
fi
"$KL_PY_SPARK43" bench/spark_bench.py --launcher "$KERNEL_LAUNCHER" --runs "${1:-3}"
# The shared Python helpers (tests/support) are imported as the package `support`.
PYTHONPATH="$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" "$KL_PY_EG" bench/spark_pool_bench.py \
    --launcher "$KERNEL_LAUNCHER" --gateway "$PWD/target/release/gateway-lite" --runs "${1:-3}"
