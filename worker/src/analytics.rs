//! Per-request data points for Cloudflare's Analytics Engine.

use wasm_bindgen::{JsValue, prelude::wasm_bindgen};
use worker::{Env, console_warn};

// The binding is looked up and the point built on the JavaScript side, in one crossing:
// workers-rs's builder makes a crossing per index and blob and copies the point, and the
// binding's lookup is another two, on every request (issue 12).
#[wasm_bindgen(inline_js = r#"
export function rollout_write_point(env, rollout, version, flags, token, status, latency) {
  const dataset = env.ROLLOUT_ANALYTICS;
  if (dataset === undefined) return;
  dataset.writeDataPoint({
    indexes: [rollout],
    blobs: [rollout, version, flags, String(status), token],
    doubles: [status, latency],
  });
}
"#)]
extern "C" {
    /// Writes one point to the `ROLLOUT_ANALYTICS` binding of `env`, if it is bound, as
    /// [`record`] describes it; throws what `writeDataPoint` throws.
    #[wasm_bindgen(catch)]
    fn rollout_write_point(
        env: &JsValue,
        rollout: &str,
        version: &str,
        flags: &str,
        token: &str,
        status: f64,
        latency: f64,
    ) -> Result<(), JsValue>;
}

/// One Analytics Engine data point per request, if the binding `ROLLOUT_ANALYTICS` exists:
/// indexed by rollout, with rollout, version, flags, status and the override token's status
/// (`valid`, `expired`, ...; empty without a token) as blobs, and status and latency as
/// doubles. New blobs go at the end so that queries on the earlier positions keep working.
pub(crate) fn record(
    env: &Env,
    decision: &rollout_core::Decision<'_>,
    flags: &str,
    status: u16,
    latency_ms: u64,
) {
    let (rollout, version) = decision
        .rollout
        .map_or(("", ""), |r| (r.rollout, r.version));
    let token = decision.token.map_or("", |t| t.as_str());
    let written = rollout_write_point(
        env.as_ref(),
        rollout,
        version,
        flags,
        token,
        f64::from(status),
        latency_ms as f64,
    );
    if let Err(e) = written {
        console_warn!(
            "rollout: analytics data point not written: {}",
            worker::Error::from(e)
        );
    }
}
