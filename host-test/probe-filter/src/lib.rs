//! A test filter written the ordinary way, with the SDK's context traits, so the harness is
//! checked against a filter that is not ours: each request header `x-probe: OP` exercises one
//! host feature (shared data with CAS, properties, HTTP calls, time, environment, metrics,
//! local responses, stdout), and ticks count themselves. The modes the differential suite
//! (issue 16, `testdata/differential/`) runs through the harness and a real Envoy log one
//! `info` line per callback they care about, so both sides' logs show which callbacks ran.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a test fixture: the SDK's helpers unwrap host errors, and so may this filter"
)]

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(ProbeRoot::default()));
}}

#[derive(Default, Clone, Copy)]
struct Metrics {
    requests: u32,
    ticks: u32,
    gauge: u32,
    histogram: u32,
}

#[derive(Default)]
struct ProbeRoot {
    metrics: Metrics,
    config: String,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        let vm_config = self.get_vm_configuration().unwrap_or_default();
        proxy_wasm::hostcalls::log(
            LogLevel::Info,
            &format!("vm config: {}", String::from_utf8_lossy(&vm_config)),
        )
        .unwrap();
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.config = String::from_utf8_lossy(&config).into_owned();
        if self.config == "refuse" {
            return false;
        }
        let define = |kind, name| proxy_wasm::hostcalls::define_metric(kind, name).unwrap();
        self.metrics = Metrics {
            requests: define(MetricType::Counter, "probe.requests"),
            ticks: define(MetricType::Counter, "probe.ticks"),
            gauge: define(MetricType::Gauge, "probe.gauge"),
            histogram: define(MetricType::Histogram, "probe.latency"),
        };
        // Ticks run on real time in Envoy and on the virtual clock in the harness: the
        // differential scenarios configure "differential" so the tick count cannot differ.
        if self.config != "differential" {
            self.set_tick_period(Duration::from_millis(100));
        }
        true
    }

    fn on_tick(&mut self) {
        proxy_wasm::hostcalls::increment_metric(self.metrics.ticks, 1).unwrap();
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            metrics: self.metrics,
            config: self.config.clone(),
            op: String::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Probe {
    metrics: Metrics,
    config: String,
    /// The request's `x-probe` header: which mode this stream runs.
    op: String,
}

/// One `info` line in the filter's log.
fn info(message: &str) {
    proxy_wasm::hostcalls::log(LogLevel::Info, message).unwrap();
}

impl Probe {
    /// The request header `x-timeout-ms` as a duration, or `default` milliseconds.
    fn timeout(&self, default: u64) -> Duration {
        let ms = self
            .get_http_request_header("x-timeout-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(default);
        Duration::from_millis(ms)
    }

    /// The cluster named by the request header `x-cluster`, or "config-cluster".
    fn cluster(&self) -> String {
        self.get_http_request_header("x-cluster")
            .unwrap_or_else(|| "config-cluster".to_owned())
    }

    /// Dispatches the HTTP call of the `call` modes; logs the result; whether it was sent.
    fn dispatch(&mut self) -> bool {
        let cluster = self.cluster();
        let headers = vec![
            (":method", "GET"),
            (":path", "/config"),
            (":authority", "config"),
        ];
        let timeout = self.timeout(5000);
        match self.dispatch_http_call(&cluster, headers, Some(b"ping"), vec![], timeout) {
            Ok(_) => {
                info(&format!("http call to {cluster}: dispatched"));
                true
            }
            Err(status) => {
                info(&format!("http call to {cluster}: {status:?}"));
                self.set_http_request_header("x-call-error", Some(&format!("{status:?}")));
                false
            }
        }
    }
}

impl Context for Probe {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        n_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_else(|| "failed".to_owned());
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        info(&format!(
            "on_http_call_response: status {status}, headers {:?}, body {:?}",
            // Envoy's x-envoy-upstream-service-time is a duration: its value would make
            // two runs differ, so only its name is logged.
            self.get_http_call_response_headers()
                .into_iter()
                .map(|(k, v)| if k == "x-envoy-upstream-service-time" {
                    (k, "*".to_owned())
                } else {
                    (k, v)
                })
                .collect::<Vec<_>>(),
            String::from_utf8_lossy(&body)
        ));
        // The stream went on without waiting: its headers are gone, nothing to resume.
        if self.op == "call-and-continue" {
            return;
        }
        self.set_http_request_header("x-call-status", Some(&status));
        self.set_http_request_header("x-call-body", Some(&String::from_utf8_lossy(&body)));
        self.set_http_request_header("x-call-headers", Some(&n_headers.to_string()));
        self.resume_http_request();
    }

    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, response_size: usize) {
        let (status, message) = self.get_grpc_status();
        info(&format!(
            "on_grpc_call_response: status_code {status_code}, grpc status {status}, message {:?}, {response_size} bytes",
            message.unwrap_or_default()
        ));
        self.resume_http_request();
    }
}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        // Configured as "die", the filter traps on every request: real-Envoy tests use it to
        // check how a route layout and failure policy behave when a filter's VM dies.
        match self.config.trim() {
            "die" => panic!("probe: dying on purpose"),
            // Configured as "pass", it does nothing at all: the load benchmark's floor for any
            // wasm filter (the host's cost of running one per request).
            "pass" => return Action::Continue,
            _ => {}
        }
        let op = self.get_http_request_header("x-probe").unwrap_or_default();
        self.op = op.clone();
        if DIFFERENTIAL_MODES.contains(&op.as_str()) {
            info(&format!("on_http_request_headers: x-probe {op}"));
        }
        match op.as_str() {
            "shared-set" => {
                let value = self.get_http_request_header("x-value").unwrap_or_default();
                let cas = self
                    .get_http_request_header("x-cas")
                    .and_then(|c| c.parse().ok());
                let result = match self.set_shared_data("probe-key", Some(value.as_bytes()), cas) {
                    Ok(()) => "ok".to_owned(),
                    Err(status) => format!("{status:?}"),
                };
                self.send_http_response(200, vec![("x-result", &result)], None);
                Action::Pause
            }
            "shared-get" => {
                let (value, cas) = self.get_shared_data("probe-key");
                let value = value
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_else(|| "none".to_owned());
                let cas = cas.map(|c| c.to_string()).unwrap_or_default();
                self.send_http_response(
                    200,
                    vec![("x-value", &value), ("x-cas", &cas)],
                    Some(b"shared"),
                );
                Action::Pause
            }
            "property" => {
                let name = self.get_property(vec!["plugin_name"]).unwrap_or_default();
                self.set_http_request_header(
                    "x-plugin-name",
                    Some(&String::from_utf8_lossy(&name)),
                );
                Action::Continue
            }
            "call" => {
                if self.dispatch() {
                    Action::Pause
                } else {
                    Action::Continue
                }
            }
            "call-and-continue" => {
                self.dispatch();
                Action::Continue
            }
            "grpc" => {
                let cluster = self.cluster();
                let timeout = self.timeout(5000);
                match self.dispatch_grpc_call(
                    &cluster,
                    "probe.Probe",
                    "Get",
                    vec![],
                    Some(b""),
                    timeout,
                ) {
                    Ok(_) => {
                        info(&format!("grpc call to {cluster}: dispatched"));
                        Action::Pause
                    }
                    Err(status) => {
                        info(&format!("grpc call to {cluster}: {status:?}"));
                        Action::Continue
                    }
                }
            }
            "local-reply" => {
                self.send_http_response(
                    418,
                    vec![("X-Mixed-Case", "Yes"), ("x-lower", "1")],
                    Some(b"local body"),
                );
                Action::Pause
            }
            "trap" => panic!("probe: trap on purpose"),
            // Its work is in on_http_response_body.
            "rewrite-response" => Action::Continue,
            "time" => {
                let nanos = self
                    .get_current_time()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                self.set_http_request_header("x-time", Some(&nanos.to_string()));
                Action::Continue
            }
            "env" => {
                let value = std::env::var("PROBE_ENV").unwrap_or_else(|_| "unset".to_owned());
                self.set_http_request_header("x-env", Some(&value));
                Action::Continue
            }
            "config" => {
                let config = self.config.clone();
                self.set_http_request_header("x-config", Some(&config));
                Action::Continue
            }
            "stdout" => {
                println!("hello from stdout");
                Action::Continue
            }
            "replace-all" => {
                let pairs = vec![(":path", "/rewritten"), ("x-only", "this")];
                self.set_http_request_headers(pairs);
                Action::Continue
            }
            _ => {
                proxy_wasm::hostcalls::increment_metric(self.metrics.requests, 1).unwrap();
                proxy_wasm::hostcalls::record_metric(self.metrics.gauge, 7).unwrap();
                proxy_wasm::hostcalls::record_metric(self.metrics.histogram, 42).unwrap();
                let seen = proxy_wasm::hostcalls::get_metric(self.metrics.requests).unwrap();
                self.set_http_request_header("x-requests-seen", Some(&seen.to_string()));
                Action::Continue
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, eos: bool) -> Action {
        if DIFFERENTIAL_MODES.contains(&self.op.as_str()) {
            info(&format!(
                "on_http_request_body: {body_size} bytes, end_of_stream {eos}"
            ));
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        self.set_http_request_body(0, body_size, &body.to_ascii_uppercase());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, eos: bool) -> Action {
        if DIFFERENTIAL_MODES.contains(&self.op.as_str()) {
            let status = self.get_http_response_header(":status").unwrap_or_default();
            info(&format!(
                "on_http_response_headers: status {status}, end_of_stream {eos}"
            ));
        }
        self.add_http_response_header("x-probe-seen", "yes");
        if self.op == "rewrite-response" {
            // The body's length changes, and Envoy sends these headers before the body
            // (pausing here would hold the body callbacks too): drop the stale length.
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, eos: bool) -> Action {
        if !DIFFERENTIAL_MODES.contains(&self.op.as_str()) {
            return Action::Continue;
        }
        // Only the last call is logged: how Envoy splits a body into calls is its own business.
        if !eos {
            return if self.op == "rewrite-response" {
                Action::Pause
            } else {
                Action::Continue
            };
        }
        info(&format!(
            "on_http_response_body: {body_size} bytes at end_of_stream"
        ));
        if self.op == "rewrite-response" {
            let body = self
                .get_http_response_body(0, body_size)
                .unwrap_or_default();
            let mut rewritten = b"rewritten:".to_vec();
            rewritten.extend_from_slice(&body);
            self.set_http_response_body(0, body_size, &rewritten);
        }
        Action::Continue
    }
}

/// The modes of the differential suite, which log the callbacks they see.
const DIFFERENTIAL_MODES: &[&str] = &[
    "local-reply",
    "rewrite-response",
    "call",
    "call-and-continue",
    "grpc",
    "trap",
    "body",
];
