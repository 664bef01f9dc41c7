//! The metrics an operator reads beside the per-version ones, through the filter .wasm: the
//! config in force (`rollout_config_info{hash}` and the `rollout-config` Server-Timing entry)
//! and the opt-in flag evaluation counts (`metrics.flags`), kept in the VM and added to the
//! host's counters on the tick, never with a host call per request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a failing check in a test should panic with its message"
)]

use std::collections::BTreeMap;
use std::time::Duration;

use host_test::testing::{filter_wasm_path, header, user_request};
use host_test::{FilterModule, Vm, VmOptions};
use rollout_core::Config;

const FLAGS: &str = r#""flags": {
    "dark-mode": {"percentage": 50},
    "layout": {"variants": [{"name": "grid", "weight": 1}, {"name": "list", "weight": 3}],
        "default": "classic", "percentage": 80}
}"#;

fn config(metrics: &str) -> String {
    format!(
        r#"{{"user_key": ["header:x-user-id"], {metrics}
        "rollouts": {{"web": {{"versions": [{{"name": "v1", "weight": 1}}, {{"name": "v2", "weight": 1}}]}}}},
        {FLAGS}}}"#
    )
}

fn info_metric(config: &str) -> String {
    let hash = Config::from_json(config.as_bytes()).unwrap().digest_text();
    format!("rollout_config_info.hash=.={hash};.;")
}

fn flag_metric(flag: &str, value: &str) -> String {
    format!("rollout_flag_evaluations_total.flag=.={flag};.;.value=.={value};.;")
}

fn start(module: &FilterModule, config: &str) -> Vm {
    let mut vm = module.start_vm(VmOptions::default()).unwrap();
    assert!(vm.configure(config.as_bytes()).unwrap());
    vm
}

/// Sends `users` and tallies the flag values the upstream was told, as `flag=value` -> count,
/// with the most host calls any one request made.
fn send(vm: &mut Vm, users: std::ops::Range<u32>) -> (BTreeMap<String, i64>, u32) {
    let mut seen = BTreeMap::new();
    let mut most_calls = 0;
    for i in users {
        let report = vm
            .exchange(&user_request("/", &format!("user-{i}")))
            .unwrap();
        most_calls = most_calls.max(report.calls.into_host);
        let flags = header(&report.upstream_request_headers, "x-rollout-flags").unwrap();
        for pair in flags.split(',') {
            *seen.entry(pair.to_owned()).or_insert(0) += 1;
        }
    }
    (seen, most_calls)
}

#[test]
fn the_config_in_force_is_a_gauge_and_a_server_timing_entry() {
    let module = FilterModule::from_file(&filter_wasm_path()).unwrap();
    let first = config("");
    let mut vm = start(&module, &first);
    assert_eq!(module.metric(&info_metric(&first)), Some(1));
    let report = vm.exchange(&user_request("/", "user-1")).unwrap();
    let hash = Config::from_json(first.as_bytes()).unwrap().digest_text();
    let timing = header(&report.client_response_headers, "server-timing").unwrap();
    assert!(
        timing.ends_with(&format!(", rollout-config;desc=\"{hash}\"")),
        "{timing}"
    );

    // A new config: its revision is 1, the one it replaced 0, so `== 1` names one config.
    let second = config(r#""metrics": {"flags": true},"#);
    assert!(vm.configure(second.as_bytes()).unwrap());
    assert_eq!(module.metric(&info_metric(&second)), Some(1));
    assert_eq!(module.metric(&info_metric(&first)), Some(0));
    // The same config laid out otherwise is the same revision.
    let relaid = second.replace(": ", ":").replace('\n', " ");
    assert_ne!(relaid, second);
    assert_eq!(info_metric(&relaid), info_metric(&second));
}

#[test]
fn flag_evaluations_are_counted_in_the_vm_and_reach_the_host_on_the_tick() {
    let module = FilterModule::from_file(&filter_wasm_path()).unwrap();
    let mut vm = start(&module, &config(r#""metrics": {"flags": true},"#));
    let (seen, _) = send(&mut vm, 0..200);
    // Every possible value is defined, so a value nobody got reads 0, not absent.
    for (flag, value) in [
        ("dark-mode", "on"),
        ("dark-mode", "off"),
        ("layout", "grid"),
        ("layout", "list"),
        ("layout", "classic"),
    ] {
        assert_eq!(
            module.metric(&flag_metric(flag, value)),
            Some(0),
            "{flag}={value}"
        );
    }
    // Counted in the VM until the flush, which comes with the first tick.
    vm.advance(Duration::from_millis(150)).unwrap();
    for (pair, count) in &seen {
        let (flag, value) = pair.split_once('=').unwrap();
        assert_eq!(
            module.metric(&flag_metric(flag, value)),
            Some(*count),
            "{pair}"
        );
    }
    assert_eq!(
        seen.values().sum::<i64>(),
        400,
        "two flags per request: {seen:?}"
    );
    assert!(
        seen.len() >= 4,
        "the users should spread over the values: {seen:?}"
    );

    // Then at most once a second: 100 more users are not in the host's counters after
    // 500 ms, and are after the second.
    let (more, _) = send(&mut vm, 200..300);
    vm.advance(Duration::from_millis(500)).unwrap();
    let total = |flag: &str, values: &[&str]| -> i64 {
        values
            .iter()
            .map(|v| module.metric(&flag_metric(flag, v)).unwrap())
            .sum()
    };
    assert_eq!(total("dark-mode", &["on", "off"]), 200);
    vm.advance(Duration::from_millis(600)).unwrap();
    assert_eq!(total("dark-mode", &["on", "off"]), 300);
    assert_eq!(total("layout", &["grid", "list", "classic"]), 300);
    assert_eq!(more.values().sum::<i64>(), 200);
}

#[test]
fn a_replaced_config_hands_over_its_counts() {
    let module = FilterModule::from_file(&filter_wasm_path()).unwrap();
    let counted = config(r#""metrics": {"flags": true},"#);
    let mut vm = start(&module, &counted);
    let (seen, _) = send(&mut vm, 0..30);
    // No tick: the counts are still in the VM when the config is replaced.
    assert!(vm.configure(config("").as_bytes()).unwrap());
    for (pair, count) in &seen {
        let (flag, value) = pair.split_once('=').unwrap();
        assert_eq!(
            module.metric(&flag_metric(flag, value)),
            Some(*count),
            "{pair}"
        );
    }
}

#[test]
fn counting_flags_is_opt_in_and_adds_no_host_call_per_request() {
    let module = FilterModule::from_file(&filter_wasm_path()).unwrap();
    let mut plain = start(&module, &config(""));
    let (_, plain_calls) = send(&mut plain, 0..20);
    assert_eq!(module.metric(&flag_metric("dark-mode", "on")), None);

    let counting_module = FilterModule::from_file(&filter_wasm_path()).unwrap();
    let mut counting = start(&counting_module, &config(r#""metrics": {"flags": true},"#));
    let (_, counting_calls) = send(&mut counting, 0..20);
    assert!(
        counting_module
            .metric(&flag_metric("dark-mode", "on"))
            .is_some()
    );
    assert_eq!(counting_calls, plain_calls);
}
