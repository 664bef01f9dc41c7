//! The filter .wasm through the harness under chaos (the `harness_chaos` fuzz target in
//! fuzz/harness and `tests/harness_chaos.rs` run this module): a plugin configuration (a vector's or
//! example's config, a live source whose cluster answers, hangs, refuses, is answered by the
//! input or does not exist, or a config with a few bytes changed), some of the host's imports
//! failing with arbitrary statuses, one or two VMs (as Envoy workers sharing metrics and
//! shared data, each with its own failing imports), then operations in any order: exchanges,
//! streams begun and finished later, the clock moved (ticks and call timeouts), ticks,
//! answers to pending calls, queue wake-ups, reconfigurations and a VM replaced by a fresh one
//! with other failing imports. The check: the filter never traps (no report carries a trap, no VM
//! fails, no harness error is a trap); a trap fails with its message.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use host_test::testing::{filter_wasm_path, workspace_root};
use host_test::{
    Cluster, ClusterAnswer, Exchange, FilterModule, Headers, HttpCallResponse, StreamId, Vm,
    VmOptions,
};
use serde_json::{Value, json};

/// The cluster every live plugin configuration polls.
const SOURCE_CLUSTER: &str = "rollout-config";
/// Bounds that keep one input's run short: operations, headers, body bytes, milliseconds per
/// clock move (a 10 ms tick period makes 2,000 ticks of that).
const MAX_OPS: usize = 48;
const MAX_HEADERS: usize = 16;
const MAX_BODY: usize = 256;
const MAX_ADVANCE_MS: u64 = 20_000;

/// What every input shares, loaded once: the compiled filter and the material of inputs.
struct World {
    module: FilterModule,
    /// The host's imports an input may make fail. `proc_exit` is left out: an injected one
    /// traps by the harness's design (it returns nothing), whatever the filter does.
    imports: Vec<&'static str>,
    /// Every golden vector's config and every example, as JSON text.
    configs: Vec<String>,
    /// Every request header of every vector case, and the hosts and paths the configs match.
    pairs: Vec<(String, Vec<u8>)>,
    /// The header names the configs read (user keys, rule attributes), `cookie` among them.
    names: Vec<String>,
}

static WORLD: OnceLock<World> = OnceLock::new();

fn world() -> &'static World {
    WORLD.get_or_init(|| {
        let path = filter_wasm_path();
        let module = FilterModule::from_file(&path).unwrap_or_else(|e| {
            panic!("{e:#}\nbuild the filter first: cargo build --profile wasm -p rollout-filter --target wasm32-wasip1")
        });
        let imports = module
            .host_imports()
            .unwrap_or_else(|e| panic!("{e:#}"))
            .into_iter()
            .map(|i| i.name)
            .filter(|n| *n != "proc_exit")
            .collect();
        let root = workspace_root();
        let mut configs = Vec::new();
        let mut pairs = Vec::new();
        for file in json_files(&root.join("testdata/vectors")) {
            let vector: Value = read_json(&file);
            configs.push(vector["config"].to_string());
            for case in vector["cases"].as_array().into_iter().flatten() {
                for pair in case["request"]["headers"].as_array().into_iter().flatten() {
                    if let (Some(k), Some(v)) = (pair[0].as_str(), pair[1].as_str()) {
                        pairs.push((k.to_ascii_lowercase(), v.as_bytes().to_vec()));
                    }
                }
            }
        }
        for file in json_files(&root.join("examples")) {
            configs.push(read_json(&file).to_string());
        }
        let mut names = vec!["cookie".to_owned()];
        for config in &configs {
            let value: Value = serde_json::from_str(config).unwrap_or_default();
            collect(&value, "", &mut names, &mut pairs);
        }
        names.sort();
        names.dedup();
        pairs.sort();
        pairs.dedup();
        World {
            module,
            imports,
            configs,
            pairs,
            names,
        }
    })
}

fn json_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Header names a config reads (`header:NAME` anywhere) and the hosts and path prefixes it
/// matches, as request headers.
fn collect(value: &Value, key: &str, names: &mut Vec<String>, pairs: &mut Vec<(String, Vec<u8>)>) {
    match value {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("header:") {
                names.push(name.to_ascii_lowercase());
            }
            match key {
                "path_prefix" => pairs.push((":path".to_owned(), s.as_bytes().to_vec())),
                "hosts" => pairs.push((":authority".to_owned(), s.as_bytes().to_vec())),
                _ => {}
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect(v, key, names, pairs)),
        Value::Object(map) => map.iter().for_each(|(k, v)| collect(v, k, names, pairs)),
        _ => {}
    }
}

fn pick<T>(items: &[T], index: impl Into<usize>) -> Option<&T> {
    let len = items.len();
    (len > 0).then(|| &items[index.into() % len])
}

/// One run: the plugin configuration, the failing imports, the VMs and the operations.
#[derive(Debug, Arbitrary)]
pub struct Input {
    plugin: Plugin,
    /// Imports to fail, by index into the host's imports, and the status each answers.
    errors: Vec<(u8, Status)>,
    /// A second VM of the same module, as a second Envoy worker.
    two_vms: bool,
    /// The second VM's failing imports, if not the first's: workers that fail differently
    /// still share metrics and shared data (a live source's lease and published config).
    second_errors: Option<Vec<(u8, Status)>>,
    ops: Vec<Op>,
}

#[derive(Debug, Clone, Arbitrary)]
enum Plugin {
    /// A vector's or example's config.
    Static(u8),
    /// A live source, with one of the configs as fallback.
    Live {
        fallback: u8,
        source: Source,
        poll_ms: u16,
        timeout_ms: u16,
        long_poll_s: u8,
        override_keys: bool,
    },
    /// A config with bytes overwritten: (position, byte).
    Mutated { base: u8, edits: Vec<(u16, u8)> },
}

/// How the live source's cluster answers.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Source {
    /// 200 with one of the configs and an ETag, at once.
    Answers(u8),
    /// Never: every call ends at its timeout.
    Hangs,
    /// Connection refused, at once.
    Refuses,
    /// The input's `Op::Answer`s, or the timeout.
    Test,
    /// The cluster does not exist: the host refuses the call.
    Missing,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Status {
    NotFound,
    BadArgument,
    ParseFailure,
    Empty,
    CasMismatch,
    InternalFailure,
    BrokenConnection,
    Unimplemented,
    Other(i32),
}

impl Status {
    /// The status the import answers with; never 0 (Ok): an import that answers Ok without
    /// doing its work is a broken host, not a host error.
    fn code(self) -> i32 {
        match self {
            Status::NotFound => 1,
            Status::BadArgument => 2,
            Status::ParseFailure => 4,
            Status::Empty => 7,
            Status::CasMismatch => 8,
            Status::InternalFailure => 10,
            Status::BrokenConnection => 11,
            Status::Unimplemented => 12,
            Status::Other(0) => 3,
            Status::Other(n) => n,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    Exchange {
        second: bool,
        request: Request,
        response: Response,
    },
    /// A stream left open (paused or not) until a `Finish`.
    Begin {
        second: bool,
        request: Request,
    },
    Finish {
        second: bool,
        which: u8,
        response: Response,
    },
    /// Both VMs when `second` is `None`, as Envoy's clock moves for every worker.
    Advance {
        second: Option<bool>,
        ms: u16,
    },
    Tick {
        second: bool,
    },
    Answer {
        second: bool,
        which: u8,
        reply: Reply,
    },
    QueueReady {
        second: bool,
        queue: u8,
    },
    Configure {
        second: bool,
        plugin: Plugin,
    },
    /// A fresh VM replaces one (its open streams are dropped), with other failing imports,
    /// configured as the one it replaces was last, at the same point of the clock.
    Restart {
        second: bool,
        errors: Vec<(u8, Status)>,
    },
}

#[derive(Debug, Arbitrary)]
struct Request {
    /// `:method`, `:path` and `:authority` first, from what the configs match.
    pseudo: Option<(u8, u8)>,
    headers: Vec<Header>,
    body: Vec<u8>,
    entropy: Option<u64>,
}

#[derive(Debug, Arbitrary)]
enum Header {
    /// A header of a vector's request, or a host or path a config matches.
    Known(u16),
    /// A name a config reads, with any value.
    Named(u8, Vec<u8>),
    Raw(String, Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// An answer to a pending HTTP call.
#[derive(Debug, Arbitrary)]
enum Reply {
    /// 200 with one of the configs and an ETag.
    Config(u8, u8),
    NotModified(u8),
    /// Any status and body.
    Other(u16, Vec<u8>),
    /// A reset: no headers.
    Reset,
}

impl World {
    /// The imports to fail, by name.
    fn host_errors(&self, errors: &[(u8, Status)]) -> HashMap<String, i32> {
        let mut out = HashMap::new();
        for (import, status) in errors {
            if let Some(name) = pick(&self.imports, *import) {
                out.insert((*name).to_owned(), status.code());
            }
        }
        out
    }

    fn plugin(&self, plugin: &Plugin) -> (Vec<u8>, Vec<Cluster>) {
        let config = |i: u8| pick(&self.configs, i).cloned().unwrap_or_default();
        match plugin {
            Plugin::Static(i) => (config(*i).into_bytes(), Vec::new()),
            Plugin::Mutated { base, edits } => {
                let mut bytes = config(*base).into_bytes();
                for (at, byte) in edits.iter().take(8) {
                    let len = bytes.len();
                    if len > 0 {
                        bytes[usize::from(*at) % len] = *byte;
                    }
                }
                (bytes, Vec::new())
            }
            Plugin::Live {
                fallback,
                source,
                poll_ms,
                timeout_ms,
                long_poll_s,
                override_keys,
            } => {
                let fallback: Value = serde_json::from_str(&config(*fallback)).unwrap_or_default();
                let mut live = json!({
                    "config_source": {
                        "cluster": SOURCE_CLUSTER,
                        "path": "/rollout.json",
                        "authority": "config.local",
                        "poll_interval_ms": 10 + u64::from(*poll_ms) % 2000,
                        "timeout_ms": 10 + u64::from(*timeout_ms) % 3000,
                        "long_poll_s": u64::from(*long_poll_s) % 40,
                    },
                    "fallback": fallback,
                });
                if *override_keys {
                    live["override_keys"] = json!({"k1": "plugin-secret-0123456789abcdef0123"});
                }
                let answer = match source {
                    Source::Answers(i) => Some(ClusterAnswer::Respond(self.config_response(*i, 0))),
                    Source::Hangs => Some(ClusterAnswer::Hang),
                    Source::Refuses => Some(ClusterAnswer::Refuse),
                    Source::Test => Some(ClusterAnswer::Test),
                    Source::Missing => None,
                };
                let clusters = answer
                    .map(|a| Cluster::new(SOURCE_CLUSTER, a))
                    .into_iter()
                    .collect();
                (live.to_string().into_bytes(), clusters)
            }
        }
    }

    fn config_response(&self, config: u8, etag: u8) -> HttpCallResponse {
        let body = pick(&self.configs, config).cloned().unwrap_or_default();
        HttpCallResponse {
            headers: host_test::headers(&[
                (":status", "200"),
                ("etag", format!("\"e{etag}\"").as_str()),
            ]),
            body: body.into_bytes(),
        }
    }

    fn request(&self, request: &Request) -> Exchange {
        let mut headers: Headers = Vec::new();
        if let Some((path, host)) = request.pseudo {
            let of = |name: &str, i: u8| {
                let values: Vec<_> = self.pairs.iter().filter(|(k, _)| k == name).collect();
                pick(&values, i)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| b"/".to_vec())
            };
            headers.push((":method".to_owned(), b"GET".to_vec()));
            headers.push((":path".to_owned(), of(":path", path)));
            headers.push((":authority".to_owned(), of(":authority", host)));
        }
        for header in request.headers.iter().take(MAX_HEADERS) {
            let pair = match header {
                Header::Known(i) => pick(&self.pairs, *i).cloned(),
                Header::Named(i, value) => {
                    pick(&self.names, *i).map(|n| (n.clone(), value.clone()))
                }
                Header::Raw(name, value) => Some((name.to_ascii_lowercase(), value.clone())),
            };
            headers.extend(pair);
        }
        Exchange {
            request_headers: headers,
            request_body: request.body.iter().copied().take(MAX_BODY).collect(),
            entropy: request.entropy,
            ..Exchange::default()
        }
    }
}

fn response(exchange: &mut Exchange, response: &Response) {
    let status = match response.status % 12 {
        0 => 200,
        1 => 204,
        2 => 304,
        3 => 404,
        4 => 429,
        5 => 500,
        6 => 502,
        7 => 503,
        8 => 504,
        _ => response.status,
    };
    exchange.response_headers = vec![(":status".to_owned(), status.to_string().into_bytes())];
    exchange.response_body = response.body.iter().copied().take(MAX_BODY).collect();
}

/// A harness error is fine unless it is the filter's trap (start-up, configuration, a reload).
fn check(result: anyhow::Result<()>, during: &str) {
    if let Err(e) = result {
        let message = format!("{e:#}");
        assert!(
            !message.contains("trapped"),
            "the filter trapped during {during}: {message}"
        );
    }
}

/// One VM, the streams it has open, the plugin configuration it was last given, and how far
/// its clock has moved.
struct Worker {
    vm: Vm,
    open: Vec<(StreamId, Exchange)>,
    plugin: Vec<u8>,
    elapsed: Duration,
}

fn check_vm(worker: &Worker, during: &str) {
    if let Some(trap) = worker.vm.failure() {
        panic!("the filter trapped during {during}: {trap}");
    }
}

impl Input {
    /// An input with `ops` operations drawn from `u` (fewer if its bytes run out): random bytes
    /// given to `Input::arbitrary` make a short list, libFuzzer's grow theirs.
    pub fn with_ops(u: &mut arbitrary::Unstructured<'_>, ops: usize) -> arbitrary::Result<Input> {
        let mut input = Input {
            plugin: Plugin::arbitrary(u)?,
            errors: Vec::arbitrary(u)?,
            two_vms: bool::arbitrary(u)?,
            second_errors: Option::arbitrary(u)?,
            ops: Vec::new(),
        };
        while input.ops.len() < ops {
            match Op::arbitrary(u) {
                Ok(op) => input.ops.push(op),
                Err(_) => break,
            }
        }
        Ok(input)
    }

    /// How many operations it runs.
    pub fn op_count(&self) -> u64 {
        self.ops.len().min(MAX_OPS) as u64
    }
}

/// Runs one input: panics with the message of any trap of the filter.
pub fn run(input: Input) {
    let world = world();
    let module = world.module.with_fresh_state();
    let (plugin, clusters) = world.plugin(&input.plugin);
    let options = |errors: &[(u8, Status)], elapsed: Duration| {
        let start = VmOptions::default().start_time_ns;
        VmOptions {
            host_errors: world.host_errors(errors),
            clusters: clusters.clone(),
            start_time_ns: start + elapsed.as_nanos() as u64,
            ..VmOptions::default()
        }
    };
    let mut workers = Vec::new();
    for i in 0..(1 + usize::from(input.two_vms)) {
        let errors = match (&input.second_errors, i) {
            (Some(second), 1) => second,
            _ => &input.errors,
        };
        match module.start_vm(options(errors, Duration::ZERO)) {
            Ok(vm) => workers.push(Worker {
                vm,
                open: Vec::new(),
                plugin: plugin.clone(),
                elapsed: Duration::ZERO,
            }),
            // The filter may refuse to start when the host fails it: fine, unless it trapped.
            Err(e) => return check(Err(e), "start-up"),
        }
    }
    for worker in &mut workers {
        check(worker.vm.configure(&plugin).map(drop), "configure");
        check_vm(worker, "configure");
    }
    for (n, op) in input.ops.iter().take(MAX_OPS).enumerate() {
        let during = format!("operation {n} ({op:?})");
        let count = workers.len();
        let index = |second: bool| usize::from(second) % count;
        match op {
            Op::Exchange {
                second,
                request,
                response: r,
            } => {
                let mut exchange = world.request(request);
                response(&mut exchange, r);
                let worker = &mut workers[index(*second)];
                match worker.vm.exchange(&exchange) {
                    Ok(report) => {
                        assert!(report.trap.is_none(), "trap during {during}: {report:#?}")
                    }
                    Err(e) => check(Err(e), &during),
                }
            }
            Op::Begin { second, request } => {
                let exchange = world.request(request);
                let worker = &mut workers[index(*second)];
                match worker.vm.begin(&exchange) {
                    Ok(id) => worker.open.push((id, exchange)),
                    Err(e) => check(Err(e), &during),
                }
            }
            Op::Finish {
                second,
                which,
                response: r,
            } => {
                let worker = &mut workers[index(*second)];
                if !worker.open.is_empty() {
                    let at = usize::from(*which) % worker.open.len();
                    let (id, mut exchange) = worker.open.remove(at);
                    response(&mut exchange, r);
                    match worker.vm.finish(id, &exchange) {
                        Ok(report) => {
                            assert!(report.trap.is_none(), "trap during {during}: {report:#?}")
                        }
                        Err(e) => check(Err(e), &during),
                    }
                }
            }
            Op::Advance { second, ms } => {
                let by = Duration::from_millis(u64::from(*ms) % MAX_ADVANCE_MS);
                for (i, worker) in workers.iter_mut().enumerate() {
                    if second.is_none_or(|s| index(s) == i) {
                        worker.elapsed += by;
                        check(worker.vm.advance(by), &during);
                    }
                }
            }
            Op::Tick { second } => check(workers[index(*second)].vm.tick(), &during),
            Op::Answer {
                second,
                which,
                reply,
            } => {
                let worker = &mut workers[index(*second)];
                let tokens: Vec<u32> = worker
                    .vm
                    .pending_http_calls()
                    .iter()
                    .map(|c| c.token)
                    .collect();
                if let Some(token) = pick(&tokens, *which) {
                    let response = match reply {
                        Reply::Config(config, etag) => world.config_response(*config, *etag),
                        Reply::NotModified(etag) => HttpCallResponse {
                            headers: host_test::headers(&[
                                (":status", "304"),
                                ("etag", format!("\"e{etag}\"").as_str()),
                            ]),
                            body: Vec::new(),
                        },
                        Reply::Other(status, body) => HttpCallResponse {
                            headers: host_test::headers(&[(":status", status.to_string())]),
                            body: body.iter().copied().take(MAX_BODY).collect(),
                        },
                        Reply::Reset => HttpCallResponse::default(),
                    };
                    check(worker.vm.answer_http_call(*token, response), &during);
                }
            }
            Op::QueueReady { second, queue } => check(
                workers[index(*second)].vm.queue_ready(u32::from(*queue)),
                &during,
            ),
            Op::Configure { second, plugin } => {
                // The clusters stay the VM's own: a reconfiguration changes the plugin alone.
                let (bytes, _) = world.plugin(plugin);
                let worker = &mut workers[index(*second)];
                check(worker.vm.configure(&bytes).map(drop), &during);
                worker.plugin = bytes;
            }
            Op::Restart { second, errors } => {
                let worker = &mut workers[index(*second)];
                match module.start_vm(options(errors, worker.elapsed)) {
                    Ok(vm) => {
                        worker.vm = vm;
                        worker.open.clear();
                        check(worker.vm.configure(&worker.plugin).map(drop), &during);
                    }
                    Err(e) => check(Err(e), &during),
                }
            }
        }
        for worker in &workers {
            check_vm(worker, &during);
        }
    }
    for worker in &mut workers {
        let open = std::mem::take(&mut worker.open);
        for (id, exchange) in open {
            match worker.vm.finish(id, &exchange) {
                Ok(report) => assert!(
                    report.trap.is_none(),
                    "trap finishing a stream: {report:#?}"
                ),
                Err(e) => check(Err(e), "the end"),
            }
        }
        check_vm(worker, "the end");
    }
}
