//! The Envoy/Istio proxy-wasm HTTP filter: a thin adapter that feeds request headers to
//! `rollout-core`, applies the header contract, counts requests, responses and latency per
//! version, and keeps the config current from a live source when one is configured.
//!
//! It speaks the proxy-wasm ABI 0.2.1 itself (exports here, host calls in `host`) rather than
//! through the SDK: the SDK's host-call wrappers panic on statuses they do not expect, which
//! kills the VM, and it exports every callback of the ABI, so Envoy calls into the VM for a
//! request's body, log and done phases too, which this filter has no use for. Every host
//! error is logged and met with a safe default.

mod host;
mod metrics;
mod source;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use host::{BufferType, HeaderMap, HeaderPairs, LogLevel};
use rollout_core::{Config, HostInputs};

use metrics::{increment, record, ConfigMetrics, VersionMetrics};
use source::{parse_plugin_config, LiveSource, PluginConfig, SharedKeys};

/// How often every VM checks shared data for a config another VM published: the bound on
/// how long a worker lags behind the one that fetched it.
const TICK_MS: u32 = 10;
/// A config from a source larger than this is refused, not parsed.
const MAX_CONFIG_BYTES: usize = 4 << 20;

/// Logs and moves on: a log line that cannot be written is no reason to fail a request.
fn log(level: LogLevel, message: &str) {
    let _ = host::log(level, message);
}

/// The host clock in milliseconds since the Unix epoch; 0 if the host cannot tell.
fn now_ms() -> u64 {
    host::now_ms().unwrap_or(0)
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

/// The config in force and its metric ids, shared by every request context of one root.
struct Shared {
    config: Config,
    /// Per slot (see `rollout_core::VersionChoice::slot`).
    metrics: Vec<VersionMetrics>,
}

impl Shared {
    fn new(config: Config) -> Rc<Shared> {
        let metrics = VersionMetrics::define_all(&config);
        Rc::new(Shared { config, metrics })
    }
}

/// State of a live source in one VM.
struct Live {
    source: LiveSource,
    keys: SharedKeys,
    /// Identifies this VM in the polling lease.
    token: u64,
    /// Generation of the config in force here (0: the fallback).
    generation: u64,
    /// The last ETag this VM got from the source, sent back as `If-None-Match`.
    seen_etag: Option<String>,
    in_flight: Option<u32>,
    next_poll_ms: u64,
    /// Whether the last fetch failed, so that only changes of state are logged.
    failing: bool,
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
    live: Option<Live>,
    config_metrics: ConfigMetrics,
}

impl Root {
    fn install(&mut self, config: Config) {
        self.shared = Some(Shared::new(config));
    }

    /// Takes up a config another VM published, if it is newer than the one in force.
    fn follow(&mut self) {
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
    fn poll(&mut self, now: u64) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if live.in_flight.is_some() || now < live.next_poll_ms {
            return;
        }
        live.next_poll_ms = now + live.source.poll_interval_ms;
        // The lease outlives a few polls, so another VM takes over only if this one stops.
        let lease_ms = 3 * live.source.poll_interval_ms + live.source.timeout_ms;
        if !live.keys.take_lease(live.token, now, now + lease_ms) {
            return;
        }
        let mut headers = vec![
            (":method", "GET"),
            (":path", live.source.path.as_str()),
            (":authority", live.source.authority.as_str()),
            ("accept", "application/json"),
        ];
        if let Some(etag) = &live.seen_etag {
            headers.push(("if-none-match", etag.as_str()));
        }
        let timeout_ms = u32::try_from(live.source.timeout_ms).unwrap_or(u32::MAX);
        match host::http_call(&live.source.cluster, &headers, timeout_ms) {
            Ok(token) => live.in_flight = Some(token),
            Err(status) => {
                let why = format!("cannot call cluster {:?}: {status:?}", live.source.cluster);
                self.fetch_failed(&why);
            }
        }
    }

    fn fetch_failed(&mut self, why: &str) {
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
            return self.fetch_failed("no response (connection failed or timed out)");
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
                log(LogLevel::Info, &format!("rollout: config updated from source (generation {generation}, etag {etag})"));
                self.install(config);
            }
            Err(errors) => {
                increment(self.config_metrics.rejected);
                for line in errors.lines("rollout: config from source rejected: ") {
                    log(LogLevel::Error, &line);
                }
                log(LogLevel::Error, &format!("rollout: config from source rejected with {} error(s); keeping the config in force", errors.len()));
            }
        }
    }
}

/// An ETag for a source that sends none, so unchanged bodies are still recognised.
fn body_etag(body: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    format!("W/\"{:016x}\"", hasher.finish())
}

impl Root {
    fn on_http_call_response(&mut self, token: u32, n_headers: usize, body_size: usize) {
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

impl Root {
    fn on_configure(&mut self) -> bool {
        self.config_metrics = ConfigMetrics::define();
        let bytes = match host::buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes,
            Err(status) => {
                log(
                    LogLevel::Error,
                    &format!("rollout: cannot read plugin configuration: {status:?}"),
                );
                return false;
            }
        };
        match parse_plugin_config(&bytes) {
            Err(errors) => {
                // Every error on its own line, so each path is visible in Envoy's log.
                for error in &errors {
                    log(
                        LogLevel::Error,
                        &format!("rollout: config rejected: {error}"),
                    );
                }
                log(
                    LogLevel::Error,
                    &format!("rollout: config rejected with {} error(s)", errors.len()),
                );
                increment(self.config_metrics.rejected);
                false
            }
            Ok(PluginConfig::Static(config)) => {
                log(LogLevel::Info, "rollout: static config loaded");
                self.install(config);
                self.live = None;
                true
            }
            Ok(PluginConfig::Live { source, fallback }) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "rollout: live config from cluster {:?} path {:?}, every {} ms",
                        source.cluster, source.path, source.poll_interval_ms
                    ),
                );
                self.install(fallback);
                let keys = SharedKeys::new(&source);
                self.live = Some(Live {
                    source,
                    keys,
                    token: wasi_random_u64(),
                    generation: 0,
                    seen_etag: None,
                    in_flight: None,
                    next_poll_ms: 0,
                    failing: false,
                });
                // Another VM may have fetched already: start from what it published.
                self.follow();
                if let Err(status) = host::set_tick_period_ms(TICK_MS) {
                    log(
                        LogLevel::Error,
                        &format!(
                            "rollout: no ticks ({status:?}); this VM will not follow the source"
                        ),
                    );
                }
                true
            }
        }
    }

    fn on_tick(&mut self) {
        if self.live.is_some() {
            self.follow();
            self.poll(now_ms());
        }
    }

    fn new_stream(&self) -> Stream {
        Stream {
            shared: self.shared.clone(),
            slot: None,
            started_ms: 0,
        }
    }
}

/// One HTTP request/response pair. It keeps the config that was in force when it started,
/// so a config update never changes a request half way.
#[derive(Default)]
struct Stream {
    shared: Option<Rc<Shared>>,
    /// The decided (rollout, version) slot, kept for the response.
    slot: Option<usize>,
    started_ms: u64,
}

impl Stream {
    fn on_request_headers(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        // One host call for every header: cheaper than one call per header the config reads.
        let headers = HeaderPairs::read(HeaderMap::Request).unwrap_or_else(|error| {
            log(
                LogLevel::Warn,
                &format!("rollout: cannot read request headers ({error:?}); deciding without them"),
            );
            HeaderPairs::default()
        });
        let mut entropy = wasi_random_u64;
        let inputs = HostInputs {
            entropy: Some(&mut entropy),
        };
        let decision = shared.config.decide(&headers, inputs);
        for header in shared.config.request_headers(&decision) {
            let copies = headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(header.name.as_bytes()))
                .count();
            // Replace, and before it remove, so that no client copy survives even where a host
            // replaces only the first of several values.
            if copies > 1 || (copies == 1 && header.value.is_none()) {
                let _ = host::remove_header(HeaderMap::Request, header.name);
            }
            if let Some(value) = header.value.as_deref() {
                let _ = host::replace_header(HeaderMap::Request, header.name, value);
            }
        }
        if let Some(choice) = decision.rollout {
            self.slot = Some(choice.slot);
            self.started_ms = now_ms();
            increment(shared.metrics.get(choice.slot).and_then(|m| m.requests));
        }
    }

    fn on_response_headers(&mut self) {
        let (Some(shared), Some(slot)) = (self.shared.as_ref(), self.slot) else {
            return;
        };
        if let Some(metrics) = shared.metrics.get(slot) {
            let status = host::header_value(HeaderMap::Response, ":status")
                .ok()
                .flatten();
            metrics.count_response(status.as_deref());
            record(metrics.latency_ms, now_ms().saturating_sub(self.started_ms));
        }
        for header in shared.config.response_headers(slot) {
            let _ = if header.append {
                host::add_header(HeaderMap::Response, header.name, &header.value)
            } else {
                host::replace_header(HeaderMap::Response, header.name, &header.value)
            };
        }
    }
}

/// The contexts of this VM: roots (one per plugin configuration sharing the VM) and the
/// streams in flight, by the ids the host gives them.
#[derive(Default)]
struct Contexts {
    roots: BTreeMap<u32, Root>,
    streams: BTreeMap<u32, Stream>,
}

thread_local! {
    static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
}

/// Runs `f` on the contexts; a re-entrant call (which the host never makes) does nothing
/// rather than panic.
fn with_contexts<R: Default>(f: impl FnOnce(&mut Contexts) -> R) -> R {
    CONTEXTS.with(|c| {
        c.try_borrow_mut()
            .map(|mut c| f(&mut c))
            .unwrap_or_default()
    })
}

/// The ABI entry points. Envoy calls only the callbacks a module exports, so this filter
/// exports only the ones it needs: no body, trailer, log or done callbacks per request.
// `no_mangle` counts as unsafe code: these names are the ABI's, so exporting them is the point.
#[allow(missing_docs, unsafe_code)] // The ABI names and documents these.
mod abi {
    use super::{with_contexts, Root};

    /// Which ABI the module speaks.
    #[no_mangle]
    pub extern "C" fn proxy_abi_version_0_2_1() {}

    #[cfg(target_os = "wasi")]
    extern "C" {
        fn __wasm_call_ctors();
    }

    /// Runs static constructors, as a WASI reactor module must before anything else.
    #[no_mangle]
    pub extern "C" fn _initialize() {
        // SAFETY: the linker's constructor list, run once by the host before any callback.
        #[cfg(target_os = "wasi")]
        #[allow(unsafe_code)]
        unsafe {
            __wasm_call_ctors();
        }
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_context_create(context_id: u32, parent_id: u32) {
        with_contexts(|c| {
            if parent_id == 0 {
                c.roots.insert(context_id, Root::default());
            } else {
                // A stream of an unknown root gets no config: it passes untouched.
                let stream = c
                    .roots
                    .get(&parent_id)
                    .map(Root::new_stream)
                    .unwrap_or_default();
                c.streams.insert(context_id, stream);
            }
        });
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_vm_start(_root_id: u32, _vm_configuration_size: usize) -> u32 {
        1
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_configure(root_id: u32, _configuration_size: usize) -> u32 {
        with_contexts(|c| c.roots.get_mut(&root_id).is_some_and(Root::on_configure)).into()
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_tick(root_id: u32) {
        with_contexts(|c| c.roots.get_mut(&root_id).map(Root::on_tick));
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_http_call_response(
        root_id: u32,
        token: u32,
        n_headers: usize,
        body_size: usize,
        _n_trailers: usize,
    ) {
        with_contexts(|c| {
            c.roots
                .get_mut(&root_id)
                .map(|root| root.on_http_call_response(token, n_headers, body_size))
        });
    }

    /// Always 0, Continue: the filter never holds a request.
    #[no_mangle]
    pub extern "C" fn proxy_on_request_headers(context_id: u32, _n: usize, _eos: u32) -> u32 {
        with_contexts(|c| {
            c.streams
                .get_mut(&context_id)
                .map(|s| s.on_request_headers())
        });
        0
    }

    /// Always 0, Continue.
    #[no_mangle]
    pub extern "C" fn proxy_on_response_headers(context_id: u32, _n: usize, _eos: u32) -> u32 {
        with_contexts(|c| {
            c.streams
                .get_mut(&context_id)
                .map(|s| s.on_response_headers())
        });
        0
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_delete(context_id: u32) {
        with_contexts(|c| {
            if c.streams.remove(&context_id).is_none() {
                c.roots.remove(&context_id);
            }
        });
    }
}
