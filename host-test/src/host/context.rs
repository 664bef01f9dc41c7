//! Imports about the VM and its contexts: logging, the virtual clock and tick period,
//! properties, which context is current, and the calls a filter may make that the harness
//! has nothing behind (foreign functions, `proxy_done`).

use anyhow::Result;

use super::HostState;
use super::guest::{Cx, ENV, Imports, read, read_str, status_of, write, write_u32};
use crate::abi::{LogLevel, status};

/// Registers this group's imports.
pub(super) fn add_to_linker(linker: &mut Imports<'_>) -> Result<()> {
    linker.add(ENV, "proxy_log", proxy_log)?;
    linker.add(ENV, "proxy_get_log_level", proxy_get_log_level)?;
    linker.add(
        ENV,
        "proxy_get_current_time_nanoseconds",
        proxy_get_current_time_nanoseconds,
    )?;
    linker.add(
        ENV,
        "proxy_set_tick_period_milliseconds",
        proxy_set_tick_period_milliseconds,
    )?;
    linker.add(ENV, "proxy_get_property", proxy_get_property)?;
    linker.add(ENV, "proxy_set_property", proxy_set_property)?;
    linker.add(
        ENV,
        "proxy_set_effective_context",
        proxy_set_effective_context,
    )?;
    linker.add(
        ENV,
        "proxy_call_foreign_function",
        proxy_call_foreign_function,
    )?;
    linker.add(ENV, "proxy_done", proxy_done)
}

fn proxy_log(mut cx: Cx<'_>, level: i32, ptr: i32, len: i32) -> i32 {
    let Some(message) = read_str(&cx, ptr, len) else {
        return status::BAD_ARGUMENT;
    };
    cx.data_mut().log(LogLevel::from_abi(level), message);
    status::OK
}

fn proxy_get_log_level(mut cx: Cx<'_>, ret: i32) -> i32 {
    let level = cx.data().options.log_level.to_abi() as u32;
    status_of(write_u32(&mut cx, ret, level))
}

fn proxy_get_current_time_nanoseconds(mut cx: Cx<'_>, ret: i32) -> i32 {
    let now = cx.data().now_ns;
    status_of(write(&mut cx, ret, &now.to_le_bytes()))
}

fn proxy_set_tick_period_milliseconds(mut cx: Cx<'_>, period: i32) -> i32 {
    let data = cx.data_mut();
    data.tick_period_ms = period as u32;
    data.last_tick_ns = data.now_ns;
    status::OK
}

fn proxy_get_property(
    mut cx: Cx<'_>,
    path_ptr: i32,
    path_len: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> wasmtime::Result<i32> {
    let Some(path) = read(&cx, path_ptr, path_len) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let found = cx.data().property(&path).ok_or(status::NOT_FOUND);
    super::guest::give_found(&mut cx, found, ret_ptr, ret_size)
}

fn proxy_set_property(
    mut cx: Cx<'_>,
    path_ptr: i32,
    path_len: i32,
    val_ptr: i32,
    val_len: i32,
) -> i32 {
    let (Some(path), Some(value)) = (read(&cx, path_ptr, path_len), read(&cx, val_ptr, val_len))
    else {
        return status::BAD_ARGUMENT;
    };
    cx.data_mut().set_property(&path, value);
    status::OK
}

fn proxy_set_effective_context(mut cx: Cx<'_>, context_id: i32) -> i32 {
    cx.data_mut().current = context_id as u32;
    status::OK
}

/// No foreign functions are registered, so every name is unknown.
fn proxy_call_foreign_function(
    _: Cx<'_>,
    _name_ptr: i32,
    _name_len: i32,
    _args_ptr: i32,
    _args_len: i32,
    _ret_ptr: i32,
    _ret_size: i32,
) -> i32 {
    status::NOT_FOUND
}

/// A filter's root context says it finished pending work; the harness waits for none.
fn proxy_done(_: Cx<'_>) -> i32 {
    status::OK
}

/// A property path as it arrives (segments NUL-separated) to the key properties are stored
/// under ('.' between segments).
fn property_key(path: &[u8]) -> String {
    String::from_utf8_lossy(path)
        .trim_end_matches('\0')
        .replace('\0', ".")
}

impl HostState {
    fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
        self.options.properties.get(&property_key(path)).cloned()
    }

    fn set_property(&mut self, path: &[u8], value: Vec<u8>) {
        self.options.properties.insert(property_key(path), value);
    }
}
