#!/usr/bin/env bash
# The deployment files' checks (tests/deploy/test_deploy.py): kustomize
# (kubectl's), the Kubernetes schemas (kubernetes-validate), promtool
# (Debian's prometheus package), and the sidecar binary itself.
# Creates a virtualenv under tests/deploy/.venv (reused when complete).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
source "$REPO/tests/python-env.sh"
ensure_venv "$VENV" "$HERE/requirements.txt" deploy
ensure_sidecar "$REPO" debug
cd "$HERE"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider test_deploy.py "$@"
