# Shared helpers for the benchmark scripts. Source it; do not run it.
#
# Core layout on a 2-core machine: the upstream and the proxy under test share
# core 0 (PROXY_CORE), the load generator gets core 1 (LOAD_CORE), so the
# proxy never competes with wrk and every proxy meets the same upstream.

set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
OUT_DIR="${OUT_DIR:-$BENCH_DIR/out}"
RUN_DIR="${RUN_DIR:-$(mktemp -d /tmp/dlsc-bench.XXXXXX)}"
PROXY_CORE="${PROXY_CORE:-0}"
LOAD_CORE="${LOAD_CORE:-1}"
SIDECAR_BIN="${SIDECAR_BIN:-$REPO_DIR/target/release/datalayer-sidecar}"
CLK_TCK="$(getconf CLK_TCK)"
mkdir -p "$OUT_DIR" "$RUN_DIR"

# Processes started here. The start_* helpers run inside $(...), where a
# PIDS+= would be lost, so each also leaves a pid file that cleanup reads.
PIDS=()

# Whether pid $1 runs (a zombie does not: processes started in $(...) are
# reparented, and their new parent may not reap them, so kill -0 would lie).
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
    # nginx daemons started with their own pid files
    for f in "$RUN_DIR"/*.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    [ "${KEEP_RUN_DIR:-0}" = 1 ] || rm -rf "$RUN_DIR"
}

ensure_tools() {
    local missing=()
    for t in nginx haproxy wrk taskset; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing: nginx haproxy wrk (Debian packages)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq nginx haproxy wrk util-linux >/dev/null
    fi
    if [ "$SIDECAR_BIN" = "$REPO_DIR/target/release/datalayer-sidecar" ]; then
        log "building the sidecar (release; a no-op when up to date)"
        (cd "$REPO_DIR" && cargo build --release --locked --bin datalayer-sidecar --example loadgen --example bare_proxy --example literal_backend 2>&1 | tail -n 1 >&2)
    fi
}

# A Python with httpx for the fault client (a venv under bench/.venv).
ensure_python() {
    local venv="$BENCH_DIR/.venv"
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import httpx' 2>/dev/null; then
        log "creating $venv with httpx"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q 'httpx==0.28.*'
    fi
    PY="$venv/bin/python"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # port; waits up to WAIT_PORT_S seconds (default 10)
    local port=$1
    for _ in $(seq 1 $(( ${WAIT_PORT_S:-10} * 20 ))); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "port $port did not open"; return 1
}

render() { # template out key=value...
    local tpl=$1 out=$2; shift 2
    local text; text="$(cat "$tpl")"
    for kv in "$@"; do text="${text//${kv%%=*}/${kv#*=}}"; done
    printf '%s\n' "$text" > "$out"
}

# nginx (daemonized); echoes the master pid.
start_nginx() { # name template port [upstream_port] [access_log]
    local name=$1 tpl=$2 port=$3 up=${4:-0} access=${5:-off}
    local conf="$RUN_DIR/$name.conf"
    render "$tpl" "$conf" "__PORT__=$port" "__UPSTREAM_PORT__=$up" "__DIR__=$RUN_DIR" \
        "__ACCESS_LOG__=$access" "__PIDFILE__=$RUN_DIR/$name.pid"
    taskset -c "$PROXY_CORE" nginx -c "$conf" -p "$RUN_DIR" -g "daemon on;" 2>>"$RUN_DIR/$name.stderr"
    wait_port "$port"
    for _ in $(seq 1 50); do [ -s "$RUN_DIR/$name.pid" ] && break; sleep 0.05; done
    cat "$RUN_DIR/$name.pid"
}

start_haproxy() { # port upstream_port log(0/1); echoes pid
    local port=$1 up=$2 logit=${3:-1}
    local conf="$RUN_DIR/haproxy.cfg" logline=""
    [ "$logit" = 1 ] && logline="log stdout format raw local0 info"
    render "$BENCH_DIR/conf/proxy-haproxy.cfg" "$conf" "__PORT__=$port" "__UPSTREAM_PORT__=$up" "__DIR__=$RUN_DIR" "__HAPROXY_LOG__=$logline"
    if [ "$logit" = 1 ]; then sed -i 's/^    mode http$/    mode http\n    option httplog/' "$conf"; fi
    taskset -c "$PROXY_CORE" haproxy -f "$conf" >"$RUN_DIR/haproxy.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid"); echo "$pid" >"$RUN_DIR/haproxy-$port.pid"
    wait_port "$port"
    echo "$pid"
}

start_sidecar() { # port admin_port upstream_url [extra args...]; echoes pid
    local port=$1 admin=$2 up=$3; shift 3
    taskset -c "$PROXY_CORE" "$SIDECAR_BIN" --config "${SIDECAR_CONFIG:-$REPO_DIR/config/sidecar.toml}" \
        --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --upstream "$up" "$@" \
        >"$RUN_DIR/sidecar-$port.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid"); echo "$pid" >"$RUN_DIR/sidecar-$port.pid"
    wait_port "$port"
    echo "$pid"
}

# A second sidecar from BASELINE_BIN with the run's config CONFIG (its own
# spool file): the A/B peer of bench/run.sh and bench/latency.sh. Echoes its pid.
start_baseline() { # port admin_port upstream_url config
    local config="$RUN_DIR/baseline.toml"
    sed -e "s|spool.sqlite3|baseline.sqlite3|" "$4" > "$config"
    SIDECAR_BIN="$BASELINE_BIN" SIDECAR_CONFIG="$config" start_sidecar "$1" "$2" "$3"
}

# The bare hyper proxy (examples/bare_proxy.rs), the floor the sidecar is
# compared with. Echoes its pid.
start_bare_proxy() { # port upstream_port
    local port=$1 up=$2
    taskset -c "$PROXY_CORE" "$REPO_DIR/target/release/examples/bare_proxy" "127.0.0.1:$port" "127.0.0.1:$up" \
        >"$RUN_DIR/bare-$port.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid"); echo "$pid" >"$RUN_DIR/bare-$port.pid"
    wait_port "$port"
    echo "$pid"
}

# All pids of a process tree rooted at $1 (nginx master + workers).
tree_pids() {
    local root=$1
    echo "$root"
    pgrep -P "$root" 2>/dev/null || true
}

# utime+stime in clock ticks over a process tree.
cpu_ticks() {
    local total=0 p
    for p in $(tree_pids "$1"); do
        if [ -r "/proc/$p/stat" ]; then
            # Fields after the ")" of the command name: utime is 12th, stime 13th.
            local t; t=$(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')
            total=$((total + t))
        fi
    done
    echo "$total"
}

# Largest value (KiB) of /proc status field $1 (VmHWM, VmRSS) over the
# process tree rooted at $2 (the worker, for nginx).
status_max_kib() {
    local field=$1 max=0 p v
    for p in $(tree_pids "$2"); do
        v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        [ "${v:-0}" -gt "$max" ] && max=$v
    done
    echo "$max"
}
peak_rss_kib() { status_max_kib VmHWM "$1"; }
rss_kib() { status_max_kib VmRSS "$1"; }

# wrk pinned to the load core; prints the JSON line from wrk.lua's done().
run_wrk() { # url conns seconds [extra wrk args...]
    local url=$1 conns=$2 secs=$3; shift 3
    local threads=1
    taskset -c "$LOAD_CORE" wrk -t"$threads" -c"$conns" -d"${secs}s" --latency --timeout 10s \
        -s "$BENCH_DIR/wrk.lua" "$@" "$url" 2>&1 | grep '^{' | tail -n 1
}
