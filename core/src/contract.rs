//! The header contract: what every host sets, replaces and removes on the upstream request and
//! on the response. The core drives it through [`HeaderMapMut`], a three-method interface each
//! host implements over its own header map (as proxy-wasm's C++ host drives its hosts through a
//! context interface), so a new contract header is a change here and nowhere else.

use serde::Serialize;

use crate::decide::{AssignedKey, cookie_headers, cookie_pairs};
use crate::{Config, Decision, RequestFacts, Source, VersionReason};

/// A header map the core can write to. Names come in lowercase.
pub trait HeaderMapMut {
    /// Sets `name` to `value`, replacing every value it had.
    fn replace(&mut self, name: &str, value: &str);
    /// Adds `value` beside any values `name` already has.
    fn add(&mut self, name: &str, value: &str);
    /// Removes every value of `name`.
    fn remove(&mut self, name: &str);
}

/// A plain header list (lowercase names) is a header map too: the reference for every host,
/// used by the golden vectors and the CLI.
impl HeaderMapMut for Vec<(String, String)> {
    fn replace(&mut self, name: &str, value: &str) {
        HeaderMapMut::remove(self, name);
        HeaderMapMut::add(self, name, value);
    }

    fn add(&mut self, name: &str, value: &str) {
        self.push((name.to_owned(), value.to_owned()));
    }

    fn remove(&mut self, name: &str) {
        self.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }
}

/// The Server-Timing metric name of the header contract.
pub const SERVER_TIMING_METRIC: &str = "rollout";

/// The Server-Timing metric name of the config in force, its revision as the description.
pub const SERVER_TIMING_CONFIG_METRIC: &str = "rollout-config";

/// The response header that carries the Server-Timing entry.
const SERVER_TIMING_HEADER: &str = "server-timing";
/// The request header the contract rewrites when a token travels in a cookie or a key is
/// assigned in one.
const COOKIE_HEADER: &str = "cookie";
/// The response header an assigned key is set with.
const SET_COOKIE_HEADER: &str = "set-cookie";

/// The contract's header names, resolved for one config: what a host or test compares, and
/// what the golden vectors carry so that no test runner spells them itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContractNames<'c> {
    /// Headers the contract owns on the upstream request: version, rollout, flags, reason;
    /// then the override header, and `cookie` when a token may travel in one or a key is
    /// assigned in one.
    pub request: Vec<&'c str>,
    /// Headers the contract owns on the response: version, Server-Timing, reason; then
    /// `set-cookie` when keys are assigned.
    pub response: Vec<&'c str>,
}

/// What the response side of the contract needs from a request's decision: small and `Copy`,
/// so a host keeps it across the request instead of the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResponsePlan {
    /// The decided (rollout, version) slot and its reason.
    pub version: Option<(usize, VersionReason)>,
    /// A key given to a keyless user, to set in a cookie.
    pub assigned: Option<AssignedKey>,
}

/// A request of which a host read only [`Config::read_headers`] (see [`Config::unread`]).
pub struct Unread<'a, F: ?Sized> {
    facts: &'a F,
    written: [&'a str; 4],
}

impl<F: RequestFacts + ?Sized> RequestFacts for Unread<'_, F> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.facts.header(name)
    }

    fn count(&self, name: &str) -> usize {
        match self.facts.count(name) {
            0 if self.written.iter().any(|w| w.eq_ignore_ascii_case(name)) => 1,
            n => n,
        }
    }

    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.facts.values(name)
    }
}

impl Decision<'_> {
    /// What the response side of the contract needs.
    pub fn response_plan(&self) -> ResponsePlan {
        ResponsePlan {
            version: self.rollout.map(|r| (r.slot, r.reason)),
            assigned: self.assigned,
        }
    }
}

impl Decision<'_> {
    /// The flags header value, `name=value` pairs joined with `,` in flag-name order; `None`
    /// when the config has no flags.
    pub fn flags_header_value(&self) -> Option<String> {
        if self.flags.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(self.flags.len() * 16);
        for (i, f) in self.flags.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(f.flag);
            out.push('=');
            out.push_str(f.value);
        }
        Some(out)
    }
}

impl Config {
    /// The names of the contract's headers under this config.
    pub fn contract_names(&self) -> ContractNames<'_> {
        let names = &self.headers;
        let mut request = self.written_only().to_vec();
        let mut response = vec![names.version.as_str(), SERVER_TIMING_HEADER, &names.reason];
        if let Some(header) = self.overrides.as_ref().and_then(|o| o.header.as_deref()) {
            request.push(header);
        }
        if self.rewrites_cookies() {
            request.push(COOKIE_HEADER);
        }
        if self.assign.is_some() {
            response.push(SET_COOKIE_HEADER);
        }
        ContractNames { request, response }
    }

    /// Every request header whose value deciding or the request contract reads under this
    /// config (the user key, rule attributes, an override token's header or cookie, the
    /// cookies the contract rewrites), lowercase, each once, pseudo-headers aside (a host makes
    /// those from its URL). A host whose headers are dear to read (the Worker: a runtime call
    /// per name) reads only these and takes the rest through [`Config::unread`]: it decides and
    /// edits exactly as with every header, which the golden vectors check on every case.
    pub fn read_headers(&self) -> Vec<String> {
        let rules = self
            .rollouts
            .iter()
            .flat_map(|r| r.rules.iter().flat_map(|t| &t.when))
            .chain(
                self.flags
                    .iter()
                    .flat_map(|f| f.rules.iter().flat_map(|r| &r.when)),
            )
            .map(|c| &c.attribute);
        let mut names: Vec<String> = Vec::new();
        for source in self.user_key.iter().chain(rules) {
            match source {
                Source::Header(name) => names.push(name.to_ascii_lowercase()),
                Source::Cookie(_) => names.push(COOKIE_HEADER.to_owned()),
                Source::Key => {}
            }
        }
        let contract = self.contract_names().request;
        let written = self.written_only();
        names.extend(
            contract
                .iter()
                .filter(|n| !written.contains(n))
                .map(|n| n.to_ascii_lowercase()),
        );
        if self.overrides.as_ref().is_some_and(|o| o.cookie.is_some()) {
            names.push(COOKIE_HEADER.to_owned());
        }
        names.retain(|n| !n.starts_with(':'));
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The request headers the contract writes without reading their values: version,
    /// rollout, flags and reason (set to the decision's value, or removed).
    fn written_only(&self) -> [&str; 4] {
        let names = &self.headers;
        [&names.version, &names.rollout, &names.flags, &names.reason]
    }

    /// `facts`, a request of which a host read only [`Config::read_headers`], as the contract
    /// must see it: the headers it only writes count as sent once, so it replaces or removes
    /// each without its being read. Right for a host whose replace drops every value (the
    /// Fetch API's `Headers.set`) and whose removal of a header not sent costs what a read
    /// would.
    pub fn unread<'a, F: RequestFacts + ?Sized>(&'a self, facts: &'a F) -> Unread<'a, F> {
        Unread {
            facts,
            written: self.written_only(),
        }
    }

    /// Applies the contract to the upstream request: each contract header is set to the
    /// decision's value, or removed when the decision has none, so that no copy the client
    /// sent ever reaches the upstream. `client` is the request as it arrived; it tells how many
    /// copies of a header there are, so a host makes a removal call only when one is needed.
    pub fn apply_request_contract<F, M>(
        &self,
        decision: &Decision<'_>,
        client: &F,
        upstream: &mut M,
    ) where
        F: RequestFacts + ?Sized,
        M: HeaderMapMut + ?Sized,
    {
        let names = &self.headers;
        let flags = decision.flags_header_value();
        let values = [
            (names.version.as_str(), decision.rollout.map(|r| r.version)),
            (names.rollout.as_str(), decision.rollout.map(|r| r.rollout)),
            (names.flags.as_str(), flags.as_deref()),
            (
                names.reason.as_str(),
                decision.rollout.and_then(|r| r.reason.moved()),
            ),
        ];
        for (name, value) in values {
            let copies = client.count(name);
            // Remove before replacing when the client sent several copies: a host's replace
            // may touch only the first, and no client copy may survive.
            if copies > 1 || (copies == 1 && value.is_none()) {
                upstream.remove(name);
            }
            if let Some(value) = value {
                upstream.replace(name, value);
            }
        }
        // The decision has a token status exactly when the request carried a token (in the
        // header or the cookie): only then is there one to strip, so a request without one
        // pays no second look at its headers. A token is for this proxy, not the upstream:
        // every copy goes, valid or not.
        if decision.token.is_none() && decision.assigned.is_none() {
            return;
        }
        if let Some(header) = self.overrides.as_ref().and_then(|o| o.header.as_deref())
            && client.count(header) > 0
        {
            upstream.remove(header);
        }
        if self.rewrites_cookies() {
            self.rewrite_cookies(decision, client, upstream);
        }
    }

    fn rewrites_cookies(&self) -> bool {
        self.assign.is_some() || self.overrides.as_ref().is_some_and(|o| o.cookie.is_some())
    }

    /// The upstream's Cookie header without the token cookie, and with an assigned key, so
    /// the upstream sees the key every later request carries. Written only when it changes.
    fn rewrite_cookies<F, M>(&self, decision: &Decision<'_>, client: &F, upstream: &mut M)
    where
        F: RequestFacts + ?Sized,
        M: HeaderMapMut + ?Sized,
    {
        let token_cookie = self.overrides.as_ref().and_then(|o| o.cookie.as_deref());
        let assigned = self.assign.as_ref().zip(decision.assigned);
        let headers = cookie_headers(client);
        let pairs = || headers.iter().flat_map(|h| cookie_pairs(h));
        let drop = |name: &[u8]| {
            token_cookie.is_some_and(|t| t.as_bytes() == name)
                || assigned.is_some_and(|(a, _)| a.cookie.as_bytes() == name)
        };
        if assigned.is_none() && !pairs().any(|(name, _)| drop(name)) {
            return;
        }
        let mut out =
            String::with_capacity(headers.iter().map(|h| h.len() + 2).sum::<usize>() + 32);
        for (name, pair) in pairs() {
            if drop(name) {
                continue;
            }
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(&String::from_utf8_lossy(pair));
        }
        if let Some((assign, key)) = assigned {
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(&format!("{}={key}", assign.cookie));
        }
        // Several Cookie headers become one, as HTTP/2 joins them; a host's replace may touch
        // only the first, so the others are removed first.
        if out.is_empty() || headers.len() > 1 {
            upstream.remove(COOKIE_HEADER);
        }
        if !out.is_empty() {
            upstream.replace(COOKIE_HEADER, &out);
        }
    }

    /// Applies the contract to the response of a request (its [`ResponsePlan`]): the version
    /// header, replacing any the upstream sent, a Server-Timing entry beside the upstream's
    /// own, and the reason header for a user moved to stable; and the cookie of an assigned
    /// key. The reason header is not removed for anyone else: the upstream is trusted with its
    /// own response headers, and a removal would cost every response a host call. An unknown
    /// slot writes no version headers.
    pub fn apply_response_contract<M: HeaderMapMut + ?Sized>(
        &self,
        plan: ResponsePlan,
        response: &mut M,
    ) {
        // The cookie is what keeps the user sticky, so `headers.response: false` keeps it.
        if let (Some(assign), Some(key)) = (&self.assign, plan.assigned) {
            let secure = if assign.secure { "; Secure" } else { "" };
            response.add(
                SET_COOKIE_HEADER,
                &format!(
                    "{}={key}; Path=/; Max-Age={}; SameSite=Lax; HttpOnly{secure}",
                    assign.cookie, assign.max_age_s
                ),
            );
        }
        if !self.headers.response {
            return;
        }
        let Some((slot, reason)) = plan.version else {
            return;
        };
        let Some((rollout, version)) = self.slot_names(slot) else {
            return;
        };
        response.replace(&self.headers.version, version);
        if let Some(moved) = reason.moved() {
            response.replace(&self.headers.reason, moved);
        }
        // One entry for the decision, one for the config that made it: which config a
        // response came from is a question of every rollout change, and browsers' developer
        // tools show both. One header, so no host call more.
        response.add(
            SERVER_TIMING_HEADER,
            &format!(
                "{SERVER_TIMING_METRIC};desc=\"{rollout}/{version}\", \
                 {SERVER_TIMING_CONFIG_METRIC};desc=\"{:016x}\"",
                self.digest
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderMapMut;
    use super::ResponsePlan;
    use crate::{Config, HostInputs, VersionReason};

    fn plan(slot: usize, reason: VersionReason) -> ResponsePlan {
        ResponsePlan {
            version: Some((slot, reason)),
            assigned: None,
        }
    }

    fn list(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Records every call, so the tests see what a host would be asked to do.
    #[derive(Default)]
    struct Calls(Vec<String>);

    impl HeaderMapMut for Calls {
        fn replace(&mut self, name: &str, value: &str) {
            self.0.push(format!("replace {name}={value}"));
        }
        fn add(&mut self, name: &str, value: &str) {
            self.0.push(format!("add {name}={value}"));
        }
        fn remove(&mut self, name: &str) {
            self.0.push(format!("remove {name}"));
        }
    }

    fn config() -> Config {
        Config::from_json(
            br#"{"user_key":["header:u"],"rollouts":{"r":{"match":{"path_prefix":"/r"},
                "versions":[{"name":"a","weight":1}]}},"flags":{"f":{"percentage":100}}}"#,
        )
        .unwrap()
    }

    #[test]
    fn responses_can_go_without_the_contract_and_without_counting() {
        let on = config();
        let mut calls = Calls::default();
        on.apply_response_contract(plan(0, VersionReason::Guard), &mut calls);
        assert_eq!(calls.0.len(), 3, "{:?}", calls.0);
        assert!(on.counts_responses(0));

        let off = Config::from_json(
            br#"{"headers":{"response":false},"metrics":{"responses":false},"rollouts":{
                "plain":{"match":{"path_prefix":"/p"},"versions":[{"name":"a","weight":1}]},
                "guarded":{"match":{"path_prefix":"/g"},"versions":[{"name":"a","weight":1},
                    {"name":"b","weight":1}],"guard":{}}}}"#,
        )
        .unwrap();
        let mut calls = Calls::default();
        off.apply_response_contract(plan(0, VersionReason::Guard), &mut calls);
        assert_eq!(calls.0, Vec::<String>::new());
        let plain = off.slot_of("plain", "a").unwrap();
        let guarded = [off.slot_of("guarded", "a"), off.slot_of("guarded", "b")];
        assert!(!off.counts_responses(plain));
        // The guard judges these counts, whatever `metrics.responses` says.
        assert!(guarded.iter().all(|s| off.counts_responses(s.unwrap())));
        assert!(!off.counts_responses(off.n_slots()));
    }

    #[test]
    fn client_copies_never_reach_the_upstream() {
        let config = config();
        let client = list(&[
            (":path", "/elsewhere"),
            ("u", "k"),
            ("x-rollout-version", "b"),
            ("x-rollout", "spoof"),
            ("x-rollout", "spoof-2"),
            ("x-rollout-flags", "f=off"),
        ]);
        let decision = config.decide(client.as_slice(), HostInputs::default());
        assert!(decision.rollout.is_none());
        let mut upstream = client.clone();
        config.apply_request_contract(&decision, client.as_slice(), &mut upstream);
        assert_eq!(
            upstream,
            list(&[
                (":path", "/elsewhere"),
                ("u", "k"),
                ("x-rollout-flags", "f=on")
            ])
        );
    }

    #[test]
    fn a_removal_call_is_made_only_for_a_client_copy() {
        let config = config();
        let honest = list(&[(":path", "/r"), ("u", "k")]);
        let decision = config.decide(honest.as_slice(), HostInputs::default());
        let mut calls = Calls::default();
        config.apply_request_contract(&decision, honest.as_slice(), &mut calls);
        assert_eq!(
            calls.0,
            [
                "replace x-rollout-version=a",
                "replace x-rollout=r",
                "replace x-rollout-flags=f=on"
            ]
        );

        let doubled = list(&[
            (":path", "/r"),
            ("u", "k"),
            ("X-Rollout", "1"),
            ("x-rollout", "2"),
        ]);
        let mut calls = Calls::default();
        config.apply_request_contract(&decision, doubled.as_slice(), &mut calls);
        assert_eq!(calls.0[1..3], ["remove x-rollout", "replace x-rollout=r"]);
    }

    #[test]
    fn the_response_gets_the_version_and_a_server_timing_entry() {
        let config = config();
        let mut response = list(&[
            (":status", "200"),
            ("x-rollout-version", "from-upstream"),
            ("server-timing", "db;dur=3"),
        ]);
        config.apply_response_contract(plan(0, VersionReason::Bucket), &mut response);
        assert_eq!(
            response,
            list(&[
                (":status", "200"),
                ("server-timing", "db;dur=3"),
                ("x-rollout-version", "a"),
                (
                    "server-timing",
                    &format!(
                        "rollout;desc=\"r/a\", rollout-config;desc=\"{}\"",
                        config.digest_text()
                    )
                ),
            ])
        );
        let mut untouched = list(&[(":status", "200")]);
        config.apply_response_contract(plan(99, VersionReason::Guard), &mut untouched);
        assert_eq!(untouched, list(&[(":status", "200")]));
    }

    #[test]
    fn a_token_never_reaches_the_upstream_and_costs_nothing_when_absent() {
        let config = Config::from_json(
            br#"{"overrides":{"cookie":"tok","header":"x-tok","keys":{}},
                "rollouts":{"r":{"versions":[{"name":"a","weight":1}]}}}"#,
        )
        .unwrap();
        // The cookie held only the token: the Cookie header goes, the header copies go.
        let client = list(&[
            (":path", "/"),
            ("cookie", "tok=r1.x"),
            ("x-tok", "1"),
            ("x-tok", "2"),
        ]);
        assert!(config.carries_token(client.as_slice()));
        let decision = config.decide(client.as_slice(), HostInputs::default());
        assert_eq!(decision.token, Some(crate::TokenStatus::Malformed));
        let mut upstream = client.clone();
        config.apply_request_contract(&decision, client.as_slice(), &mut upstream);
        assert_eq!(
            upstream,
            list(&[
                (":path", "/"),
                ("x-rollout-version", "a"),
                ("x-rollout", "r")
            ])
        );
        // Without a token: no removal and no cookie rewrite, so no host call for either.
        let honest = list(&[(":path", "/"), ("cookie", "a=1; b=2")]);
        assert!(!config.carries_token(honest.as_slice()));
        let decision = config.decide(honest.as_slice(), HostInputs::default());
        assert_eq!(decision.token, None);
        let mut calls = Calls::default();
        config.apply_request_contract(&decision, honest.as_slice(), &mut calls);
        assert_eq!(
            calls.0,
            ["replace x-rollout-version=a", "replace x-rollout=r"]
        );
    }

    #[test]
    fn a_token_in_any_of_several_cookie_headers_is_read_and_stripped() {
        let secret = "0123456789abcdef0123456789abcdef";
        let config = Config::from_json(
            format!(
                r#"{{"overrides":{{"cookie":"tok","keys":{{"k1":"{secret}"}}}},
                "rollouts":{{"r":{{"versions":[{{"name":"a","weight":1}},{{"name":"b","weight":0}}]}}}}}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let claims = [crate::token::Claim {
            kind: crate::token::ClaimKind::Version,
            target: "r",
            value: "b",
        }];
        let token = crate::token::sign("k1", secret.as_bytes(), 4_102_444_800, &claims).unwrap();
        let client = list(&[
            (":path", "/"),
            ("cookie", "a=1"),
            ("cookie", &format!("tok={token}; b=2")),
        ]);
        assert!(config.carries_token(client.as_slice()));
        let decision = config.decide(
            client.as_slice(),
            HostInputs {
                now_ms: Some(0),
                ..HostInputs::default()
            },
        );
        assert_eq!(decision.rollout.map(|r| r.version), Some("b"));
        let mut upstream = client.clone();
        config.apply_request_contract(&decision, client.as_slice(), &mut upstream);
        let cookies: Vec<&str> = upstream
            .iter()
            .filter(|(k, _)| k == "cookie")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cookies, ["a=1; b=2"]);
        // Several Cookie headers without a token are left as they came: no call at all.
        let honest = list(&[(":path", "/"), ("cookie", "a=1"), ("cookie", "b=2")]);
        let decision = config.decide(honest.as_slice(), HostInputs::default());
        let mut calls = Calls::default();
        config.apply_request_contract(&decision, honest.as_slice(), &mut calls);
        assert!(
            calls.0.iter().all(|c| !c.contains("cookie")),
            "{:?}",
            calls.0
        );
    }

    #[test]
    fn flags_header_value_lists_every_flag_in_name_order() {
        let config = Config::from_json(
            br#"{"flags":{"zeta":{"enabled":false},"alpha":{"percentage":100}}}"#,
        )
        .unwrap();
        let decision = config.decide(&[("u", "k")][..], HostInputs::default());
        assert_eq!(
            decision.flags_header_value().as_deref(),
            Some("alpha=on,zeta=off")
        );
        let none = Config::empty();
        let decision = none.decide(&[("u", "k")][..], HostInputs::default());
        assert_eq!(decision.flags_header_value(), None);
    }
}
