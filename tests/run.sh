#!/usr/bin/env bash
# Every test: the Rust unit and integration tests (property tests included),
# the fuzz targets for a bounded time (fuzz/run.sh), then the end-to-end suite
# with the real Chainlit data layer (tests/e2e/run.sh), a two-minute soak
# (bench/soak.sh), then the checks of the deployment files
# (tests/deploy/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests need on a fresh machine (Debian packages, cargo-fuzz); a
# no-op once installed.
bash tests/setup.sh

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --all-targets --no-fail-fast
else
    cargo test --locked --all-targets --no-fail-fast
fi
cargo test --locked --doc

# Every fuzz target from its seeds for FUZZ_SECONDS (15 s) each; a crash,
# hang or leak fails the run (longer: fuzz/run.sh 600).
FUZZ_SECONDS="${FUZZ_SECONDS:-15}" fuzz/run.sh

if [ -x tests/e2e/run.sh ]; then
    tests/e2e/run.sh
fi

# The soak in two minutes (the hour: bench/soak.sh): steady writes with the
# flaky fault mix, a reload every 10 s, a kill -9 and restart every 40 s;
# fails when an acknowledged write is lost or stale. The debug build the
# tests above built; the venv tests/e2e/run.sh built.
SIDECAR_BIN=target/debug/datalayer-sidecar SOAK_SECONDS=120 SOAK_RELOAD=10 \
    SOAK_KILL=40 SOAK_SAMPLE=2 SOAK_RATE=30 SOAK_OUT="$(mktemp -d /tmp/dlsc-soak.XXXXXX)" \
    bench/soak.sh
# The deployment files: Kubernetes manifests, Compose, alert rules and
# dashboard against what the binary exports.
if [ -x tests/deploy/run.sh ]; then
    tests/deploy/run.sh
fi
