//! One HTTP request/response: decides from the request headers, applies the header contract
//! on the way up and down, and counts the request, its response class and latency per version.

use std::rc::Rc;

use crate::host::{self, HeaderMap, HeaderPairs, LogLevel, StreamHeaders};
use crate::metrics::{increment, record};
use crate::{Shared, log, now_ms};
use rollout_core::{HostInputs, ResponsePlan};

/// One HTTP request/response pair. It keeps the config that was in force when it started,
/// so a config update never changes a request half way.
#[derive(Default)]
pub(crate) struct Stream {
    /// The root context that made it (whose config and wait it follows).
    pub(crate) root_id: u32,
    pub(crate) shared: Option<Rc<Shared>>,
    /// What the response needs of the decision, kept when the response has work to do
    /// (metrics, headers, an assigned key's cookie); `None` lets the response pass untouched.
    pub(crate) plan: Option<ResponsePlan>,
    /// When the request's headers arrived, if its response is timed.
    pub(crate) started_ms: Option<u64>,
}

impl Stream {
    pub(crate) fn on_request_headers(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        // One host call for every header: cheaper than one call per header the config reads.
        let headers = HeaderPairs::read(HeaderMap::Request).unwrap_or_else(|error| {
            log(
                LogLevel::Warn,
                &format!("rollout: cannot read request headers ({error:?}); deciding without them"),
            );
            HeaderPairs::default()
        });
        // The core asks for random bits only for a keyless request to a `no_key: random`
        // rollout, so most requests make no such host call.
        let mut entropy = host::random_u64;
        // Read once here for a schedule or an override token's expiry, and reused for the
        // latency below; otherwise only a request whose response is timed reads the clock.
        let now = (shared.needs_time || shared.config.carries_token(&headers)).then(now_ms);
        let tripped = shared.tripped.borrow();
        let inputs = HostInputs {
            entropy: Some(&mut entropy),
            now_ms: now,
            tripped: &tripped,
        };
        let decision = shared.config.decide(&headers, inputs);
        drop(tripped);
        let mut upstream = StreamHeaders(HeaderMap::Request);
        shared
            .config
            .apply_request_contract(&decision, &headers, &mut upstream);
        // Counted whatever the request matched: a token is a tester's, and a tester whose
        // token fails wants to see why on /stats.
        if let (Some(status), Some(tokens)) = (decision.token, shared.tokens.as_ref()) {
            tokens.count(status);
        }
        if let Some(flags) = shared.flags.as_ref() {
            flags.count(&decision.flags);
        }
        let plan = decision.response_plan();
        if plan.assigned.is_some() {
            self.plan = Some(plan);
        }
        let Some(choice) = decision.rollout else {
            return;
        };
        let Some(metrics) = shared.metrics.get(choice.slot) else {
            return;
        };
        increment(metrics.requests);
        // Each host call costs on every request: the response is only visited, and the
        // clock only read for it, when there is something to do there.
        if metrics.counts_responses {
            self.started_ms = Some(now.unwrap_or_else(now_ms));
        }
        if metrics.counts_responses || shared.config.header_names().response {
            self.plan = Some(plan);
        }
    }

    pub(crate) fn on_response_headers(&mut self) {
        let (Some(shared), Some(plan)) = (self.shared.as_ref(), self.plan) else {
            return;
        };
        let metrics = plan.version.and_then(|(slot, _)| shared.metrics.get(slot));
        if let (Some(metrics), Some(started)) = (metrics, self.started_ms) {
            let status = host::header_value(HeaderMap::Response, ":status")
                .ok()
                .flatten();
            let latency = now_ms().saturating_sub(started);
            metrics.count_response(status.as_deref(), latency);
            record(metrics.latency_ms, latency);
        }
        let mut response = StreamHeaders(HeaderMap::Response);
        shared.config.apply_response_contract(plan, &mut response);
    }
}
