//! Runs every golden vector and every invalid config through the built filter .wasm in the
//! wasmtime host: the same cases the core runs natively must give the same headers here.
//! Build the filter first: `cargo build -p rollout-filter --target wasm32-wasip1 --profile wasm`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a failing check in a test should panic with its message"
)]

use std::path::PathBuf;

use host_test::testing::{exchange, filter_wasm_path, requests_metric, workspace_root};
use host_test::{FilterModule, VmOptions};
use rollout_core::vectors::{InvalidConfig, VectorFile, contract_view};

fn filter() -> FilterModule {
    let path = filter_wasm_path();
    FilterModule::from_file(&path).unwrap_or_else(|e| {
        panic!("{e:#}\nbuild the filter first: cargo build -p rollout-filter --target wasm32-wasip1 --profile wasm")
    })
}

fn vector_files() -> Vec<PathBuf> {
    let dir = workspace_root().join("testdata/vectors");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_filter_links_every_import_for_real() {
    let missing = filter().unimplemented_imports().unwrap();
    assert!(
        missing.is_empty(),
        "imports the host does not implement: {missing:?}"
    );
}

#[test]
fn every_golden_vector_passes_through_the_filter_wasm() {
    let module = filter();
    let files = vector_files();
    assert!(files.len() >= 5);
    let mut failures = Vec::new();
    let mut n_cases = 0;
    for path in &files {
        let file = VectorFile::parse(&std::fs::read(path).unwrap()).unwrap();
        let mut vm = module.start_vm(VmOptions::default()).unwrap();
        assert!(
            vm.configure(file.config.to_string().as_bytes()).unwrap(),
            "{}: refused",
            path.display()
        );
        let request_names = file.contract.request_names();
        let response_names = file.contract.response_names();
        for case in &file.cases {
            n_cases += 1;
            let where_ = format!("{} / {}", path.display(), case.description);
            let version = case.expected.decision["rollout"]["version"].as_str();
            let rollout = case.expected.decision["rollout"]["rollout"].as_str();
            let counter = version.map(|v| requests_metric(rollout.unwrap(), v));
            let before = counter.as_ref().and_then(|c| module.metric(c)).unwrap_or(0);

            let mut request = exchange(&case.request.headers, &case.request.response_headers);
            request.entropy = case.request.entropy;
            let report = vm.exchange(&request).unwrap();

            let upstream = contract_view(&report.upstream_request_headers, &request_names);
            if upstream != case.expected.request_headers {
                failures.push(format!(
                    "{where_}: upstream got {upstream:?}, expected {:?}",
                    case.expected.request_headers
                ));
            }
            let client = contract_view(&report.client_response_headers, &response_names);
            if client != case.expected.response_headers {
                failures.push(format!(
                    "{where_}: client got {client:?}, expected {:?}",
                    case.expected.response_headers
                ));
            }
            // Headers outside the contract pass through untouched.
            let others = |h: &[(String, String)]| -> Vec<(String, String)> {
                let mut o: Vec<_> = h
                    .iter()
                    .filter(|(k, _)| !request_names.contains(&k.as_str()))
                    .cloned()
                    .collect();
                o.sort();
                o
            };
            if others(&report.upstream_request_headers) != others(&case.request.headers) {
                failures.push(format!("{where_}: non-contract request headers changed"));
            }
            if let Some(counter) = &counter {
                let after = module.metric(counter).unwrap_or(0);
                if after != before + 1 {
                    failures.push(format!("{where_}: {counter} went {before} -> {after}"));
                }
            }
            if report.paused || report.local_response.is_some() {
                failures.push(format!("{where_}: the filter paused or answered locally"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(n_cases >= 40, "only {n_cases} cases ran");
}

#[test]
fn every_invalid_config_is_refused_by_the_filter_with_each_error_logged() {
    let module = filter();
    let path = workspace_root().join("testdata/invalid-configs.json");
    let cases: Vec<InvalidConfig> = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for case in &cases {
        let mut vm = module.start_vm(VmOptions::default()).unwrap();
        if vm.configure(&case.bytes()).unwrap() {
            failures.push(format!("{}: accepted", case.description));
            continue;
        }
        let logs: Vec<String> = vm.take_logs().into_iter().map(|l| l.message).collect();
        for error in &case.errors {
            if !logs.iter().any(|l| l.ends_with(error.as_str())) {
                failures.push(format!(
                    "{}: no log line for {error:?} in {logs:?}",
                    case.description
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
