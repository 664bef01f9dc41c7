//! A proxy-wasm ABI 0.2.1 host on wasmtime: loads any proxy-wasm HTTP filter, drives requests
//! and responses through it, and records what it did.
//!
//! Behaviour follows Envoy where it matters to a filter: header names compare case-insensitively
//! and are stored lowercase, `replace` removes every copy before setting one, metrics and shared
//! data are shared by every VM loaded from one [`FilterModule`] (as Envoy shares them between
//! worker threads), and time is a virtual clock the test advances.
//!
//! Laid out as wasmtime's WASI host and Envoy's proxy-wasm host are: one file per group of
//! imports, each import a named function that decodes guest memory and calls a method on the
//! per-VM `HostState`, and one `add_to_linker` per group; `module.rs` and `vm.rs` drive the
//! filter from outside.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use wasmtime::{Func, Memory};

use crate::abi::{LogLevel, MetricKind};

mod buffers;
mod context;
mod guest;
mod header_map;
mod http;
mod metrics;
mod module;
mod shared;
mod vm;
mod wasi;

pub use module::{FilterModule, HostImport};
pub use vm::{Exchange, ExchangeReport, StreamId, Vm};

/// Header pairs in order; values are bytes since real headers need not be UTF-8.
pub type Headers = Vec<(String, Vec<u8>)>;

/// Builds header pairs from string pairs.
pub fn headers<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Headers {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                k.as_ref().to_ascii_lowercase(),
                v.as_ref().as_bytes().to_vec(),
            )
        })
        .collect()
}

/// The first value of a header, case-insensitively.
pub fn header_value<'h>(headers: &'h Headers, name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// State shared by every VM of one module, as Envoy shares it across worker threads.
#[derive(Default)]
struct SharedState {
    vms_started: u64,
    metrics: Vec<Metric>,
    data: HashMap<String, (Vec<u8>, u32)>,
    queues: Vec<Queue>,
}

struct Queue {
    vm_id: String,
    name: String,
    items: VecDeque<Vec<u8>>,
}

/// One metric as the filter defined it, with its current value.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Metric {
    /// The name the filter gave it.
    pub name: String,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// The value of a counter or gauge; the number of samples of a histogram.
    pub value: i64,
    /// Every value recorded into a histogram.
    pub samples: Vec<u64>,
}

/// One line the filter logged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogEntry {
    /// Its level.
    pub level: LogLevel,
    /// Its text.
    pub message: String,
}

/// A local response the filter sent instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LocalResponse {
    /// HTTP status code.
    pub status: u32,
    /// Envoy's response code details.
    pub details: String,
    /// Body bytes, lossily as text.
    pub body: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
}

/// An outgoing HTTP call the filter dispatched, waiting for an answer from the test or user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// The token the filter got for it.
    pub token: u32,
    /// The context that made the call.
    pub context_id: u32,
    /// The cluster (upstream) name.
    pub upstream: String,
    /// Request headers, pseudo-headers included.
    pub headers: Headers,
    /// Request body.
    pub body: Vec<u8>,
    /// Timeout the filter asked for.
    pub timeout: Duration,
}

/// The answer to an [`HttpCall`]; `None` headers means the call failed (reset, timeout).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCallResponse {
    /// Response headers with `:status`; empty for a failed call.
    pub headers: Headers,
    /// Response body.
    pub body: Vec<u8>,
}

/// Options for one VM.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// The VM configuration buffer.
    pub vm_configuration: Vec<u8>,
    /// Environment variables visible through WASI.
    pub env: Vec<(String, String)>,
    /// Properties by path, segments joined with '.', such as `plugin_name`.
    pub properties: HashMap<String, Vec<u8>>,
    /// The log level the filter is told.
    pub log_level: LogLevel,
    /// Start of the virtual clock, in nanoseconds since the Unix epoch.
    pub start_time_ns: u64,
    /// Imports that answer with the given status instead of working (for example
    /// `proxy_get_header_map_value` with 2, BadArgument): how a filter meets a host error.
    /// Every import honours it (`proc_exit`, which returns nothing, traps); a name the host
    /// does not define makes [`FilterModule::start_vm`] fail.
    pub host_errors: HashMap<String, i32>,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            vm_configuration: Vec::new(),
            env: Vec::new(),
            properties: HashMap::new(),
            log_level: LogLevel::Info,
            // 2026-01-01T00:00:00Z: a fixed start keeps runs repeatable.
            start_time_ns: 1_767_225_600_000_000_000,
            host_errors: HashMap::new(),
        }
    }
}

/// Crossings between the filter and the host: what a proxy-wasm filter costs beyond its own
/// code (each is a host call or a callback in Envoy's V8 runtime too).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CallCounts {
    /// Calls the filter made to host functions (proxy-wasm and WASI).
    pub into_host: u32,
    /// Calls the host made into the filter: callbacks, and allocations for data it returns.
    pub into_filter: u32,
}

impl CallCounts {
    fn since(self, before: CallCounts) -> CallCounts {
        CallCounts {
            into_host: self.into_host - before.into_host,
            into_filter: self.into_filter - before.into_filter,
        }
    }
}

/// One stream (HTTP context) of a VM, as its callbacks and the host calls see it.
#[derive(Default)]
struct StreamState {
    /// The VM's call counts when the stream began.
    calls_at_begin: CallCounts,
    original_request_headers: Headers,
    paused: bool,
    /// Whether the filter resumed the request (`proxy_continue_stream`) after pausing it.
    resumed: bool,
    request_headers: Headers,
    request_body: Vec<u8>,
    request_trailers: Headers,
    response_headers: Headers,
    response_body: Vec<u8>,
    response_trailers: Headers,
    local_response: Option<LocalResponse>,
}

/// Per-VM host state, the data of the wasmtime store; each group of imports adds the methods
/// it calls in its own file.
struct HostState {
    calls: CallCounts,
    shared: Arc<Mutex<SharedState>>,
    memory: Option<Memory>,
    alloc: Option<Func>,
    options: VmOptions,
    plugin_configuration: Vec<u8>,
    now_ns: u64,
    tick_period_ms: u32,
    /// When the last tick fired (or the period was set): as in Envoy, ticks keep their own
    /// cadence however the clock is advanced, a little at a time or in one jump.
    last_tick_ns: u64,
    logs: Vec<LogEntry>,
    streams: HashMap<u32, StreamState>,
    /// The context whose callback is running, or that the filter chose.
    current: u32,
    http_calls: Vec<HttpCall>,
    next_token: u32,
    call_response: Option<HttpCallResponse>,
    vm_id: String,
    /// What WASI `random_get` returns during the current exchange, if the test fixed it.
    entropy: Option<u64>,
    /// State of the generator behind `random_get` otherwise.
    random_state: u64,
    /// The status each import answers with instead of working, by its index in the linker;
    /// empty when none is injected.
    injected: Vec<Option<i32>>,
}

impl HostState {
    /// A VM's fresh state; `seed` picks its random sequence, `injected` is what
    /// [`HostState::injected_status`] answers.
    fn new(
        shared: Arc<Mutex<SharedState>>,
        options: VmOptions,
        seed: u64,
        injected: Vec<Option<i32>>,
    ) -> HostState {
        let vm_id = options
            .properties
            .get("plugin_vm_id")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        HostState {
            calls: CallCounts::default(),
            shared,
            memory: None,
            alloc: None,
            now_ns: options.start_time_ns,
            last_tick_ns: options.start_time_ns,
            options,
            plugin_configuration: Vec::new(),
            tick_period_ms: 0,
            logs: Vec::new(),
            streams: HashMap::new(),
            current: 0,
            http_calls: Vec::new(),
            next_token: 0,
            call_response: None,
            vm_id,
            entropy: None,
            random_state: 0x853c_49e6_748f_ea9b ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            injected,
        }
    }

    /// The status a test told the import at `index` to answer with, if any.
    fn injected_status(&self, index: usize) -> Option<i32> {
        self.injected.get(index).copied().flatten()
    }

    fn shared(&self) -> MutexGuard<'_, SharedState> {
        lock(&self.shared)
    }

    /// The stream whose callback is running, if the current context is one.
    fn stream_mut(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.current)
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.logs.push(LogEntry { level, message });
    }
}

/// The shared state, even if a test thread panicked while holding it: the data is still usable.
fn lock(shared: &Mutex<SharedState>) -> MutexGuard<'_, SharedState> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers every import of the host: proxy-wasm's under `env`, and the WASI calls a Rust
/// filter for wasm32-wasip1 makes.
fn add_to_linker(linker: &mut guest::Imports<'_>) -> anyhow::Result<()> {
    context::add_to_linker(linker)?;
    buffers::add_to_linker(linker)?;
    header_map::add_to_linker(linker)?;
    shared::add_to_linker(linker)?;
    http::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    wasi::add_to_linker(linker)
}
