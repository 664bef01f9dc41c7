//! Live config through the filter .wasm: two VMs (as two Envoy workers) share one source,
//! one VM polls it with ETags, the other takes up what it publishes; bad configs, failing
//! sources and 304s never disturb the config in force.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a failing check in a test should panic with its message"
)]

use std::time::Duration;

use host_test::testing::filter_wasm_path;
use host_test::{
    Cluster, Exchange, ExchangeReport, FilterModule, HttpCallResponse, Vm, VmOptions, headers,
};

const PLUGIN: &str = r#"{
  "config_source": {"cluster": "rollout-config", "path": "/rollout.json", "authority": "config.local",
                    "poll_interval_ms": 100, "timeout_ms": 500},
  "fallback": {"user_key": ["header:x-user-id"],
               "rollouts": {"web": {"versions": [{"name": "v1", "weight": 1}]}}}
}"#;

fn config(weights: (u32, u32)) -> String {
    format!(
        r#"{{"user_key": ["header:x-user-id"],
            "rollouts": {{"web": {{"versions": [{{"name": "v1", "weight": {}}}, {{"name": "v2", "weight": {}}}]}}}}}}"#,
        weights.0, weights.1
    )
}

struct Workers {
    module: FilterModule,
    vms: Vec<Vm>,
    /// Log lines collected so far, including those exchanges carried off.
    logbook: Vec<String>,
}

impl Workers {
    fn start() -> Workers {
        Workers::with_plugin(PLUGIN)
    }

    fn with_plugin(plugin: &str) -> Workers {
        let module = FilterModule::from_file(&filter_wasm_path()).unwrap_or_else(|e| {
            panic!("{e:#}\nbuild the filter first: cargo build -p rollout-filter --target wasm32-wasip1 --profile wasm")
        });
        let options = VmOptions {
            clusters: vec![Cluster::test("rollout-config")],
            ..VmOptions::default()
        };
        let mut vms: Vec<Vm> = (0..2)
            .map(|_| module.start_vm(options.clone()).unwrap())
            .collect();
        for vm in &mut vms {
            assert!(vm.configure(plugin.as_bytes()).unwrap());
        }
        Workers {
            module,
            vms,
            logbook: Vec::new(),
        }
    }

    fn advance(&mut self, ms: u64) {
        for vm in &mut self.vms {
            vm.advance(Duration::from_millis(ms)).unwrap();
        }
    }

    /// Every pending call of every VM: (vm index, token, if-none-match).
    fn pending(&self) -> Vec<(usize, u32, Option<String>)> {
        let mut out = Vec::new();
        for (i, vm) in self.vms.iter().enumerate() {
            for call in vm.pending_http_calls() {
                assert_eq!(call.upstream, "rollout-config");
                let h = |n: &str| {
                    host_test::header_value(&call.headers, n)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                };
                assert_eq!(h(":path").as_deref(), Some("/rollout.json"));
                assert_eq!(h(":authority").as_deref(), Some("config.local"));
                out.push((i, call.token, h("if-none-match")));
            }
        }
        out
    }

    /// Advances until exactly one VM has a pending call, and returns it.
    fn next_call(&mut self) -> (usize, u32, Option<String>) {
        for _ in 0..50 {
            let pending = self.pending();
            assert!(pending.len() <= 1, "more than one VM polls: {pending:?}");
            if let Some(call) = pending.into_iter().next() {
                return call;
            }
            self.advance(10);
        }
        panic!("no VM polled the source");
    }

    fn answer(&mut self, call: (usize, u32, Option<String>), status: &str, etag: &str, body: &str) {
        let mut pairs = vec![(":status", status)];
        if !etag.is_empty() {
            pairs.push(("etag", etag));
        }
        let response = HttpCallResponse {
            headers: headers(&pairs),
            body: body.as_bytes().to_vec(),
        };
        self.vms[call.0].answer_http_call(call.1, response).unwrap();
    }

    fn fail(&mut self, call: (usize, u32, Option<String>)) {
        self.vms[call.0]
            .answer_http_call(call.1, HttpCallResponse::default())
            .unwrap();
    }

    /// The version each VM gives one user.
    fn versions(&mut self, user: &str) -> Vec<String> {
        let exchange = Exchange {
            request_headers: headers(&[(":path", "/"), (":authority", "a"), ("x-user-id", user)]),
            ..Exchange::default()
        };
        let mut versions = Vec::new();
        for vm in &mut self.vms {
            let report = vm.exchange(&exchange).unwrap();
            self.logbook
                .extend(report.logs.into_iter().map(|l| l.message));
            let version = report
                .upstream_request_headers
                .iter()
                .find(|(k, _)| k == "x-rollout-version");
            versions.push(version.unwrap().1.clone());
        }
        versions
    }

    /// How many of 1000 users each VM sends to v2; all VMs must agree user by user.
    fn v2_users(&mut self) -> usize {
        (0..1000)
            .filter(|i| {
                let versions = self.versions(&format!("user-{i}"));
                assert!(
                    versions.iter().all(|v| v == &versions[0]),
                    "workers disagree: {versions:?}"
                );
                versions[0] == "v2"
            })
            .count()
    }

    fn metric(&self, name: &str) -> i64 {
        self.module.metric(name).unwrap_or(0)
    }

    fn logs(&mut self) -> Vec<String> {
        let mut logs = std::mem::take(&mut self.logbook);
        logs.extend(
            self.vms
                .iter_mut()
                .flat_map(|vm| vm.take_logs())
                .map(|l| l.message),
        );
        logs
    }
}

/// One user's request, begun on every VM (as it would arrive at each worker).
fn begin_everywhere(w: &mut Workers, exchange: &Exchange) -> Vec<host_test::StreamId> {
    w.vms
        .iter_mut()
        .map(|vm| vm.begin(exchange).unwrap())
        .collect()
}

/// Finishes streams begun by [`begin_everywhere`]: (paused and resumed by the filter, version
/// sent upstream) per VM.
fn finish_everywhere(
    w: &mut Workers,
    streams: Vec<host_test::StreamId>,
    exchange: &Exchange,
) -> Vec<(bool, Option<String>)> {
    w.vms
        .iter_mut()
        .zip(streams)
        .map(|(vm, id)| {
            let report = vm.finish(id, exchange).unwrap();
            let version = report
                .upstream_request_headers
                .iter()
                .find(|(k, _)| k == "x-rollout-version")
                .map(|(_, v)| v.clone());
            (report.paused && report.resumed, version)
        })
        .collect()
}

fn user(id: &str) -> Exchange {
    Exchange {
        request_headers: headers(&[(":path", "/"), (":authority", "a"), ("x-user-id", id)]),
        ..Exchange::default()
    }
}

#[test]
fn requests_wait_for_the_sources_first_answer_then_every_worker_resumes_them_with_it() {
    let mut w = Workers::start();
    let exchange = user("user-1");
    let held = begin_everywhere(&mut w, &exchange);
    let call = w.next_call();
    assert_eq!(call.2, None, "the first poll is unconditional");
    w.answer(call, "200", "\"a\"", &config((0, 1)));
    // The other worker learns of the answer from shared data within a tick.
    w.advance(10);
    // Held, then decided on the source's config (v2), never on the fallback's v1.
    let done = finish_everywhere(&mut w, held, &exchange);
    assert_eq!(done, vec![(true, Some("v2".to_owned())); 2]);
    assert_eq!(w.versions("user-2"), vec!["v2", "v2"]);
    assert_eq!(w.metric("rollout_config_updates_total"), 1);
}

#[test]
fn a_definite_failure_of_the_first_fetch_resumes_waiting_requests_on_the_fallback() {
    let mut w = Workers::start();
    let exchange = user("user-1");
    let held = begin_everywhere(&mut w, &exchange);
    let call = w.next_call();
    w.answer(call, "503", "", "");
    w.advance(10);
    let done = finish_everywhere(&mut w, held, &exchange);
    assert_eq!(done, vec![(true, Some("v1".to_owned())); 2]);
}

#[test]
fn a_source_that_does_not_answer_holds_requests_until_the_calls_timeout() {
    // timeout_ms 500 in PLUGIN: the poll's own timeout ends it at 500 ms with Envoy's 504,
    // a definite failure, and the held requests go on with the fallback.
    let mut w = Workers::start();
    let exchange = user("user-1");
    let held = begin_everywhere(&mut w, &exchange);
    w.advance(499);
    let early = w.logs();
    assert!(
        !early.iter().any(|l| l.contains("config source failing")),
        "gave up before the timeout: {early:#?}"
    );
    w.advance(30);
    let logs = w.logs();
    assert_eq!(
        logs.iter()
            .filter(|l| l.contains("config source failing, keeping the config in force: status 504"))
            .count(),
        1,
        "{logs:#?}"
    );
    let done = finish_everywhere(&mut w, held, &exchange);
    assert_eq!(done, vec![(true, Some("v1".to_owned())); 2]);
    // Once the wait is over nothing waits any more.
    assert_eq!(w.versions("user-2"), vec!["v1", "v1"]);
}

#[test]
fn an_unchanged_source_costs_a_304_and_a_change_moves_users_only_into_the_raised_version() {
    let mut w = Workers::start();
    let call = w.next_call();
    w.answer(call, "200", "\"a\"", &config((90, 10)));
    w.advance(10);
    let before: Vec<bool> = (0..1000)
        .map(|i| w.versions(&format!("user-{i}"))[0] == "v2")
        .collect();
    let call = w.next_call();
    assert_eq!(call.2.as_deref(), Some("\"a\""), "polls send If-None-Match");
    w.answer(call, "304", "", "");
    assert_eq!(w.metric("rollout_config_updates_total"), 1);
    let call = w.next_call();
    w.answer(call, "200", "\"b\"", &config((90, 30)));
    w.advance(10);
    let after: Vec<bool> = (0..1000)
        .map(|i| w.versions(&format!("user-{i}"))[0] == "v2")
        .collect();
    for (i, (was, is)) in before.iter().zip(&after).enumerate() {
        assert!(!was || *is, "user-{i} left v2 when v2's weight went up");
    }
    let (n_before, n_after) = (
        before.iter().filter(|b| **b).count(),
        after.iter().filter(|b| **b).count(),
    );
    assert!(n_after > n_before, "{n_before} -> {n_after}");
    assert_eq!(w.v2_users(), n_after);
}

#[test]
fn bad_configs_and_failing_sources_never_replace_the_config_in_force() {
    let mut w = Workers::start();
    let call = w.next_call();
    w.answer(call, "200", "\"good\"", &config((0, 1)));
    w.advance(10);
    w.logs();
    let answers: [(&str, &str, &str); 4] = [
        (
            "200",
            "\"bad\"",
            r#"{"rollouts": {"web": {"versions": [{"name": "v1", "weight": -1}]}}}"#,
        ),
        ("200", "\"garbage\"", "<html>not json</html>"),
        ("503", "", "unavailable"),
        ("404", "", ""),
    ];
    for (status, etag, body) in answers {
        let call = w.next_call();
        w.answer(call, status, etag, body);
        w.advance(10);
        assert_eq!(
            w.versions("user-1"),
            vec!["v2", "v2"],
            "after a {status} {etag}"
        );
    }
    let call = w.next_call();
    w.fail(call); // connection refused or timed out
    assert_eq!(w.versions("user-1"), vec!["v2", "v2"]);
    assert_eq!(w.metric("rollout_config_rejected_total"), 2);
    assert_eq!(w.metric("rollout_config_fetch_failures_total"), 3);
    let logs = w.logs();
    assert!(
        logs.iter().any(|l| l.ends_with("config from source rejected: rollouts.web.versions[0].weight: expected an integer weight from 0 to 1000000, found -1")),
        "{logs:#?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("config from source rejected: (root): not valid JSON")),
        "{logs:#?}"
    );
    let failing = logs
        .iter()
        .filter(|l| l.contains("config source failing"))
        .count();
    assert_eq!(
        failing, 1,
        "a failing source is logged once, not on every poll: {logs:#?}"
    );
    // The source recovers with a new config.
    let call = w.next_call();
    w.answer(call, "200", "\"new\"", &config((1, 0)));
    w.advance(10);
    assert_eq!(w.versions("user-1"), vec!["v1", "v1"]);
    assert!(
        w.logs()
            .iter()
            .any(|l| l.contains("config source answers again"))
    );
}

#[test]
fn a_source_that_never_answers_leaves_the_fallback_in_force() {
    let mut w = Workers::start();
    for _ in 0..3 {
        let call = w.next_call();
        w.fail(call);
    }
    assert_eq!(w.versions("user-1"), vec!["v1", "v1"]);
    assert_eq!(w.metric("rollout_config_fetch_failures_total"), 3);
}

/// The live plugin with `long_poll_s` 20.
fn long_poll_plugin() -> String {
    PLUGIN.replace(
        r#""timeout_ms": 500"#,
        r#""timeout_ms": 500, "long_poll_s": 20"#,
    )
}

/// The one pending call's `prefer` header and the timeout it was sent with.
fn prefer_and_timeout(w: &Workers, vm: usize) -> (Option<String>, Duration) {
    let [call] = w.vms[vm].pending_http_calls() else {
        panic!("expected one pending call");
    };
    let prefer = host_test::header_value(&call.headers, "prefer")
        .map(|v| String::from_utf8_lossy(v).into_owned());
    (prefer, call.timeout)
}

#[test]
fn long_polling_sends_prefer_wait_and_polls_again_as_soon_as_a_held_poll_returns() {
    let plugin = long_poll_plugin();
    assert_ne!(plugin, PLUGIN);
    let mut w = Workers::with_plugin(&plugin);
    let call = w.next_call();
    // The first poll has no ETag to wait on, and requests wait for its answer: not held.
    assert_eq!(
        prefer_and_timeout(&w, call.0),
        (None, Duration::from_millis(500))
    );
    w.answer(call, "200", "\"a\"", &config((0, 1)));
    let call = w.next_call();
    assert_eq!(call.2.as_deref(), Some("\"a\""));
    // Held: the timeout covers the wait plus timeout_ms.
    assert_eq!(
        prefer_and_timeout(&w, call.0),
        (Some("wait=20".to_owned()), Duration::from_millis(20_500))
    );
    // The source holds it 15 s: no second poll meanwhile, from either VM (the lease outlives
    // the hold).
    w.advance(15_000);
    assert_eq!(w.pending(), vec![call.clone()]);
    let held_vm = call.0;
    w.answer(call, "304", "", "");
    // Back after more than poll_interval_ms: the next poll leaves on the next tick.
    w.advance(10);
    let again = w.pending();
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].0, held_vm, "the lease moved during a held poll");
    assert_eq!(
        prefer_and_timeout(&w, held_vm).0.as_deref(),
        Some("wait=20")
    );
    // A change ends the hold with a 200, taken up by every VM.
    w.answer(again[0].clone(), "200", "\"b\"", &config((1, 0)));
    w.advance(10);
    assert_eq!(w.versions("user-1"), vec!["v1", "v1"]);
}

#[test]
fn a_vm_configured_anew_during_a_held_poll_polls_again_at_once() {
    let mut w = Workers::with_plugin(&long_poll_plugin());
    let call = w.next_call();
    w.answer(call, "200", "\"a\"", &config((0, 1)));
    let held = w.next_call();
    w.advance(1_000);
    // The holder gets a new configuration (as Envoy pushes one): its old root's lease, sized
    // for a 20 s hold, must not keep the new one (or the other VM) from polling.
    let plugin = long_poll_plugin();
    assert!(w.vms[held.0].configure(plugin.as_bytes()).unwrap());
    w.advance(20);
    let tokens: Vec<u32> = w.pending().iter().map(|c| c.1).collect();
    assert!(
        tokens.iter().any(|t| *t != held.1),
        "no new poll after the reconfiguration: {tokens:?}"
    );
}

#[test]
fn long_polling_a_source_that_ignores_prefer_polls_at_the_plain_interval() {
    let mut w = Workers::with_plugin(&long_poll_plugin());
    let call = w.next_call();
    w.answer(call, "200", "\"a\"", &config((0, 1)));
    let first = w.next_call();
    // Answered at once, as a static server does: the next poll waits for poll_interval_ms
    // (100 ms) from the previous one's start, not a tick.
    w.answer(first, "304", "", "");
    let mut waited = 0;
    while w.pending().is_empty() {
        w.advance(10);
        waited += 10;
        assert!(waited <= 200, "no poll after {waited} ms");
    }
    assert!(waited >= 90, "polled again after {waited} ms");
}

#[test]
fn plain_polling_never_asks_the_source_to_hold() {
    let mut w = Workers::start();
    let call = w.next_call();
    w.answer(call, "200", "\"a\"", &config((0, 1)));
    let call = w.next_call();
    assert_eq!(call.2.as_deref(), Some("\"a\""));
    assert_eq!(
        prefer_and_timeout(&w, call.0),
        (None, Duration::from_millis(500))
    );
}

#[test]
fn bad_live_plugin_configurations_are_refused_with_their_paths() {
    let module = FilterModule::from_file(&filter_wasm_path()).unwrap();
    let cases: [(&str, &[&str]); 4] = [
        (
            r#"{"config_source": {"path": "rollout.json", "poll_interval_ms": 1}, "extra": 1}"#,
            &[
                "extra: unknown field, expected one of: config_source, fallback, override_keys",
                "config_source.cluster: missing required field",
                "config_source.poll_interval_ms: expected an integer from 10 to 3600000, found 1",
                "config_source.path: expected a path starting with '/', found \"rollout.json\"",
            ],
        ),
        (
            r#"{"config_source": {"cluster": "c", "path": "/x", "pol_interval_ms": 5}}"#,
            &[
                "config_source.pol_interval_ms: unknown field, expected one of: cluster, path, authority, poll_interval_ms, timeout_ms, long_poll_s",
            ],
        ),
        (
            r#"{"config_source": {"cluster": "c", "path": "/x"}, "fallback": {"rollouts": {"r": {"versions": []}}}}"#,
            &["fallback.rollouts.r.versions: must not be empty"],
        ),
        (
            r#"{"config_source": {"cluster": "c", "path": "/x", "long_poll_s": 301}}"#,
            &["config_source.long_poll_s: expected an integer from 0 to 300, found 301"],
        ),
    ];
    for (plugin, errors) in cases {
        let mut vm = module.start_vm(VmOptions::default()).unwrap();
        assert!(!vm.configure(plugin.as_bytes()).unwrap(), "{plugin}");
        let logs: Vec<String> = vm.take_logs().into_iter().map(|l| l.message).collect();
        for error in errors {
            assert!(
                logs.iter()
                    .any(|l| l.ends_with(&format!("config rejected: {error}"))),
                "{error} not in {logs:#?}"
            );
        }
    }
}

#[test]
fn a_vm_without_ticks_never_holds_a_request() {
    // Nothing would end the wait in a VM whose tick cannot be set: it serves on the fallback.
    let module = FilterModule::from_file(&filter_wasm_path()).unwrap();
    let mut options = VmOptions::default();
    options
        .host_errors
        .insert("proxy_set_tick_period_milliseconds".to_owned(), 12);
    let mut vm = module.start_vm(options).unwrap();
    assert!(vm.configure(PLUGIN.as_bytes()).unwrap());
    let report = vm.exchange(&user("user-1")).unwrap();
    assert!(!report.paused, "{:?}", report.logs);
    assert_eq!(upstream_version(&report), Some("v1"));
}

#[test]
fn an_unknown_cluster_is_logged_in_words_and_requests_go_on_with_the_fallback() {
    // No cluster is declared: the harness answers proxy_http_call with 2 (BadArgument), as
    // Envoy does for a cluster it does not have.
    let module = FilterModule::from_file(&filter_wasm_path()).unwrap();
    let mut vm = module.start_vm(VmOptions::default()).unwrap();
    assert!(vm.configure(PLUGIN.as_bytes()).unwrap());
    vm.advance(Duration::from_millis(20)).unwrap();
    let logs: Vec<String> = vm.take_logs().into_iter().map(|l| l.message).collect();
    let failing: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains("config source failing"))
        .collect();
    assert_eq!(failing.len(), 1, "{logs:#?}");
    assert!(
        failing[0]
            .contains("Envoy has no cluster named \"rollout-config\" (config_source.cluster)"),
        "{logs:#?}"
    );
    assert!(!failing[0].contains("HostError"), "{logs:#?}");
    // A definite failure: the request is not held, and the fallback decides it.
    let report = vm.exchange(&user("user-1")).unwrap();
    assert!(!report.paused, "{:?}", report.logs);
    assert_eq!(upstream_version(&report), Some("v1"));
}

/// The version header the filter set on the upstream request.
fn upstream_version(report: &ExchangeReport) -> Option<&str> {
    report
        .upstream_request_headers
        .iter()
        .find(|(k, _)| k == "x-rollout-version")
        .map(|(_, v)| v.as_str())
}
