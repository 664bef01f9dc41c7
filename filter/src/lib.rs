//! The Envoy/Istio proxy-wasm HTTP filter: a thin adapter that feeds request headers to
//! `rollout-core`, applies the header contract, counts requests, responses and latency per
//! version, and keeps the config current from a live source when one is configured.
//!
//! It speaks the proxy-wasm ABI 0.2.1 itself (exports here, host calls in `host`) rather than
//! through the SDK: the SDK's host-call wrappers panic on statuses they do not expect, which
//! kills the VM, and it exports every callback of the ABI, so Envoy calls into the VM for a
//! request's body, log and done phases too, which this filter has no use for. Every host
//! error is logged and met with a safe default.
//!
//! Layout: `exports` is the ABI dispatch (the callbacks Envoy calls, by context id), `root`
//! the plugin's root context (configuration, ticks), `live` the live config source, `stream`
//! one request/response, `host` the host calls, `source` the plugin configuration's forms and
//! the shared-data protocol, `metrics` the metric names and ids.

mod exports;
mod guard;
mod host;
mod live;
mod metrics;
mod root;
mod source;
mod stream;

use std::cell::RefCell;
use std::rc::Rc;

use host::LogLevel;
use rollout_core::Config;

use metrics::{FlagCounts, TokenMetrics, VersionMetrics};

/// How often every VM checks shared data for a config another VM published: the bound on
/// how long a worker lags behind the one that fetched it.
const TICK_MS: u32 = 10;

/// Logs and moves on: a log line that cannot be written is no reason to fail a request.
fn log(level: LogLevel, message: &str) {
    let _ = host::log(level, message);
}

/// The host clock in milliseconds since the Unix epoch; 0 if the host cannot tell.
fn now_ms() -> u64 {
    host::now_ms().unwrap_or(0)
}

/// The config in force and its metric ids, shared by every request context of one root.
struct Shared {
    config: Config,
    /// Per slot (see `rollout_core::VersionChoice::slot`).
    metrics: Vec<VersionMetrics>,
    /// Per token status, when the config reads override tokens.
    tokens: Option<TokenMetrics>,
    /// Per flag and value, when the config counts flag evaluations.
    flags: Option<FlagCounts>,
    /// Slots the guard holds tripped, as of the root's last tick.
    tripped: RefCell<Vec<rollout_core::Tripped>>,
    /// Whether deciding needs the time (a rollout has a schedule).
    needs_time: bool,
}

impl Shared {
    fn new(config: Config) -> Rc<Shared> {
        let metrics = VersionMetrics::define_all(&config);
        let needs_time = config.needs_time();
        let tokens = TokenMetrics::define(&config);
        let flags = FlagCounts::define(&config);
        Rc::new(Shared {
            config,
            metrics,
            tokens,
            flags,
            tripped: RefCell::new(Vec::new()),
            needs_time,
        })
    }
}
