//! The harness's host calls, checked against a filter written the ordinary SDK way
//! (`host-test/probe-filter`), so the harness is proven on a filter that is not ours.
//! Build it first: `cargo build -p probe-filter --target wasm32-wasip1 --profile wasm`. Imports no
//! filter makes, and error injection into every import, are checked with small modules
//! written in the text format.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a failing check in a test should panic with its message"
)]

use std::collections::HashMap;
use std::time::Duration;

use host_test::abi::LogLevel;
use host_test::testing::workspace_root;
use wasmtime::ValType;

use host_test::{
    Cluster, Exchange, ExchangeReport, FilterModule, HttpCallResponse, Vm, VmOptions, headers,
};

fn probe() -> FilterModule {
    let path = workspace_root().join("target/wasm32-wasip1/wasm/probe_filter.wasm");
    FilterModule::from_file(&path).unwrap_or_else(|e| {
        panic!(
            "{e:#}\nbuild it first: cargo build -p probe-filter --target wasm32-wasip1 --profile wasm"
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
    assert!(
        vm.take_logs()
            .iter()
            .any(|l| l.message == "vm config: vm-cfg")
    );
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

/// Options with the cluster the probe calls, answered by the test.
fn with_test_cluster() -> VmOptions {
    VmOptions {
        clusters: vec![Cluster::test("config-cluster")],
        ..VmOptions::default()
    }
}

#[test]
fn an_http_call_is_answered_by_the_test_and_the_stream_resumes() {
    let module = probe();
    let mut vm = vm(&module, with_test_cluster());
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
    let mut vm = vm(&module, with_test_cluster());
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
    assert!(
        vm.answer_http_call(token, HttpCallResponse::default())
            .is_err()
    );
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
        report.logs.iter().any(|l| l.message == "hello from stdout"),
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
    assert!(
        report
            .request_headers_removed
            .contains(&"x-probe".to_owned())
    );
    assert!(
        report
            .client_response_headers
            .contains(&("x-probe-seen".to_owned(), "yes".to_owned()))
    );
    let mut with_body = request("count", &[]);
    with_body.request_body = b"hello body".to_vec();
    let report = vm.exchange(&with_body).unwrap();
    assert_eq!(report.upstream_request_body, "HELLO BODY");
}

#[test]
fn a_local_response_skips_the_upstream_and_passes_the_response_callbacks() {
    let module = probe();
    let mut vm = vm(&module, VmOptions::default());
    let report = vm.exchange(&request("shared-get", &[])).unwrap();
    let local = report.local_response.as_ref().unwrap();
    assert_eq!((local.status, local.body.as_str()), (200, "shared"));
    assert!(!report.reached_upstream && report.upstream_request_headers.is_empty());
    // As in Envoy: the filter's on_http_response_headers runs on its own local response
    // (x-probe-seen), and a body brings content-length and content-type.
    let client = report.client.unwrap();
    assert_eq!((client.status, client.body.as_str()), (200, "shared"));
    for header in [
        ("x-probe-seen", "yes"),
        ("content-length", "6"),
        ("content-type", "text/plain"),
        ("x-value", "none"),
    ] {
        let header = (header.0.to_owned(), header.1.to_owned());
        assert!(client.headers.contains(&header), "{header:?} in {client:?}");
    }
}

// ---- The host's imports one by one, through small modules written in the text format. ----

/// The WAT type of a parameter or result.
fn wat_type(ty: ValType) -> &'static str {
    match ty {
        ValType::I32 => "i32",
        ValType::I64 => "i64",
        other => panic!("no import of the host takes or returns {other:?}"),
    }
}

/// A filter that imports every import of the host (as `$name`), holds `data` at offset
/// 1024, and at VM start evaluates each check (an i32 expression, nonzero when it holds).
/// The first check that fails is reported by setting the tick period to its number (from 1),
/// so a test reads which one failed from [`Vm::tick_period`]; or, if `refuse`, by refusing
/// to start (for checks of that very import).
fn checks_module(data: &str, checks: &[&str], refuse: bool) -> FilterModule {
    let imports: String = FilterModule::new(b"(module)")
        .unwrap()
        .host_imports()
        .unwrap()
        .iter()
        .map(|i| {
            let params: Vec<_> = i.ty.params().map(wat_type).collect();
            let results: Vec<_> = i.ty.results().map(wat_type).collect();
            format!(
                "(import \"{}\" \"{}\" (func ${} (param {}) (result {})))\n",
                i.module,
                i.name,
                i.name,
                params.join(" "),
                results.join(" ")
            )
        })
        .collect();
    let body: String = checks
        .iter()
        .enumerate()
        .map(|(n, check)| match refuse {
            true => format!("(if (i32.eqz {check}) (then (return (i32.const 0))))\n"),
            false => format!(
                "(if (i32.eqz {check}) (then \
                 (drop (call $proxy_set_tick_period_milliseconds (i32.const {}))) \
                 (return (i32.const 1))))\n",
                n + 1
            ),
        })
        .collect();
    let wat = format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 4096))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (global.get $next)
    (global.set $next (i32.add (global.get $next) (local.get $n))))
  (data (i32.const 1024) "{data}")
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    {body}
    (i32.const 1)))"#
    );
    FilterModule::new(wat.as_bytes()).unwrap_or_else(|e| panic!("{e:#}\n{wat}"))
}

/// Starts a VM of [`checks_module`] and asserts every check held.
fn assert_checks(options: VmOptions, data: &str, checks: &[&str]) -> Vm {
    let vm = checks_module(data, checks, false)
        .start_vm(options)
        .unwrap();
    let failed = vm.tick_period().as_millis() as usize;
    assert!(
        failed == 0,
        "check {failed} failed: {}",
        checks[failed.saturating_sub(1)]
    );
    vm
}

#[test]
fn every_import_of_the_host_can_be_made_to_fail_by_injection() {
    let imports = FilterModule::new(b"(module)")
        .unwrap()
        .host_imports()
        .unwrap();
    // The SDK's 34 proxy-wasm imports and the WASI ones Rust's std makes, at least.
    assert!(imports.len() >= 40, "{}", imports.len());
    for import in imports {
        let zeros: Vec<String> = import
            .ty
            .params()
            .map(|t| format!("({}.const 0)", wat_type(t)))
            .collect();
        let call = format!("(call ${} {})", import.name, zeros.join(" "));
        let results: Vec<_> = import.ty.results().map(wat_type).collect();
        let check = match results.as_slice() {
            ["i32"] => format!("(i32.ne {call} (i32.const 77))"),
            [] => format!("(block (result i32) {call} (i32.const 1))"),
            other => panic!("{}: unexpected results {other:?}", import.name),
        };
        let module = checks_module("", &[check.as_str()], true);
        let outcome = |host_errors: HashMap<String, i32>| {
            module
                .start_vm(VmOptions {
                    host_errors,
                    ..VmOptions::default()
                })
                .map(|_| ())
                .map_err(|e| format!("{e:#}"))
        };
        let plain = outcome(HashMap::new());
        let injected = outcome([(import.name.to_owned(), 77)].into());
        match results.as_slice() {
            // The status comes back as the import's result instead of its work's.
            ["i32"] => {
                assert_eq!(plain, Ok(()), "{}", import.name);
                let error = injected.expect_err(import.name);
                assert!(
                    error.contains("refused to start"),
                    "{}: {error}",
                    import.name
                );
            }
            // With no result to carry it, the import traps naming the injection.
            _ => {
                let error = injected.expect_err(import.name);
                assert!(error.contains("by injection (status 77)"), "{error}");
                assert!(!format!("{plain:?}").contains("by injection"), "{plain:?}");
            }
        }
    }
}

#[test]
fn injecting_into_an_import_the_host_does_not_define_is_refused() {
    let module = checks_module("", &[], false);
    let options = VmOptions {
        host_errors: [("proxy_get_header_map_valeu".to_owned(), 2)].into(),
        ..VmOptions::default()
    };
    let error = format!("{:#}", module.start_vm(options).err().unwrap());
    assert!(error.contains("host_errors"), "{error}");
    assert!(error.contains("`proxy_get_header_map_valeu`"), "{error}");
}

#[test]
fn context_imports_log_level_properties_foreign_functions_and_done() {
    let options = VmOptions {
        log_level: LogLevel::Warn,
        ..VmOptions::default()
    };
    // 1024: property path "x\0y"; 1040: value "v".
    assert_checks(
        options,
        r"x\00y\00\00\00\00\00\00\00\00\00\00\00\00\00v",
        &[
            "(i32.eqz (call $proxy_get_log_level (i32.const 0)))",
            "(i32.eq (i32.load (i32.const 0)) (i32.const 3))",
            "(i32.eqz (call $proxy_set_property (i32.const 1024) (i32.const 3) (i32.const 1040) (i32.const 1)))",
            "(i32.eqz (call $proxy_get_property (i32.const 1024) (i32.const 3) (i32.const 0) (i32.const 4)))",
            "(i32.eq (i32.load (i32.const 4)) (i32.const 1))",
            "(i32.eq (i32.load8_u (i32.load (i32.const 0))) (i32.const 118))",
            // No foreign function is registered: NotFound.
            "(i32.eq (call $proxy_call_foreign_function (i32.const 1024) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 4)) (i32.const 1))",
            "(i32.eqz (call $proxy_done))",
        ],
    );
}

#[test]
fn shared_queues_register_resolve_enqueue_and_dequeue() {
    // 1024: queue name "q"; 1030: item "hi"; 1040: another name "nope".
    assert_checks(
        VmOptions::default(),
        r"q\00\00\00\00\00hi\00\00\00\00\00\00\00\00nope",
        &[
            "(i32.eqz (call $proxy_register_shared_queue (i32.const 1024) (i32.const 1) (i32.const 0)))",
            // Resolved by this VM's id (empty) and name, it is the same queue.
            "(i32.eqz (call $proxy_resolve_shared_queue (i32.const 1024) (i32.const 0) (i32.const 1024) (i32.const 1) (i32.const 4)))",
            "(i32.eq (i32.load (i32.const 0)) (i32.load (i32.const 4)))",
            "(i32.eq (call $proxy_resolve_shared_queue (i32.const 1024) (i32.const 0) (i32.const 1040) (i32.const 4) (i32.const 4)) (i32.const 1))",
            "(i32.eqz (call $proxy_enqueue_shared_queue (i32.load (i32.const 0)) (i32.const 1030) (i32.const 2)))",
            "(i32.eqz (call $proxy_dequeue_shared_queue (i32.load (i32.const 0)) (i32.const 8) (i32.const 12)))",
            "(i32.eq (i32.load (i32.const 12)) (i32.const 2))",
            "(i32.eq (i32.load16_u (i32.load (i32.const 8))) (i32.const 0x6968))",
            // Empty now; an unknown queue is NotFound, for both directions.
            "(i32.eq (call $proxy_dequeue_shared_queue (i32.load (i32.const 0)) (i32.const 8) (i32.const 12)) (i32.const 7))",
            "(i32.eq (call $proxy_dequeue_shared_queue (i32.const 99) (i32.const 8) (i32.const 12)) (i32.const 1))",
            "(i32.eq (call $proxy_enqueue_shared_queue (i32.const 99) (i32.const 1030) (i32.const 2)) (i32.const 1))",
        ],
    );
}

#[test]
fn stream_close_and_grpc_imports_answer_as_envoy_does_outside_a_stream() {
    let mut vm = assert_checks(
        VmOptions::default(),
        "",
        &[
            // Outside a stream, closing or continuing one does nothing, and says OK.
            "(i32.eqz (call $proxy_close_stream (i32.const 1)))",
            "(i32.eqz (call $proxy_continue_stream (i32.const 0)))",
            // gRPC to a cluster that does not exist: ParseFailure (4), Envoy's answer.
            "(i32.eq (call $proxy_grpc_call (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)) (i32.const 4))",
            "(i32.eq (call $proxy_grpc_stream (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)) (i32.const 4))",
            // Token 1 is of a gRPC call's kind: no messages (BadArgument), unknown (NotFound).
            "(i32.eq (call $proxy_grpc_send (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0)) (i32.const 2))",
            "(i32.eq (call $proxy_grpc_cancel (i32.const 1)) (i32.const 1))",
            "(i32.eq (call $proxy_grpc_close (i32.const 1)) (i32.const 1))",
            // Token 4 is of an HTTP call's kind: not a gRPC handle at all.
            "(i32.eq (call $proxy_grpc_cancel (i32.const 4)) (i32.const 2))",
            // No call ending: code 0, empty message.
            "(i32.store (i32.const 0) (i32.const -1)) (i32.eqz (call $proxy_get_status (i32.const 0) (i32.const 4) (i32.const 8)))",
            "(i32.eqz (i32.load (i32.const 0)))",
        ],
    );
    // The host writes nothing of its own into the filter's log.
    assert_eq!(vm.take_logs(), vec![]);
}

#[test]
fn wasi_clock_arguments_yield_and_exit() {
    let start = VmOptions::default().start_time_ns;
    let clock = format!("(i64.eq (i64.load (i32.const 0)) (i64.const {start}))");
    assert_checks(
        VmOptions::default(),
        "",
        &[
            "(i32.eqz (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 0)))",
            &clock,
            "(i32.store (i32.const 0) (i32.const -1)) (i32.eqz (call $args_sizes_get (i32.const 0) (i32.const 4)))",
            "(i32.eqz (i32.or (i32.load (i32.const 0)) (i32.load (i32.const 4))))",
            "(i32.eqz (call $args_get (i32.const 0) (i32.const 8)))",
            "(i32.eqz (call $sched_yield))",
        ],
    );
    let exits = checks_module(
        "",
        &["(block (result i32) (call $proc_exit (i32.const 3)) (i32.const 1))"],
        false,
    );
    let error = format!("{:#}", exits.start_vm(VmOptions::default()).err().unwrap());
    assert!(error.contains("proc_exit(3)"), "{error}");
}
