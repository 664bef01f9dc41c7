#!/usr/bin/env bash
# Runs every benchmark on this machine and writes the results table with the machine's
# description to benches/RESULTS.md and into README.md: module sizes, the core beside
# unleash-yggdrasil (criterion), the filter .wasm per request in the harness, Envoy under load
# beside its native split, a Lua split and an empty wasm filter, config propagation, Envoy's RSS
# per worker VM and the time to load a 200-flag config, the Worker's CPU per request in workerd
# beside a plain JavaScript Worker, also with a guard, and its Durable Object per batched call
# (printed, in target/bench-results/worker_*.json); and a
# profile: allocations per decision, filter/host crossings per request, module size by crate;
# and a 5-minute soak of the live source (envoy/soak.py, printed and in soak.json).
# Took 11.5 minutes on 2 cores with the tools installed before the soak was added (2026-11-24;
# envoy/bench_memory.py is about 3 of them), so about 16.5 with it; run it on an otherwise idle
# machine.
#
#     scripts/bench.sh [--quick]     (--quick: shorter runs, for trying the script out)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

rounds=3 seconds=8 flips=40 soak=300 criterion=() memory=() worker_cpu=() worker_state=()
if [ "${1:-}" = "--quick" ]; then
    rounds=1 seconds=2 flips=6 soak=20 criterion=(--warm-up-time 1 --measurement-time 2) memory=(--quick)
    worker_cpu=(--requests 500 --rounds 2 --warmup 100) worker_state=(--calls 200 --rounds 2)
fi
out=target/bench-results
rm -rf "$out" && mkdir -p "$out"
# What was measured: the commit, and whether the tree had changes on top of it.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain 2>/dev/null)" ] || commit="$commit with uncommitted changes"
printf '{"commit": "%s", "started": "%s"}\n' "$commit" "$(date -u '+%Y-%m-%d %H:%M UTC')" >"$out/run.json"

step "tools: wasm targets, wrk, Envoy, Worker build tools"
ensure_targets
ensure_apt_tool wrk
ensure_envoy
ensure_worker_tools

step "build both wasm modules"
build_filters
build_worker

step "filter module size by crate (a build that keeps function names)"
CARGO_PROFILE_WASM_STRIP=false CARGO_TARGET_DIR=target/size-profile \
    cargo build --profile wasm -p rollout-filter --target wasm32-wasip1
python3 benches/wasm_size.py target/size-profile/wasm32-wasip1/wasm/rollout_filter.wasm \
    --json "$out/filter_size.json"

step "criterion: core, core beside unleash-yggdrasil, the filter .wasm in the harness"
ROLLOUT_BENCH_OUT="$PWD/$out" cargo bench -p rollout-benches --bench decide -- "${criterion[@]}"

step "Envoy under load: $rounds interleaved rounds of $seconds s per variant"
.venv/bin/python envoy/bench_load.py "$rounds" "$seconds" --json "$out/load.json"

step "config propagation: $flips flips"
.venv/bin/python envoy/bench_propagation.py "$flips" --json "$out/propagation.json"
.venv/bin/python envoy/bench_poll.py --flips "$flips" --seconds "$seconds" --json "$out/poll.json"

step "soak: $soak s under wrk while the live source changes or misbehaves every second"
.venv/bin/python envoy/soak.py "$soak" --json "$out/soak.json"

step "Envoy's RSS per worker VM (1, 2, 4 workers) and the time to load a 200-flag config"
.venv/bin/python envoy/bench_memory.py "${memory[@]}" --json "$out/memory.json"

step "the Worker's CPU per request in workerd beside a plain JavaScript split (issue 12)"
# js-features: the JavaScript split with the origin timeout and data point the rollout Worker has.
node benches/worker_cpu.mjs "${worker_cpu[@]}" --variants js,js-features,rollout,rollout-noae --out "$out/worker_cpu.json"
# The same with a guarded rollout: its batches go to the Durable Object in the same workerd.
node benches/worker_cpu.mjs "${worker_cpu[@]}" --variants js,rollout --config examples/canary-schedule.json \
    --out "$out/worker_cpu_guard.json"
node benches/worker_state.mjs "${worker_state[@]}" --out "$out/worker_state.json"

step "results table"
.venv/bin/python benches/report.py --criterion target/criterion --results "$out" \
    --wasm-opt worker/node_modules/.bin/wasm-opt \
    --write benches/RESULTS.md --readme README.md
