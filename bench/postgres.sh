#!/usr/bin/env bash
# The shared spool on PostgreSQL against the SQLite spool, same run, same
# machine: acknowledged writes/s and acknowledgement latency with 32
# concurrent writers, and the drain rate from the shared store with one and
# with two sidecars.
#
#   bash bench/postgres.sh   # DURATION=20 ROUNDS=3 CONNS=32 ENTRIES=100000 RATE=5000 PHASES="W L D"
#
# A throwaway PostgreSQL cluster (Debian's server, initdb in the run
# directory as the postgres user, a loopback port, fsync and
# synchronous_commit on, min_wal_size=PG_MIN_WAL) shares core 0 with the sidecar under test; the
# load generator gets core 1 (PG_CORE=1 puts the server there instead, with
# the load generator: the database on a core apart from the sidecar's). The
# sidecar runs the shipped config with the preset's spooled writes in
# write-behind mode (what the postgres backend always does), so every write
# is committed before its acknowledgement.
#
# W  backend down, closed loop (wrk, CONNS connections), DURATION s, ROUNDS
#    rounds alternating sqlite / postgres: writes/s, p50/p99, CPU per write
#    of the sidecar (and of the database server, for postgres). After one
#    unmeasured postgres round (PG_WARMUP=1, the default), so the server
#    has WAL segment files to reuse, as one that has run a while does.
# O  then, on the same sidecar, open loop at RATE writes/s (bench loadgen,
#    CONNS connections) for DURATION s: acknowledgement p50/p99 measured
#    from each write's scheduled time, below saturation.
# L  backend up, a fresh store, open loop at RATE writes/s with CONNS
#    connections for DURATION s, ROUNDS rounds alternating sqlite /
#    postgres: acknowledgement latency in normal operation, where every
#    spooled write is committed and then delivered, so the queue stays short.
# D  ENTRIES writes stored in the shared store with the backend down, then
#    the backend up (examples/literal_backend.rs, answering every alias like
#    LiteralAI): time to empty the queue with one sidecar, then (refilled)
#    with two — the second on core 1. A drain still under way after
#    DRAIN_LIMIT_S (300) seconds stops the run with what was left.
# Writes bench/out/postgres.json; a run of only some phases (PHASES) writes
# bench/out/postgres-<phases>.json instead, so it cannot replace the full
# results the report is generated from.

source "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-20}"
CONNS="${CONNS:-32}"
ROUNDS="${ROUNDS:-3}"
ENTRIES="${ENTRIES:-100000}"
RATE="${RATE:-5000}"
PHASES="${PHASES:-W L D}"
ensure_tools

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$PGBIN/initdb" ] || {
    log "installing: postgresql (Debian package)"
    mkdir -p /etc/postgresql-common
    grep -q '^create_main_cluster' /etc/postgresql-common/createcluster.conf 2>/dev/null ||
        echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

PGDIR="$RUN_DIR/pg"
PGPORT=$(free_port)
PGPASS="bench-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
mkdir -p "$PGDIR"
printf '%s' "$PGPASS" > "$RUN_DIR/pgpass"
chmod 755 "$RUN_DIR"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$PGDIR" "$RUN_DIR/pgpass"
as_pg "$PGBIN/initdb" -D "$PGDIR/data" -U postgres --auth=scram-sha-256 --pwfile "$RUN_DIR/pgpass" -E UTF8 >/dev/null
pg_stop() { as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast -w stop >/dev/null 2>&1 || true; }
trap 'pg_stop; cleanup' EXIT
as_pg taskset -c "${PG_CORE:-$PROXY_CORE}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w \
    -o "-p $PGPORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PGDIR -c fsync=on -c synchronous_commit=on -c max_connections=100 -c min_wal_size=${PG_MIN_WAL:-1GB} ${PG_EXTRA:-}" \
    start >/dev/null
PG_PID=$(head -n 1 "$PGDIR/data/postmaster.pid")
PGURL="postgres://postgres:$PGPASS@127.0.0.1:$PGPORT/postgres"
psql_q() { "$PGBIN/psql" "$PGURL" -At -c "$1"; }
log "postgres $(psql_q 'SHOW server_version') on 127.0.0.1:$PGPORT"

python3 -c "import sys; sys.path.insert(0, '$BENCH_DIR'); from steps import add_step_body; print(add_step_body('STEP_ID'), end='')" > "$RUN_DIR/addstep.json"
export BODY_FILE="$RUN_DIR/addstep.json" UNIQUE=1

# The shipped config; the preset's spooled_writes route in write-behind
# mode; the spool in SQLite (in the run directory) or in the cluster.
bench_config() { # out backend
    local out=$1 backend=$2 fields
    fields=$("$SIDECAR_BIN" check-config --config "$REPO_DIR/config/sidecar.toml" \
        --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 2>/dev/null \
        | sed -n 's/.*spooled_writes \[literalai\]: .*root_fields=\[\([^]]*\)\].*/\1/p')
    [ -n "$fields" ] || { log "cannot read the preset's spooled_writes route"; exit 1; }
    sed -e "s|^path = \"data/spool.sqlite3\"|path = \"$RUN_DIR/spool-$RANDOM.sqlite3\"|" \
        -e "s|^max_entries = 1000000|max_entries = 10000000|" \
        -e "s|^max_bytes = \"1GiB\"|max_bytes = \"8GiB\"|" \
        "$REPO_DIR/config/sidecar.toml" > "$out"
    if [ "$backend" = postgres ]; then
        sed -i -e "s|^backend = \"sqlite\"|backend = \"postgres\"\npostgres_url = \"$PGURL\"|" "$out"
    fi
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

UP_PORT=$(free_port)
DOWN_PORT=$(free_port)   # nothing listens here
RESULTS="$RUN_DIR/results.jsonl"
: > "$RESULTS"
record() { python3 -c "import json,sys; d=json.loads(sys.argv[2]); d['phase']=sys.argv[1]; print(json.dumps(d))" "$@" | tee -a "$RESULTS"; }
stop_pid() { kill "$1" 2>/dev/null || true; while alive "$1"; do sleep 0.1; done; }
depth_at() { curl -s "http://127.0.0.1:$1/spool" | python3 -c 'import json,sys; print(json.load(sys.stdin)["depth"])' 2>/dev/null || echo "?"; }
# A sidecar on a fresh store of this backend (sqlite | postgres), forwarding
# to the upstream URL; sets SC (its pid), SC_PORT and ADMIN_PORT.
fresh_sidecar() { # backend upstream_url
    export SIDECAR_CONFIG="$RUN_DIR/sidecar-$1.toml"
    bench_config "$SIDECAR_CONFIG" "$1"
    [ "$1" = postgres ] && psql_q "DROP SCHEMA IF EXISTS datalayer_sidecar CASCADE" >/dev/null 2>&1
    SC_PORT=$(free_port); ADMIN_PORT=$(free_port)
    SC=$(start_sidecar "$SC_PORT" "$ADMIN_PORT" "$2")
}
# After a round: the store dropped (postgres) and the server checkpointed,
# so the next round's disk is quiet: no checkpoint of this round's rows
# during the other backend's run.
end_round() { # backend
    [ "$1" = postgres ] && psql_q "DROP SCHEMA IF EXISTS datalayer_sidecar CASCADE" >/dev/null 2>&1
    psql_q "CHECKPOINT" >/dev/null
    sync
}
open_loop() { # port rate seconds: loadgen's JSON
    taskset -c "$LOAD_CORE" "$REPO_DIR/target/release/examples/loadgen" --url "http://127.0.0.1:$1/api/graphql" \
        --body "$BODY_FILE" --rate "$2" --duration "$3" --connections "$CONNS" --unique
}

case " $PHASES " in *" W "*) W_ROUNDS=$ROUNDS ;; *) W_ROUNDS=0 ;; esac
# A server that has run a while reuses its old WAL segment files; a fresh
# cluster creates (and zero-fills) a new 16 MB file every second or so at
# these rates, and the commit that waits for it stalls every writer for
# ~15 ms. One unmeasured round first (PG_WARMUP=0 skips it), its W and its O
# (a warm-up of W alone wrote half the files a round uses, and O then
# created the rest, one stall every 1.4 s), writes the files, and
# min_wal_size (PG_MIN_WAL, 1GB; the server's default is 80MB, which kept
# 7 of them) keeps them all for reuse at each checkpoint, so the measured
# rounds see the steady state of a write-heavy server.
if [ "$W_ROUNDS" -gt 0 ] && [ "${PG_WARMUP:-1}" = 1 ]; then
    log "W warm-up, postgres: one unmeasured round of ${DURATION}s closed and ${DURATION}s open loop"
    fresh_sidecar postgres "http://127.0.0.1:$DOWN_PORT"
    run_wrk "http://127.0.0.1:$SC_PORT" "$CONNS" "$DURATION" >/dev/null
    open_loop "$SC_PORT" "$RATE" "$DURATION" >/dev/null
    stop_pid "$SC"
    end_round postgres
fi
for r in $(seq 1 "$W_ROUNDS"); do
    for backend in sqlite postgres; do
        log "W round $r, $backend: backend down, closed loop, ${DURATION}s at $CONNS connections"
        fresh_sidecar "$backend" "http://127.0.0.1:$DOWN_PORT"
        C0=$(cpu_ticks "$SC"); P0=$(cpu_ticks "$PG_PID")
        W=$(run_wrk "http://127.0.0.1:$SC_PORT" "$CONNS" "$DURATION")
        C1=$(cpu_ticks "$SC"); P1=$(cpu_ticks "$PG_PID")
        S=$(curl -s "http://127.0.0.1:$ADMIN_PORT/spool")
        record "W_$backend" "$(python3 -c "
import json; a=json.loads('$W'); s=json.loads('''$S''')
n=max(1,a['requests'])
print(json.dumps({'round':$r,'writes_per_s':a['rps'],'errors':a['errors']+a['non2xx'],'p50_ms':a['p50_us']/1e3,
 'p99_ms':a['p99_us']/1e3,'p999_ms':a['p999_us']/1e3,'depth':s['depth'],
 'writes_per_commit':round(s['committed']/max(1,s['commit_batches']),1),
 'sidecar_cpu_us_per_write':round(($C1-$C0)/$CLK_TCK*1e6/n,1),
 'database_cpu_us_per_write':round(($P1-$P0)/$CLK_TCK*1e6/n,1) if '$backend'=='postgres' else None}))")"
        log "O round $r, $backend: open loop at $RATE/s for ${DURATION}s"
        O=$(open_loop "$SC_PORT" "$RATE" "$DURATION")
        record "O_$backend" "$(python3 -c "
import json; a=json.loads('$O')
print(json.dumps({'round':$r,'target_rate':a['target_rate'],'writes_per_s':a['achieved_rate'],
 'errors':a['errors']+a['non2xx'],'p50_ms':a['p50_us']/1e3,'p99_ms':a['p99_us']/1e3,
 'p999_ms':a['p999_us']/1e3,'max_ms':a['max_us']/1e3}))")"
        stop_pid "$SC"
        end_round "$backend"
    done
done

# A backend that answers every alias (the replays are batched).
taskset -c "$PROXY_CORE" "$REPO_DIR/target/release/examples/literal_backend" "127.0.0.1:$UP_PORT" \
    >"$RUN_DIR/backend.log" 2>&1 &
PIDS+=("$!"); echo "$!" >"$RUN_DIR/backend.pid"
wait_port "$UP_PORT"
case " $PHASES " in *" L "*) L_ROUNDS=$ROUNDS ;; *) L_ROUNDS=0 ;; esac
for r in $(seq 1 "$L_ROUNDS"); do
    for backend in sqlite postgres; do
        log "L round $r, $backend: backend up, open loop at $RATE/s for ${DURATION}s"
        fresh_sidecar "$backend" "http://127.0.0.1:$UP_PORT"
        C0=$(cpu_ticks "$SC"); P0=$(cpu_ticks "$PG_PID")
        L=$(open_loop "$SC_PORT" "$RATE" "$DURATION")
        C1=$(cpu_ticks "$SC"); P1=$(cpu_ticks "$PG_PID")
        sleep 1
        LEFT=$(depth_at "$ADMIN_PORT")
        record "L_$backend" "$(python3 -c "
import json; a=json.loads('$L'); n=max(1,a['requests'])
print(json.dumps({'round':$r,'target_rate':a['target_rate'],'writes_per_s':a['achieved_rate'],
 'errors':a['errors']+a['non2xx'],'p50_ms':a['p50_us']/1e3,'p99_ms':a['p99_us']/1e3,
 'p999_ms':a['p999_us']/1e3,'max_ms':a['max_us']/1e3,'queue_after_1s':'$LEFT',
 'sidecar_cpu_us_per_write':round(($C1-$C0)/$CLK_TCK*1e6/n,1),
 'database_cpu_us_per_write':round(($P1-$P0)/$CLK_TCK*1e6/n,1) if '$backend'=='postgres' else None}))")"
        stop_pid "$SC"
        end_round "$backend"
    done
done

export SIDECAR_CONFIG="$RUN_DIR/sidecar-postgres.toml"
bench_config "$SIDECAR_CONFIG" postgres
fill() { # entries: store them with the backend down, through one sidecar
    fresh_sidecar postgres "http://127.0.0.1:$DOWN_PORT"
    open_loop "$SC_PORT" 4000 $(( ($1 + 3999) / 4000 )) >/dev/null
    stop_pid "$SC"
    waiting
}
# What waits, from the spool's ledger: counting the entries would scan the
# queue on the server's core while it drains.
waiting() { psql_q "SELECT coalesce(sum(entries), 0) FROM datalayer_sidecar.ledger"; }
# Rows of the queue the server handed out (index fetches): a claim that
# sends the same entries again shows here, not in the drain rate.
rows_read() { psql_q "SELECT coalesce(sum(idx_tup_fetch + seq_tup_read), 0) FROM pg_stat_user_tables WHERE schemaname = 'datalayer_sidecar' AND relname = 'entries'"; }
case " $PHASES " in *" D "*) DRAINS="1 2" ;; *) DRAINS="" ;; esac
for n in $DRAINS; do
    log "D: fill the shared store, then drain with $n sidecar(s)"
    STORED=$(fill "$ENTRIES")
    sleep 1 # the server publishes table statistics about once a second
    R0=$(rows_read)
    START=$(date +%s.%N)
    P0=$(cpu_ticks "$PG_PID")
    A_PORT=$(free_port); A_ADMIN=$(free_port)
    A=$(start_sidecar "$A_PORT" "$A_ADMIN" "http://127.0.0.1:$UP_PORT")
    B=""
    if [ "$n" = 2 ]; then
        B_PORT=$(free_port); B_ADMIN=$(free_port)
        B=$(PROXY_CORE=$LOAD_CORE start_sidecar "$B_PORT" "$B_ADMIN" "http://127.0.0.1:$UP_PORT")
    fi
    # Bounded: a drain that stalls is a finding, not a wait.
    DEADLINE=$(( $(date +%s) + ${DRAIN_LIMIT_S:-300} ))
    while [ "$(waiting)" != 0 ]; do
        alive "$A" || { log "sidecar exited while draining"; exit 1; }
        [ "$(date +%s)" -lt "$DEADLINE" ] ||
            { log "D: drain with $n sidecar(s) stalled: $(waiting) entries left after ${DRAIN_LIMIT_S:-300}s"; exit 1; }
        sleep 0.2
    done
    END=$(date +%s.%N)
    P1=$(cpu_ticks "$PG_PID")
    SC_TICKS=$(cpu_ticks "$A")
    [ -n "$B" ] && SC_TICKS=$(( SC_TICKS + $(cpu_ticks "$B") ))
    sleep 1
    R1=$(rows_read)
    record "D_drain_${n}_sidecars" "$(python3 -c "print(__import__('json').dumps({'sidecars':$n,'entries':$STORED,'seconds':round($END-$START,2),'drain_per_s':round($STORED/($END-$START),1),
 'sidecar_cpu_us_per_step':round($SC_TICKS/$CLK_TCK*1e6/max(1,$STORED),1),'database_cpu_us_per_step':round(($P1-$P0)/$CLK_TCK*1e6/max(1,$STORED),1),
 'entry_rows_read_per_step':round(($R1-$R0)/max(1,$STORED),1)}))")"
    stop_pid "$A"; [ -n "$B" ] && stop_pid "$B"
done

RESULT_FILE="$OUT_DIR/postgres.json"
[ "$PHASES" = "W L D" ] || RESULT_FILE="$OUT_DIR/postgres-$(echo "$PHASES" | tr -s ' ' '-').json"
python3 - "$RESULTS" "$RESULT_FILE" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(phase, key):
    v = [r[key] for r in rows if r['phase'] == phase and r.get(key) is not None]
    return {'median': statistics.median(v), 'min': min(v), 'max': max(v)} if v else None
summary = {f'{b}_{k}': med(f'W_{b}', k) for b in ('sqlite', 'postgres')
           for k in ('writes_per_s', 'p50_ms', 'p99_ms', 'sidecar_cpu_us_per_write')}
summary['postgres_database_cpu_us_per_write'] = med('W_postgres', 'database_cpu_us_per_write')
for b in ('sqlite', 'postgres'):
    for k in ('writes_per_s', 'p50_ms', 'p99_ms', 'p999_ms'):
        summary[f'{b}_open_loop_{k}'] = med(f'O_{b}', k)
        summary[f'{b}_backend_up_{k}'] = med(f'L_{b}', k)
for n in (1, 2):
    r = [x for x in rows if x['phase'] == f'D_drain_{n}_sidecars']
    summary[f'drain_per_s_{n}_sidecars'] = r[0]['drain_per_s'] if r else None
json.dump({'rows': rows, 'summary': summary}, open(sys.argv[2], 'w'), indent=1)
print(json.dumps(summary))
EOF
