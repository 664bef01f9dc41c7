//! [`Vm`]: one running VM of a filter, driven from outside: configuration, the virtual clock
//! and ticks, HTTP calls the test answers, and streams from request headers to delete, with a
//! report of what the filter did to each.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use wasmtime::{Instance, Store, Val};

use super::guest::v;
use super::{
    CallCounts, Headers, HostState, HttpCall, HttpCallResponse, LocalResponse, LogEntry,
    StreamState, header_value,
};

/// A stream started with [`Vm::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamId(u32);

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
    /// Whether the filter resumed the paused request itself (`proxy_continue_stream`), as a
    /// filter that waits for something does; Envoy holds a paused request until then.
    pub resumed: bool,
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
    /// A VM around an instantiated filter, before its start-up.
    pub(super) fn new(store: Store<HostState>, instance: Instance) -> Vm {
        Vm {
            store,
            instance,
            root_id: 1,
            next_context: 2,
        }
    }

    /// The root context's id.
    pub(super) fn root_id(&self) -> u32 {
        self.root_id
    }

    /// The store, for start-up.
    pub(super) fn store_mut(&mut self) -> &mut Store<HostState> {
        &mut self.store
    }

    /// Whether the filter exports a function by that name.
    pub(super) fn has_export(&mut self, name: &str) -> bool {
        self.instance.get_func(&mut self.store, name).is_some()
    }

    /// Calls an export, if the module has it; the first result as i32.
    pub(super) fn call(&mut self, name: &str, args: &[Val]) -> Result<Option<i32>> {
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
        let target = self.store.data().now_ns + by.as_nanos() as u64;
        loop {
            let data = self.store.data();
            let period = u64::from(data.tick_period_ms) * 1_000_000;
            let due = data.last_tick_ns + period;
            if period == 0 || due > target {
                self.store.data_mut().now_ns = target;
                return Ok(());
            }
            let data = self.store.data_mut();
            data.now_ns = due;
            data.last_tick_ns = due;
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
        if self.on_stream(id, name, args)? == Some(1)
            && let Some(s) = self.store.data_mut().streams.get_mut(&id)
        {
            s.paused = true;
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
        resumed: stream.resumed,
        calls,
    }
}
