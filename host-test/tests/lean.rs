//! The lean request path through the filter .wasm: a response with nothing to do is not
//! visited (no status read, no clock, no counters, no headers), and what a guard needs is kept
//! whatever the switches say.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a failing check in a test should panic with its message"
)]

use host_test::testing::{
    filter_wasm_path, header, requests_metric, responses_metric, user_request,
};
use host_test::{CallCounts, ExchangeReport, FilterModule, VmOptions};

fn config(extra: &str) -> String {
    format!(
        r#"{{"user_key": ["header:x-user-id"], {extra}
        "rollouts": {{
            "web": {{"match": {{"path_prefix": "/web"}}, "stable": "v1",
                "versions": [{{"name": "v1", "weight": 1}}, {{"name": "v2", "weight": 1}}]}},
            "api": {{"match": {{"path_prefix": "/api"}}, "stable": "v1",
                "versions": [{{"name": "v1", "weight": 1}}, {{"name": "v2", "weight": 0}}],
                "guard": {{}}}}}}}}"#
    )
}

/// Runs 20 users through `path` on a fresh VM of `config`; the module (for its metrics), the
/// last report, and the most calls any one request made each way.
fn run(config: &str, path: &str) -> (FilterModule, ExchangeReport, CallCounts) {
    let module = FilterModule::from_file(&filter_wasm_path()).unwrap();
    let mut vm = module.start_vm(VmOptions::default()).unwrap();
    assert!(vm.configure(config.as_bytes()).unwrap());
    let mut most = CallCounts::default();
    let mut last = None;
    for i in 0..20 {
        let report = vm
            .exchange(&user_request(path, &format!("user-{i}")))
            .unwrap();
        most.into_host = most.into_host.max(report.calls.into_host);
        most.into_filter = most.into_filter.max(report.calls.into_filter);
        last = Some(report);
    }
    (module, last.unwrap(), most)
}

#[test]
fn by_default_responses_carry_the_contract_and_are_counted() {
    let (module, report, _) = run(&config(""), "/web");
    let version = header(&report.upstream_request_headers, "x-rollout-version").unwrap();
    assert_eq!(
        header(&report.client_response_headers, "x-rollout-version"),
        Some(version)
    );
    let responses: i64 = ["v1", "v2"]
        .iter()
        .map(|v| module.metric(&responses_metric("web", v, "2xx")).unwrap())
        .sum();
    assert_eq!(responses, 20);
}

#[test]
fn switched_off_the_response_is_not_visited_and_routing_is_unchanged() {
    let (_, default_report, default_calls) = run(&config(""), "/web");
    let lean_config = config(r#""headers": {"response": false}, "metrics": {"responses": false},"#);
    let (module, report, calls) = run(&lean_config, "/web");
    // The same user gets the same version on the upstream request...
    assert_eq!(
        header(&report.upstream_request_headers, "x-rollout-version"),
        header(
            &default_report.upstream_request_headers,
            "x-rollout-version"
        ),
    );
    // ...and the response passes untouched.
    assert_eq!(
        header(&report.client_response_headers, "x-rollout-version"),
        None
    );
    assert_eq!(
        header(&report.client_response_headers, "server-timing"),
        None
    );
    // Requests are still counted; responses are not, and their series do not even exist.
    let requests: i64 = ["v1", "v2"]
        .iter()
        .map(|v| module.metric(&requests_metric("web", v)).unwrap())
        .sum();
    assert_eq!(requests, 20);
    assert_eq!(module.metric(&responses_metric("web", "v1", "2xx")), None);
    // The response's work was the status read (and the allocation it calls into the filter
    // for), the clock, two counters, a histogram and two header writes.
    assert!(
        calls.into_host + 6 <= default_calls.into_host
            && calls.into_filter < default_calls.into_filter,
        "calls per request (into host, into filter): lean {calls:?}, default {default_calls:?}"
    );
}

#[test]
fn a_guarded_rollout_counts_its_responses_whatever_the_switch() {
    let lean_config = config(r#""metrics": {"responses": false},"#);
    let (module, _, _) = run(&lean_config, "/api");
    assert_eq!(
        module.metric(&responses_metric("api", "v1", "2xx")),
        Some(20)
    );
}
