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

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use host_test::testing::{exchange, filter_wasm_path, requests_metric, workspace_root};
use host_test::{FilterModule, Vm, VmOptions};
use rollout_core::vectors::{Case, InvalidConfig, VectorFile, contract_view};
use rollout_core::{Config, Latch, TripReason};

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

/// How long a VM's clock runs between staging a case and the case itself: the filter reads
/// trips from shared data on its ticks, and its tick period is well under this.
const SETTLE: Duration = Duration::from_millis(250);

/// What a case needs of its host beyond the request: its time (Unix ms) and its tripped
/// versions. Cases that need the same run on one VM.
type Staging = (Option<u64>, Vec<String>);

/// Writes the guard latches a staging needs into the module's shared data, where the filter
/// learns trips, and voids those of every other rollout of the config (a latch outlives the
/// VM that read it).
fn stage_trips(
    module: &FilterModule,
    config: &Config,
    tripped: &[String],
    at_ms: u64,
    where_: &str,
) {
    let rollouts: BTreeSet<&str> = config.versions().map(|(rollout, _)| rollout).collect();
    for rollout in rollouts {
        module.set_shared_data(&Latch::key(rollout), b"");
    }
    for rv in tripped {
        let (rollout, version) = rv
            .split_once('/')
            .unwrap_or_else(|| panic!("{where_}: tripped {rv:?} is not rollout/version"));
        let revision = config
            .revision(rollout)
            .unwrap_or_else(|| panic!("{where_}: tripped {rv:?}: no rollout {rollout:?}"));
        let latch = Latch {
            revision,
            version: version.to_owned(),
            reason: TripReason::Errors,
            // As the core's runner does: tripped at the case's time.
            at_ms,
        };
        module.set_shared_data(&Latch::key(rollout), latch.encode().as_bytes());
    }
}

/// A configured VM whose clock reads the staging's time (or the harness's default start, for
/// a case without one) and which has read the staging's trips.
fn staged_vm(module: &FilterModule, file: &VectorFile, config: &Config, staging: &Staging) -> Vm {
    let (now_ms, tripped) = staging;
    let settle_ns = SETTLE.as_nanos() as u64;
    let mut options = VmOptions::default();
    if let Some(now_ms) = now_ms {
        options.start_time_ns = now_ms * 1_000_000 - settle_ns;
    }
    // Before the VM starts: it may read latches as soon as it is configured.
    let at_ms = now_ms.unwrap_or(u64::MAX);
    stage_trips(module, config, tripped, at_ms, &file.description);
    let mut vm = module.start_vm(options).unwrap();
    assert!(
        vm.configure(file.config.to_string().as_bytes()).unwrap(),
        "{}: refused",
        file.description
    );
    vm.advance(SETTLE).unwrap();
    vm
}

#[test]
fn every_golden_vector_passes_through_the_filter_wasm() {
    let module = filter();
    let files = vector_files();
    assert!(files.len() >= 5);
    let mut failures = Vec::new();
    let mut n_cases = 0;
    let mut n_timed = 0;
    let mut n_tripped = 0;
    for path in &files {
        let file = VectorFile::parse(&std::fs::read(path).unwrap()).unwrap();
        let config = file.parse_config().unwrap();
        let request_names = file.contract.request_names();
        let response_names = file.contract.response_names();
        // The virtual clock only moves forward: one fresh VM per distinct staging.
        let mut groups: BTreeMap<Staging, Vec<&Case>> = BTreeMap::new();
        for case in &file.cases {
            let now_ms = case.request.now.as_ref().map(|text| {
                case.request
                    .now_ms()
                    .unwrap_or_else(|| panic!("{}: bad now {text:?}", case.description))
            });
            let mut tripped = case.request.tripped.clone();
            tripped.sort();
            groups.entry((now_ms, tripped)).or_default().push(case);
        }
        for (staging, cases) in &groups {
            let mut vm = staged_vm(&module, &file, &config, staging);
            for case in cases {
                n_cases += 1;
                n_timed += usize::from(staging.0.is_some());
                n_tripped += usize::from(!staging.1.is_empty());
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
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(n_cases >= 40, "only {n_cases} cases ran");
    // The staging above is what these cases test: they must be there to run.
    assert!(
        n_timed >= 10 && n_tripped >= 1,
        "only {n_timed} timed and {n_tripped} tripped cases ran"
    );
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
