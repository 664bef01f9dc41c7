//! The filter's plugin configuration (a rollout config, or the live form with
//! `config_source`, `fallback` and `override_keys`): no panic; a refusal has error lines; the
//! live form's source is within its documented bounds and the plugin's keys are merged into
//! the fallback; the config in force decides the vectors' requests within the invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollout_fuzz::{check_decision, filter_plugin_config, vectors};

fuzz_target!(|data: &[u8]| {
    match filter_plugin_config(data) {
        Err(lines) => {
            assert!(!lines.is_empty(), "refused with no error line");
            assert!(lines.iter().all(|l| !l.is_empty()), "an empty error line");
        }
        Ok((config, _live)) => {
            let cases = &vectors().cases;
            if let Some(request) = cases.get(data.len() % cases.len().max(1)) {
                check_decision(&config, request);
            }
        }
    }
});
