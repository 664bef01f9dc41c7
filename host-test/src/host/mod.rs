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
mod calls;
mod context;
mod guest;
mod header_map;
mod http;
mod metrics;
mod module;
mod shared;
mod vm;
mod wasi;

pub use calls::{Cluster, ClusterAnswer, GrpcCall, GrpcCallResponse};
pub use module::{FilterModule, HostImport};
pub use vm::{ClientResponse, Exchange, ExchangeReport, StreamId, Vm};

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
    /// Timeout the filter asked for; zero means none, as in Envoy.
    pub timeout: Duration,
    /// When the call times out on the virtual clock (ns), if it has a timeout.
    pub deadline_ns: Option<u64>,
}

/// The answer to an [`HttpCall`]; empty headers mean the call failed (a reset): the filter
/// gets no headers, and status `BrokenConnection` with message `reset`.
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
    /// The clusters that exist besides the route's upstream, and how each answers: a call to
    /// a name not here is refused, as Envoy refuses a cluster it does not know.
    pub clusters: Vec<Cluster>,
    /// What happens to requests once the VM has failed (trapped): Envoy's `failure_policy`.
    pub failure_policy: FailurePolicy,
    /// FAIL_RELOAD's backoff: a failed VM is reloaded by the first request at least this long
    /// after its last load (Envoy's `reload_config.backoff.base_interval`, 1 s by default;
    /// Envoy waits a random time between it and 1.5 times it, the harness the lower bound).
    pub reload_backoff: Duration,
}

/// What Envoy does with requests once a filter's VM has failed (trapped), as the Wasm
/// filter's `failure_policy` says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailurePolicy {
    /// Envoy's default: the request that trapped and every later one get a 503.
    #[default]
    FailClosed,
    /// The filter is skipped: requests go on as if it were not configured.
    FailOpen,
    /// As FAIL_CLOSED, but a request after the backoff loads a fresh VM and goes through it.
    FailReload,
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
            clusters: Vec::new(),
            failure_policy: FailurePolicy::FailClosed,
            reload_backoff: Duration::from_secs(1),
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
    /// The filter paused the request (a headers or body callback returned 1).
    paused: bool,
    /// Whether the filter resumed the request (`proxy_continue_stream`) after pausing it.
    resumed: bool,
    /// The request body waits for the filter to resume the request it paused on headers.
    request_body_waiting: bool,
    /// The filter paused the response.
    response_paused: bool,
    /// The response body waits for the filter to resume the response.
    response_body_waiting: bool,
    /// Whether the filter resumed the response after pausing it.
    response_resumed: bool,
    request_headers: Headers,
    /// The request body the filter sees now: the chunk being delivered, or what it buffered.
    request_body: Vec<u8>,
    /// The request body that has passed the filter.
    request_body_passed: Vec<u8>,
    request_trailers: Headers,
    response_headers: Headers,
    /// The response body the filter sees now.
    response_body: Vec<u8>,
    /// The response body that has passed the filter.
    response_body_passed: Vec<u8>,
    response_trailers: Headers,
    /// A local response the filter asked for; Envoy sends it once the callback returns.
    local_response: Option<LocalResponse>,
    /// Whether a local response (the filter's or the failure policy's) replaced the upstream.
    replied_locally: bool,
    /// The response callbacks have begun: a local response now replaces the response
    /// without running them again.
    in_response: bool,
    /// The filter reset the stream (`proxy_close_stream`): the client gets no response.
    reset: bool,
    /// The VM this stream's context lives in failed (or had failed when the stream began):
    /// no callback runs any more, and the failure policy decides.
    failed: bool,
    /// Begun after the VM failed under FAIL_OPEN: the filter is not in this stream's chain.
    skipped: bool,
    /// The trap that failed the VM during this stream, if one did.
    trap: Option<String>,
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
    grpc_calls: Vec<GrpcCall>,
    /// The last token given to an HTTP call, a gRPC call and a gRPC stream: Envoy counts each
    /// in steps of 4 from 0, 1 and 2, so a token's low bits tell its kind.
    last_tokens: [u32; 3],
    call_response: Option<HttpCallResponse>,
    /// The gRPC message (`proxy_on_grpc_receive`) being delivered.
    grpc_message: Option<Vec<u8>>,
    /// The status `proxy_get_status` returns while a call's end is delivered.
    status: Option<(u32, String)>,
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
            grpc_calls: Vec::new(),
            last_tokens: [0, 1, 2],
            call_response: None,
            grpc_message: None,
            status: None,
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
