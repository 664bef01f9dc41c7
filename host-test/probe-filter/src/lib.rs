//! A test filter written the ordinary way, with the SDK's context traits, so the harness is
//! checked against a filter that is not ours: each request header `x-probe: OP` exercises one
//! host feature (shared data with CAS, properties, HTTP calls, time, environment, metrics,
//! local responses, stdout), and ticks count themselves.

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
        self.set_tick_period(Duration::from_millis(100));
        true
    }

    fn on_tick(&mut self) {
        proxy_wasm::hostcalls::increment_metric(self.metrics.ticks, 1).unwrap();
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            metrics: self.metrics,
            config: self.config.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Probe {
    metrics: Metrics,
    config: String,
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
        self.set_http_request_header("x-call-status", Some(&status));
        self.set_http_request_header("x-call-body", Some(&String::from_utf8_lossy(&body)));
        self.set_http_request_header("x-call-headers", Some(&n_headers.to_string()));
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
                let headers = vec![
                    (":method", "GET"),
                    (":path", "/config"),
                    (":authority", "config"),
                ];
                match self.dispatch_http_call(
                    "config-cluster",
                    headers,
                    Some(b"ping"),
                    vec![],
                    Duration::from_secs(5),
                ) {
                    Ok(_) => Action::Pause,
                    Err(status) => {
                        self.set_http_request_header("x-call-error", Some(&format!("{status:?}")));
                        Action::Continue
                    }
                }
            }
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

    fn on_http_request_body(&mut self, body_size: usize, _eos: bool) -> Action {
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        self.set_http_request_body(0, body_size, &body.to_ascii_uppercase());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.add_http_response_header("x-probe-seen", "yes");
        Action::Continue
    }
}
