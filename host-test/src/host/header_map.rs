//! Header-map imports: request and response headers and trailers of the current stream, and
//! the headers of the HTTP call response being delivered. Names are stored lowercase.

use anyhow::Result;

use super::guest::{Cx, ENV, Imports, give, give_found, read, read_str};
use super::{Headers, HostState, header_value};
use crate::abi::{self, MapType, status};

/// Registers this group's imports.
pub(super) fn add_to_linker(linker: &mut Imports<'_>) -> Result<()> {
    linker.add(
        ENV,
        "proxy_get_header_map_pairs",
        proxy_get_header_map_pairs,
    )?;
    linker.add(
        ENV,
        "proxy_set_header_map_pairs",
        proxy_set_header_map_pairs,
    )?;
    linker.add(
        ENV,
        "proxy_get_header_map_value",
        proxy_get_header_map_value,
    )?;
    linker.add(
        ENV,
        "proxy_replace_header_map_value",
        proxy_replace_header_map_value,
    )?;
    linker.add(
        ENV,
        "proxy_add_header_map_value",
        proxy_add_header_map_value,
    )?;
    linker.add(
        ENV,
        "proxy_remove_header_map_value",
        proxy_remove_header_map_value,
    )
}

fn proxy_get_header_map_pairs(
    mut cx: Cx<'_>,
    map: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> wasmtime::Result<i32> {
    let Some(map) = MapType::from_abi(map) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let bytes = cx.data_mut().header_map_bytes(map);
    give(&mut cx, &bytes, ret_ptr, ret_size)
}

fn proxy_set_header_map_pairs(mut cx: Cx<'_>, map: i32, ptr: i32, len: i32) -> i32 {
    let Some(map) = MapType::from_abi(map) else {
        return status::BAD_ARGUMENT;
    };
    let Some(pairs) = read(&cx, ptr, len).and_then(|b| abi::deserialize_map(&b)) else {
        return status::BAD_ARGUMENT;
    };
    cx.data_mut().set_header_map(map, pairs)
}

fn proxy_get_header_map_value(
    mut cx: Cx<'_>,
    map: i32,
    key_ptr: i32,
    key_len: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> wasmtime::Result<i32> {
    let Some(map) = MapType::from_abi(map) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let Some(key) = read_str(&cx, key_ptr, key_len) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let found = cx.data_mut().header(map, &key).ok_or(status::NOT_FOUND);
    give_found(&mut cx, found, ret_ptr, ret_size)
}

/// Removes every copy of the header before adding one, as Envoy does.
fn proxy_replace_header_map_value(
    cx: Cx<'_>,
    map: i32,
    key_ptr: i32,
    key_len: i32,
    val_ptr: i32,
    val_len: i32,
) -> i32 {
    put_header(cx, map, (key_ptr, key_len), (val_ptr, val_len), true)
}

/// Adds another copy of the header.
fn proxy_add_header_map_value(
    cx: Cx<'_>,
    map: i32,
    key_ptr: i32,
    key_len: i32,
    val_ptr: i32,
    val_len: i32,
) -> i32 {
    put_header(cx, map, (key_ptr, key_len), (val_ptr, val_len), false)
}

/// Decodes the arguments shared by replace and add.
fn put_header(mut cx: Cx<'_>, map: i32, key: (i32, i32), value: (i32, i32), replace: bool) -> i32 {
    let Some(map) = MapType::from_abi(map) else {
        return status::BAD_ARGUMENT;
    };
    let (Some(key), Some(value)) = (read_str(&cx, key.0, key.1), read(&cx, value.0, value.1))
    else {
        return status::BAD_ARGUMENT;
    };
    cx.data_mut().put_header(map, key, value, replace)
}

fn proxy_remove_header_map_value(mut cx: Cx<'_>, map: i32, key_ptr: i32, key_len: i32) -> i32 {
    let Some(map) = MapType::from_abi(map) else {
        return status::BAD_ARGUMENT;
    };
    let Some(key) = read_str(&cx, key_ptr, key_len) else {
        return status::BAD_ARGUMENT;
    };
    if let Some(pairs) = cx.data_mut().map_mut(map) {
        remove_all(pairs, &key);
    }
    status::OK
}

fn remove_all(map: &mut Headers, name: &str) {
    map.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
}

impl HostState {
    fn map_mut(&mut self, map: MapType) -> Option<&mut Headers> {
        let stream = match map {
            MapType::HttpCallResponseHeaders => {
                return self.call_response.as_mut().map(|r| &mut r.headers);
            }
            MapType::HttpCallResponseTrailers => return None,
            _ => self.stream_mut()?,
        };
        Some(match map {
            MapType::RequestHeaders => &mut stream.request_headers,
            MapType::RequestTrailers => &mut stream.request_trailers,
            MapType::ResponseHeaders => &mut stream.response_headers,
            MapType::ResponseTrailers => &mut stream.response_trailers,
            MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers => return None,
        })
    }

    /// The map in the ABI's wire format; an absent map is an empty one.
    fn header_map_bytes(&mut self, map: MapType) -> Vec<u8> {
        match self.map_mut(map) {
            Some(pairs) => abi::serialize_map(pairs),
            None => abi::serialize_map(&[]),
        }
    }

    fn set_header_map(&mut self, map: MapType, pairs: Headers) -> i32 {
        let pairs = pairs
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        match self.map_mut(map) {
            Some(slot) => {
                *slot = pairs;
                status::OK
            }
            None => status::NOT_FOUND,
        }
    }

    fn header(&mut self, map: MapType, key: &str) -> Option<Vec<u8>> {
        let pairs = self.map_mut(map)?;
        header_value(pairs, key).map(<[u8]>::to_vec)
    }

    fn put_header(&mut self, map: MapType, key: String, value: Vec<u8>, replace: bool) -> i32 {
        let Some(pairs) = self.map_mut(map) else {
            return status::NOT_FOUND;
        };
        if replace {
            remove_all(pairs, &key);
        }
        pairs.push((key.to_ascii_lowercase(), value));
        status::OK
    }
}
