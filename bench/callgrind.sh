#!/usr/bin/env bash
# Instructions per step write, counted by valgrind's callgrind: a figure that
# does not depend on this machine's load, for comparing two builds.
#
#   SIDECAR_BIN=new BASELINE_BIN=old bash bench/callgrind.sh [writes]
#
# Each binary runs twice under callgrind with the shipped config against the
# literal backend: once idle (start, probes, shutdown) and once serving
# `writes` unique step writes (default 2000, at 250/s on 4 connections). The
# difference, divided by the writes served, is what one write costs; the
# idle run takes out start-up and shutdown. The rounds alternate between the
# binaries. Prints one line per binary and round and the medians.

source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
command -v valgrind >/dev/null || { log "installing valgrind"; apt-get install -y -qq valgrind >/dev/null; }
WRITES="${1:-2000}"
RATE=250
ROUNDS="${ROUNDS:-2}"
(cd "$REPO_DIR" && cargo build --release --locked --example loadgen --example literal_backend 2>&1 | tail -n 1 >&2)
[ -x "$SIDECAR_BIN" ] || { log "no sidecar binary at $SIDECAR_BIN"; exit 1; }

python3 -c "import sys; sys.path.insert(0, '$BENCH_DIR'); from steps import add_step_body; print(add_step_body('STEP_ID'), end='')" > "$RUN_DIR/addstep.json"
UP_PORT=$(free_port)
"$REPO_DIR/target/release/examples/literal_backend" "127.0.0.1:$UP_PORT" >"$RUN_DIR/backend.log" 2>&1 &
PIDS+=("$!")
wait_port "$UP_PORT"

# Total instructions of one run of binary $1 serving $2 writes (0: idle).
run_one() {
    local bin="$1" writes="$2" tag="$3"
    local dir="$RUN_DIR/$tag"
    mkdir -p "$dir"
    sed -e "s|^path = \"data/spool.sqlite3\"|path = \"$dir/spool.sqlite3\"|" \
        "$REPO_DIR/config/sidecar.toml" > "$dir/sidecar.toml"
    local sc admin
    sc=$(free_port); admin=$(free_port)
    valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
        "$bin" --config "$dir/sidecar.toml" --listen "127.0.0.1:$sc" \
        --admin-listen "127.0.0.1:$admin" --upstream "http://127.0.0.1:$UP_PORT" \
        >"$dir/valgrind.log" 2>&1 &
    local vg=$!
    PIDS+=("$vg")
    WAIT_PORT_S=60 wait_port "$sc"
    for _ in $(seq 1 120); do
        curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break
        sleep 0.5
    done
    local served=0
    if [ "$writes" -gt 0 ]; then
        local secs
        secs=$(python3 -c "print($writes / $RATE)")
        taskset -c "$LOAD_CORE" "$REPO_DIR/target/release/examples/loadgen" \
            --url "http://127.0.0.1:$sc/api/graphql" --body "$RUN_DIR/addstep.json" \
            --rate "$RATE" --duration "$secs" --connections 4 --unique >"$dir/load.json"
        served=$(python3 -c "import json; d=json.load(open('$dir/load.json')); print(d['requests'] - d['errors'] - d['non2xx'])")
    fi
    # Writes the spool acknowledged were not delivered live: their cost is
    # the replay worker's, so a round with any is not comparable.
    local spooled
    spooled=$(curl -s "http://127.0.0.1:$admin/metrics" \
        | awk '/^datalayer_sidecar_spool_committed_total/ {print $2}')
    kill -TERM "$vg"
    wait "$vg" || true
    local ir
    ir=$(grep -m1 '^summary:' "$dir/callgrind.out" | awk '{print $2}')
    echo "$ir $served ${spooled:-?}"
}

declare -A PER
bins=("new:$SIDECAR_BIN")
[ -n "${BASELINE_BIN:-}" ] && bins+=("baseline:$BASELINE_BIN")
for round in $(seq 1 "$ROUNDS"); do
    for entry in "${bins[@]}"; do
        name="${entry%%:*}"; bin="${entry#*:}"
        read -r idle _ _ < <(run_one "$bin" 0 "$name-idle-$round")
        read -r busy served spooled < <(run_one "$bin" "$WRITES" "$name-busy-$round")
        per=$(python3 -c "print(round(($busy - $idle) / max($served, 1)))")
        PER[$name]="${PER[$name]:-} $per"
        printf 'round %d %-8s idle %s Ir, %s writes %s Ir: %s instructions per write (%s spooled)\n' \
            "$round" "$name" "$idle" "$served" "$busy" "$per" "$spooled"
    done
done
for entry in "${bins[@]}"; do
    name="${entry%%:*}"
    python3 -c "import statistics,sys; v=[int(x) for x in sys.argv[2:]]; print(f'{sys.argv[1]:8s} median {statistics.median(v):.0f} instructions per write over {len(v)} rounds')" "$name" ${PER[$name]}
done
