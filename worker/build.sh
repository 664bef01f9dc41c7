#!/bin/sh
# Builds the Worker into build/ as it ships. wrangler.toml's [build] runs this (so `wrangler dev`
# and `wrangler deploy` do), and so do scripts/test.sh and scripts/bench.sh (scripts/lib.sh's
# build_worker). worker-build always asks cargo for --release: these variables give that build
# the settings of Cargo.toml's [profile.wasm], the filter's (opt-level z, fat LTO, one codegen
# unit, panic=abort, stripped), without touching the release profile of the native tools.
# Without them the Worker came out at 512 KB raw instead of 286 KB.
set -eu
cd "$(dirname "$0")"
export CARGO_PROFILE_RELEASE_OPT_LEVEL=z CARGO_PROFILE_RELEASE_LTO=true \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_PANIC=abort \
    CARGO_PROFILE_RELEASE_STRIP=true
exec worker-build --release "$@"
