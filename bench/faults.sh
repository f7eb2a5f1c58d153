#!/usr/bin/env bash
# Fault comparison: the same seeded misbehaving upstream (30% of attempts:
# connection closed, 502, 503, 429 with Retry-After, hang past every
# timeout) behind each proxy; a fixed number of LiteralAI step writes; the
# success rate the client sees (as the SDK judges success), p99 latency and
# upstream attempts per request.
#
#   bash bench/faults.sh       # REQUESTS=2000 CONCURRENCY=32 SEED=7 FAIL_PCT=30
#
# Faults depend on (seed, step id, attempt number), and every target sends
# the same step ids after the upstream's counters are reset, so each target
# meets exactly the same faults. Targets: the upstream alone, nginx and
# HAProxy as resilient proxies (3 attempts on error/timeout/5xx, POST
# included), the sidecar with its shipped config (spool on), and the sidecar
# with failures answered instead of spooled (the reliability stack alone).
# Writes bench/out/faults.jsonl.

source "$(dirname "$0")/lib.sh"
trap cleanup EXIT

REQUESTS="${REQUESTS:-2000}"
CONCURRENCY="${CONCURRENCY:-32}"
SEED="${SEED:-7}"
FAIL_PCT="${FAIL_PCT:-30}"
ensure_tools
ensure_python
OUT="$OUT_DIR/faults.jsonl"
: > "$OUT"

FU_PORT=$(free_port)
taskset -c "$PROXY_CORE" python3 "$BENCH_DIR/fault_upstream.py" --port "$FU_PORT" --seed "$SEED" \
    --fail-pct "$FAIL_PCT" --hang 12 2>"$RUN_DIR/fault-upstream.log" &
PIDS+=($!)
wait_port "$FU_PORT"
UP="http://127.0.0.1:$FU_PORT"

NG_PORT=$(free_port); HA_PORT=$(free_port)
SC_PORT=$(free_port); SC_ADMIN=$(free_port); SN_PORT=$(free_port); SN_ADMIN=$(free_port)
start_nginx proxy-nginx "$BENCH_DIR/conf/proxy-nginx.conf" "$NG_PORT" "$FU_PORT" off >/dev/null
start_haproxy "$HA_PORT" "$FU_PORT" 0 >/dev/null
sed -e "s|^path = \"data/spool.sqlite3\"|path = \"$RUN_DIR/spool.sqlite3\"|" \
    "$REPO_DIR/config/sidecar.toml" > "$RUN_DIR/sidecar.toml"
sed -e 's|^on_failure = "spool"$|on_failure = "error"|' \
    -e "s|^path = \"data/spool.sqlite3\"|path = \"$RUN_DIR/spool-nospool.sqlite3\"|" \
    "$REPO_DIR/config/sidecar.toml" > "$RUN_DIR/sidecar-nospool.toml"
SIDECAR_CONFIG="$RUN_DIR/sidecar.toml" start_sidecar "$SC_PORT" "$SC_ADMIN" "$UP" >/dev/null
SIDECAR_CONFIG="$RUN_DIR/sidecar-nospool.toml" start_sidecar "$SN_PORT" "$SN_ADMIN" "$UP" >/dev/null

for target in direct nginx haproxy sidecar sidecar_no_spool; do
    case $target in
        direct) url=$UP ;;
        nginx) url="http://127.0.0.1:$NG_PORT" ;;
        haproxy) url="http://127.0.0.1:$HA_PORT" ;;
        sidecar) url="http://127.0.0.1:$SC_PORT" ;;
        sidecar_no_spool) url="http://127.0.0.1:$SN_PORT" ;;
    esac
    curl -s -X POST "$UP/__reset" >/dev/null
    log "faults: $target ($REQUESTS writes, $CONCURRENCY at a time)"
    res=$(cd "$BENCH_DIR" && taskset -c "$LOAD_CORE" "$PY" fault_client.py --target "$url" --upstream "$UP" \
        --requests "$REQUESTS" --concurrency "$CONCURRENCY" --run-id "faults-$SEED")
    drained=None
    if [ "$target" = sidecar ]; then
        # Writes acknowledged from the spool are delivered after the run:
        # wait for the queue to empty and count what the upstream stored.
        t0=$(date +%s.%N)
        for _ in $(seq 1 1200); do
            d=$(curl -s "http://127.0.0.1:$SC_ADMIN/spool" | python3 -c 'import json,sys; print(json.load(sys.stdin)["depth"])')
            [ "$d" = 0 ] && break
            sleep 0.25
        done
        drained=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
    fi
    stats=$(curl -s "$UP/__stats")
    python3 -c "
import json, sys
r = json.loads(sys.argv[1]); s = json.loads(sys.argv[2])
r['target'] = '$target'; r['stored_upstream'] = s['stored']
# Attempts after the run include the spool's deliveries.
r['upstream_attempts'] = s['attempts']; r['attempts_per_request'] = s['attempts'] / r['requests']
# Seconds from the end of the client's run until the spool was empty.
r['spool_drained_after_s'] = $drained
print(json.dumps(r))" "$res" "$stats" | tee -a "$OUT" | python3 -c "
import json, sys
r = json.load(sys.stdin)
print(f\"  {r['target']:17} success {100*r['success_rate']:6.2f}%  p99 {r['p99_ms']:8.1f} ms  attempts/req {r['attempts_per_request']:.3f}  stored upstream {r['stored_upstream']}\")" >&2
done
log "wrote $OUT"
