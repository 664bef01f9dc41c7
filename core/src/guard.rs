//! The guard: whether a new version is failing, judged from response counts over a sliding
//! window, against absolute limits and against the stable version. Sans-IO like the rest of
//! the core: a host feeds it counts and times and acts on the verdict (latching the trip,
//! moving users, logging).
//!
//! The rule is a one-sided z-test at [`Z`] against the limit: a version trips when its bad
//! share is above the limit by more than `Z` standard errors of that share *at the limit*.
//! For a version exactly at its limit, one window trips with probability about 3e-5 (normal
//! approximation); for a healthy version at half its limit, far less: the exact figures for
//! the defaults are computed in this module's tests and stated in docs/config.md. A version
//! failing half its requests trips at its first judgement.

use serde::Serialize;

use crate::Config;
use crate::schedule::format_time;

/// Standard errors above the limit before a version trips.
pub const Z: f64 = 4.0;

/// Bad responses a window must be expected to have at the limit before it is judged: with
/// the 1% latency default this asks for 500 responses, not 100.
const MIN_EXPECTED: f64 = 5.0;

/// A rollout's guard settings, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    /// The sliding window judged, in milliseconds.
    pub window_ms: u64,
    /// Responses a version needs in the window before it is judged.
    pub min_requests: u64,
    /// Highest share of 5xx responses.
    pub max_error_ratio: f64,
    /// Highest share of 5xx responses above the stable version's share, if judged.
    pub max_error_over_stable: Option<f64>,
    /// A response slower than this is slow; `None`: latency is not judged.
    pub latency_bound_ms: Option<u64>,
    /// Highest share of slow responses (0.01: "p99 under the bound").
    pub max_slow_ratio: f64,
    /// Highest share of slow responses above the stable version's share, if judged.
    pub max_slow_over_stable: Option<f64>,
}

impl Default for Guard {
    fn default() -> Guard {
        Guard {
            window_ms: 30_000,
            min_requests: 100,
            max_error_ratio: 0.05,
            max_error_over_stable: None,
            latency_bound_ms: None,
            max_slow_ratio: 0.01,
            max_slow_over_stable: None,
        }
    }
}

/// Response counts of one version (cumulative, or over a window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Responses of any status.
    pub responses: u64,
    /// 5xx responses.
    pub errors: u64,
    /// Responses slower than the latency bound.
    pub slow: u64,
}

impl Counts {
    /// `self - earlier`, clamped at 0 (a counter never goes down; if a host's did, the
    /// window restarts from nothing rather than going negative).
    pub fn since(self, earlier: Counts) -> Counts {
        Counts {
            responses: self.responses.saturating_sub(earlier.responses),
            errors: self.errors.saturating_sub(earlier.errors),
            slow: self.slow.saturating_sub(earlier.slow),
        }
    }

    /// One response counted: `status` 5xx is an error; slower than `bound_ms` (if the guard
    /// judges latency) is slow, the rule the filter counts by too.
    pub fn count(&mut self, status: u16, latency_ms: u64, bound_ms: Option<u64>) {
        *self += Counts {
            responses: 1,
            errors: u64::from((500..600).contains(&status)),
            slow: u64::from(bound_ms.is_some_and(|bound| latency_ms > bound)),
        };
    }
}

/// Saturating: a host that gathers counts from several processes (the Worker's isolates) adds
/// them up.
impl core::ops::AddAssign for Counts {
    fn add_assign(&mut self, more: Counts) {
        self.responses = self.responses.saturating_add(more.responses);
        self.errors = self.errors.saturating_add(more.errors);
        self.slow = self.slow.saturating_add(more.slow);
    }
}

/// Which limit a version broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TripReason {
    /// Share of 5xx above `max_error_ratio`.
    Errors,
    /// Share of 5xx above stable's by more than `max_error_over_stable`.
    ErrorsOverStable,
    /// Share of slow responses above `max_slow_ratio`.
    Latency,
    /// Share of slow responses above stable's by more than `max_slow_over_stable`.
    LatencyOverStable,
}

impl TripReason {
    /// Every reason, for hosts that define a metric per reason.
    pub const ALL: [TripReason; 4] = [
        TripReason::Errors,
        TripReason::ErrorsOverStable,
        TripReason::Latency,
        TripReason::LatencyOverStable,
    ];

    /// The reason's name, as in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TripReason::Errors => "errors",
            TripReason::ErrorsOverStable => "errors_over_stable",
            TripReason::Latency => "latency",
            TripReason::LatencyOverStable => "latency_over_stable",
        }
    }

    /// The reason of a name from [`TripReason::as_str`].
    pub fn parse(name: &str) -> Option<TripReason> {
        TripReason::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// A verdict that a version fails, with the numbers behind it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Trip {
    /// The limit broken.
    pub reason: TripReason,
    /// The version's counts over the window.
    pub version: Counts,
    /// The stable version's counts over the same window.
    pub stable: Counts,
    /// The share the version was judged against (the limit, or stable's share plus the margin).
    pub limit: f64,
}

impl Guard {
    /// Judges one version's window against the limits and against stable's window. `None`
    /// while it has fewer than `min_requests` responses, or passes every check.
    pub fn judge(&self, version: Counts, stable: Counts) -> Option<Trip> {
        if version.responses < self.min_requests || version.responses == 0 {
            return None;
        }
        let stable_judged = stable.responses >= self.min_requests && stable.responses > 0;
        let latency = self.latency_bound_ms.is_some();
        let checks = [
            (
                TripReason::Errors,
                true,
                version.errors,
                None,
                Some(self.max_error_ratio),
            ),
            (
                TripReason::ErrorsOverStable,
                stable_judged,
                version.errors,
                Some(stable.errors),
                self.max_error_over_stable,
            ),
            (
                TripReason::Latency,
                latency,
                version.slow,
                None,
                Some(self.max_slow_ratio),
            ),
            (
                TripReason::LatencyOverStable,
                latency && stable_judged,
                version.slow,
                Some(stable.slow),
                self.max_slow_over_stable,
            ),
        ];
        checks
            .into_iter()
            .find_map(|(reason, judged, bad, base, margin)| {
                let margin = margin.filter(|_| judged)?;
                let base = base.map(|b| (b, stable.responses));
                let limit = exceeds(bad, version.responses, base, margin)?;
                Some(Trip {
                    reason,
                    version,
                    stable,
                    limit,
                })
            })
    }
}

/// Whether `bad` of `n` is above the limit beyond chance; the limit is `margin`, or the
/// baseline's share plus `margin` when a baseline `(bad, n)` is given. The standard error is
/// taken at the limit (the null hypothesis), plus the baseline's own, so a handful of errors
/// in a small window does not trip a version, and a version at twice its limit does. Returns
/// the limit judged against when it trips.
fn exceeds(bad: u64, n: u64, base: Option<(u64, u64)>, margin: f64) -> Option<f64> {
    let share = bad as f64 / n as f64;
    let (base_share, base_var) = match base {
        Some((b, m)) if m > 0 => {
            let s = b as f64 / m as f64;
            (s, s * (1.0 - s) / m as f64)
        }
        _ => (0.0, 0.0),
    };
    let limit = (base_share + margin).min(1.0);
    // The normal approximation needs a few expected bad responses at the limit; below that a
    // handful of slow responses in a small window would be judged as significant.
    if (n as f64) * limit < MIN_EXPECTED {
        return None;
    }
    let var = limit * (1.0 - limit) / n as f64 + base_var;
    let over = share - limit;
    (over > 0.0 && over * over > Z * Z * var).then_some(limit)
}

/// A rollout with a guard, as a host needs it to judge: which slots to count and compare.
#[derive(Debug, Clone, Copy)]
pub struct Guarded<'c> {
    /// The rollout's name.
    pub rollout: &'c str,
    /// The rollout's revision: a trip holds until it changes.
    pub revision: u64,
    /// The guard's settings.
    pub guard: &'c Guard,
    /// The slot of the rollout's first version; its versions take the slots that follow.
    pub first_slot: usize,
    /// How many versions the rollout has.
    pub n_versions: usize,
    /// The stable version's slot.
    pub stable_slot: usize,
}

impl Config {
    /// Every rollout with a guard.
    pub fn guarded(&self) -> impl Iterator<Item = Guarded<'_>> {
        self.rollouts.iter().filter_map(|r| {
            Some(Guarded {
                rollout: &r.name,
                revision: r.revision,
                guard: r.guard.as_ref()?,
                first_slot: r.first_slot,
                n_versions: r.versions.len(),
                stable_slot: r.first_slot + r.stable_idx,
            })
        })
    }

    /// The latency bound of each slot's rollout, if its guard has one: a host counts slow
    /// responses against it.
    pub fn latency_bounds(&self) -> Vec<Option<u64>> {
        self.rollouts
            .iter()
            .flat_map(|r| {
                let bound = r.guard.as_ref().and_then(|g| g.latency_bound_ms);
                r.versions.iter().map(move |_| bound)
            })
            .collect()
    }

    /// Whether a host counts and times the responses of `slot`: always for a guarded
    /// rollout (the guard judges those counts), and for every other one unless
    /// `metrics.responses` is false (Envoy's per-cluster stats then carry them).
    pub fn counts_responses(&self, slot: usize) -> bool {
        self.count_responses
            || self
                .rollouts
                .iter()
                .find(|r| (r.first_slot..r.first_slot + r.versions.len()).contains(&slot))
                .is_some_and(|r| r.guard.is_some())
    }

    /// The stable version's slot of every rollout.
    pub fn stable_slots(&self) -> impl Iterator<Item = usize> {
        self.rollouts.iter().map(|r| r.first_slot + r.stable_idx)
    }

    /// The slot of a (rollout, version) pair.
    pub fn slot_of(&self, rollout: &str, version: &str) -> Option<usize> {
        self.versions().position(|pair| pair == (rollout, version))
    }

    /// A rollout's revision (see [`Guarded::revision`]).
    pub fn revision(&self, rollout: &str) -> Option<u64> {
        self.rollouts
            .iter()
            .find(|r| r.name == rollout)
            .map(|r| r.revision)
    }
}

/// A version the guard holds tripped, as a host passes it to the core: its users go to the
/// stable version, and its rollout's schedule stands still at `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tripped {
    /// The version's slot (see [`crate::VersionChoice::slot`]).
    pub slot: usize,
    /// When it tripped (Unix ms).
    pub at_ms: u64,
}

/// A trip as a process latches it, in a value every VM of the process can read (Envoy's
/// shared data): `<revision as 16 hex digits> <version> <reason> <Unix ms>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latch {
    /// The revision of the rollout that tripped; a latch of another revision is void.
    pub revision: u64,
    /// The version that tripped.
    pub version: String,
    /// Why.
    pub reason: TripReason,
    /// When (Unix ms): the rollout's schedule stands still from here.
    pub at_ms: u64,
}

impl Latch {
    /// The key a rollout's latch is kept under.
    pub fn key(rollout: &str) -> String {
        format!("rollout.guard.{rollout}")
    }

    /// The latch as stored.
    pub fn encode(&self) -> String {
        format!(
            "{:016x} {} {} {}",
            self.revision,
            self.version,
            self.reason.as_str(),
            self.at_ms
        )
    }

    /// The one log line of a trip, with the numbers that tripped it: every host logs this.
    pub fn log_line(
        &self,
        rollout: &str,
        stable: &str,
        trip: &Trip,
        window_ms: u64,
        now: u64,
    ) -> String {
        let (what, bad, stable_bad) = match trip.reason {
            TripReason::Errors | TripReason::ErrorsOverStable => {
                ("5xx", trip.version.errors, trip.stable.errors)
            }
            TripReason::Latency | TripReason::LatencyOverStable => {
                ("slow", trip.version.slow, trip.stable.slow)
            }
        };
        format!(
            "rollout: guard tripped rollout={rollout} version={} reason={} at {}: {bad} of {} \
             responses {what} ({}) in the last {window_ms} ms, limit {}; stable {stable}: \
             {stable_bad} of {} ({}); revision {:016x}; its users go to {stable} until the rollout \
             is changed",
            self.version,
            trip.reason.as_str(),
            format_time(now),
            trip.version.responses,
            percent(bad, trip.version.responses),
            percent_of_ratio(trip.limit),
            trip.stable.responses,
            percent(stable_bad, trip.stable.responses),
            self.revision,
        )
    }

    /// A stored latch; `None` for anything else (an empty value is "not tripped").
    pub fn decode(bytes: &[u8]) -> Option<Latch> {
        let text = core::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(' ');
        let revision = u64::from_str_radix(parts.next()?, 16).ok()?;
        let version = parts.next()?.to_owned();
        let reason = TripReason::parse(parts.next()?)?;
        let at_ms = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(Latch {
            revision,
            version,
            reason,
            at_ms,
        })
    }
}

/// `bad` of `n` as a percent with one decimal, in integers: float formatting would add
/// kilobytes to the filter for one log line.
fn percent(bad: u64, n: u64) -> String {
    let tenths = (bad.saturating_mul(1_000)).checked_div(n).unwrap_or(0);
    format!("{}.{}%", tenths / 10, tenths % 10)
}

fn percent_of_ratio(ratio: f64) -> String {
    percent((ratio * 1_000_000.0) as u64, 1_000_000)
}

/// A sliding window over cumulative counts: each push is a sample of every tracked version's
/// counters at one moment; the window's counts are the newest sample minus the newest one at
/// least `window_ms` older (or the oldest, while the window is filling).
#[derive(Debug, Clone, Default)]
pub struct Window {
    window_ms: u64,
    samples: std::collections::VecDeque<(u64, Vec<Counts>)>,
}

impl Window {
    /// An empty window of `window_ms`.
    pub fn new(window_ms: u64) -> Window {
        Window {
            window_ms,
            samples: std::collections::VecDeque::new(),
        }
    }

    /// Adds a sample taken at `now_ms` and returns each version's counts over the window.
    /// A sample older than the previous one (a clock going back) restarts the window.
    pub fn push(&mut self, now_ms: u64, counts: Vec<Counts>) -> Vec<Counts> {
        if self
            .samples
            .back()
            .is_some_and(|(t, c)| *t > now_ms || c.len() != counts.len())
        {
            self.samples.clear();
        }
        self.samples.push_back((now_ms, counts));
        let cutoff = now_ms.saturating_sub(self.window_ms);
        // Keep one sample at or before the cutoff: it is the window's baseline.
        while self.samples.get(1).is_some_and(|(t, _)| *t <= cutoff) {
            self.samples.pop_front();
        }
        let (Some((_, base)), Some((_, newest))) = (self.samples.front(), self.samples.back())
        else {
            return Vec::new();
        };
        newest
            .iter()
            .zip(base)
            .map(|(now, then)| now.since(*then))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(responses: u64, errors: u64, slow: u64) -> Counts {
        Counts {
            responses,
            errors,
            slow,
        }
    }

    #[test]
    fn a_trip_is_logged_with_the_numbers_behind_it() {
        let trip = Guard::default()
            .judge(counts(200, 100, 0), counts(1_000, 10, 0))
            .unwrap();
        let latch = Latch {
            revision: 0xab,
            version: "v2".to_owned(),
            reason: trip.reason,
            at_ms: 1_795_000_000_000,
        };
        assert_eq!(
            latch.log_line("checkout", "v1", &trip, 30_000, latch.at_ms),
            "rollout: guard tripped rollout=checkout version=v2 reason=errors at \
             2026-11-18T11:06:40Z: 100 of 200 responses 5xx (50.0%) in the last 30000 ms, limit \
             5.0%; stable v1: 10 of 1000 (1.0%); revision 00000000000000ab; its users go to v1 \
             until the rollout is changed"
        );
    }

    #[test]
    fn a_failing_version_trips_once_it_has_enough_responses() {
        let guard = Guard::default();
        let stable = counts(1_000, 0, 0);
        assert_eq!(guard.judge(counts(99, 50, 0), stable), None);
        let trip = guard.judge(counts(100, 50, 0), stable).unwrap();
        assert_eq!(trip.reason, TripReason::Errors);
        assert_eq!(trip.limit, 0.05);
        // At the limit, or a little over it in a small window: no trip.
        assert_eq!(guard.judge(counts(100, 5, 0), stable), None);
        assert_eq!(guard.judge(counts(100, 10, 0), stable), None);
        // A little over it in a big window: a trip.
        assert!(guard.judge(counts(100_000, 6_000, 0), stable).is_some());
    }

    #[test]
    fn the_relative_check_compares_with_stable() {
        let guard = Guard {
            max_error_over_stable: Some(0.01),
            ..Guard::default()
        };
        // 4% is under the absolute 5%, but far over stable's 0.1% + 1 point.
        let trip = guard
            .judge(counts(2_000, 80, 0), counts(20_000, 20, 0))
            .unwrap();
        assert_eq!(trip.reason, TripReason::ErrorsOverStable);
        assert!((trip.limit - 0.011).abs() < 1e-12);
        // The same share beside a stable version that fails as much: no trip.
        assert_eq!(
            guard.judge(counts(2_000, 80, 0), counts(20_000, 700, 0)),
            None
        );
        // Stable without enough responses is not compared with.
        assert_eq!(guard.judge(counts(2_000, 80, 0), counts(99, 0, 0)), None);
    }

    #[test]
    fn latency_is_judged_only_with_a_bound() {
        let slow = counts(1_000, 0, 100);
        assert_eq!(Guard::default().judge(slow, counts(1_000, 0, 0)), None);
        let guard = Guard {
            latency_bound_ms: Some(300),
            ..Guard::default()
        };
        let trip = guard.judge(slow, counts(1_000, 0, 0)).unwrap();
        assert_eq!(trip.reason, TripReason::Latency);
    }

    /// P(X >= k) summed over the trip region, for X ~ Binomial(n, p), with the pmf computed
    /// by its ratio recurrence in log space (exact enough for n up to some thousands).
    fn trip_probability(guard: &Guard, n: u64, p: f64, bad_is_slow: bool) -> f64 {
        let stable = counts(0, 0, 0);
        let mut total = 0.0;
        let mut log_pmf = n as f64 * (1.0 - p).ln();
        for k in 0..=n {
            if k > 0 {
                log_pmf += ((n - k + 1) as f64).ln() - (k as f64).ln() + p.ln() - (1.0 - p).ln();
            }
            let c = if bad_is_slow {
                counts(n, 0, k)
            } else {
                counts(n, k, 0)
            };
            if guard.judge(c, stable).is_some() {
                total += log_pmf.exp();
            }
        }
        total
    }

    /// The false-trip figures the docs state, computed exactly over the implemented rule for
    /// every window size from `min_requests` to 5,000 responses.
    #[test]
    fn defaults_do_not_trip_a_healthy_version_by_chance() {
        let guard = Guard {
            latency_bound_ms: Some(500),
            ..Guard::default()
        };
        let worst = |p: f64, slow: bool| {
            (guard.min_requests..=5_000)
                .map(|n| trip_probability(&guard, n, p, slow))
                .fold(0.0, f64::max)
        };
        // Errors at half the default limit (2.5% against 5%).
        let errors_half = worst(0.025, false);
        assert!(
            errors_half < 1e-6,
            "errors at half the limit: {errors_half:e}"
        );
        // Slow responses at half the default limit (0.5% against 1%).
        let slow_half = worst(0.005, true);
        assert!(slow_half < 1e-6, "slow at half the limit: {slow_half:e}");
        // A version at twice the limit trips within 1,000 responses nearly always, and one
        // failing half its requests at the first judgement (min_requests).
        let twice = trip_probability(&guard, 1_000, 0.10, false);
        assert!(twice > 0.99, "errors at twice the limit: {twice}");
        let half_failing = trip_probability(&guard, guard.min_requests, 0.5, false);
        assert!(half_failing > 0.999_999, "half failing: {half_failing}");
        eprintln!(
            "worst per-window trip probability at half the limit: errors {errors_half:e}, \
             slow {slow_half:e}; twice the limit over 1,000: {twice}"
        );
    }

    #[test]
    fn the_window_subtracts_the_sample_at_its_start() {
        let mut w = Window::new(1_000);
        let at = |r| vec![counts(r, 0, 0)];
        assert_eq!(w.push(0, at(10)), [counts(0, 0, 0)]);
        assert_eq!(w.push(500, at(30)), [counts(20, 0, 0)]);
        assert_eq!(w.push(1_000, at(60)), [counts(50, 0, 0)]);
        // 1,200: the baseline is the sample at 0 (the newest at or before 200).
        assert_eq!(w.push(1_200, at(70)), [counts(60, 0, 0)]);
        // 1,600: the baseline is the sample at 500.
        assert_eq!(w.push(1_600, at(100)), [counts(70, 0, 0)]);
        // A clock going back restarts the window.
        assert_eq!(w.push(100, at(100)), [counts(0, 0, 0)]);
    }
}
