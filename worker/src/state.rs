//! The Durable Object `RolloutState`, the state a Worker's isolates share. A Worker runs in
//! many small, short-lived isolates, none of which sees enough of a canary's traffic to judge
//! it, and KV takes up to a minute to reach every location. So:
//!
//! - the instance `guard:<rollout>` gathers the per-version counts the isolates send in
//!   batches, judges them with the core's rule (the Envoy filter's), and latches a trip in its
//!   storage, where it outlives the object's eviction. Every report is answered with the latch,
//!   so the isolates learn a trip from their next report.
//! - the instance `config` holds the rollout config when `ROLLOUT_CONFIG_SOURCE` is
//!   `durable_object`: one strongly consistent copy that every isolate checks on its hold time.

use std::cell::RefCell;

use rollout_core::{Counts, Guard, Latch, Window, format_time};
use worker::js_sys::futures::JsFuture;
use worker::{
    Date, DurableObject, Env, Method, Request, Response, Result, State, console_error,
    console_warn, durable_object,
};

/// The storage key of the guard's latch (one per rollout: a latch of another revision is void).
const LATCH_KEY: &str = "latch";
/// The storage key of the config held by the `config` instance, with its serial number.
const CONFIG_KEY: &str = "config";
/// The header that carries a config's serial number, so an isolate holding the newest one
/// gets `304 Not Modified` instead of the text.
pub(crate) const SERIAL_HEADER: &str = "x-rollout-config-serial";
/// A revision no isolate has reported for this long is forgotten (its counts, not its latch).
const FORGET_AFTER_MS: u64 = 10 * 60 * 1000;

/// What an isolate sends to `guard:<rollout>`: its counts since its last report, and what the
/// object needs to judge them. The revision names the rollout's config: counts of different
/// revisions are never added up.
#[derive(Debug, PartialEq)]
pub(crate) struct Report {
    /// The rollout's name, for the trip's log line.
    pub(crate) rollout: String,
    /// The rollout's revision.
    pub(crate) revision: u64,
    /// The stable version's index in `versions`.
    pub(crate) stable: usize,
    /// The rollout's guard.
    pub(crate) guard: Guard,
    /// The rollout's versions, in config order, each with its responses since the isolate's
    /// last report.
    pub(crate) versions: Vec<(String, Counts)>,
}

impl Report {
    /// The report as text, lines of space-separated fields (names hold no spaces):
    /// `rollout revision stable`, the guard's settings (ratios as the bits of their f64, so
    /// they arrive exact and without float formatting), then `version responses errors slow`
    /// per version. serde_json made the Worker a third bigger.
    pub(crate) fn encode(&self) -> String {
        let g = &self.guard;
        let ratio = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{:x}", r.to_bits()));
        let bound = g.latency_bound_ms.map_or("-".to_owned(), |b| b.to_string());
        let mut out = format!(
            "{} {:x} {}\n{} {} {} {} {bound} {} {}\n",
            self.rollout,
            self.revision,
            self.stable,
            g.window_ms,
            g.min_requests,
            ratio(Some(g.max_error_ratio)),
            ratio(g.max_error_over_stable),
            ratio(Some(g.max_slow_ratio)),
            ratio(g.max_slow_over_stable),
        );
        for (name, c) in &self.versions {
            out.push_str(&format!("{name} {} {} {}\n", c.responses, c.errors, c.slow));
        }
        out
    }

    /// A report from [`Report::encode`]'s text; `None` for anything else.
    pub(crate) fn decode(text: &str) -> Option<Report> {
        let mut lines = text.lines();
        let mut head = lines.next()?.split(' ');
        let rollout = head.next()?.to_owned();
        let revision = u64::from_str_radix(head.next()?, 16).ok()?;
        let stable = head.next()?.parse().ok()?;
        let g: Vec<&str> = lines.next()?.split(' ').collect();
        let [window, min, errors, errors_over, bound, slow, slow_over] = g.as_slice() else {
            return None;
        };
        let ratio = |field: &str| match field {
            "-" => Some(None),
            bits => u64::from_str_radix(bits, 16)
                .ok()
                .map(f64::from_bits)
                .filter(|r| (0.0..=1.0).contains(r))
                .map(Some),
        };
        let guard = Guard {
            window_ms: window.parse().ok()?,
            min_requests: min.parse().ok()?,
            max_error_ratio: ratio(errors)??,
            max_error_over_stable: ratio(errors_over)?,
            latency_bound_ms: match *bound {
                "-" => None,
                b => Some(b.parse().ok()?),
            },
            max_slow_ratio: ratio(slow)??,
            max_slow_over_stable: ratio(slow_over)?,
        };
        let versions = lines
            .map(|line| {
                let mut f = line.split(' ');
                let name = f.next()?.to_owned();
                let mut n = || f.next()?.parse::<u64>().ok();
                let counts = Counts {
                    responses: n()?,
                    errors: n()?,
                    slow: n()?,
                };
                Some((name, counts))
            })
            .collect::<Option<Vec<_>>>()?;
        (stable < versions.len()).then_some(Report {
            rollout,
            revision,
            stable,
            guard,
            versions,
        })
    }
}

/// One revision's counts, summed over every isolate that reported it.
struct Judged {
    revision: u64,
    versions: Vec<String>,
    totals: Vec<Counts>,
    window: Window,
    /// The counts over the window, as last judged.
    last: Vec<Counts>,
    seen_ms: u64,
}

#[derive(Default)]
struct Inner {
    /// The stored latch: outer `None` until read from storage.
    latch: Option<Option<Latch>>,
    judged: Vec<Judged>,
}

/// See the module's doc.
#[durable_object(fetch)]
pub struct RolloutState {
    state: State,
    inner: RefCell<Inner>,
}

impl DurableObject for RolloutState {
    fn new(state: State, _env: Env) -> Self {
        RolloutState {
            state,
            inner: RefCell::new(Inner::default()),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        match (req.method(), req.path().as_str()) {
            (Method::Post, "/guard") => match Report::decode(&req.text().await?) {
                Some(report) => self.report(report).await,
                None => Response::error("bad report", 400),
            },
            (Method::Get, "/guard") => self.guard_status().await,
            (Method::Get, "/config") => self.config(req.headers().get(SERIAL_HEADER)?).await,
            (Method::Put, "/config") => {
                let text = req.text().await?;
                self.put_config(text).await
            }
            _ => Response::error("not found", 404),
        }
    }
}

impl RolloutState {
    /// A string value from storage. Values are kept as strings: the storage API's serde
    /// conversions would add their weight to the Worker for two values.
    async fn get_text(&self, key: &str) -> Result<Option<String>> {
        let value = JsFuture::from(self.state.storage().as_raw().get(key)?).await?;
        Ok(value.as_string())
    }

    /// The latch, read from storage the first time.
    async fn latch(&self) -> Option<Latch> {
        if let Some(latch) = self.inner.borrow().latch.clone() {
            return latch;
        }
        let stored = match self.get_text(LATCH_KEY).await {
            Ok(stored) => stored,
            Err(e) => {
                // Judged as untripped until storage answers; a trip found now is stored anew.
                console_error!("rollout: guard state: cannot read the latch: {e}");
                return None;
            }
        };
        let latch = stored.as_deref().and_then(|s| Latch::decode(s.as_bytes()));
        self.inner.borrow_mut().latch = Some(latch.clone());
        latch
    }

    /// Adds an isolate's counts, judges the window, and answers with the latch of the
    /// report's revision (empty: not tripped).
    async fn report(&self, report: Report) -> Result<Response> {
        let latched = self.latch().await.filter(|l| l.revision == report.revision);
        let now = Date::now().as_millis();
        let trip = if latched.is_some() {
            None
        } else {
            self.judge(&report, now)
        };
        let latch = match (latched, trip) {
            (Some(latch), _) => Some(latch),
            (None, Some(latch)) => {
                // In memory first: a report arriving while storage writes sees the trip.
                self.inner.borrow_mut().latch = Some(Some(latch.clone()));
                let stored = self
                    .state
                    .storage()
                    .put_raw(LATCH_KEY, latch.encode())
                    .await;
                if let Err(e) = stored {
                    console_error!("rollout: guard state: the trip is not stored: {e}");
                }
                Some(latch)
            }
            (None, None) => None,
        };
        Response::ok(latch.map(|l| l.encode()).unwrap_or_default())
    }

    /// Adds the report to its revision's window and judges every non-stable version; returns
    /// the trip, logged with the numbers behind it.
    fn judge(&self, report: &Report, now: u64) -> Option<Latch> {
        let mut inner = self.inner.borrow_mut();
        inner
            .judged
            .retain(|j| now.saturating_sub(j.seen_ms) < FORGET_AFTER_MS);
        let names: Vec<String> = report.versions.iter().map(|(n, _)| n.clone()).collect();
        let index = match inner
            .judged
            .iter()
            .position(|j| j.revision == report.revision && j.versions == names)
        {
            Some(index) => index,
            None => {
                inner.judged.push(Judged {
                    revision: report.revision,
                    totals: vec![Counts::default(); names.len()],
                    versions: names,
                    window: Window::new(report.guard.window_ms),
                    last: Vec::new(),
                    seen_ms: now,
                });
                inner.judged.len() - 1
            }
        };
        let judged = inner.judged.get_mut(index)?;
        judged.seen_ms = now;
        for (total, (_, more)) in judged.totals.iter_mut().zip(&report.versions) {
            *total += *more;
        }
        judged.last = judged.window.push(now, judged.totals.clone());
        let stable = judged.last.get(report.stable).copied().unwrap_or_default();
        let (index, trip) = judged
            .last
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != report.stable)
            .find_map(|(i, counts)| Some((i, report.guard.judge(*counts, stable)?)))?;
        let latch = Latch {
            revision: report.revision,
            version: judged.versions.get(index)?.clone(),
            reason: trip.reason,
            at_ms: now,
        };
        let stable_name = judged
            .versions
            .get(report.stable)
            .map_or("", String::as_str);
        console_warn!(
            "{}",
            latch.log_line(
                &report.rollout,
                stable_name,
                &trip,
                report.guard.window_ms,
                now
            )
        );
        Some(latch)
    }

    /// The latch and each revision's counts over its window, as JSON for operators (the
    /// Worker's `/status`): `{"latch": null | {"revision", "version", "reason", "at"},
    /// "windows": [{"revision", "versions": {NAME: {"responses", "errors", "slow"}}}]}`.
    /// Written by hand: names hold no character JSON escapes.
    async fn guard_status(&self) -> Result<Response> {
        let latch = self.latch().await.map_or("null".to_owned(), |l| {
            format!(
                "{{\"revision\":\"{:016x}\",\"version\":\"{}\",\"reason\":\"{}\",\"at\":\"{}\"}}",
                l.revision,
                l.version,
                l.reason.as_str(),
                format_time(l.at_ms)
            )
        });
        let inner = self.inner.borrow();
        let windows: Vec<String> = inner
            .judged
            .iter()
            .map(|j| {
                let versions: Vec<String> = j
                    .versions
                    .iter()
                    .zip(&j.last)
                    .map(|(name, c)| {
                        format!(
                            "\"{name}\":{{\"responses\":{},\"errors\":{},\"slow\":{}}}",
                            c.responses, c.errors, c.slow
                        )
                    })
                    .collect();
                format!(
                    "{{\"revision\":\"{:016x}\",\"versions\":{{{}}}}}",
                    j.revision,
                    versions.join(",")
                )
            })
            .collect();
        let mut response = Response::ok(format!(
            "{{\"latch\":{latch},\"windows\":[{}]}}",
            windows.join(",")
        ))?;
        response
            .headers_mut()
            .set("content-type", "application/json")?;
        Ok(response)
    }

    /// The config held and its serial, kept in one value (`SERIAL\nTEXT`) so that both
    /// change together.
    async fn stored_config(&self) -> Result<Option<(u64, String)>> {
        let stored = self.get_text(CONFIG_KEY).await?;
        Ok(stored.and_then(|s| {
            let (serial, text) = s.split_once('\n')?;
            Some((serial.parse().ok()?, text.to_owned()))
        }))
    }

    /// The config held, or `304` when the isolate's serial is the newest, or `404` if none
    /// was ever put.
    async fn config(&self, have: Option<String>) -> Result<Response> {
        let Some((serial, text)) = self.stored_config().await? else {
            return Response::error("no config has been put", 404);
        };
        let serial = serial.to_string();
        if have.as_deref() == Some(serial.as_str()) {
            return Ok(Response::empty()?.with_status(304));
        }
        let mut response = Response::ok(text)?;
        response.headers_mut().set(SERIAL_HEADER, &serial)?;
        Ok(response)
    }

    /// Stores a config (validated by the Worker that forwards it) under the next serial.
    async fn put_config(&self, text: String) -> Result<Response> {
        let serial = self
            .stored_config()
            .await?
            .map_or(1, |(s, _)| s.saturating_add(1));
        self.state
            .storage()
            .put_raw(CONFIG_KEY, format!("{serial}\n{text}"))
            .await?;
        let mut response = Response::ok(format!("{serial}\n"))?;
        response
            .headers_mut()
            .set(SERIAL_HEADER, &serial.to_string())?;
        Ok(response)
    }
}
