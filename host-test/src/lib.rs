//! A proxy-wasm ABI 0.2.1 host on wasmtime, and the tools built on it: run golden vectors
//! and simulated traffic through the very filter .wasm that Envoy loads.

pub mod abi;
pub mod host;
pub mod testing;

pub use host::{
    CallCounts, ClientResponse, Cluster, ClusterAnswer, Exchange, ExchangeReport, FailurePolicy,
    FilterModule, GrpcCall, GrpcCallResponse, Headers, HostImport, HttpCall, HttpCallResponse,
    LocalResponse, LogEntry, Metric, StreamId, Vm, VmOptions, header_value, headers,
};
