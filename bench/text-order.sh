#!/usr/bin/env bash
# Regenerates .cargo/text-order.txt: the functions a running sidecar executes,
# hottest first, which the release link places together at the start of the
# text segment (.cargo/ordered-cc). Run it after a change that moves much code
# on or off the request path; a stale file still links, it just places less.
#
#   bash bench/text-order.sh
#
# Runs the release binary under valgrind's callgrind (instructions, so the
# result does not depend on this machine's load) through what a sidecar does
# in production: start with the shipped config, answer the probes, serve a
# few hundred step writes through the literal backend, answer a metrics
# scrape, shut down. Every function with any cost goes in the file, ordered by
# its own instruction count.

source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
command -v valgrind >/dev/null || { log "installing valgrind"; apt-get install -y -qq valgrind >/dev/null; }
(cd "$REPO_DIR" && cargo build --release --locked --bin datalayer-sidecar --example loadgen --example literal_backend 2>&1 | tail -n 1 >&2)

python3 -c "import sys; sys.path.insert(0, '$BENCH_DIR'); from steps import add_step_body; print(add_step_body('STEP_ID'), end='')" > "$RUN_DIR/addstep.json"
sed -e "s|^path = \"data/spool.sqlite3\"|path = \"$RUN_DIR/spool.sqlite3\"|" \
    "$REPO_DIR/config/sidecar.toml" > "$RUN_DIR/sidecar.toml"

UP_PORT=$(free_port); SC_PORT=$(free_port); ADMIN_PORT=$(free_port)
"$REPO_DIR/target/release/examples/literal_backend" "127.0.0.1:$UP_PORT" >"$RUN_DIR/backend.log" 2>&1 &
PIDS+=("$!")
wait_port "$UP_PORT"

PROFILE="$RUN_DIR/callgrind.out"
valgrind --tool=callgrind --demangle=no --callgrind-out-file="$PROFILE" \
    "$SIDECAR_BIN" --config "$RUN_DIR/sidecar.toml" --listen "127.0.0.1:$SC_PORT" \
    --admin-listen "127.0.0.1:$ADMIN_PORT" --upstream "http://127.0.0.1:$UP_PORT" \
    >"$RUN_DIR/valgrind.log" 2>&1 &
VG=$!
PIDS+=("$VG")
WAIT_PORT_S=60 wait_port "$SC_PORT"
# Ready once the spool is open; under valgrind that takes a few seconds.
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null && break
    sleep 0.5
done
for path in readyz healthz metrics; do curl -sf "http://127.0.0.1:$ADMIN_PORT/$path" >/dev/null; done
"$REPO_DIR/target/release/examples/loadgen" --url "http://127.0.0.1:$SC_PORT/api/graphql" \
    --body "$RUN_DIR/addstep.json" --rate 50 --duration 8 --connections 4 --unique >"$RUN_DIR/load.json"
for path in metrics readyz; do curl -sf "http://127.0.0.1:$ADMIN_PORT/$path" >/dev/null; done
log "load: $(cat "$RUN_DIR/load.json")"
kill -TERM "$VG"
wait "$VG" || true

python3 "$BENCH_DIR/text_order.py" "$PROFILE" "$SIDECAR_BIN" > "$REPO_DIR/.cargo/text-order.txt"
log "wrote $(grep -vc '^#' "$REPO_DIR/.cargo/text-order.txt") functions to .cargo/text-order.txt"
