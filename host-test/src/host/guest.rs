//! Guest memory as the imports see it (reading arguments, writing results, handing the filter
//! bytes in memory it allocated), and the one place imports are registered, which is where
//! error injection ([`super::VmOptions::host_errors`]) happens for every import alike.

use anyhow::Result;
use wasmtime::{Caller, Linker, Val, WasmRet, WasmTy};

use super::HostState;
use crate::abi::status;

/// What every import receives: the store of the calling VM.
pub(super) type Cx<'a> = Caller<'a, HostState>;

/// The module name of proxy-wasm's imports.
pub(super) const ENV: &str = "env";

/// The linker being filled, and the imports defined so far. Groups of imports see only this,
/// never the linker, so no import can be defined without the error-injection wrapper.
pub(super) struct Imports<'l> {
    linker: &'l mut Linker<HostState>,
    defined: Vec<(&'static str, &'static str)>,
}

impl<'l> Imports<'l> {
    /// Starts filling `linker`.
    pub(super) fn new(linker: &'l mut Linker<HostState>) -> Imports<'l> {
        Imports {
            linker,
            defined: Vec::new(),
        }
    }

    /// Defines one import, answering with an injected status instead when a test asks for
    /// one.
    pub(super) fn add<Params, Results>(
        &mut self,
        module: &'static str,
        name: &'static str,
        import: impl HostFn<Params, Results>,
    ) -> Result<()> {
        import.define(self.linker, module, name, self.defined.len())?;
        self.defined.push((module, name));
        Ok(())
    }

    /// Every import defined, as (module, name); an import's index here is the one its
    /// injected status is looked up by.
    pub(super) fn defined(self) -> Vec<(&'static str, &'static str)> {
        self.defined
    }
}

/// What an import returns when a test injected a status in place of its work.
pub(super) trait Injected {
    /// The result carrying `status`.
    fn injected(import: &'static str, status: i32) -> Self;
}

impl Injected for i32 {
    fn injected(_: &'static str, status: i32) -> i32 {
        status
    }
}

impl Injected for wasmtime::Result<i32> {
    fn injected(_: &'static str, status: i32) -> wasmtime::Result<i32> {
        Ok(status)
    }
}

/// An import with no status to return (`proc_exit`) fails by trapping.
impl Injected for wasmtime::Result<()> {
    fn injected(import: &'static str, status: i32) -> wasmtime::Result<()> {
        wasmtime::bail!("{import} failed by injection (status {status})")
    }
}

/// A named import function of any arity, as [`Imports::add`] takes it.
pub(super) trait HostFn<Params, Results> {
    /// Defines it in `linker` behind the check for an injected status at `index`.
    fn define(
        self,
        linker: &mut Linker<HostState>,
        module: &'static str,
        name: &'static str,
        index: usize,
    ) -> Result<()>;
}

/// Implements [`HostFn`] for functions taking the caller and the given argument types.
macro_rules! host_fn {
    ($($arg:ident),*) => {
        impl<F, R, $($arg,)*> HostFn<($($arg,)*), R> for F
        where
            F: Fn(Cx<'_>, $($arg),*) -> R + Send + Sync + 'static,
            $($arg: WasmTy,)*
            R: WasmRet + Injected,
        {
            #[allow(non_snake_case, reason = "the argument values are named after their types")]
            fn define(
                self,
                linker: &mut Linker<HostState>,
                module: &'static str,
                name: &'static str,
                index: usize,
            ) -> Result<()> {
                linker.func_wrap(module, name, move |cx: Cx<'_>, $($arg: $arg),*| -> R {
                    match cx.data().injected_status(index) {
                        Some(status) => R::injected(name, status),
                        None => self(cx, $($arg),*),
                    }
                })?;
                Ok(())
            }
        }
    };
}

host_fn!();
host_fn!(A1);
host_fn!(A1, A2);
host_fn!(A1, A2, A3);
host_fn!(A1, A2, A3, A4);
host_fn!(A1, A2, A3, A4, A5);
host_fn!(A1, A2, A3, A4, A5, A6);
host_fn!(A1, A2, A3, A4, A5, A6, A7);
host_fn!(A1, A2, A3, A4, A5, A6, A7, A8);
host_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9);
host_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10);
host_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11);
host_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12);

/// A u32 argument as wasm passes it.
pub(super) fn v(n: u32) -> Val {
    Val::I32(n as i32)
}

/// `len` bytes of guest memory at `ptr`; `None` if out of bounds.
pub(super) fn read(cx: &Cx<'_>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let memory = cx.data().memory?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    memory
        .data(cx)
        .get(ptr..ptr.checked_add(len)?)
        .map(<[u8]>::to_vec)
}

/// Whether `len` bytes at `ptr` lie inside guest memory.
pub(super) fn in_bounds(cx: &Cx<'_>, ptr: i32, len: i32) -> bool {
    let Some(memory) = cx.data().memory else {
        return false;
    };
    let end = u64::from(ptr as u32) + u64::from(len as u32);
    end <= memory.data_size(cx) as u64
}

/// Guest bytes as text, lossily.
pub(super) fn read_str(cx: &Cx<'_>, ptr: i32, len: i32) -> Option<String> {
    read(cx, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Writes into guest memory; `false` if out of bounds.
pub(super) fn write(cx: &mut Cx<'_>, ptr: i32, bytes: &[u8]) -> bool {
    let Some(memory) = cx.data().memory else {
        return false;
    };
    memory.write(cx, ptr as u32 as usize, bytes).is_ok()
}

/// Writes a little-endian u32 into guest memory; `false` if out of bounds.
pub(super) fn write_u32(cx: &mut Cx<'_>, ptr: i32, value: u32) -> bool {
    write(cx, ptr, &value.to_le_bytes())
}

/// Copies `bytes` into guest memory allocated by the guest's own allocator, and writes the
/// pointer and size to the two return slots, as every ABI call that returns data does.
pub(super) fn give(
    cx: &mut Cx<'_>,
    bytes: &[u8],
    ret_ptr: i32,
    ret_size: i32,
) -> wasmtime::Result<i32> {
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

/// [`give`] for a lookup: the bytes if found, else the status the lookup failed with.
pub(super) fn give_found(
    cx: &mut Cx<'_>,
    found: Result<Vec<u8>, i32>,
    ret_ptr: i32,
    ret_size: i32,
) -> wasmtime::Result<i32> {
    match found {
        Ok(bytes) => give(cx, &bytes, ret_ptr, ret_size),
        Err(status) => Ok(status),
    }
}

/// `OK` if a write into guest memory worked, else `BAD_ARGUMENT` (a pointer out of bounds).
pub(super) fn status_of(written: bool) -> i32 {
    if written {
        status::OK
    } else {
        status::BAD_ARGUMENT
    }
}

/// The index of the first item that `found` accepts, pushing `make()` first if none does.
pub(super) fn find_or_push<T>(
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
