//! Lowering of rollouts: match, salt, versions with weights, the stable version, and the
//! check that no two rollouts claim the same requests.

use crate::json::{TextHash, Value};

use super::lifecycle::FIELDS;
use super::walk::{Walk, json_type, write_kept};
use super::{NoKey, Rollout, Target, Version};
use crate::error::ErrorKind;
use crate::hash::SaltState;

impl Walk {
    pub(super) fn rollout(&mut self, name: &str, value: &Value) -> Option<Rollout> {
        let map = self.object(
            value,
            &[
                "match",
                "salt",
                "stable",
                "no_key",
                "versions",
                "schedule",
                "aborted",
                "guard",
                "allow",
                "rules",
                "owner",
                "description",
                "created",
                "expires",
            ],
        )?;
        let errors_before = self.errors.len();
        let lifecycle = self.lifecycle(map);
        let mut rollout = Rollout {
            name: name.to_owned(),
            salt: SaltState::new("rollout", name),
            hosts: Vec::new(),
            path_prefix: "/".to_owned(),
            versions: Vec::new(),
            stable_idx: 0,
            no_key: NoKey::Stable,
            first_slot: 0,
            schedule: None,
            aborted: false,
            guard: None,
            revision: revision(value),
            allow: Vec::new(),
            rules: Vec::new(),
            lifecycle,
        };
        let scheduled = map.contains_key("schedule");
        let mut ok = self.errors.len() == errors_before;
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
                let versions = self.at_key("versions", |w| {
                    let versions = w.weighted_list(v, !scheduled);
                    let count = v.as_array().map_or(2, Vec::len);
                    if scheduled && count != 2 {
                        w.error(ErrorKind::WrongCount {
                            expected: "two versions (stable and new) in a scheduled rollout",
                            found: count,
                        });
                        return None;
                    }
                    versions
                });
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
        if let Some(v) = map.get("allow") {
            match self.at_key("allow", |w| w.rollout_allow(v, &rollout.versions)) {
                Some(allow) => rollout.allow = allow,
                None => ok = false,
            }
        }
        if let Some(v) = map.get("rules") {
            match self.at_key("rules", |w| w.rollout_rules(v, &rollout.versions)) {
                Some(rules) => rollout.rules = rules,
                None => ok = false,
            }
        }
        if let Some(v) = map.get("schedule") {
            let versions = &rollout.versions;
            match self.at_key("schedule", |w| w.schedule(v, versions, rollout.stable_idx)) {
                Some(schedule) => rollout.schedule = Some(schedule),
                None => ok = false,
            }
        }
        if let Some(v) = map.get("aborted") {
            match self.at_key("aborted", |w| w.boolean(v)) {
                Some(aborted) => rollout.aborted = aborted,
                None => ok = false,
            }
        }
        if let Some(v) = map.get("guard") {
            match self.at_key("guard", |w| w.guard(v)) {
                Some(guard) => rollout.guard = Some(guard),
                None => ok = false,
            }
        }
        ok.then_some(rollout)
    }

    /// `{"v2": ["emp-1", ...]}`: keys sent to a version whatever their hash says. A key may
    /// be listed for one version only.
    fn rollout_allow(
        &mut self,
        value: &Value,
        versions: &[Version],
    ) -> Option<Vec<(Vec<u8>, usize)>> {
        let Some(map) = value.as_object() else {
            self.error(ErrorKind::WrongType {
                expected: "an object of version name to a list of keys",
                found: json_type(value),
            });
            return None;
        };
        let errors_before = self.errors.len();
        let mut out: Vec<(Vec<u8>, usize)> = Vec::new();
        for (version, keys) in map {
            self.at_key(version, |w| {
                let Some(idx) = versions.iter().position(|v| &v.name == version) else {
                    if !versions.is_empty() {
                        w.error(ErrorKind::UnknownReference {
                            name: version.clone(),
                            what: "version",
                        });
                    }
                    return;
                };
                // Kept sorted as it is built (a binary search finds a key listed twice and
                // where a new one goes): a sort of this element type would cost the filter
                // its own copy of the standard library's sort, ~3 KB.
                for (i, key) in w.strings(keys) {
                    match out.binary_search_by(|(k, _)| k.as_slice().cmp(key.as_bytes())) {
                        Ok(_) => w.at_index(i, |w| {
                            w.error(ErrorKind::Duplicate {
                                name: key.to_owned(),
                            })
                        }),
                        Err(at) => out.insert(at, (key.as_bytes().to_vec(), idx)),
                    }
                }
            });
        }
        (self.errors.len() == errors_before).then_some(out)
    }

    /// `[{"when": [...], "serve": "v2"}]`, in order; the first that holds decides.
    fn rollout_rules(&mut self, value: &Value, versions: &[Version]) -> Option<Vec<Target>> {
        let items = self.array(value)?;
        let errors_before = self.errors.len();
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            self.at_index(i, |w| {
                let when = w.when(item, &["when", "serve"]);
                let serve = w.required(item.as_object()?, "serve")?;
                let idx = w.at_key("serve", |w| {
                    let name = w.string(serve)?;
                    let idx = versions.iter().position(|v| v.name == name);
                    if idx.is_none() && !versions.is_empty() {
                        w.error(ErrorKind::UnknownReference {
                            name: name.to_owned(),
                            what: "version",
                        });
                    }
                    idx
                })?;
                out.push(Target {
                    when: when?,
                    version: idx,
                });
                Some(())
            });
        }
        (self.errors.len() == errors_before).then_some(out)
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
    pub(super) fn check_overlaps(&mut self, rollouts: &[Rollout]) {
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
    /// Without `weighted` (a scheduled rollout, whose schedule sets the weights) a weight is
    /// refused and each entry gets 0.
    pub(super) fn weighted_list(&mut self, value: &Value, weighted: bool) -> Option<Vec<Version>> {
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
                let weight = if weighted {
                    w.required(map, "weight")
                        .and_then(|v| w.at_key("weight", |w| w.weight(v)))
                } else {
                    if map.contains_key("weight") {
                        w.at_key("weight", |w| {
                            w.error(ErrorKind::Conflict {
                                other: "a schedule (the schedule sets the weights)",
                            })
                        });
                    }
                    Some(0)
                };
                if let Some(name) = &name
                    && out.iter().any(|o| &o.name == name)
                {
                    w.at_key("name", |w| {
                        w.error(ErrorKind::Duplicate { name: name.clone() })
                    });
                }
                if let (Some(name), Some(weight)) = (name, weight) {
                    out.push(Version { name, weight });
                }
            });
        }
        if weighted && !out.is_empty() && out.iter().all(|v| v.weight == 0) {
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
}

/// A rollout's revision: a hash of its canonical JSON text (keys sorted, whitespace dropped,
/// numbers as written), so that any edit of the rollout is a new revision and an edit
/// elsewhere in the config is not. A guard's trip holds until the revision changes. The
/// lifecycle fields are left out: a new owner or description changes no decision, and must
/// not lift a trip. Without them the text is the value's own canonical text.
fn revision(value: &Value) -> u64 {
    let mut hashing = TextHash::default();
    write_kept(&mut hashing, value, &FIELDS, None);
    hashing.finish()
}
