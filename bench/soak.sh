#!/usr/bin/env bash
# The soak (bench/soak.py): an hour of steady step and thread writes through
# the sidecar with the flaky fault mix at the backend, a reload every minute,
# a kill -9 and restart every ten minutes; samples RSS, descriptors, spool
# depth and disk, then checks nothing acknowledged was lost or stale.
#
#   bench/soak.sh                      # the hour, release build
#   SOAK_SECONDS=120 SOAK_RELOAD=10 SOAK_KILL=40 bench/soak.sh   # what CI runs
#
# Figures: bench/out/soak-<time>/summary.json, samples.csv, soak.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${SOAK_PYTHON:-tests/e2e/.venv/bin/python}"
if ! "$PY" -c 'import httpx, graphql' 2>/dev/null; then
    echo "soak: $PY lacks httpx/graphql-core; run tests/e2e/run.sh once (it builds that venv)" >&2
    exit 1
fi
BIN="${SIDECAR_BIN:-target/release/datalayer-sidecar}"
if [ -z "${SIDECAR_BIN:-}" ]; then
    cargo build --release --locked >&2
fi
OUT="${SOAK_OUT:-bench/out/soak-$(date +%Y%m%d-%H%M%S)}"
exec "$PY" bench/soak.py --binary "$BIN" --out "$OUT" \
    --seconds "${SOAK_SECONDS:-3600}" --reload-every "${SOAK_RELOAD:-60}" \
    --kill-every "${SOAK_KILL:-600}" --sample-every "${SOAK_SAMPLE:-5}" \
    --rate "${SOAK_RATE:-40}" --workers "${SOAK_WORKERS:-16}" --settle "${SOAK_SETTLE:-180}"
