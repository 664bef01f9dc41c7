//! Cost of a decision in the core (native), of config parse+validate, and of one request
//! through the built filter .wasm in the wasmtime harness. Run with `cargo bench -p
//! rollout-benches`; the harness group needs the filter built for wasm32-wasip1 (release).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use host_test::testing::filter_wasm_path;
use host_test::{headers, Exchange, FilterModule, VmOptions};
use rollout_core::{Config, HostInputs};

/// A rule-bearing flag, as real configs have them.
fn flag_json(i: usize) -> String {
    format!(
        r#""flag-{i}": {{"percentage": {p}, "allow": ["qa-{i}"], "deny": ["banned-{i}"],
            "rules": [{{"when": [{{"attribute": "header:x-country", "op": "one_of", "values": ["DE", "FR"]}},
                                 {{"attribute": "header:x-app-version", "op": "semver_gte", "value": "2.{i}.0"}}],
                        "serve": "on"}}]}}"#,
        p = (i * 7) % 100
    )
}

fn config_json(n_versions: usize, n_flags: usize) -> String {
    let versions: Vec<String> = (0..n_versions)
        .map(|i| format!(r#"{{"name": "v{i}", "weight": {}}}"#, 100 / n_versions))
        .collect();
    let flags: Vec<String> = (0..n_flags).map(flag_json).collect();
    format!(
        r#"{{"user_key": ["header:x-user-id", "cookie:uid"],
            "rollouts": {{"checkout": {{"versions": [{}]}}}},
            "flags": {{{}}}}}"#,
        versions.join(","),
        flags.join(",")
    )
}

const SHAPES: [(&str, usize, usize); 3] = [
    ("2 versions, 0 flags", 2, 0),
    ("3 versions, 20 flags", 3, 20),
    ("2 versions, 200 flags", 2, 200),
];

fn request() -> Vec<(&'static str, &'static str)> {
    vec![
        (":method", "GET"),
        (":authority", "shop.example.com"),
        (":path", "/checkout/cart"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("x-country", "DE"),
        ("x-app-version", "2.4.1"),
        ("cookie", "theme=dark; uid=user-123456; other=1"),
    ]
}

fn core_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("core decide");
    for (name, n_versions, n_flags) in SHAPES {
        let config = Config::from_json(config_json(n_versions, n_flags).as_bytes()).unwrap();
        let facts = request();
        group.bench_function(name, |b| {
            b.iter(|| {
                let decision = config.decide(black_box(&facts[..]), HostInputs::default());
                black_box(config.request_headers(&decision));
            })
        });
    }
    group.finish();
}

fn core_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("config parse+validate");
    for (name, n_versions, n_flags) in SHAPES {
        let json = config_json(n_versions, n_flags);
        group.bench_function(name, |b| {
            b.iter(|| Config::from_json(black_box(json.as_bytes())).unwrap())
        });
    }
    group.finish();
}

fn harness_request(c: &mut Criterion) {
    let Ok(module) = FilterModule::from_file(&filter_wasm_path()) else {
        eprintln!("skipping the harness group: build the filter for wasm32-wasip1 (release) first");
        return;
    };
    let mut group = c.benchmark_group("filter .wasm in the harness, per request");
    for (name, n_versions, n_flags) in SHAPES {
        let mut vm = module.start_vm(VmOptions::default()).unwrap();
        assert!(vm
            .configure(config_json(n_versions, n_flags).as_bytes())
            .unwrap());
        let exchange = Exchange {
            request_headers: headers(&request()),
            ..Exchange::default()
        };
        group.bench_function(name, |b| {
            b.iter(|| black_box(vm.exchange(black_box(&exchange)).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, core_decide, core_parse, harness_request);
criterion_main!(benches);
