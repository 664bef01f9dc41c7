//! The Cloudflare Worker: the same decision core at the edge. A request comes in, the Worker
//! decides version and flags exactly as the Envoy filter does, forwards the request to that
//! version's origin with the header contract, and returns the origin's response with the
//! contract's response headers.
//!
//! The Worker's entry is JavaScript (`src/entry.mjs`): it forwards every request itself and
//! calls this module synchronously to plan it ([`rollout_ready`], [`rollout_plan`]), and
//! asynchronously ([`rollout_prepare`]) only when the config source must be read, the guard's
//! state waited for or its batch sent, or an admin request served. A request with nothing due
//! (nearly all of them) so costs a few calls with strings in and out, not a promise and an
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
use wasm_bindgen::{JsError, JsValue, prelude::wasm_bindgen};
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

/// The headers the Worker reads besides the config's: how it forwards (see [`plan`]).
const FORWARDING_HEADERS: [&str; 2] = ["host", "x-forwarded-proto"];

/// The request as the core sees it: the headers it reads, lowercase (`lines` as
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

/// The request path's view of the config in force: the config, its generation (which the
/// entry's plans and counts name, so that neither applies to a config that replaced it) and
/// the request headers read under it.
struct Planning {
    config: Rc<Config>,
    generation: u32,
    names: Rc<str>,
}

thread_local! {
    static PLANNING: std::cell::RefCell<Option<Planning>> = const { std::cell::RefCell::new(None) };
}

fn settings() -> Option<Rc<Settings>> {
    SETTINGS.with(|s| s.get().cloned())
}

/// Whether a request can be planned at `now_ms` without I/O: the generation of the config to
/// plan with (never 0), or 0 if [`rollout_prepare`] must run first (no settings yet, the config
/// source is due to be read, or the guard's wait or batch is due). With `force`, after
/// [`rollout_prepare`], whatever is held is planned with.
#[wasm_bindgen]
pub fn rollout_ready(now_ms: f64, force: bool) -> u32 {
    let Some(settings) = settings() else { return 0 };
    let now = now_ms as u64;
    let Some(config) = source::held(&settings, now, force) else {
        return 0;
    };
    if !force && guard::due(&settings, &config, now) {
        return 0;
    }
    PLANNING.with(|p| {
        let mut p = p.borrow_mut();
        if let Some(held) = p.as_ref()
            && Rc::ptr_eq(&held.config, &config)
        {
            return held.generation;
        }
        let generation = p
            .as_ref()
            .map_or(1, |held| held.generation.wrapping_add(1).max(1));
        *p = Some(Planning {
            names: read_names(&config),
            config,
            generation,
        });
        generation
    })
}

/// The request headers a plan of `generation` reads (lowercase, newline-separated): the
/// config's [`Config::request_headers`] and `FORWARDING_HEADERS`; empty if `generation` is
/// not the one in force.
#[wasm_bindgen]
pub fn rollout_read_names(generation: u32) -> String {
    PLANNING.with(|p| {
        p.borrow()
            .as_ref()
            .filter(|held| held.generation == generation)
            .map_or_else(String::new, |held| held.names.to_string())
    })
}

/// The config of `generation`, if it is still the one in force.
fn planned(generation: u32) -> Option<Rc<Config>> {
    PLANNING.with(|p| {
        p.borrow()
            .as_ref()
            .filter(|held| held.generation == generation)
            .map(|held| held.config.clone())
    })
}

/// The headers [`rollout_read_names`] lists, sorted, without repeats.
fn read_names(config: &Config) -> Rc<str> {
    let mut names = config.request_headers();
    names.extend(FORWARDING_HEADERS.map(str::to_owned));
    names.sort_unstable();
    names.dedup();
    names.join("\n").into()
}

/// Decides a request with the config of `generation` and says how to forward it: the request
/// as `method` and the runtime's absolute `url`, with the values of the headers
/// [`rollout_read_names`] listed as `lines` (`name,value` per line). Empty if `generation` is
/// no longer in force or the request is for the admin endpoints: [`rollout_prepare`] then
/// serves it. Otherwise NUL-ended fields, in this order (`src/entry.mjs` reads them):
///
/// origin key, its ROLLOUT_ORIGINS entry, the origin, the upstream URL (empty if no origin is
/// configured), the origin timeout in ms, the slot whose response the guard counts (empty if
/// none), rollout, version, flags header value and override token status (for the data
/// point); then three lists of header edits (see `headers::Edits`): the upstream request's,
/// those only an origin's response gets (its own version and reason headers dropped when
/// nothing was decided), and the response contract's, which a reply of the Worker's own gets
/// too.
///
/// An error (a NUL in a header name or value) fails the request.
#[wasm_bindgen]
pub fn rollout_plan(
    generation: u32,
    method: &str,
    url: &str,
    lines: &str,
    now_ms: f64,
) -> std::result::Result<String, JsError> {
    let (Some(settings), Some(config)) = (settings(), planned(generation)) else {
        return Ok(String::new());
    };
    if admin::is_admin(&settings, authority_and_path(url).1) {
        return Ok(String::new());
    }
    plan(&settings, &config, method, url, lines, now_ms as u64).map_err(|e| JsError::new(&e))
}

fn plan(
    settings: &Settings,
    config: &Rc<Config>,
    method: &str,
    url: &str,
    lines: &str,
    now: u64,
) -> std::result::Result<String, String> {
    let (authority, path) = authority_and_path(url);
    let facts = facts(method, authority, path, lines);
    // Schedules and token expiry read the time; the guard's trips come from the rollouts'
    // Durable Objects. A keyless user is given a key (the config's `assign`) by the core, with
    // this entropy.
    let tripped = guard::trips(settings, config);
    let decision = config.decide(
        facts.as_slice(),
        HostInputs {
            entropy: Some(&mut random_u64),
            now_ms: Some(now),
            tripped: &tripped,
        },
    );
    let origin_key = decision.rollout.map_or_else(
        || "default".to_owned(),
        |r| format!("{}/{}", r.rollout, r.version),
    );
    // The ROLLOUT_ORIGINS entry used, for logs that name it.
    let found = settings
        .origins
        .get_key_value(&origin_key)
        .or_else(|| settings.origins.get_key_value("default"));
    let (entry, origin, upstream_url) = match found {
        Some((entry, origin)) => (
            entry.as_str(),
            origin.as_str(),
            format!("{}{path}", origin.trim_end_matches('/')),
        ),
        None => {
            console_error!("rollout: no origin for {origin_key} in ROLLOUT_ORIGINS");
            ("", "", String::new())
        }
    };
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
    for field in [
        origin_key.as_str(),
        entry,
        origin,
        &upstream_url,
        &settings.origin_timeout_ms.to_string(),
        &slot.map(|s| s.to_string()).unwrap_or_default(),
        rollout,
        version,
        &flags,
        token,
    ] {
        if field.contains('\0') {
            return Err(format!("NUL in a plan's field {field:?}"));
        }
        out.push_str(field);
        out.push('\0');
    }

    // The upstream request: everything as the client sent it, with the header contract applied
    // by the core (client copies of contract headers removed, the decision's values set).
    let mut request = Edits::default();
    if facts.iter().any(|(name, _)| *name == "host") {
        rollout_core::HeaderMapMut::remove(&mut request, "host");
    }
    // What a proxy forwards: the origin sees its own host in `Host`, so the client's goes in
    // X-Forwarded-Host (replacing a client's copy); Cloudflare sets X-Forwarded-Proto on the
    // way in, and where it did not (wrangler dev), the URL's scheme is it.
    rollout_core::HeaderMapMut::replace(&mut request, "x-forwarded-host", authority);
    if !facts.iter().any(|(name, _)| *name == "x-forwarded-proto") {
        let scheme = url.split_once("://").map_or("https", |(scheme, _)| scheme);
        rollout_core::HeaderMapMut::replace(&mut request, "x-forwarded-proto", scheme);
    }
    config.apply_request_contract(&decision, facts.as_slice(), &mut request);
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

/// Counts a response of `slot` for the guard, if the config of `generation` is still in
/// force.
#[wasm_bindgen]
pub fn rollout_observe(generation: u32, slot: u32, status: u16, latency_ms: f64) {
    if let Some(config) = planned(generation) {
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
