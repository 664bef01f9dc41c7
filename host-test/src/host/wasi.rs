//! The few WASI calls a Rust filter for wasm32-wasip1 imports, with real behaviour:
//! environment variables from `VmOptions::env`, stdout and stderr into the log, the virtual
//! clock, and repeatable randomness.

use anyhow::Result;

use super::HostState;
use super::guest::{Cx, Imports, in_bounds, read, write, write_u32};
use crate::abi::LogLevel;

const WASI: &str = "wasi_snapshot_preview1";
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;

/// Registers this group's imports.
pub(super) fn add_to_linker(linker: &mut Imports<'_>) -> Result<()> {
    linker.add(WASI, "environ_sizes_get", environ_sizes_get)?;
    linker.add(WASI, "environ_get", environ_get)?;
    linker.add(WASI, "args_sizes_get", args_sizes_get)?;
    linker.add(WASI, "args_get", args_get)?;
    linker.add(WASI, "fd_write", fd_write)?;
    linker.add(WASI, "proc_exit", proc_exit)?;
    linker.add(WASI, "clock_time_get", clock_time_get)?;
    linker.add(WASI, "random_get", random_get)?;
    linker.add(WASI, "sched_yield", sched_yield)
}

/// `ERRNO_SUCCESS` if a write into guest memory worked, else `ERRNO_FAULT`.
fn errno_of(written: bool) -> i32 {
    if written { ERRNO_SUCCESS } else { ERRNO_FAULT }
}

fn environ_sizes_get(mut cx: Cx<'_>, ret_count: i32, ret_size: i32) -> i32 {
    let strings = cx.data().env_strings();
    let size: usize = strings.iter().map(Vec::len).sum();
    errno_of(
        write_u32(&mut cx, ret_count, strings.len() as u32)
            && write_u32(&mut cx, ret_size, size as u32),
    )
}

fn environ_get(mut cx: Cx<'_>, ptrs: i32, buf: i32) -> i32 {
    let mut at = buf;
    for (i, s) in cx.data().env_strings().iter().enumerate() {
        if !(write_u32(&mut cx, ptrs + 4 * i as i32, at as u32) && write(&mut cx, at, s)) {
            return ERRNO_FAULT;
        }
        at += s.len() as i32;
    }
    ERRNO_SUCCESS
}

/// A filter has no command line.
fn args_sizes_get(mut cx: Cx<'_>, ret_count: i32, ret_size: i32) -> i32 {
    errno_of(write_u32(&mut cx, ret_count, 0) && write_u32(&mut cx, ret_size, 0))
}

fn args_get(_: Cx<'_>, _ptrs: i32, _buf: i32) -> i32 {
    ERRNO_SUCCESS
}

/// Stdout and stderr become log lines (info and error); other descriptors do not exist.
fn fd_write(mut cx: Cx<'_>, fd: i32, iovs: i32, n_iovs: i32, ret_written: i32) -> i32 {
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return ERRNO_BADF,
    };
    let mut text = Vec::new();
    for i in 0..n_iovs {
        let iov: Option<[u8; 8]> = read(&cx, iovs + 8 * i, 8).and_then(|b| b.try_into().ok());
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
    // As Envoy logs them: the text alone, at the stream's level.
    let message = String::from_utf8_lossy(&text).trim_end().to_owned();
    cx.data_mut().log(level, message);
    errno_of(write_u32(&mut cx, ret_written, written))
}

fn proc_exit(_: Cx<'_>, code: i32) -> wasmtime::Result<()> {
    wasmtime::bail!("filter called proc_exit({code})")
}

/// Every clock reads the virtual one.
fn clock_time_get(mut cx: Cx<'_>, _clock: i32, _precision: i64, ret: i32) -> i32 {
    let now = cx.data().now_ns;
    errno_of(write(&mut cx, ret, &now.to_le_bytes()))
}

fn random_get(mut cx: Cx<'_>, buf: i32, len: i32) -> i32 {
    // Checked first, so a wild length allocates nothing.
    if !in_bounds(&cx, buf, len) {
        return ERRNO_FAULT;
    }
    let bytes = cx.data_mut().random_bytes(len as u32 as usize);
    errno_of(write(&mut cx, buf, &bytes))
}

fn sched_yield(_: Cx<'_>) -> i32 {
    ERRNO_SUCCESS
}

impl HostState {
    fn env_strings(&self) -> Vec<Vec<u8>> {
        self.options
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}\0").into_bytes())
            .collect()
    }

    /// The bytes a test fixed for this exchange (golden vectors carry their entropy), else
    /// a seeded xorshift's, so harness runs are repeatable.
    fn random_bytes(&mut self, len: usize) -> Vec<u8> {
        match self.entropy {
            Some(fixed) => fixed
                .to_le_bytes()
                .iter()
                .copied()
                .cycle()
                .take(len)
                .collect(),
            None => (0..len)
                .map(|_| {
                    let x = &mut self.random_state;
                    *x ^= *x << 13;
                    *x ^= *x >> 7;
                    *x ^= *x << 17;
                    *x as u8
                })
                .collect(),
        }
    }
}
