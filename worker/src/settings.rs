//! The Worker's settings: vars and secrets, read once per isolate (vars do not change within
//! one).

use std::collections::HashMap;
use std::rc::Rc;

use rollout_core::Config;
use worker::{Env, console_error, console_warn};

use crate::guard::STATE_BINDING;

/// The secret binding with the override-token keys: a JSON object of key id to secret.
pub(crate) const KEYS_BINDING: &str = "ROLLOUT_OVERRIDE_KEYS";
/// The var with the config in force until the source gives a good one.
pub(crate) const FALLBACK_VAR: &str = "ROLLOUT_FALLBACK_CONFIG";
/// The secret with the bearer token of the admin endpoints.
pub(crate) const ADMIN_TOKEN_BINDING: &str = "ROLLOUT_ADMIN_TOKEN";
/// The var the Worker once assigned user keys by; the config's `assign` does it now.
const OLD_ASSIGN_VAR: &str = "ROLLOUT_ASSIGN_COOKIE";

/// Worker settings, from vars.
pub(crate) struct Settings {
    pub(crate) kv_key: String,
    pub(crate) ttl_ms: u64,
    /// `rollout/version` (or `default`) to origin base URL.
    pub(crate) origins: HashMap<String, String>,
    /// The override-token keys (key id, secret), from [`KEYS_BINDING`]; every config parsed
    /// gets these and no others.
    pub(crate) override_keys: Vec<(String, Vec<u8>)>,
    /// Whether the Durable Object binding [`STATE_BINDING`] exists: without it no guard is
    /// judged (warned once) and the config can only come from KV.
    pub(crate) has_state: bool,
    /// Where the config comes from: KV, or the Durable Object (`ROLLOUT_CONFIG_SOURCE`).
    pub(crate) config_from_state: bool,
    /// How often an isolate sends its guard counts (`ROLLOUT_GUARD_SYNC_MS`), at least
    /// [`MIN_GUARD_SYNC_MS`] so that no isolate calls the object per request.
    pub(crate) guard_sync_ms: u64,
    /// How long a request may wait for the Durable Object (`ROLLOUT_STATE_WAIT_MS`).
    pub(crate) state_wait_ms: u64,
    /// How long a request waits for its origin's response headers
    /// (`ROLLOUT_ORIGIN_TIMEOUT_MS`, at least 1) before it is answered 504.
    pub(crate) origin_timeout_ms: u64,
    /// The bearer token of the admin endpoints (secret `ROLLOUT_ADMIN_TOKEN`); none: no
    /// admin endpoint, every path goes to the origins.
    pub(crate) admin_token: Option<String>,
    /// Where the admin endpoints are (`ROLLOUT_ADMIN_PATH`).
    pub(crate) admin_path: String,
    /// The config in force until the source gives a good one (`ROLLOUT_FALLBACK_CONFIG`),
    /// as Envoy's `fallback`; without it requests go undecided to the default origin.
    pub(crate) fallback: Option<Rc<Config>>,
}

/// The shortest interval between two guard batches of one isolate.
pub(crate) const MIN_GUARD_SYNC_MS: u64 = 100;

impl Settings {
    pub(crate) fn from_env(env: &Env) -> Settings {
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
        let number = |name: &str, default: u64| match var(name).map(|v| v.parse::<u64>()) {
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                console_error!("rollout: var {name} is not a whole number; using {default}");
                default
            }
            None => default,
        };
        let has_state = env.durable_object(STATE_BINDING).is_ok();
        let config_from_state = match var("ROLLOUT_CONFIG_SOURCE").as_deref() {
            None | Some("kv") => false,
            Some("durable_object") if has_state => true,
            Some("durable_object") => {
                console_error!(
                    "rollout: ROLLOUT_CONFIG_SOURCE is durable_object but the binding \
                     {STATE_BINDING} is missing; reading the config from KV"
                );
                false
            }
            Some(other) => {
                console_error!(
                    "rollout: ROLLOUT_CONFIG_SOURCE {other:?} is neither kv nor durable_object; \
                     reading the config from KV"
                );
                false
            }
        };
        let admin_token = env
            .secret(ADMIN_TOKEN_BINDING)
            .ok()
            .map(|s| s.to_string())
            .filter(|t| !t.is_empty());
        let admin_path = var("ROLLOUT_ADMIN_PATH").unwrap_or_else(|| "/__rollout".to_owned());
        let fallback =
            var(FALLBACK_VAR).and_then(|text| match Config::from_json(text.as_bytes()) {
                Ok(config) => Some(config),
                Err(errors) => {
                    for line in errors.lines(&format!("rollout: var {FALLBACK_VAR}: ")) {
                        console_error!("{line}");
                    }
                    console_error!("rollout: var {FALLBACK_VAR} rejected; there is no fallback");
                    None
                }
            });
        let mut settings = Settings {
            kv_key: var("ROLLOUT_CONFIG_KEY").unwrap_or_else(|| "rollout.json".to_owned()),
            ttl_ms: number("ROLLOUT_CONFIG_TTL_MS", 10_000),
            origins,
            override_keys,
            has_state,
            config_from_state,
            guard_sync_ms: number("ROLLOUT_GUARD_SYNC_MS", 1_000).max(MIN_GUARD_SYNC_MS),
            state_wait_ms: number("ROLLOUT_STATE_WAIT_MS", 100),
            // Envoy's default route timeout: both hosts give up on a silent origin alike.
            origin_timeout_ms: number("ROLLOUT_ORIGIN_TIMEOUT_MS", 15_000).max(1),
            admin_token,
            admin_path: admin_path.trim_end_matches('/').to_owned(),
            fallback: None,
        };
        settings.fallback = fallback.map(|mut config| {
            crate::source::install_keys(&mut config, &settings);
            Rc::new(config)
        });
        settings
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
