//! Cost of a decision in the core (native), of config parse+validate, of checking a signed
//! override token, and of one request through the built filter .wasm in the wasmtime harness. Run with `cargo bench -p
//! rollout-benches`; the harness group needs the filter built for wasm32-wasip1
//! (`--profile wasm`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs,
    reason = "a benchmark's setup may panic with its message; criterion's macros make undocumented items"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use host_test::testing::filter_wasm_path;
use host_test::{Exchange, FilterModule, VmOptions, headers};
use rollout_core::token::{Claim, ClaimKind};
use rollout_core::{Config, HeaderMapMut, HostInputs, TokenStatus, VersionReason};
use unleash_yggdrasil::{ClientFeatures, Context, EngineState, UpdateMessage};

/// Counts heap allocations, so the profile can say how many a decision makes.
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed unchanged to the system allocator; only a counter is added.
#[allow(unsafe_code, reason = "a global allocator is an unsafe trait")]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, that is from the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`, and `new_size` is the caller's, unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Not timed: per shape, the heap allocations of one native decision (with its contract
/// headers) and the filter/host crossings of one request through the .wasm. Printed, and
/// written as JSON to `$ROLLOUT_BENCH_OUT/profile.json` when that is set (an absolute path:
/// cargo runs benches from the package directory; scripts/bench.sh sets it).
fn profile(_c: &mut Criterion) {
    let module = FilterModule::from_file(&filter_wasm_path()).ok();
    let mut rows = Vec::new();
    for (name, n_versions, n_flags) in SHAPES {
        let json = config_json(n_versions, n_flags);
        let config = Config::from_json(json.as_bytes()).unwrap();
        let facts = request();
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let decision = config.decide(&facts[..], HostInputs::default());
        config.apply_request_contract(&decision, &facts[..], &mut Discard);
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        let calls = module.as_ref().map(|module| {
            let mut vm = module.start_vm(VmOptions::default()).unwrap();
            assert!(vm.configure(json.as_bytes()).unwrap());
            let exchange = Exchange {
                request_headers: headers(&request()),
                ..Exchange::default()
            };
            vm.exchange(&exchange).unwrap().calls
        });
        eprintln!("profile: {name}: {allocations} allocations per decision; {calls:?} per request");
        rows.push(serde_json::json!({
            "shape": name,
            "allocations_per_decision": allocations,
            "host_calls_per_request": calls.map(|c| c.into_host),
            "filter_calls_per_request": calls.map(|c| c.into_filter),
        }));
    }
    if let Some(dir) = std::env::var_os("ROLLOUT_BENCH_OUT") {
        let path = std::path::Path::new(&dir).join("profile.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&rows).unwrap()).unwrap();
    }
}

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

/// A header map that keeps nothing, as a host's header calls keep nothing in the VM: the
/// contract's own cost (the flags value it builds) without a map's.
struct Discard;

impl HeaderMapMut for Discard {
    fn replace(&mut self, name: &str, value: &str) {
        black_box((name, value));
    }
    fn add(&mut self, name: &str, value: &str) {
        black_box((name, value));
    }
    fn remove(&mut self, name: &str) {
        black_box(name);
    }
}

fn core_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("core decide");
    for (name, n_versions, n_flags) in SHAPES {
        let config = Config::from_json(config_json(n_versions, n_flags).as_bytes()).unwrap();
        let facts = request();
        group.bench_function(name, |b| {
            b.iter(|| {
                let decision = config.decide(black_box(&facts[..]), HostInputs::default());
                config.apply_request_contract(&decision, &facts[..], &mut Discard);
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
        assert!(
            vm.configure(config_json(n_versions, n_flags).as_bytes())
                .unwrap()
        );
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

/// The shape of examples/checkout.json cut to 2 versions, with a few flags (one with lists and
/// a rule), and `overrides` when `overrides` is given.
fn checkout_config(overrides: bool) -> Config {
    let overrides = if overrides {
        format!(
            r#""overrides": {{"header": "x-rollout-override", "cookie": "rollout_override",
                             "keys": {{"k1": "{OVERRIDE_SECRET}"}}}},"#
        )
    } else {
        String::new()
    };
    let json = format!(
        r#"{{"user_key": ["header:x-user-id", "cookie:uid"], {overrides}
            "rollouts": {{"checkout": {{"versions": [{{"name": "v1", "weight": 9000}},
                                                     {{"name": "v2", "weight": 1000}}]}}}},
            "flags": {{"new-cart": {{"percentage": 25}},
                       "theme": {{"default": "classic", "percentage": 50,
                                  "variants": [{{"name": "dark", "weight": 1}}, {{"name": "light", "weight": 1}}]}},
                       "payments-v2": {{"percentage": 10, "allow": ["qa-1"], "deny": ["vip-42"],
                                        "rules": [{{"when": [{{"attribute": "header:x-app-version", "op": "semver_lt", "value": "3.0.0"}}],
                                                    "serve": "off"}}]}}}}}}"#
    );
    Config::from_json(json.as_bytes()).unwrap()
}

const OVERRIDE_SECRET: &str = "a bench secret of at least 32 bytes.....";
/// The request time: the token below expires an hour later.
const NOW_MS: u64 = 1_795_435_200_000;

/// A valid token for v2 and one flag value, as a tester would send it.
fn override_token() -> String {
    let claims = [
        Claim {
            kind: ClaimKind::Version,
            target: "checkout",
            value: "v2",
        },
        Claim {
            kind: ClaimKind::Flag,
            target: "new-cart",
            value: "on",
        },
    ];
    rollout_core::token::sign(
        "k1",
        OVERRIDE_SECRET.as_bytes(),
        NOW_MS / 1000 + 3600,
        &claims,
    )
    .unwrap()
}

/// What a signed token adds to a request: the same config shape and request without
/// `overrides`, with them but no token, and with a token valid in the header, valid in the
/// cookie, badly signed, and malformed. Each iteration is a decision and its request contract
/// (which strips the token header and rewrites the cookie without it), as `core decide` times.
fn override_tokens(c: &mut Criterion) {
    let plain = checkout_config(false);
    let with_overrides = checkout_config(true);
    let token = override_token();
    let forged = token.replace("checkout=v2", "checkout=v1");
    let base_cookie = "theme=dark; uid=user-123456; other=1";
    let token_cookie = format!("theme=dark; uid=user-123456; rollout_override={token}; other=1");
    let request = |cookie: &str, token: Option<&str>| -> Vec<(String, String)> {
        let mut facts: Vec<(String, String)> = request()
            .into_iter()
            .filter(|(k, _)| *k != "cookie")
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        facts.push(("cookie".to_owned(), cookie.to_owned()));
        if let Some(token) = token {
            facts.push(("x-rollout-override".to_owned(), token.to_owned()));
        }
        facts
    };
    let cases = [
        (
            "no overrides in the config",
            &plain,
            request(base_cookie, None),
            None,
        ),
        (
            "overrides, no token",
            &with_overrides,
            request(base_cookie, None),
            None,
        ),
        (
            "valid token in the header",
            &with_overrides,
            request(base_cookie, Some(&token)),
            Some(TokenStatus::Valid),
        ),
        (
            "valid token in the cookie",
            &with_overrides,
            request(&token_cookie, None),
            Some(TokenStatus::Valid),
        ),
        (
            "bad signature",
            &with_overrides,
            request(base_cookie, Some(&forged)),
            Some(TokenStatus::BadSignature),
        ),
        (
            "malformed token",
            &with_overrides,
            request(base_cookie, Some("r1.k1.not-a-token")),
            Some(TokenStatus::Malformed),
        ),
    ];
    let inputs = || HostInputs {
        now_ms: Some(NOW_MS),
        ..HostInputs::default()
    };
    let mut group = c.benchmark_group("override tokens (decide + request contract)");
    for (name, config, facts, status) in &cases {
        // Time only what the name says: the token is read as the case expects.
        let decision = config.decide(&facts[..], inputs());
        assert_eq!(decision.token, *status, "{name}");
        let overridden = decision.rollout.map(|r| r.reason) == Some(VersionReason::Override);
        assert_eq!(overridden, *status == Some(TokenStatus::Valid), "{name}");
        group.bench_function(*name, |b| {
            b.iter(|| {
                let decision = config.decide(black_box(&facts[..]), inputs());
                config.apply_request_contract(&decision, &facts[..], &mut Discard);
            })
        });
    }
    group.finish();
}

/// Flags per iteration in the flag comparison: enough that a request's fixed cost (finding
/// the key, choosing the version) is a small share of ours.
const GRADUAL_FLAGS: usize = 100;
const GRADUAL_PERCENT: usize = 25;

/// Our side: one rollout and [`GRADUAL_FLAGS`] flags, each on for 25 % of users, sticky on the
/// user id header.
fn gradual_config(n_flags: usize) -> Config {
    let flags: Vec<String> = (0..n_flags)
        .map(|i| format!(r#""flag-{i}": {{"percentage": {GRADUAL_PERCENT}}}"#))
        .collect();
    let json = format!(
        r#"{{"user_key": ["header:x-user-id"],
            "rollouts": {{"checkout": {{"versions": [{{"name": "v1", "weight": 1}}]}}}},
            "flags": {{{}}}}}"#,
        flags.join(",")
    );
    Config::from_json(json.as_bytes()).unwrap()
}

/// Unleash's side: the same flags as `flexibleRollout` strategies, 25 % sticky on userId, each
/// flag its own group (as Unleash's UI sets it up).
fn gradual_engine(n_flags: usize) -> EngineState {
    let features: Vec<serde_json::Value> = (0..n_flags)
        .map(|i| {
            serde_json::json!({
                "name": format!("flag-{i}"),
                "enabled": true,
                "strategies": [{
                    "name": "flexibleRollout",
                    "parameters": {
                        "rollout": GRADUAL_PERCENT.to_string(),
                        "stickiness": "userId",
                        "groupId": format!("flag-{i}"),
                    },
                }],
            })
        })
        .collect();
    let features: ClientFeatures =
        serde_json::from_value(serde_json::json!({"version": 2, "features": features})).unwrap();
    let engine = EngineState::default();
    let warnings = engine.take_state(UpdateMessage::FullResponse(features));
    assert!(warnings.unwrap_or_default().is_empty());
    engine
}

fn unleash_context(user: &str) -> Context {
    Context {
        user_id: Some(user.to_owned()),
        session_id: None,
        environment: None,
        app_name: None,
        current_time: None,
        remote_address: None,
        properties: None,
    }
}

/// Before timing, check that the two sides really are equivalent: every flag on for about a
/// quarter of 4,000 users on both engines (the hashes differ, so the users do too).
fn check_equivalent(config: &Config, engine: &EngineState, flags: &[String]) {
    let users = 4000;
    let mut ours = vec![0usize; flags.len()];
    let mut theirs = vec![0usize; flags.len()];
    for u in 0..users {
        let user = format!("user-{u}");
        let facts = [("x-user-id", user.as_str())];
        let decision = config.decide(&facts[..], HostInputs::default());
        assert_eq!(decision.flags.len(), flags.len());
        let context = unleash_context(&user);
        for (i, flag) in flags.iter().enumerate() {
            ours[i] += usize::from(decision.flags[i].value == "on");
            theirs[i] += usize::from(engine.is_enabled(flag, &context, &None));
        }
    }
    for (name, counts) in [("rollout-core", ours), ("unleash-yggdrasil", theirs)] {
        for (flag, on) in flags.iter().zip(counts) {
            let share = on * 100 / users;
            assert!(
                (20..=30).contains(&share),
                "{name}: {flag} on for {share} % of users, configured {GRADUAL_PERCENT} %"
            );
        }
    }
}

fn flag_comparison(c: &mut Criterion) {
    let config = gradual_config(GRADUAL_FLAGS);
    let engine = gradual_engine(GRADUAL_FLAGS);
    // Sorted as the decision lists them, so index i names the same flag on both sides.
    let mut flags: Vec<String> = (0..GRADUAL_FLAGS).map(|i| format!("flag-{i}")).collect();
    flags.sort();
    check_equivalent(&config, &engine, &flags);

    let mut group = c.benchmark_group(format!(
        "{GRADUAL_FLAGS} gradual-rollout flags for one user"
    ));
    let user = "user-123456";
    // Ours includes finding the key and choosing a version: a whole request's decision.
    let facts = [("x-user-id", user)];
    group.bench_function("rollout-core decide", |b| {
        b.iter(|| black_box(config.decide(black_box(&facts[..]), HostInputs::default())))
    });
    // Theirs gets a ready context, built once, and answers one flag per call.
    let context = unleash_context(user);
    group.bench_function("unleash-yggdrasil is_enabled", |b| {
        b.iter(|| {
            for flag in &flags {
                black_box(engine.is_enabled(black_box(flag), black_box(&context), &None));
            }
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    profile,
    core_decide,
    override_tokens,
    flag_comparison,
    core_parse,
    harness_request
);
criterion_main!(benches);
