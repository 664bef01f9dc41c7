//! Override tokens through the filter .wasm: `rollout_overrides_total{result}` counts each
//! request carrying a token by its status (and exists only for a config that reads tokens),
//! and the live form's `override_keys` are merged into the fallback and every config from
//! the source, a plugin key replacing the source's key of the same id.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a failing check in a test should panic with its message"
)]

use std::time::Duration;

use host_test::testing::filter_wasm_path;
use host_test::{Cluster, Exchange, FilterModule, HttpCallResponse, Vm, VmOptions, headers};
use rollout_core::token::{Claim, ClaimKind, sign};

const SOURCE_SECRET: &str = "source-secret-0123456789abcdef0123";
const PLUGIN_SECRET: &str = "plugin-secret-0123456789abcdef0123";
const OTHER_SECRET: &str = "another-secret-0123456789abcdef012";
/// 2100-01-01: far after the harness's clock (2026-01-01 by default).
const FAR: u64 = 4_102_444_800;
/// 2023-11-14: before it.
const PAST: u64 = 1_700_000_000;

/// A rollout whose v2 no one gets by the hash; `overrides` as given (JSON text, or none).
fn config(overrides: Option<&str>) -> String {
    let overrides = overrides.map_or(String::new(), |o| format!(r#""overrides": {o},"#));
    format!(
        r#"{{"user_key": ["header:x-user-id"], {overrides}
            "rollouts": {{"checkout": {{"match": {{"path_prefix": "/checkout"}},
              "versions": [{{"name": "v1", "weight": 100}}, {{"name": "v2", "weight": 0}}]}}}}}}"#
    )
}

fn token(key_id: &str, secret: &str, expires_s: u64) -> String {
    let claim = Claim {
        kind: ClaimKind::Version,
        target: "checkout",
        value: "v2",
    };
    sign(key_id, secret.as_bytes(), expires_s, &[claim]).unwrap()
}

fn module() -> FilterModule {
    FilterModule::from_file(&filter_wasm_path()).unwrap_or_else(|e| {
        panic!("{e:#}\nbuild the filter first: cargo build -p rollout-filter --target wasm32-wasip1 --profile wasm")
    })
}

/// The version one request reaches, with an override token in the header if given.
fn version(vm: &mut Vm, path: &str, token: Option<&str>) -> Option<String> {
    let mut pairs = vec![
        (":path", path),
        (":authority", "a"),
        ("x-user-id", "user-1"),
    ];
    if let Some(token) = token {
        pairs.push(("x-rollout-override", token));
    }
    let exchange = Exchange {
        request_headers: headers(&pairs),
        ..Exchange::default()
    };
    let report = vm.exchange(&exchange).unwrap();
    assert!(
        !report
            .upstream_request_headers
            .iter()
            .any(|(k, _)| k == "x-rollout-override"),
        "the token reached the upstream"
    );
    report
        .upstream_request_headers
        .into_iter()
        .find(|(k, _)| k == "x-rollout-version")
        .map(|(_, v)| v)
}

fn counts(module: &FilterModule) -> [Option<i64>; 5] {
    [
        "valid",
        "expired",
        "bad_signature",
        "unknown_key",
        "malformed",
    ]
    .map(|r| module.metric(&format!("rollout_overrides_total.result=.={r};.;")))
}

#[test]
fn each_request_with_a_token_is_counted_once_by_its_status() {
    let module = module();
    let mut vm = module.start_vm(VmOptions::default()).unwrap();
    let keys = format!(r#"{{"keys": {{"k1": "{SOURCE_SECRET}"}}}}"#);
    assert!(vm.configure(config(Some(&keys)).as_bytes()).unwrap());
    assert_eq!(counts(&module), [Some(0); 5], "defined, all at zero");

    let valid = token("k1", SOURCE_SECRET, FAR);
    let mut forged = token("k1", SOURCE_SECRET, FAR);
    forged.replace_range(forged.len() - 4.., "AAAA");
    let sent: [(&str, Option<String>, &str); 9] = [
        ("/checkout", Some(valid.clone()), "v2"),
        ("/checkout", Some(valid.clone()), "v2"),
        ("/checkout", Some(valid), "v2"),
        ("/checkout", Some(token("k1", SOURCE_SECRET, PAST)), "v1"),
        ("/checkout", Some(forged), "v1"),
        ("/checkout", Some(token("k1", OTHER_SECRET, FAR)), "v1"),
        ("/checkout", Some(token("k9", SOURCE_SECRET, FAR)), "v1"),
        ("/checkout", Some("v2 please".to_owned()), "v1"),
        ("/checkout", None, "v1"),
    ];
    for (path, token, expected) in &sent {
        assert_eq!(
            version(&mut vm, path, token.as_deref()).as_deref(),
            Some(*expected),
            "{token:?}"
        );
    }
    // A request matching no rollout still has its token counted.
    assert_eq!(version(&mut vm, "/elsewhere", Some("junk")), None);
    assert_eq!(
        counts(&module),
        [Some(3), Some(1), Some(2), Some(1), Some(2)]
    );

    // A config that reads no tokens counts none; the series stay as they were (Envoy keeps
    // a defined metric), and a later config that reads tokens again counts on in them.
    assert!(vm.configure(config(None).as_bytes()).unwrap());
    let junk = Exchange {
        request_headers: headers(&[
            (":path", "/checkout"),
            (":authority", "a"),
            ("x-rollout-override", "junk"),
        ]),
        ..Exchange::default()
    };
    vm.exchange(&junk).unwrap();
    assert_eq!(
        counts(&module),
        [Some(3), Some(1), Some(2), Some(1), Some(2)]
    );
    assert!(vm.configure(config(Some(&keys)).as_bytes()).unwrap());
    version(&mut vm, "/checkout", Some("junk"));
    assert_eq!(
        counts(&module),
        [Some(3), Some(1), Some(2), Some(1), Some(3)]
    );
}

#[test]
fn a_config_without_overrides_defines_no_token_counters_and_reads_no_token() {
    let module = module();
    let mut vm = module.start_vm(VmOptions::default()).unwrap();
    assert!(vm.configure(config(None).as_bytes()).unwrap());
    let valid = token("k1", SOURCE_SECRET, FAR);
    let exchange = Exchange {
        request_headers: headers(&[
            (":path", "/checkout"),
            (":authority", "a"),
            ("x-user-id", "user-1"),
            ("x-rollout-override", valid.as_str()),
        ]),
        ..Exchange::default()
    };
    let report = vm.exchange(&exchange).unwrap();
    assert!(
        report
            .upstream_request_headers
            .iter()
            .any(|(k, v)| k == "x-rollout-version" && v == "v1")
    );
    assert_eq!(counts(&module), [None; 5]);
}

/// A live plugin configuration with `override_keys` (JSON text, or none) and a fallback
/// that reads tokens with no key of its own.
fn live_plugin(override_keys: Option<&str>) -> String {
    let keys = override_keys.map_or(String::new(), |k| format!(r#""override_keys": {k},"#));
    format!(
        r#"{{"config_source": {{"cluster": "rollout-config", "path": "/rollout.json", "poll_interval_ms": 100, "timeout_ms": 500}},
            {keys} "fallback": {}}}"#,
        config(Some("{}"))
    )
}

/// Starts a VM on a live plugin configuration and answers its first poll with `body`.
fn live_vm(module: &FilterModule, plugin: &str, body: &str) -> Vm {
    let options = VmOptions {
        clusters: vec![Cluster::test("rollout-config")],
        ..VmOptions::default()
    };
    let mut vm = module.start_vm(options).unwrap();
    assert!(vm.configure(plugin.as_bytes()).unwrap());
    for _ in 0..20 {
        if let Some(call) = vm.pending_http_calls().first() {
            let token = call.token;
            let response = HttpCallResponse {
                headers: headers(&[(":status", "200"), ("etag", "\"1\"")]),
                body: body.as_bytes().to_vec(),
            };
            vm.answer_http_call(token, response).unwrap();
            return vm;
        }
        vm.advance(Duration::from_millis(10)).unwrap();
    }
    panic!("the VM never polled the source");
}

#[test]
fn plugin_keys_sign_for_the_fallback_and_replace_the_sources_key_of_the_same_id() {
    let module = module();
    let plugin = live_plugin(Some(&format!(r#"{{"k1": "{PLUGIN_SECRET}"}}"#)));
    let mut vm = module.start_vm(VmOptions::default()).unwrap();
    assert!(vm.configure(plugin.as_bytes()).unwrap());
    // Before the source answers: the fallback, with the plugin's key.
    vm.advance(Duration::from_millis(600)).unwrap();
    let by_plugin = token("k1", PLUGIN_SECRET, FAR);
    assert_eq!(
        version(&mut vm, "/checkout", Some(&by_plugin)).as_deref(),
        Some("v2")
    );
    assert_eq!(counts(&module)[0], Some(1));

    // The source lists k1 with another secret, and k2: the plugin's k1 wins, k2 stays. A new
    // module (a new Envoy), since the first VM holds the source's polling lease.
    let module = self::module();
    let source = config(Some(&format!(
        r#"{{"keys": {{"k1": "{SOURCE_SECRET}", "k2": "{SOURCE_SECRET}"}}}}"#
    )));
    let mut vm = live_vm(&module, &plugin, &source);
    let checks = [
        (token("k1", PLUGIN_SECRET, FAR), "v2"),
        (token("k1", SOURCE_SECRET, FAR), "v1"),
        (token("k2", SOURCE_SECRET, FAR), "v2"),
    ];
    for (token, expected) in &checks {
        assert_eq!(
            version(&mut vm, "/checkout", Some(token)).as_deref(),
            Some(*expected),
            "{token}"
        );
    }
    assert_eq!(counts(&module)[..3], [Some(2), Some(0), Some(1)]);
}

#[test]
fn a_source_config_with_overrides_and_no_key_anywhere_makes_every_token_unknown_and_says_so() {
    let module = module();
    let mut vm = live_vm(&module, &live_plugin(None), &config(Some("{}")));
    let logs: Vec<String> = vm.take_logs().into_iter().map(|l| l.message).collect();
    let warned = |logs: &[String]| {
        logs.iter()
            .filter(|l| l.contains("lists no keys") && l.contains("unknown_key"))
            .count()
    };
    // Once for the fallback, once for the source's config.
    assert_eq!(warned(&logs), 2, "{logs:#?}");
    let valid = token("k1", SOURCE_SECRET, FAR);
    for _ in 0..3 {
        assert_eq!(
            version(&mut vm, "/checkout", Some(&valid)).as_deref(),
            Some("v1")
        );
    }
    assert_eq!(counts(&module)[3], Some(3));
    let logs: Vec<String> = vm.take_logs().into_iter().map(|l| l.message).collect();
    assert_eq!(warned(&logs), 0, "not per request: {logs:#?}");
}
