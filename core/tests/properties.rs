//! Properties of deciding, checked over many generated users and configs: determinism, splits
//! within statistical bounds for several id shapes, minimal movement, flag independence, and
//! hostile input. Inputs come from a seeded generator, so every run checks the same cases.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a failing check in a test should panic with its message"
)]

use rollout_core::{
    Config, Decision, HostInputs, KeyStatus, MAX_KEY_BYTES, Tripped, VersionReason,
};

/// SplitMix64: a tiny seeded generator, so the tests need no extra crate and are repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Id shapes real systems use; sequential ones are the hard case for a weak hash.
type IdShape = (&'static str, Box<dyn Fn(u64) -> String>);

fn id_shapes() -> Vec<IdShape> {
    vec![
        ("sequential user-N", Box::new(|i| format!("user-{i}"))),
        ("bare integers", Box::new(|i| i.to_string())),
        ("emails", Box::new(|i| format!("person{i}@example.com"))),
        (
            "uuid-like",
            Box::new(|i| {
                let mut r = Rng(i);
                format!("{:016x}-{:016x}", r.next(), r.next())
            }),
        ),
        (
            "long common prefix",
            Box::new(|i| format!("tenant-0000000000000000000000000042/account/{i:08}")),
        ),
    ]
}

fn rollout_config(weights: &[u32]) -> Config {
    let versions: Vec<String> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| format!(r#"{{"name":"v{i}","weight":{w}}}"#))
        .collect();
    let json = format!(
        r#"{{"user_key":["header:x-user-id"],"rollouts":{{"r":{{"versions":[{}]}}}}}}"#,
        versions.join(",")
    );
    Config::from_json(json.as_bytes()).unwrap()
}

fn decide_for<'c>(config: &'c Config, key: &str) -> Decision<'c> {
    let facts = [(":path", &b"/"[..]), ("x-user-id", key.as_bytes())];
    config.decide(&facts[..], HostInputs::default())
}

fn version_of(config: &Config, key: &str) -> String {
    decide_for(config, key).rollout.unwrap().version.to_owned()
}

fn flag_value<'c>(decision: &Decision<'c>, flag: &str) -> &'c str {
    decision
        .flags
        .iter()
        .find(|f| f.flag == flag)
        .unwrap()
        .value
}

/// Fails if `observed` of `n` trials is more than 5 standard deviations from `n * p`.
/// Five sigma keeps a correct implementation from failing by chance (about 1 in 3.5 million
/// per check) while a biased hash still fails by far.
fn check_binomial(what: &str, observed: u64, n: u64, p: f64) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt().max(1.0);
    let z = (observed as f64 - mean) / sd;
    assert!(
        z.abs() < 5.0,
        "{what}: observed {observed} of {n}, expected {mean:.0} (z = {z:.1})"
    );
}

#[test]
fn same_user_same_decision_across_parses() {
    let a = rollout_config(&[50, 30, 20]);
    let b = rollout_config(&[50, 30, 20]);
    for i in 0..2000 {
        let key = format!("user-{i}");
        assert_eq!(decide_for(&a, &key), decide_for(&a, &key));
        assert_eq!(version_of(&a, &key), version_of(&b, &key));
    }
}

#[test]
fn version_split_matches_weights_for_every_id_shape() {
    const N: u64 = 100_000;
    for weights in [
        &[90u32, 10][..],
        &[1, 1, 1],
        &[70, 20, 10],
        &[9990, 10],
        &[0, 3, 1],
    ] {
        let config = rollout_config(weights);
        let total: u32 = weights.iter().sum();
        for (shape, make_id) in id_shapes() {
            let mut counts = vec![0u64; weights.len()];
            for i in 0..N {
                let v = version_of(&config, &make_id(i));
                let idx: usize = v.trim_start_matches('v').parse().unwrap();
                counts[idx] += 1;
            }
            for (idx, &w) in weights.iter().enumerate() {
                let what = format!("weights {weights:?}, {shape}, v{idx}");
                check_binomial(&what, counts[idx], N, f64::from(w) / f64::from(total));
            }
        }
    }
}

/// One random single-weight change: the weights before and after, the changed version's name,
/// and every user (of 3000) whose version changed, as (key, from, to).
struct WeightChange {
    before: Vec<u32>,
    after: Vec<u32>,
    changed: String,
    moves: Vec<(String, String, String)>,
}

/// `trials` random configs of 2 to 5 versions with weights from `min_weight`; `change` gives
/// the chosen version's new weight from its old one.
fn weight_changes(
    seed: u64,
    trials: usize,
    min_weight: u32,
    change: impl Fn(&mut Rng, u32) -> u32,
) -> Vec<WeightChange> {
    let mut rng = Rng(seed);
    (0..trials)
        .map(|trial| {
            let n_versions = 2 + rng.below(4) as usize;
            let before: Vec<u32> = (0..n_versions)
                .map(|_| rng.below(1000) as u32 + min_weight)
                .collect();
            let changed = rng.below(n_versions as u64) as usize;
            let mut after = before.clone();
            after[changed] = change(&mut rng, before[changed]);
            let (old, new) = (rollout_config(&before), rollout_config(&after));
            let moves = (0..3000)
                .map(|i| format!("t{trial}-user-{i}"))
                .filter_map(|key| {
                    let (from, to) = (version_of(&old, &key), version_of(&new, &key));
                    (from != to).then_some((key, from, to))
                })
                .collect();
            WeightChange {
                before,
                after,
                changed: format!("v{changed}"),
                moves,
            }
        })
        .collect()
}

#[test]
fn raising_one_weight_moves_users_only_into_that_version() {
    for c in weight_changes(7, 60, 1, |rng, w| w + rng.below(2000) as u32 + 1) {
        let (before, after) = (&c.before, &c.after);
        for (key, from, to) in &c.moves {
            assert_eq!(
                to, &c.changed,
                "{before:?} -> {after:?}: {key} moved {from} -> {to}"
            );
        }
        assert!(
            !c.moves.is_empty(),
            "{before:?} -> {after:?}: raising a weight moved nobody"
        );
    }
}

#[test]
fn lowering_one_weight_moves_users_only_out_of_that_version() {
    // The new weight may reach 0.
    for c in weight_changes(11, 60, 2, |rng, w| rng.below(u64::from(w)) as u32) {
        let (before, after) = (&c.before, &c.after);
        for (key, from, to) in &c.moves {
            assert_eq!(
                from, &c.changed,
                "{before:?} -> {after:?}: {key} moved {from} -> {to}"
            );
        }
    }
}

fn flags_config(percentage: &str, extra_flags: &str) -> Config {
    let json = format!(
        r#"{{"user_key":["header:x-user-id"],
            "rollouts":{{"r":{{"versions":[{{"name":"v0","weight":1}},{{"name":"v1","weight":1}}]}}}},
            "flags":{{
              "grow":{{"percentage":{percentage},"variants":[{{"name":"a","weight":1}},{{"name":"b","weight":3}}]}}
              {extra_flags}}}}}"#
    );
    Config::from_json(json.as_bytes()).unwrap()
}

#[test]
fn growing_a_percentage_keeps_everyone_in_with_their_variant() {
    let steps = ["0", "0.5", "1", "5", "12.5", "50", "99.9999", "100"];
    let configs: Vec<Config> = steps.iter().map(|p| flags_config(p, "")).collect();
    for i in 0..20_000 {
        let key = format!("user-{i}");
        let mut was: Option<&str> = None;
        for (step, config) in steps.iter().zip(&configs) {
            let value = flag_value(&decide_for(config, &key), "grow");
            if let Some(prev) = was {
                assert_eq!(value, prev, "{key} changed at {step}%");
            }
            if value != "off" {
                was = Some(value);
            }
        }
        assert!(was.is_some(), "{key} is not in at 100%");
    }
}

#[test]
fn flag_percentage_and_variant_split_match_the_config() {
    const N: u64 = 100_000;
    let config = flags_config("12.5", "");
    for (shape, make_id) in id_shapes() {
        let (mut a, mut b) = (0, 0);
        for i in 0..N {
            match flag_value(&decide_for(&config, &make_id(i)), "grow") {
                "a" => a += 1,
                "b" => b += 1,
                _ => {}
            }
        }
        check_binomial(&format!("{shape}: in the 12.5%"), a + b, N, 0.125);
        check_binomial(
            &format!("{shape}: variant a among those in"),
            a,
            a + b,
            0.25,
        );
    }
}

#[test]
fn flags_are_independent_of_each_other_and_of_the_version() {
    const N: u64 = 100_000;
    // Same percentage, and even the same salt text as the rollout's name: still independent.
    let config = flags_config("50", r#","other":{"percentage":50},"r":{"percentage":50}"#);
    let (mut both, mut grow_v1, mut r_flag_v1) = (0, 0, 0);
    for (_, make_id) in id_shapes() {
        for i in 0..N / 5 {
            let d = decide_for(&config, &make_id(i));
            let grow_in = flag_value(&d, "grow") != "off";
            let other_in = flag_value(&d, "other") == "on";
            let v1 = d.rollout.unwrap().version == "v1";
            both += u64::from(grow_in && other_in);
            grow_v1 += u64::from(grow_in && v1);
            r_flag_v1 += u64::from(flag_value(&d, "r") == "on" && v1);
        }
    }
    check_binomial("two flags both on", both, N, 0.25);
    check_binomial("flag on and version v1", grow_v1, N, 0.25);
    check_binomial("flag named like the rollout, on and v1", r_flag_v1, N, 0.25);
}

#[test]
fn hostile_request_input_gets_a_decision() {
    let config = Config::from_json(
        br#"{"user_key":["header:x-user-id","cookie:uid"],
             "rollouts":{"r":{"match":{"hosts":["a.example.com"]},"versions":[{"name":"v0","weight":1},{"name":"v1","weight":1}]},
                         "s":{"versions":[{"name":"s0","weight":1}]}},
             "flags":{"f":{"rules":[{"when":[{"attribute":"header:x-app","op":"semver_gt","value":"1.0.0"},
                                              {"attribute":"header:x-n","op":"lt","value":5}],"serve":"off"}]}}}"#,
    )
    .unwrap();
    let huge = vec![b'a'; 1 << 20];
    let mut rng = Rng(3);
    let mut inputs: Vec<Vec<(String, Vec<u8>)>> = vec![
        vec![("x-user-id".into(), huge.clone())],
        vec![("cookie".into(), huge.clone())],
        vec![
            (":authority".into(), huge.clone()),
            (":path".into(), huge.clone()),
        ],
        vec![("x-user-id".into(), vec![0xff, 0xfe, 0x00, 0x80])],
        vec![
            ("cookie".into(), b"uid=\xff\xfe; uid".to_vec()),
            ("x-app".into(), b"\xff1.2.3".to_vec()),
        ],
        vec![
            ("x-app".into(), b"99999999999999999999999.1.1".to_vec()),
            ("x-n".into(), b"1e999".to_vec()),
        ],
        vec![
            ("x-n".into(), b"-inf".to_vec()),
            ("x-app".into(), b"1.0.0-".to_vec()),
        ],
        vec![
            (":authority".into(), b":::::]".to_vec()),
            ("cookie".into(), b"=;=;=".to_vec()),
        ],
        vec![],
    ];
    for _ in 0..2000 {
        let n = rng.below(6) as usize;
        let names = ["x-user-id", "cookie", ":authority", ":path", "x-app", "x-n"];
        inputs.push(
            (0..n)
                .map(|_| {
                    let len = rng.below(40) as usize;
                    let value = (0..len).map(|_| rng.next() as u8).collect();
                    (
                        names[rng.below(names.len() as u64) as usize].to_owned(),
                        value,
                    )
                })
                .collect(),
        );
    }
    for facts in &inputs {
        let mut entropy = || rng.next();
        let d = config.decide(
            facts.as_slice(),
            HostInputs {
                entropy: Some(&mut entropy),
                ..HostInputs::default()
            },
        );
        let rollout = d.rollout.unwrap();
        assert!(["v0", "v1", "s0"].contains(&rollout.version));
        assert_eq!(d.flags.len(), 1);
        // The header contract sets the version for every decision.
        let mut upstream: Vec<(String, String)> = Vec::new();
        config.apply_request_contract(&d, facts.as_slice(), &mut upstream);
        assert_eq!(
            upstream.first().map(|(_, v)| v.as_str()),
            Some(rollout.version)
        );
    }
}

#[test]
fn an_oversized_key_is_no_key_and_goes_to_the_stable_version() {
    // Stable has weight 0, so bucketing can never choose it, and it is not the first version,
    // so a fallback to index 0 would not choose it either: only the no-key path can.
    let config = Config::from_json(
        br#"{"user_key":["header:x-user-id"],
             "rollouts":{"r":{"stable":"s0","versions":[{"name":"s1","weight":1},{"name":"s0","weight":0}]}}}"#,
    )
    .unwrap();
    let decide = |key: Vec<u8>| config.decide(&[("x-user-id", key)][..], HostInputs::default());
    let d = decide(vec![b'a'; MAX_KEY_BYTES + 1]);
    assert_eq!(d.key, KeyStatus::TooLong);
    let rollout = d.rollout.unwrap();
    assert_eq!(
        (rollout.version, rollout.reason),
        ("s0", VersionReason::NoKeyStable)
    );
    // A key of the largest allowed length is a key, and is bucketed.
    let d = decide(vec![b'a'; MAX_KEY_BYTES]);
    assert_eq!(d.key, KeyStatus::Header("x-user-id"));
    let rollout = d.rollout.unwrap();
    assert_eq!(
        (rollout.version, rollout.reason),
        ("s1", VersionReason::Bucket)
    );
}

/// A scheduled rollout from `start_ms` with the given steps (percent, hold in ms).
fn scheduled_config(steps: &[(f64, u64)], extra: &str) -> Config {
    let steps: Vec<String> = steps
        .iter()
        .map(|(p, hold)| format!(r#"{{"percent":{p},"hold":"{hold}ms"}}"#))
        .collect();
    let json = format!(
        r#"{{"user_key":["header:x-user-id"],"rollouts":{{"r":{{"stable":"old",
            "versions":[{{"name":"old"}},{{"name":"new"}}],{extra}
            "schedule":{{"start":"2026-11-23T10:00:00Z","steps":[{}]}}}}}}}}"#,
        steps.join(",")
    );
    Config::from_json(json.as_bytes()).unwrap()
}

const START_MS: u64 = 1_795_428_000_000;

/// Over any non-decreasing schedule, each user moves at most once, from stable to the new
/// version, and never back; at each step the share on the new version is the step's.
#[test]
fn a_monotonic_schedule_moves_each_user_at_most_once() {
    let mut rng = Rng(0x5c4e_d01e);
    for round in 0..20 {
        let mut steps = Vec::new();
        let mut percent = 0.0f64;
        for _ in 0..1 + rng.below(8) {
            // Repeated steps and jumps alike: the schedule only has to be non-decreasing.
            percent = (percent + (rng.below(400) as f64) / 10.0).min(100.0);
            steps.push((percent, 1_000 + rng.below(10_000)));
        }
        let config = scheduled_config(&steps, "");
        let users: Vec<String> = (0..4_000).map(|i| format!("user-{round}-{i}")).collect();
        let mut on_new = vec![false; users.len()];
        let mut moves = vec![0u32; users.len()];
        let mut t = START_MS - 1;
        for (step, (percent, hold)) in steps.iter().enumerate() {
            for at in [t, t + 1, t + hold / 2] {
                let mut new_count = 0;
                for (i, user) in users.iter().enumerate() {
                    let d = config.decide(
                        &[("x-user-id", user.as_str())][..],
                        HostInputs {
                            now_ms: Some(at),
                            ..HostInputs::default()
                        },
                    );
                    let now_new = d.rollout.unwrap().version == "new";
                    assert!(
                        !on_new[i] || now_new,
                        "round {round} step {step}: {user} went back to stable"
                    );
                    if now_new != on_new[i] {
                        moves[i] += 1;
                        on_new[i] = true;
                    }
                    new_count += u32::from(now_new);
                }
                if at > t {
                    let expected = percent / 100.0;
                    let observed = f64::from(new_count) / users.len() as f64;
                    let sigma = (expected * (1.0 - expected) / users.len() as f64).sqrt();
                    assert!(
                        (observed - expected).abs() <= 5.0 * sigma + 1e-9,
                        "round {round} step {step}: {observed} on new, expected {expected}"
                    );
                }
            }
            t += hold;
        }
        assert!(
            moves.iter().all(|m| *m <= 1),
            "round {round}: someone moved twice"
        );
    }
}

/// A tripped version's users, and only they, go to stable, with the reason `guard`; an
/// aborted rollout sends everyone to stable with the reason `aborted`.
#[test]
fn a_trip_moves_only_the_tripped_versions_users() {
    let config = scheduled_config(&[(30.0, 60_000)], "");
    let aborted = scheduled_config(&[(30.0, 60_000)], r#""aborted":true,"#);
    let new_slot = config.slot_of("r", "new").unwrap();
    let at = Some(START_MS + 1_000);
    let (mut moved, mut kept) = (0, 0);
    for i in 0..5_000 {
        let user = format!("u{i}");
        let facts = [("x-user-id", user.as_str())];
        let before = config.decide(
            &facts[..],
            HostInputs {
                now_ms: at,
                ..HostInputs::default()
            },
        );
        let after = config.decide(
            &facts[..],
            HostInputs {
                now_ms: at,
                tripped: &[Tripped {
                    slot: new_slot,
                    at_ms: START_MS,
                }],
                ..HostInputs::default()
            },
        );
        let (b, a) = (before.rollout.unwrap(), after.rollout.unwrap());
        if b.version == "new" {
            assert_eq!((a.version, a.reason), ("old", VersionReason::Guard));
            moved += 1;
        } else {
            assert_eq!(a, b, "a stable user must not be touched");
            kept += 1;
        }
        let ab = aborted.decide(
            &facts[..],
            HostInputs {
                now_ms: at,
                ..HostInputs::default()
            },
        );
        let ab = ab.rollout.unwrap();
        assert_eq!((ab.version, ab.reason), ("old", VersionReason::Aborted));
    }
    assert!(moved > 1_000 && kept > 3_000, "moved {moved}, kept {kept}");
    let shares = config.shares_at(
        at,
        &[Tripped {
            slot: new_slot,
            at_ms: START_MS,
        }],
    );
    assert_eq!(shares, [1_000_000, 0]);
    assert_eq!(config.shares_at(at, &[]), [700_000, 300_000]);
}

/// A trip stops the schedule where it was: later, when the schedule would have reached 100%,
/// users who were on stable at the trip are still there for their own reason (`bucket`), and
/// only the users the trip moved carry `guard`.
#[test]
fn a_trip_halts_the_schedule_where_it_was() {
    let config = scheduled_config(&[(30.0, 60_000), (100.0, 60_000)], "");
    let slot = config.slot_of("r", "new").unwrap();
    let trip = [Tripped {
        slot,
        at_ms: START_MS + 1_000,
    }];
    let (mut guard, mut bucket) = (0, 0);
    for i in 0..5_000 {
        let user = format!("u{i}");
        let facts = [("x-user-id", user.as_str())];
        let decide = |now: u64, tripped: &[Tripped]| {
            config
                .decide(
                    &facts[..],
                    HostInputs {
                        now_ms: Some(now),
                        tripped,
                        ..HostInputs::default()
                    },
                )
                .rollout
                .unwrap()
        };
        let at_trip = decide(START_MS + 1_000, &[]);
        let later = decide(START_MS + 300_000, &trip);
        assert_eq!(later.version, "old", "{user}");
        let expected = if at_trip.version == "new" {
            VersionReason::Guard
        } else {
            VersionReason::Bucket
        };
        assert_eq!(later.reason, expected, "{user}");
        guard += u32::from(expected == VersionReason::Guard);
        bucket += u32::from(expected == VersionReason::Bucket);
    }
    assert!(
        guard > 1_000 && bucket > 3_000,
        "guard {guard}, bucket {bucket}"
    );
    assert_eq!(
        config.shares_at(Some(START_MS + 300_000), &trip),
        [1_000_000, 0]
    );
    assert_eq!(
        config
            .schedule_at("r", Some(START_MS + 300_000))
            .unwrap()
            .step,
        2
    );
}
