//! Numbers and wire formats of the proxy-wasm ABI 0.2.1, as Envoy and the SDKs use them.

/// Status codes returned by host calls.
pub mod status {
    /// Success.
    pub const OK: i32 = 0;
    /// The key, header, property or buffer does not exist.
    pub const NOT_FOUND: i32 = 1;
    /// An argument is wrong: an unknown map or buffer type, a bad pointer, an unknown cluster.
    pub const BAD_ARGUMENT: i32 = 2;
    /// A gRPC call's service names no cluster the host knows.
    pub const PARSE_FAILURE: i32 = 4;
    /// Nothing to return, such as an empty queue.
    pub const EMPTY: i32 = 7;
    /// Compare-and-swap failed: the shared data changed since it was read.
    pub const CAS_MISMATCH: i32 = 8;
    /// An HTTP call failed (a reset): what `proxy_get_status` says while its end is delivered.
    pub const BROKEN_CONNECTION: i32 = 11;
    /// The host does not implement what was asked, such as continuing an upstream TCP stream.
    pub const UNIMPLEMENTED: i32 = 12;
}

/// Header map types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    /// Request headers of the current stream.
    RequestHeaders,
    /// Request trailers of the current stream.
    RequestTrailers,
    /// Response headers of the current stream.
    ResponseHeaders,
    /// Response trailers of the current stream.
    ResponseTrailers,
    /// Headers of the HTTP call response being delivered.
    HttpCallResponseHeaders,
    /// Trailers of the HTTP call response being delivered.
    HttpCallResponseTrailers,
}

impl MapType {
    /// The ABI number to a map type; gRPC metadata maps are not supported.
    pub fn from_abi(n: i32) -> Option<MapType> {
        Some(match n {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// Buffer types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferType {
    /// Request body of the current stream.
    RequestBody,
    /// Response body of the current stream.
    ResponseBody,
    /// Body of the HTTP call response being delivered.
    HttpCallResponseBody,
    /// The gRPC response message being delivered.
    GrpcReceive,
    /// The VM configuration.
    VmConfiguration,
    /// The plugin configuration.
    PluginConfiguration,
}

impl BufferType {
    /// The ABI number to a buffer type; network buffers are not supported.
    pub fn from_abi(n: i32) -> Option<BufferType> {
        Some(match n {
            0 => BufferType::RequestBody,
            1 => BufferType::ResponseBody,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcReceive,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            _ => return None,
        })
    }
}

/// Log levels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Trace.
    Trace,
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warn.
    Warn,
    /// Error.
    Error,
    /// Critical.
    Critical,
}

impl LogLevel {
    /// The ABI number to a level; out-of-range numbers count as critical.
    pub fn from_abi(n: i32) -> LogLevel {
        match n {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            _ => LogLevel::Critical,
        }
    }

    /// The ABI number of a level.
    pub fn to_abi(self) -> i32 {
        self as i32
    }
}

/// Metric kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution of recorded values.
    Histogram,
}

impl MetricKind {
    /// The ABI number to a kind.
    pub fn from_abi(n: i32) -> Option<MetricKind> {
        Some(match n {
            0 => MetricKind::Counter,
            1 => MetricKind::Gauge,
            2 => MetricKind::Histogram,
            _ => return None,
        })
    }
}

/// Header pairs as the ABI carries them: a little-endian u32 count, then a (name length,
/// value length) u32 pair per header, then each name and value followed by a NUL byte.
pub fn serialize_map(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 10 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The inverse of [`serialize_map`]; `None` if the bytes are malformed. Names that are not
/// UTF-8 are replaced lossily, as header names are ASCII in every real proxy.
pub fn deserialize_map(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let count = u32_at(0)?;
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut out = Vec::with_capacity(count.min(1024));
    for i in 0..count {
        let (klen, vlen) = (u32_at(4 + i * 8)?, u32_at(8 + i * 8)?);
        let key = bytes.get(data..data.checked_add(klen)?)?;
        data += klen + 1;
        let value = bytes.get(data..data.checked_add(vlen)?)?;
        data += vlen + 1;
        out.push((String::from_utf8_lossy(key).into_owned(), value.to_vec()));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_round_trips_including_non_utf8_values() {
        let pairs = vec![
            (":path".to_owned(), b"/".to_vec()),
            ("x-bin".to_owned(), vec![0xff, 0x00, 0xfe]),
            ("empty".to_owned(), Vec::new()),
        ];
        assert_eq!(deserialize_map(&serialize_map(&pairs)), Some(pairs));
        assert_eq!(deserialize_map(&serialize_map(&[])), Some(Vec::new()));
    }

    #[test]
    fn truncated_or_lying_maps_are_rejected() {
        let good = serialize_map(&[("a".to_owned(), b"b".to_vec())]);
        for cut in 1..good.len() - 1 {
            assert_eq!(deserialize_map(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(deserialize_map(&[0xff, 0xff, 0xff, 0xff]), None);
    }
}
