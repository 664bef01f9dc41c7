//! A live config source: one VM at a time (a compare-and-swap lease in shared data) polls an
//! Envoy cluster with `If-None-Match` (and, when long-polling, `Prefer: wait=N`, which a
//! source may honour by holding the poll until its config changes), validates what it gets,
//! and publishes it with a generation number; every VM's tick takes up a newer generation.

use crate::host::{self, BufferType, HeaderMap, LogLevel};
use crate::log;
use crate::metrics::increment;
use crate::root::Root;
use crate::source::{LiveSource, OverrideKeys, SharedKeys};
use rollout_core::{Config, MAX_CONFIG_BYTES};

/// State of a live source in one VM.
pub(crate) struct Live {
    pub(crate) source: LiveSource,
    pub(crate) keys: SharedKeys,
    /// The plugin configuration's `override_keys`, merged into every config installed.
    pub(crate) override_keys: OverrideKeys,
    /// Identifies this VM in the polling lease.
    pub(crate) token: u64,
    /// Generation of the config in force here (0: the fallback).
    pub(crate) generation: u64,
    /// The last ETag this VM got from the source, sent back as `If-None-Match`.
    pub(crate) seen_etag: Option<String>,
    pub(crate) in_flight: Option<u32>,
    pub(crate) next_poll_ms: u64,
    /// Whether the last fetch failed, so that only changes of state are logged.
    pub(crate) failing: bool,
    /// Whether this VM knows the source's first answer (its own fetch, or another VM's
    /// through shared data), or has stopped waiting for it. Until then requests wait.
    pub(crate) settled: bool,
    /// When to stop waiting for the first answer and serve on the fallback.
    pub(crate) wait_until_ms: u64,
}

impl Live {
    /// How long after configuration a request may wait for the source's first answer: its
    /// timeout, plus a tick for the first poll and two for the news to reach every VM.
    pub(crate) fn wait_bound_ms(source: &LiveSource) -> u64 {
        source.timeout_ms + 3 * u64::from(crate::TICK_MS)
    }
}

impl Drop for Live {
    /// Gives the polling lease up when this VM's source is configured anew or its root is
    /// deleted: a lease sized for a held poll would otherwise keep every VM from polling
    /// for up to `long_poll_s` after the holder is gone.
    fn drop(&mut self) {
        self.keys.release_lease(self.token);
    }
}

impl Root {
    /// Whether requests must wait for the source's first answer.
    pub(crate) fn warming(&self) -> bool {
        self.live.as_ref().is_some_and(|live| !live.settled)
    }

    /// Notes that the source has answered (or that waiting is over), and tells every VM.
    fn settle(&mut self) {
        if let Some(live) = self.live.as_mut()
            && !live.settled
        {
            live.settled = true;
            let _ = live.keys.mark_settled();
        }
    }

    /// Ends the wait for the source's first answer when another VM has seen it, or when the
    /// bound has passed (then the fallback serves, as it did before the wait existed).
    pub(crate) fn check_warm(&mut self, now: u64) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if live.settled {
            return;
        }
        if live.keys.settled() {
            live.settled = true;
        } else if now >= live.wait_until_ms {
            live.settled = true;
            log(
                LogLevel::Warn,
                &format!(
                    "rollout: no answer from the config source within {} ms; serving on the fallback config",
                    Live::wait_bound_ms(&live.source)
                ),
            );
        }
    }

    /// Takes up a config another VM published, if it is newer than the one in force.
    pub(crate) fn follow(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let generation = live.keys.generation();
        if generation <= live.generation {
            return;
        }
        let Some((etag, body)) = live.keys.published() else {
            return;
        };
        live.generation = generation;
        live.seen_etag = Some(etag);
        // The publisher validated it; a failure here would mean shared data was corrupted.
        match Config::from_json(&body) {
            Ok(config) => self.install(config),
            Err(errors) => log(
                LogLevel::Error,
                &format!("rollout: shared config unreadable: {errors}"),
            ),
        }
    }

    /// Asks the source for a newer config, if this VM holds the polling lease and it is time.
    pub(crate) fn poll(&mut self, now: u64) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if live.in_flight.is_some() || now < live.next_poll_ms {
            return;
        }
        // Polls start at least `poll_interval_ms` apart. A held poll (long-polling) answers
        // later than that, so the next one leaves as soon as it is back; a source that
        // ignores `Prefer` answers at once and is polled at the plain interval.
        live.next_poll_ms = now + live.source.poll_interval_ms;
        let hold_ms = live.source.long_poll_s * 1000;
        // The lease outlives a few polls and a held one, so another VM takes over only if
        // this one stops.
        let lease_ms = 3 * live.source.poll_interval_ms + live.source.timeout_ms + hold_ms;
        if !live.keys.take_lease(live.token, now, now + lease_ms) {
            return;
        }
        let mut headers = vec![
            (":method", "GET"),
            (":path", live.source.path.as_str()),
            (":authority", live.source.authority.as_str()),
            ("accept", "application/json"),
        ];
        let wait = format!("wait={}", live.source.long_poll_s);
        // Only a conditional poll can be held: without an ETag there is nothing to wait for,
        // and the first answer must come within `timeout_ms` (requests wait for it).
        let held = hold_ms > 0 && live.seen_etag.is_some();
        if let Some(etag) = &live.seen_etag {
            headers.push(("if-none-match", etag.as_str()));
        }
        if held {
            headers.push(("prefer", wait.as_str()));
        }
        // A held poll may take the whole wait before the source even starts answering.
        let timeout_ms = live.source.timeout_ms + if held { hold_ms } else { 0 };
        let timeout_ms = u32::try_from(timeout_ms).unwrap_or(u32::MAX);
        match host::http_call(&live.source.cluster, &headers, timeout_ms) {
            Ok(token) => live.in_flight = Some(token),
            Err(status) => {
                let why = crate::source::call_failure(&live.source.cluster, status);
                self.fetch_failed(&why);
            }
        }
    }

    fn fetch_failed(&mut self, why: &str) {
        // A definite failure is an answer: waiting requests go on with the fallback.
        self.settle();
        increment(self.config_metrics.fetch_failures);
        if let Some(live) = self.live.as_mut() {
            if !live.failing {
                log(
                    LogLevel::Warn,
                    &format!("rollout: config source failing, keeping the config in force: {why}"),
                );
            }
            live.failing = true;
        }
    }

    fn fetch_answered(&mut self, n_headers: usize, body_size: usize) {
        if n_headers == 0 {
            // Envoy passes no reason. Besides a refused connection and a timeout, it resets a
            // call whose body is over its buffer limit (32 MiB in Envoy 1.40, measured in
            // envoy/tests/test_hostile.py): name that too, or a huge config reads as an outage.
            return self.fetch_failed(
                "no response: the connection failed, the call timed out, or Envoy reset it \
                 (it does for a body over 32 MiB)",
            );
        }
        let status = host::header_value(HeaderMap::CallResponse, ":status")
            .ok()
            .flatten();
        match status.as_deref() {
            Some(b"304") => {}
            Some(b"200") => self.fetched(body_size),
            other => {
                let status = String::from_utf8_lossy(other.unwrap_or(b"none")).into_owned();
                return self.fetch_failed(&format!("status {status}"));
            }
        }
        // After any config was published, so a VM that sees the mark finds the config too.
        self.settle();
        if let Some(live) = self.live.as_mut() {
            if live.failing {
                log(LogLevel::Info, "rollout: config source answers again");
            }
            live.failing = false;
        }
    }

    /// A 200 from the source: validate, then take it up and publish it, or refuse it.
    fn fetched(&mut self, body_size: usize) {
        if body_size > MAX_CONFIG_BYTES {
            return self.fetch_failed(&format!(
                "config of {body_size} bytes is over {MAX_CONFIG_BYTES}"
            ));
        }
        let body = match host::buffer(BufferType::CallResponseBody, 0, body_size) {
            Ok(body) => body,
            Err(status) => return self.fetch_failed(&format!("cannot read the body: {status:?}")),
        };
        let etag = host::header_value(HeaderMap::CallResponse, "etag")
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_else(|| body_etag(&body));
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if live.seen_etag.as_deref() == Some(etag.as_str()) {
            return; // A source without conditional requests: same config again.
        }
        live.seen_etag = Some(etag.clone());
        match Config::from_json(&body) {
            Ok(config) => {
                let generation = live.keys.generation().max(live.generation) + 1;
                if !live.keys.publish(&etag, &body, generation) {
                    log(
                        LogLevel::Warn,
                        "rollout: cannot publish the config to other workers",
                    );
                }
                live.generation = generation;
                increment(self.config_metrics.updates);
                log(
                    LogLevel::Info,
                    &format!(
                        "rollout: config updated from source (generation {generation}, etag {etag})"
                    ),
                );
                self.install(config);
            }
            Err(errors) => {
                increment(self.config_metrics.rejected);
                for line in errors.lines("rollout: config from source rejected: ") {
                    log(LogLevel::Error, &line);
                }
                log(
                    LogLevel::Error,
                    &format!(
                        "rollout: config from source rejected with {} error(s); keeping the config in force",
                        errors.len()
                    ),
                );
            }
        }
    }

    pub(crate) fn on_source_response(&mut self, token: u32, n_headers: usize, body_size: usize) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if live.in_flight != Some(token) {
            return;
        }
        live.in_flight = None;
        self.fetch_answered(n_headers, body_size);
    }
}

/// An ETag for a source that sends none, so unchanged bodies are still recognised.
fn body_etag(body: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    format!("W/\"{:016x}\"", hasher.finish())
}
