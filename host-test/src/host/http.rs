//! HTTP imports: the current stream's local response and flow control, and outgoing HTTP and
//! gRPC calls to the clusters of `calls.rs`.

use std::time::Duration;

use anyhow::Result;

use super::guest::{Cx, ENV, Imports, give, read, read_str, status_of, write_u32};
use super::{HostState, LocalResponse};
use crate::abi::{self, status};

/// Registers this group's imports.
pub(super) fn add_to_linker(linker: &mut Imports<'_>) -> Result<()> {
    linker.add(ENV, "proxy_send_local_response", proxy_send_local_response)?;
    linker.add(ENV, "proxy_continue_stream", proxy_continue_stream)?;
    linker.add(ENV, "proxy_close_stream", proxy_close_stream)?;
    linker.add(ENV, "proxy_http_call", proxy_http_call)?;
    linker.add(ENV, "proxy_grpc_call", proxy_grpc_call)?;
    linker.add(ENV, "proxy_grpc_stream", proxy_grpc_stream)?;
    linker.add(ENV, "proxy_grpc_send", proxy_grpc_send)?;
    linker.add(ENV, "proxy_grpc_cancel", proxy_grpc_cancel)?;
    linker.add(ENV, "proxy_grpc_close", proxy_grpc_close)?;
    linker.add(ENV, "proxy_get_status", proxy_get_status)
}

#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
fn proxy_send_local_response(
    mut cx: Cx<'_>,
    code: i32,
    details_ptr: i32,
    details_len: i32,
    body_ptr: i32,
    body_len: i32,
    headers_ptr: i32,
    headers_len: i32,
    _grpc_status: i32,
) -> i32 {
    let details = read_str(&cx, details_ptr, details_len);
    let body = read_str(&cx, body_ptr, body_len);
    let headers = read(&cx, headers_ptr, headers_len).and_then(|b| abi::deserialize_map(&b));
    let (Some(details), Some(body), Some(headers)) = (details, body, headers) else {
        return status::BAD_ARGUMENT;
    };
    let headers = headers
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    cx.data_mut().send_local_response(LocalResponse {
        status: code as u32,
        details,
        body,
        headers,
    })
}

/// Resumes the current stream's request (0) or response (1), as Envoy continues decoding or
/// encoding once the callback returns; as in Envoy, OK without a stream too (nothing to do),
/// and the TCP kinds answer as for an HTTP filter.
fn proxy_continue_stream(mut cx: Cx<'_>, kind: i32) -> i32 {
    let current = cx.data().current;
    let stream = cx.data_mut().streams.get_mut(&current);
    match (kind, stream) {
        (0, Some(s)) => s.resumed = true,
        (1, Some(s)) => s.response_resumed = true,
        (0..=2, _) => {}
        (3, _) => return status::UNIMPLEMENTED,
        _ => return status::BAD_ARGUMENT,
    }
    status::OK
}

/// Resets the current stream (request or response): the client gets no response. OK
/// without a stream, as in Envoy.
fn proxy_close_stream(mut cx: Cx<'_>, kind: i32) -> i32 {
    let current = cx.data().current;
    let stream = cx.data_mut().streams.get_mut(&current);
    match (kind, stream) {
        (0 | 1, Some(s)) => s.reset = true,
        (0..=3, _) => {}
        _ => return status::BAD_ARGUMENT,
    }
    status::OK
}

#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
fn proxy_http_call(
    mut cx: Cx<'_>,
    up_ptr: i32,
    up_len: i32,
    headers_ptr: i32,
    headers_len: i32,
    body_ptr: i32,
    body_len: i32,
    _trailers_ptr: i32,
    _trailers_len: i32,
    timeout_ms: i32,
    ret_token: i32,
) -> i32 {
    let upstream = read_str(&cx, up_ptr, up_len);
    let headers = read(&cx, headers_ptr, headers_len).and_then(|b| abi::deserialize_map(&b));
    let body = read(&cx, body_ptr, body_len);
    let (Some(upstream), Some(headers), Some(body)) = (upstream, headers, body) else {
        return status::BAD_ARGUMENT;
    };
    let timeout = Duration::from_millis(u64::from(timeout_ms as u32));
    match cx.data_mut().http_call(upstream, headers, body, timeout) {
        Ok(token) => status_of(write_u32(&mut cx, ret_token, token)),
        Err(status) => status,
    }
}

// gRPC calls go to a cluster named by the service argument (Envoy also takes a serialized
// GrpcService there; the harness reads it as a name only). Streams are not modelled: a stream
// to a known cluster is opened and never answered.

#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
fn proxy_grpc_call(
    mut cx: Cx<'_>,
    service_ptr: i32,
    service_len: i32,
    service_name_ptr: i32,
    service_name_len: i32,
    method_ptr: i32,
    method_len: i32,
    _metadata_ptr: i32,
    _metadata_len: i32,
    message_ptr: i32,
    message_len: i32,
    timeout_ms: i32,
    ret_token: i32,
) -> i32 {
    let cluster = read_str(&cx, service_ptr, service_len);
    let service = read_str(&cx, service_name_ptr, service_name_len);
    let method = read_str(&cx, method_ptr, method_len);
    let message = read(&cx, message_ptr, message_len);
    let (Some(cluster), Some(service), Some(method), Some(message)) =
        (cluster, service, method, message)
    else {
        return status::BAD_ARGUMENT;
    };
    let timeout = Duration::from_millis(u64::from(timeout_ms as u32));
    match cx
        .data_mut()
        .grpc_call(cluster, service, method, message, Some(timeout))
    {
        Ok(token) => status_of(write_u32(&mut cx, ret_token, token)),
        Err(status) => status,
    }
}

#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
fn proxy_grpc_stream(
    mut cx: Cx<'_>,
    service_ptr: i32,
    service_len: i32,
    service_name_ptr: i32,
    service_name_len: i32,
    method_ptr: i32,
    method_len: i32,
    _metadata_ptr: i32,
    _metadata_len: i32,
    ret_token: i32,
) -> i32 {
    let cluster = read_str(&cx, service_ptr, service_len);
    let service = read_str(&cx, service_name_ptr, service_name_len);
    let method = read_str(&cx, method_ptr, method_len);
    let (Some(cluster), Some(service), Some(method)) = (cluster, service, method) else {
        return status::BAD_ARGUMENT;
    };
    match cx
        .data_mut()
        .grpc_call(cluster, service, method, Vec::new(), None)
    {
        Ok(token) => status_of(write_u32(&mut cx, ret_token, token)),
        Err(status) => status,
    }
}

/// Only a stream's token takes messages (BAD_ARGUMENT otherwise); the message goes nowhere.
fn proxy_grpc_send(cx: Cx<'_>, token: i32, _ptr: i32, _len: i32, _end: i32) -> i32 {
    let token = token as u32;
    if token & 3 != 2 {
        return status::BAD_ARGUMENT;
    }
    let known = cx.data().grpc_calls.iter().any(|c| c.token == token);
    if known { status::OK } else { status::NOT_FOUND }
}

fn proxy_grpc_cancel(mut cx: Cx<'_>, token: i32) -> i32 {
    cx.data_mut().cancel_grpc_call(token as u32)
}

fn proxy_grpc_close(mut cx: Cx<'_>, token: i32) -> i32 {
    cx.data_mut().cancel_grpc_call(token as u32)
}

/// The status of the call whose end is being delivered: a gRPC status and message, or
/// `BrokenConnection` and `reset` for a failed HTTP call; otherwise code 0 and no message.
fn proxy_get_status(
    mut cx: Cx<'_>,
    ret_code: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> wasmtime::Result<i32> {
    let (code, message) = cx.data().status.clone().unwrap_or_default();
    if !write_u32(&mut cx, ret_code, code) {
        return Ok(status::BAD_ARGUMENT);
    }
    if message.is_empty() {
        return Ok(status_of(
            write_u32(&mut cx, ret_ptr, 0) && write_u32(&mut cx, ret_size, 0),
        ));
    }
    give(&mut cx, message.as_bytes(), ret_ptr, ret_size)
}

impl HostState {
    fn send_local_response(&mut self, response: LocalResponse) -> i32 {
        match self.stream_mut() {
            Some(stream) => {
                stream.local_response = Some(response);
                status::OK
            }
            None => status::NOT_FOUND,
        }
    }
}
