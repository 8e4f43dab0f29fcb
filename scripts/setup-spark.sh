#!/usr/bin/env bash
# Prepare what the Spark tests (tests/spark) and the Spark benchmark (bench/spark.sh) need:
#   venv-spark43  pyspark 4.3.0  + ipykernel + jupyter_client   (tests/requirements/spark43.txt)
#                 + pycryptodomex, which EG 3.3.0's launch_ipykernel.py imports (bench/spark.sh runs it)
#   venv-spark35  pyspark 3.5.x  + ipykernel + jupyter_client   (tests/requirements/spark35.txt)
# and $KL_CACHE/spark-env.sh with KL_PY_SPARK43, KL_PY_SPARK35, KL_SPARK_HOME43, KL_SPARK_HOME35
# (SPARK_HOME is the pip-installed pyspark package directory, which carries bin/ and jars/).
#
# Java is not installed here: pyspark 3.5 and 4.3 both run on the machine's Java 17, which must
# already work (`java -version`).
#
# Idempotent: a venv is rebuilt only when its requirements file (or the base python) changed.
# A missing requirements file is resolved once from the loose spec below and frozen with
# `pip freeze`; commit the result. To re-resolve, delete the file and run this script again.
#
# Usage: scripts/setup-spark.sh            (KL_CACHE defaults to ~/.cache/kernel-launcher)
#        KL_PYTHON=/path/to/python3 scripts/setup-spark.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req_dir="$repo_root/tests/requirements"
KL_CACHE="${KL_CACHE:-$HOME/.cache/kernel-launcher}"
KL_PYTHON="${KL_PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

log() { printf '[setup-spark] %s\n' "$*" >&2; }
start_s=$SECONDS
mkdir -p "$KL_CACHE"

# ---------------------------------------------------------------- java
if ! command -v java >/dev/null 2>&1; then
    log "java is not on PATH; pyspark needs a Java 17 runtime (Debian: openjdk-17-jre-headless)"
    exit 1
fi
if ! java_version="$(java -version 2>&1)"; then
    log "\`java -version\` failed:"
    printf '%s\n' "$java_version" >&2
    exit 1
fi
log "java: $(printf '%s\n' "$java_version" | head -n1)"

# ---------------------------------------------------------------- requirements
# Loose specs, used only when the frozen file does not exist yet.
declare -A loose=(
    [spark43]="pyspark==4.3.0 ipykernel jupyter_client pycryptodomex"
    [spark35]="pyspark>=3.5,<3.6 ipykernel jupyter_client"
)

resolve() {
    local name="$1" req="$req_dir/$1.txt"
    [ -f "$req" ] && return
    log "$name: resolving '${loose[$name]}' (no $req yet)"
    local tmp
    tmp="$(mktemp -d "$KL_CACHE/resolve-$name.XXXXXX")"
    "$KL_PYTHON" -m venv "$tmp"
    # shellcheck disable=SC2086 # the loose spec is a word list
    "$tmp/bin/python" -m pip install -q ${loose[$name]}
    {
        echo "# venv-$name for tests/spark and bench/spark.sh (scripts/setup-spark.sh installs exactly this)."
        echo "# Resolved from: ${loose[$name]}"
        echo "# then frozen with 'pip freeze'. To re-resolve: delete this file and run scripts/setup-spark.sh."
        "$tmp/bin/python" -m pip freeze --all --exclude pip --exclude setuptools --exclude wheel
    } >"$req.tmp"
    mv "$req.tmp" "$req"
    rm -rf "$tmp"
}

# shellcheck source=scripts/lib/venv.sh
source "$repo_root/scripts/lib/venv.sh"

spark_home_of() {
    "$1" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))'
}

check_spark() {
    local name="$1" venv="$KL_CACHE/venv-$1" home
    home="$(spark_home_of "$venv/bin/python")"
    if [ ! -x "$home/bin/spark-submit" ] || [ ! -x "$home/bin/spark-class" ]; then
        log "venv-$name: $home has no executable bin/spark-submit and bin/spark-class"
        exit 1
    fi
    local v
    v="$("$venv/bin/python" -c 'import pyspark; print(pyspark.__version__)')"
    log "venv-$name: pyspark $v, SPARK_HOME=$home"
}

for name in spark43 spark35; do
    resolve "$name"
    ensure_venv "$name" "$req_dir/$name.txt"
    check_spark "$name"
done

# ---------------------------------------------------------------- env file
env_file="$KL_CACHE/spark-env.sh"
tmp_env="$(mktemp "$KL_CACHE/spark-env.sh.XXXXXX")"
cat >"$tmp_env" <<EOF
# Written by scripts/setup-spark.sh; read by tests/spark/conftest.py and bench/spark.sh (or: source it).
export KL_PY_SPARK43="$KL_CACHE/venv-spark43/bin/python"
export KL_PY_SPARK35="$KL_CACHE/venv-spark35/bin/python"
export KL_SPARK_HOME43="$(spark_home_of "$KL_CACHE/venv-spark43/bin/python")"
export KL_SPARK_HOME35="$(spark_home_of "$KL_CACHE/venv-spark35/bin/python")"
EOF
mv "$tmp_env" "$env_file"

log "done in $((SECONDS - start_s))s; env file: $env_file"
