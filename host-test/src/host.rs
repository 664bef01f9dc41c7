//! A proxy-wasm ABI 0.2.1 host on wasmtime: loads any proxy-wasm HTTP filter, drives requests
//! and responses through it, and records what it did.
//!
//! Behaviour follows Envoy where it matters to a filter: header names compare case-insensitively
//! and are stored lowercase, `replace` removes every copy before setting one, metrics and shared
//! data are shared by every VM loaded from one [`FilterModule`] (as Envoy shares them between
//! worker threads), and time is a virtual clock the test advances.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use wasmtime::{CallHook, Caller, Engine, Func, Instance, Linker, Memory, Module, Store, Val};

use crate::abi::{self, status, BufferType, LogLevel, MapType, MetricKind};

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

/// A compiled filter module, and the state its VMs share (metrics, shared data, queues).
#[derive(Clone)]
pub struct FilterModule {
    engine: Engine,
    module: Module,
    shared: Arc<Mutex<SharedState>>,
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
    items: std::collections::VecDeque<Vec<u8>>,
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
    /// Honoured by the header-map, metric and clock calls.
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

/// A stream started with [`Vm::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamId(u32);

#[derive(Default)]
struct StreamState {
    /// The VM's call counts when the stream began.
    calls_at_begin: CallCounts,
    original_request_headers: Headers,
    paused: bool,
    request_headers: Headers,
    request_body: Vec<u8>,
    request_trailers: Headers,
    response_headers: Headers,
    response_body: Vec<u8>,
    response_trailers: Headers,
    local_response: Option<LocalResponse>,
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

/// Per-VM host state, the data of the wasmtime store.
struct HostState {
    calls: CallCounts,
    shared: Arc<Mutex<SharedState>>,
    memory: Option<Memory>,
    alloc: Option<Func>,
    options: VmOptions,
    plugin_configuration: Vec<u8>,
    now_ns: u64,
    tick_period_ms: u32,
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
}

impl HostState {
    fn shared(&self) -> MutexGuard<'_, SharedState> {
        // A poisoned lock only means another test thread panicked; the data is still usable.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn map_mut(&mut self, map: MapType) -> Option<&mut Headers> {
        if matches!(
            map,
            MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers
        ) {
            return match map {
                MapType::HttpCallResponseHeaders => {
                    self.call_response.as_mut().map(|r| &mut r.headers)
                }
                _ => None,
            };
        }
        let stream = self.streams.get_mut(&self.current)?;
        Some(match map {
            MapType::RequestHeaders => &mut stream.request_headers,
            MapType::RequestTrailers => &mut stream.request_trailers,
            MapType::ResponseHeaders => &mut stream.response_headers,
            MapType::ResponseTrailers => &mut stream.response_trailers,
            MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers => return None,
        })
    }

    fn buffer(&self, buffer: BufferType) -> Option<&[u8]> {
        let stream = self.streams.get(&self.current);
        match buffer {
            BufferType::RequestBody => stream.map(|s| s.request_body.as_slice()),
            BufferType::ResponseBody => stream.map(|s| s.response_body.as_slice()),
            BufferType::HttpCallResponseBody => {
                self.call_response.as_ref().map(|r| r.body.as_slice())
            }
            BufferType::VmConfiguration => Some(&self.options.vm_configuration),
            BufferType::PluginConfiguration => Some(&self.plugin_configuration),
        }
    }
}

type Cx<'a> = Caller<'a, HostState>;

/// A u32 argument as wasm passes it.
fn v(n: u32) -> Val {
    Val::I32(n as i32)
}

fn read(cx: &Cx<'_>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let memory = cx.data().memory?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    memory
        .data(cx)
        .get(ptr..ptr.checked_add(len)?)
        .map(<[u8]>::to_vec)
}

fn read_str(cx: &Cx<'_>, ptr: i32, len: i32) -> Option<String> {
    read(cx, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn write(cx: &mut Cx<'_>, ptr: i32, bytes: &[u8]) -> bool {
    let Some(memory) = cx.data().memory else {
        return false;
    };
    memory.write(cx, ptr as u32 as usize, bytes).is_ok()
}

fn write_u32(cx: &mut Cx<'_>, ptr: i32, value: u32) -> bool {
    write(cx, ptr, &value.to_le_bytes())
}

/// Copies `bytes` into guest memory allocated by the guest's own allocator, and writes the
/// pointer and size to the two return slots, as every ABI call that returns data does.
fn give(cx: &mut Cx<'_>, bytes: &[u8], ret_ptr: i32, ret_size: i32) -> wasmtime::Result<i32> {
    let alloc = cx
        .data()
        .alloc
        .ok_or_else(|| wasmtime::format_err!("filter exports no allocator"))?;
    let mut out = [Val::I32(0)];
    alloc.call(&mut *cx, &[Val::I32(bytes.len() as i32)], &mut out)?;
    let ptr = out[0].unwrap_i32();
    if ptr == 0 && !bytes.is_empty() {
        wasmtime::bail!("filter allocator returned null for {} bytes", bytes.len());
    }
    let ok = write(cx, ptr, bytes)
        && write_u32(cx, ret_ptr, ptr as u32)
        && write_u32(cx, ret_size, bytes.len() as u32);
    Ok(status_of(ok))
}

/// `OK` if a write into guest memory worked, else `BAD_ARGUMENT` (a pointer out of bounds).
fn status_of(written: bool) -> i32 {
    if written {
        status::OK
    } else {
        status::BAD_ARGUMENT
    }
}

/// The index of the first item that `found` accepts, pushing `make()` first if none does.
fn find_or_push<T>(
    items: &mut Vec<T>,
    found: impl Fn(&T) -> bool,
    make: impl FnOnce() -> T,
) -> usize {
    match items.iter().position(found) {
        Some(i) => i,
        None => {
            items.push(make());
            items.len() - 1
        }
    }
}

fn remove_all(map: &mut Headers, name: &str) {
    map.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
}

/// The status a test told this import to answer with instead of working, if any.
fn injected_error(cx: &Cx<'_>, import: &str) -> Option<i32> {
    cx.data().options.host_errors.get(import).copied()
}

fn define_host_functions(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |cx: Cx<'_>, level: i32, ptr: i32, len: i32| -> i32 {
            let Some(message) = read_str(&cx, ptr, len) else {
                return status::BAD_ARGUMENT;
            };
            let mut cx = cx;
            cx.data_mut().logs.push(LogEntry {
                level: LogLevel::from_abi(level),
                message,
            });
            status::OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut cx: Cx<'_>, ret: i32| -> i32 {
            let level = cx.data().options.log_level.to_abi() as u32;
            status_of(write_u32(&mut cx, ret, level))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut cx: Cx<'_>, ret: i32| -> i32 {
            if let Some(status) = injected_error(&cx, "proxy_get_current_time_nanoseconds") {
                return status;
            }
            let now = cx.data().now_ns;
            status_of(write(&mut cx, ret, &now.to_le_bytes()))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut cx: Cx<'_>, period: i32| -> i32 {
            cx.data_mut().tick_period_ms = period as u32;
            status::OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut cx: Cx<'_>,
         kind: i32,
         start: i32,
         max: i32,
         ret_ptr: i32,
         ret_size: i32|
         -> wasmtime::Result<i32> {
            let Some(kind) = BufferType::from_abi(kind) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let Some(buffer) = cx.data().buffer(kind) else {
                return Ok(status::NOT_FOUND);
            };
            let start = (start as u32 as usize).min(buffer.len());
            let end = start.saturating_add(max as u32 as usize).min(buffer.len());
            let slice = buffer.get(start..end).unwrap_or_default().to_vec();
            if slice.is_empty() {
                return Ok(status::NOT_FOUND);
            }
            give(&mut cx, &slice, ret_ptr, ret_size)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut cx: Cx<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| -> i32 {
            let Some(data) = read(&cx, ptr, len) else {
                return status::BAD_ARGUMENT;
            };
            let current = cx.data().current;
            let Some(stream) = cx.data_mut().streams.get_mut(&current) else {
                return status::NOT_FOUND;
            };
            let buffer = match BufferType::from_abi(kind) {
                Some(BufferType::RequestBody) => &mut stream.request_body,
                Some(BufferType::ResponseBody) => &mut stream.response_body,
                _ => return status::BAD_ARGUMENT,
            };
            let start = (start as u32 as usize).min(buffer.len());
            let end = start.saturating_add(size as u32 as usize).min(buffer.len());
            buffer.splice(start..end, data);
            status::OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut cx: Cx<'_>, map: i32, ret_ptr: i32, ret_size: i32| -> wasmtime::Result<i32> {
            if let Some(status) = injected_error(&cx, "proxy_get_header_map_pairs") {
                return Ok(status);
            }
            let Some(map) = MapType::from_abi(map) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let bytes = match cx.data_mut().map_mut(map) {
                Some(pairs) => abi::serialize_map(pairs),
                None => abi::serialize_map(&[]),
            };
            give(&mut cx, &bytes, ret_ptr, ret_size)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut cx: Cx<'_>, map: i32, ptr: i32, len: i32| -> i32 {
            let Some(map) = MapType::from_abi(map) else {
                return status::BAD_ARGUMENT;
            };
            let Some(pairs) = read(&cx, ptr, len).and_then(|b| abi::deserialize_map(&b)) else {
                return status::BAD_ARGUMENT;
            };
            let pairs = pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            match cx.data_mut().map_mut(map) {
                Some(slot) => {
                    *slot = pairs;
                    status::OK
                }
                None => status::NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut cx: Cx<'_>,
         map: i32,
         key_ptr: i32,
         key_len: i32,
         ret_ptr: i32,
         ret_size: i32|
         -> wasmtime::Result<i32> {
            if let Some(status) = injected_error(&cx, "proxy_get_header_map_value") {
                return Ok(status);
            }
            let Some(map) = MapType::from_abi(map) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let Some(key) = read_str(&cx, key_ptr, key_len) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let value = cx
                .data_mut()
                .map_mut(map)
                .and_then(|m| header_value(m, &key).map(<[u8]>::to_vec));
            match value {
                Some(value) => give(&mut cx, &value, ret_ptr, ret_size),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    // Replace removes every copy before adding one, as Envoy does; add appends another copy.
    for (import, replace) in [
        ("proxy_replace_header_map_value", true),
        ("proxy_add_header_map_value", false),
    ] {
        linker.func_wrap(
            "env",
            import,
            move |mut cx: Cx<'_>,
                  map: i32,
                  key_ptr: i32,
                  key_len: i32,
                  val_ptr: i32,
                  val_len: i32|
                  -> i32 {
                if let Some(status) = injected_error(&cx, import) {
                    return status;
                }
                let Some(map) = MapType::from_abi(map) else {
                    return status::BAD_ARGUMENT;
                };
                let (Some(key), Some(value)) =
                    (read_str(&cx, key_ptr, key_len), read(&cx, val_ptr, val_len))
                else {
                    return status::BAD_ARGUMENT;
                };
                let Some(pairs) = cx.data_mut().map_mut(map) else {
                    return status::NOT_FOUND;
                };
                if replace {
                    remove_all(pairs, &key);
                }
                pairs.push((key.to_ascii_lowercase(), value));
                status::OK
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut cx: Cx<'_>, map: i32, key_ptr: i32, key_len: i32| -> i32 {
            if let Some(status) = injected_error(&cx, "proxy_remove_header_map_value") {
                return status;
            }
            let Some(map) = MapType::from_abi(map) else {
                return status::BAD_ARGUMENT;
            };
            let Some(key) = read_str(&cx, key_ptr, key_len) else {
                return status::BAD_ARGUMENT;
            };
            if let Some(pairs) = cx.data_mut().map_mut(map) {
                remove_all(pairs, &key);
            }
            status::OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut cx: Cx<'_>,
         path_ptr: i32,
         path_len: i32,
         ret_ptr: i32,
         ret_size: i32|
         -> wasmtime::Result<i32> {
            let Some(path) = read(&cx, path_ptr, path_len) else {
                return Ok(status::BAD_ARGUMENT);
            };
            // Segments arrive NUL-separated; properties are stored with '.' between segments.
            let key: String = String::from_utf8_lossy(&path)
                .trim_end_matches('\0')
                .replace('\0', ".");
            let value = cx.data().options.properties.get(&key).cloned();
            match value {
                Some(v) => give(&mut cx, &v, ret_ptr, ret_size),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut cx: Cx<'_>, path_ptr: i32, path_len: i32, val_ptr: i32, val_len: i32| -> i32 {
            let (Some(path), Some(value)) =
                (read(&cx, path_ptr, path_len), read(&cx, val_ptr, val_len))
            else {
                return status::BAD_ARGUMENT;
            };
            let key = String::from_utf8_lossy(&path)
                .trim_end_matches('\0')
                .replace('\0', ".");
            cx.data_mut().options.properties.insert(key, value);
            status::OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut cx: Cx<'_>,
         key_ptr: i32,
         key_len: i32,
         ret_ptr: i32,
         ret_size: i32,
         ret_cas: i32|
         -> wasmtime::Result<i32> {
            let Some(key) = read_str(&cx, key_ptr, key_len) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let entry = cx.data().shared().data.get(&key).cloned();
            let Some((value, cas)) = entry else {
                return Ok(status::NOT_FOUND);
            };
            if !write_u32(&mut cx, ret_cas, cas) {
                return Ok(status::BAD_ARGUMENT);
            }
            give(&mut cx, &value, ret_ptr, ret_size)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |cx: Cx<'_>, key_ptr: i32, key_len: i32, val_ptr: i32, val_len: i32, cas: i32| -> i32 {
            let (Some(key), Some(value)) =
                (read_str(&cx, key_ptr, key_len), read(&cx, val_ptr, val_len))
            else {
                return status::BAD_ARGUMENT;
            };
            let state = cx.data();
            let mut shared = state.shared();
            let current_cas = shared.data.get(&key).map(|(_, c)| *c);
            // cas 0 means "no check", as in Envoy.
            if cas != 0 && current_cas.is_some_and(|c| c != cas as u32) {
                return status::CAS_MISMATCH;
            }
            let next = current_cas.unwrap_or(0).wrapping_add(1).max(1);
            shared.data.insert(key, (value, next));
            status::OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut cx: Cx<'_>, name_ptr: i32, name_len: i32, ret_id: i32| -> i32 {
            let Some(name) = read_str(&cx, name_ptr, name_len) else {
                return status::BAD_ARGUMENT;
            };
            let vm_id = cx.data().vm_id.clone();
            let id = {
                let state = cx.data();
                let mut shared = state.shared();
                find_or_push(
                    &mut shared.queues,
                    |q| q.vm_id == vm_id && q.name == name,
                    || Queue {
                        vm_id: vm_id.clone(),
                        name: name.clone(),
                        items: Default::default(),
                    },
                )
            };
            status_of(write_u32(&mut cx, ret_id, id as u32))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut cx: Cx<'_>,
         vm_ptr: i32,
         vm_len: i32,
         name_ptr: i32,
         name_len: i32,
         ret_id: i32|
         -> i32 {
            let (Some(vm_id), Some(name)) = (
                read_str(&cx, vm_ptr, vm_len),
                read_str(&cx, name_ptr, name_len),
            ) else {
                return status::BAD_ARGUMENT;
            };
            let found = cx
                .data()
                .shared()
                .queues
                .iter()
                .position(|q| q.vm_id == vm_id && q.name == name);
            match found {
                Some(id) if write_u32(&mut cx, ret_id, id as u32) => status::OK,
                Some(_) => status::BAD_ARGUMENT,
                None => status::NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut cx: Cx<'_>, id: i32, ret_ptr: i32, ret_size: i32| -> wasmtime::Result<i32> {
            let item = {
                let state = cx.data();
                let mut shared = state.shared();
                match shared.queues.get_mut(id as u32 as usize) {
                    Some(q) => q.items.pop_front(),
                    None => return Ok(status::NOT_FOUND),
                }
            };
            match item {
                Some(item) => give(&mut cx, &item, ret_ptr, ret_size),
                None => Ok(status::EMPTY),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |cx: Cx<'_>, id: i32, ptr: i32, len: i32| -> i32 {
            let Some(value) = read(&cx, ptr, len) else {
                return status::BAD_ARGUMENT;
            };
            let state = cx.data();
            let mut shared = state.shared();
            match shared.queues.get_mut(id as u32 as usize) {
                Some(q) => {
                    q.items.push_back(value);
                    status::OK
                }
                None => status::NOT_FOUND,
            }
        },
    )?;
    // The harness drives streams synchronously: continuing or closing is recorded in the log.
    for (import, what) in [
        ("proxy_continue_stream", "continue_stream"),
        ("proxy_close_stream", "close_stream"),
    ] {
        linker.func_wrap("env", import, move |mut cx: Cx<'_>, kind: i32| -> i32 {
            let message = format!("host: {what}({kind})");
            cx.data_mut().logs.push(LogEntry {
                level: LogLevel::Trace,
                message,
            });
            status::OK
        })?;
    }
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut cx: Cx<'_>,
         code: i32,
         details_ptr: i32,
         details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         _grpc_status: i32|
         -> i32 {
            let details = read_str(&cx, details_ptr, details_len);
            let body = read_str(&cx, body_ptr, body_len);
            let headers =
                read(&cx, headers_ptr, headers_len).and_then(|b| abi::deserialize_map(&b));
            let (Some(details), Some(body), Some(headers)) = (details, body, headers) else {
                return status::BAD_ARGUMENT;
            };
            let headers = headers
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                .collect();
            let current = cx.data().current;
            let response = LocalResponse {
                status: code as u32,
                details,
                body,
                headers,
            };
            match cx.data_mut().streams.get_mut(&current) {
                Some(stream) => {
                    stream.local_response = Some(response);
                    status::OK
                }
                None => status::NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut cx: Cx<'_>,
         up_ptr: i32,
         up_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         body_ptr: i32,
         body_len: i32,
         _trailers_ptr: i32,
         _trailers_len: i32,
         timeout_ms: i32,
         ret_token: i32|
         -> i32 {
            let upstream = read_str(&cx, up_ptr, up_len);
            let headers =
                read(&cx, headers_ptr, headers_len).and_then(|b| abi::deserialize_map(&b));
            let body = read(&cx, body_ptr, body_len);
            let (Some(upstream), Some(headers), Some(body)) = (upstream, headers, body) else {
                return status::BAD_ARGUMENT;
            };
            // Envoy refuses a call without the required pseudo-headers.
            let has = |n: &str| header_value(&headers, n).is_some();
            if !(has(":method") && has(":path") && has(":authority")) {
                return status::BAD_ARGUMENT;
            }
            let state = cx.data_mut();
            state.next_token += 1;
            let token = state.next_token;
            let call = HttpCall {
                token,
                context_id: state.current,
                upstream,
                headers,
                body,
                timeout: Duration::from_millis(timeout_ms as u32 as u64),
            };
            state.http_calls.push(call);
            status_of(write_u32(&mut cx, ret_token, token))
        },
    )?;
    // gRPC is outside what the harness emulates: answer as Envoy does for an unknown cluster.
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |_: Cx<'_>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32|
         -> i32 { status::BAD_ARGUMENT },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_: Cx<'_>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32|
         -> i32 { status::BAD_ARGUMENT },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |_: Cx<'_>, _: i32, _: i32, _: i32, _: i32| -> i32 { status::NOT_FOUND },
    )?;
    linker.func_wrap("env", "proxy_grpc_cancel", |_: Cx<'_>, _: i32| -> i32 {
        status::NOT_FOUND
    })?;
    linker.func_wrap("env", "proxy_grpc_close", |_: Cx<'_>, _: i32| -> i32 {
        status::NOT_FOUND
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut cx: Cx<'_>, ret_code: i32, ret_ptr: i32, ret_size: i32| -> i32 {
            let ok = write_u32(&mut cx, ret_code, 0)
                && write_u32(&mut cx, ret_ptr, 0)
                && write_u32(&mut cx, ret_size, 0);
            status_of(ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut cx: Cx<'_>, context_id: i32| -> i32 {
            cx.data_mut().current = context_id as u32;
            status::OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_: Cx<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -> i32 { status::NOT_FOUND },
    )?;
    linker.func_wrap("env", "proxy_done", |_: Cx<'_>| -> i32 { status::OK })?;
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut cx: Cx<'_>, kind: i32, name_ptr: i32, name_len: i32, ret_id: i32| -> i32 {
            let (Some(kind), Some(name)) = (
                MetricKind::from_abi(kind),
                read_str(&cx, name_ptr, name_len),
            ) else {
                return status::BAD_ARGUMENT;
            };
            let id = {
                let state = cx.data();
                let mut shared = state.shared();
                // Defining a name twice gives the same metric, as in Envoy.
                find_or_push(
                    &mut shared.metrics,
                    |m| m.name == name && m.kind == kind,
                    || Metric {
                        name: name.clone(),
                        kind,
                        value: 0,
                        samples: Vec::new(),
                    },
                )
            };
            status_of(write_u32(&mut cx, ret_id, id as u32))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |cx: Cx<'_>, id: i32, offset: i64| -> i32 {
            if let Some(status) = injected_error(&cx, "proxy_increment_metric") {
                return status;
            }
            let state = cx.data();
            let mut shared = state.shared();
            match shared.metrics.get_mut(id as u32 as usize) {
                Some(m) if m.kind != MetricKind::Histogram => {
                    m.value = m.value.saturating_add(offset);
                    status::OK
                }
                Some(_) => status::BAD_ARGUMENT,
                None => status::NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |cx: Cx<'_>, id: i32, value: i64| -> i32 {
            if let Some(status) = injected_error(&cx, "proxy_record_metric") {
                return status;
            }
            let state = cx.data();
            let mut shared = state.shared();
            match shared.metrics.get_mut(id as u32 as usize) {
                Some(m) if m.kind == MetricKind::Histogram => {
                    m.samples.push(value as u64);
                    m.value += 1;
                    status::OK
                }
                Some(m) => {
                    m.value = value;
                    status::OK
                }
                None => status::NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut cx: Cx<'_>, id: i32, ret: i32| -> i32 {
            let value = cx
                .data()
                .shared()
                .metrics
                .get(id as u32 as usize)
                .map(|m| m.value);
            match value {
                Some(v) if write(&mut cx, ret, &(v as u64).to_le_bytes()) => status::OK,
                Some(_) => status::BAD_ARGUMENT,
                None => status::NOT_FOUND,
            }
        },
    )?;
    define_wasi(linker)
}

/// The few WASI calls a Rust filter for wasm32-wasip1 imports, with real behaviour:
/// environment variables from [`VmOptions::env`], stdout and stderr into the log.
fn define_wasi(linker: &mut Linker<HostState>) -> Result<()> {
    const WASI: &str = "wasi_snapshot_preview1";
    const ERRNO_BADF: i32 = 8;
    const ERRNO_FAULT: i32 = 21;
    fn env_strings(cx: &Cx<'_>) -> Vec<Vec<u8>> {
        cx.data()
            .options
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}\0").into_bytes())
            .collect()
    }
    linker.func_wrap(
        WASI,
        "environ_sizes_get",
        |mut cx: Cx<'_>, ret_count: i32, ret_size: i32| -> i32 {
            let strings = env_strings(&cx);
            let size: usize = strings.iter().map(Vec::len).sum();
            let ok = write_u32(&mut cx, ret_count, strings.len() as u32)
                && write_u32(&mut cx, ret_size, size as u32);
            if ok {
                0
            } else {
                ERRNO_FAULT
            }
        },
    )?;
    linker.func_wrap(
        WASI,
        "environ_get",
        |mut cx: Cx<'_>, ptrs: i32, buf: i32| -> i32 {
            let mut at = buf;
            for (i, s) in env_strings(&cx).iter().enumerate() {
                if !(write_u32(&mut cx, ptrs + 4 * i as i32, at as u32) && write(&mut cx, at, s)) {
                    return ERRNO_FAULT;
                }
                at += s.len() as i32;
            }
            0
        },
    )?;
    linker.func_wrap(
        WASI,
        "args_sizes_get",
        |mut cx: Cx<'_>, ret_count: i32, ret_size: i32| -> i32 {
            if write_u32(&mut cx, ret_count, 0) && write_u32(&mut cx, ret_size, 0) {
                0
            } else {
                ERRNO_FAULT
            }
        },
    )?;
    linker.func_wrap(WASI, "args_get", |_: Cx<'_>, _: i32, _: i32| -> i32 { 0 })?;
    linker.func_wrap(
        WASI,
        "fd_write",
        |mut cx: Cx<'_>, fd: i32, iovs: i32, n_iovs: i32, ret_written: i32| -> i32 {
            if fd != 1 && fd != 2 {
                return ERRNO_BADF;
            }
            let mut text = Vec::new();
            for i in 0..n_iovs {
                let iov: Option<[u8; 8]> =
                    read(&cx, iovs + 8 * i, 8).and_then(|b| b.try_into().ok());
                let Some([p0, p1, p2, p3, l0, l1, l2, l3]) = iov else {
                    return ERRNO_FAULT;
                };
                let ptr = i32::from_le_bytes([p0, p1, p2, p3]);
                let len = i32::from_le_bytes([l0, l1, l2, l3]);
                let Some(chunk) = read(&cx, ptr, len) else {
                    return ERRNO_FAULT;
                };
                text.extend_from_slice(&chunk);
            }
            let written = text.len() as u32;
            let stream = if fd == 1 { "stdout" } else { "stderr" };
            let message = format!("{stream}: {}", String::from_utf8_lossy(&text).trim_end());
            let level = if fd == 1 {
                LogLevel::Info
            } else {
                LogLevel::Error
            };
            cx.data_mut().logs.push(LogEntry { level, message });
            if write_u32(&mut cx, ret_written, written) {
                0
            } else {
                ERRNO_FAULT
            }
        },
    )?;
    linker.func_wrap(
        WASI,
        "proc_exit",
        |_: Cx<'_>, code: i32| -> wasmtime::Result<()> {
            wasmtime::bail!("filter called proc_exit({code})")
        },
    )?;
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut cx: Cx<'_>, _clock: i32, _precision: i64, ret: i32| -> i32 {
            let now = cx.data().now_ns;
            if write(&mut cx, ret, &now.to_le_bytes()) {
                0
            } else {
                ERRNO_FAULT
            }
        },
    )?;
    linker.func_wrap(
        WASI,
        "random_get",
        |mut cx: Cx<'_>, buf: i32, len: i32| -> i32 {
            // A test may fix the bytes of an exchange (golden vectors carry their entropy);
            // otherwise a seeded xorshift keeps harness runs repeatable.
            let bytes: Vec<u8> = match cx.data().entropy {
                Some(fixed) => fixed
                    .to_le_bytes()
                    .iter()
                    .copied()
                    .cycle()
                    .take(len as u32 as usize)
                    .collect(),
                None => {
                    let state = cx.data_mut();
                    (0..len)
                        .map(|_| {
                            let x = &mut state.random_state;
                            *x ^= *x << 13;
                            *x ^= *x >> 7;
                            *x ^= *x << 17;
                            *x as u8
                        })
                        .collect()
                }
            };
            if write(&mut cx, buf, &bytes) {
                0
            } else {
                ERRNO_FAULT
            }
        },
    )?;
    linker.func_wrap(WASI, "sched_yield", |_: Cx<'_>| -> i32 { 0 })?;
    Ok(())
}

impl FilterModule {
    /// Compiles a filter from .wasm (or .wat) bytes.
    pub fn new(wasm: &[u8]) -> Result<FilterModule> {
        let engine = Engine::default();
        let module = Module::new(&engine, wasm)
            .map_err(anyhow::Error::from)
            .context("compiling the filter module")?;
        Ok(FilterModule {
            engine,
            module,
            shared: Arc::default(),
        })
    }

    /// Compiles a filter from a file.
    pub fn from_file(path: &std::path::Path) -> Result<FilterModule> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        FilterModule::new(&bytes)
    }

    /// Imports of the module that the host does not implement (they trap if called).
    pub fn unimplemented_imports(&self) -> Result<Vec<String>> {
        let mut linker = Linker::new(&self.engine);
        define_host_functions(&mut linker)?;
        let mut store = Store::new(
            &self.engine,
            new_state(self.shared.clone(), VmOptions::default()),
        );
        let missing = self
            .module
            .imports()
            .filter(|i| linker.get(&mut store, i.module(), i.name()).is_err())
            .map(|i| format!("{}::{}", i.module(), i.name()))
            .collect();
        Ok(missing)
    }

    /// Starts a VM: instantiates the module and runs its start-up (`_initialize`, context
    /// creation of the root, `proxy_on_vm_start`). Configure it with [`Vm::configure`].
    pub fn start_vm(&self, options: VmOptions) -> Result<Vm> {
        let mut linker = Linker::new(&self.engine);
        define_host_functions(&mut linker)?;
        linker.define_unknown_imports_as_traps(&self.module)?;
        let mut store = Store::new(&self.engine, new_state(self.shared.clone(), options));
        store.call_hook(|mut cx, hook| {
            let calls = &mut cx.data_mut().calls;
            match hook {
                CallHook::CallingHost => calls.into_host += 1,
                CallHook::CallingWasm => calls.into_filter += 1,
                CallHook::ReturningFromHost | CallHook::ReturningFromWasm => {}
            }
            Ok(())
        });
        let instance = linker
            .instantiate(&mut store, &self.module)
            .map_err(anyhow::Error::from)
            .context("instantiating the filter")?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| anyhow!("filter exports no memory"))?;
        let alloc = instance
            .get_func(&mut store, "proxy_on_memory_allocate")
            .or_else(|| instance.get_func(&mut store, "malloc"));
        store.data_mut().memory = Some(memory);
        store.data_mut().alloc = alloc;
        let mut vm = Vm {
            store,
            instance,
            root_id: 1,
            next_context: 2,
        };
        for start in ["_initialize", "_start"] {
            if vm.instance.get_func(&mut vm.store, start).is_some() {
                vm.call(start, &[])?;
                break;
            }
        }
        vm.store.data_mut().current = vm.root_id;
        vm.call("proxy_on_context_create", &[v(vm.root_id), v(0)])?;
        let vm_config_len = vm.store.data().options.vm_configuration.len() as u32;
        if vm.call("proxy_on_vm_start", &[v(vm.root_id), v(vm_config_len)])? == Some(0) {
            bail!("the filter refused to start (proxy_on_vm_start returned false)");
        }
        Ok(vm)
    }

    /// Every metric of every VM of this module, as Envoy aggregates them across workers.
    pub fn metrics(&self) -> Vec<Metric> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .metrics
            .clone()
    }

    /// The value of one metric by name, if defined.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.metrics()
            .into_iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    /// Shared data by key: (value, cas).
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .data
            .get(key)
            .cloned()
    }
}

fn new_state(shared: Arc<Mutex<SharedState>>, options: VmOptions) -> HostState {
    // Each VM of a module gets its own random sequence (VMs tell each other apart by random
    // tokens), yet runs stay repeatable: the seed is the VM's start order.
    let vm_index = {
        let mut state = shared.lock().unwrap_or_else(|e| e.into_inner());
        state.vms_started += 1;
        state.vms_started
    };
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
        random_state: 0x853c_49e6_748f_ea9b ^ vm_index.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    }
}

/// A request for [`Vm::exchange`]: the client's request and the upstream's response to it.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    /// Client request headers, pseudo-headers included.
    pub request_headers: Headers,
    /// Client request body.
    pub request_body: Vec<u8>,
    /// Upstream response headers; `:status` 200 is added if absent.
    pub response_headers: Headers,
    /// Upstream response body.
    pub response_body: Vec<u8>,
    /// What WASI `random_get` returns during this exchange (as little-endian bytes, repeated);
    /// `None` for the host's own generator.
    pub entropy: Option<u64>,
}

/// What the filter did to one exchange.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExchangeReport {
    /// The request headers as the upstream receives them.
    pub upstream_request_headers: Vec<(String, String)>,
    /// Headers the filter added or changed (name, new value).
    pub request_headers_set: Vec<(String, String)>,
    /// Header names the filter removed.
    pub request_headers_removed: Vec<String>,
    /// The request body as the upstream receives it, lossily as text.
    pub upstream_request_body: String,
    /// The response headers as the client receives them.
    pub client_response_headers: Vec<(String, String)>,
    /// A local response, if the filter answered itself.
    pub local_response: Option<LocalResponse>,
    /// Lines the filter logged during the exchange.
    pub logs: Vec<LogEntry>,
    /// Whether the filter paused on request or response headers.
    pub paused: bool,
    /// Crossings between filter and host from the stream's start to its end (by any context
    /// of the VM, should others run in between).
    pub calls: CallCounts,
}

fn lossy(headers: &Headers) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

/// One running VM, like one Envoy worker thread's VM.
pub struct Vm {
    store: Store<HostState>,
    instance: Instance,
    root_id: u32,
    next_context: u32,
}

impl Vm {
    /// Calls an export, if the module has it; the first result as i32.
    fn call(&mut self, name: &str, args: &[Val]) -> Result<Option<i32>> {
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Ok(None);
        };
        let n_results = func.ty(&self.store).results().len();
        let mut results = vec![Val::I32(0); n_results];
        func.call(&mut self.store, args, &mut results)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("the filter trapped in {name}"))?;
        Ok(results.first().and_then(Val::i32))
    }

    /// Delivers the plugin configuration; `Ok(false)` if the filter refused it.
    pub fn configure(&mut self, plugin_configuration: &[u8]) -> Result<bool> {
        self.store.data_mut().plugin_configuration = plugin_configuration.to_vec();
        self.store.data_mut().current = self.root_id;
        let size = plugin_configuration.len() as u32;
        let ok = self.call("proxy_on_configure", &[v(self.root_id), v(size)])?;
        Ok(ok != Some(0))
    }

    /// Moves the virtual clock forward, firing `proxy_on_tick` for each tick period that
    /// passes.
    pub fn advance(&mut self, by: Duration) -> Result<()> {
        let mut left = by.as_nanos() as u64;
        loop {
            let period = u64::from(self.store.data().tick_period_ms) * 1_000_000;
            if period == 0 || left < period {
                self.store.data_mut().now_ns += left;
                return Ok(());
            }
            self.store.data_mut().now_ns += period;
            left -= period;
            self.tick()?;
        }
    }

    /// Fires `proxy_on_tick` on the root context once.
    pub fn tick(&mut self) -> Result<()> {
        self.store.data_mut().current = self.root_id;
        self.call("proxy_on_tick", &[v(self.root_id)])?;
        Ok(())
    }

    /// The tick period the filter asked for.
    pub fn tick_period(&self) -> Duration {
        Duration::from_millis(u64::from(self.store.data().tick_period_ms))
    }

    /// Outgoing HTTP calls not answered yet.
    pub fn pending_http_calls(&self) -> &[HttpCall] {
        &self.store.data().http_calls
    }

    /// Answers a pending HTTP call (`proxy_on_http_call_response`); an empty header list
    /// answers it as failed, as Envoy does on reset or timeout.
    pub fn answer_http_call(&mut self, token: u32, response: HttpCallResponse) -> Result<()> {
        let state = self.store.data_mut();
        let Some(at) = state.http_calls.iter().position(|c| c.token == token) else {
            bail!("no pending HTTP call with token {token}");
        };
        let call = state.http_calls.remove(at);
        let (n_headers, body_len) = (response.headers.len() as u32, response.body.len() as u32);
        state.call_response = Some(response);
        state.current = call.context_id;
        let result = self.call(
            "proxy_on_http_call_response",
            &[
                v(call.context_id),
                v(token),
                v(n_headers),
                v(body_len),
                v(0u32),
            ],
        );
        self.store.data_mut().call_response = None;
        result.map(|_| ())
    }

    /// Delivers `proxy_on_queue_ready` to this VM's root for a queue id.
    pub fn queue_ready(&mut self, queue_id: u32) -> Result<()> {
        self.store.data_mut().current = self.root_id;
        self.call("proxy_on_queue_ready", &[v(self.root_id), v(queue_id)])?;
        Ok(())
    }

    /// Log lines so far, removing them.
    pub fn take_logs(&mut self) -> Vec<LogEntry> {
        std::mem::take(&mut self.store.data_mut().logs)
    }

    /// Runs one full exchange: [`Vm::begin`] then [`Vm::finish`]. A filter that pauses to
    /// wait for an HTTP call needs the two steps, with [`Vm::answer_http_call`] between them.
    pub fn exchange(&mut self, exchange: &Exchange) -> Result<ExchangeReport> {
        let stream = self.begin(exchange)?;
        self.finish(stream, exchange)
    }

    /// Starts a stream: context creation, request headers, and the request body if any.
    pub fn begin(&mut self, exchange: &Exchange) -> Result<StreamId> {
        let id = self.next_context;
        self.next_context += 1;
        let stream = StreamState {
            calls_at_begin: self.store.data().calls,
            request_headers: exchange.request_headers.clone(),
            original_request_headers: exchange.request_headers.clone(),
            request_body: exchange.request_body.clone(),
            ..Default::default()
        };
        self.store.data_mut().streams.insert(id, stream);
        self.store.data_mut().entropy = exchange.entropy;
        self.on_stream(id, "proxy_on_context_create", &[v(id), v(self.root_id)])?;
        let n = exchange.request_headers.len() as u32;
        let eos = u32::from(exchange.request_body.is_empty());
        self.on_stream_data(id, "proxy_on_request_headers", &[v(id), v(n), v(eos)])?;
        if eos == 0 {
            let len = exchange.request_body.len() as u32;
            self.on_stream_data(id, "proxy_on_request_body", &[v(id), v(len), v(1)])?;
        }
        self.store.data_mut().entropy = None;
        Ok(StreamId(id))
    }

    /// Ends a stream: unless the filter answered locally, the upstream's response headers
    /// and body from `exchange`; then the log, done and delete callbacks.
    pub fn finish(&mut self, stream: StreamId, exchange: &Exchange) -> Result<ExchangeReport> {
        let id = stream.0;
        self.store.data_mut().entropy = exchange.entropy;
        let local = self
            .store
            .data()
            .streams
            .get(&id)
            .is_some_and(|s| s.local_response.is_some());
        if !local {
            let mut response = exchange.response_headers.clone();
            if header_value(&response, ":status").is_none() {
                response.insert(0, (":status".to_owned(), b"200".to_vec()));
            }
            let n = response.len() as u32;
            let eos = u32::from(exchange.response_body.is_empty());
            if let Some(s) = self.store.data_mut().streams.get_mut(&id) {
                s.response_headers = response;
                s.response_body = exchange.response_body.clone();
            }
            self.on_stream_data(id, "proxy_on_response_headers", &[v(id), v(n), v(eos)])?;
            if eos == 0 {
                let len = exchange.response_body.len() as u32;
                self.on_stream_data(id, "proxy_on_response_body", &[v(id), v(len), v(1)])?;
            }
        }
        self.on_stream(id, "proxy_on_log", &[v(id)])?;
        self.on_stream(id, "proxy_on_done", &[v(id)])?;
        self.on_stream(id, "proxy_on_delete", &[v(id)])?;
        self.store.data_mut().entropy = None;
        let stream = self
            .store
            .data_mut()
            .streams
            .remove(&id)
            .unwrap_or_default();
        let calls = self.store.data().calls.since(stream.calls_at_begin);
        Ok(report(stream, self.take_logs(), calls))
    }

    /// Calls a stream callback with that stream as the current context.
    fn on_stream(&mut self, id: u32, name: &str, args: &[Val]) -> Result<Option<i32>> {
        self.store.data_mut().current = id;
        self.call(name, args)
    }

    /// Calls a headers or body callback, and records it if the filter paused (returned 1).
    fn on_stream_data(&mut self, id: u32, name: &str, args: &[Val]) -> Result<()> {
        if self.on_stream(id, name, args)? == Some(1) {
            if let Some(s) = self.store.data_mut().streams.get_mut(&id) {
                s.paused = true;
            }
        }
        Ok(())
    }
}

fn report(stream: StreamState, logs: Vec<LogEntry>, calls: CallCounts) -> ExchangeReport {
    let original = &stream.original_request_headers;
    let finals = &stream.request_headers;
    let mut set = Vec::new();
    for (name, value) in finals {
        let before: Vec<&Vec<u8>> = original
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect();
        if !before.contains(&value) {
            set.push((name.clone(), String::from_utf8_lossy(value).into_owned()));
        }
    }
    let mut removed: Vec<String> = Vec::new();
    for (name, _) in original {
        let name = name.to_ascii_lowercase();
        if header_value(finals, &name).is_none() && !removed.contains(&name) {
            removed.push(name);
        }
    }
    ExchangeReport {
        upstream_request_headers: lossy(finals),
        request_headers_set: set,
        request_headers_removed: removed,
        client_response_headers: match &stream.local_response {
            Some(_) => Vec::new(),
            None => lossy(&stream.response_headers),
        },
        upstream_request_body: String::from_utf8_lossy(&stream.request_body).into_owned(),
        local_response: stream.local_response,
        logs,
        paused: stream.paused,
        calls,
    }
}
