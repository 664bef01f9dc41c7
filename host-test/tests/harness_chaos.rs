//! The chaos of the `harness_chaos` fuzz target (fuzz/harness) in every `cargo test`: the
//! filter .wasm under random host errors and call orders, from seeded pseudo-random bytes, so
//! CI runs the target's checks without building it (its libFuzzer build compiles wasmtime a
//! second time). The fuzz target searches the same space for longer, guided by coverage.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    unreachable_pub,
    reason = "a failing check in a test should panic with its message; the module's items are \
              public for the fuzz target"
)]

mod chaos;

use arbitrary::Unstructured;

/// Inputs per run: about 15 s on this machine (26 operations each on average).
const INPUTS: u64 = 300;

/// splitmix64: a fixed sequence, so a failure names the seed that reproduces it.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

#[test]
fn the_filter_never_traps_under_host_errors_and_any_call_order() {
    let mut ran = 0;
    let mut ops = 0;
    for seed in 0..INPUTS {
        let data = bytes(seed, 256 + (seed as usize * 61) % 3840);
        let wanted = 4 + (seed as usize % 44);
        let Ok(input) = chaos::Input::with_ops(&mut Unstructured::new(&data), wanted) else {
            continue;
        };
        ops += input.op_count();
        let outcome = std::panic::catch_unwind(|| chaos::run(input));
        assert!(
            outcome.is_ok(),
            "seed {seed}: the filter trapped (message above)"
        );
        ran += 1;
    }
    // Most byte strings make an input, and the inputs do things.
    assert!(
        ran >= INPUTS * 9 / 10,
        "only {ran} of {INPUTS} seeds made an input"
    );
    assert!(ops >= ran * 10, "only {ops} operations over {ran} inputs");
}
