//! Lowering of flags: switches, variants, allow and deny lists, percentage, and rules with
//! their conditions (each operator's argument is lowered by its entry in `operators.rs`).

use crate::json::Value;

use super::operators::{OPERATORS, Operator};
use super::walk::{Walk, json_type};
use super::{Condition, Flag, Rule, Serve, Version};
use crate::error::ErrorKind;
use crate::hash::{BUCKETS, SaltState};

impl Walk {
    pub(super) fn flag(&mut self, name: &str, value: &Value) -> Option<Flag> {
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
                "owner",
                "description",
                "created",
                "expires",
            ],
        )?;
        let errors_before = self.errors.len();
        let lifecycle = self.lifecycle(map);
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
            lifecycle,
        };
        if let Some(v) = map.get("enabled") {
            flag.enabled = self.at_key("enabled", |w| w.boolean(v)).unwrap_or(true);
        }
        if let Some(v) = map.get("salt")
            && let Some(salt) = self.at_key("salt", |w| w.string(v))
        {
            flag.salt = SaltState::new("flag", salt);
        }
        // Whether the values a rule may serve are known: if `default` or `variants` is wrong,
        // a rule naming a value would be reported as naming an unknown one, which it may not.
        let mut values_known = true;
        if let Some(v) = map.get("default") {
            match self.at_key("default", |w| w.name(v)) {
                Some(default) => flag.default_value = default,
                None => values_known = false,
            }
        }
        if let Some(v) = map.get("variants") {
            match self.at_key("variants", |w| w.weighted_list(v, true)) {
                Some(variants) => flag.variants = variants,
                None => values_known = false,
            }
        }
        for (key, list) in [("allow", &mut flag.allow), ("deny", &mut flag.deny)] {
            if let Some(v) = map.get(key) {
                // Sorted for binary search by inserting each key in its place: a sort of
                // this element type would give the filter a copy of the standard library's
                // sort (~3 KB). The search finds a repeat too.
                self.at_key(key, |w| {
                    for (i, key) in w.strings(v) {
                        match list.binary_search_by(|k| k.as_slice().cmp(key.as_bytes())) {
                            Ok(_) => w.at_index(i, |w| {
                                w.error(ErrorKind::Duplicate {
                                    name: key.to_owned(),
                                })
                            }),
                            Err(at) => list.insert(at, key.as_bytes().to_vec()),
                        }
                    }
                });
            }
        }
        if let Some(v) = map.get("percentage")
            && let Some(ppm) = self.at_key("percentage", |w| w.percentage(v))
        {
            flag.percentage_ppm = ppm;
        }
        if let Some(v) = map.get("rules") {
            self.at_key("rules", |w| {
                let Some(items) = w.array(v) else { return };
                for (i, item) in items.iter().enumerate() {
                    if let Some(rule) = w.at_index(i, |w| w.rule(item, &flag, values_known)) {
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
        // Parsing (a percentage with at most 4 decimals is on `parse_decimal`'s correctly
        // rounded path) and this arithmetic are IEEE-754 exact operations, identical on every
        // host; the result is an integer, and deciding uses only that integer.
        let scaled = n.as_f64() * 10_000.0;
        match scaled {
            s if (0.0..=1_000_000.0).contains(&s) && (s - s.round()).abs() < 1e-6 => {
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

    fn rule(&mut self, value: &Value, flag: &Flag, values_known: bool) -> Option<Rule> {
        let errors_before = self.errors.len();
        let when = self.when(value, &["when", "serve"]);
        let map = value.as_object()?;
        let serve = self.required(map, "serve").and_then(|v| {
            self.at_key("serve", |w| {
                let name = w.string(v)?;
                if let Some(idx) = flag.variants.iter().position(|var| var.name == name) {
                    Some(Serve::Variant(idx))
                } else if name == flag.default_value {
                    Some(Serve::Default)
                } else {
                    if values_known {
                        w.error(ErrorKind::UnknownReference {
                            name: name.to_owned(),
                            what: "variant or default value",
                        });
                    }
                    None
                }
            })
        });
        if self.errors.len() != errors_before {
            return None;
        }
        Some(Rule {
            when: when?,
            serve: serve?,
        })
    }

    /// A rule's object (fields `allowed`) and its `when`: a non-empty list of conditions that
    /// must all hold. Shared by flags' and rollouts' rules.
    pub(super) fn when(
        &mut self,
        value: &Value,
        allowed: &'static [&'static str],
    ) -> Option<Vec<Condition>> {
        let map = self.object(value, allowed)?;
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
        (self.errors.len() == errors_before).then_some(when)
    }

    fn condition(&mut self, value: &Value) -> Option<Condition> {
        let map = self.object(value, &["attribute", "op", "value", "values"])?;
        let attribute = self
            .required(map, "attribute")
            .and_then(|v| self.at_key("attribute", |w| w.source(v, true)));
        let op_name = self
            .required(map, "op")
            .and_then(|v| self.at_key("op", |w| w.string(v)))?;
        let Some(operator) = Operator::named(op_name) else {
            self.at_key("op", |w| {
                w.error(ErrorKind::UnknownOperator {
                    op: op_name.to_owned(),
                    expected: OPERATORS,
                })
            });
            return None;
        };
        let op = operator.argument(self, map)?;
        Some(Condition {
            attribute: attribute?,
            op,
        })
    }
}
