//! Raw bytes as a config: never a panic; a refusal names at least one problem; an accepted
//! config decides a few of the vectors' requests within its invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollout_core::Config;
use rollout_fuzz::{check_decision, vectors};

fuzz_target!(|data: &[u8]| {
    match Config::from_json(data) {
        Err(errors) => {
            assert!(!errors.is_empty(), "refused with no error");
            for e in errors.iter() {
                assert!(!e.to_string().is_empty(), "an error without words");
            }
        }
        Ok(config) => {
            let cases = &vectors().cases;
            // Three cases, picked by the input so that every case is tried over a run.
            for i in 0..3 {
                if let Some(request) = cases.get((data.len() + i * 7) % cases.len().max(1)) {
                    check_decision(&config, request);
                }
            }
        }
    }
});
