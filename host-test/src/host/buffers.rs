//! Buffer imports: request and response bodies of the current stream, the body of the HTTP
//! call response or gRPC message being delivered, and the VM and plugin configurations.

use anyhow::Result;

use super::HostState;
use super::guest::{Cx, ENV, Imports, give_found, read};
use crate::abi::{BufferType, status};

/// Registers this group's imports.
pub(super) fn add_to_linker(linker: &mut Imports<'_>) -> Result<()> {
    linker.add(ENV, "proxy_get_buffer_bytes", proxy_get_buffer_bytes)?;
    linker.add(ENV, "proxy_set_buffer_bytes", proxy_set_buffer_bytes)
}

fn proxy_get_buffer_bytes(
    mut cx: Cx<'_>,
    kind: i32,
    start: i32,
    max: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> wasmtime::Result<i32> {
    let Some(kind) = BufferType::from_abi(kind) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let found = cx
        .data()
        .buffer_bytes(kind, start as u32 as usize, max as u32 as usize);
    give_found(&mut cx, found, ret_ptr, ret_size)
}

fn proxy_set_buffer_bytes(
    mut cx: Cx<'_>,
    kind: i32,
    start: i32,
    size: i32,
    ptr: i32,
    len: i32,
) -> i32 {
    let Some(data) = read(&cx, ptr, len) else {
        return status::BAD_ARGUMENT;
    };
    let (start, size) = (start as u32 as usize, size as u32 as usize);
    cx.data_mut()
        .set_buffer_bytes(BufferType::from_abi(kind), start, size, data)
}

impl HostState {
    fn buffer(&self, buffer: BufferType) -> Option<&[u8]> {
        let stream = self.streams.get(&self.current);
        match buffer {
            BufferType::RequestBody => stream.map(|s| s.request_body.as_slice()),
            BufferType::ResponseBody => stream.map(|s| s.response_body.as_slice()),
            BufferType::HttpCallResponseBody => {
                self.call_response.as_ref().map(|r| r.body.as_slice())
            }
            BufferType::GrpcReceive => self.grpc_message.as_deref(),
            BufferType::VmConfiguration => Some(&self.options.vm_configuration),
            BufferType::PluginConfiguration => Some(&self.plugin_configuration),
        }
    }

    /// Up to `max` bytes from `start`; `NOT_FOUND` if the buffer is absent or that is empty.
    fn buffer_bytes(&self, kind: BufferType, start: usize, max: usize) -> Result<Vec<u8>, i32> {
        let buffer = self.buffer(kind).ok_or(status::NOT_FOUND)?;
        let start = start.min(buffer.len());
        let end = start.saturating_add(max).min(buffer.len());
        let slice = buffer.get(start..end).unwrap_or_default();
        if slice.is_empty() {
            return Err(status::NOT_FOUND);
        }
        Ok(slice.to_vec())
    }

    /// Replaces `size` bytes from `start` of a body with `data`; only bodies are writable.
    fn set_buffer_bytes(
        &mut self,
        kind: Option<BufferType>,
        start: usize,
        size: usize,
        data: Vec<u8>,
    ) -> i32 {
        let Some(stream) = self.stream_mut() else {
            return status::NOT_FOUND;
        };
        let buffer = match kind {
            Some(BufferType::RequestBody) => &mut stream.request_body,
            Some(BufferType::ResponseBody) => &mut stream.response_body,
            _ => return status::BAD_ARGUMENT,
        };
        let start = start.min(buffer.len());
        let end = start.saturating_add(size).min(buffer.len());
        buffer.splice(start..end, data);
        status::OK
    }
}
