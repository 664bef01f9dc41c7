//! Deciding: request facts in, a [`Decision`] out. Never fails, never panics: every missing or
//! odd input has a defined fallback, and the decision records which one it took.

use serde::Serialize;

use crate::config::{Condition, Config, Flag, MAX_KEY_BYTES, NoKey, Op, Rollout, Serve, Source};
use crate::hash::{KeyState, bucket, entropy_state, rendezvous};
use crate::semver::Semver;
use crate::token::{ClaimKind, Token, TokenStatus};

/// What the core may read of a request. Hosts implement it over their own header maps;
/// names are asked for in lowercase, and pseudo-headers use Envoy's names
/// (`:authority`, `:path`).
pub trait RequestFacts {
    /// The first value of a header, as raw bytes (header values need not be UTF-8).
    fn header(&self, name: &str) -> Option<&[u8]>;

    /// How many values the request has for a header. The header contract uses it to make a
    /// removal call only when there is a client copy to remove (each call costs the filter a
    /// host call). The default cannot count beyond the first and says "several" for any, which
    /// makes the contract remove and then set: always safe, one call dearer.
    fn count(&self, name: &str) -> usize {
        if self.header(name).is_some() {
            usize::MAX
        } else {
            0
        }
    }

    /// Every value of a header, in order. Asked for only when [`RequestFacts::count`] says
    /// there are several (a client may send `Cookie` more than once); the default has the
    /// first value only.
    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.header(name).into_iter().collect()
    }
}

/// The values of the request's Cookie header(s): HTTP/2 lets a client split it into several
/// fields, and an HTTP/1.1 client may send several; both are one list of cookies.
pub(crate) fn cookie_headers<F: RequestFacts + ?Sized>(facts: &F) -> Vec<&[u8]> {
    if facts.count("cookie") > 1 {
        facts.values("cookie")
    } else {
        facts.header("cookie").into_iter().collect()
    }
}

/// The first cookie `name` in any of the request's Cookie headers.
fn find_cookie<'r, F: RequestFacts + ?Sized>(facts: &'r F, name: &str) -> Option<&'r [u8]> {
    cookie_headers(facts)
        .into_iter()
        .find_map(|h| cookie_value(h, name))
}

impl<K: AsRef<str>, V: AsRef<[u8]>> RequestFacts for [(K, V)] {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    fn count(&self, name: &str) -> usize {
        self.iter()
            .filter(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
            .count()
    }

    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.iter()
            .filter(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
            .collect()
    }
}

/// What the host supplies besides the request: the core has no clock and no randomness.
#[derive(Default)]
pub struct HostInputs<'a> {
    /// A source of random bits for requests without a user key. The core asks it only for a
    /// keyless request to a rollout with `no_key: random`, so a host may make it a host call.
    pub entropy: Option<&'a mut dyn FnMut() -> u64>,
    /// The time, in Unix milliseconds, for schedules; without it a schedule has not started.
    pub now_ms: Option<u64>,
    /// Versions whose guard has tripped: their users go to the stable version, and their
    /// rollout's schedule stands still where it tripped.
    pub tripped: &'a [crate::Tripped],
}

/// Everything decided for one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision<'c> {
    /// Where the user key came from, or why there was none.
    pub key: KeyStatus<'c>,
    /// The matched rollout and its chosen version; `None` when no rollout matches the request.
    pub rollout: Option<VersionChoice<'c>>,
    /// Every flag's value, sorted by flag name.
    pub flags: Vec<FlagChoice<'c>>,
    /// The request's override token, if the config reads them and the request carried one.
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenStatus>,
    /// The key given to a keyless user (`assign`): decided with, and set in a cookie on the
    /// response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned: Option<AssignedKey>,
}

/// A key the host's entropy made for a keyless user: 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssignedKey(pub u64);

impl AssignedKey {
    /// The key as text, which is how it is hashed and how the cookie carries it.
    pub fn text(self) -> [u8; 16] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'0'; 16];
        for (i, b) in out.iter_mut().enumerate() {
            let nibble = (self.0 >> (60 - 4 * i)) & 15;
            *b = HEX.get(nibble as usize).copied().unwrap_or(b'0');
        }
        out
    }
}

impl core::fmt::Display for AssignedKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for AssignedKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where the user key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus<'c> {
    /// From a header.
    Header(&'c str),
    /// From a cookie.
    Cookie(&'c str),
    /// No configured source had a usable value.
    Missing,
    /// A source had a value longer than the limit; it was ignored.
    TooLong,
    /// None was found, and the host gave the user a new key in this cookie (`assign`).
    Assigned(&'c str),
}

/// The version chosen for the matched rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VersionChoice<'c> {
    /// The rollout's name.
    pub rollout: &'c str,
    /// The chosen version's name.
    pub version: &'c str,
    /// Why this version.
    pub reason: VersionReason,
    /// Position of this (rollout, version) pair in [`Config::versions`]: a dense index for
    /// per-version tables such as metric ids.
    #[serde(skip)]
    pub slot: usize,
}

/// Why a version was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum VersionReason {
    /// The user key's hash, weighted: sticky per user.
    Bucket,
    /// No user key: the stable version (`no_key: stable`, or `random` without host entropy).
    NoKeyStable,
    /// No user key: weighted choice from the host's entropy (`no_key: random`).
    NoKeyRandom,
    /// The guard tripped the version this user would have had: the stable version instead.
    Guard,
    /// The rollout is aborted (`aborted: true`): everyone gets the stable version.
    Aborted,
    /// A valid signed token named this version.
    Override,
    /// The key is on the version's allow list (`allow`).
    AllowList,
    /// Rule number `n` (0-based) of the rollout's `rules` matched.
    Rule(usize),
}

impl VersionReason {
    /// The value of the reason header: set only for users moved to stable, by the guard or
    /// an abort.
    pub fn moved(self) -> Option<&'static str> {
        match self {
            VersionReason::Guard => Some("guard"),
            VersionReason::Aborted => Some("aborted"),
            _ => None,
        }
    }
}

/// One flag's value for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FlagChoice<'c> {
    /// The flag's name.
    pub flag: &'c str,
    /// The value served: a variant name, or the flag's default value.
    pub value: &'c str,
    /// Why this value.
    pub reason: FlagReason,
}

/// Why a flag has its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FlagReason {
    /// The flag is switched off (`enabled: false`): everyone gets the default.
    KillSwitch,
    /// The key is on the deny list.
    DenyList,
    /// The key is on the allow list.
    AllowList,
    /// Rule number `n` (0-based) matched.
    Rule(usize),
    /// The key's bucket is inside (a variant) or outside (the default) the percentage.
    Bucket,
    /// No user key, and the flag needed one to bucket: the default value.
    NoKey,
    /// A valid signed token named this value.
    Override,
}

/// The user key of a request, found once and shared by the rollout and every flag.
struct Key<'r> {
    bytes: Option<&'r [u8]>,
}

impl Config {
    /// Decides version and flags for one request. Never fails.
    pub fn decide<'c, F: RequestFacts + ?Sized>(
        &'c self,
        facts: &F,
        mut inputs: HostInputs<'_>,
    ) -> Decision<'c> {
        let (mut key, mut key_status) = self.find_key(facts);
        // A keyless user gets a key now, and is decided with it, so the first response is
        // already what every later request (carrying the cookie) gets.
        let mut assigned = None;
        let assigned_text;
        if let (KeyStatus::Missing, Some(assign), Some(entropy)) =
            (key_status, &self.assign, inputs.entropy.as_mut())
        {
            let id = AssignedKey(entropy());
            assigned_text = id.text();
            key = Key {
                bytes: Some(&assigned_text),
            };
            key_status = KeyStatus::Assigned(&assign.cookie);
            assigned = Some(id);
        }
        let token = self.read_token(facts, inputs.now_ms);
        let valid = match &token {
            Some((TokenStatus::Valid, t)) => t.as_ref(),
            _ => None,
        };
        let rollout = self
            .match_rollout(facts)
            .map(|r| r.choose(&key, valid, facts, &mut inputs));
        let flags = self
            .flags
            .iter()
            .map(|f| f.evaluate(&key, valid, facts))
            .collect();
        Decision {
            key: key_status,
            rollout,
            flags,
            token: token.map(|(status, _)| status),
            assigned,
        }
    }

    /// Whether the request carries an override token the config reads: a host whose clock is
    /// a host call reads it for such a request (a token's expiry needs [`HostInputs::now_ms`]).
    pub fn carries_token<F: RequestFacts + ?Sized>(&self, facts: &F) -> bool {
        let Some(overrides) = &self.overrides else {
            return false;
        };
        overrides
            .header
            .as_deref()
            .is_some_and(|h| facts.header(h).is_some())
            || overrides
                .cookie
                .as_deref()
                .is_some_and(|c| find_cookie(facts, c).is_some())
    }

    /// The override token, from the header or else the cookie the config names, with its
    /// status. `None` when the config reads no tokens or the request carries none.
    fn read_token<'r, F: RequestFacts + ?Sized>(
        &self,
        facts: &'r F,
        now_ms: Option<u64>,
    ) -> Option<(TokenStatus, Option<Token<'r>>)> {
        let overrides = self.overrides.as_ref()?;
        let from_header = overrides.header.as_deref().and_then(|h| facts.header(h));
        let text = from_header.or_else(|| {
            let cookie = overrides.cookie.as_deref()?;
            find_cookie(facts, cookie)
        })?;
        match Token::parse(text) {
            None => Some((TokenStatus::Malformed, None)),
            Some(token) => Some((token.verify(&overrides.keys, now_ms), Some(token))),
        }
    }

    fn find_key<'c, 'r, F: RequestFacts + ?Sized>(
        &'c self,
        facts: &'r F,
    ) -> (Key<'r>, KeyStatus<'c>) {
        let mut status = KeyStatus::Missing;
        for source in &self.user_key {
            let (value, found) = match source {
                Source::Header(name) => (read_source(facts, source), KeyStatus::Header(name)),
                Source::Cookie(name) => (read_source(facts, source), KeyStatus::Cookie(name)),
                Source::Key => continue,
            };
            match value {
                Some([]) | None => {}
                Some(v) if v.len() > MAX_KEY_BYTES => status = KeyStatus::TooLong,
                Some(v) => return (Key { bytes: Some(v) }, found),
            }
        }
        (Key { bytes: None }, status)
    }

    /// The most specific rollout whose hosts and path prefix match.
    fn match_rollout<F: RequestFacts + ?Sized>(&self, facts: &F) -> Option<&Rollout> {
        let host = facts.header(":authority").map(host_without_port);
        let path = facts.header(":path").unwrap_or(b"/");
        self.rollouts.iter().find(|r| {
            let host_ok = r.hosts.is_empty()
                || host.is_some_and(|h| {
                    r.hosts
                        .iter()
                        .any(|rh| h.eq_ignore_ascii_case(rh.as_bytes()))
                });
            // The root prefix also takes paths that do not start with '/' (`*`, garbage):
            // a rollout without a path match claims every request.
            host_ok && (r.path_prefix == "/" || path.starts_with(r.path_prefix.as_bytes()))
        })
    }
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`.
fn host_without_port(authority: &[u8]) -> &[u8] {
    let port_sep = match authority.iter().rposition(|&b| b == b':') {
        Some(idx) if !authority.get(idx..).unwrap_or_default().contains(&b']') => idx,
        _ => return authority,
    };
    authority.get(..port_sep).unwrap_or(authority)
}

fn read_source<'r, F: RequestFacts + ?Sized>(facts: &'r F, source: &Source) -> Option<&'r [u8]> {
    match source {
        Source::Header(name) => facts.header(name),
        Source::Cookie(name) => facts.header("cookie").and_then(|c| cookie_value(c, name)),
        Source::Key => None,
    }
}

/// Finds `name` in a Cookie header (`a=1; b=2`). Odd input (no `=`, stray spaces, quotes)
/// is skipped or trimmed, never an error; the first cookie of that name wins.
pub fn cookie_value<'r>(header: &'r [u8], name: &str) -> Option<&'r [u8]> {
    cookie_pairs(header).find_map(|(k, pair)| {
        if k != name.as_bytes() {
            return None;
        }
        let v = pair
            .get(pair.iter().position(|&b| b == b'=')? + 1..)?
            .trim_ascii();
        Some(
            v.strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v),
        )
    })
}

/// The `name=value` pairs of a Cookie header, each as (trimmed name, trimmed pair); a piece
/// without `=` is skipped.
pub(crate) fn cookie_pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header.split(|&b| b == b';').filter_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        Some((pair.get(..eq)?.trim_ascii(), pair))
    })
}

impl Rollout {
    /// The time a schedule is evaluated at: `now_ms`, or the moment one of this rollout's
    /// versions tripped if that is earlier, so a trip stops the schedule where it was and
    /// users who were on stable then keep their reason.
    pub(crate) fn halted(&self, now_ms: Option<u64>, tripped: &[crate::Tripped]) -> Option<u64> {
        let slots = self.first_slot..self.first_slot + self.versions.len();
        let halt = tripped
            .iter()
            .filter(|t| slots.contains(&t.slot))
            .map(|t| t.at_ms)
            .min();
        match (now_ms, halt) {
            (Some(now), Some(halt)) => Some(now.min(halt)),
            (now, _) => now,
        }
    }

    /// The schedule's share for the new version at `now_ms`, if the rollout has a schedule.
    pub(crate) fn share_at(&self, now_ms: Option<u64>) -> Option<(usize, u32)> {
        let schedule = self.schedule.as_ref()?;
        Some((schedule.canary_idx, schedule.at(now_ms).canary_ppm))
    }

    /// The weight of version `idx` in force: the configured one, or (with `share` from
    /// [`Rollout::share_at`]) the schedule's.
    pub(crate) fn weight(&self, idx: usize, share: Option<(usize, u32)>) -> u32 {
        match share {
            None => self.versions.get(idx).map_or(0, |v| v.weight),
            Some((canary_idx, share)) => {
                if idx == canary_idx {
                    share
                } else if idx == self.stable_idx {
                    1_000_000 - share.min(1_000_000)
                } else {
                    0
                }
            }
        }
    }

    fn choose<'c, F: RequestFacts + ?Sized>(
        &'c self,
        key: &Key<'_>,
        token: Option<&Token<'_>>,
        facts: &F,
        inputs: &mut HostInputs<'_>,
    ) -> VersionChoice<'c> {
        let choice = |idx: usize, reason| {
            let idx = if idx < self.versions.len() { idx } else { 0 };
            VersionChoice {
                rollout: &self.name,
                version: self.versions.get(idx).map_or("", |v| v.name.as_str()),
                reason,
                slot: self.first_slot + idx,
            }
        };
        // A signed token is a deliberate act of someone holding a key: it reaches its version
        // even while the rollout is aborted or the version tripped, so a failure can be
        // reproduced.
        let claimed = token.into_iter().flat_map(Token::claims).find_map(|c| {
            (c.kind == ClaimKind::Version && c.target == self.name)
                .then(|| self.versions.iter().position(|v| v.name == c.value))
                .flatten()
        });
        if let Some(idx) = claimed {
            return choice(idx, VersionReason::Override);
        }
        if self.aborted {
            return choice(self.stable_idx, VersionReason::Aborted);
        }
        let listed = key.bytes.and_then(|k| {
            let at = self
                .allow
                .binary_search_by(|(a, _)| a.as_slice().cmp(k))
                .ok()?;
            self.allow.get(at).map(|(_, idx)| *idx)
        });
        let targeted = listed
            .map(|idx| (idx, VersionReason::AllowList))
            .or_else(|| {
                self.rules
                    .iter()
                    .position(|r| r.when.iter().all(|c| c.holds(key, facts)))
                    .and_then(|n| Some((self.rules.get(n)?.version, VersionReason::Rule(n))))
            });
        if let Some((idx, reason)) = targeted {
            return self.unless_tripped(idx, reason, inputs.tripped, choice);
        }
        let share = self.share_at(self.halted(inputs.now_ms, inputs.tripped));
        let weights = || {
            self.versions
                .iter()
                .enumerate()
                .map(move |(i, v)| (v.name.as_str(), self.weight(i, share)))
        };
        let (state, reason): (Option<KeyState>, VersionReason) = match (key.bytes, self.no_key) {
            (Some(k), _) => (Some(self.salt.with_key(k)), VersionReason::Bucket),
            (None, NoKey::Random) => match inputs.entropy.as_mut() {
                Some(entropy) => (
                    Some(entropy_state(self.salt, entropy())),
                    VersionReason::NoKeyRandom,
                ),
                None => (None, VersionReason::NoKeyStable),
            },
            (None, NoKey::Stable) => (None, VersionReason::NoKeyStable),
        };
        // Validation guarantees a version with weight > 0, so rendezvous finds one; the
        // stable version is the defined answer if it ever did not.
        let idx = state
            .and_then(|s| rendezvous(s, weights()))
            .unwrap_or(self.stable_idx);
        self.unless_tripped(idx, reason, inputs.tripped, choice)
    }

    /// Version `idx` for `reason`, or stable if that version's guard has tripped: only the
    /// tripped version's users move; everyone else keeps their version.
    fn unless_tripped<'c>(
        &self,
        idx: usize,
        reason: VersionReason,
        tripped: &[crate::Tripped],
        choice: impl Fn(usize, VersionReason) -> VersionChoice<'c>,
    ) -> VersionChoice<'c> {
        let slot = self.first_slot + idx;
        if idx != self.stable_idx && tripped.iter().any(|t| t.slot == slot) {
            return choice(self.stable_idx, VersionReason::Guard);
        }
        choice(idx, reason)
    }
}

impl Flag {
    fn evaluate<'c, F: RequestFacts + ?Sized>(
        &'c self,
        key: &Key<'_>,
        token: Option<&Token<'_>>,
        facts: &F,
    ) -> FlagChoice<'c> {
        let choice = |value: &'c str, reason| FlagChoice {
            flag: &self.name,
            value,
            reason,
        };
        let default = self.default_value.as_str();
        // A token may force any value the flag has, even past its kill switch (a tester
        // checking the feature before it is switched on).
        let claimed = token.into_iter().flat_map(Token::claims).find_map(|c| {
            if c.kind != ClaimKind::Flag || c.target != self.name {
                return None;
            }
            if c.value == default {
                return Some(default);
            }
            self.variants
                .iter()
                .find(|v| v.name == c.value)
                .map(|v| v.name.as_str())
        });
        if let Some(value) = claimed {
            return choice(value, FlagReason::Override);
        }
        if !self.enabled {
            return choice(default, FlagReason::KillSwitch);
        }
        if let Some(k) = key.bytes {
            if self.deny.binary_search_by(|d| d.as_slice().cmp(k)).is_ok() {
                return choice(default, FlagReason::DenyList);
            }
            if self.allow.binary_search_by(|a| a.as_slice().cmp(k)).is_ok() {
                return choice(self.variant(self.salt.with_key(k)), FlagReason::AllowList);
            }
        }
        for (idx, rule) in self.rules.iter().enumerate() {
            if rule.when.iter().all(|c| c.holds(key, facts)) {
                let value = match rule.serve {
                    Serve::Default => default,
                    Serve::Variant(v) => self.variants.get(v).map_or(default, |v| v.name.as_str()),
                };
                return choice(value, FlagReason::Rule(idx));
            }
        }
        let Some(k) = key.bytes else {
            // Everyone is in and there is only one value to serve: no key needed.
            if self.percentage_ppm as u64 == crate::hash::BUCKETS && self.variants.len() == 1 {
                return choice(self.variant_at(0), FlagReason::Bucket);
            }
            return choice(default, FlagReason::NoKey);
        };
        let state = self.salt.with_key(k);
        if bucket(state) < self.percentage_ppm {
            choice(self.variant(state), FlagReason::Bucket)
        } else {
            choice(default, FlagReason::Bucket)
        }
    }

    /// The variant of a user who is in; independent of the percentage bucket (the rendezvous
    /// draws hash the variant name too), so growing the percentage never changes it.
    fn variant(&self, state: KeyState) -> &str {
        let idx = rendezvous(
            state,
            self.variants.iter().map(|v| (v.name.as_str(), v.weight)),
        );
        self.variant_at(idx.unwrap_or(0))
    }

    fn variant_at(&self, idx: usize) -> &str {
        self.variants
            .get(idx)
            .map_or(self.default_value.as_str(), |v| v.name.as_str())
    }
}

impl Condition {
    /// A missing or unparsable attribute never matches, whatever the operator.
    fn holds<F: RequestFacts + ?Sized>(&self, key: &Key<'_>, facts: &F) -> bool {
        let value = match &self.attribute {
            Source::Key => key.bytes,
            source => read_source(facts, source),
        };
        let Some(value) = value else { return false };
        let text = core::str::from_utf8(value).ok();
        match &self.op {
            Op::Equals(want) => value == want.as_bytes(),
            Op::Prefix(want) => value.starts_with(want.as_bytes()),
            Op::OneOf(set) => set.iter().any(|s| s.as_bytes() == value),
            Op::NotOneOf(set) => !set.iter().any(|s| s.as_bytes() == value),
            Op::Number(cmp, want) => text
                .and_then(|t| crate::json::parse_decimal(t.trim()))
                .filter(|n| n.is_finite())
                .and_then(|n| n.partial_cmp(want))
                .is_some_and(|o| cmp.holds(o)),
            Op::Semver(cmp, want) => text
                .and_then(Semver::parse)
                .is_some_and(|v| cmp.holds(v.cmp(want))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{FlagReason, HostInputs, VersionReason, cookie_value, host_without_port};
    use crate::Config;

    #[test]
    fn random_mode_without_an_entropy_source_uses_stable() {
        let config = Config::from_json(
            br#"{"rollouts":{"r":{"no_key":"random","stable":"b","versions":[
                {"name":"a","weight":1},{"name":"b","weight":0}]}}}"#,
        )
        .unwrap();
        let facts: [(&str, &str); 0] = [];
        let d = config.decide(&facts[..], HostInputs::default());
        let r = d.rollout.unwrap();
        assert_eq!((r.version, r.reason), ("b", VersionReason::NoKeyStable));
        let mut calls = 0;
        let mut source = || {
            calls += 1;
            7
        };
        let d = config.decide(
            &facts[..],
            HostInputs {
                entropy: Some(&mut source),
                ..HostInputs::default()
            },
        );
        let r = d.rollout.unwrap();
        assert_eq!((r.version, r.reason), ("a", VersionReason::NoKeyRandom));
        assert_eq!(calls, 1);
    }

    #[test]
    fn entropy_is_not_asked_for_when_a_key_decides() {
        let config = Config::from_json(
            br#"{"user_key":["header:u"],"rollouts":{"r":{"no_key":"random","versions":[
                {"name":"a","weight":1},{"name":"b","weight":1}]}}}"#,
        )
        .unwrap();
        let mut calls = 0;
        let mut source = || {
            calls += 1;
            7
        };
        let d = config.decide(
            &[("u", "k")][..],
            HostInputs {
                entropy: Some(&mut source),
                ..HostInputs::default()
            },
        );
        assert_eq!(d.rollout.unwrap().reason, VersionReason::Bucket);
        assert_eq!(calls, 0);
    }

    #[test]
    fn allow_lists_find_every_key_whatever_order_they_are_listed_in() {
        // The walk keeps the list sorted as it inserts (no sort afterwards): keys out of
        // order, interleaved across versions, must each still be found.
        let config = Config::from_json(
            br#"{"user_key":["header:u"],"rollouts":{"r":{
                "allow":{"a":["m","z","b","y"],"b":["c","a","x","n"]},
                "versions":[{"name":"a","weight":0},{"name":"b","weight":1}]}}}"#,
        )
        .unwrap();
        for (key, want) in [
            ("m", "a"),
            ("z", "a"),
            ("b", "a"),
            ("y", "a"),
            ("c", "b"),
            ("a", "b"),
            ("x", "b"),
            ("n", "b"),
        ] {
            let facts = [("u", key)];
            let r = config.decide(&facts[..], HostInputs::default()).rollout;
            let r = r.unwrap();
            assert_eq!(
                (key, r.version, r.reason),
                (key, want, VersionReason::AllowList)
            );
        }
        let facts = [("u", "d")];
        let r = config.decide(&facts[..], HostInputs::default()).rollout;
        assert_eq!(r.unwrap().reason, VersionReason::Bucket);
    }

    #[test]
    fn a_flags_allow_and_deny_lists_find_every_key_whatever_order_they_are_listed_in() {
        let config = Config::from_json(
            br#"{"user_key":["header:u"],"flags":{"f":{"percentage":0,
                "allow":["m","z","b","y"],"deny":["c","a","x","n"]}}}"#,
        )
        .unwrap();
        for (key, want) in [
            ("m", FlagReason::AllowList),
            ("z", FlagReason::AllowList),
            ("b", FlagReason::AllowList),
            ("y", FlagReason::AllowList),
            ("c", FlagReason::DenyList),
            ("a", FlagReason::DenyList),
            ("x", FlagReason::DenyList),
            ("n", FlagReason::DenyList),
            ("d", FlagReason::Bucket),
        ] {
            let facts = [("u", key)];
            let d = config.decide(&facts[..], HostInputs::default());
            assert_eq!((key, d.flags[0].reason), (key, want));
        }
    }

    #[test]
    fn cookie_parsing_tolerates_odd_input() {
        let h = b"a=1; uid=\"u-7\" ;broken; =x; uid=second";
        assert_eq!(cookie_value(h, "uid"), Some(&b"u-7"[..]));
        assert_eq!(cookie_value(h, "a"), Some(&b"1"[..]));
        assert_eq!(cookie_value(h, "broken"), None);
        assert_eq!(cookie_value(b"", "a"), None);
        assert_eq!(cookie_value(b";;;==;", "a"), None);
        assert_eq!(cookie_value(b"\xff\xfe=1; a=\xff", "a"), Some(&b"\xff"[..]));
    }

    #[test]
    fn port_is_stripped_from_authority() {
        assert_eq!(
            host_without_port(b"shop.example.com:8080"),
            b"shop.example.com"
        );
        assert_eq!(host_without_port(b"shop.example.com"), b"shop.example.com");
        assert_eq!(host_without_port(b"[::1]:80"), b"[::1]");
        assert_eq!(host_without_port(b"[::1]"), b"[::1]");
        assert_eq!(host_without_port(b":"), b"");
    }
}
