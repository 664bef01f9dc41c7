//! The filter .wasm on input no golden vector can carry: bytes that are not UTF-8, oversized
//! values, odd statuses, and a VM that never got a config. It must decide, not trap.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a failing check in a test should panic with its message"
)]

use host_test::testing::{filter_wasm_path, requests_metric, responses_metric};
use host_test::{Exchange, ExchangeReport, FilterModule, Headers, VmOptions};

const CONFIG: &str = r#"{"user_key": ["header:x-user-id", "cookie:uid"],
    "rollouts": {"web": {"stable": "v1", "versions": [{"name": "v1", "weight": 1}, {"name": "v2", "weight": 1}]}},
    "flags": {"f": {"rules": [{"when": [{"attribute": "header:x-app", "op": "semver_gte", "value": "1.0.0"}], "serve": "off"}]}}}"#;

fn module() -> FilterModule {
    FilterModule::from_file(&filter_wasm_path()).unwrap_or_else(|e| {
        panic!("{e:#}\nbuild the filter first: cargo build -p rollout-filter --target wasm32-wasip1 --profile wasm")
    })
}

fn raw(pairs: &[(&str, &[u8])]) -> Headers {
    let mut h: Headers = vec![
        (":method".into(), b"GET".to_vec()),
        (":path".into(), b"/".to_vec()),
    ];
    h.extend(pairs.iter().map(|(k, v)| ((*k).to_owned(), v.to_vec())));
    h
}

fn version(report: &ExchangeReport) -> Option<&str> {
    report
        .upstream_request_headers
        .iter()
        .find(|(k, _)| k == "x-rollout-version")
        .map(|(_, v)| v.as_str())
}

#[test]
fn hostile_request_headers_get_a_decision() {
    let module = module();
    let mut vm = module.start_vm(VmOptions::default()).unwrap();
    assert!(vm.configure(CONFIG.as_bytes()).unwrap());
    let huge = vec![b'k'; 1 << 20];
    let cases: Vec<(&str, Headers, Option<&str>)> = vec![
        (
            "non-UTF-8 key",
            raw(&[("x-user-id", &[0xff, 0xfe, 0x80, 0x00])]),
            None,
        ),
        (
            "1 MiB key: ignored, stable",
            raw(&[("x-user-id", &huge)]),
            Some("v1"),
        ),
        ("1 MiB cookie header", raw(&[("cookie", &huge)]), Some("v1")),
        (
            "non-UTF-8 cookie and rule attribute",
            raw(&[("cookie", b"uid=\xff\xfe; x"), ("x-app", b"\xc3\x28")]),
            None,
        ),
        (
            "cookie of separators only",
            raw(&[("cookie", b";;==;; ;=")]),
            Some("v1"),
        ),
        ("no headers at all", Vec::new(), Some("v1")),
    ];
    for (what, request_headers, want) in cases {
        let report = vm
            .exchange(&Exchange {
                request_headers,
                ..Exchange::default()
            })
            .unwrap();
        let got = version(&report);
        assert!(got == Some("v1") || got == Some("v2"), "{what}: {got:?}");
        if let Some(want) = want {
            assert_eq!(got, Some(want), "{what}");
        }
        assert!(report.local_response.is_none() && !report.paused, "{what}");
    }
}

#[test]
fn responses_are_counted_by_status_class_including_odd_statuses() {
    let module = module();
    let mut vm = module.start_vm(VmOptions::default()).unwrap();
    assert!(vm.configure(CONFIG.as_bytes()).unwrap());
    for status in ["200", "204", "302", "404", "503", "99", "abc"] {
        let exchange = Exchange {
            request_headers: raw(&[]),
            response_headers: vec![(":status".into(), status.as_bytes().to_vec())],
            ..Exchange::default()
        };
        vm.exchange(&exchange).unwrap();
    }
    let count = |class: &str| {
        module
            .metric(&responses_metric("web", "v1", class))
            .unwrap()
    };
    assert_eq!(
        (
            count("2xx"),
            count("3xx"),
            count("4xx"),
            count("5xx"),
            count("other")
        ),
        (2, 1, 1, 1, 2)
    );
    assert_eq!(module.metric(&requests_metric("web", "v1")), Some(7));
    assert_eq!(module.metric(&requests_metric("web", "v2")), Some(0));
}

/// A copy of a module with state of its own (how the fuzz target `harness_chaos` keeps its
/// inputs apart): the same filter, none of the original's metrics, and the original keeps its.
#[test]
fn a_module_with_fresh_state_counts_apart_from_the_original() {
    let module = module();
    let request = Exchange {
        request_headers: raw(&[]),
        ..Exchange::default()
    };
    let mut vm = module.start_vm(VmOptions::default()).unwrap();
    assert!(vm.configure(CONFIG.as_bytes()).unwrap());
    for _ in 0..3 {
        vm.exchange(&request).unwrap();
    }
    let fresh = module.with_fresh_state();
    assert_eq!(fresh.metric(&requests_metric("web", "v1")), None);
    let mut vm = fresh.start_vm(VmOptions::default()).unwrap();
    assert!(vm.configure(CONFIG.as_bytes()).unwrap());
    vm.exchange(&request).unwrap();
    assert_eq!(fresh.metric(&requests_metric("web", "v1")), Some(1));
    assert_eq!(module.metric(&requests_metric("web", "v1")), Some(3));
}

#[test]
fn a_vm_without_a_config_passes_requests_through_untouched() {
    let module = module();
    let mut vm = module.start_vm(VmOptions::default()).unwrap();
    assert!(!vm.configure(b"{not json").unwrap());
    let request_headers = raw(&[("x-user-id", b"u1"), ("x-rollout-version", b"v2")]);
    let report = vm
        .exchange(&Exchange {
            request_headers,
            ..Exchange::default()
        })
        .unwrap();
    assert!(report.request_headers_set.is_empty() && report.request_headers_removed.is_empty());
    assert_eq!(
        version(&report),
        Some("v2"),
        "untouched, since no rollout runs"
    );
}

/// The profile of a request's crossings between filter and host, the cost a proxy-wasm filter
/// pays beyond its own code (benches/STEPS.md): a change that adds one fails here first.
/// Request: read all headers, set version/rollout/flags, count, read the clock. Response: read
/// `:status`, read the clock, record latency, count, set the version and Server-Timing headers.
/// Into the filter: context creation, request headers, response headers and deletion (the
/// filter exports no other stream callback), plus an allocation for each header read.
#[test]
fn one_request_costs_a_known_number_of_host_calls() {
    let module = module();
    let mut vm = module.start_vm(VmOptions::default()).unwrap();
    assert!(vm.configure(CONFIG.as_bytes()).unwrap());
    let exchange = Exchange {
        request_headers: raw(&[("x-user-id", b"user-1"), ("x-app", b"2.0.0")]),
        ..Exchange::default()
    };
    let report = vm.exchange(&exchange).unwrap();
    assert_eq!(report.calls.into_host, 12, "{report:#?}");
    assert_eq!(report.calls.into_filter, 6, "{report:#?}");
    // A client's copy of a contract header costs one removal more.
    let spoofed = Exchange {
        request_headers: raw(&[
            ("x-user-id", b"user-1"),
            ("x-rollout-version", b"v9"),
            ("x-rollout-version", b"v8"),
        ]),
        ..Exchange::default()
    };
    assert_eq!(vm.exchange(&spoofed).unwrap().calls.into_host, 13);
}

/// Every per-request host call failing, as a host may answer when a map is gone (BadArgument)
/// or it is in trouble (InternalFailure): the filter logs, decides what it can and keeps
/// serving; it never traps (the SDK's own wrappers would panic on these statuses).
#[test]
fn host_errors_on_the_request_path_never_trap() {
    let module = module();
    let imports = [
        "proxy_get_header_map_pairs",
        "proxy_get_header_map_value",
        "proxy_replace_header_map_value",
        "proxy_add_header_map_value",
        "proxy_remove_header_map_value",
        "proxy_increment_metric",
        "proxy_record_metric",
        "proxy_get_current_time_nanoseconds",
    ];
    let request = Exchange {
        request_headers: raw(&[("x-user-id", b"user-1"), ("x-rollout-version", b"v9")]),
        ..Exchange::default()
    };
    for status in [2, 10] {
        let options = VmOptions {
            host_errors: imports.iter().map(|i| ((*i).to_owned(), status)).collect(),
            ..VmOptions::default()
        };
        let mut vm = module.start_vm(options).unwrap();
        assert!(vm.configure(CONFIG.as_bytes()).unwrap());
        for _ in 0..3 {
            let report = vm.exchange(&request).unwrap();
            assert!(
                report
                    .logs
                    .iter()
                    .any(|l| l.message.contains("cannot read request headers")),
                "{report:#?}"
            );
        }
    }
    // Only the response side failing: the request is still routed and stamped.
    let options = VmOptions {
        host_errors: [("proxy_get_header_map_value".to_owned(), 2)].into(),
        ..VmOptions::default()
    };
    let mut vm = module.start_vm(options).unwrap();
    assert!(vm.configure(CONFIG.as_bytes()).unwrap());
    let report = vm.exchange(&request).unwrap();
    assert!(matches!(version(&report), Some("v1" | "v2")), "{report:#?}");
}
