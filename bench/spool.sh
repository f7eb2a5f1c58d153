#!/usr/bin/env bash
# Spool benchmark: spooled-write throughput and acknowledgement latency with
# real durable commits (SQLite WAL, synchronous=FULL, group commit), and the
# drain rate to a local backend.
#
#   bash bench/spool.sh   # RATE=5000 DURATION=20 ROUNDS=3 A2_ROUNDS=6 CONNS=32 BURST_S=60
#                         # OUTAGE_S=600 OUTAGE_RATE=500 PHASES="A B C D R" REPLAY_BATCH=
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
# B  backend up (examples/literal_backend.rs, answering every alias like
#    LiteralAI): time to empty the queue, and upstream requests per step.
#    B1 with the shipped spool.replay_batch (joined replays), then B2 with
#    replay_batch = 1 (one entry per request) on a copy of the same spool.
# C  backend up, open loop at RATE, ROUNDS times: acknowledgement latency
#    while the worker drains at the same time, and the queue left 1 s after.
# D  a fresh spool with spool.max_bytes = 256MiB, backend down, a BURST_S
#    closed-loop burst of unique writes: the files' high-water mark against
#    the bound (max_bytes + 64 MiB), and how many writes got spool_full.
# R  recovery: the shipped config (spool on failure, not write-behind), the
#    app writing OUTAGE_RATE writes/s throughout; the backend down for
#    OUTAGE_S, then up: time from its return to an empty queue, and
#    upstream requests per delivered step meanwhile.
# Writes bench/out/spool.json; a run of only some phases (PHASES) writes
# bench/out/spool-<phases>.json instead, so it cannot replace the full
# results the report is generated from.

source "$(dirname "$0")/lib.sh"
trap cleanup EXIT

DURATION="${DURATION:-20}"
OUTAGE_S="${OUTAGE_S:-600}"
OUTAGE_RATE="${OUTAGE_RATE:-500}"
PHASES="${PHASES:-A B C D R}"
has_phase() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
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
# REPLAY_BATCH: the spool.replay_batch of phases A, B1 and C (default: the
# shipped value).
[ -n "${REPLAY_BATCH:-}" ] && sed -i "s/^replay_batch = .*/replay_batch = $REPLAY_BATCH/" "$SIDECAR_CONFIG"

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

start_backend() { # port; echoes the pid
    taskset -c "$PROXY_CORE" "$REPO_DIR/target/release/examples/literal_backend" "127.0.0.1:$1" \
        >"$RUN_DIR/backend-$1.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid"); echo "$pid" >"$RUN_DIR/backend-$1.pid"
    wait_port "$1"
    echo "$pid"
}
backend_stats() { curl -s "http://127.0.0.1:$1/stats"; }

if has_phase A || has_phase B || has_phase C; then
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

# A copy of the filled spool, for the one-per-request drain.
cp -a "$SPOOL_DIR" "$RUN_DIR/spool-copy"
BACKEND=$(start_backend "$UP_PORT")

drain() { # phase label; the sidecar runs $SIDECAR_CONFIG
    local phase=$1 s0 s1
    s0=$(backend_stats "$UP_PORT")
    START=$(date +%s.%N)
    # Opening a store of several hundred thousand entries (integrity check,
    # totals) takes seconds: give the restart longer than the default wait.
    SC=$(WAIT_PORT_S=180 start_sidecar "$SC_PORT" "$ADMIN_PORT" "http://127.0.0.1:$UP_PORT")
    log "sidecar back after $(python3 -c "print(round($(date +%s.%N) - $START, 1))") s"
    C0=$(cpu_ticks "$SC")
    wait_empty 0.1
    END=$(date +%s.%N)
    C1=$(cpu_ticks "$SC")
    s1=$(backend_stats "$UP_PORT")
    record "$phase" "$(python3 -c "
import json; a=json.loads('$s0'); b=json.loads('$s1')
req=b['requests']-a['requests']; steps=b['steps']-a['steps']
print(json.dumps({'entries':$STORED,'seconds':round($END-$START,2),'drain_per_s':round($STORED/($END-$START),1),
 'upstream_requests':req,'steps_delivered':steps,'steps_per_request':round(steps/max(1,req),1),
 'sidecar_cpu_us_per_step':round(($C1-$C0)/$CLK_TCK*1e6/max(1,steps),1),
 'disk_peak_mib':$(disk_mib "$DISK_MAX")}))")"
}

log "B1: drain $STORED entries to a local backend, joined replays"
drain B1_drain_batched

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

log "B2: drain the same $STORED entries (a copy), one entry per request"
export SIDECAR_CONFIG="$RUN_DIR/sidecar-spool-one.toml"
spool_config "$SIDECAR_CONFIG" "$RUN_DIR/spool-copy" 4GiB
sed -i 's/^replay_batch = .*/replay_batch = 1/' "$SIDECAR_CONFIG"
drain B2_drain_one_per_request
kill "$SC"
while alive "$SC"; do sleep 0.1; done
kill "$SAMPLER" 2>/dev/null || true
rm -rf "$RUN_DIR/spool-copy"
fi

if has_phase D; then
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

kill "$SC"
while alive "$SC"; do sleep 0.1; done
fi

if has_phase R; then
log "R: the shipped config, $OUTAGE_RATE writes/s; backend down for ${OUTAGE_S}s, then up"
RECOVERY_DIR="$RUN_DIR/spool-recovery"
mkdir -p "$RECOVERY_DIR"
export SIDECAR_CONFIG="$RUN_DIR/sidecar-recovery.toml"
sed -e "s|^path = \"data/spool.sqlite3\"|path = \"$RECOVERY_DIR/spool.sqlite3\"|" \
    "$REPO_DIR/config/sidecar.toml" > "$SIDECAR_CONFIG"
if [ -n "${BACKEND:-}" ]; then
    kill "$BACKEND"
    while alive "$BACKEND"; do sleep 0.1; done
fi
SC=$(start_sidecar "$SC_PORT" "$ADMIN_PORT" "http://127.0.0.1:$UP_PORT")
RECOVERY_MAX=300
taskset -c "$LOAD_CORE" "$LOADGEN" --url "http://127.0.0.1:$SC_PORT/api/graphql" \
    --body "$BODY_FILE" --rate "$OUTAGE_RATE" --duration $(( OUTAGE_S + RECOVERY_MAX )) \
    --connections "$CONNS" --unique > "$RUN_DIR/recovery-load.json" &
LOAD=$!
PIDS+=("$LOAD")
sleep "$OUTAGE_S"
WAITING=$(depth)
BACKEND=$(start_backend "$UP_PORT")
S0=$(backend_stats "$UP_PORT")
START=$(date +%s.%N)
wait_empty 0.05
END=$(date +%s.%N)
S1=$(backend_stats "$UP_PORT")
kill "$LOAD" 2>/dev/null || true
record R_recovery "$(python3 -c "
import json; a=json.loads('$S0'); b=json.loads('$S1')
req=b['requests']-a['requests']; steps=b['steps']-a['steps']
print(json.dumps({'outage_s':$OUTAGE_S,'rate':$OUTAGE_RATE,'waiting_at_return':$WAITING,
 'seconds_to_empty':round($END-$START,2),'upstream_requests':req,'steps_delivered':steps,
 'steps_per_request':round(steps/max(1,req),1)}))")"
fi

RESULT_FILE="$OUT_DIR/spool.json"
[ "$PHASES" = "A B C D R" ] || RESULT_FILE="$OUT_DIR/spool-$(echo "$PHASES" | tr -s ' ' '-').json"
python3 - "$RESULTS" "$RESULT_FILE" <<'EOF'
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
for phase in ('B1_drain_batched', 'B2_drain_one_per_request', 'R_recovery'):
    r = [x for x in rows if x['phase'] == phase]
    if r:
        summary[phase] = r[0]
json.dump({'rows': rows, 'summary': summary}, open(sys.argv[2], 'w'), indent=1)
print(json.dumps(summary))
EOF
log "wrote $RESULT_FILE"
