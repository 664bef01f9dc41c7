//! The field names of docs/rollout.schema.json against the core's own: a config with an
//! unknown field in every object the core reads makes the core list, for each, the fields it
//! allows, and each list must be the schema's `properties` there. Every object the schema
//! closes (`additionalProperties: false`) must be probed, so a new one cannot be missed.

use std::collections::{BTreeMap, BTreeSet};

use rollout_core::Config;
use serde_json::{Value, json};

const PROBE: &str = "zz_probe";

/// (JSON pointer in the config, JSON pointer in the schema) of every object the core reads.
const OBJECTS: &[(&str, &str)] = &[
    ("", ""),
    ("/headers", "/properties/headers"),
    ("/metrics", "/properties/metrics"),
    ("/overrides", "/properties/overrides"),
    ("/assign", "/properties/assign"),
    ("/rollouts/r", "/$defs/rollout"),
    ("/rollouts/r/match", "/$defs/rollout/properties/match"),
    ("/rollouts/r/versions/0", "/$defs/weighted/items"),
    (
        "/rollouts/r/rules/0",
        "/$defs/rollout/properties/rules/items",
    ),
    ("/rollouts/r/rules/0/when/0", "/$defs/condition"),
    ("/rollouts/r/guard", "/$defs/guard"),
    ("/rollouts/r/guard/errors", "/$defs/guard/properties/errors"),
    (
        "/rollouts/r/guard/latency",
        "/$defs/guard/properties/latency",
    ),
    ("/rollouts/s/schedule", "/$defs/schedule"),
    (
        "/rollouts/s/schedule/steps/0",
        "/$defs/schedule/properties/steps/items",
    ),
    (
        "/rollouts/c/schedule/canary",
        "/$defs/schedule/properties/canary",
    ),
    (
        "/rollouts/l/schedule/linear",
        "/$defs/schedule/properties/linear",
    ),
    ("/flags/f", "/$defs/flag"),
    ("/flags/f/rules/0", "/$defs/flag/properties/rules/items"),
];

fn base() -> Value {
    let cond = json!({"attribute": "key", "op": "equals", "value": "x"});
    let two = json!([{"name": "a"}, {"name": "b"}]);
    json!({
        "user_key": ["cookie:uid"],
        "headers": {}, "metrics": {}, "overrides": {}, "assign": {"cookie": "uid"},
        "rollouts": {
            "r": {
                "match": {"path_prefix": "/r"},
                "versions": [{"name": "a", "weight": 1}],
                "rules": [{"when": [cond], "serve": "a"}],
                "guard": {"errors": {}, "latency": {"bound": "1s"}}
            },
            "s": {"match": {"path_prefix": "/s"}, "versions": two,
                  "schedule": {"start": "2026-11-23T10:00:00Z", "steps": [{"percent": 1}]}},
            "c": {"match": {"path_prefix": "/c"}, "versions": two,
                  "schedule": {"start": "2026-11-23T10:00:00Z",
                               "canary": {"percent": 1, "hold": "1m"}}},
            "l": {"match": {"path_prefix": "/l"}, "versions": two,
                  "schedule": {"start": "2026-11-23T10:00:00Z",
                               "linear": {"percent": 10, "every": "1m"}}}
        },
        "flags": {"f": {"rules": [{"when": [cond], "serve": "on"}]}}
    })
}

/// `/rollouts/r/versions/0` as the core writes it: `rollouts.r.versions[0]`.
fn core_path(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.split('/').skip(1) {
        if part.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// Pointers of every object schema with `additionalProperties: false`.
fn closed_objects(schema: &Value, at: String, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if map.get("additionalProperties") == Some(&Value::Bool(false)) {
                out.insert(at.clone());
            }
            for (key, value) in map {
                closed_objects(value, format!("{at}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, value) in items.iter().enumerate() {
                closed_objects(value, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_closed_object_of_the_schema_has_the_cores_fields() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("docs/rollout.schema.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();

    let mut config = base();
    assert!(
        Config::from_json(config.to_string().as_bytes()).is_ok(),
        "the base config must be valid"
    );
    for (at, _) in OBJECTS {
        let object = config
            .pointer_mut(at)
            .and_then(Value::as_object_mut)
            .unwrap();
        object.insert(PROBE.to_owned(), json!(0));
    }
    let errors = Config::from_json(config.to_string().as_bytes()).unwrap_err();
    let mut allowed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in errors.lines("") {
        let line = line.to_string();
        let (path, message) = line.split_once(": ").unwrap();
        let path = path
            .strip_suffix(PROBE)
            .unwrap_or(path)
            .trim_end_matches('.');
        let fields = message
            .strip_prefix("unknown field, expected one of: ")
            .unwrap_or_else(|| panic!("not an unknown-field error: {line}"));
        let path = if path == "(root)" { "" } else { path };
        allowed.insert(
            path.to_owned(),
            fields.split(", ").map(str::to_owned).collect(),
        );
    }

    let mut mismatches = Vec::new();
    for (at, schema_at) in OBJECTS {
        let core = allowed.get(&core_path(at)).cloned().unwrap_or_default();
        let ours: BTreeSet<String> = schema
            .pointer(&format!("{schema_at}/properties"))
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        if core != ours {
            mismatches.push(format!(
                "{schema_at}: the core allows {core:?}, the schema {ours:?}"
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

    let mut closed = BTreeSet::new();
    closed_objects(&schema, String::new(), &mut closed);
    let probed: BTreeSet<String> = OBJECTS.iter().map(|(_, s)| (*s).to_owned()).collect();
    assert_eq!(
        closed, probed,
        "every object the schema closes is probed here"
    );
}
