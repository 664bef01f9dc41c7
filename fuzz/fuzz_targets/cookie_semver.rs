//! Cookie headers and semantic versions. `cookie_value` on any header: what it finds is a
//! piece of the header without a `;`, and it finds the first cookie of a header built from
//! known pairs. Versions (compared through rules, the way a request meets them): exactly one
//! of `semver_lt`, `semver_eq`, `semver_gt` holds for a version that parses, `gte`/`lte` agree
//! with them, none holds for one that does not, and swapping the two sides mirrors the order.
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rollout_core::{Config, HostInputs, cookie_value};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    header: &'a [u8],
    name: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
    a: &'a str,
    b: &'a str,
}

const OPS: [&str; 5] = [
    "semver_lt",
    "semver_eq",
    "semver_gt",
    "semver_gte",
    "semver_lte",
];

thread_local! {
    /// Configs by version: inputs repeat their versions often, and parsing a config is most
    /// of an execution's cost.
    static CONFIGS: RefCell<HashMap<String, Option<Rc<Config>>>> = RefCell::new(HashMap::new());
}

/// [`build`], remembered.
fn comparing(version: &str) -> Option<Rc<Config>> {
    CONFIGS.with_borrow_mut(|cache| {
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache
            .entry(version.to_owned())
            .or_insert_with(|| build(version).map(Rc::new))
            .clone()
    })
}

/// A config whose flag `<op>` is on when header x-v compares so with `version`; `None` when
/// the config refuses `version`.
fn build(version: &str) -> Option<Config> {
    let mut flags = serde_json::Map::new();
    for op in OPS {
        flags.insert(
            op.to_owned(),
            serde_json::json!({"percentage": 0, "rules": [{"serve": "on", "when": [
                {"attribute": "header:x-v", "op": op, "value": version}]}]}),
        );
    }
    Config::from_json(serde_json::json!({ "flags": flags }).to_string().as_bytes()).ok()
}

/// Which of OPS hold for `header` compared with the config's version.
fn holds(config: &Config, header: &str) -> [bool; 5] {
    let request = [("x-v", header)];
    let decision = config.decide(&request[..], HostInputs::default());
    OPS.map(|op| {
        decision
            .flags
            .iter()
            .any(|f| f.flag == op && f.value == "on")
    })
}

fuzz_target!(|input: Input<'_>| {
    // Any header: what is found lies inside it and holds no separator.
    if let Some(found) = cookie_value(input.header, input.name) {
        let range = input.header.as_ptr_range();
        assert!(range.contains(&found.as_ptr()) || found.is_empty());
        assert!(!found.contains(&b';'), "a value across a separator");
        assert!(
            !input.name.contains([';', '=']),
            "a name with a separator matched"
        );
    }
    // A header built from plain pairs: the first pair of the name is found, unquoted.
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !b";=\"".contains(&b))
    };
    let pairs: Vec<_> = input
        .pairs
        .iter()
        .filter(|(k, v)| plain(k) && plain(v))
        .collect();
    let header = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    for (k, v) in &pairs {
        let first = pairs
            .iter()
            .find(|(k2, _)| k2 == k)
            .map(|(_, v)| v.as_bytes());
        assert_eq!(
            cookie_value(header.as_bytes(), k),
            first,
            "cookie {k} in {header:?}"
        );
        let quoted = format!("{k}=\"{v}\"");
        assert_eq!(cookie_value(quoted.as_bytes(), k), Some(v.as_bytes()));
    }

    // Versions: the comparison is a total order where both parse.
    let Some(config_a) = comparing(input.a) else {
        return;
    };
    let [lt, eq, gt, gte, lte] = holds(&config_a, input.b);
    assert!(
        [lt, eq, gt].into_iter().filter(|&h| h).count() <= 1,
        "{:?} vs {:?}: two orders",
        input.b,
        input.a
    );
    assert_eq!(gte, gt || eq, "{:?} >= {:?}", input.b, input.a);
    assert_eq!(lte, lt || eq, "{:?} <= {:?}", input.b, input.a);
    let parses = lt || eq || gt;
    if let Some(config_b) = comparing(input.b) {
        // b is a version the config accepts, so it parses and compares one way or another.
        assert!(
            parses,
            "{:?} accepted in a config but never compares",
            input.b
        );
        let [lt2, eq2, gt2, _, _] = holds(&config_b, input.a);
        if parses {
            assert_eq!(
                (lt, eq, gt),
                (gt2, eq2, lt2),
                "{:?} vs {:?} is not mirrored",
                input.a,
                input.b
            );
        }
    }
});
