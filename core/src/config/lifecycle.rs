//! Lifecycle fields of flags and rollouts (`owner`, `description`, `created`, `expires`):
//! validated and kept, never read by a decision, and the read-only views `rollout lint`
//! judges a config by.

use crate::json::{Object, Value};

use super::walk::Walk;
use super::{Config, Serve};
use crate::error::ErrorKind;
use crate::schedule::parse_time;

/// The lifecycle fields, which every object that has them (flags, rollouts) allows.
pub(super) const FIELDS: [&str; 4] = ["owner", "description", "created", "expires"];

const DATE: &str = "an RFC 3339 date like 2026-11-24 or a time like 2026-11-24T10:00:00Z";

/// Who owns a flag or rollout, what it is for, and when it was made and should be gone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// `owner`: a team or person to ask.
    pub owner: Option<String>,
    /// `description`: what it is for.
    pub description: Option<String>,
    /// `created`, Unix milliseconds (a date is its midnight UTC).
    pub created_ms: Option<u64>,
    /// `expires`, Unix milliseconds (a date is its midnight UTC).
    pub expires_ms: Option<u64>,
}

impl Walk {
    /// The lifecycle fields of `map`, each error at its field's path.
    pub(super) fn lifecycle(&mut self, map: &Object) -> Lifecycle {
        let mut out = Lifecycle::default();
        for (key, slot) in [
            ("owner", &mut out.owner),
            ("description", &mut out.description),
        ] {
            if let Some(v) = map.get(key) {
                *slot = self.at_key(key, |w| w.string(v)).map(str::to_owned);
            }
        }
        for (key, slot) in [
            ("created", &mut out.created_ms),
            ("expires", &mut out.expires_ms),
        ] {
            if let Some(v) = map.get(key) {
                *slot = self.at_key(key, |w| w.date(v));
            }
        }
        if let (Some(created), Some(expires)) = (out.created_ms, out.expires_ms)
            && expires < created
        {
            self.at_key("expires", |w| {
                w.error(ErrorKind::OutOfRange {
                    expected: "a time no earlier than created",
                    found: map.get("expires").map(Value::to_string).unwrap_or_default(),
                })
            });
        }
        out
    }

    /// An RFC 3339 date (midnight UTC) or time, as Unix milliseconds.
    fn date(&mut self, value: &Value) -> Option<u64> {
        let text = self.string(value)?;
        let ms = if text.len() == 10 {
            parse_time(&format!("{text}T00:00:00Z"))
        } else {
            parse_time(text)
        };
        if ms.is_none() {
            self.error(ErrorKind::BadOperand {
                expected: DATE,
                found: format!("{text:?}"),
            });
        }
        ms
    }
}

/// What `rollout lint` needs of a flag.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagShape<'c> {
    /// The flag's name.
    pub name: &'c str,
    /// `enabled` (`false`: the kill switch is pulled).
    pub enabled: bool,
    /// `percentage` in parts per million.
    pub percentage_ppm: u32,
    /// The value of users who are not in.
    pub default_value: &'c str,
    /// The variants and their weights.
    pub variants: Vec<(&'c str, u32)>,
    /// How many keys the allow and deny lists hold.
    pub allow: usize,
    /// See `allow`.
    pub deny: usize,
    /// The value each rule serves, in order.
    pub rule_values: Vec<&'c str>,
    /// Owner, description, created, expires.
    pub lifecycle: &'c Lifecycle,
}

/// What `rollout lint` needs of a rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutShape<'c> {
    /// The rollout's name.
    pub name: &'c str,
    /// The versions, in config order.
    pub versions: Vec<&'c str>,
    /// The stable version.
    pub stable: &'c str,
    /// The versions an allow list or a rule names (reached whatever their weight).
    pub targeted: Vec<&'c str>,
    /// `aborted`.
    pub aborted: bool,
    /// Owner, description, created, expires.
    pub lifecycle: &'c Lifecycle,
}

impl Config {
    /// Every flag as `rollout lint` sees it, sorted by name.
    pub fn flag_shapes(&self) -> impl Iterator<Item = FlagShape<'_>> {
        self.flags.iter().map(|f| FlagShape {
            name: &f.name,
            enabled: f.enabled,
            percentage_ppm: f.percentage_ppm,
            default_value: &f.default_value,
            variants: f
                .variants
                .iter()
                .map(|v| (v.name.as_str(), v.weight))
                .collect(),
            allow: f.allow.len(),
            deny: f.deny.len(),
            rule_values: f
                .rules
                .iter()
                .map(|r| match r.serve {
                    Serve::Variant(i) => f.variants.get(i).map_or("", |v| v.name.as_str()),
                    Serve::Default => f.default_value.as_str(),
                })
                .collect(),
            lifecycle: &f.lifecycle,
        })
    }

    /// Every rollout as `rollout lint` sees it, most specific match first (the order of
    /// slots, see [`Config::shares_at`]).
    pub fn rollout_shapes(&self) -> impl Iterator<Item = RolloutShape<'_>> {
        self.rollouts.iter().map(|r| {
            let name = |i: usize| r.versions.get(i).map_or("", |v| v.name.as_str());
            let mut targeted: Vec<&str> = r.allow.iter().map(|(_, i)| name(*i)).collect();
            targeted.extend(r.rules.iter().map(|t| name(t.version)));
            targeted.sort_unstable();
            targeted.dedup();
            RolloutShape {
                name: &r.name,
                versions: r.versions.iter().map(|v| v.name.as_str()).collect(),
                stable: name(r.stable_idx),
                targeted,
                aborted: r.aborted,
                lifecycle: &r.lifecycle,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, HostInputs};

    fn errors(text: &str) -> Vec<String> {
        Config::from_json(text.as_bytes())
            .err()
            .map(|e| e.lines("").map(|l| l.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn lifecycle_fields_are_kept_with_dates_as_midnight_utc_or_times() {
        let config = Config::from_json(
            br#"{"flags": {"f": {"owner": "team-cart", "description": "new cart",
                  "created": "2026-11-24", "expires": "2026-12-01T12:30:00+01:00"}},
                 "rollouts": {"r": {"versions": [{"name": "a", "weight": 1}],
                  "owner": "team-checkout", "created": "2026-01-02T03:04:05Z"}}}"#,
        )
        .unwrap();
        let flag = config.flag_shapes().next().unwrap();
        assert_eq!(flag.lifecycle.owner.as_deref(), Some("team-cart"));
        assert_eq!(flag.lifecycle.description.as_deref(), Some("new cart"));
        assert_eq!(
            flag.lifecycle.created_ms,
            crate::parse_time("2026-11-24T00:00:00Z")
        );
        assert_eq!(
            flag.lifecycle.expires_ms,
            crate::parse_time("2026-12-01T11:30:00Z")
        );
        let rollout = config.rollout_shapes().next().unwrap();
        assert_eq!(rollout.lifecycle.owner.as_deref(), Some("team-checkout"));
        assert_eq!(
            rollout.lifecycle.created_ms,
            crate::parse_time("2026-01-02T03:04:05Z")
        );
        assert_eq!(rollout.lifecycle.expires_ms, None);
    }

    #[test]
    fn lifecycle_errors_name_their_path() {
        assert_eq!(
            errors(
                r#"{"flags": {"new-checkout": {"expires": "next week", "owner": 7,
                    "created": "2026-13-01"}},
                   "rollouts": {"r": {"versions": [{"name": "a", "weight": 1}],
                    "description": ["x"], "created": "2026-11-24", "expires": "2026-11-23"}}}"#
            ),
            [
                "rollouts.r.description: expected a string, found an array",
                "rollouts.r.expires: expected a time no earlier than created, found \"2026-11-23\"",
                "flags.new-checkout.owner: expected a string, found a number",
                "flags.new-checkout.created: expected an RFC 3339 date like 2026-11-24 or a time \
                 like 2026-11-24T10:00:00Z, found \"2026-13-01\"",
                "flags.new-checkout.expires: expected an RFC 3339 date like 2026-11-24 or a time \
                 like 2026-11-24T10:00:00Z, found \"next week\"",
            ]
        );
    }

    #[test]
    fn lifecycle_fields_change_no_decision_and_no_revision() {
        let plain = r#"{"rollouts": {"r": {"versions": [{"name": "a", "weight": 1},
                        {"name": "b", "weight": 1}]}}, "flags": {"f": {"percentage": 50}}}"#;
        let with = r#"{"rollouts": {"r": {"versions": [{"name": "a", "weight": 1},
                        {"name": "b", "weight": 1}], "owner": "o", "description": "d",
                        "created": "2026-11-01", "expires": "2026-12-01"}},
                       "flags": {"f": {"percentage": 50, "owner": "o", "expires": "2027-01-01"}}}"#;
        let (plain, with) = (
            Config::from_json(plain.as_bytes()).unwrap(),
            Config::from_json(with.as_bytes()).unwrap(),
        );
        assert_eq!(
            plain.rollouts.first().map(|r| r.revision),
            with.rollouts.first().map(|r| r.revision)
        );
        let keyed = |mut c: Config| {
            c.user_key = vec![crate::Source::Header("x-user-id".to_owned())];
            c
        };
        let (plain_keyed, with_keyed) = (keyed(plain.clone()), keyed(with));
        for i in 0..200 {
            let key = format!("user-{i}");
            let request = [("x-user-id", key.as_str())];
            assert_eq!(
                plain_keyed.decide(&request[..], HostInputs::default()),
                with_keyed.decide(&request[..], HostInputs::default())
            );
        }
        // Any other edit of the rollout is a new revision.
        let salted = Config::from_json(
            br#"{"rollouts": {"r": {"versions": [{"name": "a", "weight": 1},
                 {"name": "b", "weight": 1}], "salt": "x"}}}"#,
        )
        .unwrap();
        assert_ne!(
            plain.rollouts.first().map(|r| r.revision),
            salted.rollouts.first().map(|r| r.revision)
        );
    }

    #[test]
    fn shapes_show_targeted_versions_and_rule_values() {
        let config = Config::from_json(
            br#"{"rollouts": {"r": {"versions": [{"name": "a", "weight": 1}, {"name": "b", "weight": 0},
                   {"name": "c", "weight": 0}], "allow": {"b": ["k"]}}},
                 "flags": {"f": {"enabled": false, "percentage": 0, "allow": ["x", "y"],
                   "variants": [{"name": "red", "weight": 1}, {"name": "blue", "weight": 0}],
                   "rules": [{"when": [{"attribute": "key", "op": "equals", "value": "z"}], "serve": "blue"},
                             {"when": [{"attribute": "key", "op": "equals", "value": "w"}], "serve": "off"}]}}}"#,
        )
        .unwrap();
        let r = config.rollout_shapes().next().unwrap();
        assert_eq!(
            (r.versions.as_slice(), r.targeted.as_slice()),
            (&["a", "b", "c"][..], &["b"][..])
        );
        assert_eq!(r.stable, "a");
        let f = config.flag_shapes().next().unwrap();
        assert!(!f.enabled);
        assert_eq!((f.percentage_ppm, f.allow, f.deny), (0, 2, 0));
        assert_eq!(f.rule_values, ["blue", "off"]);
        assert_eq!(f.variants, [("red", 1), ("blue", 0)]);
    }
}
