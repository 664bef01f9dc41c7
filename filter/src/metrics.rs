//! The filter's metrics: per-version counters and latency histograms, and counters for config
//! updates. Labels are embedded in the names for Envoy's `stats_tags`.

use rollout_core::Config;

use crate::host::{self, LogLevel, MetricType};
use crate::log;

/// A metric name with its labels embedded as `NAME.KEY=.=VALUE;.;...`, the convention Istio's
/// stats use: Envoy's `stats_tags` (see envoy/static/envoy.yaml) turn each `KEY=.=VALUE;.;`
/// into a Prometheus label and strip it from the name. Without those tags the name is still
/// unique and readable.
pub(crate) fn metric_name(base: &str, tags: &[(&str, &str)]) -> String {
    let mut name = String::from(base);
    for (key, value) in tags {
        name.push('.');
        name.push_str(key);
        name.push_str("=.=");
        name.push_str(value);
        name.push_str(";.;");
    }
    name
}

/// Defines a metric; `None` (logged) if the host refuses, so counting is skipped, not fatal.
pub(crate) fn define(kind: MetricType, name: &str) -> Option<u32> {
    match host::define_metric(kind, name) {
        Ok(id) => Some(id),
        Err(status) => {
            log(
                LogLevel::Warn,
                &format!("rollout: cannot define metric {name}: {status:?}"),
            );
            None
        }
    }
}

/// Adds one to a counter, if it was defined.
pub(crate) fn increment(id: Option<u32>) {
    if let Some(id) = id {
        let _ = host::increment_metric(id, 1);
    }
}

/// Records a histogram value, if it was defined.
pub(crate) fn record(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        let _ = host::record_metric(id, value);
    }
}

/// Status classes of `rollout_responses_total`; "other" takes anything unparsable.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Metric ids of one (rollout, version).
pub(crate) struct VersionMetrics {
    pub(crate) requests: Option<u32>,
    responses: [Option<u32>; 6],
    /// Milliseconds from request headers to response headers.
    pub(crate) latency_ms: Option<u32>,
}

impl VersionMetrics {
    /// Defines the metrics of every version of a config, indexed by slot. Envoy returns the
    /// same id for a name defined again, so a config update reuses existing series.
    pub(crate) fn define_all(config: &Config) -> Vec<VersionMetrics> {
        config
            .versions()
            .map(|(rollout, version)| {
                let tags = [("rollout", rollout), ("version", version)];
                VersionMetrics {
                    requests: define(
                        MetricType::Counter,
                        &metric_name("rollout_requests_total", &tags),
                    ),
                    responses: STATUS_CLASSES.map(|class| {
                        let tags = [("rollout", rollout), ("version", version), ("class", class)];
                        define(
                            MetricType::Counter,
                            &metric_name("rollout_responses_total", &tags),
                        )
                    }),
                    latency_ms: define(
                        MetricType::Histogram,
                        &metric_name("rollout_upstream_latency_ms", &tags),
                    ),
                }
            })
            .collect()
    }

    /// Counts a response by the class of its `:status`.
    pub(crate) fn count_response(&self, status: Option<&[u8]>) {
        increment(self.responses.get(status_class(status)).copied().flatten());
    }
}

/// The index in [`STATUS_CLASSES`] of a `:status` value: `1xx` to `5xx`, or `other` for
/// anything that is not three digits from 100 to 599 (missing, garbage, 600).
fn status_class(status: Option<&[u8]>) -> usize {
    match status {
        Some([d @ b'1'..=b'5', b'0'..=b'9', b'0'..=b'9']) => usize::from(d - b'1'),
        _ => STATUS_CLASSES.len() - 1,
    }
}

/// Counters of the config's life: updates taken, configs refused, fetches that failed.
#[derive(Default, Clone, Copy)]
pub(crate) struct ConfigMetrics {
    pub(crate) updates: Option<u32>,
    pub(crate) rejected: Option<u32>,
    pub(crate) fetch_failures: Option<u32>,
}

impl ConfigMetrics {
    pub(crate) fn define() -> ConfigMetrics {
        ConfigMetrics {
            updates: define(MetricType::Counter, "rollout_config_updates_total"),
            rejected: define(MetricType::Counter, "rollout_config_rejected_total"),
            fetch_failures: define(MetricType::Counter, "rollout_config_fetch_failures_total"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{STATUS_CLASSES, metric_name, status_class};

    #[test]
    fn status_classes_take_three_digits_from_100_to_599() {
        let class = |s: &[u8]| STATUS_CLASSES[status_class(Some(s))];
        assert_eq!(class(b"200"), "2xx");
        assert_eq!(class(b"101"), "1xx");
        assert_eq!(class(b"304"), "3xx");
        assert_eq!(class(b"404"), "4xx");
        assert_eq!(class(b"599"), "5xx");
        for odd in [&b"600"[..], b"20", b"2000", b"2x0", b"", b"\xff00"] {
            assert_eq!(class(odd), "other", "{odd:?}");
        }
        assert_eq!(STATUS_CLASSES[status_class(None)], "other");
    }

    #[test]
    fn metric_names_embed_labels_for_stats_tags() {
        assert_eq!(
            metric_name(
                "rollout_requests_total",
                &[("rollout", "checkout"), ("version", "v2")]
            ),
            "rollout_requests_total.rollout=.=checkout;.;.version=.=v2;.;"
        );
    }
}
