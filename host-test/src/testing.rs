//! Helpers shared by the harness's own tests and the CLI: where the built filter is, and
//! how a golden-vector case becomes an exchange.

use std::path::PathBuf;

use crate::host::{Exchange, Headers};

/// Where the release build of the filter lands, relative to the workspace root.
pub const FILTER_WASM: &str = "target/wasm32-wasip1/wasm/rollout_filter.wasm";

/// The filter .wasm to test: `$ROLLOUT_FILTER_WASM`, else the workspace's release build.
pub fn filter_wasm_path() -> PathBuf {
    match std::env::var_os("ROLLOUT_FILTER_WASM") {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join(FILTER_WASM),
    }
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// A request given as string pairs, as vectors and the CLI write them.
pub fn exchange(request: &[(String, String)], response: &[(String, String)]) -> Exchange {
    let to_headers = |pairs: &[(String, String)]| -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect()
    };
    Exchange {
        request_headers: to_headers(request),
        response_headers: to_headers(response),
        ..Exchange::default()
    }
}

/// A user's `GET path` (key in `x-user-id`) answered `200` by the upstream.
pub fn user_request(path: &str, user: &str) -> Exchange {
    exchange(
        &[
            (":method".into(), "GET".into()),
            (":path".into(), path.into()),
            ("x-user-id".into(), user.into()),
        ],
        &[(":status".into(), "200".into())],
    )
}

/// The first value of a header in a report's header list.
pub fn header<'r>(headers: &'r [(String, String)], name: &str) -> Option<&'r str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The filter's request counter for a version, as the filter names it (labels embedded for
/// Envoy's `stats_tags`).
pub fn requests_metric(rollout: &str, version: &str) -> String {
    format!("rollout_requests_total.rollout=.={rollout};.;.version=.={version};.;")
}

/// The filter's response counter for a version and status class (`2xx`, ..., `other`).
pub fn responses_metric(rollout: &str, version: &str, class: &str) -> String {
    format!(
        "rollout_responses_total.rollout=.={rollout};.;.version=.={version};.;.class=.={class};.;"
    )
}
