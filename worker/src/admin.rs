//! The admin endpoints, under `ROLLOUT_ADMIN_PATH` (default `/__rollout`) and only when the
//! secret `ROLLOUT_ADMIN_TOKEN` is set (without it every path goes to the origins):
//!
//! - `PUT  /__rollout/config`: validates a config and, with `ROLLOUT_CONFIG_SOURCE =
//!   "durable_object"`, stores it in the Durable Object; a config with errors is refused with
//!   every error path. With KV as the source it only checks (KV is written with wrangler).
//! - `GET  /__rollout/config`: the config text the source holds.
//! - `GET  /__rollout/status`: the config in force in the isolate that answers (each rollout's
//!   revision) and each guarded rollout's state as its Durable Object has it (the latch, the
//!   counts over its window).
//!
//! Every request needs `Authorization: Bearer <ROLLOUT_ADMIN_TOKEN>`.

use std::rc::Rc;

use rollout_core::Config;
use worker::{Env, Method, Request, RequestInit, Response, Result};

use crate::guard::STATE_BINDING;
use crate::settings::{ADMIN_TOKEN_BINDING, KEYS_BINDING, Settings};
use crate::source::{self, KV_BINDING, Read};
use crate::state::SERIAL_HEADER;

/// Whether `path` is one of the admin endpoints' (so not the origins').
pub(crate) fn is_admin(settings: &Settings, path: &str) -> bool {
    settings.admin_token.is_some()
        && path
            .strip_prefix(settings.admin_path.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?']))
}

/// Serves an admin request.
pub(crate) async fn serve(
    mut req: Request,
    env: &Env,
    settings: &Settings,
    path: &str,
    config: Option<Rc<Config>>,
) -> Result<Response> {
    let token = settings.admin_token.as_deref().unwrap_or_default();
    let given = req.headers().get("authorization")?.unwrap_or_default();
    if !same(given.strip_prefix("Bearer ").unwrap_or_default(), token) {
        let mut response = Response::error(
            format!(
                "rollout worker: this path needs Authorization: Bearer <{ADMIN_TOKEN_BINDING}>"
            ),
            401,
        )?;
        response.headers_mut().set("www-authenticate", "Bearer")?;
        return Ok(response);
    }
    let route = path
        .strip_prefix(settings.admin_path.as_str())
        .unwrap_or_default();
    let route = route.split_once('?').map_or(route, |(r, _)| r);
    match (req.method(), route) {
        (Method::Put, "/config") => {
            let text = req.text().await?;
            put_config(env, settings, text).await
        }
        (Method::Get, "/config") => get_config(env, settings).await,
        (Method::Get, "/status") => status(env, settings, config).await,
        _ => Response::error(
            "rollout worker: admin routes are PUT /config, GET /config and GET /status",
            404,
        ),
    }
}

/// Compares the tokens in time that does not depend on where they differ.
fn same(given: &str, token: &str) -> bool {
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn put_config(env: &Env, settings: &Settings, text: String) -> Result<Response> {
    let config = match Config::from_json(text.as_bytes()) {
        Ok(config) => config,
        Err(errors) => {
            let mut body = format!("config rejected with {} error(s):\n", errors.len());
            for line in errors.lines("") {
                body.push_str(&line);
                body.push('\n');
            }
            return Response::error(body, 400);
        }
    };
    if !config.override_keys().is_empty() {
        return Response::error(
            format!(
                "config rejected: overrides.keys: secrets do not belong in the config; put them \
                 in the secret {KEYS_BINDING} (wrangler secret put {KEYS_BINDING})\n"
            ),
            400,
        );
    }
    if !settings.config_from_state {
        // KV is written with wrangler (`wrangler kv key put`): this endpoint is the fast path.
        return Response::error(
            format!(
                "config checked, not stored: ROLLOUT_CONFIG_SOURCE is kv; put it with \
                 `wrangler kv key put --binding {KV_BINDING} {} --path FILE`, or set \
                 ROLLOUT_CONFIG_SOURCE = \"durable_object\" to put it here\n",
                settings.kv_key
            ),
            409,
        );
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Put).with_body(Some(text.into()));
    let request = Request::new_with_init("https://rollout-state/config", &init)?;
    let stub = env.durable_object(STATE_BINDING)?.get_by_name("config")?;
    let response = stub.fetch_with_request(request).await?;
    let serial = response.headers().get(SERIAL_HEADER)?.unwrap_or_default();
    Response::ok(format!(
        "config stored as serial {serial} in the Durable Object {STATE_BINDING}; every isolate \
         takes it up within {} ms\n",
        settings.ttl_ms
    ))
}

async fn get_config(env: &Env, settings: &Settings) -> Result<Response> {
    // The isolate's own read of the source, without its serial: the whole text.
    match source::read(env, settings, None, source::FIRST_READ_WAIT_MS).await {
        Read::Text(text, _) if !text.is_empty() => {
            let mut response = Response::ok(text)?;
            response
                .headers_mut()
                .set("content-type", "application/json")?;
            Ok(response)
        }
        Read::Failed(e) => Err(worker::Error::RustError(e)),
        Read::Text(..) | Read::Unchanged | Read::Missing => {
            Response::error(format!("{} holds no config", settings.source_name()), 404)
        }
    }
}

/// The isolate's config in force and the guards' states, as JSON: `{"source": ..., "rollouts":
/// {NAME: {"revision": HEX, "guard": {"latch": ..., "windows": [...]}}}}`.
async fn status(env: &Env, settings: &Settings, config: Option<Rc<Config>>) -> Result<Response> {
    // Written by hand: names hold no character JSON escapes, nor does the source's name.
    let mut out = format!(
        "{{\"source\":\"{}\",\"rollouts\":{{",
        settings.source_name()
    );
    let config = config.unwrap_or_else(|| Rc::new(Config::empty()));
    for (i, name) in config.rollout_names().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let revision = config.revision(name).unwrap_or_default();
        out.push_str(&format!("\"{name}\":{{\"revision\":\"{revision:016x}\""));
        if config.guarded().any(|g| g.rollout == name) {
            let stub = env
                .durable_object(STATE_BINDING)?
                .get_by_name(&format!("guard:{name}"))?;
            let mut response = stub
                .fetch_with_request(Request::new("https://rollout-state/guard", Method::Get)?)
                .await?;
            out.push_str(",\"guard\":");
            out.push_str(&response.text().await?);
        }
        out.push('}');
    }
    out.push_str("}}\n");
    let mut response = Response::ok(out)?;
    response
        .headers_mut()
        .set("content-type", "application/json")?;
    Ok(response)
}
