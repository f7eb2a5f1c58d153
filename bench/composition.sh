#!/usr/bin/env bash
# Issue 18's figures (the promise where features meet): a hot key, the drain
# of one step's spooled versions, a document at limits.max_root_fields with
# /healthz probed meanwhile, and recovery after a live success. See
# bench/composition.py for what each measures.
#
#   bash bench/composition.sh                    # the build in this checkout
#   BASELINE_BIN=/path/to/old/datalayer-sidecar bash bench/composition.sh
#                                                # and an older build, same run
#
# The sidecar and the backend share PROXY_CORE, wrk gets LOAD_CORE. Prints
# JSON lines (also kept in bench/out/composition.jsonl) and a summary.
source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
ensure_tools
export RUN_DIR PROXY_CORE LOAD_CORE
export BACKEND_BIN="$REPO_DIR/target/release/examples/literal_backend"
export WRK_LUA="$BENCH_DIR/wrk.lua"
out="$OUT_DIR/composition.jsonl"
: > "$out"
SIDECAR_BIN="$SIDECAR_BIN" LABEL=this python3 "$BENCH_DIR/composition.py" | tee -a "$out"
if [ -n "${BASELINE_BIN:-}" ]; then
    SIDECAR_BIN="$BASELINE_BIN" LABEL=baseline python3 "$BENCH_DIR/composition.py" | tee -a "$out"
fi
