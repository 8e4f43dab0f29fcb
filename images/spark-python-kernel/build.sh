#!/usr/bin/env bash
# Builds the Docker kernel image gateway-lite/spark-python-kernel:<tag>: a PySpark kernel whose
# driver runs in the container. Debian's openjdk-17-jre-headless and python3-ipykernel, pyspark
# and py4j from PyPI (the pins of tests/requirements/spark35.txt; the wheel is a whole Spark
# distribution, SPARK_HOME), and the static kernel-launcher as the entrypoint.
#
#   images/spark-python-kernel/build.sh [--launcher PATH] [--tag TAG]
#
# Same stages, caching and output contract as images/python-kernel/build.sh; the Spark rootfs
# (images/lib/spark.sh) is shared with images/scala-kernel.
#
# Process tree in a container: kernel-launcher (PID 1: reaps, forwards signals, reports the
# payload) -> spark-submit's JVM (the driver, its process group) -> python3 running ipykernel
# as spark.pyspark.driver.python. The image sets KERNEL_LAUNCHER_INTERPRETER=spark-python
# (images/lib/spark-kernel), so the launcher's python default command runs under spark-submit,
# and KERNEL_SPARK_CONTEXT_INIT_MODE=lazy: the launcher's Spark pre-warm then defines spark, sc,
# sql, sqlContext in the kernel, attached to the driver JVM (eager and none work as elsewhere).
# Master: SPARK_MASTER (default local[*]); more spark-submit options: SPARK_OPTS,
# KERNEL_EXTRA_SPARK_OPTS (e.g. -e SPARK_MASTER=spark://host:7077 -e SPARK_OPTS="--conf
# spark.executor.memory=2g").
#
# Environment: KL_CACHE, KL_STATIC_LAUNCHER, KL_DEBIAN_MIRROR; see images/lib/image.sh.
set -euo pipefail
lib="$(dirname "${BASH_SOURCE[0]}")/../lib"
# shellcheck source=images/lib/image.sh
source "$lib/image.sh"
# shellcheck source=images/lib/spark.sh
source "$lib/spark.sh"

image_init spark-python-kernel "$@"
spark_base
image_finish spark-python-kernel \
    'ENV KERNEL_LANGUAGE=python' \
    'ENV KERNEL_LAUNCHER_INTERPRETER=/usr/local/bin/spark-python' \
    'ENV KERNEL_SPARK_CONTEXT_INIT_MODE=lazy' \
    "ENV SPARK_HOME=$SPARK_HOME_IN_IMAGE"
