//! The guard in the data plane: every VM samples the per-version counters the filter already
//! keeps (Envoy aggregates them across its workers, so every VM sees the process's traffic),
//! judges each guarded rollout with the core's rule, and latches a trip in shared data, where
//! every VM of the process takes it up on its next tick. A latch names the rollout's revision:
//! it holds until the rollout is changed, never lifting by itself.

use rollout_core::{Config, Counts, Guard, Latch, Trip, Tripped, Window};

use crate::host::{self, LogLevel, MetricType};
use crate::metrics::{Gauge, define, increment, metric_name};
use crate::root::Root;
use crate::{Shared, log};

/// How often the guard judges and the gauges follow the schedule: the bulk of the time from a
/// breach to the trip, beside the window's `min_requests`.
pub(crate) const JUDGE_EVERY_MS: u64 = 100;

/// One guarded rollout's state in this VM.
pub(crate) struct Watch {
    rollout: String,
    revision: u64,
    first_slot: usize,
    n_versions: usize,
    stable_slot: usize,
    guard: Guard,
    window: Window,
    /// The trip in force, from this VM's judgement or another VM's latch.
    latched: Option<Latch>,
    /// Whether the latch is known to be in shared data (this VM wrote it or read it there).
    published: bool,
}

/// The guard and schedule state of one root (VM).
#[derive(Default)]
pub(crate) struct Guarding {
    pub(crate) watches: Vec<Watch>,
    next_judge_ms: u64,
    /// Step gauges of scheduled rollouts, by rollout name.
    steps: Vec<(String, Gauge)>,
}

impl Guarding {
    /// Fresh state for a newly installed config; trips latched for the same revisions are
    /// read back at once, so a config update never lets a tripped version's users back.
    pub(crate) fn new(config: &Config) -> Guarding {
        let watches = config
            .guarded()
            .inspect(|g| {
                // An empty latch to compare-and-swap against: a trip's write then carries a
                // CAS, so two VMs tripping at once cannot both count it (Envoy sets an absent
                // key unconditionally, whatever the CAS).
                let key = Latch::key(g.rollout);
                if let Ok((None, _)) = host::shared_data(&key) {
                    let _ = host::set_shared_data(&key, b"", 0);
                }
            })
            .map(|g| Watch {
                rollout: g.rollout.to_owned(),
                revision: g.revision,
                first_slot: g.first_slot,
                n_versions: g.n_versions,
                stable_slot: g.stable_slot,
                guard: g.guard.clone(),
                window: Window::new(g.guard.window_ms),
                latched: None,
                published: false,
            })
            .collect();
        let steps = config
            .rollout_names()
            .filter(|r| config.schedule_at(r, None).is_some())
            .map(|r| {
                let name = metric_name("rollout_schedule_step", &[("rollout", r)]);
                (r.to_owned(), Gauge::define(&name))
            })
            .collect();
        Guarding {
            watches,
            next_judge_ms: 0,
            steps,
        }
    }

    /// Whether this config needs ticks: a guard to judge or a schedule to follow.
    pub(crate) fn needs_ticks(&self) -> bool {
        !self.watches.is_empty() || !self.steps.is_empty()
    }
}

impl Root {
    /// Takes up trips other VMs latched, judges, and updates the gauges; at most every
    /// [`JUDGE_EVERY_MS`], and at once when `force` (a config just installed).
    pub(crate) fn guard_tick(&mut self, now: u64, force: bool) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        if !force && now < self.guarding.next_judge_ms {
            return;
        }
        self.guarding.next_judge_ms = now + JUDGE_EVERY_MS;
        for watch in &mut self.guarding.watches {
            watch.sample(&shared, now, !force);
            watch.follow_latch(&shared);
        }
        let tripped: Vec<Tripped> = self
            .guarding
            .watches
            .iter()
            .filter_map(|w| w.tripped_slot(&shared.config))
            .collect();
        let shares = shared.config.shares_at(Some(now), &tripped);
        for (slot, metrics) in shared.metrics.iter().enumerate() {
            metrics
                .weight_ppm
                .set(u64::from(shares.get(slot).copied().unwrap_or(0)));
            if let Some(gauge) = &metrics.tripped {
                gauge.set(u64::from(tripped.iter().any(|t| t.slot == slot)));
            }
        }
        for (rollout, gauge) in &self.guarding.steps {
            // A trip stops the schedule where it is: the gauge shows the step it tripped in.
            let at = self
                .guarding
                .watches
                .iter()
                .filter(|w| &w.rollout == rollout)
                .filter_map(|w| w.latched.as_ref().map(|l| l.at_ms))
                .fold(now, u64::min);
            if let Some(state) = shared.config.schedule_at(rollout, Some(at)) {
                gauge.set(state.step as u64);
            }
        }
        *shared.tripped.borrow_mut() = tripped;
    }
}

impl Watch {
    /// Samples the counters and, with `judge` and unless tripped already, judges each
    /// non-stable version.
    fn sample(&mut self, shared: &Shared, now: u64, judge: bool) {
        let counts: Vec<Counts> = (self.first_slot..self.first_slot + self.n_versions)
            .map(|slot| {
                shared
                    .metrics
                    .get(slot)
                    .map(|m| m.counts())
                    .unwrap_or_default()
            })
            .collect();
        let window = self.window.push(now, counts);
        if !judge || self.latched.is_some() {
            return;
        }
        let stable = window
            .get(self.stable_slot.saturating_sub(self.first_slot))
            .copied()
            .unwrap_or_default();
        for (i, version_counts) in window.iter().enumerate() {
            let slot = self.first_slot + i;
            if slot == self.stable_slot {
                continue;
            }
            if let Some(trip) = self.guard.judge(*version_counts, stable)
                && let Some((_, version)) = shared.config.slot_names(slot)
            {
                self.latched = Some(Latch {
                    revision: self.revision,
                    version: version.to_owned(),
                    reason: trip.reason,
                    at_ms: now,
                });
                self.publish(shared, Some((&trip, self.guard.window_ms, now)));
                return;
            }
        }
    }

    /// Reads the process's latch: takes up another VM's trip, or writes this VM's own if the
    /// shared value lost it (a racing first write), without counting it twice.
    fn follow_latch(&mut self, shared: &Shared) {
        let key = Latch::key(&self.rollout);
        let (value, _) = host::shared_data(&key).unwrap_or((None, 0));
        let latch = value
            .as_deref()
            .and_then(Latch::decode)
            .filter(|l| l.revision == self.revision);
        match (latch, &self.latched) {
            (Some(latch), _) => {
                self.latched = Some(latch);
                self.published = true;
            }
            (None, Some(_)) => self.publish(shared, None),
            (None, None) => {}
        }
    }

    /// Writes the latch with a compare-and-swap; only the VM whose write lands first counts
    /// the trip and logs it (with `trip`, the numbers behind it).
    fn publish(&mut self, shared: &Shared, trip: Option<(&Trip, u64, u64)>) {
        let Some(latch) = &self.latched else { return };
        let key = Latch::key(&self.rollout);
        let (value, cas) = host::shared_data(&key).unwrap_or((None, 0));
        if let Some(theirs) = value
            .as_deref()
            .and_then(Latch::decode)
            .filter(|l| l.revision == self.revision)
        {
            // Another VM latched first: its verdict is the process's.
            self.latched = Some(theirs);
            self.published = true;
            return;
        }
        if host::set_shared_data(&key, latch.encode().as_bytes(), cas).is_err() {
            return; // Lost a race: the next tick reads the winner's latch.
        }
        let first = !self.published;
        self.published = true;
        let Some((trip, window_ms, now)) = trip.filter(|_| first) else {
            return;
        };
        let tags = [
            ("rollout", self.rollout.as_str()),
            ("version", latch.version.as_str()),
            ("reason", trip.reason.as_str()),
        ];
        increment(define(
            MetricType::Counter,
            &metric_name("rollout_guard_trips_total", &tags),
        ));
        let stable = shared
            .config
            .slot_names(self.stable_slot)
            .map_or("", |(_, v)| v);
        log(
            LogLevel::Warn,
            &latch.log_line(&self.rollout, stable, trip, window_ms, now),
        );
    }

    fn tripped_slot(&self, config: &Config) -> Option<Tripped> {
        let latch = self.latched.as_ref()?;
        let slot = config.slot_of(&self.rollout, &latch.version)?;
        Some(Tripped {
            slot,
            at_ms: latch.at_ms,
        })
    }
}
