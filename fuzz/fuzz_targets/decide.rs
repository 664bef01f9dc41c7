//! A decision from arbitrary request facts (headers, cookies, time, entropy, tripped
//! versions) under each of the golden vectors' configs: the invariants of `check_decision`
//! (the same input decides the same twice, the version is one of the rollout's, the header
//! contract leaves the upstream exactly the decision's headers).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use rollout_fuzz::{Request, check_decision, vectors};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let configs = &vectors().configs;
    let (Ok(config), Ok(request)) = (u.choose(configs), Request::arbitrary(&mut u)) else {
        return;
    };
    check_decision(config, &request);
});
