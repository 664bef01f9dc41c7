//! [`Vm`]: one running VM of a filter, driven from outside as Envoy drives it: configuration,
//! the virtual clock with its ticks and call timeouts, the answers clusters give to calls, and
//! streams from request headers to delete, with a report of what the client and the upstream
//! got. A trap fails the VM; its failure policy then decides what later requests get.

use std::time::Duration;

use anyhow::{Context as _, Result};
use wasmtime::{Instance, Store, Val};

use super::guest::v;
use super::module::FilterModule;
use super::{
    CallCounts, FailurePolicy, Headers, HostState, LocalResponse, LogEntry, StreamState,
    header_value,
};

/// A stream started with [`Vm::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamId(pub(super) u32);

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

/// What the client got: the response as Envoy's HTTP/1 codec writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientResponse {
    /// HTTP status code.
    pub status: u32,
    /// Headers, pseudo-headers left out, with the framing header the codec adds.
    pub headers: Vec<(String, String)>,
    /// Body, lossily as text.
    pub body: String,
}

/// What the filter did to one exchange.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExchangeReport {
    /// Whether the request reached the upstream (no local response, not held, not reset).
    pub reached_upstream: bool,
    /// The request headers as the upstream receives them (empty if it never does).
    pub upstream_request_headers: Vec<(String, String)>,
    /// Headers the filter added or changed (name, new value).
    pub request_headers_set: Vec<(String, String)>,
    /// Header names the filter removed.
    pub request_headers_removed: Vec<String>,
    /// The request body as the upstream receives it, lossily as text.
    pub upstream_request_body: String,
    /// The response headers as the filter left them, `:status` included: the upstream's, or
    /// those of a local response; empty when the client got no response.
    pub client_response_headers: Vec<(String, String)>,
    /// What the client got; `None` if nothing: the request was held until the client gave up
    /// (the filter paused and never resumed nor replied), or the filter reset the stream.
    pub client: Option<ClientResponse>,
    /// A local response the filter sent instead of forwarding the request.
    pub local_response: Option<LocalResponse>,
    /// Lines the filter logged during the exchange.
    pub logs: Vec<LogEntry>,
    /// Whether the filter paused on request headers or body.
    pub paused: bool,
    /// Whether the filter resumed the paused request itself (`proxy_continue_stream`), as a
    /// filter that waits for something does; Envoy holds a paused request until then.
    pub resumed: bool,
    /// The trap that failed the VM during this exchange, if one did.
    pub trap: Option<String>,
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

/// The callbacks' return value that stops iteration (`StopIteration` / `StopIterationAndBuffer`).
const PAUSE: i32 = 1;

/// A stream's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

/// A body as it left the filter: what passed, then what it still buffers.
fn whole(passed: &[u8], buffered: &[u8]) -> Vec<u8> {
    [passed, buffered].concat()
}

/// One running VM, like one Envoy worker thread's VM.
pub struct Vm {
    pub(super) store: Store<HostState>,
    instance: Instance,
    /// The module, to load a fresh VM when FAIL_RELOAD asks for one.
    module: FilterModule,
    root_id: u32,
    next_context: u32,
    /// The trap that failed this VM, once one has.
    failure: Option<String>,
    /// When this VM was loaded, or its reload last tried, on the virtual clock (ns).
    loaded_ns: u64,
    /// The plugin configuration last delivered, for a reload.
    plugin_configuration: Option<Vec<u8>>,
    /// How many times FAIL_RELOAD replaced a failed VM.
    reloads: u32,
}

impl Vm {
    /// A VM around an instantiated filter, before its start-up.
    pub(super) fn new(store: Store<HostState>, instance: Instance, module: FilterModule) -> Vm {
        let loaded_ns = store.data().now_ns;
        Vm {
            store,
            instance,
            module,
            root_id: 1,
            next_context: 2,
            failure: None,
            loaded_ns,
            plugin_configuration: None,
            reloads: 0,
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

    /// Calls an export, if the module has it; the first result as i32. A trap is an error.
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

    /// Calls into the filter on behalf of context `id`, as Envoy does once the VM runs: a
    /// trap fails the VM (it is the filter's failure, not the harness's), and nothing is
    /// called in a failed VM or for a stream whose VM failed.
    pub(super) fn callback(&mut self, id: u32, name: &str, args: &[Val]) -> Option<i32> {
        let stream_failed = self.store.data().streams.get(&id).is_some_and(|s| s.failed);
        if self.failure.is_some() || stream_failed {
            return None;
        }
        self.store.data_mut().current = id;
        match self.call(name, args) {
            Ok(result) => result,
            Err(e) => {
                self.fail(id, format!("{e:#}"));
                None
            }
        }
    }

    /// Marks the VM failed by a trap while running context `id`.
    fn fail(&mut self, id: u32, message: String) {
        let data = self.store.data_mut();
        for stream in data.streams.values_mut() {
            stream.failed = true;
        }
        if let Some(stream) = data.streams.get_mut(&id) {
            stream.trap = Some(message.clone());
        }
        self.failure = Some(message);
    }

    /// The trap that failed the VM, if one did (and no reload replaced it since).
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// How many times FAIL_RELOAD replaced a failed VM with a fresh one.
    pub fn reloads(&self) -> u32 {
        self.reloads
    }

    /// Delivers the plugin configuration; `Ok(false)` if the filter refused it. A trap in
    /// `proxy_on_configure` is an error, as Envoy refuses such a configuration.
    pub fn configure(&mut self, plugin_configuration: &[u8]) -> Result<bool> {
        self.plugin_configuration = Some(plugin_configuration.to_vec());
        self.store.data_mut().plugin_configuration = plugin_configuration.to_vec();
        self.store.data_mut().current = self.root_id;
        let size = plugin_configuration.len() as u32;
        let ok = self.call("proxy_on_configure", &[v(self.root_id), v(size)])?;
        self.settle();
        Ok(ok != Some(0))
    }

    /// Moves the virtual clock forward, firing `proxy_on_tick` for each tick period that
    /// passes and ending each call whose timeout passes, in time order.
    pub fn advance(&mut self, by: Duration) -> Result<()> {
        let target = self.store.data().now_ns + by.as_nanos() as u64;
        loop {
            let data = self.store.data();
            let period = u64::from(data.tick_period_ms) * 1_000_000;
            let tick = (period > 0 && self.failure.is_none()).then(|| data.last_tick_ns + period);
            let deadline = data.next_deadline();
            let next = match (tick, deadline) {
                (Some(t), Some(d)) => t.min(d),
                (t, d) => match t.or(d) {
                    Some(n) => n,
                    None => break,
                },
            };
            if next > target {
                break;
            }
            self.store.data_mut().now_ns = next;
            if deadline == Some(next) {
                self.expire_calls();
            } else {
                self.store.data_mut().last_tick_ns = next;
                self.tick()?;
            }
        }
        self.store.data_mut().now_ns = target;
        Ok(())
    }

    /// Fires `proxy_on_tick` on the root context once (nothing if the VM failed).
    pub fn tick(&mut self) -> Result<()> {
        self.callback(self.root_id, "proxy_on_tick", &[v(self.root_id)]);
        self.release_waiting();
        self.settle();
        Ok(())
    }

    /// The tick period the filter asked for.
    pub fn tick_period(&self) -> Duration {
        Duration::from_millis(u64::from(self.store.data().tick_period_ms))
    }

    /// Delivers `proxy_on_queue_ready` to this VM's root for a queue id.
    pub fn queue_ready(&mut self, queue_id: u32) -> Result<()> {
        let root = self.root_id;
        self.callback(root, "proxy_on_queue_ready", &[v(root), v(queue_id)]);
        self.release_waiting();
        self.settle();
        Ok(())
    }

    /// Log lines so far, removing them.
    pub fn take_logs(&mut self) -> Vec<LogEntry> {
        std::mem::take(&mut self.store.data_mut().logs)
    }

    /// Runs one full exchange: [`Vm::begin`] then [`Vm::finish`]. It never moves the clock:
    /// a request the filter holds (paused, waiting for a call the test has not answered)
    /// ends as a client that gave up, with no response. A filter that waits needs the two
    /// steps, with [`Vm::answer_http_call`] or [`Vm::advance`] between them.
    pub fn exchange(&mut self, exchange: &Exchange) -> Result<ExchangeReport> {
        let stream = self.begin(exchange)?;
        self.finish(stream, exchange)
    }

    /// Starts a stream: context creation, request headers, and the request body if any;
    /// then the answers clusters give at once to calls the filter made.
    pub fn begin(&mut self, exchange: &Exchange) -> Result<StreamId> {
        if self.failure.is_some()
            && self.policy() == FailurePolicy::FailReload
            && self.store.data().now_ns >= self.loaded_ns + self.reload_backoff_ns()
        {
            self.reload()?;
        }
        let id = self.next_context;
        self.next_context += 1;
        let stream = StreamState {
            calls_at_begin: self.store.data().calls,
            request_headers: exchange.request_headers.clone(),
            original_request_headers: exchange.request_headers.clone(),
            request_body: exchange.request_body.clone(),
            failed: self.failure.is_some(),
            skipped: self.failure.is_some() && self.policy() == FailurePolicy::FailOpen,
            ..Default::default()
        };
        self.store.data_mut().streams.insert(id, stream);
        self.store.data_mut().entropy = exchange.entropy;
        self.callback(id, "proxy_on_context_create", &[v(id), v(self.root_id)]);
        let n = exchange.request_headers.len() as u32;
        let eos = u32::from(exchange.request_body.is_empty());
        let result = self.stream_step(id, "proxy_on_request_headers", &[v(id), v(n), v(eos)]);
        self.note_request_pause(id, result);
        let answered = self
            .stream(id)
            .is_some_and(|s| s.replied_locally || s.reset);
        if eos == 0 && !answered {
            if result == Some(PAUSE) {
                // Pausing on headers holds the body callbacks too (ABI 0.2.1 in Envoy: the
                // pause stops all iteration); the body comes, buffered, once resumed.
                if let Some(s) = self.stream_mut(id) {
                    s.request_body_waiting = true;
                }
            } else if self.body_phase(id, Direction::Request, true) {
                self.note_request_pause(id, Some(PAUSE));
            }
        }
        self.settle();
        self.store.data_mut().entropy = None;
        Ok(StreamId(id))
    }

    /// Ends a stream: answers clusters give at once; then, unless the filter replied
    /// locally, reset the stream or still holds the request, the upstream's response from
    /// `exchange` through the response callbacks; then the log, done and delete callbacks.
    /// Calls the stream still waits for are cancelled, as Envoy cancels them.
    pub fn finish(&mut self, stream: StreamId, exchange: &Exchange) -> Result<ExchangeReport> {
        let id = stream.0;
        self.settle();
        self.release_waiting();
        self.store.data_mut().entropy = exchange.entropy;
        let forward = !self.is_held(stream)
            && self
                .stream(id)
                .is_some_and(|s| !(s.replied_locally || s.reset));
        if forward {
            let mut response = exchange.response_headers.clone();
            if header_value(&response, ":status").is_none() {
                response.insert(0, (":status".to_owned(), b"200".to_vec()));
            }
            if let Some(s) = self.stream_mut(id) {
                s.response_headers = response;
                s.response_body = exchange.response_body.clone();
            }
            self.response_phase(id, true);
            self.settle();
        }
        self.callback(id, "proxy_on_log", &[v(id)]);
        self.callback(id, "proxy_on_done", &[v(id)]);
        self.callback(id, "proxy_on_delete", &[v(id)]);
        self.store.data_mut().entropy = None;
        self.store.data_mut().cancel_calls(id);
        let stream = self
            .store
            .data_mut()
            .streams
            .remove(&id)
            .unwrap_or_default();
        let calls = self.store.data().calls.since(stream.calls_at_begin);
        Ok(report(stream, forward, self.take_logs(), calls))
    }

    /// Whether Envoy would still hold the stream's request: the filter paused it and has
    /// neither resumed nor answered it (nor reset the stream).
    pub fn is_held(&self, stream: StreamId) -> bool {
        self.stream(stream.0).is_some_and(StreamState::request_held)
    }

    /// How long until the first call in flight times out, if one has a timeout.
    pub fn next_call_timeout(&self) -> Option<Duration> {
        let data = self.store.data();
        let deadline = data.next_deadline()?;
        Some(Duration::from_nanos(deadline.saturating_sub(data.now_ns)))
    }

    /// A stream's state.
    fn stream(&self, id: u32) -> Option<&StreamState> {
        self.store.data().streams.get(&id)
    }

    fn stream_mut(&mut self, id: u32) -> Option<&mut StreamState> {
        self.store.data_mut().streams.get_mut(&id)
    }

    fn policy(&self) -> FailurePolicy {
        self.store.data().options.failure_policy
    }

    fn reload_backoff_ns(&self) -> u64 {
        self.store.data().options.reload_backoff.as_nanos() as u64
    }

    /// One HTTP callback of a stream, as Envoy's filter runs it: a stream whose VM failed
    /// gets the failure policy instead (before and after the call); a local response the
    /// filter asked for is sent once the callback returns.
    fn stream_step(&mut self, id: u32, name: &str, args: &[Val]) -> Option<i32> {
        if self.stream(id).is_some_and(|s| s.failed) {
            self.fail_stream(id);
            return None;
        }
        let result = self.callback(id, name, args);
        if self.stream(id).is_some_and(|s| s.failed) {
            self.fail_stream(id);
            return None;
        }
        self.send_local_response(id);
        result
    }

    /// Delivers a call's end (`name` with `args`) to the context that made it; for a stream,
    /// a local response the callback asked for is sent once it returns.
    pub(super) fn deliver(&mut self, id: u32, name: &str, args: &[Val]) {
        self.callback(id, name, args);
        if self.stream(id).is_some_and(|s| !s.failed) {
            self.send_local_response(id);
        }
        self.release_waiting();
    }

    /// Delivers the bodies that waited for a stream to be resumed, in one piece with
    /// end_of_stream, as Envoy passes on what it buffered while iteration was stopped.
    pub(super) fn release_waiting(&mut self) {
        let ids: Vec<u32> = self.store.data().streams.keys().copied().collect();
        for id in ids {
            let Some(s) = self.stream_mut(id) else {
                continue;
            };
            if s.request_body_waiting && s.resumed && !s.replied_locally && !s.reset {
                s.request_body_waiting = false;
                if self.body_phase(id, Direction::Request, false)
                    && let Some(s) = self.stream_mut(id)
                {
                    s.resumed = false;
                }
            } else if s.response_body_waiting && s.response_resumed && !s.reset {
                s.response_body_waiting = false;
                if self.body_phase(id, Direction::Response, false)
                    && let Some(s) = self.stream_mut(id)
                {
                    s.response_resumed = false;
                }
            }
        }
    }

    /// Records a request callback's pause.
    fn note_request_pause(&mut self, id: u32, result: Option<i32>) {
        if result == Some(PAUSE)
            && let Some(s) = self.stream_mut(id)
        {
            s.paused = true;
        }
    }

    /// The answer for a stream whose VM failed: one 503 with an empty body that no callback
    /// sees (Envoy's `wasm_fail_stream`), under every policy for the stream that was running
    /// when the VM failed; a stream begun after the failure under FAIL_OPEN goes on without
    /// the filter.
    fn fail_stream(&mut self, id: u32) {
        if let Some(s) = self.stream_mut(id)
            && !s.replied_locally
            && !s.skipped
        {
            s.replied_locally = true;
            s.response_headers = vec![(":status".to_owned(), b"503".to_vec())];
            s.response_body.clear();
            s.response_body_passed.clear();
        }
    }

    /// Sends the local response a callback asked for, if any: it replaces the upstream, and
    /// goes through the filter's own response callbacks, as Envoy encodes it through the
    /// filter chain. Names are lowercased; a body brings `content-length` and a
    /// `content-type` of `text/plain`.
    fn send_local_response(&mut self, id: u32) {
        let Some(s) = self.stream_mut(id) else {
            return;
        };
        let Some(local) = s.local_response.clone() else {
            return;
        };
        if s.replied_locally {
            return;
        }
        s.replied_locally = true;
        let mut headers: Headers = vec![(":status".to_owned(), local.status.to_string().into())];
        for (k, v) in &local.headers {
            headers.push((k.to_ascii_lowercase(), v.as_bytes().to_vec()));
        }
        if !local.body.is_empty() {
            let length = local.body.len().to_string().into_bytes();
            headers.push(("content-length".to_owned(), length));
            headers.push(("content-type".to_owned(), b"text/plain".to_vec()));
        }
        let in_response = s.in_response;
        s.response_headers = headers;
        s.response_body = local.body.into_bytes();
        s.response_body_passed.clear();
        if !in_response {
            self.response_phase(id, false);
        }
    }

    /// The response callbacks over the stream's response headers and body; `chunked` as an
    /// upstream's body arrives, else in one piece as a local response's.
    fn response_phase(&mut self, id: u32, chunked: bool) {
        let Some(s) = self.stream_mut(id) else {
            return;
        };
        s.in_response = true;
        let n = s.response_headers.len() as u32;
        let has_body = !s.response_body.is_empty();
        let eos = u32::from(!has_body);
        let paused = self.stream_step(id, "proxy_on_response_headers", &[v(id), v(n), v(eos)])
            == Some(PAUSE);
        if paused {
            if let Some(s) = self.stream_mut(id) {
                s.response_paused = true;
                s.response_body_waiting = has_body;
            }
            return;
        }
        if has_body
            && self.body_phase(id, Direction::Response, chunked)
            && let Some(s) = self.stream_mut(id)
        {
            s.response_paused = true;
        }
    }

    /// The body callbacks of one direction; whether the filter held the body at its end.
    /// `chunked` delivers it as Envoy does from an HTTP/1 peer: the bytes with
    /// end_of_stream false, then end_of_stream with what is still buffered (nothing, unless
    /// the filter paused to buffer); else in one call with end_of_stream true. A chunk the
    /// filter lets through moves on; what it buffers, it sees again.
    fn body_phase(&mut self, id: u32, direction: Direction, chunked: bool) -> bool {
        let name = match direction {
            Direction::Request => "proxy_on_request_body",
            Direction::Response => "proxy_on_response_body",
        };
        if chunked {
            let len = self.body(id, direction).map_or(0, |b| b.0.len()) as u32;
            if self.stream_step(id, name, &[v(id), v(len), v(0)]) != Some(PAUSE) {
                self.pass_body(id, direction);
            }
            if self
                .stream(id)
                .is_none_or(|s| s.reset || (s.replied_locally && direction == Direction::Request))
            {
                return false;
            }
        }
        let len = self.body(id, direction).map_or(0, |b| b.0.len()) as u32;
        let held = self.stream_step(id, name, &[v(id), v(len), v(1)]) == Some(PAUSE);
        if !held {
            self.pass_body(id, direction);
        }
        held
    }

    /// A direction's body buffer and what already passed the filter.
    fn body(&mut self, id: u32, direction: Direction) -> Option<(&mut Vec<u8>, &mut Vec<u8>)> {
        let s = self.stream_mut(id)?;
        Some(match direction {
            Direction::Request => (&mut s.request_body, &mut s.request_body_passed),
            Direction::Response => (&mut s.response_body, &mut s.response_body_passed),
        })
    }

    /// Moves a direction's buffered body on, past the filter.
    fn pass_body(&mut self, id: u32, direction: Direction) {
        if let Some((buffer, passed)) = self.body(id, direction) {
            passed.append(buffer);
        }
    }

    /// Replaces the failed VM with a fresh one (FAIL_RELOAD): started and configured as the
    /// first was, at the same point of the virtual clock; streams in flight stay failed.
    fn reload(&mut self) -> Result<()> {
        let now = self.store.data().now_ns;
        self.loaded_ns = now;
        let mut options = self.store.data().options.clone();
        options.start_time_ns = now;
        let mut fresh = self.module.start_vm(options)?;
        if let Some(config) = self.plugin_configuration.clone()
            && !fresh.configure(&config)?
        {
            // Envoy keeps the failed VM when the reload fails, until the next backoff.
            return Ok(());
        }
        let old = self.store.data_mut();
        let mut logs = std::mem::take(&mut old.logs);
        let streams = std::mem::take(&mut old.streams);
        let tick_anchor = old.last_tick_ns;
        let data = fresh.store.data_mut();
        logs.append(&mut data.logs);
        data.logs = logs;
        data.streams = streams;
        data.last_tick_ns = data.last_tick_ns.max(tick_anchor);
        self.store = fresh.store;
        self.instance = fresh.instance;
        self.next_context = self.next_context.max(fresh.next_context);
        self.failure = None;
        self.reloads += 1;
        Ok(())
    }
}

impl StreamState {
    /// Whether the request waits for the filter: paused, not resumed, not answered, not
    /// reset.
    fn request_held(&self) -> bool {
        let waiting = self.paused && !self.resumed;
        let ended = self.replied_locally || self.reset;
        waiting && !ended
    }

    /// Whether the client gets no response from the filter: reset, or paused for good.
    fn response_held(&self) -> bool {
        let waiting = self.response_paused && !self.response_resumed;
        self.reset || waiting
    }
}

/// What the client gets for a response as Envoy's HTTP/1 codec writes it: headers without
/// pseudo-headers, and `content-length: 0` for a response without body or framing header.
fn client_view(headers: &Headers, body: &[u8]) -> ClientResponse {
    let status = header_value(headers, ":status")
        .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
        .unwrap_or(0);
    let mut out: Vec<(String, String)> = lossy(headers)
        .into_iter()
        .filter(|(k, _)| !k.starts_with(':'))
        .collect();
    let framed = out
        .iter()
        .any(|(k, _)| k == "content-length" || k == "transfer-encoding");
    if !framed {
        if body.is_empty() {
            out.push(("content-length".to_owned(), "0".to_owned()));
        } else {
            out.push(("transfer-encoding".to_owned(), "chunked".to_owned()));
        }
    }
    ClientResponse {
        status,
        headers: out,
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

fn report(
    stream: StreamState,
    forwarded: bool,
    logs: Vec<LogEntry>,
    calls: CallCounts,
) -> ExchangeReport {
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
    let answered = (stream.replied_locally || forwarded) && !stream.response_held();
    ExchangeReport {
        reached_upstream: forwarded,
        upstream_request_headers: if forwarded { lossy(finals) } else { Vec::new() },
        request_headers_set: set,
        request_headers_removed: removed,
        upstream_request_body: if forwarded {
            String::from_utf8_lossy(&whole(&stream.request_body_passed, &stream.request_body))
                .into_owned()
        } else {
            String::new()
        },
        client_response_headers: if answered {
            lossy(&stream.response_headers)
        } else {
            Vec::new()
        },
        client: answered.then(|| {
            let body = whole(&stream.response_body_passed, &stream.response_body);
            client_view(&stream.response_headers, &body)
        }),
        local_response: stream.local_response,
        logs,
        paused: stream.paused,
        resumed: stream.resumed,
        trap: stream.trap,
        calls,
    }
}
