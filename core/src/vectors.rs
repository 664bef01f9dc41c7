//! The golden-vector file format (`testdata/vectors/*.json`) and its native runner.
//!
//! A vector file is `{description, config, cases: [{description, request, expected}]}`.
//! Every host runs every case: this crate natively, the wasmtime harness on the built filter,
//! real Envoy, and the Worker. The decision (with reasons) is checked where the host can
//! show it; the header contract is checked everywhere.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::{Config, ConfigErrors, Decision, HostInputs};

/// One vector file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorFile {
    /// What the file covers.
    pub description: String,
    /// The rollout config, as JSON.
    pub config: Value,
    /// The contract's header names under this config, resolved by the core (blessed with the
    /// expected outcomes), so that no host's test runner spells them itself.
    pub contract: Contract,
    /// The requests and what each must get.
    pub cases: Vec<Case>,
}

impl VectorFile {
    /// The file's config, validated: serialized and read back by the core's own reader, as
    /// every host reads a config.
    pub fn parse_config(&self) -> Result<Config, ConfigErrors> {
        Config::from_json(self.config.to_string().as_bytes())
    }
}

/// The contract's header names, as a vector file carries them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// The headers the contract owns on the upstream request.
    pub request: Vec<String>,
    /// The headers the contract owns on the response.
    pub response: Vec<String>,
}

impl Contract {
    /// The names a config resolves to.
    pub fn of(config: &Config) -> Contract {
        let names = config.contract_names();
        let owned = |n: &[&str]| n.iter().map(|n| (*n).to_owned()).collect();
        Contract {
            request: owned(&names.request),
            response: owned(&names.response),
        }
    }

    /// The request names, as `&str`s for [`contract_view`].
    pub fn request_names(&self) -> Vec<&str> {
        self.request.iter().map(String::as_str).collect()
    }

    /// The response names, as `&str`s for [`contract_view`].
    pub fn response_names(&self) -> Vec<&str> {
        self.response.iter().map(String::as_str).collect()
    }
}

/// One request and its expected outcome.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case checks.
    pub description: String,
    /// The request as the client sent it.
    pub request: Request,
    /// What every host must produce.
    pub expected: Expected,
}

/// A client request and the upstream's response to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Request headers in order, pseudo-headers (`:authority`, `:path`, `:method`) included.
    pub headers: Vec<(String, String)>,
    /// What the host's random source returns, for keyless requests to `no_key: random`
    /// rollouts. Every real host has a source, so such cases must set it.
    #[serde(default)]
    pub entropy: Option<u64>,
    /// Headers of the upstream response; `:status` defaults to 200.
    #[serde(default)]
    pub response_headers: Vec<(String, String)>,
    /// The host's time, as RFC 3339 (`2026-11-23T10:00:00Z`), for schedules. A host that
    /// cannot set its clock runs the case on a config whose times are shifted by the
    /// difference ([`shift_times`]).
    #[serde(default)]
    pub now: Option<String>,
    /// Versions whose guard has tripped, as `rollout/version`.
    #[serde(default)]
    pub tripped: Vec<String>,
}

/// The expected outcome of a case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// The decision, as the core serializes it (with reasons).
    pub decision: Value,
    /// Final values of the contract's request headers at the upstream; a name absent here
    /// must be absent there.
    pub request_headers: BTreeMap<String, String>,
    /// Final values of the contract's response headers at the client (several values of one
    /// header joined with ", "); a name absent here must be absent there.
    pub response_headers: BTreeMap<String, String>,
}

impl Request {
    /// The case's time in Unix ms, if it has one (a bad time is no time).
    pub fn now_ms(&self) -> Option<u64> {
        self.now.as_deref().and_then(crate::parse_time)
    }

    /// The tripped versions under `config`, tripped at the case's time (so their schedules
    /// stand where they are now).
    pub fn trips(&self, config: &Config) -> Vec<crate::Tripped> {
        let at_ms = self.now_ms().unwrap_or(u64::MAX);
        self.tripped
            .iter()
            .filter_map(|rv| {
                let (rollout, version) = rv.split_once('/')?;
                let slot = config.slot_of(rollout, version)?;
                Some(crate::Tripped { slot, at_ms })
            })
            .collect()
    }

    /// Decides this request natively, feeding the vector's entropy, time and trips to the
    /// core.
    pub fn decide<'c>(&self, config: &'c Config) -> Decision<'c> {
        self.decide_reading(config, self.headers.as_slice())
    }

    /// [`Request::decide`] from `facts`, a view of this request's headers.
    fn decide_reading<'c, F: crate::RequestFacts + ?Sized>(
        &self,
        config: &'c Config,
        facts: &F,
    ) -> Decision<'c> {
        let value = self.entropy.unwrap_or_default();
        let mut source = move || value;
        let tripped = self.trips(config);
        let inputs = HostInputs {
            entropy: match self.entropy {
                Some(_) => Some(&mut source),
                None => None,
            },
            now_ms: self.now_ms(),
            tripped: &tripped,
        };
        config.decide(facts, inputs)
    }
}

/// Moves every time in a config (`schedule.start`, `schedule.paused_at`) by `delta_ms`, for a
/// host that cannot set its clock: a case at time T runs at real time T + delta on the
/// shifted config, with the same decision as long as no step begins in between.
pub fn shift_times(config: &Value, delta_ms: i64) -> Value {
    let mut out = config.clone();
    let Some(rollouts) = out.get_mut("rollouts").and_then(Value::as_object_mut) else {
        return out;
    };
    for rollout in rollouts.values_mut() {
        let Some(schedule) = rollout.get_mut("schedule").and_then(Value::as_object_mut) else {
            continue;
        };
        for key in ["start", "paused_at"] {
            let Some(ms) = schedule
                .get(key)
                .and_then(Value::as_str)
                .and_then(crate::parse_time)
            else {
                continue;
            };
            let shifted = (ms as i64).saturating_add(delta_ms).max(0) as u64;
            schedule.insert(key.to_owned(), Value::String(crate::format_time(shifted)));
        }
    }
    out
}

impl VectorFile {
    /// Parses a vector file.
    pub fn parse(bytes: &[u8]) -> Result<VectorFile, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// What the native core gives one request, in the shape of [`Expected`].
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The decision, serialized.
    pub decision: Value,
    /// Final values of the contract's request headers.
    pub request_headers: BTreeMap<String, String>,
    /// Final values of the contract's response headers, over the upstream's response.
    pub response_headers: BTreeMap<String, String>,
}

impl Request {
    /// Runs this request through the native core and the header contract, applied to plain
    /// header lists (the reference [`crate::HeaderMapMut`]).
    pub fn observe(&self, config: &Config) -> Observed {
        self.observe_reading(config, self.headers.as_slice())
    }

    /// [`Request::observe`] with deciding and the contract reading `facts`, a view of this
    /// request's headers; the upstream request starts with every header, as a host forwards
    /// them.
    fn observe_reading<F: crate::RequestFacts + ?Sized>(
        &self,
        config: &Config,
        facts: &F,
    ) -> Observed {
        let decision = self.decide_reading(config, facts);
        let mut upstream = self.headers.clone();
        config.apply_request_contract(&decision, facts, &mut upstream);
        let mut response = self.response_headers.clone();
        config.apply_response_contract(decision.response_plan(), &mut response);
        let names = config.contract_names();
        Observed {
            decision: serde_json::to_value(&decision).unwrap_or(Value::Null),
            request_headers: contract_view(&upstream, &names.request),
            response_headers: contract_view(&response, &names.response),
        }
    }
}

/// Runs one case on the native core; returns a description of every mismatch.
pub fn check_native(config: &Config, case: &Case) -> Vec<String> {
    let got = case.request.observe(config);
    let expected = &case.expected;
    let mut problems = Vec::new();
    // A host that reads only the headers whose values the config reads, and takes the
    // contract's other headers as sent (the Worker), must see the same.
    let read = config.read_headers();
    let mut narrow = case.request.headers.clone();
    narrow.retain(|(name, _)| {
        name.starts_with(':') || read.iter().any(|r| r.eq_ignore_ascii_case(name))
    });
    let narrow = case
        .request
        .observe_reading(config, &config.unread(narrow.as_slice()));
    if narrow != got {
        problems.push(format!(
            "reading only {read:?}: {narrow:?}, with every header: {got:?}"
        ));
    }
    if got.decision != expected.decision {
        problems.push(format!(
            "decision: expected {}, got {}",
            expected.decision, got.decision
        ));
    }
    if got.request_headers != expected.request_headers {
        problems.push(format!(
            "request headers: expected {:?}, got {:?}",
            expected.request_headers, got.request_headers
        ));
    }
    if got.response_headers != expected.response_headers {
        problems.push(format!(
            "response headers: expected {:?}, got {:?}",
            expected.response_headers, got.response_headers
        ));
    }
    problems
}

/// The values of `names` in a header list, several values of one name joined with ", ".
pub fn contract_view(headers: &[(String, String)], names: &[&str]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        if names.contains(&name.as_str()) {
            out.entry(name.clone())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(value);
                })
                .or_insert_with(|| value.clone());
        }
    }
    out
}

/// A config that must be refused, with the errors it must produce.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidConfig {
    /// What class of mistake this is.
    pub description: String,
    /// The config as JSON; a string is taken as raw bytes (for syntax errors).
    pub config: Value,
    /// Every error message, `path: message`, in order.
    pub errors: Vec<String>,
}

impl InvalidConfig {
    /// The config bytes as a host receives them.
    pub fn bytes(&self) -> Vec<u8> {
        match &self.config {
            Value::String(raw) => raw.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Runs every golden vector and every invalid config natively. `BLESS=1` rewrites the
    //! expected outcomes from the current core: review the diff before committing it.

    use super::*;
    use std::path::{Path, PathBuf};

    fn testdata() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
    }

    #[test]
    fn every_golden_vector_passes_natively() {
        let dir = testdata().join("vectors");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "json"));
        files.sort();
        assert!(
            files.len() >= 5,
            "expected the vector files in {}",
            dir.display()
        );
        let bless = std::env::var_os("BLESS").is_some();
        let mut failures = Vec::new();
        let mut n_cases = 0;
        for path in &files {
            let bytes = std::fs::read(path).unwrap_or_default();
            if bless {
                bless_file(path, &bytes);
                continue;
            }
            let file = match VectorFile::parse(&bytes) {
                Ok(f) => f,
                Err(e) => {
                    failures.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            let config = match file.parse_config() {
                Ok(c) => c,
                Err(e) => {
                    failures.push(format!("{}: config refused: {e}", path.display()));
                    continue;
                }
            };
            if file.contract != Contract::of(&config) {
                failures.push(format!(
                    "{}: contract names {:?}, the config resolves to {:?}",
                    path.display(),
                    file.contract,
                    Contract::of(&config)
                ));
            }
            for case in &file.cases {
                n_cases += 1;
                for problem in check_native(&config, case) {
                    failures.push(format!(
                        "{} / {}: {problem}",
                        path.display(),
                        case.description
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(bless || n_cases >= 40, "only {n_cases} cases ran");
    }

    /// Rewrites `expected` of every case from what the core decides now.
    fn bless_file(path: &Path, bytes: &[u8]) {
        let Ok(mut doc) = serde_json::from_slice::<Value>(bytes) else {
            return;
        };
        let config = Config::from_json(doc["config"].to_string().as_bytes()).unwrap();
        let config = &config;
        doc["contract"] = serde_json::to_value(Contract::of(config)).unwrap();
        let Some(cases) = doc.get_mut("cases").and_then(Value::as_array_mut) else {
            return;
        };
        for case in cases {
            let Ok(request) = serde_json::from_value::<Request>(case["request"].clone()) else {
                continue;
            };
            let got = request.observe(config);
            case["expected"] = serde_json::json!({
                "decision": got.decision,
                "request_headers": got.request_headers,
                "response_headers": got.response_headers,
            });
        }
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        std::fs::write(path, text + "\n").unwrap_or_default();
    }

    #[test]
    fn every_invalid_config_is_refused_with_its_paths() {
        let path = testdata().join("invalid-configs.json");
        let bytes = std::fs::read(&path).unwrap_or_default();
        let cases: Vec<InvalidConfig> = serde_json::from_slice(&bytes).unwrap_or_default();
        assert!(
            cases.len() >= 20,
            "expected the invalid configs in {}",
            path.display()
        );
        if std::env::var_os("BLESS").is_some() {
            let mut doc: Vec<Value> = serde_json::from_slice(&bytes).unwrap();
            for (entry, case) in doc.iter_mut().zip(&cases) {
                let errors = Config::from_json(&case.bytes())
                    .err()
                    .map(|e| e.lines("").collect::<Vec<_>>())
                    .unwrap_or_default();
                entry["errors"] = errors
                    .iter()
                    .map(|e| Value::String(e.to_string()))
                    .collect();
            }
            let text = serde_json::to_string_pretty(&doc).unwrap();
            std::fs::write(&path, text + "\n").unwrap();
            return;
        }
        let mut failures = Vec::new();
        for case in &cases {
            match Config::from_json(&case.bytes()) {
                Ok(_) => failures.push(format!("{}: accepted", case.description)),
                Err(errors) => {
                    let got: Vec<String> = errors.lines("").collect();
                    if got != case.errors {
                        failures.push(format!(
                            "{}:\n  expected {:#?}\n  got {got:#?}",
                            case.description, case.errors
                        ));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
