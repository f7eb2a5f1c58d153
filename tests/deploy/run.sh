#!/usr/bin/env bash
# The deployment files' checks (tests/deploy/test_deploy.py): kustomize
# (kubectl's), the Kubernetes schemas (kubernetes-validate), promtool
# (Debian's prometheus package), and the sidecar binary itself.
# Creates a virtualenv under tests/deploy/.venv (reused when complete).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import kubernetes_validate, pytest, yaml' 2>/dev/null; then
    echo "deploy: creating $VENV (kubernetes-validate, pytest, pyyaml)" >&2
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements.txt"
fi
if [ -z "${DLSC_BIN:-}" ]; then
    (cd "$REPO" && cargo build --locked --bin datalayer-sidecar >&2)
    export DLSC_BIN="$REPO/target/debug/datalayer-sidecar"
fi
cd "$HERE"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider test_deploy.py "$@"
