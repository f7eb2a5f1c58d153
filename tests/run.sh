#!/usr/bin/env bash
# Every test: the Rust unit and integration tests (property tests included),
# the fuzz targets for a bounded time (fuzz/run.sh), then the end-to-end suite
# with the real Chainlit data layer (tests/e2e/run.sh), then the checks of
# the deployment files (tests/deploy/run.sh).
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

if [ -x tests/e2e/run.sh ]; then
    tests/e2e/run.sh
fi
# The deployment files: Kubernetes manifests, Compose, alert rules and
# dashboard against what the binary exports.
if [ -x tests/deploy/run.sh ]; then
    tests/deploy/run.sh
fi
