//! The validated config: JSON in, a [`Config`] whose types carry the guarantees out, or every
//! error at once, each with its path.
//!
//! The raw stage is [`crate::json::Value`] (our own reader), walked by hand instead of
//! derived (`walk.rs`, with `rollout.rs` and `flag.rs`): a derived deserializer stops at the
//! first error and cannot name the path of an unknown field, while this walk reports all of them
//! (`rollouts.checkout.versions[1].weight: ...`). Rule operators are defined once, in
//! `operators.rs`.

mod access;
mod flag;
mod lifecycle;
mod operators;
mod plan;
mod rollout;
mod walk;

use crate::error::ConfigErrors;
use crate::guard::Guard;
use crate::hash::SaltState;
use crate::json::{self, Value};
use crate::schedule::Schedule;

pub use access::DEFAULT_OVERRIDE_HEADER;
pub use lifecycle::{FlagShape, Lifecycle, RolloutShape};
pub(crate) use operators::Op;
pub use operators::{OPERATOR_DEFS, OPERATORS, Operand, Operator};
use walk::Walk;

/// Default name of the request header that carries the chosen version.
pub const DEFAULT_VERSION_HEADER: &str = "x-rollout-version";
/// Default name of the request header that carries the matched rollout.
pub const DEFAULT_ROLLOUT_HEADER: &str = "x-rollout";
/// Default name of the request header that carries every flag value.
pub const DEFAULT_FLAGS_HEADER: &str = "x-rollout-flags";
/// Default name of the request and response header that says why a user was moved to the
/// stable version (`guard`, `aborted`); absent for everyone else.
pub const DEFAULT_REASON_HEADER: &str = "x-rollout-reason";
/// Keys longer than this are ignored, as if absent: a multi-kilobyte "user id" is not one.
pub const MAX_KEY_BYTES: usize = 256;
/// A config text from a live source (the filter's cluster, the Worker's KV or Durable Object)
/// larger than this is refused unparsed, on every host alike.
pub const MAX_CONFIG_BYTES: usize = 4 << 20;

/// Pseudo-headers a rule may read, with Envoy's names; the Worker maps its URL onto them.
pub(crate) const PSEUDO_HEADERS: &[&str] = &[":authority", ":path", ":method", ":scheme"];

/// A validated rollout config. Build one with [`Config::from_json`] (or [`Config::empty`]);
/// deciding with it never fails.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub(crate) user_key: Vec<Source>,
    pub(crate) headers: HeaderNames,
    /// Most specific match first, so the first rollout that matches a request is the one.
    pub(crate) rollouts: Vec<Rollout>,
    /// Sorted by name, which is also the order of the flags header.
    pub(crate) flags: Vec<Flag>,
    /// `metrics.responses`: whether hosts count and time every rollout's responses, or only
    /// a guarded one's (see [`Config::counts_responses`]).
    pub(crate) count_responses: bool,
    /// `metrics.flags`: whether hosts count flag evaluations by value.
    pub(crate) count_flags: bool,
    /// See [`Config::digest`].
    pub(crate) digest: u64,
    /// `overrides`: where signed tester tokens are read, and the keys that sign them.
    pub(crate) overrides: Option<Overrides>,
    /// `assign`: the cookie a keyless user is given a key in.
    pub(crate) assign: Option<Assign>,
}

/// Where override tokens are carried, and the keys they may be signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overrides {
    pub(crate) header: Option<String>,
    pub(crate) cookie: Option<String>,
    /// Key id and secret; ids are unique.
    pub(crate) keys: Vec<(String, Vec<u8>)>,
}

/// The cookie a keyless user gets a key in, and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Assign {
    pub(crate) cookie: String,
    pub(crate) max_age_s: u64,
    pub(crate) secure: bool,
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
    /// Request and response header with the reason a user was moved to stable.
    pub reason: String,
    /// Whether responses carry the contract (`headers.response`; the upstream request always
    /// does).
    pub response: bool,
}

impl Default for HeaderNames {
    /// The default names: [`DEFAULT_VERSION_HEADER`], [`DEFAULT_ROLLOUT_HEADER`],
    /// [`DEFAULT_FLAGS_HEADER`] and [`DEFAULT_REASON_HEADER`].
    fn default() -> HeaderNames {
        HeaderNames {
            version: DEFAULT_VERSION_HEADER.to_owned(),
            rollout: DEFAULT_ROLLOUT_HEADER.to_owned(),
            flags: DEFAULT_FLAGS_HEADER.to_owned(),
            reason: DEFAULT_REASON_HEADER.to_owned(),
            response: true,
        }
    }
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

#[derive(Debug, Clone, PartialEq)]
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
    /// Weights from a schedule instead of `versions` (whose weights are then 0).
    pub(crate) schedule: Option<Schedule>,
    /// Everyone to the stable version.
    pub(crate) aborted: bool,
    pub(crate) guard: Option<Guard>,
    /// See `rollout::revision`.
    pub(crate) revision: u64,
    /// `allow`: keys sent to a version (index), sorted by key for binary search.
    pub(crate) allow: Vec<(Vec<u8>, usize)>,
    /// `rules`: the first whose conditions all hold sends the request to its version.
    pub(crate) rules: Vec<Target>,
    /// Owner, description, created, expires: for people and `rollout lint`, not decisions.
    pub(crate) lifecycle: Lifecycle,
}

/// A rollout's rule: conditions, and the version (index) they send a request to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    pub(crate) when: Vec<Condition>,
    pub(crate) version: usize,
}

#[derive(Debug, Clone, PartialEq)]
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

#[derive(Debug, Clone, PartialEq)]
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
    /// Owner, description, created, expires: for people and `rollout lint`, not decisions.
    pub(crate) lifecycle: Lifecycle,
}

#[derive(Debug, Clone, PartialEq)]
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

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Condition {
    pub(crate) attribute: Source,
    pub(crate) op: Op,
}

impl Config {
    /// Parses and validates a JSON config, reporting every error found.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigErrors> {
        let value = json::parse(bytes).map_err(|e| ConfigErrors::new(vec![e]))?;
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

    /// The config with no rollouts and no flags, and the default header names: what `{}`
    /// validates to, for a host that has no config yet.
    pub fn empty() -> Config {
        Config {
            user_key: Vec::new(),
            headers: HeaderNames::default(),
            rollouts: Vec::new(),
            flags: Vec::new(),
            count_responses: true,
            count_flags: false,
            digest: walk::digest(&Value::Object(json::Object::default())),
            overrides: None,
            assign: None,
        }
    }

    /// The override keys (id, secret) the config lists.
    pub fn override_keys(&self) -> &[(String, Vec<u8>)] {
        self.overrides.as_ref().map_or(&[], |o| o.keys.as_slice())
    }

    /// Replaces the override keys, for a host that keeps secrets apart from the config (the
    /// Worker reads them from a secret binding, the filter may add the plugin
    /// configuration's). Without an `overrides` section there is nothing to replace: `false`.
    pub fn set_override_keys(&mut self, keys: Vec<(String, Vec<u8>)>) -> bool {
        match self.overrides.as_mut() {
            Some(o) => {
                o.keys = keys;
                true
            }
            None => false,
        }
    }

    /// Reads an object of key id -> secret for a host that keeps keys apart from the config
    /// (the filter's `override_keys`, the Worker's secret), with the config's checks and
    /// wording, each error under `path`: the good keys, and an error per bad one.
    pub fn read_override_keys(
        value: &Value,
        path: &str,
    ) -> (Vec<(String, Vec<u8>)>, Vec<crate::ConfigError>) {
        let mut walk = Walk::default();
        let keys = walk.at_key(path, |w| w.key_map(value));
        (keys, walk.errors)
    }

    /// Where the config reads override tokens: (header, cookie); `None` without `overrides`.
    pub fn override_carriers(&self) -> Option<(Option<&str>, Option<&str>)> {
        let o = self.overrides.as_ref()?;
        Some((o.header.as_deref(), o.cookie.as_deref()))
    }

    /// Whether the config reads override tokens at all.
    pub fn has_overrides(&self) -> bool {
        self.overrides.is_some()
    }

    /// The cookie keyless users get a key in (`assign.cookie`), if any.
    pub fn assign_cookie(&self) -> Option<&str> {
        self.assign.as_ref().map(|a| a.cookie.as_str())
    }

    /// Where the user key is looked for, in order.
    pub fn key_sources(&self) -> &[Source] {
        &self.user_key
    }

    /// The header names of the header contract.
    pub fn header_names(&self) -> &HeaderNames {
        &self.headers
    }

    /// The config's revision: FNV-1a 64 of its canonical JSON text (keys sorted, whitespace
    /// dropped, numbers as written), so every host names the same config alike however it
    /// was formatted. Hosts show it as [`Config::digest_text`].
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// [`Config::digest`] as 16 lowercase hex digits: the `rollout-config` entry of
    /// `Server-Timing`, Envoy's `rollout_config_info{hash}`, `rollout validate`.
    pub fn digest_text(&self) -> String {
        format!("{:016x}", self.digest)
    }

    /// Whether hosts count each flag's evaluations by value (`metrics.flags`).
    pub fn counts_flags(&self) -> bool {
        self.count_flags
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

#[cfg(test)]
mod tests {
    use super::Config;
    use crate::HostInputs;

    #[test]
    fn flags_come_out_sorted_by_name_whatever_order_the_config_lists_them_in() {
        let config = Config::from_json(
            br#"{"flags":{"zeta":{},"alpha":{},"Mid":{},"beta-2":{},"beta_1":{},"9":{}}}"#,
        )
        .unwrap();
        let names: Vec<&str> = config.flag_values().map(|(name, _)| name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names.len(), 6);
        assert_eq!(names, sorted);
        let decided = config.decide(&[("x", "y")][..], HostInputs::default());
        let flags: Vec<&str> = decided.flags.iter().map(|f| f.flag).collect();
        assert_eq!(flags, sorted);
    }

    #[test]
    fn rollouts_are_ordered_most_specific_first_and_equals_keep_name_order() {
        let v = r#""versions":[{"name":"a","weight":1}]"#;
        let text = format!(
            r#"{{"rollouts":{{
                "a":{{{v}}},
                "b":{{"match":{{"path_prefix":"/x"}},{v}}},
                "c":{{"match":{{"hosts":["h"]}},{v}}},
                "d":{{"match":{{"hosts":["h"],"path_prefix":"/long"}},{v}}},
                "e":{{"match":{{"path_prefix":"/yy"}},{v}}},
                "f":{{"match":{{"path_prefix":"/zz"}},{v}}},
                "g":{{"match":{{"hosts":["i"]}},{v}}}}}}}"#
        );
        let config = Config::from_json(text.as_bytes()).unwrap();
        let names: Vec<&str> = config.rollout_names().collect();
        assert_eq!(names, ["d", "c", "g", "e", "f", "b", "a"]);
        // Slots follow the same order.
        let slots: Vec<usize> = names
            .iter()
            .map(|n| config.slot_of(n, "a").unwrap())
            .collect();
        assert_eq!(slots, [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn empty_is_what_an_empty_object_validates_to() {
        let parsed = Config::from_json(b"{}").unwrap();
        let empty = Config::empty();
        assert_eq!(empty, parsed);
        // And it behaves the same: no rollout, no flags, the same contract headers.
        let request = [(":path", "/cart"), ("x-user-id", "user-42")];
        let (a, b) = (
            empty.decide(&request[..], HostInputs::default()),
            parsed.decide(&request[..], HostInputs::default()),
        );
        assert_eq!(a, b);
        let spoofed = [("x-rollout-version", "v9")];
        let (mut via_empty, mut via_parsed) = (Vec::new(), Vec::new());
        empty.apply_request_contract(&a, &spoofed[..], &mut via_empty);
        parsed.apply_request_contract(&b, &spoofed[..], &mut via_parsed);
        assert_eq!(via_empty, via_parsed);
        assert_eq!(empty.contract_names(), parsed.contract_names());
        // The walk starts from `Config::empty()`, so the equality above cannot see a wrong
        // default in it: check against the documented contract too.
        let names = empty.header_names();
        assert_eq!(
            [names.version.as_str(), &names.rollout, &names.flags],
            ["x-rollout-version", "x-rollout", "x-rollout-flags"]
        );
        assert!(empty.key_sources().is_empty());
        assert_eq!(empty.rollout_names().count(), 0);
        assert_eq!(empty.flag_values().count(), 0);
        assert_eq!(empty.n_slots(), 0);
    }

    #[test]
    fn a_schema_key_is_accepted_for_editors_and_must_be_a_string() {
        let with = Config::from_json(br#"{"$schema": "./docs/rollout.schema.json"}"#).unwrap();
        // The same config as `{}` but for its revision: the text differs.
        assert_ne!(with.digest(), Config::empty().digest());
        assert_eq!(
            Config { digest: 0, ..with },
            Config {
                digest: 0,
                ..Config::empty()
            }
        );
        let errors = Config::from_json(br#"{"$schema": 1}"#).unwrap_err();
        let lines: Vec<String> = errors.lines("").map(|l| l.to_string()).collect();
        assert_eq!(lines, ["$schema: expected a string, found a number"]);
    }

    #[test]
    fn the_revision_names_the_config_whatever_its_layout() {
        let a = Config::from_json(br#"{"flags": {"f": {"percentage": 12.5}}, "user_key": []}"#);
        let b = Config::from_json(
            b"{\n  \"user_key\" : [ ],\n  \"flags\":{\"f\":{\"percentage\":12.5}}\n}",
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.digest_text().len(), 16);
        assert_eq!(a.digest_text(), format!("{:016x}", b.digest()));
        // Any edit is a new revision, one that changes no decision too.
        let c = Config::from_json(br#"{"flags": {"f": {"percentage": 12.5, "owner": "x"}}}"#);
        assert_ne!(a.digest(), c.unwrap().digest());
        let d = Config::from_json(br#"{"flags": {"f": {"percentage": 12.6}}}"#).unwrap();
        assert_ne!(a.digest(), d.digest());
        assert_eq!(
            Config::empty().digest(),
            Config::from_json(b" { } ").unwrap().digest()
        );
        // Secrets are left out: the Worker's come from a secret, not the config.
        let secret = "k".repeat(32);
        let with_keys =
            format!(r#"{{"overrides": {{"header": "x-o", "keys": {{"k1": "{secret}"}}}}}}"#);
        let without = Config::from_json(br#"{"overrides": {"header": "x-o"}}"#).unwrap();
        let other = Config::from_json(br#"{"overrides": {"header": "x-p"}}"#).unwrap();
        let with_keys = Config::from_json(with_keys.as_bytes()).unwrap();
        assert_eq!(with_keys.digest(), without.digest());
        assert_ne!(other.digest(), without.digest());
    }

    #[test]
    fn flag_counting_is_opt_in() {
        assert!(!Config::empty().counts_flags());
        let on = Config::from_json(br#"{"metrics": {"flags": true}}"#).unwrap();
        assert!(on.counts_flags());
        let errors = Config::from_json(br#"{"metrics": {"flags": "yes"}}"#).unwrap_err();
        let lines: Vec<String> = errors.lines("").map(|l| l.to_string()).collect();
        assert_eq!(lines, ["metrics.flags: expected a boolean, found a string"]);
    }
}
