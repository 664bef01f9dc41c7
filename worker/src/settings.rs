//! The Worker's settings: vars and secrets, read once per isolate (vars do not change within
//! one).

use std::collections::HashMap;

use rollout_core::Config;
use worker::{Env, console_error, console_warn};

/// The secret binding with the override-token keys: a JSON object of key id to secret.
pub(crate) const KEYS_BINDING: &str = "ROLLOUT_OVERRIDE_KEYS";
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
}

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
