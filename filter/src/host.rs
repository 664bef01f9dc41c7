//! The proxy-wasm ABI 0.2.1 host calls the filter makes, made directly: every status other
//! than OK is an `Err` for the caller to meet with a safe default (an SDK wrapper that panics
//! on an unexpected status would trap, and kill the VM, in a filter built with panic=abort),
//! and headers are read where the host put them, not copied.

// This module is the filter's boundary to the host: every host call and every pointer the host
// hands back is here, each with its SAFETY comment (the exported callbacks are in `exports`).
#![allow(
    unsafe_code,
    reason = "the host calls of the proxy-wasm ABI are foreign functions"
)]

/// Header maps (the ABI's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum HeaderMap {
    Request = 0,
    Response = 2,
    CallResponse = 6,
}

/// Buffers (the ABI's numbering).
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub(crate) enum BufferType {
    CallResponseBody = 4,
    PluginConfiguration = 7,
}

/// Metric kinds (the ABI's numbering).
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub(crate) enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// Log levels (the ABI's numbering).
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub(crate) enum LogLevel {
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// A host status other than OK (proxy-wasm ABI 0.2.1 numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostError(pub(crate) u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;

/// The ABI's status for a call the host does not implement.
#[cfg(not(target_arch = "wasm32"))]
const UNIMPLEMENTED: u32 = 12;

/// Declares the host calls once. In the wasm build they are the host's imports; natively
/// (the unit tests of the pure parts) each answers `UNIMPLEMENTED`, so code that reaches the
/// host meets an error status, as it must be ready to anyway.
macro_rules! host_imports {
    ($(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> u32;)*) => {
        #[cfg(target_arch = "wasm32")]
        #[link(wasm_import_module = "env")]
        unsafe extern "C" {
            $(fn $name($($arg: $ty),*) -> u32;)*
        }
        $(
            #[cfg(not(target_arch = "wasm32"))]
            #[allow(clippy::too_many_arguments, reason = "the signatures mirror the ABI's imports")]
            unsafe fn $name($($arg: $ty),*) -> u32 {
                let _ = ($($arg),*);
                UNIMPLEMENTED
            }
        )*
    };
}

host_imports! {
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_get_metric(id: u32, value: *mut u64) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, size: usize, id: *mut u32) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
}

fn check(status: u32) -> Result<(), HostError> {
    if status == OK {
        Ok(())
    } else {
        Err(HostError(status))
    }
}

/// Hands the host a buffer of `size` bytes to fill with data it returns; [`take_buffer`]
/// takes it back.
#[unsafe(no_mangle)]
#[allow(unreachable_pub, reason = "an export of the ABI")]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer = std::mem::ManuallyDrop::new(vec![0u8; size]);
    buffer.as_mut_ptr()
}

/// Takes ownership of a buffer the host filled through `proxy_on_memory_allocate`.
///
/// # Safety
/// `data` is null, or the host got it from `proxy_on_memory_allocate(size)` with this same
/// `size` and nobody has taken it back yet.
unsafe fn take_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: per the contract above, `data` is the buffer of a `vec![0u8; size]` (capacity
    // exactly `size`) that was never dropped; we own it now.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// What a call that returns data answered: the data, `None` for NotFound, or the error.
///
/// # Safety
/// As for [`take_buffer`], when `status` is OK: `data` and `size` are what the host wrote.
unsafe fn returned(status: u32, data: *mut u8, size: usize) -> Result<Option<Vec<u8>>, HostError> {
    match status {
        // SAFETY: the caller's contract.
        OK => Ok(Some(unsafe { take_buffer(data, size) })),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// Every header of a map, in the host's serialised form: a count, then each name and value
/// length, then the names and values, each NUL-terminated. Checked once when read; the
/// accessors then never index out of bounds. The default is a map with no headers.
#[derive(Default)]
pub(crate) struct HeaderPairs {
    buffer: Vec<u8>,
    count: usize,
}

impl HeaderPairs {
    pub(crate) fn read(map: HeaderMap) -> Result<HeaderPairs, HostError> {
        let mut data = std::ptr::null_mut();
        let mut size = 0;
        // SAFETY: both out-pointers are live locals of the types the ABI writes.
        let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
        check(status)?;
        // SAFETY: the host wrote `data` and `size` for a call that answered OK.
        let buffer = unsafe { take_buffer(data, size) };
        Self::decode(buffer).ok_or(HostError(u32::MAX))
    }

    /// Checks a buffer in the host's serialised form; `None` if the lengths do not fit it.
    pub(crate) fn decode(buffer: Vec<u8>) -> Option<HeaderPairs> {
        let count = Self::validate(&buffer)?;
        Some(HeaderPairs { buffer, count })
    }

    /// The number of pairs, if the lengths fit the buffer (an empty buffer is no headers).
    fn validate(buffer: &[u8]) -> Option<usize> {
        if buffer.is_empty() {
            return Some(0);
        }
        let count = read_u32(buffer, 0)? as usize;
        let mut at = 4usize.checked_add(count.checked_mul(8)?)?;
        for i in 0..count {
            let name = read_u32(buffer, 4 + i * 8)? as usize;
            let value = read_u32(buffer, 8 + i * 8)? as usize;
            at = at.checked_add(name)?.checked_add(value)?.checked_add(2)?;
        }
        (at <= buffer.len()).then_some(count)
    }

    /// (name, value) pairs in the host's order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut at = 4 + self.count * 8;
        (0..self.count).filter_map(move |i| {
            let name_len = read_u32(&self.buffer, 4 + i * 8)? as usize;
            let value_len = read_u32(&self.buffer, 8 + i * 8)? as usize;
            let name = self.buffer.get(at..at + name_len)?;
            at += name_len + 1;
            let value = self.buffer.get(at..at + value_len)?;
            at += value_len + 1;
            Some((name, value))
        })
    }
}

impl rollout_core::RequestFacts for HeaderPairs {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    fn count(&self, name: &str) -> usize {
        self.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .count()
    }

    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
            .collect()
    }
}

/// A header map of the current stream, written through host calls for the core's header
/// contract. A failed write is dropped: the contract's other headers still go out, and a
/// request is never failed for it.
pub(crate) struct StreamHeaders(pub(crate) HeaderMap);

impl rollout_core::HeaderMapMut for StreamHeaders {
    fn replace(&mut self, name: &str, value: &str) {
        let _ = replace_header(self.0, name, value);
    }

    fn add(&mut self, name: &str, value: &str) {
        let _ = add_header(self.0, name, value);
    }

    fn remove(&mut self, name: &str) {
        let _ = remove_header(self.0, name);
    }
}

fn read_u32(buffer: &[u8], at: usize) -> Option<u32> {
    let bytes = buffer.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// One header's value; `Ok(None)` if the map has no such header.
pub(crate) fn header_value(map: HeaderMap, name: &str) -> Result<Option<Vec<u8>>, HostError> {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: `name` is live for the call; both out-pointers are live locals.
    let status = unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    // SAFETY: the host wrote `data` and `size` for this call.
    unsafe { returned(status, data, size) }
}

/// Sets a header, replacing the value the map has.
pub(crate) fn replace_header(map: HeaderMap, name: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: `name` and `value` are live for the call; the host only reads them.
    let status = unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    check(status)
}

/// Adds a value to a header, keeping the values the map has.
pub(crate) fn add_header(map: HeaderMap, name: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: as for `replace_header`.
    let status = unsafe {
        proxy_add_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    check(status)
}

/// Removes every value of a header.
pub(crate) fn remove_header(map: HeaderMap, name: &str) -> Result<(), HostError> {
    // SAFETY: `name` is live for the call; the host only reads it.
    let status = unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) };
    check(status)
}

pub(crate) fn increment_metric(id: u32, offset: i64) -> Result<(), HostError> {
    // SAFETY: plain values only.
    let status = unsafe { proxy_increment_metric(id, offset) };
    check(status)
}

pub(crate) fn record_metric(id: u32, value: u64) -> Result<(), HostError> {
    // SAFETY: plain values only.
    let status = unsafe { proxy_record_metric(id, value) };
    check(status)
}

/// A counter's or gauge's value, as the host aggregates it (across every worker in Envoy).
pub(crate) fn get_metric(id: u32) -> Result<u64, HostError> {
    let mut value = 0u64;
    // SAFETY: the out-pointer is a live local of the type the ABI writes.
    let status = unsafe { proxy_get_metric(id, &mut value) };
    check(status)?;
    Ok(value)
}

/// The host clock in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> Result<u64, HostError> {
    let mut nanos = 0u64;
    // SAFETY: the out-pointer is a live local of the type the ABI writes.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    check(status)?;
    Ok(nanos / 1_000_000)
}

/// Writes a line to the host's log.
pub(crate) fn log(level: LogLevel, message: &str) -> Result<(), HostError> {
    // SAFETY: `message` is live for the call; the host only reads it.
    let status = unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
    check(status)
}

/// Up to `max` bytes of a buffer from `start`; empty if the host has no such buffer.
pub(crate) fn buffer(kind: BufferType, start: usize, max: usize) -> Result<Vec<u8>, HostError> {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: both out-pointers are live locals of the types the ABI writes.
    let status = unsafe { proxy_get_buffer_bytes(kind as u32, start, max, &mut data, &mut size) };
    // SAFETY: the host wrote `data` and `size` for this call.
    let data = unsafe { returned(status, data, size) }?;
    Ok(data.unwrap_or_default())
}

/// Defines a metric (or finds the one of that name) and returns its id.
pub(crate) fn define_metric(kind: MetricType, name: &str) -> Result<u32, HostError> {
    let mut id = 0;
    // SAFETY: `name` is live for the call; the out-pointer is a live local.
    let status = unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) };
    check(status)?;
    Ok(id)
}

/// Asks for `proxy_on_tick` every `period_ms` milliseconds.
pub(crate) fn set_tick_period_ms(period_ms: u32) -> Result<(), HostError> {
    // SAFETY: a plain value only.
    let status = unsafe { proxy_set_tick_period_milliseconds(period_ms) };
    check(status)
}

/// Makes the following calls act on the stream `context_id` (from a root's callback).
pub(crate) fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: a plain value only.
    let status = unsafe { proxy_set_effective_context(context_id) };
    check(status)
}

/// Lets a paused request go on (to the next filter and the router).
pub(crate) fn continue_request() -> Result<(), HostError> {
    // SAFETY: a plain value only; 0 is the request stream in the ABI's numbering.
    let status = unsafe { proxy_continue_stream(0) };
    check(status)
}

/// Eight random bytes from WASI `random_get`; zeros if the host has none, which still gives a
/// valid (if not random) choice.
pub(crate) fn random_u64() -> u64 {
    #[cfg_attr(
        not(target_arch = "wasm32"),
        expect(unused_mut, reason = "only the host writes it")
    )]
    let mut bytes = [0u8; 8];
    #[cfg(target_arch = "wasm32")]
    {
        #[link(wasm_import_module = "wasi_snapshot_preview1")]
        unsafe extern "C" {
            fn random_get(buf: *mut u8, len: usize) -> u16;
        }
        // SAFETY: `bytes` is a live, writable buffer of exactly the length passed.
        unsafe {
            random_get(bytes.as_mut_ptr(), bytes.len());
        }
    }
    u64::from_le_bytes(bytes)
}

/// The host's serialised form of header pairs (see [`HeaderPairs`]).
fn serialize_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let text: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + text);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len(k.len()));
        out.extend_from_slice(&len(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Sends a bodiless HTTP request to a cluster; the answer comes to `proxy_on_http_call_response`
/// with the returned token.
pub(crate) fn http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    timeout_ms: u32,
) -> Result<u32, HostError> {
    let headers = serialize_pairs(headers);
    let trailers = serialize_pairs(&[]);
    let mut token = 0;
    // SAFETY: every buffer is live for the call and only read; the out-pointer is a local.
    let status = unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            std::ptr::null(),
            0,
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    };
    check(status)?;
    Ok(token)
}

/// A shared-data value and its CAS; `(None, 0)` if the key has none.
pub(crate) fn shared_data(key: &str) -> Result<(Option<Vec<u8>>, u32), HostError> {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    let mut cas = 0;
    // SAFETY: `key` is live for the call; the out-pointers are live locals.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    // SAFETY: the host wrote `data` and `size` for this call.
    let value = unsafe { returned(status, data, size) }?;
    Ok(match value {
        Some(value) => (Some(value), cas),
        None => (None, 0),
    })
}

/// Sets a shared-data value; with a non-zero `cas`, only if the value is still that version.
pub(crate) fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
    // SAFETY: `key` and `value` are live for the call; the host only reads them.
    let status =
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
    check(status)
}

#[cfg(test)]
mod tests {
    use super::{HeaderPairs, serialize_pairs};
    use rollout_core::RequestFacts;

    fn pairs(h: &HeaderPairs) -> Vec<(Vec<u8>, Vec<u8>)> {
        h.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn header_pairs_round_trip_the_hosts_wire_format() {
        let wire = serialize_pairs(&[(":path", "/a"), ("x-user-id", "u-1"), ("X-User-Id", "u-2")]);
        let h = HeaderPairs::decode(wire).unwrap();
        assert_eq!(
            pairs(&h),
            [
                (b":path".to_vec(), b"/a".to_vec()),
                (b"x-user-id".to_vec(), b"u-1".to_vec()),
                (b"X-User-Id".to_vec(), b"u-2".to_vec()),
            ]
        );
        assert_eq!(h.header("x-user-id"), Some(&b"u-1"[..]));
        assert_eq!(h.count("x-user-id"), 2);
        assert_eq!(h.count("cookie"), 0);
        assert_eq!(pairs(&HeaderPairs::decode(Vec::new()).unwrap()), []);
    }

    #[test]
    fn header_pairs_refuse_lengths_that_do_not_fit() {
        let wire = serialize_pairs(&[("a", "1"), ("bb", "22")]);
        // Every truncation is refused, never read past its end.
        for cut in 1..wire.len() {
            assert!(
                HeaderPairs::decode(wire[..cut].to_vec()).is_none(),
                "cut at {cut}"
            );
        }
        // A count far larger than the buffer, and lengths that overflow when added.
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        assert!(HeaderPairs::decode(huge).is_none());
        let mut overflow = 1u32.to_le_bytes().to_vec();
        overflow.extend_from_slice(&u32::MAX.to_le_bytes());
        overflow.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderPairs::decode(overflow).is_none());
    }
}
