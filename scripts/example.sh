#!/usr/bin/env bash
# The main job: builds the filter .wasm and sends 100,000 simulated users of the built-in
# example config (examples/checkout.json) through it. Extra arguments go to `rollout simulate`.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
cargo build --profile wasm --quiet -p rollout-filter --target wasm32-wasip1
cargo run --release --quiet -p host-test --bin rollout -- simulate --users 100000 "$@"
