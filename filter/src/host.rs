//! The host calls of the per-request path, made directly. The SDK's wrappers `panic!` on any
//! status they do not expect (a trap, so a dead VM, in a filter built with panic=abort), and
//! its header read copies every header into its own `String` and `Vec`; here every status is
//! an `Err` for the caller to meet with a safe default, and headers are read where the host
//! put them (benches/STEPS.md has the measurements).

use proxy_wasm::types::MapType;

/// A host status other than OK (proxy-wasm ABI 0.2.1 numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostError(pub(crate) u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;

#[link(wasm_import_module = "env")]
extern "C" {
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
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
}

fn check(status: u32) -> Result<(), HostError> {
    if status == OK {
        Ok(())
    } else {
        Err(HostError(status))
    }
}

/// Takes ownership of a buffer the host filled through `proxy_on_memory_allocate`.
#[allow(unsafe_code)]
fn take_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host got `data` from the SDK's `proxy_on_memory_allocate`, which hands out
    // the buffer of a forgotten `Vec::<u8>::with_capacity(size)`; we are its only owner now.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Every header of a map, in the host's serialised form: a count, then each name and value
/// length, then the names and values, each NUL-terminated. Checked once when read; the
/// accessors then never index out of bounds.
pub(crate) struct HeaderPairs {
    buffer: Vec<u8>,
    count: usize,
}

impl HeaderPairs {
    pub(crate) fn empty() -> HeaderPairs {
        HeaderPairs {
            buffer: Vec::new(),
            count: 0,
        }
    }

    pub(crate) fn read(map: MapType) -> Result<HeaderPairs, HostError> {
        let mut data = std::ptr::null_mut();
        let mut size = 0;
        // SAFETY: both out-pointers are live locals of the types the ABI writes.
        #[allow(unsafe_code)]
        let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
        check(status)?;
        let buffer = take_buffer(data, size);
        let count = Self::validate(&buffer).ok_or(HostError(u32::MAX))?;
        Ok(HeaderPairs { buffer, count })
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
}

fn read_u32(buffer: &[u8], at: usize) -> Option<u32> {
    let bytes = buffer.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// One header's value; `Ok(None)` if the map has no such header.
pub(crate) fn header_value(map: MapType, name: &str) -> Result<Option<Vec<u8>>, HostError> {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: `name` is live for the call; both out-pointers are live locals.
    #[allow(unsafe_code)]
    let status = unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    match status {
        OK => Ok(Some(take_buffer(data, size))),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// Sets a header, replacing the value the map has.
pub(crate) fn replace_header(map: MapType, name: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: `name` and `value` are live for the call; the host only reads them.
    #[allow(unsafe_code)]
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
pub(crate) fn add_header(map: MapType, name: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: as for `replace_header`.
    #[allow(unsafe_code)]
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
pub(crate) fn remove_header(map: MapType, name: &str) -> Result<(), HostError> {
    // SAFETY: `name` is live for the call; the host only reads it.
    #[allow(unsafe_code)]
    let status = unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) };
    check(status)
}

pub(crate) fn increment_metric(id: u32, offset: i64) -> Result<(), HostError> {
    // SAFETY: plain values only.
    #[allow(unsafe_code)]
    let status = unsafe { proxy_increment_metric(id, offset) };
    check(status)
}

pub(crate) fn record_metric(id: u32, value: u64) -> Result<(), HostError> {
    // SAFETY: plain values only.
    #[allow(unsafe_code)]
    let status = unsafe { proxy_record_metric(id, value) };
    check(status)
}

/// The host clock in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> Result<u64, HostError> {
    let mut nanos = 0u64;
    // SAFETY: the out-pointer is a live local of the type the ABI writes.
    #[allow(unsafe_code)]
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    check(status)?;
    Ok(nanos / 1_000_000)
}
