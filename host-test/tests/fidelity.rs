//! The harness's model of Envoy through its library API: clusters and call timeouts on the
//! virtual clock, held requests, gRPC ends, and a failed VM under each failure policy. The
//! differential suite (envoy/tests/test_differential.py) checks the same behaviours against a
//! real Envoy; these pin the API a Rust test uses to reach them.
//! Build the probe first: `cargo build -p probe-filter --target wasm32-wasip1 --profile wasm`.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a failing check in a test should panic with its message"
)]

use std::time::Duration;

use host_test::testing::workspace_root;
use host_test::{
    Cluster, ClusterAnswer, Exchange, ExchangeReport, FailurePolicy, FilterModule, Vm, VmOptions,
    headers,
};

fn probe() -> FilterModule {
    let path = workspace_root().join("target/wasm32-wasip1/wasm/probe_filter.wasm");
    FilterModule::from_file(&path).unwrap_or_else(|e| {
        panic!("{e:#}\nbuild it first: cargo build -p probe-filter --target wasm32-wasip1 --profile wasm")
    })
}

/// A probe VM with these clusters and policy, its ticks off ("differential").
fn vm(module: &FilterModule, clusters: Vec<Cluster>, policy: FailurePolicy) -> Vm {
    let options = VmOptions {
        clusters,
        failure_policy: policy,
        ..VmOptions::default()
    };
    let mut vm = module.start_vm(options).unwrap();
    assert!(vm.configure(b"differential").unwrap());
    vm
}

fn request(pairs: &[(&str, &str)]) -> Exchange {
    let mut all = vec![
        (":method", "GET"),
        (":path", "/"),
        (":authority", "a.example"),
    ];
    all.extend_from_slice(pairs);
    Exchange {
        request_headers: headers(&all),
        response_headers: headers(&[(":status", "200"), ("content-length", "2")]),
        response_body: b"ok".to_vec(),
        ..Exchange::default()
    }
}

fn upstream<'r>(report: &'r ExchangeReport, name: &str) -> Option<&'r str> {
    report
        .upstream_request_headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn status(report: &ExchangeReport) -> Option<u32> {
    report.client.as_ref().map(|c| c.status)
}

#[test]
fn a_call_to_a_silent_cluster_holds_the_request_until_its_timeout_gives_envoys_504() {
    let module = probe();
    let mut vm = vm(
        &module,
        vec![Cluster::new("silent", ClusterAnswer::Hang)],
        FailurePolicy::FailClosed,
    );
    let exchange = request(&[
        ("x-probe", "call"),
        ("x-cluster", "silent"),
        ("x-timeout-ms", "300"),
    ]);
    let stream = vm.begin(&exchange).unwrap();
    assert!(vm.is_held(stream));
    assert_eq!(vm.next_call_timeout(), Some(Duration::from_millis(300)));
    vm.advance(Duration::from_millis(299)).unwrap();
    assert!(vm.is_held(stream));
    vm.advance(Duration::from_millis(1)).unwrap();
    assert!(!vm.is_held(stream));
    let report = vm.finish(stream, &exchange).unwrap();
    assert_eq!(upstream(&report, "x-call-status"), Some("504"));
    assert_eq!(
        upstream(&report, "x-call-body"),
        Some("upstream request timeout")
    );
    assert_eq!(status(&report), Some(200));
}

#[test]
fn a_held_request_never_reaches_the_upstream_and_its_call_is_cancelled() {
    let module = probe();
    let mut vm = vm(
        &module,
        vec![Cluster::test("config-cluster")],
        FailurePolicy::FailClosed,
    );
    // One step: nothing answers the call, so the request is still held when the client
    // gives up, and the call dies with the stream.
    let report = vm.exchange(&request(&[("x-probe", "call")])).unwrap();
    assert!(report.paused && !report.resumed);
    assert!(!report.reached_upstream && report.upstream_request_headers.is_empty());
    assert_eq!(report.client, None);
    assert!(vm.pending_http_calls().is_empty());
    // An unknown cluster is refused at dispatch, as Envoy refuses it; the request goes on.
    let report = vm
        .exchange(&request(&[("x-probe", "call"), ("x-cluster", "nowhere")]))
        .unwrap();
    assert_eq!(upstream(&report, "x-call-error"), Some("BadArgument"));
    assert_eq!(status(&report), Some(200));
}

#[test]
fn grpc_calls_end_with_the_clusters_status_and_envoys_details() {
    let module = probe();
    let grpc = ClusterAnswer::Grpc {
        status: 5,
        message: "not found".to_owned(),
    };
    let mut vm = vm(
        &module,
        vec![Cluster::new("grpc", grpc)],
        FailurePolicy::FailClosed,
    );
    let report = vm
        .exchange(&request(&[("x-probe", "grpc"), ("x-cluster", "grpc")]))
        .unwrap();
    let logs: Vec<&str> = report.logs.iter().map(|l| l.message.as_str()).collect();
    assert!(
        logs.iter().any(|l| l.contains(
            "status_code 5, grpc status 5, message \"not found{via_upstream}\", 0 bytes"
        )),
        "{logs:#?}"
    );
    assert_eq!(status(&report), Some(200));
    assert!(vm.pending_grpc_calls().is_empty());
}

#[test]
fn a_trap_fails_the_vm_and_each_failure_policy_answers_as_envoy_does() {
    let module = probe();
    for policy in [
        FailurePolicy::FailClosed,
        FailurePolicy::FailOpen,
        FailurePolicy::FailReload,
    ] {
        let mut vm = vm(&module, Vec::new(), policy);
        let trapped = vm.exchange(&request(&[("x-probe", "trap")])).unwrap();
        assert!(trapped.trap.is_some(), "{policy:?}");
        let client = trapped.client.unwrap();
        assert_eq!(
            (client.status, client.body.as_str()),
            (503, ""),
            "{policy:?}"
        );
        assert!(vm.failure().is_some());
        let next = vm.exchange(&request(&[("x-probe", "count")])).unwrap();
        match policy {
            // Every later request: 503, the filter never runs again.
            FailurePolicy::FailClosed | FailurePolicy::FailReload => {
                assert_eq!(status(&next), Some(503), "{policy:?}");
                assert!(!next.reached_upstream);
            }
            // The filter is skipped: the upstream answers, nothing of the filter's is added.
            FailurePolicy::FailOpen => {
                assert_eq!(status(&next), Some(200));
                assert_eq!(upstream(&next, "x-requests-seen"), None);
            }
        }
        if policy == FailurePolicy::FailReload {
            // Past the backoff a fresh VM takes the request.
            vm.advance(Duration::from_secs(1)).unwrap();
            let reloaded = vm.exchange(&request(&[("x-probe", "count")])).unwrap();
            assert_eq!(vm.reloads(), 1);
            assert!(vm.failure().is_none());
            assert_eq!(upstream(&reloaded, "x-requests-seen"), Some("1"));
            let headers = &reloaded.client.unwrap().headers;
            assert!(headers.contains(&("x-probe-seen".to_owned(), "yes".to_owned())));
        }
    }
}
