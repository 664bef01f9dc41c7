//! Per-request data points for Cloudflare's Analytics Engine.

use worker::{AnalyticsEngineDataPointBuilder, Env, console_warn};

/// The optional Analytics Engine binding that gets one data point per request.
const ANALYTICS_BINDING: &str = "ROLLOUT_ANALYTICS";

/// One Analytics Engine data point per request, if the binding exists: indexed by rollout,
/// with rollout, version, flags, status and the override token's status (`valid`, `expired`,
/// ...; empty without a token) as blobs, and status and latency as doubles. New blobs go at
/// the end so that queries on the earlier positions keep working.
pub(crate) fn record(
    env: &Env,
    decision: &rollout_core::Decision<'_>,
    flags: &str,
    status: u16,
    latency_ms: u64,
) {
    let Ok(dataset) = env.analytics_engine(ANALYTICS_BINDING) else {
        return;
    };
    let (rollout, version) = decision
        .rollout
        .map_or(("", ""), |r| (r.rollout, r.version));
    let point = AnalyticsEngineDataPointBuilder::new()
        .indexes([rollout])
        .blobs([
            rollout.to_owned(),
            version.to_owned(),
            flags.to_owned(),
            status.to_string(),
            decision.token.map_or("", |t| t.as_str()).to_owned(),
        ])
        .doubles([f64::from(status), latency_ms as f64])
        .build();
    if let Err(e) = dataset.write_data_point(&point) {
        console_warn!("rollout: analytics data point not written: {e}");
    }
}
