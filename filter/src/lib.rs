//! The Envoy/Istio proxy-wasm HTTP filter: a thin adapter that feeds request headers to
//! `rollout-core`, applies the header contract, and counts requests and responses per version.
//!
//! Host calls go through `proxy_wasm::hostcalls` rather than the context traits, because the
//! trait helpers `unwrap()` host errors and a panic here kills the VM; every host error is
//! instead logged and met with a safe default.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use rollout_core::{Config, HostInputs};

/// The module's entry point (`_initialize`), which registers the root context.
#[allow(missing_docs)] // The macro's function cannot carry a doc comment.
mod entry {
    use super::*;
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| Box::new(Root::default()));
    }}
}

/// Logs and moves on: a log line that cannot be written is no reason to fail a request.
fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Random bits from the host (WASI `random_get`, which Envoy implements). The core asks for
/// them only for a keyless request to a `no_key: random` rollout, so most requests make no
/// such call.
fn wasi_random_u64() -> u64 {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        fn random_get(buf: *mut u8, len: usize) -> u16;
    }
    let mut bytes = [0u8; 8];
    // SAFETY: `bytes` is a live, writable buffer of exactly the length passed. An error
    // leaves it zeroed, which still gives a valid (if not random) choice.
    #[allow(unsafe_code)]
    unsafe {
        random_get(bytes.as_mut_ptr(), bytes.len());
    }
    u64::from_le_bytes(bytes)
}

/// The parsed config and the metric ids, shared by every request context of one root.
struct Shared {
    config: Config,
    /// Per slot (see `rollout_core::VersionChoice::slot`).
    metrics: Vec<VersionMetrics>,
}

/// Metric ids of one (rollout, version).
struct VersionMetrics {
    requests: Option<u32>,
    /// Responses by status class: 1xx to 5xx, then "other" for anything unparsable.
    responses: [Option<u32>; 6],
}

/// A metric name with its labels embedded as `NAME.KEY=.=VALUE;.;...`, the convention Istio's
/// stats use: Envoy's `stats_tags` (see envoy/static/envoy.yaml) turn each `KEY=.=VALUE;.;`
/// into a Prometheus label and strip it from the name. Without those tags the name is still
/// unique and readable.
fn metric_name(base: &str, tags: &[(&str, &str)]) -> String {
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

const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

fn define_counter(name: &str) -> Option<u32> {
    match hostcalls::define_metric(MetricType::Counter, name) {
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

fn increment(id: Option<u32>) {
    if let Some(id) = id {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => Vec::new(),
            Err(status) => {
                log(
                    LogLevel::Error,
                    &format!("rollout: cannot read plugin configuration: {status:?}"),
                );
                return false;
            }
        };
        let config = match Config::from_json(&bytes) {
            Ok(config) => config,
            Err(errors) => {
                // Every error on its own line, so each path is visible in Envoy's log.
                for error in &errors.0 {
                    log(
                        LogLevel::Error,
                        &format!("rollout: config rejected: {error}"),
                    );
                }
                log(
                    LogLevel::Error,
                    &format!(
                        "rollout: config rejected with {} error(s); keeping the previous one",
                        errors.0.len()
                    ),
                );
                return false;
            }
        };
        let metrics = config
            .versions()
            .map(|(rollout, version)| VersionMetrics {
                requests: define_counter(&metric_name(
                    "rollout_requests_total",
                    &[("rollout", rollout), ("version", version)],
                )),
                responses: STATUS_CLASSES.map(|class| {
                    let tags = [("rollout", rollout), ("version", version), ("class", class)];
                    define_counter(&metric_name("rollout_responses_total", &tags))
                }),
            })
            .collect();
        log(
            LogLevel::Info,
            &format!(
                "rollout: config loaded: {} rollout(s), {} flag(s)",
                config.rollout_names().count(),
                config.flag_values().count()
            ),
        );
        self.shared = Some(Rc::new(Shared { config, metrics }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            shared: self.shared.clone(),
            slot: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP request/response pair.
struct Stream {
    shared: Option<Rc<Shared>>,
    /// The decided (rollout, version) slot, kept for the response.
    slot: Option<usize>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        // One host call for every header: cheaper than one call per header the config reads.
        let headers =
            hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_else(|status| {
                log(
                    LogLevel::Warn,
                    &format!(
                        "rollout: cannot read request headers ({status:?}); deciding without them"
                    ),
                );
                Vec::new()
            });
        let mut entropy = wasi_random_u64;
        let inputs = HostInputs {
            entropy: Some(&mut entropy),
        };
        let decision = shared.config.decide(headers.as_slice(), inputs);
        for header in shared.config.request_headers(&decision) {
            let copies = headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(header.name))
                .count();
            // Replace, and before it remove, so that no client copy survives even where a host
            // replaces only the first of several values.
            if copies > 1 || (copies == 1 && header.value.is_none()) {
                let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, header.name);
            }
            if let Some(value) = header.value.as_deref() {
                let _ =
                    hostcalls::set_map_value(MapType::HttpRequestHeaders, header.name, Some(value));
            }
        }
        if let Some(choice) = decision.rollout {
            self.slot = Some(choice.slot);
            increment(shared.metrics.get(choice.slot).and_then(|m| m.requests));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (Some(shared), Some(slot)) = (self.shared.as_ref(), self.slot) else {
            return Action::Continue;
        };
        let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten();
        let class = match status.as_deref() {
            Some([d @ b'1'..=b'5', b'0'..=b'9', b'0'..=b'9']) => usize::from(d - b'1'),
            _ => 5,
        };
        if let Some(metrics) = shared.metrics.get(slot) {
            increment(metrics.responses.get(class).copied().flatten());
        }
        for header in shared.config.response_headers(slot) {
            let _ = if header.append {
                hostcalls::add_map_value(MapType::HttpResponseHeaders, header.name, &header.value)
            } else {
                hostcalls::set_map_value(
                    MapType::HttpResponseHeaders,
                    header.name,
                    Some(&header.value),
                )
            };
        }
        Action::Continue
    }
}
