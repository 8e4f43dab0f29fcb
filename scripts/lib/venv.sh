# Shared by scripts/setup-env.sh and scripts/setup-spark.sh (sourced, not run).
# ensure_venv NAME REQUIREMENTS_FILE: makes $KL_CACHE/venv-NAME hold exactly the
# pinned requirements, rebuilding it only when the file (or the base Python)
# changed. Needs KL_CACHE, KL_PYTHON, repo_root and a log function.

ensure_venv() {
    local name="$1" req="$2"
    local venv="$KL_CACHE/venv-$name"
    local base want
    base="$("$KL_PYTHON" -c 'import sys; print(sys.version.split()[0])')"
    want="$( { sha256sum "$req" | cut -d' ' -f1; echo "$base"; } | sha256sum | cut -d' ' -f1)"
    if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.kl-requirements-hash" 2>/dev/null)" = "$want" ]; then
        log "venv-$name: up to date"
        return
    fi
    log "venv-$name: (re)creating from ${req#"$repo_root"/}"
    rm -rf "$venv"
    "$KL_PYTHON" -m venv "$venv"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install -q --no-input -r "$req"
    "$venv/bin/python" -m pip check >&2 || log "venv-$name: pip check reported conflicts (pins are what was resolved and tested)"
    echo "$want" >"$venv/.kl-requirements-hash"
}
