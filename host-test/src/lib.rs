//! A proxy-wasm ABI 0.2.1 host on wasmtime, and the tools built on it: run golden vectors
//! and simulated traffic through the very filter .wasm that Envoy loads, or any HTTP filter
//! through a scenario (`rollout run`).
//!
//! # When to trust it
//!
//! It behaves as Envoy 1.40 does, and a differential suite (`envoy/tests/test_differential.py`)
//! fails on any difference in what the client and the upstream get, the filter's logs and its
//! metrics. Modelled:
//! - clusters ([`VmOptions::clusters`]): a call to an undeclared one is refused; a declared one
//!   answers as [`ClusterAnswer`] says; a call's timeout fires on the virtual clock with
//!   Envoy's 504, a refused connection gets its 503, a call pending when its stream ends is
//!   cancelled; gRPC calls end with the status and Envoy's details in the message;
//! - local responses pass the filter's own response callbacks, names lowercased, with
//!   `content-length` and `content-type`; bodies arrive as from an HTTP/1 peer; a paused
//!   request is held (the body too) until resumed or answered;
//! - a trap fails the VM and [`FailurePolicy`] decides what later requests get;
//! - the log holds the filter's lines only (stdout and stderr included), and
//!   [`VmOptions::host_errors`] makes any import fail.
//!
//! Not modelled: TCP filters, HTTP/2 and HTTP/3 framing, trailers, gRPC streams beyond opening
//! them, the connection manager's limits and timeouts, routing, properties Envoy computes (only
//! [`VmOptions::properties`] exist), workers running at once, and real time. docs/harness.md
//! has the details and `rollout run`'s scenario format.

pub mod abi;
pub mod host;
pub mod testing;

pub use host::{
    CallCounts, ClientResponse, Cluster, ClusterAnswer, Exchange, ExchangeReport, FailurePolicy,
    FilterModule, GrpcCall, GrpcCallResponse, Headers, HostImport, HttpCall, HttpCallResponse,
    LocalResponse, LogEntry, Metric, StreamId, Vm, VmOptions, header_value, headers,
};
