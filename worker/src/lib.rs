//! The Cloudflare Worker: the same decision core at the edge. A request comes in, the Worker
//! decides version and flags exactly as the Envoy filter does, forwards the request to that
//! version's origin with the header contract, and returns the origin's response with the
//! contract's response headers.
//!
//! The Worker's entry is JavaScript (`src/entry.mjs`): it forwards every request itself and
//! calls this module synchronously to plan it ([`rollout_plan`], once per request), and
//! asynchronously ([`rollout_prepare`]) only when the config source must be read, the guard's
//! state waited for or its batch sent, or an admin request served. A request with nothing due
//! (nearly all of them) so costs one call with strings in and out, not a promise and an
//! object wrapper per runtime call (issue 12; the measurements are in benches/STEPS.md).
//!
//! Settings come from Worker vars (see `wrangler.toml`); the rollout config comes from a KV
//! namespace bound as `ROLLOUT_CONFIG`, held in the isolate for `ROLLOUT_CONFIG_TTL_MS`; the
//! keys that sign tester override tokens come from the secret `ROLLOUT_OVERRIDE_KEYS`.

mod admin;
mod guard;
mod headers;
mod settings;
mod source;
#[allow(
    missing_docs,
    reason = "the durable_object macro generates the class's constructor and methods"
)]
mod state;

pub use state::RolloutState;

use std::future::Future;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use rollout_core::{Config, HostInputs};
use wasm_bindgen::{JsValue, prelude::wasm_bindgen};
// The async export's glue names the crate.
use worker::wasm_bindgen_futures;
use worker::{Context, Date, Delay, Env, Request, console_error, js_sys, worker_sys::web_sys};

use crate::headers::Edits;
use crate::settings::Settings;

thread_local! {
    /// Vars do not change within an isolate: parse them (ROLLOUT_ORIGINS is JSON) once.
    static SETTINGS: std::cell::OnceCell<Rc<Settings>> = const { std::cell::OnceCell::new() };
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

/// The request as the core sees it: the headers it reads, lowercase (`name,value` lines, as
/// [`rollout_plan`] takes them), with Envoy's pseudo-headers made from the URL, so both hosts
/// decide from the same facts.
fn facts<'a>(
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    lines: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut out = vec![
        (":method", method),
        (":authority", authority),
        (":path", path),
    ];
    out.extend(lines.split('\n').filter_map(|line| line.split_once(',')));
    out
}

/// Where the requests of one (rollout, version), or of none, go: resolved from ROLLOUT_ORIGINS
/// on first use under a config, not per request (and a missing origin logged once).
struct Route {
    /// `rollout/version`, or `default`.
    key: String,
    /// The ROLLOUT_ORIGINS entry used (the key's own or `default`), for logs that name it;
    /// empty if neither is configured.
    entry: String,
    /// Its origin as configured, for logs.
    origin: String,
    /// The origin without a trailing `/`, for the request's path to follow.
    base: String,
}

impl Route {
    fn new(settings: &Settings, key: String) -> Route {
        let found = settings
            .origins
            .get_key_value(&key)
            .or_else(|| settings.origins.get_key_value("default"));
        let Some((entry, origin)) = found else {
            console_error!("rollout: no origin for {key} in ROLLOUT_ORIGINS");
            return Route {
                key,
                entry: String::new(),
                origin: String::new(),
                base: String::new(),
            };
        };
        Route {
            key,
            entry: entry.clone(),
            origin: origin.clone(),
            base: origin.trim_end_matches('/').to_owned(),
        }
    }
}

/// The request path's view of the config in force: the config, its generation (which the
/// entry's plans and counts name, so that neither applies to a config that replaced it), the
/// request headers read under it, and where each version's requests go.
struct Planning {
    config: Rc<Config>,
    generation: u32,
    /// The answer that tells the entry which headers to read: `H`, the generation, the names.
    names: String,
    /// One per slot of the config, then the one for a request no rollout decided.
    routes: Vec<std::cell::OnceCell<Route>>,
    timeout: String,
}

thread_local! {
    static PLANNING: std::cell::RefCell<Option<Planning>> = const { std::cell::RefCell::new(None) };
}

fn settings() -> Option<Rc<Settings>> {
    SETTINGS.with(|s| s.get().cloned())
}

/// The planning for the config held at `now`, made anew when the config changed; `None` if
/// [`rollout_prepare`] must run first (no settings yet, the config source is due to be read, or
/// the guard's wait or batch is due). With `force`, after [`rollout_prepare`], whatever is held
/// is planned with.
fn planning<T>(now: u64, force: bool, with: impl FnOnce(&Settings, &Planning) -> T) -> Option<T> {
    let settings = settings()?;
    let config = source::held(&settings, now, force)?;
    if !force && guard::due(&settings, &config, now) {
        return None;
    }
    PLANNING.with(|p| {
        let mut p = p.borrow_mut();
        match p.as_ref() {
            Some(held) if Rc::ptr_eq(&held.config, &config) => {}
            held => {
                let generation = held.map_or(1, |held| held.generation.wrapping_add(1).max(1));
                *p = Some(Planning::new(&settings, config, generation));
            }
        }
        p.as_ref().map(|held| with(&settings, held))
    })
}

impl Planning {
    fn new(settings: &Settings, config: Rc<Config>, generation: u32) -> Planning {
        let mut names = format!("H\0{generation}\0");
        for name in config.read_headers() {
            names.push_str(&name);
            names.push('\0');
        }
        let routes = (0..=config.n_slots())
            .map(|_| std::cell::OnceCell::new())
            .collect();
        Planning {
            names,
            routes,
            timeout: settings.origin_timeout_ms.to_string(),
            config,
            generation,
        }
    }

    /// Where a request decided for `slot` goes, or one no rollout decided (`None`).
    fn route(&self, settings: &Settings, slot: Option<usize>) -> Option<&Route> {
        let at = slot.unwrap_or(self.routes.len().saturating_sub(1));
        let cell = self.routes.get(at)?;
        Some(cell.get_or_init(|| {
            let key = match slot.and_then(|s| self.config.slot_names(s)) {
                Some((rollout, version)) => format!("{rollout}/{version}"),
                None => "default".to_owned(),
            };
            Route::new(settings, key)
        }))
    }
}

/// Plans a request: one call per request on the common path. `request` is the method and the
/// runtime's absolute URL, a space between, then a line `name,value` for each header the entry
/// read under config `generation` (0 before the first answer): one string, so one copy into
/// wasm memory. The answer is NUL-ended fields, the first of them a tag:
///
/// - none (an empty answer): [`rollout_prepare`] must run first (no settings yet, the config
///   source or the guard is due, or the request is for the admin endpoints, which it serves);
///   with `force`, after it ran, whatever config is held is planned with;
/// - `H`, the generation in force and the names of the headers it reads (lowercase, each
///   once): the entry reads those and asks again with that generation;
/// - `E` and a message: a NUL in a header name or value, which fails the request;
/// - `P`, the plan: origin key, its ROLLOUT_ORIGINS entry, the origin, the upstream URL (empty
///   if no origin is configured), the origin timeout in ms, the slot whose response the guard
///   counts (empty if none), rollout, version, flags header value and override token status
///   (for the data point); then three lists of header edits (see `headers::Edits`): the
///   upstream request's, those only an origin's response gets (its own version and reason
///   headers dropped when nothing was decided), and the response contract's, which a reply
///   of the Worker's own gets too.
#[wasm_bindgen]
pub fn rollout_plan(generation: u32, request: &str, now_ms: f64, force: bool) -> String {
    let (line, lines) = request.split_once('\n').unwrap_or((request, ""));
    let (method, url) = line.split_once(' ').unwrap_or(("GET", line));
    let now = now_ms as u64;
    planning(now, force, |settings, held| {
        if held.generation != generation {
            return held.names.clone();
        }
        let (authority, path) = authority_and_path(url);
        if admin::is_admin(settings, path) {
            return String::new();
        }
        let scheme = url.split_once("://").map_or("https", |(scheme, _)| scheme);
        let facts = facts(method, authority, path, lines);
        plan(settings, held, &facts, (scheme, authority, path), now)
            .unwrap_or_else(|e| format!("E\0{e}\0"))
    })
    .unwrap_or_default()
}

/// The `P` answer of [`rollout_plan`] for a request: its `facts` and its URL's scheme,
/// authority and path.
fn plan(
    settings: &Settings,
    held: &Planning,
    facts: &[(&str, &str)],
    (scheme, authority, path): (&str, &str, &str),
    now: u64,
) -> std::result::Result<String, String> {
    let config = &held.config;
    // The entry read only the headers whose values the config reads; the contract's other
    // headers are set or removed unread (`Headers.set` drops every value).
    let facts = config.unread(facts);
    // Schedules and token expiry read the time; the guard's trips come from the rollouts'
    // Durable Objects. A keyless user is given a key (the config's `assign`) by the core, with
    // this entropy.
    let tripped = guard::trips(settings, config);
    let decision = config.decide(
        &facts,
        HostInputs {
            entropy: Some(&mut random_u64),
            now_ms: Some(now),
            tripped: &tripped,
        },
    );
    let route = held
        .route(settings, decision.rollout.map(|r| r.slot))
        .ok_or("a decided slot beyond the config's")?;
    let slot = decision
        .rollout
        .map(|r| r.slot)
        .filter(|slot| guard::counted(settings, config, *slot));
    let (rollout, version) = decision
        .rollout
        .map_or(("", ""), |r| (r.rollout, r.version));
    let flags = decision.flags_header_value().unwrap_or_default();
    let token = decision.token.map_or("", |t| t.as_str());

    let mut out = String::with_capacity(512);
    out.push_str("P\0");
    for field in [&route.key, &route.entry, &route.origin] {
        push_field(&mut out, field)?;
    }
    // The upstream URL, empty if no origin is configured.
    if !route.entry.is_empty() {
        out.push_str(&route.base);
        push_field(&mut out, path)?;
    } else {
        out.push('\0');
    }
    let slot = slot.map(|s| s.to_string()).unwrap_or_default();
    for field in [
        held.timeout.as_str(),
        &slot,
        rollout,
        version,
        &flags,
        token,
    ] {
        push_field(&mut out, field)?;
    }

    // The upstream request: everything as the client sent it, with the header contract applied
    // by the core (client copies of contract headers removed, the decision's values set). What
    // a proxy forwards besides: the origin sees its own host in `Host` (the runtime's fetch
    // sets it from the URL, whatever the copied headers say: a workerd test checks it), so the
    // client's goes in X-Forwarded-Host, and X-Forwarded-Proto is the scheme the client used,
    // as an edge proxy sets them (replacing a client's copies).
    let mut request = Edits::default();
    rollout_core::HeaderMapMut::replace(&mut request, "x-forwarded-host", authority);
    rollout_core::HeaderMapMut::replace(&mut request, "x-forwarded-proto", scheme);
    config.apply_request_contract(&decision, &facts, &mut request);
    request.write_to(&mut out)?;

    let mut origin_only = Edits::default();
    if decision.rollout.is_none() {
        // Nothing decided (no rollout matched, or no config is in force): the origin's own
        // version and reason headers would read as the Worker's decision.
        let names = config.header_names();
        rollout_core::HeaderMapMut::remove(&mut origin_only, &names.version);
        rollout_core::HeaderMapMut::remove(&mut origin_only, &names.reason);
    }
    origin_only.write_to(&mut out)?;

    // A reply of the Worker's own (no origin, or none that answered) gets these too, so the
    // client still learns which version it was decided for, as from Envoy.
    let mut response = Edits::default();
    config.apply_response_contract(decision.response_plan(), &mut response);
    response.write_to(&mut out)?;
    Ok(out)
}

/// Appends a NUL-ended field, refusing a NUL in it (the runtime would refuse it in a header).
fn push_field(out: &mut String, field: &str) -> std::result::Result<(), String> {
    if field.contains('\0') {
        return Err(format!("NUL in a plan's field {field:?}"));
    }
    out.push_str(field);
    out.push('\0');
    Ok(())
}

/// Counts a response of `slot` for the guard, if the config of `generation` is still in
/// force.
#[wasm_bindgen]
pub fn rollout_observe(generation: u32, slot: u32, status: u16, latency_ms: f64) {
    let config = PLANNING.with(|p| {
        p.borrow()
            .as_ref()
            .filter(|held| held.generation == generation)
            .map(|held| held.config.clone())
    });
    if let Some(config) = config {
        guard::count(&config, slot as usize, status, latency_ms as u64);
    }
}

/// Does what a request needs before it can be planned, and serves what is not forwarded: reads
/// the config source if it is due, waits for the guard's state or sends its batch if due, and
/// answers an admin request. The admin answer, or `undefined` when the request is to be
/// planned (with `force`).
#[wasm_bindgen]
pub async fn rollout_prepare(
    req: web_sys::Request,
    env: Env,
    ctx: worker::worker_sys::Context,
) -> std::result::Result<JsValue, JsValue> {
    let ctx = Context::new(ctx);
    let settings = SETTINGS.with(|s| s.get_or_init(|| Rc::new(Settings::from_env(&env))).clone());
    let url = req.url();
    let (_, path) = authority_and_path(&url);
    let config = source::config(&env, &settings).await;
    if admin::is_admin(&settings, path) {
        // An error is the entry's to log and answer (500), as any other.
        return admin::serve(Request::from(req), &env, &settings, path, config)
            .await
            .map(|response| web_sys::Response::from(response).into())
            .map_err(|e| JsValue::from_str(&e.to_string()));
    }
    let now = Date::now().as_millis();
    if let Some(config) = source::held(&settings, now, true) {
        guard::sync_if_due(&env, &ctx, &settings, &config).await;
    }
    Ok(JsValue::UNDEFINED)
}

/// `future`'s output, or `None` if it takes longer than `ms`: the bound on every wait for the
/// Durable Object (the guard's batches, the config read from it).
pub(crate) async fn within<F: Future>(ms: u64, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut delay = std::pin::pin!(Delay::from(Duration::from_millis(ms)));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        delay.as_mut().poll(cx).map(|()| None)
    })
    .await
}
