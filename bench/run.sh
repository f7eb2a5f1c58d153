#!/usr/bin/env bash
# Throughput, latency, CPU per request and memory: the sidecar beside nginx
# and HAProxy configured as resilient proxies, a bare hyper proxy (the floor
# of the HTTP library the sidecar is built on), and the upstream alone.
#
#   bash bench/run.sh          # ROUNDS=5 DURATION=10 CONNS_LIST="32 256"
#
# One invocation, interleaved rounds (direct nginx haproxy hyper sidecar,
# direct nginx haproxy hyper sidecar, ...) so drift on a shared machine hits every target
# alike. The upstream (nginx answering an AddStep from memory) and the proxy
# under test share core $PROXY_CORE; wrk runs on core $LOAD_CORE. Every
# request is a ~1.4 KB LiteralAI `AddStep` POST with its own step id, over
# keep-alive. Proxy CPU per request comes from /proc/<pid>/stat (utime +
# stime) before and after each run; peak RSS is VmHWM.
#
# BASELINE_BIN=path adds a second sidecar built from other code (target
# "baseline", same config) to every round: an A/B of a change in one run.
#
# Writes bench/out/throughput.jsonl (one row per target, load and round) and
# bench/out/env.json; bench/report.py turns them into docs/benchmarks.md.

source "$(dirname "$0")/lib.sh"
trap cleanup EXIT

ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-10}"
CONNS_LIST="${CONNS_LIST:-32 256}"
WARMUP="${WARMUP:-3}"
ensure_tools

python3 -c "import sys; sys.path.insert(0, '$BENCH_DIR'); from steps import add_step_body; print(add_step_body('STEP_ID'), end='')" > "$RUN_DIR/addstep.json"
export BODY_FILE="$RUN_DIR/addstep.json" UNIQUE=1
OUT="$OUT_DIR/throughput.jsonl"
: > "$OUT"

UP_PORT=$(free_port)
UPSTREAM=$(start_nginx upstream-nginx "$BENCH_DIR/conf/upstream-nginx.conf" "$UP_PORT")
log "upstream nginx pid $UPSTREAM on :$UP_PORT (core $PROXY_CORE)"

python3 - "$OUT_DIR/env.json" <<EOF
import json, os, platform, subprocess, sys
def v(cmd):
    try: return subprocess.run(cmd, capture_output=True, text=True, shell=True).stdout.strip() or subprocess.run(cmd, capture_output=True, text=True, shell=True).stderr.strip()
    except Exception as e: return str(e)
cpu = [l.split(':',1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')]
json.dump({
  'cpus': os.cpu_count(), 'cpu_model': cpu[0] if cpu else '?', 'kernel': platform.release(),
  'nginx': v('nginx -v 2>&1'), 'haproxy': v('haproxy -v | head -1'), 'wrk': v('wrk -v 2>&1 | head -1'),
  'sidecar': v('$SIDECAR_BIN --version'), 'rustc': v('rustc --version'),
  'rounds': $ROUNDS, 'duration_s': $DURATION, 'proxy_core': $PROXY_CORE, 'load_core': $LOAD_CORE,
  'body_bytes': os.path.getsize('$BODY_FILE'),
}, open(sys.argv[1], 'w'), indent=1)
EOF

SIDECAR_RUN_CONFIG="$RUN_DIR/sidecar.toml"
sed -e "s|^path = \"data/spool.sqlite3\"|path = \"$RUN_DIR/spool.sqlite3\"|" \
    "$REPO_DIR/config/sidecar.toml" > "$SIDECAR_RUN_CONFIG"

for CONNS in $CONNS_LIST; do
    NG_PORT=$(free_port); HA_PORT=$(free_port); HY_PORT=$(free_port); SC_PORT=$(free_port); SC_ADMIN=$(free_port)
    NGINX=$(start_nginx proxy-nginx "$BENCH_DIR/conf/proxy-nginx.conf" "$NG_PORT" "$UP_PORT" \
        "$RUN_DIR/nginx-access.log combined buffer=64k flush=1s")
    HAPROXY=$(start_haproxy "$HA_PORT" "$UP_PORT" 0)
    HYPER=$(start_bare_proxy "$HY_PORT" "$UP_PORT")
    SIDECAR=$(SIDECAR_CONFIG="$SIDECAR_RUN_CONFIG" start_sidecar "$SC_PORT" "$SC_ADMIN" "http://127.0.0.1:$UP_PORT")
    declare -A PORT=([direct]=$UP_PORT [nginx]=$NG_PORT [haproxy]=$HA_PORT [hyper]=$HY_PORT [sidecar]=$SC_PORT)
    declare -A PID=([direct]=$UPSTREAM [nginx]=$NGINX [haproxy]=$HAPROXY [hyper]=$HYPER [sidecar]=$SIDECAR)
    PROXIES="nginx haproxy hyper sidecar"
    BASELINE=""
    if [ -n "${BASELINE_BIN:-}" ]; then
        BL_PORT=$(free_port); BL_ADMIN=$(free_port)
        BASELINE=$(start_baseline "$BL_PORT" "$BL_ADMIN" "http://127.0.0.1:$UP_PORT" "$SIDECAR_RUN_CONFIG")
        PORT[baseline]=$BL_PORT; PID[baseline]=$BASELINE
        PROXIES="$PROXIES baseline"
    fi
    sleep 0.5
    declare -A IDLE
    for t in $PROXIES; do IDLE[$t]=$(rss_kib "${PID[$t]}"); done
    log "connections=$CONNS: idle RSS KiB $(for t in $PROXIES; do printf '%s=%s ' "$t" "${IDLE[$t]}"; done)"
    for t in direct $PROXIES; do
        run_wrk "http://127.0.0.1:${PORT[$t]}" "$CONNS" "$WARMUP" >/dev/null
    done
    for r in $(seq 1 "$ROUNDS"); do
        for t in direct $PROXIES; do
            c0=$(cpu_ticks "${PID[$t]}"); u0=$(cpu_ticks "$UPSTREAM")
            res=$(run_wrk "http://127.0.0.1:${PORT[$t]}" "$CONNS" "$DURATION")
            c1=$(cpu_ticks "${PID[$t]}"); u1=$(cpu_ticks "$UPSTREAM")
            python3 - "$res" >> "$OUT" <<EOF
import json, sys
w = json.loads(sys.argv[1])
n = max(1, w['requests'])
row = {'target': '$t', 'conns': $CONNS, 'round': $r, 'rps': w['rps'], 'requests': w['requests'],
       'errors': w['errors'], 'non2xx': w['non2xx'], 'p50_ms': w['p50_us'] / 1e3, 'p99_ms': w['p99_us'] / 1e3,
       'p999_ms': w['p999_us'] / 1e3, 'max_ms': w['max_us'] / 1e3,
       'proxy_cpu_us_per_req': None if '$t' == 'direct' else ($c1 - $c0) / $CLK_TCK * 1e6 / n,
       'upstream_cpu_us_per_req': ($u1 - $u0) / $CLK_TCK * 1e6 / n}
print(json.dumps(row))
EOF
            tail -n 1 "$OUT" | python3 -c "import json,sys; r=json.load(sys.stdin); print(f\"  round {r['round']} {r['target']:8} {r['rps']:9.0f} req/s  p99 {r['p99_ms']:6.2f} ms  cpu/req {r['proxy_cpu_us_per_req'] or 0:5.1f} us  errors {r['errors']+r['non2xx']}\")" >&2
        done
    done
    for t in $PROXIES; do
        python3 -c "import json; print(json.dumps({'target': '$t', 'conns': $CONNS, 'idle_rss_kib': ${IDLE[$t]}, 'peak_rss_kib': $(peak_rss_kib "${PID[$t]}")}))" >> "$OUT_DIR/memory-$CONNS.jsonl.tmp"
    done
    mv "$OUT_DIR/memory-$CONNS.jsonl.tmp" "$OUT_DIR/memory-$CONNS.jsonl"
    kill "$SIDECAR" "$HAPROXY" "$HYPER" $BASELINE 2>/dev/null || true
    kill "$(cat "$RUN_DIR/proxy-nginx.pid")" 2>/dev/null || true
    wait "$SIDECAR" "$HAPROXY" "$HYPER" $BASELINE 2>/dev/null || true
    sleep 0.5
done
cat "$OUT_DIR"/memory-*.jsonl > "$OUT_DIR/memory.jsonl"
log "wrote $OUT and $OUT_DIR/memory.jsonl"
