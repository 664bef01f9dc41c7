//! The filter's metrics: per-version counters and latency histograms, and counters for config
//! updates. Labels are embedded in the names for Envoy's `stats_tags`.

use std::cell::Cell;

use rollout_core::{Config, Counts, FlagChoice, TokenStatus};

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

/// A gauge that remembers what it last set, so a tick that changes nothing makes no call.
#[derive(Default)]
pub(crate) struct Gauge {
    id: Option<u32>,
    last: Cell<Option<u64>>,
}

impl Gauge {
    pub(crate) fn define(name: &str) -> Gauge {
        Gauge {
            id: define(MetricType::Gauge, name),
            last: Cell::new(None),
        }
    }

    pub(crate) fn set(&self, value: u64) {
        if self.last.get() != Some(value) {
            record(self.id, value);
            self.last.set(Some(value));
        }
    }
}

/// Metric ids of one (rollout, version).
pub(crate) struct VersionMetrics {
    pub(crate) requests: Option<u32>,
    /// Whether this version's responses are counted and timed here (see
    /// `Config::counts_responses`); without it the response metrics are not even defined, so
    /// no series of zeros suggests there was no traffic.
    pub(crate) counts_responses: bool,
    responses: [Option<u32>; 6],
    /// Milliseconds from request headers to response headers.
    pub(crate) latency_ms: Option<u32>,
    /// Responses slower than the guard's latency bound, when the rollout's guard has one.
    slow: Option<u32>,
    slow_bound_ms: Option<u64>,
    /// The share in force, in parts per million.
    pub(crate) weight_ppm: Gauge,
    /// 1 while the guard holds this version tripped (guarded rollouts only).
    pub(crate) tripped: Option<Gauge>,
}

impl VersionMetrics {
    /// Defines the metrics of every version of a config, indexed by slot. Envoy returns the
    /// same id for a name defined again, so a config update reuses existing series.
    pub(crate) fn define_all(config: &Config) -> Vec<VersionMetrics> {
        let bounds = config.latency_bounds();
        let guarded: Vec<&str> = config.guarded().map(|g| g.rollout).collect();
        let stable_slots: Vec<usize> = config.stable_slots().collect();
        config
            .versions()
            .enumerate()
            .map(|(slot, (rollout, version))| {
                let tags = [("rollout", rollout), ("version", version)];
                let bound = bounds.get(slot).copied().flatten();
                let counted = config.counts_responses(slot);
                let define_counted = |kind, name: &str| {
                    if counted { define(kind, name) } else { None }
                };
                let is_stable = stable_slots.contains(&slot);
                // Set once: lets PromQL compare each version with its rollout's stable one.
                Gauge::define(&metric_name("rollout_stable", &tags)).set(u64::from(is_stable));
                VersionMetrics {
                    slow: bound.and_then(|_| {
                        define_counted(
                            MetricType::Counter,
                            &metric_name("rollout_slow_responses_total", &tags),
                        )
                    }),
                    slow_bound_ms: bound,
                    weight_ppm: Gauge::define(&metric_name("rollout_weight_ppm", &tags)),
                    tripped: (guarded.contains(&rollout) && !is_stable)
                        .then(|| Gauge::define(&metric_name("rollout_guard_tripped", &tags))),
                    requests: define(
                        MetricType::Counter,
                        &metric_name("rollout_requests_total", &tags),
                    ),
                    counts_responses: counted,
                    responses: STATUS_CLASSES.map(|class| {
                        let tags = [("rollout", rollout), ("version", version), ("class", class)];
                        define_counted(
                            MetricType::Counter,
                            &metric_name("rollout_responses_total", &tags),
                        )
                    }),
                    latency_ms: define_counted(
                        MetricType::Histogram,
                        &metric_name("rollout_upstream_latency_ms", &tags),
                    ),
                }
            })
            .collect()
    }

    /// Counts a response by the class of its `:status`, and as slow if it took longer than
    /// the guard's bound.
    pub(crate) fn count_response(&self, status: Option<&[u8]>, latency_ms: u64) {
        increment(self.responses.get(status_class(status)).copied().flatten());
        if self.slow_bound_ms.is_some_and(|bound| latency_ms > bound) {
            increment(self.slow);
        }
    }

    /// This version's counters as the host aggregates them (every worker of the process):
    /// what the guard judges. A counter the host cannot read counts as 0.
    pub(crate) fn counts(&self) -> Counts {
        let read = |id: Option<u32>| id.and_then(|id| host::get_metric(id).ok()).unwrap_or(0);
        let responses = self.responses.iter().map(|id| read(*id)).sum();
        Counts {
            responses,
            errors: read(self.responses.get(4).copied().flatten()),
            slow: read(self.slow),
        }
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

/// `rollout_overrides_total{result}`: one counter per [`TokenStatus`], in the order of
/// `TokenStatus::ALL`, defined only for a config that reads override tokens (so a config
/// without them shows no series of zeros). Envoy returns the same id for a name defined
/// again, so a config update keeps the counts.
pub(crate) struct TokenMetrics([Option<u32>; 5]);

impl TokenMetrics {
    /// The counters, if the config reads tokens.
    pub(crate) fn define(config: &Config) -> Option<TokenMetrics> {
        config.has_overrides().then(|| {
            TokenMetrics(TokenStatus::ALL.map(|status| {
                define(
                    MetricType::Counter,
                    &metric_name("rollout_overrides_total", &[("result", status.as_str())]),
                )
            }))
        })
    }

    /// Counts one request's token by what it turned out to be.
    pub(crate) fn count(&self, status: TokenStatus) {
        let slot = TokenStatus::ALL.iter().position(|s| *s == status);
        increment(slot.and_then(|i| self.0.get(i)).copied().flatten());
    }
}

/// `rollout_config_info{hash}`: 1 for the config in force (its [`Config::digest_text`]), 0
/// for the one it replaced, so `rollout_config_info == 1` names the config each process runs.
pub(crate) struct ConfigInfo {
    digest: u64,
    gauge: Gauge,
}

impl ConfigInfo {
    /// Marks `config` as the one in force, and `previous` (if another) as no longer.
    pub(crate) fn install(previous: Option<ConfigInfo>, config: &Config) -> ConfigInfo {
        let digest = config.digest();
        if let Some(previous) = previous {
            if previous.digest == digest {
                return previous;
            }
            previous.gauge.set(0);
        }
        let hash = config.digest_text();
        let gauge = Gauge::define(&metric_name("rollout_config_info", &[("hash", &hash)]));
        gauge.set(1);
        ConfigInfo { digest, gauge }
    }
}

/// How often counts kept in the VM reach the host's counters: often enough for a scrape,
/// rarely enough that the host calls stay off the request path's budget.
pub(crate) const FLUSH_EVERY_MS: u64 = 1_000;

/// `rollout_flag_evaluations_total{flag,value}` (`metrics.flags`): each flag's evaluations by
/// value, counted in the VM per request (no host call) and added to the host's counters on
/// the tick, and when the config is replaced (the last request of the old config dropped).
pub(crate) struct FlagCounts {
    /// Every (flag, value) pair, flags in the decision's order (by name).
    slots: Vec<FlagSlot>,
    /// Per flag, where its values start in `slots`; one more entry for the end.
    starts: Vec<usize>,
    next_flush_ms: Cell<u64>,
}

/// One flag value's counter.
struct FlagSlot {
    value: String,
    id: Option<u32>,
    count: Cell<u64>,
}

impl FlagCounts {
    /// The counters, if the config asks for them.
    pub(crate) fn define(config: &Config) -> Option<FlagCounts> {
        if !config.counts_flags() {
            return None;
        }
        let mut slots = Vec::new();
        let mut starts = vec![0];
        for (flag, values) in config.flag_values() {
            for value in values {
                let tags = [("flag", flag), ("value", value)];
                slots.push(FlagSlot {
                    value: value.to_owned(),
                    id: define(
                        MetricType::Counter,
                        &metric_name("rollout_flag_evaluations_total", &tags),
                    ),
                    count: Cell::new(0),
                });
            }
            starts.push(slots.len());
        }
        Some(FlagCounts {
            slots,
            starts,
            next_flush_ms: Cell::new(0),
        })
    }

    /// Counts one request's flag values.
    pub(crate) fn count(&self, flags: &[FlagChoice<'_>]) {
        for (choice, bounds) in flags.iter().zip(self.starts.windows(2)) {
            let &[start, end] = bounds else { continue };
            let values = self.slots.get(start..end).unwrap_or_default();
            if let Some(slot) = values.iter().find(|s| s.value == choice.value) {
                slot.count.set(slot.count.get().saturating_add(1));
            }
        }
    }

    /// Adds what was counted since the last flush to the host's counters, once per
    /// [`FLUSH_EVERY_MS`] (or now, with `force`).
    pub(crate) fn flush(&self, now_ms: u64, force: bool) {
        if !force && now_ms < self.next_flush_ms.get() {
            return;
        }
        self.next_flush_ms
            .set(now_ms.saturating_add(FLUSH_EVERY_MS));
        for slot in &self.slots {
            let n = slot.count.replace(0);
            if let (Some(id), true) = (slot.id, n > 0) {
                let _ = host::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
}

impl Drop for FlagCounts {
    /// The counts of a config that was replaced, once its last request is done.
    fn drop(&mut self) {
        self.flush(0, true);
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
        assert_eq!(
            metric_name("rollout_overrides_total", &[("result", "bad_signature")]),
            "rollout_overrides_total.result=.=bad_signature;.;"
        );
    }
}
