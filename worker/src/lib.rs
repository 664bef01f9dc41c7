//! The Cloudflare Worker: the same decision core at the edge. A request comes in, the Worker
//! decides version and flags exactly as the Envoy filter does, forwards the request to that
//! version's origin with the header contract, and returns the origin's response with the
//! contract's response headers.
//!
//! Settings come from Worker vars (see `wrangler.toml`); the rollout config comes from a KV
//! namespace bound as `ROLLOUT_CONFIG`, held in the isolate for `ROLLOUT_CONFIG_TTL_MS`; the
//! keys that sign tester override tokens come from the secret `ROLLOUT_OVERRIDE_KEYS`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use rollout_core::{Config, HostInputs};
use worker::{
    AnalyticsEngineDataPointBuilder, Context, Date, Env, Fetch, Headers, Method, Request,
    RequestInit, Response, Result, console_error, console_log, console_warn, event, js_sys,
};

/// The KV namespace binding that holds the rollout config.
const KV_BINDING: &str = "ROLLOUT_CONFIG";
/// The optional Analytics Engine binding that gets one data point per request.
const ANALYTICS_BINDING: &str = "ROLLOUT_ANALYTICS";
/// The secret binding with the override-token keys: a JSON object of key id to secret.
const KEYS_BINDING: &str = "ROLLOUT_OVERRIDE_KEYS";
/// The var the Worker once assigned user keys by; the config's `assign` does it now.
const OLD_ASSIGN_VAR: &str = "ROLLOUT_ASSIGN_COOKIE";

/// Worker settings, from vars.
struct Settings {
    kv_key: String,
    ttl_ms: u64,
    /// `rollout/version` (or `default`) to origin base URL.
    origins: HashMap<String, String>,
    /// The override-token keys (key id, secret), from [`KEYS_BINDING`]; every config parsed
    /// gets these and no others.
    override_keys: Vec<(String, Vec<u8>)>,
}

impl Settings {
    fn from_env(env: &Env) -> Settings {
        let var = |name: &str| {
            env.var(name)
                .ok()
                .map(|v| v.to_string())
                .filter(|v| !v.is_empty())
        };
        let origins = match var("ROLLOUT_ORIGINS").map(|o| serde_json::from_str(&o)) {
            Some(Ok(map)) => map,
            Some(Err(e)) => {
                console_error!("rollout: ROLLOUT_ORIGINS is not a JSON object of strings: {e}");
                HashMap::new()
            }
            None => HashMap::new(),
        };
        if var(OLD_ASSIGN_VAR).is_some() {
            console_warn!(
                "rollout: the var {OLD_ASSIGN_VAR} is ignored: the config's assign (assign.cookie) \
                 gives keyless users a key now; remove the var"
            );
        }
        let override_keys = match env.secret(KEYS_BINDING) {
            Ok(secret) => parse_override_keys(&secret.to_string()),
            Err(_) => Vec::new(),
        };
        Settings {
            kv_key: var("ROLLOUT_CONFIG_KEY").unwrap_or_else(|| "rollout.json".to_owned()),
            ttl_ms: var("ROLLOUT_CONFIG_TTL_MS")
                .and_then(|t| t.parse().ok())
                .unwrap_or(10_000),
            origins,
            override_keys,
        }
    }
}

/// The keys of the [`KEYS_BINDING`] secret. A key with a bad id or a short secret is logged,
/// naming it, and left out, so one mistake does not disable every tester's token.
fn parse_override_keys(text: &str) -> Vec<(String, Vec<u8>)> {
    // The core's JSON reader, already in the Worker for the config: serde_json's Value made
    // the Worker 3,681 B bigger gzipped. It also refuses a key id given twice.
    let parsed = rollout_core::json::parse(text.as_bytes());
    let value = match parsed {
        Ok(value) if value.as_object().is_some() => value,
        other => {
            let why = other.err().map(|e| format!(" ({e})")).unwrap_or_default();
            console_error!(
                "rollout: secret {KEYS_BINDING} is not a JSON object of key id to secret{why}; \
                 no override token is valid"
            );
            return Vec::new();
        }
    };
    // The checks and wording of the config's `overrides.keys`, each error under the binding.
    let (keys, errors) = Config::read_override_keys(&value, KEYS_BINDING);
    for error in errors {
        console_error!("rollout: secret {error}; that key is left out");
    }
    keys
}

/// The config in force in this isolate, and when KV was last read.
#[derive(Default)]
struct Cache {
    config: Option<Rc<Config>>,
    /// The KV text the config was parsed from, so an unchanged value is not parsed again.
    text: Option<String>,
    read_at_ms: Option<u64>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    /// Vars do not change within an isolate: parse them (ROLLOUT_ORIGINS is JSON) once.
    static SETTINGS: std::cell::OnceCell<Rc<Settings>> = const { std::cell::OnceCell::new() };
}

/// The config in force, reading KV if the held one is older than the TTL. A value that fails
/// validation is logged with every error path and never replaces the config in force; a
/// missing key or a KV error keeps it too.
async fn config(env: &Env, settings: &Settings) -> Option<Rc<Config>> {
    let now = Date::now().as_millis();
    let fresh = CACHE.with(|c| {
        let c = c.borrow();
        c.read_at_ms
            .is_some_and(|at| now.saturating_sub(at) < settings.ttl_ms)
    });
    if fresh {
        return CACHE.with(|c| c.borrow().config.clone());
    }
    let read = match env.kv(KV_BINDING) {
        Ok(kv) => kv
            .get(&settings.kv_key)
            .text()
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.read_at_ms = Some(now);
        match read {
            Ok(Some(text)) if c.text.as_deref() == Some(text.as_str()) => {}
            Ok(Some(text)) => match Config::from_json(text.as_bytes()) {
                Ok(mut config) => {
                    console_log!("rollout: config loaded from KV key {}", settings.kv_key);
                    // Keys in KV are not used: anyone who can read the namespace (any account
                    // member or API token with KV access) could mint tokens with them. A
                    // Worker secret cannot be read back once put.
                    if !config.override_keys().is_empty() {
                        console_error!(
                            "rollout: config overrides.keys is ignored: secrets do not belong in \
                             KV, where anyone who can read the namespace reads them; put them in \
                             the secret {KEYS_BINDING} (wrangler secret put {KEYS_BINDING})"
                        );
                    }
                    if config.set_override_keys(settings.override_keys.clone())
                        && settings.override_keys.is_empty()
                    {
                        console_warn!(
                            "rollout: config overrides reads tokens but the secret {KEYS_BINDING} \
                             holds no usable key: no override token is valid"
                        );
                    }
                    c.config = Some(Rc::new(config));
                    c.text = Some(text);
                }
                Err(errors) => {
                    for line in errors.lines("rollout: config rejected: ") {
                        console_error!("{line}");
                    }
                    console_error!(
                        "rollout: config rejected with {} error(s); keeping the one in force",
                        errors.len()
                    );
                }
            },
            Ok(None) => console_warn!(
                "rollout: KV key {} is missing; keeping the config in force",
                settings.kv_key
            ),
            Err(e) => console_warn!("rollout: cannot read KV ({e}); keeping the config in force"),
        }
        c.config.clone()
    })
}

/// Random bits from the isolate's generator, for keyless `no_key: random` requests and new
/// user keys. Not secret: they only spread users.
fn random_u64() -> u64 {
    let high = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    let low = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    (high << 32) | low
}

/// Splits the request URL into authority and path with query. The runtime hands over an
/// absolute URL it has already normalised (`https://host[:port]/path[?query]`), so splitting
/// it is enough, and it keeps a URL parser (a third of this module's code) out of the Worker.
fn authority_and_path(url: &str) -> (&str, &str) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split_once('#').map_or(rest, |(rest, _)| rest);
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    (host, if path.is_empty() { "/" } else { path })
}

/// The request as the core sees it: lowercase header names, with Envoy's pseudo-headers
/// made from the URL, so both hosts decide from the same facts.
fn facts(req: &Request, authority: &str, path: &str) -> Vec<(String, String)> {
    let mut out = vec![
        (":method".to_owned(), req.method().to_string()),
        (":authority".to_owned(), authority.to_owned()),
        (":path".to_owned(), path.to_owned()),
    ];
    out.extend(
        req.headers()
            .entries()
            .map(|(k, v)| (k.to_ascii_lowercase(), v)),
    );
    out
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    match handle(req, &env).await {
        Ok(response) => Ok(response),
        Err(e) => {
            console_error!("rollout: {e}");
            Response::error("rollout worker: internal error", 500)
        }
    }
}

async fn handle(req: Request, env: &Env) -> Result<Response> {
    let settings = SETTINGS.with(|s| s.get_or_init(|| Rc::new(Settings::from_env(env))).clone());
    let config = match config(env, &settings).await {
        Some(config) => config,
        // No config was ever loaded: decide with an empty one, which still removes client
        // copies of the contract headers, and send everything to the default origin.
        None => Rc::new(Config::empty()),
    };
    let url = req.inner().url();
    let (authority, path) = authority_and_path(&url);
    let facts = facts(&req, authority, path);
    // Schedules and token expiry read the time; the Worker has no guard yet, so nothing is
    // tripped. A keyless user is given a key (the config's `assign`) by the core, with this
    // entropy.
    let decision = config.decide(
        facts.as_slice(),
        HostInputs {
            entropy: Some(&mut random_u64),
            now_ms: Some(Date::now().as_millis()),
            tripped: &[],
        },
    );
    let target = decision
        .rollout
        .map(|r| format!("{}/{}", r.rollout, r.version));
    let origin_key = target.clone().unwrap_or_else(|| "default".to_owned());
    let Some(origin) = settings
        .origins
        .get(&origin_key)
        .or_else(|| settings.origins.get("default"))
    else {
        console_error!("rollout: no origin for {origin_key} in ROLLOUT_ORIGINS");
        return Response::error(
            format!("rollout worker: no origin configured for {origin_key}"),
            502,
        );
    };

    // The upstream request: everything as the client sent it, with the header contract applied
    // by the core (client copies of contract headers removed, the decision's values set).
    let mut headers = WorkerHeaders::default();
    for (name, value) in &facts {
        if name.starts_with(':') || name == "host" {
            continue;
        }
        headers.append(name, value);
    }
    config.apply_request_contract(&decision, facts.as_slice(), &mut headers);
    let headers = headers.finish()?;
    // The flags header value, for the data point.
    let flags = decision.flags_header_value().unwrap_or_default();
    let upstream_url = format!("{}{path}", origin.trim_end_matches('/'));
    let mut init = RequestInit::new();
    init.with_method(req.method()).with_headers(headers);
    if !matches!(req.method(), Method::Get | Method::Head) {
        init.with_body(req.inner().body().map(Into::into));
    }
    let upstream = Request::new_with_init(&upstream_url, &init)?;
    let started = Date::now().as_millis();
    let response = match Fetch::Request(upstream).send().await {
        Ok(response) => response,
        Err(e) => {
            console_error!("rollout: origin {origin} for {origin_key} failed: {e}");
            record(
                env,
                &decision,
                &flags,
                502,
                Date::now().as_millis().saturating_sub(started),
            );
            return Response::error(
                format!("rollout worker: origin for {origin_key} is unreachable"),
                502,
            );
        }
    };
    let latency_ms = Date::now().as_millis().saturating_sub(started);
    record(env, &decision, &flags, response.status_code(), latency_ms);

    // Fetched responses have immutable headers: build the client's response on a copy.
    let status = response.status_code();
    let mut out_headers = WorkerHeaders::default();
    for (name, value) in response.headers().entries() {
        out_headers.append(&name, &value);
    }
    config.apply_response_contract(decision.response_plan(), &mut out_headers);
    let out_headers = out_headers.finish()?;
    let (_, body) = response.into_parts();
    Ok(Response::builder()
        .with_status(status)
        .with_headers(out_headers)
        .body(body))
}

/// A `Headers` object the core's header contract writes to. The trait's calls cannot fail,
/// so the first error (an invalid name or value) is kept and returned by [`Self::finish`].
#[derive(Default)]
struct WorkerHeaders {
    headers: Headers,
    error: Option<worker::Error>,
}

impl WorkerHeaders {
    fn keep(&mut self, result: Result<()>) {
        if let (Err(e), None) = (result, &self.error) {
            self.error = Some(e);
        }
    }

    fn append(&mut self, name: &str, value: &str) {
        let result = self.headers.append(name, value);
        self.keep(result);
    }

    fn finish(mut self) -> Result<Headers> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(self.headers),
        }
    }
}

impl rollout_core::HeaderMapMut for WorkerHeaders {
    fn replace(&mut self, name: &str, value: &str) {
        // `set` replaces every value, as the contract asks.
        let result = self.headers.set(name, value);
        self.keep(result);
    }

    fn add(&mut self, name: &str, value: &str) {
        self.append(name, value);
    }

    fn remove(&mut self, name: &str) {
        let result = self.headers.delete(name);
        self.keep(result);
    }
}

/// One Analytics Engine data point per request, if the binding exists: indexed by rollout,
/// with rollout, version, flags, status and the override token's status (`valid`, `expired`,
/// ...; empty without a token) as blobs, and status and latency as doubles. New blobs go at
/// the end so that queries on the earlier positions keep working.
fn record(
    env: &Env,
    decision: &rollout_core::Decision<'_>,
    flags: &str,
    status: u16,
    latency_ms: u64,
) {
    let Ok(dataset) = env.analytics_engine(ANALYTICS_BINDING) else {
        return;
    };
    let (rollout, version) = decision
        .rollout
        .map_or(("", ""), |r| (r.rollout, r.version));
    let point = AnalyticsEngineDataPointBuilder::new()
        .indexes([rollout])
        .blobs([
            rollout.to_owned(),
            version.to_owned(),
            flags.to_owned(),
            status.to_string(),
            decision.token.map_or("", |t| t.as_str()).to_owned(),
        ])
        .doubles([f64::from(status), latency_ms as f64])
        .build();
    if let Err(e) = dataset.write_data_point(&point) {
        console_warn!("rollout: analytics data point not written: {e}");
    }
}
