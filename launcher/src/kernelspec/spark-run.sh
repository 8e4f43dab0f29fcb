#!/usr/bin/env bash
# Run script for kernel-launcher's Spark kernelspecs: embedded in the binary and
# written as bin/run.sh by `kernel-launcher kernelspec install --mode spark-*`.
# Usage: run.sh LAUNCHER_OPTIONS... (the kernelspec's argv; the gateway fills it in).
# It execs spark-submit with kernel-launcher as the driver's Python:
#
#   spark-submit $SPARK_OPTS --conf spark.pyspark.driver.python=$KERNEL_LAUNCHER \
#       <this spec's bin/primary.py> $LAUNCH_OPTS <launcher options from the gateway>
#
# spark-submit's PythonRunner then starts kernel-launcher (it ignores the
# primary resource), which starts ipykernel attached to the same driver JVM,
# reports the connection payload and exits when the kernel does, so
# spark-submit ends with 0. If the JVM dies, the launcher sees stdin close and
# shuts the kernel down.
#
# Environment (from the kernelspec's env block):
#   SPARK_HOME        Spark distribution (required)
#   KERNEL_LAUNCHER   path of kernel-launcher on the driver host (default: kernel-launcher on PATH);
#                     ./kernel-launcher/kernel-launcher when the spec ships it with --archives
#   SPARK_OPTS        spark-submit options; ${KERNEL_ID} etc. are expanded here
#   LAUNCH_OPTS       extra kernel-launcher options, e.g. --interpreter /opt/conda/bin/python
#   EG_IMPERSONATION_ENABLED=True adds --proxy-user ${KERNEL_USERNAME}
set -eo pipefail  # no -u: SPARK_OPTS may name unset ${VARS}, which expand to nothing

if [ -z "${SPARK_HOME:-}" ]; then
    echo "run.sh: SPARK_HOME is not set; set it in the kernelspec's env block" >&2
    exit 1
fi
spec_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
launcher="${KERNEL_LAUNCHER:-$(command -v kernel-launcher || true)}"
if [ -z "$launcher" ]; then
    echo "run.sh: kernel-launcher not found; set KERNEL_LAUNCHER in the kernelspec's env block" >&2
    exit 1
fi
proxy_user=""
if [ "${EG_IMPERSONATION_ENABLED:-False}" = "True" ]; then
    proxy_user="--proxy-user ${KERNEL_USERNAME:-UNSPECIFIED}"
fi

echo "run.sh: starting a Spark kernel ${KERNEL_ID:-} for ${KERNEL_USERNAME:-unknown user} with spark-submit" >&2
# SPARK_OPTS and LAUNCH_OPTS are option strings written by the kernelspec
# author (with ${VARS} to expand), hence eval, as EG's own run scripts do.
eval exec "\"${SPARK_HOME}/bin/spark-submit\"" "${SPARK_OPTS:-}" ${proxy_user} \
    --conf "spark.pyspark.driver.python=\"${launcher}\"" \
    "\"${spec_dir}/bin/primary.py\"" "${LAUNCH_OPTS:-}" '"$@"'
