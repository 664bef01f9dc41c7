//! Config-shaped JSON: a vector's config (or a generated object) edited with the config's own
//! field names, operators and value forms, then serialised and parsed. It reaches the
//! validation behind the syntax (references, weights, schedules, rules), which raw bytes
//! rarely do. Checks: no panic; every refusal names its problems at paths that exist in the
//! input (a missing field's path, or an overlap's at an absent `match`, ends at an
//! absent key); an accepted config decides
//! arbitrary requests within the invariants of `check_decision`.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use rollout_core::{Config, ErrorKind, OPERATORS};
use rollout_fuzz::{Request, check_decision, vectors};
use serde_json::{Map, Value, json};

/// Every field name the config format has.
const KEYS: &[&str] = &[
    "aborted",
    "all_at_once",
    "allow",
    "assign",
    "attribute",
    "bound",
    "canary",
    "cookie",
    "default",
    "deny",
    "enabled",
    "errors",
    "every",
    "flags",
    "guard",
    "header",
    "headers",
    "hold",
    "hosts",
    "keys",
    "latency",
    "linear",
    "match",
    "max_age",
    "max_over_stable",
    "max_ratio",
    "metrics",
    "min_requests",
    "name",
    "no_key",
    "op",
    "overrides",
    "path_prefix",
    "paused_at",
    "percent",
    "percentage",
    "reason",
    "response",
    "responses",
    "rollout",
    "rollouts",
    "rules",
    "salt",
    "schedule",
    "secure",
    "serve",
    "stable",
    "start",
    "steps",
    "user_key",
    "value",
    "values",
    "variants",
    "version",
    "versions",
    "weight",
    "when",
    "window",
    "v1",
    "v2",
    "checkout",
    "k1",
];

/// Strings the format gives meaning to.
const STRINGS: &[&str] = &[
    "header:x-user-id",
    "cookie:uid",
    "key",
    "header:x-app-version",
    "cookie:cohort",
    "v1",
    "v2",
    "v3",
    "on",
    "off",
    "random",
    "stable",
    "30d",
    "1h",
    "30s",
    "250ms",
    "0s",
    "2026-11-23T10:00:00Z",
    "2026-11-23T10:30:00.5Z",
    "1970-01-01T00:00:00Z",
    "/checkout",
    "/",
    "shop.example.com",
    "*.example.com",
    "x-rollout-version",
    "x-rollout",
    "3.0.0",
    "v2.3",
    "1.0.0-rc.1",
    "k1",
    "test-secret-k1-0123456789abcdef01",
    "",
    "p99",
    "5xx",
    "linear",
];

/// Numbers at the edges of the format's ranges.
const NUMBERS: &[f64] = &[
    0.0,
    1.0,
    -1.0,
    0.5,
    50.0,
    100.0,
    100.5,
    1e6,
    1e9,
    4294967295.0,
    4294967296.0,
    1e300,
    0.05,
];

fn string(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
    Ok(match u.int_in_range(0..=5)? {
        0 => Value::String(String::arbitrary(u)?),
        1 => Value::String(u.choose(OPERATORS)?.to_string()),
        _ => Value::String(u.choose(STRINGS)?.to_string()),
    })
}

fn number(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
    Ok(match u.int_in_range(0..=3)? {
        0 => json!(i64::arbitrary(u)?),
        1 => json!(u64::arbitrary(u)?),
        2 => serde_json::Number::from_f64(f64::arbitrary(u)?).map_or(Value::Null, Value::Number),
        _ => json!(*u.choose(NUMBERS)?),
    })
}

/// A value in the shape of some part of a config.
fn value(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<Value> {
    let last = if depth == 0 { 4 } else { 10 };
    Ok(match u.int_in_range(0..=last)? {
        0 => Value::Null,
        1 => Value::Bool(bool::arbitrary(u)?),
        2 => number(u)?,
        3 | 4 => string(u)?,
        5 => {
            let n = u.int_in_range(0..=4)?;
            Value::Array(
                (0..n)
                    .map(|_| value(u, depth - 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        6 | 7 => {
            let mut map = Map::new();
            for _ in 0..u.int_in_range(0..=4)? {
                let key = key(u)?;
                map.insert(key, value(u, depth - 1)?);
            }
            Value::Object(map)
        }
        8 => {
            let op = *u.choose(OPERATORS)?;
            let mut c = json!({"attribute": string(u)?, "op": op});
            if bool::arbitrary(u)? {
                c["value"] = if bool::arbitrary(u)? {
                    number(u)?
                } else {
                    string(u)?
                };
            } else {
                c["values"] = Value::Array(vec![string(u)?, string(u)?]);
            }
            json!({"when": [c], "serve": string(u)?})
        }
        9 => json!({"name": string(u)?, "weight": number(u)?}),
        _ => {
            // A piece of a real config.
            let mut at = u.choose(&vectors().config_values)?;
            for _ in 0..u.int_in_range(0..=4)? {
                at = match at {
                    Value::Object(m) if !m.is_empty() => {
                        m.values().nth(u.choose_index(m.len())?).unwrap_or(at)
                    }
                    Value::Array(a) if !a.is_empty() => u.choose(a)?,
                    _ => break,
                };
            }
            at.clone()
        }
    })
}

fn key(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    Ok(if u.ratio(1, 8)? {
        String::arbitrary(u)?
    } else {
        u.choose(KEYS)?.to_string()
    })
}

/// Applies one edit somewhere in `root`: replace, remove, insert or duplicate.
fn edit(u: &mut Unstructured<'_>, root: &mut Value) -> arbitrary::Result<()> {
    // The place is chosen first, by child positions, and then reached mutably.
    let mut steps = Vec::new();
    let mut look = &*root;
    for _ in 0..u.int_in_range(0..=6)? {
        let len = match look {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        if len == 0 || u.ratio(1, 4)? {
            break;
        }
        let i = u.choose_index(len)?;
        look = match look {
            Value::Object(m) => m.values().nth(i),
            Value::Array(a) => a.get(i),
            _ => None,
        }
        .unwrap_or(look);
        steps.push(i);
    }
    let mut at = root;
    for i in steps {
        at = match at {
            Value::Object(m) => m.values_mut().nth(i),
            Value::Array(a) => a.get_mut(i),
            _ => None,
        }
        .expect("the place chosen above");
    }
    match (u.int_in_range(0..=3)?, &mut *at) {
        (0, Value::Object(m)) if !m.is_empty() => {
            let i = u.choose_index(m.len())?;
            let k = m.keys().nth(i).cloned().unwrap_or_default();
            m.remove(&k);
        }
        (0, Value::Array(a)) if !a.is_empty() => {
            a.remove(u.choose_index(a.len())?);
        }
        (1, Value::Object(m)) => {
            let k = key(u)?;
            m.insert(k, value(u, 3)?);
        }
        (1, Value::Array(a)) => a.push(value(u, 3)?),
        (2, Value::Array(a)) if !a.is_empty() => {
            let dup = u.choose(a)?.clone();
            a.push(dup);
        }
        _ => *at = value(u, 3)?,
    }
    Ok(())
}

/// The value at an error's path (`a.b[2].c`), if the path leads anywhere in `root`.
fn resolve<'v>(root: &'v Value, path: &str) -> Option<&'v Value> {
    let mut at = root;
    if path.is_empty() {
        return Some(at);
    }
    for segment in path.split('.') {
        let (key, indexes) = segment
            .split_once('[')
            .map_or((segment, ""), |(k, i)| (k, i));
        if !key.is_empty() {
            at = at.as_object()?.get(key)?;
        }
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            at = at
                .as_array()?
                .get(index.strip_suffix(']')?.parse::<usize>().ok()?)?;
        }
    }
    Some(at)
}

/// Whether every object key in `v` can be told apart in a path.
fn plain_keys(v: &Value) -> bool {
    match v {
        Value::Object(m) => m
            .iter()
            .all(|(k, v)| !k.is_empty() && !k.contains(['.', '[', ']']) && plain_keys(v)),
        Value::Array(a) => a.iter().all(plain_keys),
        _ => true,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(pick) = u.int_in_range(0..=vectors().config_texts.len()) else {
        return;
    };
    let mut root = match vectors().config_values.get(pick) {
        Some(v) => v.clone(),
        None => match value(&mut u, 4) {
            Ok(v) => v,
            Err(_) => return,
        },
    };
    for _ in 0..u.int_in_range(0..=6).unwrap_or(0) {
        if edit(&mut u, &mut root).is_err() {
            break;
        }
    }
    let text = root.to_string();
    match Config::from_json(text.as_bytes()) {
        Err(errors) => {
            assert!(!errors.is_empty(), "refused with no error");
            if plain_keys(&root) {
                for e in errors.iter() {
                    // A missing field's path ends at the key that is not there, and so
                    // may an overlap's, when the `match` it names is absent (match all).
                    let path = match e.kind {
                        ErrorKind::MissingField | ErrorKind::OverlappingMatch { .. }
                            if resolve(&root, &e.path).is_none() =>
                        {
                            e.path.rsplit_once('.').map_or("", |(p, _)| p)
                        }
                        _ => &e.path,
                    };
                    assert!(
                        resolve(&root, path).is_some(),
                        "error at {:?} names no place in {text}: {e}",
                        e.path
                    );
                }
            }
        }
        Ok(config) => {
            if let Ok(request) = Request::arbitrary(&mut u) {
                check_decision(&config, &request);
            }
        }
    }
});
