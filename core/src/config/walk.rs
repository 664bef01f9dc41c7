//! The walk that lowers a JSON value into a [`Config`]: the path it is at, the errors found
//! so far, readers for each JSON shape that report a wrong one, and the config's top level.
//! Rollouts and flags are lowered in `rollout.rs` and `flag.rs`.

use crate::json::{Object, TextHash, Value};

use super::{Config, HeaderNames, PSEUDO_HEADERS, Rollout, Source};
use crate::error::{ConfigError, ErrorKind};

pub(super) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Names that travel in headers, metric names and paths: short, and free of separators.
pub(super) fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// RFC 9110 token characters, lowercase only, since Envoy and Workers lowercase header names.
pub(super) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

/// RFC 6265 cookie names are tokens; case matters.
pub(super) fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A hand-written walk over the JSON that collects every error with its path.
#[derive(Default)]
pub(super) struct Walk {
    pub(super) errors: Vec<ConfigError>,
    path: String,
}

impl Walk {
    pub(super) fn error(&mut self, kind: ErrorKind) {
        self.errors.push(ConfigError {
            path: self.path.clone(),
            kind,
        });
    }

    /// Runs `f` with `.key` (or `key` at the root) appended to the path.
    pub(super) fn at_key<T>(&mut self, key: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        let len = self.enter_key(key);
        let out = f(self);
        self.path.truncate(len);
        out
    }

    /// Runs `f` with `[idx]` appended to the path.
    pub(super) fn at_index<T>(&mut self, idx: usize, f: impl FnOnce(&mut Self) -> T) -> T {
        let len = self.enter_index(idx);
        let out = f(self);
        self.path.truncate(len);
        out
    }

    // The path steps are kept out of line: `at_key` and `at_index` are copied for every
    // closure they run, and the filter should carry each step once.
    #[inline(never)]
    fn enter_key(&mut self, key: &str) -> usize {
        let len = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(key);
        len
    }

    #[inline(never)]
    fn enter_index(&mut self, idx: usize) -> usize {
        let len = self.path.len();
        self.path.push_str(&format!("[{idx}]"));
        len
    }

    /// The value as an object whose keys are all in `allowed`; unknown keys are reported.
    pub(super) fn object<'v>(
        &mut self,
        value: &'v Value,
        allowed: &'static [&'static str],
    ) -> Option<&'v Object> {
        let Some(map) = value.as_object() else {
            self.error(ErrorKind::WrongType {
                expected: "an object",
                found: json_type(value),
            });
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                self.at_key(key, |w| {
                    w.error(ErrorKind::UnknownField { expected: allowed })
                });
            }
        }
        Some(map)
    }

    /// A required field of `map`, or a reported `MissingField`.
    pub(super) fn required<'v>(&mut self, map: &'v Object, key: &str) -> Option<&'v Value> {
        let value = map.get(key);
        if value.is_none() {
            self.at_key(key, |w| w.error(ErrorKind::MissingField));
        }
        value
    }

    pub(super) fn string<'v>(&mut self, value: &'v Value) -> Option<&'v str> {
        let s = value.as_str();
        if s.is_none() {
            self.error(ErrorKind::WrongType {
                expected: "a string",
                found: json_type(value),
            });
        }
        s
    }

    pub(super) fn array<'v>(&mut self, value: &'v Value) -> Option<&'v Vec<Value>> {
        let a = value.as_array();
        if a.is_none() {
            self.error(ErrorKind::WrongType {
                expected: "an array",
                found: json_type(value),
            });
        }
        a
    }

    pub(super) fn boolean(&mut self, value: &Value) -> Option<bool> {
        let b = value.as_bool();
        if b.is_none() {
            self.error(ErrorKind::WrongType {
                expected: "a boolean",
                found: json_type(value),
            });
        }
        b
    }

    /// A validated name, or a reported `BadName`.
    pub(super) fn name(&mut self, value: &Value) -> Option<String> {
        let name = self.string(value)?;
        if is_name(name) {
            Some(name.to_owned())
        } else {
            self.error(ErrorKind::BadName {
                name: name.to_owned(),
            });
            None
        }
    }

    /// A list of strings (each checked by `each`), with duplicates reported.
    pub(super) fn string_list(&mut self, value: &Value) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (i, s) in self.strings(value) {
            if out.iter().any(|seen| seen == s) {
                self.at_index(i, |w| w.error(ErrorKind::Duplicate { name: s.to_owned() }));
            } else {
                out.push(s.to_owned());
            }
        }
        out
    }

    /// The strings of a list with their indices, without a check for repeats: for key lists,
    /// which run to tens of thousands and find repeats as they insert each key in sorted
    /// place (a scan per key, as `string_list` does, took seconds for 30,000 keys).
    pub(super) fn strings<'v>(&mut self, value: &'v Value) -> Vec<(usize, &'v str)> {
        let mut out = Vec::new();
        let Some(items) = self.array(value) else {
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            if let Some(s) = self.at_index(i, |w| w.string(item)) {
                out.push((i, s));
            }
        }
        out
    }

    pub(super) fn source(&mut self, value: &Value, allow_key: bool) -> Option<Source> {
        let text = self.string(value)?;
        let source = if let Some(name) = text.strip_prefix("header:") {
            if !is_header_name(name) && !PSEUDO_HEADERS.contains(&name) {
                self.error(ErrorKind::BadHeaderName {
                    name: name.to_owned(),
                });
                return None;
            }
            Some(Source::Header(name.to_owned()))
        } else if let Some(name) = text.strip_prefix("cookie:") {
            if !is_cookie_name(name) {
                self.error(ErrorKind::BadHeaderName {
                    name: name.to_owned(),
                });
                return None;
            }
            Some(Source::Cookie(name.to_owned()))
        } else if text == "key" && allow_key {
            Some(Source::Key)
        } else {
            None
        };
        if source.is_none() {
            let allowed = if allow_key {
                "\"header:NAME\", \"cookie:NAME\" or \"key\""
            } else {
                "\"header:NAME\" or \"cookie:NAME\""
            };
            self.error(ErrorKind::BadSource {
                source: text.to_owned(),
                allowed,
            });
        }
        source
    }

    pub(super) fn config(&mut self, value: &Value) -> Config {
        let mut config = Config::empty();
        config.digest = digest(value);
        let Some(map) = self.object(
            value,
            &[
                "user_key",
                "headers",
                "rollouts",
                "flags",
                "metrics",
                "overrides",
                "assign",
                "$schema",
            ],
        ) else {
            return config;
        };
        // For editors (docs/rollout.schema.json); a string, and nothing else reads it.
        if let Some(v) = map.get("$schema") {
            self.at_key("$schema", |w| w.string(v));
        }
        if let Some(v) = map.get("user_key") {
            self.at_key("user_key", |w| {
                let Some(items) = w.array(v) else { return };
                for (i, item) in items.iter().enumerate() {
                    if let Some(s) = w.at_index(i, |w| w.source(item, false)) {
                        config.user_key.push(s);
                    }
                }
            });
        }
        if let Some(v) = map.get("headers") {
            self.at_key("headers", |w| w.headers(v, &mut config.headers));
        }
        if let Some(v) = map.get("metrics") {
            self.at_key("metrics", |w| {
                let Some(map) = w.object(v, &["responses", "flags"]) else {
                    return;
                };
                if let Some(v) = map.get("responses")
                    && let Some(b) = w.at_key("responses", |w| w.boolean(v))
                {
                    config.count_responses = b;
                }
                if let Some(v) = map.get("flags")
                    && let Some(b) = w.at_key("flags", |w| w.boolean(v))
                {
                    config.count_flags = b;
                }
            });
        }
        if let Some(v) = map.get("overrides") {
            config.overrides = self.at_key("overrides", |w| w.overrides(v));
        }
        if let Some(v) = map.get("assign") {
            config.assign = self.at_key("assign", |w| w.assign(v, &config.user_key));
        }
        if let Some(v) = map.get("rollouts") {
            self.at_key("rollouts", |w| {
                let Some(rollouts) = w.object_of_named(v) else {
                    return;
                };
                for (name, body) in rollouts {
                    if let Some(r) = w.at_key(name, |w| w.rollout(name, body)) {
                        config.rollouts.push(r);
                    }
                }
                w.check_overlaps(&config.rollouts);
            });
        }
        if let Some(v) = map.get("flags") {
            self.at_key("flags", |w| {
                let Some(flags) = w.object_of_named(v) else {
                    return;
                };
                for (name, body) in flags {
                    if let Some(f) = w.at_key(name, |w| w.flag(name, body)) {
                        config.flags.push(f);
                    }
                }
            });
        }
        // Most specific first: a host list beats none, then the longer prefix wins; equals
        // keep their order (name order). Each goes after every rollout at least as specific,
        // a stable insertion sort: the standard library's stable sort would give the filter a
        // copy of its own (~4 KB), and a config has few rollouts.
        let specificity =
            |r: &Rollout| (r.hosts.is_empty(), core::cmp::Reverse(r.path_prefix.len()));
        let mut sorted: Vec<Rollout> = Vec::with_capacity(config.rollouts.len());
        for rollout in config.rollouts.drain(..) {
            let at = sorted.partition_point(|r| specificity(r) <= specificity(&rollout));
            sorted.insert(at, rollout);
        }
        config.rollouts = sorted;
        // Flags are already sorted by name: they were pushed in the order of the object's
        // entries, which iterate sorted by key. No sort here: one would give the filter its
        // own copy of the standard library's sort (~3 KB).
        let mut slot = 0;
        for rollout in &mut config.rollouts {
            rollout.first_slot = slot;
            slot += rollout.versions.len();
        }
        config
    }

    /// An object keyed by names (rollouts, flags); bad names are reported and skipped.
    fn object_of_named<'v>(&mut self, value: &'v Value) -> Option<Vec<(&'v str, &'v Value)>> {
        let Some(map) = value.as_object() else {
            self.error(ErrorKind::WrongType {
                expected: "an object",
                found: json_type(value),
            });
            return None;
        };
        let mut out = Vec::new();
        for (name, body) in map {
            if is_name(name) {
                out.push((name.as_str(), body));
            } else {
                self.at_key(name, |w| w.error(ErrorKind::BadName { name: name.clone() }));
            }
        }
        Some(out)
    }

    fn headers(&mut self, value: &Value, names: &mut HeaderNames) {
        let Some(map) = self.object(
            value,
            &["version", "rollout", "flags", "reason", "response"],
        ) else {
            return;
        };
        if let Some(v) = map.get("response")
            && let Some(b) = self.at_key("response", |w| w.boolean(v))
        {
            names.response = b;
        }
        let mut seen: Vec<&str> = Vec::new();
        for (key, slot) in [
            ("version", &mut names.version),
            ("rollout", &mut names.rollout),
            ("flags", &mut names.flags),
            ("reason", &mut names.reason),
        ] {
            let Some(v) = map.get(key) else {
                seen.push(slot.as_str());
                continue;
            };
            self.at_key(key, |w| {
                let Some(name) = w.string(v) else { return };
                if !is_header_name(name) || name.starts_with(':') {
                    w.error(ErrorKind::BadHeaderName {
                        name: name.to_owned(),
                    });
                } else if seen.contains(&name) {
                    w.error(ErrorKind::Duplicate {
                        name: name.to_owned(),
                    });
                } else {
                    *slot = name.to_owned();
                }
            });
            seen.push(v.as_str().unwrap_or_default());
        }
    }
}

/// The config's revision (see [`Config::digest`]): the hash of its canonical JSON text (keys
/// sorted, whitespace dropped, numbers as written), so that the same config gives the same
/// revision however a host or a person formats it. `overrides.keys` is left out: secrets must
/// not shape a value every response shows, and the Worker takes its keys from a secret, not
/// from the config, so both hosts name the same config alike.
pub(super) fn digest(value: &Value) -> u64 {
    let mut hashing = TextHash::default();
    write_kept(&mut hashing, value, &[], Some(("overrides", &["keys"])));
    hashing.finish()
}

/// Writes a value's canonical text without the object keys in `skip`, and, in the member
/// `inner.0`, without the keys in `inner.1`. A key is written unescaped: the objects given
/// here have known field names only, since an invalid config is never put in force.
pub(super) fn write_kept(
    out: &mut TextHash,
    value: &Value,
    skip: &[&str],
    inner: Option<(&str, &[&str])>,
) {
    use core::fmt::Write;
    // Writing to a hasher cannot fail.
    let Some(map) = value.as_object() else {
        let _ = write!(out, "{value}");
        return;
    };
    let _ = out.write_str("{");
    let kept = map.iter().filter(|(k, _)| !skip.contains(&k.as_str()));
    for (i, (key, value)) in kept.enumerate() {
        for part in [if i > 0 { ",\"" } else { "\"" }, key, "\":"] {
            let _ = out.write_str(part);
        }
        match inner {
            Some((name, inner_skip)) if name == key => write_kept(out, value, inner_skip, None),
            _ => {
                let _ = write!(out, "{value}");
            }
        }
    }
    let _ = out.write_str("}");
}
