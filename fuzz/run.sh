#!/usr/bin/env bash
# Run every fuzz target (libFuzzer through cargo-fuzz) for a bounded time.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# The test command runs it with a short budget (FUZZ_SECONDS, 15 s by
# default); run it longer by hand, e.g. `fuzz/run.sh 600`. Each target
# starts from its committed seeds (fuzz/seeds/<target>/, from the SDK's own
# documents and the tests: fuzz/seeds.py) and from what earlier runs on this
# machine found (fuzz/corpus/<target>/, not committed). A crash, a hang or a
# leak stops the run with the input in fuzz/artifacts/<target>/: turn it into
# a regression test before fixing it (docs/fuzzing.md).
#
# It builds on the stable toolchain: `-s none` leaves out the sanitizers
# (which need nightly) and keeps libFuzzer's coverage instrumentation; the
# targets assert their properties themselves and Rust checks bounds.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"

seconds="${1:-${FUZZ_SECONDS:-15}}"
shift || true
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is missing; bash tests/setup.sh installs it" >&2
    exit 1
fi

# One build for every target, optimised, with debug assertions (overflow
# checks included: issue 18's worker died of an overflow).
cargo fuzz build -s none -O --debug-assertions >&2

mkdir -p logs
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="logs/$t.log"
    echo "fuzz: $t for ${seconds}s" >&2
    # -timeout: one input running longer than 10 s is a hang (a finding);
    # -rss_limit_mb: one input needing 2 GiB is a finding too.
    if ! cargo fuzz run -s none -O --debug-assertions "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    corpus=$(find "corpus/$t" -type f | wc -l)
    summary+=("$(printf '%-16s %10s execs  cov %6s  ft %6s  corpus %5s' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$corpus")")
done
printf '%s\n' "fuzz: ${seconds}s per target, no crash, hang or leak:" "${summary[@]}"
