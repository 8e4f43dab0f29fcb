#!/usr/bin/env bash
# Builds the Docker kernel image gateway-lite/scala-kernel:<tag>: Apache Toree (a Scala kernel
# on Spark) with the static kernel-launcher as its entrypoint.
#
#   images/scala-kernel/build.sh [--launcher PATH] [--tag TAG]
#
# Versions, and why: Toree 0.5.0 is the newest `toree` on PyPI; its assembly
# (toree-assembly-0.5.0-incubating.jar, org/apache/toree/kernel/BuildInfo) was built with
# Scala 2.12.15 against Spark 3.0.3. Spark 3.0 does not run on Java 17, the only JRE in
# bookworm, and Spark 4 is built for Scala 2.13, which the assembly cannot load; Spark 3.5
# (pyspark 3.5.9, Scala 2.12.18, Java 17) is the newest Spark with the same Scala binary version
# (2.12), and it is the Spark of spark-python-kernel, so both share the Spark rootfs
# (images/lib/spark.sh) and the spark-kernel layer; this image adds only Toree's jar.
#
# Same stages, caching and output contract as images/python-kernel/build.sh. The image sets
# KERNEL_LANGUAGE=scala, so without a command the launcher runs its scala default,
# `toree --profile <connection file>` (images/lib/spark-kernel: spark-submit --class
# org.apache.toree.Main <assembly>), plus Toree's own form of KERNEL_SPARK_CONTEXT_INIT_MODE
# (none gives --nosparkcontext). The image's default is eager, not lazy: Toree 0.5.0's SIGINT
# handler cancels Spark jobs through the lazily created context, so an interrupt that comes
# before Spark exists makes the handler build the session on the signal thread, which fails
# (a NullPointerException, no context class loader) and the running cell is not interrupted.
# Eager makes Toree build it during start-up (measured here: ready ~2.5 s later, 28 s instead
# of 25.6 s). SPARK_MASTER (default local[*]), SPARK_OPTS and KERNEL_EXTRA_SPARK_OPTS as in
# spark-python-kernel.
#
# Environment: KL_CACHE, KL_STATIC_LAUNCHER, KL_DEBIAN_MIRROR; see images/lib/image.sh. Toree's
# source distribution comes from the host's pip (its own index), cached under $KL_CACHE/wheels.
set -euo pipefail
lib="$(dirname "${BASH_SOURCE[0]}")/../lib"
# shellcheck source=images/lib/image.sh
source "$lib/image.sh"
# shellcheck source=images/lib/spark.sh
source "$lib/spark.sh"

toree=toree==0.5.0
toree_jar="toree-assembly-0.5.0-incubating.jar"

# toree_layer STAGE: Toree's assembly jar, taken from its PyPI source distribution.
toree_layer() {
    local stage="$1" sdist
    sdist="$(compgen -G "$IMAGE_WHEELS/toree-${toree#*==}.tar.gz" || true)"
    if [ -z "$sdist" ]; then
        log "downloading $toree (host pip)"
        "$(image_pip)" -m pip download --no-deps --no-binary :all: --dest "$IMAGE_WHEELS" "$toree" >&2
        sdist="$IMAGE_WHEELS/toree-${toree#*==}.tar.gz"
    fi
    local dir="$stage/usr/local/share/toree/lib"
    install -d -m 0755 "$stage/usr" "$stage/usr/local" "$stage/usr/local/share" \
        "$stage/usr/local/share/toree" "$dir"
    tar -xzf "$sdist" -O "toree-${toree#*==}/toree/lib/$toree_jar" >"$dir/$toree_jar"
    chmod 0644 "$dir/$toree_jar"
    chown -R 0:0 "$stage/usr"
}

image_init scala-kernel "$@"
spark_base
image_layer "$IMAGE_BASE" scala-kernel-base "$toree" toree_layer
image_finish scala-kernel \
    'ENV KERNEL_LANGUAGE=scala' \
    'ENV KERNEL_SPARK_CONTEXT_INIT_MODE=eager' \
    "ENV SPARK_HOME=$SPARK_HOME_IN_IMAGE"
