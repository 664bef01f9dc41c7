//! The Cloudflare Worker: the same decision core at the edge. A request comes in, the Worker
//! decides version and flags exactly as the Envoy filter does, forwards the request to that
//! version's origin with the header contract, and returns the origin's response with the
//! contract's response headers.
//!
//! Settings come from Worker vars (see `wrangler.toml`); the rollout config comes from a KV
//! namespace bound as `ROLLOUT_CONFIG`, held in the isolate for `ROLLOUT_CONFIG_TTL_MS`; the
//! keys that sign tester override tokens come from the secret `ROLLOUT_OVERRIDE_KEYS`.

mod admin;
mod analytics;
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
use wasm_bindgen::{JsCast, JsValue, prelude::wasm_bindgen};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{
    AbortController, Context, Date, Delay, Env, Headers, Request, Response, Result, console_error,
    event, js_sys, worker_sys::web_sys,
};

use crate::analytics::record;
use crate::headers::WorkerHeaders;
use crate::settings::Settings;

#[wasm_bindgen]
extern "C" {
    /// The runtime's global `fetch`, called with the request alone.
    #[wasm_bindgen(js_name = fetch)]
    fn global_fetch(request: &web_sys::Request) -> js_sys::Promise;
}

thread_local! {
    /// Vars do not change within an isolate: parse them (ROLLOUT_ORIGINS is JSON) once.
    static SETTINGS: std::cell::OnceCell<Rc<Settings>> = const { std::cell::OnceCell::new() };
    /// The names [`read_names`] made, and the config they are for.
    static READ_NAMES: std::cell::RefCell<Option<(Rc<Config>, Rc<str>)>> =
        const { std::cell::RefCell::new(None) };
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

/// The headers the Worker reads besides the config's: how it forwards (see `handle`).
const FORWARDING_HEADERS: [&str; 2] = ["host", "x-forwarded-proto"];

/// The request headers read under `config`, newline-separated: the config's
/// [`Config::request_headers`] and [`FORWARDING_HEADERS`], computed once per config in force.
fn read_names(config: &Rc<Config>) -> Rc<str> {
    READ_NAMES.with(|cell| {
        let mut cached = cell.borrow_mut();
        if let Some((for_config, names)) = cached.as_ref()
            && Rc::ptr_eq(for_config, config)
        {
            return names.clone();
        }
        let mut names = config.request_headers();
        names.extend(FORWARDING_HEADERS.map(str::to_owned));
        names.sort_unstable();
        names.dedup();
        let names: Rc<str> = names.join("\n").into();
        *cached = Some((config.clone(), names.clone()));
        names
    })
}

/// The request as the core sees it: the headers it reads, lowercase (`lines` from
/// [`headers::read_lines`]), with Envoy's pseudo-headers made from the URL, so both hosts
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

// The request as the runtime's object: `worker::Request` would read its `cf` properties, which
// workerd parses from JSON text on every read, and this Worker never uses them.
#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, ctx: Context) -> Result<web_sys::Response> {
    match handle(req, &env, &ctx).await {
        Ok(response) => Ok(response),
        Err(e) => {
            console_error!("rollout: {e}");
            Response::error("rollout worker: internal error", 500).map(Into::into)
        }
    }
}

// The runtime's own `Response` out: the origin's response is passed on as the runtime's
// objects, not converted to a `worker::Response` and back (a body stream read out, a builder's
// init converted field by field).
async fn handle(req: web_sys::Request, env: &Env, ctx: &Context) -> Result<web_sys::Response> {
    let settings = SETTINGS.with(|s| s.get_or_init(|| Rc::new(Settings::from_env(env))).clone());
    let url = req.url();
    let (authority, path) = authority_and_path(&url);
    if admin::is_admin(&settings, path) {
        let config = source::config(env, &settings).await;
        return admin::serve(Request::from(req), env, &settings, path, config)
            .await
            .map(Into::into);
    }
    let config = match source::config(env, &settings).await {
        Some(config) => config,
        // No config was ever loaded: decide with an empty one, which still removes client
        // copies of the contract headers, and send everything to the default origin.
        None => Rc::new(Config::empty()),
    };
    let method = req.method();
    let request_headers = Headers(req.headers());
    let lines = headers::read_lines(&request_headers, &read_names(&config))?;
    let facts = facts(&method, authority, path, &lines);
    // Schedules and token expiry read the time; the guard's trips come from the rollouts'
    // Durable Objects. A keyless user is given a key (the config's `assign`) by the core, with
    // this entropy.
    let tripped = guard::tripped(env, ctx, &settings, &config).await;
    let decision = config.decide(
        facts.as_slice(),
        HostInputs {
            entropy: Some(&mut random_u64),
            now_ms: Some(Date::now().as_millis()),
            tripped: &tripped,
        },
    );
    let slot = decision.rollout.map(|r| r.slot);
    let target = decision
        .rollout
        .map(|r| format!("{}/{}", r.rollout, r.version));
    let origin_key = target.clone().unwrap_or_else(|| "default".to_owned());
    // The ROLLOUT_ORIGINS entry used, for logs that name it.
    let Some((entry, origin)) = settings
        .origins
        .get_key_value(&origin_key)
        .or_else(|| settings.origins.get_key_value("default"))
    else {
        console_error!("rollout: no origin for {origin_key} in ROLLOUT_ORIGINS");
        let body = format!("rollout worker: no origin configured for {origin_key}");
        return local_reply(&config, &decision, UNREACHABLE, body).map(Into::into);
    };

    // The upstream request: everything as the client sent it, with the header contract applied
    // by the core (client copies of contract headers removed, the decision's values set).
    // Copied by the runtime in one call, not a call per header; the fetch sets Host from the
    // URL.
    let mut headers = WorkerHeaders::copy_of(&request_headers);
    if facts.iter().any(|(name, _)| *name == "host") {
        rollout_core::HeaderMapMut::remove(&mut headers, "host");
    }
    // What a proxy forwards: the origin sees its own host in `Host`, so the client's goes in
    // X-Forwarded-Host (replacing a client's copy); Cloudflare sets X-Forwarded-Proto on the
    // way in, and where it did not (wrangler dev), the URL's scheme is it.
    rollout_core::HeaderMapMut::replace(&mut headers, "x-forwarded-host", authority);
    if !facts.iter().any(|(name, _)| *name == "x-forwarded-proto") {
        let scheme = url.split_once("://").map_or("https", |(scheme, _)| scheme);
        rollout_core::HeaderMapMut::replace(&mut headers, "x-forwarded-proto", scheme);
    }
    config.apply_request_contract(&decision, facts.as_slice(), &mut headers);
    let headers = headers.finish()?;
    // The flags header value, for the data point.
    let flags = decision.flags_header_value().unwrap_or_default();
    let upstream_url = format!("{}{path}", origin.trim_end_matches('/'));
    // The upstream request goes to the runtime as the runtime's own objects, built once and
    // fetched as is (what a JavaScript Worker does): `worker::Request` with a `worker::RequestInit`
    // converts its init field by field (reading the headers' keys to test for emptiness), and
    // `Fetch` calls `fetch(request, {signal})`, which makes the runtime build the request a
    // second time.
    // A silent origin would hold the request for as long as the client waits: bounded, and
    // aborted so the subrequest does not outlive the answer.
    let controller = AbortController::default();
    let signal = controller.signal();
    let init = web_sys::RequestInit::new();
    init.set_method(&method);
    init.set_headers(&headers.0);
    init.set_signal(Some(&*signal));
    if !matches!(method.as_str(), "GET" | "HEAD") {
        init.set_body(&req.body().map_or(JsValue::NULL, Into::into));
    }
    let upstream = match web_sys::Request::new_with_str_and_init(&upstream_url, &init) {
        Ok(upstream) => upstream,
        Err(e) => {
            let e = worker::Error::from(e);
            console_error!(
                "rollout: ROLLOUT_ORIGINS.{entry}: {origin:?} is not a usable origin URL ({e})"
            );
            let body = format!("rollout worker: no usable origin configured for {origin_key}");
            return local_reply(&config, &decision, UNREACHABLE, body).map(Into::into);
        }
    };
    let started = Date::now().as_millis();
    let fetch = async {
        let response = JsFuture::from(global_fetch(&upstream)).await?;
        Ok::<_, worker::Error>(response.dyn_into::<web_sys::Response>()?)
    };
    let failure = match within(settings.origin_timeout_ms, fetch).await {
        Some(Ok(response)) => Ok(response),
        Some(Err(e)) => {
            console_error!("rollout: origin {origin} for {origin_key} failed: {e}");
            Err((UNREACHABLE, "is unreachable".to_owned()))
        }
        None => {
            controller.abort();
            let ms = settings.origin_timeout_ms;
            console_error!(
                "rollout: origin {origin} for {origin_key} sent no response within {ms} ms \
                 (ROLLOUT_ORIGIN_TIMEOUT_MS)"
            );
            Err((TIMED_OUT, format!("did not answer within {ms} ms")))
        }
    };
    let response = match failure {
        Ok(response) => response,
        Err((status, what)) => {
            let latency_ms = Date::now().as_millis().saturating_sub(started);
            if let Some(slot) = slot {
                guard::count(&config, slot, status, latency_ms);
            }
            record(env, &decision, &flags, status, latency_ms);
            let body = format!("rollout worker: origin for {origin_key} {what}");
            return local_reply(&config, &decision, status, body).map(Into::into);
        }
    };
    let latency_ms = Date::now().as_millis().saturating_sub(started);
    let status = response.status();
    if let Some(slot) = slot {
        guard::count(&config, slot, status, latency_ms);
    }
    record(env, &decision, &flags, status, latency_ms);

    // Fetched responses have immutable headers: build the client's response on a copy.
    let mut out_headers = WorkerHeaders::copy_of(&Headers(response.headers()));
    if decision.rollout.is_none() {
        // Nothing decided (no rollout matched, or no config is in force): the origin's own
        // version and reason headers would read as the Worker's decision.
        let names = config.header_names();
        rollout_core::HeaderMapMut::remove(&mut out_headers, &names.version);
        rollout_core::HeaderMapMut::remove(&mut out_headers, &names.reason);
    }
    config.apply_response_contract(decision.response_plan(), &mut out_headers);
    let out_headers = out_headers.finish()?;
    let init = web_sys::ResponseInit::new();
    init.set_status(status);
    init.set_headers(&out_headers.0);
    Ok(web_sys::Response::new_with_opt_readable_stream_and_init(
        response.body().as_ref(),
        &init,
    )?)
}

/// The status of a request whose origin cannot be reached or is not configured: Envoy's for an
/// upstream it cannot connect to, so that both hosts answer a dead version alike.
const UNREACHABLE: u16 = 503;
/// The status of a request whose origin sent nothing within `ROLLOUT_ORIGIN_TIMEOUT_MS`:
/// Envoy's when its route timeout expires.
const TIMED_OUT: u16 = 504;

/// A reply of the Worker's own for a decided request that reached no origin (`status`
/// [`UNREACHABLE`] or [`TIMED_OUT`]), with the contract's response headers, so the client
/// still learns which version it was decided for (as from Envoy).
fn local_reply(
    config: &Config,
    decision: &rollout_core::Decision<'_>,
    status: u16,
    body: String,
) -> Result<Response> {
    let response = Response::error(body, status)?;
    let mut headers = WorkerHeaders::copy_of(response.headers());
    config.apply_response_contract(decision.response_plan(), &mut headers);
    Ok(response.with_headers(headers.finish()?))
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
