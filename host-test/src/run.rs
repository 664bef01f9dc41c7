//! `rollout run SCENARIO.json`: any proxy-wasm filter through a scenario (its plugin
//! configuration, the clusters it may call, the upstream's answer, a list of requests), as one
//! Envoy listener would run it, printing what the client and the upstream got, what the filter
//! logged and its metrics, as JSON. The differential suite runs the same scenario through a
//! real Envoy (envoy/differential.py) and compares the two outputs field by field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use host_test::{
    Cluster, ClusterAnswer, Exchange, FailurePolicy, FilterModule, Headers, HttpCallResponse,
    LogEntry, VmOptions,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// Arguments of `rollout run`.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// The scenario (JSON): see docs/harness.md for its fields.
    scenario: PathBuf,
    /// The filter .wasm; default: the scenario's `filter`, relative to the scenario file.
    #[arg(long)]
    filter: Option<PathBuf>,
}

/// VMs Envoy 1.40 starts for a plugin with one worker thread: its own, the main thread's and
/// the worker's.
const STARTUP_VMS: usize = 3;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    #[serde(default)]
    #[allow(dead_code, reason = "read by people, not by the runner")]
    description: String,
    filter: Option<PathBuf>,
    #[serde(default)]
    plugin_config: Value,
    #[serde(default)]
    vm_config: String,
    #[serde(default)]
    failure_policy: FailurePolicy,
    #[serde(default)]
    clusters: BTreeMap<String, ClusterSpec>,
    #[serde(default)]
    upstream: Answer,
    requests: Vec<RequestSpec>,
}

/// A cluster: an HTTP answer (`status`, `headers`, `body`), or `hang`, `refuse`, or a gRPC
/// status (`grpc_status`, `grpc_message`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterSpec {
    #[serde(flatten)]
    answer: Answer,
    #[serde(default)]
    hang: bool,
    #[serde(default)]
    refuse: bool,
    grpc_status: Option<u32>,
    #[serde(default)]
    grpc_message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    #[serde(default = "ok")]
    status: u32,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
}

impl Default for Answer {
    fn default() -> Answer {
        Answer {
            status: ok(),
            headers: Vec::new(),
            body: String::new(),
        }
    }
}

fn ok() -> u32 {
    200
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    #[serde(default = "get")]
    method: String,
    #[serde(default = "slash")]
    path: String,
    #[serde(default = "example")]
    authority: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
    #[serde(default)]
    wait_ms: u64,
}

fn get() -> String {
    "GET".to_owned()
}

fn slash() -> String {
    "/".to_owned()
}

fn example() -> String {
    "example.com".to_owned()
}

impl Answer {
    /// As an HTTP/1 server sends it: `:status`, its headers, `content-length` unless given.
    fn headers(&self) -> Headers {
        let mut headers = vec![(":status".to_owned(), self.status.to_string().into_bytes())];
        headers.extend(host_test::headers(&self.headers));
        if !headers.iter().any(|(k, _)| k == "content-length") {
            let length = self.body.len().to_string().into_bytes();
            headers.push(("content-length".to_owned(), length));
        }
        headers
    }
}

impl ClusterSpec {
    fn cluster(&self, name: &str) -> Cluster {
        let answer = if self.hang {
            ClusterAnswer::Hang
        } else if self.refuse {
            ClusterAnswer::Refuse
        } else if let Some(status) = self.grpc_status {
            ClusterAnswer::Grpc {
                status,
                message: self.grpc_message.clone(),
            }
        } else {
            // The router in Envoy's async client adds its timing header to what the
            // server sent.
            let mut headers = self.answer.headers();
            headers.push(("x-envoy-upstream-service-time".to_owned(), b"0".to_vec()));
            ClusterAnswer::Respond(HttpCallResponse {
                headers,
                body: self.answer.body.as_bytes().to_vec(),
            })
        };
        Cluster::new(name, answer)
    }
}

impl RequestSpec {
    /// The request headers as Envoy's connection manager hands them to the first filter:
    /// the pseudo-headers, the client's headers, `content-length` with a body, and what the
    /// connection manager adds (`x-forwarded-proto`, `x-request-id`).
    fn headers(&self, n: usize) -> Headers {
        let mut headers: Headers = vec![
            (":authority".to_owned(), self.authority.as_bytes().to_vec()),
            (":path".to_owned(), self.path.as_bytes().to_vec()),
            (":method".to_owned(), self.method.as_bytes().to_vec()),
            (":scheme".to_owned(), b"http".to_vec()),
        ];
        headers.extend(host_test::headers(&self.headers));
        if !self.body.is_empty() {
            headers.push((
                "content-length".to_owned(),
                self.body.len().to_string().into(),
            ));
        }
        headers.push(("x-forwarded-proto".to_owned(), b"http".to_vec()));
        let id = format!("00000000-0000-4000-8000-{n:012}");
        headers.push(("x-request-id".to_owned(), id.into_bytes()));
        headers
    }
}

/// The plugin configuration's bytes: a string as it is, anything else as compact JSON.
fn config_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Null => Vec::new(),
        other => other.to_string().into_bytes(),
    }
}

/// Runs the scenario and prints its output.
pub(crate) fn run(args: &RunArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("reading {}", args.scenario.display()))?;
    let scenario: Scenario = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a scenario", args.scenario.display()))?;
    let filter = match (&args.filter, &scenario.filter) {
        (Some(path), _) => path.clone(),
        (None, Some(path)) => base_dir(&args.scenario).join(path),
        (None, None) => bail!("no filter: give --filter or the scenario's `filter`"),
    };
    let module = FilterModule::from_file(&filter)?;
    let output = execute(&module, &scenario)?;
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(ExitCode::SUCCESS)
}

fn base_dir(scenario: &Path) -> PathBuf {
    scenario.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn execute(module: &FilterModule, scenario: &Scenario) -> Result<Value> {
    let options = VmOptions {
        vm_configuration: scenario.vm_config.as_bytes().to_vec(),
        clusters: (scenario.clusters.iter())
            .map(|(name, spec)| spec.cluster(name))
            .collect(),
        failure_policy: scenario.failure_policy,
        ..VmOptions::default()
    };
    // Envoy starts the plugin in a VM of its own, then in one per thread, the main thread
    // included: with one worker, three VMs start and are configured before the first request,
    // which runs on the worker's. Their start-up is in the logs three times over.
    let mut logs: Vec<LogEntry> = Vec::new();
    let mut vms = Vec::new();
    for _ in 0..STARTUP_VMS {
        let mut vm = module.start_vm(options.clone())?;
        if !vm.configure(&config_bytes(&scenario.plugin_config))? {
            bail!("the filter refused its plugin configuration (Envoy would refuse the listener)");
        }
        logs.append(&mut vm.take_logs());
        vms.push(vm);
    }
    let Some(mut vm) = vms.pop() else {
        bail!("no VM started");
    };
    let mut requests = Vec::new();
    for (n, spec) in scenario.requests.iter().enumerate() {
        vm.advance(Duration::from_millis(spec.wait_ms))?;
        logs.append(&mut vm.take_logs());
        let exchange = Exchange {
            request_headers: spec.headers(n + 1),
            request_body: spec.body.as_bytes().to_vec(),
            response_headers: scenario.upstream.headers(),
            response_body: scenario.upstream.body.as_bytes().to_vec(),
            entropy: None,
        };
        let stream = vm.begin(&exchange)?;
        // Time passes while Envoy holds the request: calls it waits for reach their timeout.
        while vm.is_held(stream)
            && let Some(wait) = vm.next_call_timeout()
        {
            vm.advance(wait)?;
        }
        let mut report = vm.finish(stream, &exchange)?;
        logs.append(&mut report.logs);
        let upstream = report.reached_upstream.then(|| {
            upstream_view(
                &report.upstream_request_headers,
                &report.upstream_request_body,
            )
        });
        requests.push(json!({ "client": report.client, "upstream": upstream }));
    }
    logs.append(&mut vm.take_logs());
    let metrics: BTreeMap<String, i64> = module
        .metrics()
        .into_iter()
        .map(|m| (m.name, m.value))
        .collect();
    Ok(json!({ "requests": requests, "logs": logs, "metrics": metrics }))
}

/// The request as the upstream's HTTP/1 server sees it: method and path apart, `:authority`
/// as `host`, no other pseudo-headers.
fn upstream_view(headers: &[(String, String)], body: &str) -> Value {
    let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in headers {
        if k == ":authority" {
            out.push(("host".to_owned(), v.clone()));
        } else if !k.starts_with(':') {
            out.push((k.clone(), v.clone()));
        }
    }
    json!({
        "method": find(":method"),
        "path": find(":path"),
        "headers": out,
        "body": body,
    })
}
