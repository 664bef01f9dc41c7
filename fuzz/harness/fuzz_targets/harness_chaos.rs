//! The filter .wasm through the harness under chaos: `host-test/tests/chaos/mod.rs` says what
//! an input does and what it checks; `host-test/tests/harness_chaos.rs` runs the same module
//! on seeded inputs in every `cargo test`.
#![no_main]

#[path = "../../../host-test/tests/chaos/mod.rs"]
#[allow(dead_code, reason = "the seeded test's helpers, unused by libFuzzer")]
mod chaos;

libfuzzer_sys::fuzz_target!(|input: chaos::Input| chaos::run(input));
