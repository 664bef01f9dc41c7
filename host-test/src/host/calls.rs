//! The harness's model of the clusters a filter calls: which exist, what each answers and
//! when, and the calls in flight (HTTP and gRPC) with their deadlines on the virtual clock.
//! Envoy refuses a call to a cluster it does not know; a call it accepts ends with the
//! cluster's answer, at its timeout, or is cancelled with its stream.

use std::time::Duration;

use super::guest::v;
use super::{Headers, HostState, HttpCall, HttpCallResponse, Vm, header_value};
use crate::abi::status;

/// A cluster of the Envoy the filter runs in, besides the route's upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Its name, as the filter calls it.
    pub name: String,
    /// What a call to it gets.
    pub answer: ClusterAnswer,
}

/// What a call to a [`Cluster`] gets, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterAnswer {
    /// The test answers each call ([`Vm::answer_http_call`], [`Vm::answer_grpc_call`]), or
    /// lets the virtual clock reach its timeout.
    Test,
    /// Every HTTP call gets this response once the callback that made it returns.
    Respond(HttpCallResponse),
    /// Nothing answers: each call ends at its own timeout (a call without one never ends).
    Hang,
    /// Its endpoint refuses connections: each call ends at once, as Envoy ends it.
    Refuse,
    /// A gRPC server that answers every gRPC call with this status and message and no
    /// response message (a trailers-only response).
    Grpc {
        /// gRPC status code.
        status: u32,
        /// gRPC status message.
        message: String,
    },
}

impl Cluster {
    /// A cluster whose calls the test answers.
    pub fn test(name: &str) -> Cluster {
        Cluster::new(name, ClusterAnswer::Test)
    }

    /// A cluster that answers every HTTP call with `response`.
    pub fn respond(name: &str, response: HttpCallResponse) -> Cluster {
        Cluster::new(name, ClusterAnswer::Respond(response))
    }

    /// A cluster of the given kind.
    pub fn new(name: &str, answer: ClusterAnswer) -> Cluster {
        Cluster {
            name: name.to_owned(),
            answer,
        }
    }
}

/// A gRPC call the filter made, waiting for its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    /// The token the filter got for it.
    pub token: u32,
    /// The context that made the call.
    pub context_id: u32,
    /// The cluster it goes to.
    pub cluster: String,
    /// The gRPC service, such as `pkg.Service`.
    pub service: String,
    /// The method.
    pub method: String,
    /// The request message (serialized protobuf).
    pub message: Vec<u8>,
    /// When it times out on the virtual clock (ns), if it has a timeout.
    pub deadline_ns: Option<u64>,
}

/// The end of a gRPC call: status 0 with the response message, or another status with its
/// message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrpcCallResponse {
    /// gRPC status code; 0 is OK.
    pub status: u32,
    /// gRPC status message.
    pub message: String,
    /// The response message, for status 0.
    pub body: Vec<u8>,
}

/// Envoy's answer to an HTTP call that timed out: the router's local reply.
pub(super) fn timeout_response() -> HttpCallResponse {
    envoy_reply(504, "upstream request timeout")
}

/// The body of Envoy's router's 503 when a cluster's endpoint refuses the connection.
const REFUSED: &str = "upstream connect error or disconnect/reset before headers. reset reason: \
                       remote connection failure";

/// The response details Envoy's async gRPC client appends to a refused call's message.
const REFUSED_DETAILS: &str = "{upstream_reset_before_response_started{remote_connection_failure|\
                               delayed_connect_error:_Connection_refused}}";

/// gRPC status UNAVAILABLE, what Envoy maps its router's 503 and 504 to.
const UNAVAILABLE: u32 = 14;

/// A local reply of Envoy's router, as a call's response.
fn envoy_reply(code: u32, body: &str) -> HttpCallResponse {
    HttpCallResponse {
        headers: vec![
            (":status".to_owned(), code.to_string().into_bytes()),
            (
                "content-length".to_owned(),
                body.len().to_string().into_bytes(),
            ),
            ("content-type".to_owned(), b"text/plain".to_vec()),
        ],
        body: body.as_bytes().to_vec(),
    }
}

impl HostState {
    /// The answer kind of a cluster, if it exists.
    fn cluster(&self, name: &str) -> Option<&ClusterAnswer> {
        self.options
            .clusters
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.answer)
    }

    fn deadline(&self, timeout: Duration) -> Option<u64> {
        (!timeout.is_zero()).then(|| self.now_ns + timeout.as_nanos() as u64)
    }

    /// Records an HTTP call; its token, or what Envoy answers instead: `BAD_ARGUMENT` for an
    /// unknown cluster or without the pseudo-headers it requires.
    pub(super) fn http_call(
        &mut self,
        cluster: String,
        headers: Headers,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<u32, i32> {
        if self.cluster(&cluster).is_none() {
            return Err(status::BAD_ARGUMENT);
        }
        let has = |n: &str| header_value(&headers, n).is_some();
        if !(has(":method") && has(":path") && has(":authority")) {
            return Err(status::BAD_ARGUMENT);
        }
        let token = self.next_token(0);
        let headers = headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        self.http_calls.push(HttpCall {
            token,
            context_id: self.current,
            upstream: cluster,
            headers,
            body,
            timeout,
            deadline_ns: self.deadline(timeout),
        });
        Ok(token)
    }

    /// Records a gRPC call; its token, or `PARSE_FAILURE` for an unknown cluster (Envoy's
    /// answer when the service names no cluster it knows).
    pub(super) fn grpc_call(
        &mut self,
        cluster: String,
        service: String,
        method: String,
        message: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<u32, i32> {
        if self.cluster(&cluster).is_none() {
            return Err(status::PARSE_FAILURE);
        }
        // A stream (no timeout) counts its tokens apart from calls.
        let token = self.next_token(if timeout.is_some() { 1 } else { 2 });
        let timeout = timeout.unwrap_or_default();
        self.grpc_calls.push(GrpcCall {
            token,
            context_id: self.current,
            cluster,
            service,
            method,
            message,
            deadline_ns: self.deadline(timeout),
        });
        Ok(token)
    }

    /// The next token of a kind (0 HTTP call, 1 gRPC call, 2 gRPC stream).
    fn next_token(&mut self, kind: usize) -> u32 {
        match self.last_tokens.get_mut(kind) {
            Some(last) => {
                *last = last.wrapping_add(4);
                *last
            }
            None => 0,
        }
    }

    /// Cancels or closes a gRPC call or stream: `BAD_ARGUMENT` for a token of an HTTP call,
    /// `NOT_FOUND` for one no call in flight has.
    pub(super) fn cancel_grpc_call(&mut self, token: u32) -> i32 {
        if token & 3 == 0 || token & 3 == 3 {
            return status::BAD_ARGUMENT;
        }
        let before = self.grpc_calls.len();
        self.grpc_calls.retain(|c| c.token != token);
        if self.grpc_calls.len() < before {
            status::OK
        } else {
            status::NOT_FOUND
        }
    }

    /// Drops the calls a context still waits for, as Envoy cancels them when a stream ends:
    /// the filter hears nothing of them.
    pub(super) fn cancel_calls(&mut self, context_id: u32) {
        self.http_calls.retain(|c| c.context_id != context_id);
        self.grpc_calls.retain(|c| c.context_id != context_id);
    }

    /// The earliest deadline of a call in flight.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        let http = self.http_calls.iter().filter_map(|c| c.deadline_ns);
        let grpc = self.grpc_calls.iter().filter_map(|c| c.deadline_ns);
        http.chain(grpc).min()
    }

    /// A call in flight whose cluster answers it now, with that answer.
    fn answerable(&self) -> Option<Answer> {
        for call in &self.http_calls {
            match self.cluster(&call.upstream) {
                Some(ClusterAnswer::Respond(r)) => {
                    return Some(Answer::Http(call.token, r.clone()));
                }
                Some(ClusterAnswer::Refuse) => {
                    return Some(Answer::Http(call.token, envoy_reply(503, REFUSED)));
                }
                _ => {}
            }
        }
        for call in &self.grpc_calls {
            let end = match self.cluster(&call.cluster) {
                // Envoy's async gRPC client appends the HTTP response's details to the
                // message: `{via_upstream}` for what a server answered.
                Some(ClusterAnswer::Grpc { status, message }) => GrpcCallResponse {
                    status: *status,
                    message: format!("{message}{{via_upstream}}"),
                    body: Vec::new(),
                },
                Some(ClusterAnswer::Refuse) => GrpcCallResponse {
                    status: UNAVAILABLE,
                    message: format!("{REFUSED}{REFUSED_DETAILS}"),
                    body: Vec::new(),
                },
                _ => continue,
            };
            return Some(Answer::Grpc(call.token, end));
        }
        None
    }
}

/// A call's end, ready to deliver.
enum Answer {
    Http(u32, HttpCallResponse),
    Grpc(u32, GrpcCallResponse),
}

impl Vm {
    /// Outgoing HTTP calls not answered yet.
    pub fn pending_http_calls(&self) -> &[HttpCall] {
        &self.store.data().http_calls
    }

    /// Outgoing gRPC calls not ended yet.
    pub fn pending_grpc_calls(&self) -> &[GrpcCall] {
        &self.store.data().grpc_calls
    }

    /// Delivers the answers clusters give at once (every [`ClusterAnswer`] but `Test` and
    /// `Hang`), as Envoy delivers them once the callback that made the call has returned;
    /// answers to calls made while delivering are delivered too.
    pub(super) fn settle(&mut self) {
        while let Some(answer) = self.store.data().answerable() {
            let result = match answer {
                Answer::Http(token, response) => self.answer_http_call(token, response),
                Answer::Grpc(token, end) => self.answer_grpc_call(token, end),
            };
            debug_assert!(result.is_ok(), "an answerable call is pending");
        }
    }

    /// Ends the calls whose deadline has come: an HTTP call gets Envoy's 504, a gRPC call
    /// status UNAVAILABLE with the router's words and details, as Envoy ends them.
    pub(super) fn expire_calls(&mut self) {
        let now = self.store.data().now_ns;
        let due = |d: Option<u64>| d.is_some_and(|d| d <= now);
        let http: Vec<u32> = (self.store.data().http_calls.iter())
            .filter(|c| due(c.deadline_ns))
            .map(|c| c.token)
            .collect();
        let grpc: Vec<u32> = (self.store.data().grpc_calls.iter())
            .filter(|c| due(c.deadline_ns))
            .map(|c| c.token)
            .collect();
        for token in http {
            let _ = self.answer_http_call(token, timeout_response());
        }
        for token in grpc {
            let end = GrpcCallResponse {
                status: UNAVAILABLE,
                message: "upstream request timeout{response_timeout}".to_owned(),
                body: Vec::new(),
            };
            let _ = self.answer_grpc_call(token, end);
        }
        self.settle();
    }

    /// Answers a pending HTTP call (`proxy_on_http_call_response`); an empty header list
    /// answers it as failed (a reset), as Envoy does. An error if no call has that token.
    pub fn answer_http_call(
        &mut self,
        token: u32,
        response: HttpCallResponse,
    ) -> anyhow::Result<()> {
        let state = self.store.data_mut();
        let Some(at) = state.http_calls.iter().position(|c| c.token == token) else {
            anyhow::bail!("no pending HTTP call with token {token}");
        };
        let call = state.http_calls.remove(at);
        let (n_headers, body_len) = (response.headers.len() as u32, response.body.len() as u32);
        if response.headers.is_empty() {
            state.status = Some((status::BROKEN_CONNECTION as u32, "reset".to_owned()));
        }
        state.call_response = Some(response);
        let id = call.context_id;
        let args = [v(id), v(token), v(n_headers), v(body_len), v(0u32)];
        self.deliver(id, "proxy_on_http_call_response", &args);
        let state = self.store.data_mut();
        state.call_response = None;
        state.status = None;
        Ok(())
    }

    /// Ends a pending gRPC call: status 0 delivers the response message
    /// (`proxy_on_grpc_receive`), another status the call's close (`proxy_on_grpc_close`),
    /// as Envoy does. An error if no call has that token.
    pub fn answer_grpc_call(&mut self, token: u32, end: GrpcCallResponse) -> anyhow::Result<()> {
        let state = self.store.data_mut();
        let Some(at) = state.grpc_calls.iter().position(|c| c.token == token) else {
            anyhow::bail!("no pending gRPC call with token {token}");
        };
        let call = state.grpc_calls.remove(at);
        let id = call.context_id;
        if end.status == 0 {
            let len = end.body.len() as u32;
            state.grpc_message = Some(end.body);
            self.deliver(id, "proxy_on_grpc_receive", &[v(id), v(token), v(len)]);
        } else {
            state.status = Some((end.status, end.message));
            self.deliver(id, "proxy_on_grpc_close", &[v(id), v(token), v(end.status)]);
        }
        let state = self.store.data_mut();
        state.grpc_message = None;
        state.status = None;
        Ok(())
    }
}
