#!/usr/bin/env bash
# Latency a proxy adds to each request at a realistic load (open loop, well
# below saturation): the sidecar beside nginx as a resilient proxy, the bare
# hyper proxy (the floor of the HTTP library the sidecar is built on) and
# the upstream alone.
#
#   bash bench/latency.sh      # ROUNDS=5 DURATION=10 RATES="500 5000" CONNS=32
#
# examples/loadgen.rs sends RATE requests/s on CONNS keep-alive connections
# for DURATION s, each a ~1.4 KB LiteralAI `AddStep` with its own step id,
# and measures each request from its scheduled time (so a stall is not
# hidden by the generator waiting). Rounds interleave the targets (direct,
# nginx, hyper, sidecar, direct, ...) so drift hits every target alike. The
# upstream and the proxy under test share core $PROXY_CORE; the generator
# runs on core $LOAD_CORE. The sidecar runs the shipped config (access log,
# metrics, classification, retries, spool on standby).
#
# BASELINE_BIN=path adds a second sidecar built from other code (target
# "baseline", same config) to every round: an A/B of a change in one run.
#
# "added" is a target's percentile minus the upstream alone's in the same
# round. Writes bench/out/latency.jsonl; bench/report.py tabulates it.

source "$(dirname "$0")/lib.sh"
trap cleanup EXIT

ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-10}"
RATES="${RATES:-500 5000}"
CONNS="${CONNS:-32}"
ensure_tools
(cd "$REPO_DIR" && cargo build --release --locked --example loadgen --example bare_proxy >&2)
LOADGEN="$REPO_DIR/target/release/examples/loadgen"

python3 -c "import sys; sys.path.insert(0, '$BENCH_DIR'); from steps import add_step_body; print(add_step_body('STEP_ID'), end='')" > "$RUN_DIR/addstep.json"
OUT="$OUT_DIR/latency.jsonl"
: > "$OUT"

UP_PORT=$(free_port)
UPSTREAM=$(start_nginx upstream-nginx "$BENCH_DIR/conf/upstream-nginx.conf" "$UP_PORT")
NG_PORT=$(free_port); HY_PORT=$(free_port); SC_PORT=$(free_port); SC_ADMIN=$(free_port)
start_nginx proxy-nginx "$BENCH_DIR/conf/proxy-nginx.conf" "$NG_PORT" "$UP_PORT" \
    "$RUN_DIR/nginx-access.log combined buffer=64k flush=1s" >/dev/null
HYPER=$(start_bare_proxy "$HY_PORT" "$UP_PORT")
SIDECAR_RUN_CONFIG="$RUN_DIR/sidecar.toml"
sed -e "s|^path = \"data/spool.sqlite3\"|path = \"$RUN_DIR/spool.sqlite3\"|" \
    "$REPO_DIR/config/sidecar.toml" > "$SIDECAR_RUN_CONFIG"
SIDECAR=$(SIDECAR_CONFIG="$SIDECAR_RUN_CONFIG" start_sidecar "$SC_PORT" "$SC_ADMIN" "http://127.0.0.1:$UP_PORT")
sleep 0.5
declare -A PORT=([direct]=$UP_PORT [nginx]=$NG_PORT [hyper]=$HY_PORT [sidecar]=$SC_PORT)
TARGETS="direct nginx hyper sidecar"
if [ -n "${BASELINE_BIN:-}" ]; then
    BL_PORT=$(free_port); BL_ADMIN=$(free_port)
    start_baseline "$BL_PORT" "$BL_ADMIN" "http://127.0.0.1:$UP_PORT" "$SIDECAR_RUN_CONFIG" >/dev/null
    PORT[baseline]=$BL_PORT
    TARGETS="$TARGETS baseline"
fi

load() { # port rate seconds
    taskset -c "$LOAD_CORE" "$LOADGEN" --url "http://127.0.0.1:$1/api/graphql" --body "$RUN_DIR/addstep.json" \
        --rate "$2" --duration "$3" --connections "$CONNS" --unique
}
for t in $TARGETS; do load "${PORT[$t]}" 1000 2 >/dev/null; done
for r in $(seq 1 "$ROUNDS"); do
    for rate in $RATES; do
        for t in $TARGETS; do
            res=$(load "${PORT[$t]}" "$rate" "$DURATION")
            python3 - "$res" >> "$OUT" <<EOF
import json, sys
a = json.loads(sys.argv[1])
print(json.dumps({'target': '$t', 'rate': $rate, 'round': $r, 'conns': $CONNS,
                  'achieved_rate': a['achieved_rate'], 'errors': a['errors'] + a['non2xx'],
                  'p50_us': a['p50_us'], 'p99_us': a['p99_us'], 'p999_us': a['p999_us'], 'max_us': a['max_us']}))
EOF
            tail -n 1 "$OUT" | python3 -c "import json,sys; r=json.load(sys.stdin); print(f\"  round {r['round']} {r['rate']:5}/s {r['target']:8} p50 {r['p50_us']:6} us  p99 {r['p99_us']:6} us  errors {r['errors']}\")" >&2
        done
    done
done
python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for rate in sorted({r['rate'] for r in rows}):
    base = {r['round']: r for r in rows if r['rate'] == rate and r['target'] == 'direct'}
    for t in ('nginx', 'hyper', 'sidecar', 'baseline'):
        mine = [r for r in rows if r['rate'] == rate and r['target'] == t]
        if not mine:
            continue
        add50 = statistics.median(r['p50_us'] - base[r['round']]['p50_us'] for r in mine)
        add99 = statistics.median(r['p99_us'] - base[r['round']]['p99_us'] for r in mine)
        print(f"{rate:5}/s {t:8} added p50 {add50:6.0f} us  p99 {add99:6.0f} us (median of {len(mine)} rounds)")
EOF
log "wrote $OUT"
