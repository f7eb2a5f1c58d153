# Sourced by the scripts that run Python against the sidecar
# (tests/e2e/run.sh, tests/deploy/run.sh, demo/run.sh).

# ensure_venv VENV REQUIREMENTS LABEL: a virtualenv at VENV with
# REQUIREMENTS installed. Reused while it holds a copy of the requirements
# it was installed from that matches the file; made again otherwise.
ensure_venv() {
    local venv=$1 req=$2 label=$3
    if [ -x "$venv/bin/python" ] && cmp -s "$req" "$venv/requirements.installed"; then
        return
    fi
    echo "$label: creating $venv ($(grep -v '^#' "$req" | tr '\n' ' '))" >&2
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
    cp "$req" "$venv/requirements.installed"
}

# ensure_sidecar REPO PROFILE: DLSC_BIN, when unset, is the sidecar built
# from REPO with PROFILE (debug or release).
ensure_sidecar() {
    local repo=$1 profile=$2
    [ -n "${DLSC_BIN:-}" ] && return
    if [ "$profile" = release ]; then
        (cd "$repo" && cargo build --release --locked --bin datalayer-sidecar >&2)
    else
        (cd "$repo" && cargo build --locked --bin datalayer-sidecar >&2)
    fi
    export DLSC_BIN="$repo/target/$profile/datalayer-sidecar"
}
