#!/usr/bin/env bash
# Every benchmark, then the report (docs/benchmarks.md and the plot).
# About 25 minutes on the 2-core machine with the defaults.
set -euo pipefail
cd "$(dirname "$0")"
bash latency.sh
bash run.sh
bash faults.sh
bash spool.sh
bash postgres.sh
python3 report.py
