//! The harness's host calls, checked against a filter written the ordinary SDK way
//! (`host-test/probe-filter`), so the harness is proven on a filter that is not ours.
//! Build it first: `cargo build -p probe-filter --target wasm32-wasip1 --release`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use host_test::testing::workspace_root;
use host_test::{headers, Exchange, ExchangeReport, FilterModule, HttpCallResponse, Vm, VmOptions};

fn probe() -> FilterModule {
    let path = workspace_root().join("target/wasm32-wasip1/release/probe_filter.wasm");
    FilterModule::from_file(&path).unwrap_or_else(|e| {
        panic!(
            "{e:#}\nbuild it first: cargo build -p probe-filter --target wasm32-wasip1 --release"
        )
    })
}

fn vm(module: &FilterModule, options: VmOptions) -> Vm {
    let mut vm = module.start_vm(options).unwrap();
    assert!(vm.configure(b"probe-config").unwrap());
    vm
}

fn request(op: &str, extra: &[(&str, &str)]) -> Exchange {
    let mut pairs = vec![
        (":method", "GET"),
        (":path", "/"),
        (":authority", "a.example"),
        ("x-probe", op),
    ];
    pairs.extend_from_slice(extra);
    Exchange {
        request_headers: headers(&pairs),
        ..Exchange::default()
    }
}

fn upstream(report: &ExchangeReport, name: &str) -> Option<String> {
    report
        .upstream_request_headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn local_header(report: &ExchangeReport, name: &str) -> Option<String> {
    let local = report.local_response.as_ref()?;
    local
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

#[test]
fn a_filter_that_is_not_ours_links_every_import() {
    assert_eq!(
        probe().unimplemented_imports().unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn plugin_and_vm_configuration_reach_the_filter_and_refusal_is_reported() {
    let module = probe();
    let mut vm = module
        .start_vm(VmOptions {
            vm_configuration: b"vm-cfg".to_vec(),
            ..VmOptions::default()
        })
        .unwrap();
    assert!(vm
        .take_logs()
        .iter()
        .any(|l| l.message == "vm config: vm-cfg"));
    assert!(vm.configure(b"probe-config").unwrap());
    let report = vm.exchange(&request("config", &[])).unwrap();
    assert_eq!(
        upstream(&report, "x-config").as_deref(),
        Some("probe-config")
    );
    assert!(!vm.configure(b"refuse").unwrap());
}

#[test]
fn shared_data_is_shared_between_vms_with_compare_and_swap() {
    let module = probe();
    let (mut a, mut b) = (
        vm(&module, VmOptions::default()),
        vm(&module, VmOptions::default()),
    );
    let set = a
        .exchange(&request("shared-set", &[("x-value", "one")]))
        .unwrap();
    assert_eq!(local_header(&set, "x-result").as_deref(), Some("ok"));
    let got = b.exchange(&request("shared-get", &[])).unwrap();
    assert_eq!(local_header(&got, "x-value").as_deref(), Some("one"));
    let cas = local_header(&got, "x-cas").unwrap();
    // A write with a stale CAS fails; with the current one it succeeds.
    let stale = b
        .exchange(&request(
            "shared-set",
            &[("x-value", "two"), ("x-cas", "999")],
        ))
        .unwrap();
    assert_eq!(
        local_header(&stale, "x-result").as_deref(),
        Some("CasMismatch")
    );
    let fresh = b
        .exchange(&request(
            "shared-set",
            &[("x-value", "two"), ("x-cas", &cas)],
        ))
        .unwrap();
    assert_eq!(local_header(&fresh, "x-result").as_deref(), Some("ok"));
    assert_eq!(module.shared_data("probe-key").unwrap().0, b"two");
    // The old CAS is now stale too.
    let again = a
        .exchange(&request(
            "shared-set",
            &[("x-value", "three"), ("x-cas", &cas)],
        ))
        .unwrap();
    assert_eq!(
        local_header(&again, "x-result").as_deref(),
        Some("CasMismatch")
    );
}

#[test]
fn an_http_call_is_answered_by_the_test_and_the_stream_resumes() {
    let module = probe();
    let mut vm = vm(&module, VmOptions::default());
    let exchange = request("call", &[]);
    let stream = vm.begin(&exchange).unwrap();
    let calls = vm.pending_http_calls().to_vec();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].upstream, "config-cluster");
    assert_eq!(calls[0].body, b"ping");
    assert_eq!(calls[0].timeout, Duration::from_secs(5));
    let response = HttpCallResponse {
        headers: headers(&[(":status", "200"), ("etag", "\"v1\"")]),
        body: b"hello".to_vec(),
    };
    vm.answer_http_call(calls[0].token, response).unwrap();
    assert!(vm.pending_http_calls().is_empty());
    let report = vm.finish(stream, &exchange).unwrap();
    assert!(report.paused);
    assert_eq!(upstream(&report, "x-call-status").as_deref(), Some("200"));
    assert_eq!(upstream(&report, "x-call-body").as_deref(), Some("hello"));
    assert_eq!(upstream(&report, "x-call-headers").as_deref(), Some("2"));
}

#[test]
fn a_failed_http_call_delivers_no_headers() {
    let module = probe();
    let mut vm = vm(&module, VmOptions::default());
    let exchange = request("call", &[]);
    let stream = vm.begin(&exchange).unwrap();
    let token = vm.pending_http_calls()[0].token;
    vm.answer_http_call(token, HttpCallResponse::default())
        .unwrap();
    let report = vm.finish(stream, &exchange).unwrap();
    assert_eq!(
        upstream(&report, "x-call-status").as_deref(),
        Some("failed")
    );
    assert_eq!(upstream(&report, "x-call-headers").as_deref(), Some("0"));
    assert!(vm
        .answer_http_call(token, HttpCallResponse::default())
        .is_err());
}

#[test]
fn ticks_fire_as_the_virtual_clock_advances_and_time_is_reported() {
    let module = probe();
    let mut vm = vm(&module, VmOptions::default());
    assert_eq!(vm.tick_period(), Duration::from_millis(100));
    vm.advance(Duration::from_millis(350)).unwrap();
    assert_eq!(module.metric("probe.ticks"), Some(3));
    let report = vm.exchange(&request("time", &[])).unwrap();
    let start = VmOptions::default().start_time_ns;
    assert_eq!(
        upstream(&report, "x-time"),
        Some((start + 350_000_000).to_string())
    );
}

#[test]
fn metrics_of_every_kind_are_recorded_and_aggregated_across_vms() {
    let module = probe();
    let (mut a, mut b) = (
        vm(&module, VmOptions::default()),
        vm(&module, VmOptions::default()),
    );
    a.exchange(&request("count", &[])).unwrap();
    let report = b.exchange(&request("count", &[])).unwrap();
    assert_eq!(upstream(&report, "x-requests-seen").as_deref(), Some("2"));
    let metrics = module.metrics();
    let find = |name: &str| metrics.iter().find(|m| m.name == name).unwrap().clone();
    assert_eq!(find("probe.requests").value, 2);
    assert_eq!(find("probe.gauge").value, 7);
    assert_eq!(find("probe.latency").samples, vec![42, 42]);
}

#[test]
fn properties_environment_and_stdout_reach_the_filter() {
    let module = probe();
    let mut options = VmOptions {
        env: vec![("PROBE_ENV".into(), "from-env".into())],
        ..VmOptions::default()
    };
    options
        .properties
        .insert("plugin_name".into(), b"my-plugin".to_vec());
    let mut vm = vm(&module, options);
    let report = vm.exchange(&request("property", &[])).unwrap();
    assert_eq!(
        upstream(&report, "x-plugin-name").as_deref(),
        Some("my-plugin")
    );
    let report = vm.exchange(&request("env", &[])).unwrap();
    assert_eq!(upstream(&report, "x-env").as_deref(), Some("from-env"));
    let report = vm.exchange(&request("stdout", &[])).unwrap();
    assert!(
        report
            .logs
            .iter()
            .any(|l| l.message == "stdout: hello from stdout"),
        "{:?}",
        report.logs
    );
}

#[test]
fn header_maps_and_bodies_are_rewritten_as_the_filter_asks() {
    let module = probe();
    let mut vm = vm(&module, VmOptions::default());
    let report = vm.exchange(&request("replace-all", &[])).unwrap();
    assert_eq!(
        report.upstream_request_headers,
        vec![
            (":path".to_owned(), "/rewritten".to_owned()),
            ("x-only".to_owned(), "this".to_owned())
        ]
    );
    assert!(report
        .request_headers_removed
        .contains(&"x-probe".to_owned()));
    assert!(report
        .client_response_headers
        .contains(&("x-probe-seen".to_owned(), "yes".to_owned())));
    let mut with_body = request("count", &[]);
    with_body.request_body = b"hello body".to_vec();
    let report = vm.exchange(&with_body).unwrap();
    assert_eq!(report.upstream_request_body, "HELLO BODY");
}

#[test]
fn a_local_response_skips_the_upstream() {
    let module = probe();
    let mut vm = vm(&module, VmOptions::default());
    let report = vm.exchange(&request("shared-get", &[])).unwrap();
    let local = report.local_response.unwrap();
    assert_eq!((local.status, local.body.as_str()), (200, "shared"));
    assert!(report.client_response_headers.is_empty());
}
