//! Step schedules: the new version's share of a rollout as a function of time. Time is an
//! input (Unix milliseconds from the host), so the same moment gives the same share on every
//! host; the core never reads a clock.

use serde::Serialize;

use crate::Config;

/// A rollout's schedule: from `start`, each step gives the new version its share for its hold
/// time; the last step (or one without a hold) stays in force.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Schedule {
    /// Index of the new version in the rollout's versions (the other one is stable).
    pub(crate) canary_idx: usize,
    pub(crate) start_ms: u64,
    /// Non-decreasing shares: the validator refuses a step down, so over a schedule each user
    /// moves at most once, from stable to the new version.
    pub(crate) steps: Vec<Step>,
    /// The schedule stands still from this moment on.
    pub(crate) paused_at_ms: Option<u64>,
}

/// One step of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    /// The new version's share, in parts per million.
    pub(crate) ppm: u32,
    /// How long the step holds; `None` for a step that stays.
    pub(crate) hold_ms: Option<u64>,
}

/// Where a schedule stands at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ScheduleState {
    /// The step in force, counted from 1; 0 before the start.
    pub step: usize,
    /// How many steps the schedule has.
    pub steps: usize,
    /// The new version's share in force, in parts per million.
    pub canary_ppm: u32,
    /// When the next step begins (Unix ms); `None` at the last step and while paused.
    pub next_ms: Option<u64>,
    /// Whether `paused_at` has been reached.
    pub paused: bool,
}

impl Schedule {
    /// The state at `now_ms`; without a time (a host that gave none) the schedule has not
    /// started, so everyone stays on stable.
    pub(crate) fn at(&self, now_ms: Option<u64>) -> ScheduleState {
        let paused = matches!((now_ms, self.paused_at_ms), (Some(n), Some(p)) if n >= p);
        let state = |step: usize, ppm: u32, next: Option<u64>| ScheduleState {
            step,
            steps: self.steps.len(),
            canary_ppm: ppm,
            next_ms: if paused { None } else { next },
            paused,
        };
        let Some(now) = now_ms.map(|n| self.paused_at_ms.map_or(n, |p| n.min(p))) else {
            return state(0, 0, Some(self.start_ms));
        };
        if now < self.start_ms {
            return state(0, 0, Some(self.start_ms));
        }
        let mut begin = self.start_ms;
        for (i, step) in self.steps.iter().enumerate() {
            let Some(hold) = step.hold_ms else {
                return state(i + 1, step.ppm, None);
            };
            let end = begin.saturating_add(hold);
            if now < end {
                let last = i + 1 == self.steps.len();
                return state(i + 1, step.ppm, (!last).then_some(end));
            }
            begin = end;
        }
        let last = self.steps.last().map_or(0, |s| s.ppm);
        state(self.steps.len(), last, None)
    }

    /// When each step begins, in order (Unix ms).
    pub(crate) fn step_starts(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.steps.len());
        let mut begin = self.start_ms;
        for step in &self.steps {
            out.push(begin);
            begin = begin.saturating_add(step.hold_ms.unwrap_or(u64::MAX));
        }
        out
    }
}

impl Config {
    /// Where a rollout's schedule stands at `now_ms`; `None` if there is no such rollout or
    /// it has no schedule.
    pub fn schedule_at(&self, rollout: &str, now_ms: Option<u64>) -> Option<ScheduleState> {
        let r = self.rollouts.iter().find(|r| r.name == rollout)?;
        Some(r.schedule.as_ref()?.at(now_ms))
    }

    /// The (stable, new) versions of a scheduled rollout.
    pub fn schedule_versions(&self, rollout: &str) -> Option<(&str, &str)> {
        let r = self.rollouts.iter().find(|r| r.name == rollout)?;
        let name = |idx: usize| r.versions.get(idx).map(|v| v.name.as_str());
        Some((name(r.stable_idx)?, name(r.schedule.as_ref()?.canary_idx)?))
    }

    /// When each step of a rollout's schedule begins (Unix ms).
    pub fn step_starts(&self, rollout: &str) -> Option<Vec<u64>> {
        let r = self.rollouts.iter().find(|r| r.name == rollout)?;
        Some(r.schedule.as_ref()?.step_starts())
    }

    /// Whether any rollout has a schedule, so deciding needs the time.
    pub fn needs_time(&self) -> bool {
        self.rollouts.iter().any(|r| r.schedule.is_some())
    }

    /// The share of each slot (see [`crate::VersionChoice::slot`]) in force at `now_ms` with
    /// the `tripped` versions moved to stable (and their schedules halted), in parts per million of its rollout's keyed users.
    /// An aborted rollout gives stable everything.
    pub fn shares_at(&self, now_ms: Option<u64>, tripped: &[crate::Tripped]) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.n_slots());
        for r in &self.rollouts {
            let share = r.share_at(r.halted(now_ms, tripped));
            let mut weights: Vec<u64> = (0..r.versions.len())
                .map(|i| u64::from(r.weight(i, share)))
                .collect();
            let moved: u64 = weights
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| {
                    r.aborted
                        || (*i != r.stable_idx
                            && tripped.iter().any(|t| t.slot == r.first_slot + i))
                })
                .filter(|(i, _)| *i != r.stable_idx)
                .map(|(_, w)| core::mem::take(w))
                .sum();
            if let Some(stable) = weights.get_mut(r.stable_idx) {
                *stable += moved;
            }
            let total: u64 = weights.iter().sum::<u64>().max(1);
            let ppm: Vec<u32> = weights
                .iter()
                .map(|w| (w * crate::hash::BUCKETS / total) as u32)
                .collect();
            // Rounding leftovers go to stable, so the shares add up to a million.
            let short = 1_000_000 - ppm.iter().sum::<u32>().min(1_000_000);
            for (i, p) in ppm.into_iter().enumerate() {
                out.push(if i == r.stable_idx { p + short } else { p });
            }
        }
        out
    }
}

/// Parses a duration: a whole number followed by `ms`, `s`, `m`, `h` or `d` (`500ms`, `30s`,
/// `10m`, `1h`, `365d`), as Envoy, Flagger and Argo Rollouts users write them. Milliseconds, or
/// `None`.
pub fn parse_duration(text: &str) -> Option<u64> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at_checked(digits)?;
    let n: u64 = number.parse().ok()?;
    let scale: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Parses an RFC 3339 time (`2026-11-23T10:00:00Z`, `2026-11-23T11:00:00.5+01:00`) into Unix
/// milliseconds; times before 1970 are refused.
pub fn parse_time(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |range: core::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        core::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |at: usize, want: &[u8]| b.get(at).is_some_and(|c| want.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = b.get(19..)?;
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for (i, d) in frac.iter().take(3).take(digits).enumerate() {
            millis += i64::from(d - b'0') * [100, 10, 1].get(i).copied().unwrap_or(0);
        }
        rest = frac.get(digits..)?;
    }
    let offset_min = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digit = |c: &u8| c.is_ascii_digit().then(|| i64::from(c - b'0'));
            let (h, m) = (digit(h1)? * 10 + digit(h2)?, digit(m1)? * 10 + digit(m2)?);
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_min * 60;
    u64::try_from(secs * 1_000 + millis).ok()
}

/// Formats Unix milliseconds as RFC 3339 in UTC, with milliseconds only when there are some.
pub fn format_time(ms: u64) -> String {
    let secs = (ms / 1_000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (rem / 3_600, rem % 3_600 / 60, rem % 60);
    let frac = ms % 1_000;
    if frac == 0 {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{frac:03}Z")
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_format_round_trip() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2026-11-23T10:00:00Z"), Some(1_795_428_000_000));
        assert_eq!(
            parse_time("2026-11-23T11:00:00.25+01:00"),
            Some(1_795_428_000_250)
        );
        assert_eq!(parse_time("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        for bad in [
            "2026-11-23",
            "2026-11-23T10:00:00",
            "2025-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "1969-12-31T23:59:59Z",
            "2026-11-23T10:00:00.Z",
            "2026-11-23T10:00:00+0100",
            "२०२६-11-23T10:00:00Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        for ms in [0, 1_795_428_000_000, 1_709_164_800_123, 4_102_444_800_000] {
            assert_eq!(parse_time(&format_time(ms)), Some(ms));
        }
        assert_eq!(format_time(1_795_428_000_000), "2026-11-23T10:00:00Z");
    }

    #[test]
    fn durations_take_one_unit() {
        assert_eq!(parse_duration("500ms"), Some(500));
        assert_eq!(parse_duration("30s"), Some(30_000));
        assert_eq!(parse_duration("10m"), Some(600_000));
        assert_eq!(parse_duration("2h"), Some(7_200_000));
        assert_eq!(parse_duration("365d"), Some(31_536_000_000));
        for bad in [
            "",
            "s",
            "10",
            "1.5s",
            "-1s",
            "10 m",
            "1w",
            "99999999999999999999h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    fn schedule() -> Schedule {
        let step = |ppm, hold_ms| Step { ppm, hold_ms };
        Schedule {
            canary_idx: 1,
            start_ms: 1_000,
            steps: vec![
                step(10_000, Some(100)),
                step(500_000, Some(100)),
                step(1_000_000, None),
            ],
            paused_at_ms: None,
        }
    }

    #[test]
    fn each_step_holds_for_its_time_and_the_last_stays() {
        let s = schedule();
        let at = |t| {
            let st = s.at(Some(t));
            (st.step, st.canary_ppm, st.next_ms)
        };
        assert_eq!(at(999), (0, 0, Some(1_000)));
        assert_eq!(at(1_000), (1, 10_000, Some(1_100)));
        assert_eq!(at(1_099), (1, 10_000, Some(1_100)));
        assert_eq!(at(1_100), (2, 500_000, Some(1_200)));
        assert_eq!(at(1_200), (3, 1_000_000, None));
        assert_eq!(at(u64::MAX), (3, 1_000_000, None));
        assert_eq!(s.at(None).step, 0);
        assert_eq!(s.step_starts(), [1_000, 1_100, 1_200]);
    }

    #[test]
    fn a_pause_freezes_the_step_in_force() {
        let mut s = schedule();
        s.paused_at_ms = Some(1_150);
        let st = s.at(Some(5_000));
        assert_eq!(
            (st.step, st.canary_ppm, st.next_ms, st.paused),
            (2, 500_000, None, true)
        );
        let before = s.at(Some(1_120));
        assert_eq!(
            (before.step, before.paused, before.next_ms),
            (2, false, Some(1_200))
        );
    }
}
