# shellcheck shell=bash
# The Spark rootfs shared by images/spark-python-kernel and images/scala-kernel (sourced after
# images/lib/image.sh): bookworm minbase with Debian's python3-ipykernel and
# openjdk-17-jre-headless, plus pyspark and py4j from PyPI (the host's pip, wheels cached under
# $KL_CACHE/wheels) installed into /usr/local/lib/python3.11/dist-packages. pyspark's wheel is a
# complete Spark distribution (bin/spark-submit, jars/), so SPARK_HOME points into it.
#
# The pins are those of tests/requirements/spark35.txt: Spark 3.5 is the newest line built for
# Scala 2.12, which Toree 0.5.0 (scala-kernel) needs, and it runs on Java 17.

SPARK_PYSPARK=pyspark==3.5.9
SPARK_PY4J=py4j==0.10.9.9
SPARK_SITE=/usr/local/lib/python3.11/dist-packages
SPARK_HOME_IN_IMAGE="$SPARK_SITE/pyspark"

spark_rootfs_hook() {
    local r="$1"
    image_pip_install "$r" "$SPARK_SITE" "$SPARK_PYSPARK" "$SPARK_PY4J"
    [ -x "$r$SPARK_HOME_IN_IMAGE/bin/spark-submit" ] || chmod 0755 "$r$SPARK_HOME_IN_IMAGE"/bin/*
    # Compiled once here, so no kernel user needs to write next to the sources.
    chroot "$r" python3 -m compileall -q "$SPARK_SITE" >/dev/null
}

# spark_rootfs: sets IMAGE_BASE to the shared Spark rootfs image.
spark_rootfs() {
    # python3-cffi-backend and libboost-regex1.74.0: see images/python-kernel/build.sh.
    # libnss-wrapper: lets the JVM see a user name for a uid without a passwd entry (bin/spark-kernel-env).
    image_rootfs spark-base bookworm minbase "1 $SPARK_PYSPARK $SPARK_PY4J" spark_rootfs_hook \
        python3-ipykernel python3-cffi-backend libboost-regex1.74.0 openjdk-17-jre-headless \
        libnss-wrapper
}

# spark_kernel_layer STAGE: images/lib/spark-kernel (with this image's SPARK_HOME filled in) as
# /usr/local/bin/spark-python and toree.
spark_kernel_layer() {
    local stage="$1" bin="$1/usr/local/bin"
    install -d -m 0755 "$stage/usr" "$stage/usr/local" "$bin"
    sed "s|^image_spark_home=@SPARK_HOME@\$|image_spark_home=$SPARK_HOME_IN_IMAGE|" \
        "$IMAGE_ROOT/images/lib/spark-kernel" >"$bin/spark-kernel"
    grep -q "^image_spark_home=$SPARK_HOME_IN_IMAGE\$" "$bin/spark-kernel" || die "spark-kernel has no image_spark_home line"
    chmod 0755 "$bin/spark-kernel"
    ln -s spark-kernel "$bin/spark-python"
    ln -s spark-kernel "$bin/toree"
    chown -R 0:0 "$stage/usr"
}

# spark_base: sets IMAGE_BASE to the Spark rootfs plus the spark-kernel layer, the common base
# of spark-python-kernel and scala-kernel.
spark_base() {
    spark_rootfs
    local lib="$IMAGE_ROOT/images/lib" key
    key="spark-kernel $(cat "$lib/spark-kernel" "$lib/spark.sh" | sha256sum | cut -c1-16)"
    image_layer "$IMAGE_BASE" spark-kernel-base "$key" spark_kernel_layer
}
