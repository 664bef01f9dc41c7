//! HTTP imports: the current stream's local response and flow control, outgoing HTTP calls
//! the test answers, and gRPC, which the harness does not emulate.

use std::time::Duration;

use anyhow::Result;

use super::guest::{Cx, ENV, Imports, read, read_str, status_of, write_u32};
use super::{Headers, HostState, HttpCall, LocalResponse, header_value};
use crate::abi::{self, LogLevel, status};

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

/// The harness drives streams synchronously: continuing is recorded in the log, and a
/// continued request (stream type 0) is marked resumed for the report.
fn proxy_continue_stream(mut cx: Cx<'_>, kind: i32) -> i32 {
    cx.data_mut()
        .log(LogLevel::Trace, format!("host: continue_stream({kind})"));
    let current = cx.data().current;
    if kind == 0
        && let Some(stream) = cx.data_mut().streams.get_mut(&current)
    {
        stream.resumed = true;
    }
    status::OK
}

/// The harness drives streams synchronously: closing is only recorded in the log.
fn proxy_close_stream(mut cx: Cx<'_>, kind: i32) -> i32 {
    cx.data_mut()
        .log(LogLevel::Trace, format!("host: close_stream({kind})"));
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

// gRPC is outside what the harness emulates: calls are answered as Envoy answers a call to an
// unknown cluster, and handles as unknown ones.

#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
fn proxy_grpc_call(
    _: Cx<'_>,
    _service_ptr: i32,
    _service_len: i32,
    _service_name_ptr: i32,
    _service_name_len: i32,
    _method_ptr: i32,
    _method_len: i32,
    _metadata_ptr: i32,
    _metadata_len: i32,
    _message_ptr: i32,
    _message_len: i32,
    _timeout_ms: i32,
    _ret_token: i32,
) -> i32 {
    status::BAD_ARGUMENT
}

#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
fn proxy_grpc_stream(
    _: Cx<'_>,
    _service_ptr: i32,
    _service_len: i32,
    _service_name_ptr: i32,
    _service_name_len: i32,
    _method_ptr: i32,
    _method_len: i32,
    _metadata_ptr: i32,
    _metadata_len: i32,
    _ret_token: i32,
) -> i32 {
    status::BAD_ARGUMENT
}

fn proxy_grpc_send(_: Cx<'_>, _token: i32, _ptr: i32, _len: i32, _end: i32) -> i32 {
    status::NOT_FOUND
}

fn proxy_grpc_cancel(_: Cx<'_>, _token: i32) -> i32 {
    status::NOT_FOUND
}

fn proxy_grpc_close(_: Cx<'_>, _token: i32) -> i32 {
    status::NOT_FOUND
}

/// The status of the gRPC call being delivered; with none, code 0 and an empty message.
fn proxy_get_status(mut cx: Cx<'_>, ret_code: i32, ret_ptr: i32, ret_size: i32) -> i32 {
    let ok = write_u32(&mut cx, ret_code, 0)
        && write_u32(&mut cx, ret_ptr, 0)
        && write_u32(&mut cx, ret_size, 0);
    status_of(ok)
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

    /// Records a call for the test to answer; its token, or `BAD_ARGUMENT` without the
    /// pseudo-headers Envoy requires.
    fn http_call(
        &mut self,
        upstream: String,
        headers: Headers,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<u32, i32> {
        let has = |n: &str| header_value(&headers, n).is_some();
        if !(has(":method") && has(":path") && has(":authority")) {
            return Err(status::BAD_ARGUMENT);
        }
        self.next_token += 1;
        let token = self.next_token;
        self.http_calls.push(HttpCall {
            token,
            context_id: self.current,
            upstream,
            headers,
            body,
            timeout,
        });
        Ok(token)
    }
}
