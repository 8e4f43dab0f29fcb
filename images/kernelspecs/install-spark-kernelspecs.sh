#!/usr/bin/env bash
# Writes Enterprise Gateway kernelspecs that run a PySpark kernel through
# kernel-launcher under spark-submit, one per Spark deployment:
#
#   spark_python_local          --master local[*]                    DistributedProcessProxy
#   spark_python_standalone     --master spark://... (client mode)   DistributedProcessProxy
#   spark_python_yarn_client    --master yarn --deploy-mode client   DistributedProcessProxy
#   spark_python_yarn_cluster   --master yarn --deploy-mode cluster  YarnClusterProcessProxy
#
# interrupt_mode is "message": the interrupt travels to ipykernel over ZMQ and
# never as a signal to the spark-submit process group, which would kill the
# driver JVM (exit 130) and lose the session. Inside the kernel, the interrupt
# also cancels running Spark jobs (see launcher/src/spark_prewarm.py).
#
# Usage: install-spark-kernelspecs.sh --prefix DIR --spark-home DIR \
#          [--launcher PATH] [--python PATH] [--master-url spark://HOST:7077] \
#          [--mode lazy|eager|none] [--extra-spark-opts "..."] [--name-suffix SUFFIX] \
#          [--ship-launcher yes|no]
# YARN cluster mode runs the driver, so kernel-launcher, on a NodeManager. With
# --ship-launcher yes (the default) the launcher travels with each job: the spec
# holds bin/kernel-launcher.tar.gz (the --launcher binary), spark-submit gets
# `--archives <it>#kernel-launcher`, YARN unpacks it into the driver container's
# working directory and the driver's Python is ./kernel-launcher/kernel-launcher.
# NodeManagers then need only the Python (with ipykernel) at --python's path.
# With --ship-launcher no, kernel-launcher must exist at --launcher's path on
# every NodeManager, as Enterprise Gateway's scripts must.
set -euo pipefail

prefix="" spark_home="" launcher="/usr/local/bin/kernel-launcher" python="python3"
master_url="spark://127.0.0.1:7077" mode="lazy" extra="" suffix="" ship="yes"
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="$2"; shift 2 ;;
        --spark-home) spark_home="$2"; shift 2 ;;
        --launcher) launcher="$2"; shift 2 ;;
        --python) python="$2"; shift 2 ;;
        --master-url) master_url="$2"; shift 2 ;;
        --mode) mode="$2"; shift 2 ;;
        --extra-spark-opts) extra="$2"; shift 2 ;;
        --name-suffix) suffix="$2"; shift 2 ;;
        --ship-launcher) ship="$2"; shift 2 ;;
        *) echo "install-spark-kernelspecs.sh: unknown option $1 (see the header of this script)" >&2; exit 64 ;;
    esac
done
if [ -z "$prefix" ] || [ -z "$spark_home" ]; then
    echo "install-spark-kernelspecs.sh: --prefix and --spark-home are required" >&2
    exit 64
fi
case "$mode" in lazy|eager|none) ;; *) echo "--mode must be lazy, eager or none" >&2; exit 64 ;; esac
case "$ship" in yes|no) ;; *) echo "--ship-launcher must be yes or no" >&2; exit 64 ;; esac
if [ "$ship" = yes ] && [ ! -x "$launcher" ]; then
    echo "install-spark-kernelspecs.sh: --ship-launcher yes packs --launcher $launcher, which is not an executable file here (give its path, or --ship-launcher no)" >&2
    exit 64
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
proxy_pkg="enterprise_gateway.services.processproxies"

# JSON string escaping for the few values we substitute.
json() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }

write_spec() {
    local name="$1" display="$2" proxy="$3" spark_opts="$4" ship_it="${5:-no}"
    local dir="$prefix/$name$suffix"
    local spec_launcher="$launcher"
    mkdir -p "$dir/bin"
    if [ "$ship_it" = yes ]; then
        # YARN unpacks the archive into the container's working directory under the alias
        # after '#'; tar keeps the executable bit, which --files would not.
        local stage
        stage="$(mktemp -d)"
        install -m 0755 "$launcher" "$stage/kernel-launcher"
        tar --owner=0 --group=0 --numeric-owner -C "$stage" -czf "$dir/bin/kernel-launcher.tar.gz" kernel-launcher
        rm -rf "$stage"
        spark_opts="$spark_opts --archives $dir/bin/kernel-launcher.tar.gz#kernel-launcher"
        spec_launcher="./kernel-launcher/kernel-launcher"
    fi
    install -m 0755 "$here/spark-run.sh" "$dir/bin/run.sh"
    printf '%s\n' '# Primary resource for spark-submit. kernel-launcher ignores it; it is never run.' \
        'raise SystemExit("kernel-launcher runs this kernel; this file is only the primary resource")' >"$dir/bin/primary.py"
    cat >"$dir/kernel.json" <<JSON
{
  "display_name": $(json "$display"),
  "language": "python",
  "interrupt_mode": "message",
  "metadata": {
    "process_proxy": {"class_name": "$proxy_pkg.$proxy"}
  },
  "env": {
    "SPARK_HOME": $(json "$spark_home"),
    "KERNEL_LAUNCHER": $(json "$spec_launcher"),
    "SPARK_OPTS": $(json "$spark_opts${extra:+ $extra} \${KERNEL_EXTRA_SPARK_OPTS}"),
    "LAUNCH_OPTS": $(json "--interpreter $python")
  },
  "argv": [
    "$dir/bin/run.sh",
    "--RemoteProcessProxy.kernel-id", "{kernel_id}",
    "--RemoteProcessProxy.response-address", "{response_address}",
    "--RemoteProcessProxy.public-key", "{public_key}",
    "--RemoteProcessProxy.port-range", "{port_range}",
    "--RemoteProcessProxy.spark-context-initialization-mode", "$mode"
  ]
}
JSON
    echo "wrote $dir"
}

name_opt='--name ${KERNEL_ID:-ERROR__NO__KERNEL_ID}'
write_spec spark_python_local "Spark - Python (local mode, kernel-launcher)" \
    distributed.DistributedProcessProxy "--master local[*] $name_opt"
write_spec spark_python_standalone "Spark - Python (standalone client mode, kernel-launcher)" \
    distributed.DistributedProcessProxy "--master $master_url --deploy-mode client $name_opt"
write_spec spark_python_yarn_client "Spark - Python (YARN client mode, kernel-launcher)" \
    distributed.DistributedProcessProxy "--master yarn --deploy-mode client $name_opt"
write_spec spark_python_yarn_cluster "Spark - Python (YARN cluster mode, kernel-launcher)" \
    yarn.YarnClusterProcessProxy \
    "--master yarn --deploy-mode cluster $name_opt --conf spark.yarn.submit.waitAppCompletion=false --conf spark.yarn.maxAppAttempts=1" \
    "$ship"
