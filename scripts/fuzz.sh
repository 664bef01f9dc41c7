#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS_PER_TARGET seconds each (default 60),
# one after another under nice -n 19, and prints each target's executions and crashes from
# libFuzzer's final stats. FUZZ_RUNS=N stops a target after N executions instead of at its
# time (whichever comes first); FUZZ_TARGETS="a b" runs only those; FUZZ_JOBS=2 runs two
# targets at a time. A crash's input is kept in fuzz/artifacts/TARGET/ and the script exits 1;
# each target's libFuzzer output is in fuzz/logs/TARGET.log. FUZZ_OUT=DIR puts corpora,
# artifacts and logs under DIR instead of fuzz/.
#
# The targets are plain libfuzzer-sys binaries built with cargo and the coverage flags
# cargo-fuzz would pass (see fuzz_build in scripts/lib.sh); the seed corpora come from the
# golden vectors and examples (fuzz/seeds.py), into fuzz/corpus/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

seconds=${1:-60}
out=${FUZZ_OUT:-fuzz}
runs=${FUZZ_RUNS:--1}
jobs=${FUZZ_JOBS:-1}
targets=${FUZZ_TARGETS:-$(fuzz_targets)}

fuzz_build
python3 fuzz/seeds.py "$out/corpus"

run_one() {
    local target=$1 log=$out/logs/$1.log max_len=1024
    # Bytes in, parsed as they come: room for real configs and header maps. The others build
    # structured input, where long inputs only slow the executions.
    case $target in config_json | filter_plugin_config | filter_headers) max_len=4096 ;; esac
    mkdir -p "$out/artifacts/$target" "$out/logs"
    local status=0
    nice -n 19 "$(fuzz_bin "$target")" "$out/corpus/$target" \
        -max_total_time="$seconds" -runs="$runs" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$out/artifacts/$target/" >"$log" 2>&1 || status=$?
    local execs
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    local crashes
    crashes=$(find "$out/artifacts/$target" -type f | wc -l)
    printf '%-22s executions %12s  crashes %s  (exit %s, log %s)\n' \
        "$target" "${execs:-?}" "$crashes" "$status" "$log"
    [ "$status" -eq 0 ] && [ "$crashes" -eq 0 ]
}

failed=0
running=0
for target in $targets; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n || failed=1
        running=$((running - 1))
    fi
    run_one "$target" &
    running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
    wait -n || failed=1
    running=$((running - 1))
done
exit "$failed"
