//! What the fuzz targets share: the golden vectors' configs and requests (built in, so a
//! target needs no files at run time), an arbitrary request shaped by them, the invariants
//! every decision must keep, and the filter's own decoders.

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use rollout_core::{Config, Decision, HostInputs, Tripped};

/// The filter's header-map decoding (`HeaderPairs`), compiled from the filter's own source:
/// the filter is a cdylib, and making it an rlib too would turn its LTO off and grow the
/// .wasm. Natively every host call answers "unimplemented", as in the filter's unit tests.
#[path = "../../filter/src/host.rs"]
#[allow(
    dead_code,
    unreachable_pub,
    reason = "the filter's module, most of it unused here"
)]
pub mod host;

/// The filter's plugin-configuration parsing, from the filter's own source (see [`host`]).
#[path = "../../filter/src/source.rs"]
#[allow(
    dead_code,
    unreachable_pub,
    reason = "the filter's module, most of it unused here"
)]
pub mod source;

/// Every golden vector file and example config, as (name, text).
pub const VECTOR_FILES: &[(&str, &str)] = &[
    (
        "basic-split",
        include_str!("../../testdata/vectors/basic-split.json"),
    ),
    (
        "blue-green",
        include_str!("../../testdata/vectors/blue-green.json"),
    ),
    ("flags", include_str!("../../testdata/vectors/flags.json")),
    (
        "no-key-random",
        include_str!("../../testdata/vectors/no-key-random.json"),
    ),
    (
        "no-match",
        include_str!("../../testdata/vectors/no-match.json"),
    ),
    (
        "overrides",
        include_str!("../../testdata/vectors/overrides.json"),
    ),
    (
        "route-matching",
        include_str!("../../testdata/vectors/route-matching.json"),
    ),
    (
        "schedule",
        include_str!("../../testdata/vectors/schedule.json"),
    ),
    (
        "spoofing",
        include_str!("../../testdata/vectors/spoofing.json"),
    ),
    (
        "targeting",
        include_str!("../../testdata/vectors/targeting.json"),
    ),
];

/// The example configs (whole files are configs).
pub const EXAMPLE_FILES: &[(&str, &str)] = &[
    ("checkout", include_str!("../../examples/checkout.json")),
    (
        "canary-schedule",
        include_str!("../../examples/canary-schedule.json"),
    ),
];

/// What the vectors hold, parsed once.
pub struct Vectors {
    /// Every config of the vectors and examples, as JSON text.
    pub config_texts: Vec<String>,
    /// The same configs as JSON values.
    pub config_values: Vec<serde_json::Value>,
    /// The same configs, parsed (the vectors' configs are all valid).
    pub configs: Vec<Config>,
    /// Every request header of every case (name, value): the dictionary requests draw from.
    pub headers: Vec<(String, String)>,
    /// Every request time of every case, in Unix ms.
    pub times: Vec<u64>,
    /// Every case's request, with two entropy answers.
    pub cases: Vec<Request>,
}

/// The vectors, parsed on first use.
pub fn vectors() -> &'static Vectors {
    static VECTORS: OnceLock<Vectors> = OnceLock::new();
    VECTORS.get_or_init(|| {
        let mut config_texts = Vec::new();
        let mut headers = Vec::new();
        let mut times = Vec::new();
        let mut cases = Vec::new();
        for (name, text) in VECTOR_FILES {
            let file: serde_json::Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("vector {name} is not JSON: {e}"));
            config_texts.push(file["config"].to_string());
            for case in file["cases"].as_array().into_iter().flatten() {
                let request = &case["request"];
                let mut case_headers = Vec::new();
                for pair in request["headers"].as_array().into_iter().flatten() {
                    if let (Some(n), Some(v)) = (pair[0].as_str(), pair[1].as_str()) {
                        headers.push((n.to_owned(), v.to_owned()));
                        case_headers.push((n.to_owned(), v.as_bytes().to_vec()));
                    }
                }
                let now_ms = request["now"].as_str().and_then(rollout_core::parse_time);
                times.extend(now_ms);
                cases.push(Request {
                    headers: case_headers,
                    now_ms,
                    entropy: vec![7, 1 << 40],
                    tripped: Vec::new(),
                });
            }
        }
        for (_, text) in EXAMPLE_FILES {
            config_texts.push((*text).to_owned());
        }
        headers.sort();
        headers.dedup();
        let configs = config_texts
            .iter()
            .map(|t| {
                Config::from_json(t.as_bytes())
                    .unwrap_or_else(|e| panic!("a vector config is refused: {e:?}"))
            })
            .collect();
        let config_values = config_texts
            .iter()
            .map(|t| serde_json::from_str(t).unwrap_or(serde_json::Value::Null))
            .collect();
        Vectors {
            config_values,
            config_texts,
            configs,
            headers,
            times,
            cases,
        }
    })
}

/// An arbitrary request, its headers mostly names and values the vectors use.
#[derive(Debug)]
pub struct Request {
    /// Request headers, in order (names may repeat).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The host's clock, if it has one.
    pub now_ms: Option<u64>,
    /// What the entropy source answers, in turn (none: the host gives no entropy).
    pub entropy: Vec<u64>,
    /// Tripped versions.
    pub tripped: Vec<Tripped>,
}

impl<'a> Arbitrary<'a> for Request {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Request> {
        let v = vectors();
        let n = u.int_in_range(0..=12)?;
        let mut headers = Vec::with_capacity(n);
        for _ in 0..n {
            let (name, value) = u.choose(&v.headers)?;
            let name = match u.int_in_range(0..=9)? {
                0 => String::arbitrary(u)?,
                1 => name.to_ascii_uppercase(),
                2 => "cookie".to_owned(),
                _ => name.clone(),
            };
            let value = match u.int_in_range(0..=5)? {
                0 => Vec::<u8>::arbitrary(u)?,
                1 => String::arbitrary(u)?.into_bytes(),
                2 => cookie_header(u)?,
                3 => {
                    // A dictionary value with an arbitrary tail or head.
                    let extra = String::arbitrary(u)?;
                    if bool::arbitrary(u)? {
                        format!("{value}{extra}").into_bytes()
                    } else {
                        format!("{extra}{value}").into_bytes()
                    }
                }
                _ => value.clone().into_bytes(),
            };
            headers.push((name, value));
        }
        let now_ms = match u.int_in_range(0..=3)? {
            0 => None,
            1 => Some(u64::arbitrary(u)?),
            _ => {
                let base = if v.times.is_empty() {
                    0
                } else {
                    *u.choose(&v.times)?
                };
                Some(base.saturating_add_signed(i64::from(i32::arbitrary(u)?) * 1000))
            }
        };
        let entropy = Vec::<u64>::arbitrary(u)?;
        let mut tripped = Vec::new();
        for _ in 0..u.int_in_range(0..=2)? {
            tripped.push(Tripped {
                slot: u.int_in_range(0..=8)?,
                at_ms: u64::arbitrary(u)?,
            });
        }
        Ok(Request {
            headers,
            now_ms,
            entropy,
            tripped,
        })
    }
}

/// A Cookie header value built from cookie names the vectors' configs read.
fn cookie_header(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    const NAMES: &[&str] = &["uid", "session", "cohort", "rollout_override", "x"];
    let mut out = Vec::new();
    for i in 0..u.int_in_range(1..=4)? {
        if i > 0 {
            out.extend_from_slice(if bool::arbitrary(u)? { b"; " } else { b";" });
        }
        out.extend_from_slice(u.choose(NAMES)?.as_bytes());
        out.push(b'=');
        out.extend_from_slice(String::arbitrary(u)?.as_bytes());
    }
    Ok(out)
}

/// Decides `request` under `config` and checks what must hold of any decision; panics (a
/// finding) when something does not.
pub fn check_decision(config: &Config, request: &Request) {
    let headers = &request.headers[..];
    let first = decide(config, request);
    let again = decide(config, request);
    assert_eq!(first, again, "the same request decided twice differs");
    let decision = first;

    if let Some(r) = decision.rollout {
        assert!(
            config.versions().any(|pair| pair == (r.rollout, r.version)),
            "version {:?} of rollout {:?} is not one of the config's",
            r.version,
            r.rollout
        );
        assert_eq!(
            config.slot_names(r.slot),
            Some((r.rollout, r.version)),
            "the slot names another version"
        );
    }
    let flags: Vec<_> = config.flag_values().collect();
    assert_eq!(flags.len(), decision.flags.len(), "one choice per flag");
    for (choice, (flag, values)) in decision.flags.iter().zip(&flags) {
        assert_eq!(choice.flag, *flag, "flags in config order");
        assert!(
            values.contains(&choice.value),
            "flag {flag} got {:?}, not one of {values:?}",
            choice.value
        );
    }
    if decision.assigned.is_some() {
        assert!(
            config.assign_cookie().is_some(),
            "a key assigned without `assign`"
        );
    }
    if decision.token.is_some() {
        assert!(config.has_overrides(), "a token read without `overrides`");
    }

    // The header contract: every contract header the upstream sees is the decision's, once.
    let client: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    let mut upstream = client.clone();
    config.apply_request_contract(&decision, headers, &mut upstream);
    let names = config.header_names();
    let flags_value = decision.flags_header_value();
    let expected = [
        (names.version.as_str(), decision.rollout.map(|r| r.version)),
        (names.rollout.as_str(), decision.rollout.map(|r| r.rollout)),
        (names.flags.as_str(), flags_value.as_deref()),
        (
            names.reason.as_str(),
            decision.rollout.and_then(|r| r.reason.moved()),
        ),
    ];
    let (override_header, override_cookie) = config.override_carriers().unwrap_or_default();
    let mut contract_names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    contract_names.extend(override_header);
    contract_names.push("cookie");
    let distinct = contract_names.iter().enumerate().all(|(i, a)| {
        contract_names[..i]
            .iter()
            .all(|b| !a.eq_ignore_ascii_case(b))
    });
    if distinct {
        for (name, value) in expected {
            let seen: Vec<&str> = values(&upstream, name);
            assert_eq!(
                seen,
                value.into_iter().collect::<Vec<_>>(),
                "upstream header {name}"
            );
        }
        if let Some(header) = override_header {
            assert!(
                values(&upstream, header).is_empty(),
                "the token header reached the upstream"
            );
        }
        if let Some(cookie) = override_cookie {
            for value in values(&upstream, "cookie") {
                assert!(
                    rollout_core::cookie_value(value.as_bytes(), cookie).is_none(),
                    "the token cookie reached the upstream: {value:?}"
                );
            }
        }
        let mut response: Vec<(String, String)> = Vec::new();
        config.apply_response_contract(decision.response_plan(), &mut response);
        if names.response
            && let Some(r) = decision.rollout
        {
            assert_eq!(
                values(&response, &names.version),
                [r.version],
                "response version"
            );
        }
    }
}

/// The values of `name` in a plain header list.
fn values<'l>(list: &'l [(String, String)], name: &str) -> Vec<&'l str> {
    list.iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Decides with the request's host inputs; the entropy source replays the same answers.
pub fn decide<'c>(config: &'c Config, request: &Request) -> Decision<'c> {
    let mut answers = request.entropy.iter().copied().cycle();
    let mut entropy = move || answers.next().unwrap_or(0x9e37_79b9_7f4a_7c15);
    let inputs = HostInputs {
        entropy: (!request.entropy.is_empty()).then_some(&mut entropy as &mut dyn FnMut() -> u64),
        now_ms: request.now_ms,
        tripped: &request.tripped,
    };
    config.decide(&request.headers[..], inputs)
}

/// The pairs of a header map in the host's serialised form, read the way the filter reads
/// them; `None` when the filter refuses the buffer.
pub fn filter_header_pairs(buffer: Vec<u8>) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let pairs = host::HeaderPairs::decode(buffer)?;
    Some(
        pairs
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect(),
    )
}

/// Decides a request whose headers come in the host's serialised form, through the filter's
/// reading of them; `None` when the filter refuses the buffer.
pub fn filter_decide(config: &Config, buffer: Vec<u8>, now_ms: Option<u64>) -> Option<String> {
    let pairs = host::HeaderPairs::decode(buffer)?;
    let inputs = HostInputs {
        now_ms,
        ..HostInputs::default()
    };
    Some(format!("{:?}", config.decide(&pairs, inputs)))
}

/// The config a plugin configuration puts in force (for the live form, its fallback with the
/// plugin's override keys merged in), and whether it is the live form; the filter's error
/// lines otherwise.
pub fn filter_plugin_config(bytes: &[u8]) -> Result<(Config, bool), Vec<String>> {
    match source::parse_plugin_config(bytes)? {
        source::PluginConfig::Static(config) => Ok((config, false)),
        source::PluginConfig::Live {
            mut fallback,
            override_keys,
            source,
        } => {
            assert!(
                source.path.starts_with('/'),
                "a live source path {:?}",
                source.path
            );
            assert!(!source.cluster.is_empty() && !source.authority.is_empty());
            assert!((10..=3_600_000).contains(&source.poll_interval_ms));
            assert!((10..=60_000).contains(&source.timeout_ms));
            source::merge_override_keys(&mut fallback, &override_keys);
            for (id, secret) in &override_keys {
                if fallback.has_overrides() {
                    assert!(
                        fallback
                            .override_keys()
                            .iter()
                            .any(|(i, s)| i == id && s == secret),
                        "plugin key {id} not merged"
                    );
                }
            }
            Ok((fallback, true))
        }
    }
}

/// Header pairs in the host's serialised form: a count, each name and value length (u32
/// little-endian), then each name and value followed by a NUL. Written here from the ABI's
/// description, not from the filter, so that a decoder bug is not mirrored.
pub fn serialize_pairs(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (n, v) in pairs {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}
