#!/usr/bin/env bash
# Kernel image benchmark: builds the four kernel images (images/*/build.sh, cached) and, for
# each, times `docker run` (as EG 3.3's launch_docker.py runs it: environment only,
# --user 1000) until a real response listener has the encrypted connection payload; median of
# RUNS. Prints a Markdown table
# (image, size, median, range) on stdout; build progress goes to stderr.
#   bench/images.sh [RUNS]      (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
images=()
for name in python r spark-python scala; do
    images+=("$name=$(images/$name-kernel/build.sh | tail -n 1)")
done
KL_BENCH_IMAGES="${images[*]}" cargo bench --locked -q -p e2e --bench images -- "$runs"
