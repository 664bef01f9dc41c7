//! The validated config: JSON in, a [`Config`] whose types carry the guarantees out, or every
//! error at once, each with its path.
//!
//! The raw stage is `serde_json::Value`, walked by hand instead of derived: a derived
//! deserializer stops at the first error and cannot name the path of an unknown field,
//! while this walk reports all of them (`rollouts.checkout.versions[1].weight: ...`).

use serde_json::{Map, Value};

use crate::error::{ConfigError, ConfigErrors, ErrorKind};
use crate::hash::{SaltState, BUCKETS};
use crate::semver::Semver;

/// Default name of the request header that carries the chosen version.
pub const DEFAULT_VERSION_HEADER: &str = "x-rollout-version";
/// Default name of the request header that carries the matched rollout.
pub const DEFAULT_ROLLOUT_HEADER: &str = "x-rollout";
/// Default name of the request header that carries every flag value.
pub const DEFAULT_FLAGS_HEADER: &str = "x-rollout-flags";
/// Keys longer than this are ignored, as if absent: a multi-kilobyte "user id" is not one.
pub const MAX_KEY_BYTES: usize = 256;

/// Pseudo-headers a rule may read, with Envoy's names; the Worker maps its URL onto them.
pub const PSEUDO_HEADERS: &[&str] = &[":authority", ":path", ":method", ":scheme"];

/// The comparison operators of attribute rules.
pub const OPERATORS: &[&str] = &[
    "equals",
    "one_of",
    "not_one_of",
    "prefix",
    "gt",
    "gte",
    "lt",
    "lte",
    "semver_eq",
    "semver_gt",
    "semver_gte",
    "semver_lt",
    "semver_lte",
];

/// A validated rollout config. Build one with [`Config::from_json`]; deciding with it never
/// fails.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) user_key: Vec<Source>,
    pub(crate) headers: HeaderNames,
    /// Most specific match first, so the first rollout that matches a request is the one.
    pub(crate) rollouts: Vec<Rollout>,
    /// Sorted by name, which is also the order of the flags header.
    pub(crate) flags: Vec<Flag>,
}

/// The header names of the header contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderNames {
    /// Request and response header with the chosen version.
    pub version: String,
    /// Request header with the matched rollout's name.
    pub rollout: String,
    /// Request header with every flag value.
    pub flags: String,
}

/// Where a value comes from in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A request header, by lowercase name.
    Header(String),
    /// A cookie, by name.
    Cookie(String),
    /// The user key (only in rules).
    Key,
}

#[derive(Debug, Clone)]
pub(crate) struct Rollout {
    pub(crate) name: String,
    pub(crate) salt: SaltState,
    /// Lowercase hosts without port; empty matches every host.
    pub(crate) hosts: Vec<String>,
    pub(crate) path_prefix: String,
    pub(crate) versions: Vec<Version>,
    pub(crate) stable_idx: usize,
    pub(crate) no_key: NoKey,
    /// Slot of the first version; see [`crate::VersionChoice::slot`].
    pub(crate) first_slot: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Version {
    pub(crate) name: String,
    pub(crate) weight: u32,
}

/// What a rollout does with a request that has no user key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoKey {
    /// Send it to the stable version.
    Stable,
    /// Pick by weight from the host's entropy (not sticky); stable if the host gave none.
    Random,
}

#[derive(Debug, Clone)]
pub(crate) struct Flag {
    pub(crate) name: String,
    pub(crate) salt: SaltState,
    pub(crate) enabled: bool,
    pub(crate) default_value: String,
    pub(crate) variants: Vec<Version>,
    /// Sorted, for binary search.
    pub(crate) allow: Vec<Vec<u8>>,
    /// Sorted, for binary search.
    pub(crate) deny: Vec<Vec<u8>>,
    pub(crate) rules: Vec<Rule>,
    /// Share of users in the rollout, in 1/1,000,000.
    pub(crate) percentage_ppm: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) when: Vec<Condition>,
    pub(crate) serve: Serve,
}

/// The value a rule serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Serve {
    Default,
    Variant(usize),
}

#[derive(Debug, Clone)]
pub(crate) struct Condition {
    pub(crate) attribute: Source,
    pub(crate) op: Op,
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Equals(String),
    OneOf(Vec<String>),
    NotOneOf(Vec<String>),
    Prefix(String),
    Number(Cmp, f64),
    Semver(Cmp, Semver),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Cmp {
    pub(crate) fn holds(self, ordering: core::cmp::Ordering) -> bool {
        use core::cmp::Ordering::*;
        match self {
            Cmp::Eq => ordering == Equal,
            Cmp::Gt => ordering == Greater,
            Cmp::Gte => ordering != Less,
            Cmp::Lt => ordering == Less,
            Cmp::Lte => ordering != Greater,
        }
    }
}

impl Config {
    /// Parses and validates a JSON config, reporting every error found.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigErrors> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            ConfigErrors::new(vec![ConfigError {
                path: String::new(),
                kind: ErrorKind::Syntax {
                    message: strip_position(&e.to_string()),
                    line: e.line(),
                    column: e.column(),
                },
            }])
        })?;
        Config::from_value(&value)
    }

    /// Validates an already parsed JSON value, reporting every error found.
    pub fn from_value(value: &Value) -> Result<Config, ConfigErrors> {
        let mut walk = Walk::default();
        let config = walk.config(value);
        if walk.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors::new(walk.errors))
        }
    }

    /// Where the user key is looked for, in order.
    pub fn key_sources(&self) -> &[Source] {
        &self.user_key
    }

    /// The header names of the header contract.
    pub fn header_names(&self) -> &HeaderNames {
        &self.headers
    }

    /// Every (rollout, version) pair, in config order of versions; hosts use it to define
    /// per-version metrics up front.
    pub fn versions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rollouts.iter().flat_map(|r| {
            r.versions
                .iter()
                .map(move |v| (r.name.as_str(), v.name.as_str()))
        })
    }

    /// The (rollout, version) names of a slot; see [`crate::VersionChoice::slot`].
    pub fn slot_names(&self, slot: usize) -> Option<(&str, &str)> {
        self.versions().nth(slot)
    }

    /// The number of (rollout, version) slots.
    pub fn n_slots(&self) -> usize {
        self.rollouts.iter().map(|r| r.versions.len()).sum()
    }

    /// The rollout names, most specific match first.
    pub fn rollout_names(&self) -> impl Iterator<Item = &str> {
        self.rollouts.iter().map(|r| r.name.as_str())
    }

    /// Every flag with its possible values (the default value first), sorted by flag name.
    pub fn flag_values(&self) -> impl Iterator<Item = (&str, Vec<&str>)> {
        self.flags.iter().map(|f| {
            let mut values = vec![f.default_value.as_str()];
            for v in &f.variants {
                if v.name != f.default_value {
                    values.push(v.name.as_str());
                }
            }
            (f.name.as_str(), values)
        })
    }

    /// The configured weight of each version of a rollout, in config order.
    pub fn weights(&self, rollout: &str) -> Option<Vec<(&str, u32)>> {
        let rollout = self.rollouts.iter().find(|r| r.name == rollout)?;
        Some(
            rollout
                .versions
                .iter()
                .map(|v| (v.name.as_str(), v.weight))
                .collect(),
        )
    }

    /// The share of users a flag serves a variant to, in 1/1,000,000 (0 when the flag is
    /// switched off), and its variant weights; rules and lists aside.
    pub fn flag_split(&self, flag: &str) -> Option<(u32, Vec<(&str, u32)>)> {
        let flag = self.flags.iter().find(|f| f.name == flag)?;
        let variants = flag
            .variants
            .iter()
            .map(|v| (v.name.as_str(), v.weight))
            .collect();
        let share = if flag.enabled { flag.percentage_ppm } else { 0 };
        Some((share, variants))
    }
}

/// serde_json appends " at line L column C"; the error carries those separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message.get(..at).unwrap_or(message).to_owned(),
        None => message.to_owned(),
    }
}

fn json_type(value: &Value) -> &'static str {
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
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// RFC 9110 token characters, lowercase only, since Envoy and Workers lowercase header names.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

/// RFC 6265 cookie names are tokens; case matters.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A hand-written walk over the JSON that collects every error with its path.
#[derive(Default)]
struct Walk {
    errors: Vec<ConfigError>,
    path: String,
}

impl Walk {
    fn error(&mut self, kind: ErrorKind) {
        self.errors.push(ConfigError {
            path: self.path.clone(),
            kind,
        });
    }

    /// Runs `f` with `.key` (or `key` at the root) appended to the path.
    fn at_key<T>(&mut self, key: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        let len = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(key);
        let out = f(self);
        self.path.truncate(len);
        out
    }

    /// Runs `f` with `[idx]` appended to the path.
    fn at_index<T>(&mut self, idx: usize, f: impl FnOnce(&mut Self) -> T) -> T {
        let len = self.path.len();
        self.path.push_str(&format!("[{idx}]"));
        let out = f(self);
        self.path.truncate(len);
        out
    }

    /// The value as an object whose keys are all in `allowed`; unknown keys are reported.
    fn object<'v>(
        &mut self,
        value: &'v Value,
        allowed: &'static [&'static str],
    ) -> Option<&'v Map<String, Value>> {
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
    fn required<'v>(&mut self, map: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
        let value = map.get(key);
        if value.is_none() {
            self.at_key(key, |w| w.error(ErrorKind::MissingField));
        }
        value
    }

    fn string<'v>(&mut self, value: &'v Value) -> Option<&'v str> {
        let s = value.as_str();
        if s.is_none() {
            self.error(ErrorKind::WrongType {
                expected: "a string",
                found: json_type(value),
            });
        }
        s
    }

    fn array<'v>(&mut self, value: &'v Value) -> Option<&'v Vec<Value>> {
        let a = value.as_array();
        if a.is_none() {
            self.error(ErrorKind::WrongType {
                expected: "an array",
                found: json_type(value),
            });
        }
        a
    }

    fn boolean(&mut self, value: &Value) -> Option<bool> {
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
    fn name(&mut self, value: &Value) -> Option<String> {
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
    fn string_list(&mut self, value: &Value) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let Some(items) = self.array(value) else {
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            self.at_index(i, |w| {
                let Some(s) = w.string(item) else { return };
                if out.iter().any(|seen| seen == s) {
                    w.error(ErrorKind::Duplicate { name: s.to_owned() });
                } else {
                    out.push(s.to_owned());
                }
            });
        }
        out
    }

    fn source(&mut self, value: &Value, allow_key: bool) -> Option<Source> {
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

    fn config(&mut self, value: &Value) -> Config {
        let mut config = Config {
            user_key: Vec::new(),
            headers: HeaderNames {
                version: DEFAULT_VERSION_HEADER.to_owned(),
                rollout: DEFAULT_ROLLOUT_HEADER.to_owned(),
                flags: DEFAULT_FLAGS_HEADER.to_owned(),
            },
            rollouts: Vec::new(),
            flags: Vec::new(),
        };
        let Some(map) = self.object(value, &["user_key", "headers", "rollouts", "flags"]) else {
            return config;
        };
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
        // Most specific first: a host list beats none, then the longer prefix wins.
        config
            .rollouts
            .sort_by_key(|r| (r.hosts.is_empty(), core::cmp::Reverse(r.path_prefix.len())));
        config.flags.sort_unstable_by(|a, b| a.name.cmp(&b.name));
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
        let Some(map) = self.object(value, &["version", "rollout", "flags"]) else {
            return;
        };
        let mut seen: Vec<&str> = Vec::new();
        for (key, slot) in [
            ("version", &mut names.version),
            ("rollout", &mut names.rollout),
            ("flags", &mut names.flags),
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

    fn rollout(&mut self, name: &str, value: &Value) -> Option<Rollout> {
        let map = self.object(value, &["match", "salt", "stable", "no_key", "versions"])?;
        let mut rollout = Rollout {
            name: name.to_owned(),
            salt: SaltState::new("rollout", name),
            hosts: Vec::new(),
            path_prefix: "/".to_owned(),
            versions: Vec::new(),
            stable_idx: 0,
            no_key: NoKey::Stable,
            first_slot: 0,
        };
        let mut ok = true;
        if let Some(v) = map.get("match") {
            ok &= self.at_key("match", |w| w.route_match(v, &mut rollout));
        }
        if let Some(v) = map.get("salt") {
            match self.at_key("salt", |w| w.string(v)) {
                Some(salt) => rollout.salt = SaltState::new("rollout", salt),
                None => ok = false,
            }
        }
        if let Some(v) = map.get("no_key") {
            self.at_key("no_key", |w| match w.string(v) {
                Some("stable") => rollout.no_key = NoKey::Stable,
                Some("random") => rollout.no_key = NoKey::Random,
                Some(other) => {
                    w.error(ErrorKind::BadOperand {
                        expected: "\"stable\" or \"random\"",
                        found: format!("{other:?}"),
                    });
                    ok = false;
                }
                None => ok = false,
            });
        }
        match self.required(map, "versions") {
            Some(v) => {
                let versions = self.at_key("versions", |w| w.weighted_list(v));
                match versions {
                    Some(versions) => rollout.versions = versions,
                    None => ok = false,
                }
            }
            None => ok = false,
        }
        if let Some(v) = map.get("stable") {
            self.at_key("stable", |w| {
                let Some(stable) = w.string(v) else {
                    ok = false;
                    return;
                };
                match rollout.versions.iter().position(|ver| ver.name == stable) {
                    Some(idx) => rollout.stable_idx = idx,
                    None if rollout.versions.is_empty() => ok = false,
                    None => {
                        w.error(ErrorKind::UnknownReference {
                            name: stable.to_owned(),
                            what: "version",
                        });
                        ok = false;
                    }
                }
            });
        }
        ok.then_some(rollout)
    }

    fn route_match(&mut self, value: &Value, rollout: &mut Rollout) -> bool {
        let Some(map) = self.object(value, &["hosts", "path_prefix"]) else {
            return false;
        };
        let errors_before = self.errors.len();
        if let Some(v) = map.get("hosts") {
            self.at_key("hosts", |w| {
                let hosts = w.string_list(v);
                for (i, host) in hosts.iter().enumerate() {
                    let valid = !host.is_empty()
                        && host.len() <= 253
                        && host.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                        });
                    if !valid {
                        w.at_index(i, |w| w.error(ErrorKind::BadHost { host: host.clone() }));
                    }
                }
                rollout.hosts = hosts;
            });
        }
        if let Some(v) = map.get("path_prefix") {
            self.at_key("path_prefix", |w| {
                let Some(prefix) = w.string(v) else { return };
                if prefix.starts_with('/') {
                    rollout.path_prefix = prefix.to_owned();
                } else {
                    w.error(ErrorKind::BadOperand {
                        expected: "a path starting with '/'",
                        found: format!("{prefix:?}"),
                    });
                }
            });
        }
        self.errors.len() == errors_before
    }

    /// Two rollouts with the same prefix and a common host (or both without hosts) would
    /// claim the same requests, and which one wins would be arbitrary.
    fn check_overlaps(&mut self, rollouts: &[Rollout]) {
        for (i, later) in rollouts.iter().enumerate() {
            let earlier = rollouts.get(..i).unwrap_or_default();
            let clash = earlier.iter().find(|e| {
                e.path_prefix == later.path_prefix
                    && ((e.hosts.is_empty() && later.hosts.is_empty())
                        || e.hosts.iter().any(|h| later.hosts.contains(h)))
            });
            if let Some(other) = clash {
                let other = other.name.clone();
                self.at_key(&later.name, |w| {
                    w.at_key("match", |w| w.error(ErrorKind::OverlappingMatch { other }))
                });
            }
        }
    }

    /// `[{"name": ..., "weight": ...}]` for versions and variants; `None` if anything is wrong.
    fn weighted_list(&mut self, value: &Value) -> Option<Vec<Version>> {
        let items = self.array(value)?;
        if items.is_empty() {
            self.error(ErrorKind::Empty);
            return None;
        }
        let errors_before = self.errors.len();
        let mut out: Vec<Version> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            self.at_index(i, |w| {
                let Some(map) = w.object(item, &["name", "weight"]) else {
                    return;
                };
                let name = w
                    .required(map, "name")
                    .and_then(|v| w.at_key("name", |w| w.name(v)));
                let weight = w
                    .required(map, "weight")
                    .and_then(|v| w.at_key("weight", |w| w.weight(v)));
                if let Some(name) = &name {
                    if out.iter().any(|o| &o.name == name) {
                        w.at_key("name", |w| {
                            w.error(ErrorKind::Duplicate { name: name.clone() })
                        });
                    }
                }
                if let (Some(name), Some(weight)) = (name, weight) {
                    out.push(Version { name, weight });
                }
            });
        }
        if !out.is_empty() && out.iter().all(|v| v.weight == 0) {
            self.error(ErrorKind::AllWeightsZero);
        }
        (self.errors.len() == errors_before).then_some(out)
    }

    fn weight(&mut self, value: &Value) -> Option<u32> {
        const RANGE: &str = "an integer weight from 0 to 1000000";
        let Some(n) = value.as_number() else {
            self.error(ErrorKind::WrongType {
                expected: "an integer",
                found: json_type(value),
            });
            return None;
        };
        match n.as_u64() {
            Some(w) if w <= 1_000_000 => Some(w as u32),
            _ => {
                self.error(ErrorKind::OutOfRange {
                    expected: RANGE,
                    found: n.to_string(),
                });
                None
            }
        }
    }

    fn flag(&mut self, name: &str, value: &Value) -> Option<Flag> {
        let map = self.object(
            value,
            &[
                "enabled",
                "salt",
                "default",
                "variants",
                "allow",
                "deny",
                "rules",
                "percentage",
            ],
        )?;
        let errors_before = self.errors.len();
        let mut flag = Flag {
            name: name.to_owned(),
            salt: SaltState::new("flag", name),
            enabled: true,
            default_value: "off".to_owned(),
            variants: vec![Version {
                name: "on".to_owned(),
                weight: 1,
            }],
            allow: Vec::new(),
            deny: Vec::new(),
            rules: Vec::new(),
            percentage_ppm: BUCKETS as u32,
        };
        if let Some(v) = map.get("enabled") {
            flag.enabled = self.at_key("enabled", |w| w.boolean(v)).unwrap_or(true);
        }
        if let Some(v) = map.get("salt") {
            if let Some(salt) = self.at_key("salt", |w| w.string(v)) {
                flag.salt = SaltState::new("flag", salt);
            }
        }
        if let Some(v) = map.get("default") {
            if let Some(default) = self.at_key("default", |w| w.name(v)) {
                flag.default_value = default;
            }
        }
        if let Some(v) = map.get("variants") {
            if let Some(variants) = self.at_key("variants", |w| w.weighted_list(v)) {
                flag.variants = variants;
            }
        }
        for (key, list) in [("allow", &mut flag.allow), ("deny", &mut flag.deny)] {
            if let Some(v) = map.get(key) {
                let keys = self.at_key(key, |w| w.string_list(v));
                *list = keys.into_iter().map(String::into_bytes).collect();
                list.sort_unstable();
            }
        }
        if let Some(v) = map.get("percentage") {
            if let Some(ppm) = self.at_key("percentage", |w| w.percentage(v)) {
                flag.percentage_ppm = ppm;
            }
        }
        if let Some(v) = map.get("rules") {
            self.at_key("rules", |w| {
                let Some(items) = w.array(v) else { return };
                for (i, item) in items.iter().enumerate() {
                    if let Some(rule) = w.at_index(i, |w| w.rule(item, &flag)) {
                        flag.rules.push(rule);
                    }
                }
            });
        }
        (self.errors.len() == errors_before).then_some(flag)
    }

    /// A percentage with at most 4 decimals, as parts per million.
    fn percentage(&mut self, value: &Value) -> Option<u32> {
        const RANGE: &str = "a percentage from 0 to 100 with at most 4 decimals";
        let Some(n) = value.as_number() else {
            self.error(ErrorKind::WrongType {
                expected: "a number",
                found: json_type(value),
            });
            return None;
        };
        // Parsing and this arithmetic are IEEE-754 exact operations, identical on every host;
        // the result is an integer, and deciding uses only that integer.
        let scaled = n.as_f64().map(|p| p * 10_000.0);
        match scaled {
            Some(s) if (0.0..=1_000_000.0).contains(&s) && (s - s.round()).abs() < 1e-6 => {
                Some(s.round() as u32)
            }
            _ => {
                self.error(ErrorKind::OutOfRange {
                    expected: RANGE,
                    found: n.to_string(),
                });
                None
            }
        }
    }

    fn rule(&mut self, value: &Value, flag: &Flag) -> Option<Rule> {
        let map = self.object(value, &["when", "serve"])?;
        let errors_before = self.errors.len();
        let mut when = Vec::new();
        if let Some(v) = self.required(map, "when") {
            self.at_key("when", |w| {
                let Some(items) = w.array(v) else { return };
                if items.is_empty() {
                    w.error(ErrorKind::Empty);
                }
                for (i, item) in items.iter().enumerate() {
                    if let Some(c) = w.at_index(i, |w| w.condition(item)) {
                        when.push(c);
                    }
                }
            });
        }
        let serve = self.required(map, "serve").and_then(|v| {
            self.at_key("serve", |w| {
                let name = w.string(v)?;
                if let Some(idx) = flag.variants.iter().position(|var| var.name == name) {
                    Some(Serve::Variant(idx))
                } else if name == flag.default_value {
                    Some(Serve::Default)
                } else {
                    w.error(ErrorKind::UnknownReference {
                        name: name.to_owned(),
                        what: "variant or default value",
                    });
                    None
                }
            })
        });
        if self.errors.len() != errors_before {
            return None;
        }
        serve.map(|serve| Rule { when, serve })
    }

    fn condition(&mut self, value: &Value) -> Option<Condition> {
        let map = self.object(value, &["attribute", "op", "value", "values"])?;
        let attribute = self
            .required(map, "attribute")
            .and_then(|v| self.at_key("attribute", |w| w.source(v, true)));
        let op_name = self
            .required(map, "op")
            .and_then(|v| self.at_key("op", |w| w.string(v)))?;
        let op = match op_name {
            "one_of" | "not_one_of" => {
                let values = self
                    .required(map, "values")
                    .map(|v| self.at_key("values", |w| w.string_list(v)));
                if map.contains_key("value") {
                    self.at_key("value", |w| {
                        w.error(ErrorKind::UnknownField {
                            expected: &["attribute", "op", "values"],
                        })
                    });
                }
                let values = values?;
                if op_name == "one_of" {
                    Op::OneOf(values)
                } else {
                    Op::NotOneOf(values)
                }
            }
            "equals" | "prefix" | "gt" | "gte" | "lt" | "lte" | "semver_eq" | "semver_gt"
            | "semver_gte" | "semver_lt" | "semver_lte" => {
                if map.contains_key("values") {
                    self.at_key("values", |w| {
                        w.error(ErrorKind::UnknownField {
                            expected: &["attribute", "op", "value"],
                        })
                    });
                }
                let v = self.required(map, "value")?;
                self.at_key("value", |w| w.operand(op_name, v))?
            }
            other => {
                self.at_key("op", |w| {
                    w.error(ErrorKind::UnknownOperator {
                        op: other.to_owned(),
                    })
                });
                return None;
            }
        };
        Some(Condition {
            attribute: attribute?,
            op,
        })
    }

    fn operand(&mut self, op: &str, value: &Value) -> Option<Op> {
        let cmp = |suffix: &str| match suffix {
            "eq" => Cmp::Eq,
            "gt" => Cmp::Gt,
            "gte" => Cmp::Gte,
            "lt" => Cmp::Lt,
            _ => Cmp::Lte,
        };
        if let Some(suffix) = op.strip_prefix("semver_") {
            let text = self.string(value)?;
            match Semver::parse(text) {
                Some(v) => Some(Op::Semver(cmp(suffix), v)),
                None => {
                    self.error(ErrorKind::BadOperand {
                        expected: "a semantic version like 1.2.3",
                        found: format!("{text:?}"),
                    });
                    None
                }
            }
        } else if matches!(op, "gt" | "gte" | "lt" | "lte") {
            match value.as_f64() {
                Some(n) => Some(Op::Number(cmp(op), n)),
                None => {
                    self.error(ErrorKind::BadOperand {
                        expected: "a number",
                        found: value.to_string(),
                    });
                    None
                }
            }
        } else {
            let text = self.string(value)?.to_owned();
            Some(if op == "prefix" {
                Op::Prefix(text)
            } else {
                Op::Equals(text)
            })
        }
    }
}
