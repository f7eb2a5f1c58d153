#!/usr/bin/env bash
# Spool benchmark: spooled-write throughput and acknowledgement latency with
# real durable commits (SQLite WAL, synchronous=FULL, group commit), and the
# drain rate to a local backend.
#
#   bash bench/spool.sh   # RATE=5000 DURATION=20 ROUNDS=3 A2_ROUNDS=6 CONNS=32 BURST_S=60
#
# The sidecar runs the shipped config with the preset's spooled writes in
# write-behind mode (every write committed, then acknowledged) and is
# pinned, with the backend, to one core; the load generators get the other.
# Every phase records the high-water mark of the spool's files on disk
# (database + write-ahead log + shared memory, sampled every 100 ms).
#
# A  backend down, so nothing drains: the commit path alone.
#    A1 closed loop (wrk, CONNS connections): the most writes/s it takes.
#    A2 open loop at RATE writes/s (bench loadgen), A2_ROUNDS times, while
#       the spool grows (to about 1,000,000 entries with the defaults):
#       acknowledgement latency measured from each write's scheduled time.
# B  backend up (nginx answering like LiteralAI): time to empty the queue.
# C  backend up, open loop at RATE, ROUNDS times: acknowledgement latency
#    while the worker drains at the same time, and the queue left 1 s after.
# D  a fresh spool with spool.max_bytes = 256MiB, backend down, a BURST_S
#    closed-loop burst of unique writes: the files' high-water mark against
#    the bound (max_bytes + 64 MiB), and how many writes got spool_full.
# Writes bench/out/spool.json.

source "$(dirname "$0")/lib.sh"
trap cleanup EXIT

DURATION="${DURATION:-20}"
CONNS="${CONNS:-32}"
RATE="${RATE:-5000}"
ROUNDS="${ROUNDS:-3}"
A2_ROUNDS="${A2_ROUNDS:-6}"
BURST_S="${BURST_S:-60}"
ensure_tools
LOADGEN="$REPO_DIR/target/release/examples/loadgen"

python3 -c "import sys; sys.path.insert(0, '$BENCH_DIR'); from steps import add_step_body; print(add_step_body('STEP_ID'), end='')" > "$RUN_DIR/addstep.json"
export BODY_FILE="$RUN_DIR/addstep.json" UNIQUE=1

# The shipped config, the spool in the run directory, and the preset's
# spooled_writes route (its root fields read from check-config) in
# write-behind mode.
spool_config() { # out spool_dir max_bytes
    local out=$1 dir=$2 max=$3 fields
    fields=$("$SIDECAR_BIN" check-config --config "$REPO_DIR/config/sidecar.toml" \
        --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 2>/dev/null \
        | sed -n 's/.*spooled_writes \[literalai\]: .*root_fields=\[\([^]]*\)\].*/\1/p')
    [ -n "$fields" ] || { log "cannot read the preset's spooled_writes route"; exit 1; }
    sed -e "s|^path = \"data/spool.sqlite3\"|path = \"$dir/spool.sqlite3\"|" \
        -e "s|^max_bytes = \"1GiB\"|max_bytes = \"$max\"|" \
        "$REPO_DIR/config/sidecar.toml" > "$out"
    cat >> "$out" <<EOF_ROUTE

[[routes]]
name = "spooled_writes"
methods = ["POST"]
path = "/api/graphql"
graphql = { operation_type = "mutation", root_fields = [$(echo "$fields" | sed 's/\([A-Za-z][A-Za-z]*\)/"\1"/g')] }
idempotent = true
on_failure = "spool"
mode = "write_behind"
EOF_ROUTE
}

SPOOL_DIR="$RUN_DIR/spool"
export SIDECAR_CONFIG="$RUN_DIR/sidecar-spool.toml"
spool_config "$SIDECAR_CONFIG" "$SPOOL_DIR" 4GiB

# The spool files' high-water mark (bytes), sampled in the background.
disk_sampler() { # dir out
    local dir=$1 out=$2 max=0 now
    while :; do
        now=$(du -sb "$dir" 2>/dev/null | awk '{print $1}' || true)
        [ "${now:-0}" -gt "$max" ] && { max=$now; echo "$max" > "$out"; }
        sleep 0.1
    done
}
DISK_MAX="$RUN_DIR/disk.max"
echo 0 > "$DISK_MAX"
disk_sampler "$SPOOL_DIR" "$DISK_MAX" &
SAMPLER=$!
PIDS+=("$SAMPLER")
disk_mib() { python3 -c "print(round(int(open('$1').read() or 0)/1048576, 1))"; }

UP_PORT=$(free_port)
DOWN_PORT=$(free_port)   # nothing listens here
SC_PORT=$(free_port)
ADMIN_PORT=$(free_port)
RESULTS="$RUN_DIR/results.jsonl"
: > "$RESULTS"

spool_json() { curl -s "http://127.0.0.1:$ADMIN_PORT/spool"; }
depth() { spool_json | python3 -c 'import json,sys; print(json.load(sys.stdin)["depth"])' 2>/dev/null || echo "?"; }
wait_empty() { # poll interval; fails if the sidecar is gone
    while [ "$(depth)" != 0 ]; do
        alive "$SC" || { log "sidecar exited while draining"; exit 1; }
        sleep "$1"
    done
}
loadgen() { taskset -c "$LOAD_CORE" "$LOADGEN" --url "http://127.0.0.1:$SC_PORT/api/graphql" \
    --body "$BODY_FILE" --rate "$RATE" --duration "$DURATION" --connections "$CONNS" --unique; }
record() { python3 -c "import json,sys; d=json.loads(sys.argv[2]); d['phase']=sys.argv[1]; print(json.dumps(d))" "$@" | tee -a "$RESULTS"; }

log "A1: backend down, closed loop, ${DURATION}s at $CONNS connections"
SC=$(start_sidecar "$SC_PORT" "$ADMIN_PORT" "http://127.0.0.1:$DOWN_PORT")
C0=$(cpu_ticks "$SC")
A1=$(run_wrk "http://127.0.0.1:$SC_PORT" "$CONNS" "$DURATION")
C1=$(cpu_ticks "$SC")
S=$(spool_json)
record A1_closed_loop "$(python3 -c "
import json; a=json.loads('$A1'); s=json.loads('''$S''')
print(json.dumps({'writes_per_s':a['rps'],'errors':a['errors']+a['non2xx'],'p50_ms':a['p50_us']/1e3,
 'p99_ms':a['p99_us']/1e3,'p999_ms':a['p999_us']/1e3,'writes_per_commit':round(s['committed']/max(1,s['commit_batches']),1),
 'cpu_us_per_write':round(($C1-$C0)/$CLK_TCK*1e6/max(1,a['requests']),1),'depth':s['depth'],
 'disk_peak_mib':$(disk_mib "$DISK_MAX"),'wal_mib':round(s['disk']['wal_bytes']/1048576,1)}))")"

for r in $(seq 1 "$A2_ROUNDS"); do
    log "A2 round $r: backend down, open loop at $RATE/s for ${DURATION}s"
    A2=$(loadgen)
    S=$(spool_json)
    record A2_open_loop "$(python3 -c "
import json; a=json.loads('$A2'); s=json.loads('''$S''')
print(json.dumps({'round':$r,'target_rate':a['target_rate'],'writes_per_s':a['achieved_rate'],'errors':a['errors']+a['non2xx'],
 'p50_ms':a['p50_us']/1e3,'p99_ms':a['p99_us']/1e3,'p999_ms':a['p999_us']/1e3,'max_ms':a['max_us']/1e3,
 'depth':s['depth'],'disk_peak_mib':$(disk_mib "$DISK_MAX"),'wal_mib':round(s['disk']['wal_bytes']/1048576,1)}))")"
done
STORED=$(depth)
# The sidecar was started in $(...), so it is not this shell's child and
# `wait` cannot see it: poll until it has exited (its final checkpoint of a
# large WAL takes a while) so the restart does not meet its ports and lock.
STOP=$(date +%s.%N)
kill "$SC"
while alive "$SC"; do sleep 0.1; done
log "sidecar stopped after $(python3 -c "print(round($(date +%s.%N) - $STOP, 1))") s"

log "B: drain $STORED entries to a local backend"
start_nginx upstream-nginx "$BENCH_DIR/conf/upstream-nginx.conf" "$UP_PORT" >/dev/null
START=$(date +%s.%N)
# Opening a store of several hundred thousand entries (integrity check,
# totals) takes seconds: give the restart longer than the default wait.
SC=$(WAIT_PORT_S=180 start_sidecar "$SC_PORT" "$ADMIN_PORT" "http://127.0.0.1:$UP_PORT")
log "sidecar back after $(python3 -c "print(round($(date +%s.%N) - $START, 1))") s"
wait_empty 0.1
END=$(date +%s.%N)
record B_drain "$(python3 -c "print(__import__('json').dumps({'entries':$STORED,'seconds':round($END-$START,2),'drain_per_s':round($STORED/($END-$START),1),'disk_peak_mib':$(disk_mib "$DISK_MAX")}))")"

for r in $(seq 1 "$ROUNDS"); do
    log "C round $r: backend up, open loop at $RATE/s for ${DURATION}s"
    C=$(loadgen)
    sleep 1
    LEFT=$(depth)
    record C_write_behind_live "$(python3 -c "
import json; a=json.loads('$C')
print(json.dumps({'round':$r,'target_rate':a['target_rate'],'writes_per_s':a['achieved_rate'],'errors':a['errors']+a['non2xx'],
 'p50_ms':a['p50_us']/1e3,'p99_ms':a['p99_us']/1e3,'p999_ms':a['p999_us']/1e3,'max_ms':a['max_us']/1e3,'queue_after_1s':$LEFT,
 'disk_peak_mib':$(disk_mib "$DISK_MAX")}))")"
    wait_empty 0.2
done
kill "$SC"
while alive "$SC"; do sleep 0.1; done
kill "$SAMPLER" 2>/dev/null || true

log "D: a ${BURST_S}s burst with the backend down into a fresh spool with max_bytes = 256MiB"
BURST_DIR="$RUN_DIR/spool-burst"
mkdir -p "$BURST_DIR"
export SIDECAR_CONFIG="$RUN_DIR/sidecar-burst.toml"
spool_config "$SIDECAR_CONFIG" "$BURST_DIR" 256MiB
echo 0 > "$DISK_MAX"
disk_sampler "$BURST_DIR" "$DISK_MAX" &
SAMPLER=$!
PIDS+=("$SAMPLER")
SC=$(start_sidecar "$SC_PORT" "$ADMIN_PORT" "http://127.0.0.1:$DOWN_PORT")
D=$(run_wrk "http://127.0.0.1:$SC_PORT" "$CONNS" "$BURST_S")
sleep 1
S=$(spool_json)
kill "$SAMPLER" 2>/dev/null || true
record D_burst_256MiB "$(python3 -c "
import json; a=json.loads('$D'); s=json.loads('''$S''')
print(json.dumps({'writes_per_s':a['rps'],'requests':a['requests'],'refused_spool_full':a['non2xx'],'errors':a['errors'],
 'p50_ms':a['p50_us']/1e3,'p99_ms':a['p99_us']/1e3,'p999_ms':a['p999_us']/1e3,'depth':s['depth'],
 'disk_peak_mib':$(disk_mib "$DISK_MAX"),'bound_mib':256+64,
 'sidecar_high_water_mib':round(s['disk']['disk_high_water_bytes']/1048576,1)}))")"

python3 - "$RESULTS" "$OUT_DIR/spool.json" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(phase, key):
    v = [r[key] for r in rows if r['phase'] == phase]
    return {'median': statistics.median(v), 'min': min(v), 'max': max(v)} if v else None
summary = {
    'A2_p99_ms': med('A2_open_loop', 'p99_ms'), 'A2_p50_ms': med('A2_open_loop', 'p50_ms'),
    'C_p99_ms': med('C_write_behind_live', 'p99_ms'), 'C_p50_ms': med('C_write_behind_live', 'p50_ms'),
    'disk_peak_mib': max([r.get('disk_peak_mib', 0) for r in rows if r['phase'] != 'D_burst_256MiB'] or [0]),
    'D_disk_peak_mib': med('D_burst_256MiB', 'disk_peak_mib'),
}
json.dump({'rows': rows, 'summary': summary}, open(sys.argv[2], 'w'), indent=1)
print(json.dumps(summary))
EOF
log "wrote $OUT_DIR/spool.json"
