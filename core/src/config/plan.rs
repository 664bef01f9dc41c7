//! Lowering of what moves a rollout by itself: its `schedule` (steps, or a preset) and its
//! `guard` (limits judged in the data plane), with the durations and times they are written in.

use crate::json::Value;

use super::Version;
use super::walk::{Walk, json_type};
use crate::error::ErrorKind;
use crate::guard::Guard;
use crate::schedule::{Schedule, Step, parse_duration, parse_time};

const DURATION: &str = "a duration like 500ms, 30s, 10m or 1h";
const TIME: &str = "an RFC 3339 time like 2026-11-23T10:00:00Z";
const PERCENT: &str = "a percent from 0 to 100";
const RATIO: &str = "a ratio above 0 and at most 1";

impl Walk {
    /// `schedule` of a rollout whose two versions are lowered already.
    pub(super) fn schedule(
        &mut self,
        value: &Value,
        versions: &[Version],
        stable_idx: usize,
    ) -> Option<Schedule> {
        let map = self.object(
            value,
            &[
                "version",
                "start",
                "steps",
                "canary",
                "linear",
                "all_at_once",
                "paused_at",
            ],
        )?;
        let errors_before = self.errors.len();
        let canary_idx = match map.get("version") {
            Some(v) => self.at_key("version", |w| {
                let name = w.string(v)?;
                let idx = versions.iter().position(|ver| ver.name == name);
                match idx {
                    Some(i) if i == stable_idx => {
                        w.error(ErrorKind::Conflict {
                            other: "stable (the schedule moves users off the stable version)",
                        });
                        None
                    }
                    Some(i) => Some(i),
                    // The versions have errors of their own: the name may be right.
                    None if versions.is_empty() => None,
                    None => {
                        w.error(ErrorKind::UnknownReference {
                            name: name.to_owned(),
                            what: "version",
                        });
                        None
                    }
                }
            }),
            None => Some(usize::from(stable_idx == 0)),
        };
        let start_ms = self
            .required(map, "start")
            .and_then(|v| self.at_key("start", |w| w.time(v)));
        let paused_at_ms = map
            .get("paused_at")
            .and_then(|v| self.at_key("paused_at", |w| w.time(v)));
        let forms = ["steps", "canary", "linear", "all_at_once"];
        let given: Vec<&str> = forms.into_iter().filter(|f| map.contains_key(f)).collect();
        let steps = match given.as_slice() {
            [] => {
                self.at_key("steps", |w| w.error(ErrorKind::MissingField));
                None
            }
            [form, rest @ ..] => {
                for other in rest {
                    self.at_key(other, |w| {
                        w.error(ErrorKind::Conflict {
                            other: "another of steps, canary, linear and all_at_once",
                        })
                    });
                }
                let v = map.get(form)?;
                self.at_key(form, |w| match *form {
                    "steps" => w.steps(v),
                    "canary" => w.canary(v),
                    "linear" => w.linear(v),
                    _ => w.all_at_once(v),
                })
            }
        };
        if self.errors.len() != errors_before {
            return None;
        }
        Some(Schedule {
            canary_idx: canary_idx?,
            start_ms: start_ms?,
            steps: steps?,
            paused_at_ms,
        })
    }

    fn steps(&mut self, value: &Value) -> Option<Vec<Step>> {
        let items = self.array(value)?;
        if items.is_empty() {
            self.error(ErrorKind::Empty);
            return None;
        }
        let errors_before = self.errors.len();
        let mut steps: Vec<Step> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            self.at_index(i, |w| {
                let map = w.object(item, &["percent", "hold"])?;
                let ppm = w
                    .required(map, "percent")
                    .and_then(|v| w.at_key("percent", |w| w.percent(v)))?;
                if let Some(prev) = steps.last()
                    && ppm < prev.ppm
                {
                    w.at_key("percent", |w| {
                        w.error(ErrorKind::OutOfRange {
                            expected: "a percent at least the previous step's (steps never go \
                                       down; to go back, set aborted)",
                            found: percent_text(ppm),
                        })
                    });
                }
                let last = i + 1 == items.len();
                let hold_ms = match map.get("hold") {
                    Some(v) => Some(w.at_key("hold", |w| w.duration(v))?),
                    // Only the last step may stay forever: a later one could never begin.
                    None if !last => {
                        w.at_key("hold", |w| w.error(ErrorKind::MissingField));
                        None
                    }
                    None => None,
                };
                steps.push(Step { ppm, hold_ms });
                Some(())
            });
        }
        (self.errors.len() == errors_before).then_some(steps)
    }

    /// `{"percent": P, "hold": D}`: P% for D, then everyone (CodeDeploy's canary).
    fn canary(&mut self, value: &Value) -> Option<Vec<Step>> {
        let map = self.object(value, &["percent", "hold"])?;
        let ppm = self
            .required(map, "percent")
            .and_then(|v| self.at_key("percent", |w| w.percent(v)));
        let hold = self
            .required(map, "hold")
            .and_then(|v| self.at_key("hold", |w| w.duration(v)));
        Some(vec![
            Step {
                ppm: ppm?,
                hold_ms: Some(hold?),
            },
            Step {
                ppm: 1_000_000,
                hold_ms: None,
            },
        ])
    }

    /// `{"percent": P, "every": D}`: P% more every D until everyone (CodeDeploy's linear).
    fn linear(&mut self, value: &Value) -> Option<Vec<Step>> {
        let map = self.object(value, &["percent", "every"])?;
        let ppm = self
            .required(map, "percent")
            .and_then(|v| self.at_key("percent", |w| w.percent(v)));
        let every = self
            .required(map, "every")
            .and_then(|v| self.at_key("every", |w| w.duration(v)));
        let (ppm, every) = (ppm?, every?);
        if ppm < 1_000 {
            self.at_key("percent", |w| {
                w.error(ErrorKind::OutOfRange {
                    expected: "a percent from 0.1 to 100 (at most 1,000 steps)",
                    found: percent_text(ppm),
                })
            });
            return None;
        }
        let mut steps = Vec::new();
        let mut share = ppm;
        while share < 1_000_000 {
            steps.push(Step {
                ppm: share,
                hold_ms: Some(every),
            });
            share = share.saturating_add(ppm);
        }
        steps.push(Step {
            ppm: 1_000_000,
            hold_ms: None,
        });
        Some(steps)
    }

    fn all_at_once(&mut self, value: &Value) -> Option<Vec<Step>> {
        match self.boolean(value)? {
            true => Some(vec![Step {
                ppm: 1_000_000,
                hold_ms: None,
            }]),
            false => {
                self.error(ErrorKind::BadOperand {
                    expected: "true (leave it out for another form)",
                    found: "false".to_owned(),
                });
                None
            }
        }
    }

    pub(super) fn guard(&mut self, value: &Value) -> Option<Guard> {
        let map = self.object(value, &["window", "min_requests", "errors", "latency"])?;
        let errors_before = self.errors.len();
        let mut guard = Guard::default();
        if let Some(v) = map.get("window")
            && let Some(ms) = self.at_key("window", |w| w.duration(v))
        {
            guard.window_ms = ms;
        }
        if let Some(v) = map.get("min_requests") {
            self.at_key("min_requests", |w| match v.as_u64() {
                Some(n @ 1..=1_000_000_000) => guard.min_requests = n,
                _ => w.error(ErrorKind::OutOfRange {
                    expected: "an integer from 1 to 1000000000",
                    found: v.to_string(),
                }),
            });
        }
        if let Some(v) = map.get("errors") {
            self.at_key("errors", |w| {
                let map = w.object(v, &["max_ratio", "max_over_stable"])?;
                if let Some(v) = map.get("max_ratio")
                    && let Some(r) = w.at_key("max_ratio", |w| w.ratio(v))
                {
                    guard.max_error_ratio = r;
                }
                if let Some(v) = map.get("max_over_stable") {
                    guard.max_error_over_stable = w.at_key("max_over_stable", |w| w.ratio(v));
                }
                Some(())
            });
        }
        if let Some(v) = map.get("latency") {
            self.at_key("latency", |w| {
                let map = w.object(v, &["bound", "max_ratio", "max_over_stable"])?;
                guard.latency_bound_ms = w
                    .required(map, "bound")
                    .and_then(|v| w.at_key("bound", |w| w.duration(v)));
                if let Some(v) = map.get("max_ratio")
                    && let Some(r) = w.at_key("max_ratio", |w| w.ratio(v))
                {
                    guard.max_slow_ratio = r;
                }
                if let Some(v) = map.get("max_over_stable") {
                    guard.max_slow_over_stable = w.at_key("max_over_stable", |w| w.ratio(v));
                }
                Some(())
            });
        }
        (self.errors.len() == errors_before).then_some(guard)
    }

    /// A share for the new version, in parts per million.
    fn percent(&mut self, value: &Value) -> Option<u32> {
        match value.as_f64() {
            Some(p) if (0.0..=100.0).contains(&p) => Some((p * 10_000.0).round() as u32),
            Some(_) => {
                self.error(ErrorKind::OutOfRange {
                    expected: PERCENT,
                    found: value.to_string(),
                });
                None
            }
            None => {
                self.error(ErrorKind::WrongType {
                    expected: "a number",
                    found: json_type(value),
                });
                None
            }
        }
    }

    fn ratio(&mut self, value: &Value) -> Option<f64> {
        match value.as_f64() {
            Some(r) if r > 0.0 && r <= 1.0 => Some(r),
            _ => {
                self.error(ErrorKind::OutOfRange {
                    expected: RATIO,
                    found: value.to_string(),
                });
                None
            }
        }
    }

    fn duration(&mut self, value: &Value) -> Option<u64> {
        let text = self.string(value)?;
        match parse_duration(text).filter(|ms| *ms > 0) {
            Some(ms) => Some(ms),
            None => {
                self.error(ErrorKind::BadOperand {
                    expected: DURATION,
                    found: format!("{text:?}"),
                });
                None
            }
        }
    }

    fn time(&mut self, value: &Value) -> Option<u64> {
        let text = self.string(value)?;
        let ms = parse_time(text);
        if ms.is_none() {
            self.error(ErrorKind::BadOperand {
                expected: TIME,
                found: format!("{text:?}"),
            });
        }
        ms
    }
}

/// A share in parts per million as a percent (`12.5`), without float formatting, which would
/// add kilobytes to the filter for one error message.
fn percent_text(ppm: u32) -> String {
    let (whole, frac) = (ppm / 10_000, ppm % 10_000);
    if frac == 0 {
        format!("{whole}")
    } else {
        format!("{whole}.{}", format!("{frac:04}").trim_end_matches('0'))
    }
}
