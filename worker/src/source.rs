//! Where the isolate's config comes from: a KV namespace bound as `ROLLOUT_CONFIG`, read again
//! once the held config is older than `ROLLOUT_CONFIG_TTL_MS`.

use std::cell::RefCell;
use std::rc::Rc;

use rollout_core::Config;
use worker::{Date, Env, console_error, console_log, console_warn};

use crate::settings::{KEYS_BINDING, Settings};

/// The KV namespace binding that holds the rollout config.
const KV_BINDING: &str = "ROLLOUT_CONFIG";

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
}

/// The config in force, reading KV if the held one is older than the TTL. A value that fails
/// validation is logged with every error path and never replaces the config in force; a
/// missing key or a KV error keeps it too.
pub(crate) async fn config(env: &Env, settings: &Settings) -> Option<Rc<Config>> {
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
