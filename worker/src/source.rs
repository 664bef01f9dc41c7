//! Where the isolate's config comes from, read again once the held config is older than
//! `ROLLOUT_CONFIG_TTL_MS`: a KV namespace bound as `ROLLOUT_CONFIG` (the default), or, with
//! `ROLLOUT_CONFIG_SOURCE = "durable_object"`, the `config` instance of the Durable Object
//! [`crate::state::RolloutState`]. KV takes up to a minute to reach every location; the
//! object is one strongly consistent copy, so a change reaches every isolate within the hold
//! time and one round trip.

use std::cell::RefCell;
use std::rc::Rc;

use rollout_core::{Config, MAX_CONFIG_BYTES};
use worker::{Date, Env, Method, Request, RequestInit, console_error, console_log, console_warn};

use crate::guard::STATE_BINDING;
use crate::settings::{KEYS_BINDING, Settings};
use crate::state::SERIAL_HEADER;
use crate::within;

/// The KV namespace binding that holds the rollout config.
pub(crate) const KV_BINDING: &str = "ROLLOUT_CONFIG";
/// How long an isolate without any config waits for the Durable Object: every request waits
/// for its first config anyway, as for a KV read.
pub(crate) const FIRST_READ_WAIT_MS: u64 = 5_000;

/// The config in force in this isolate, and when its source was last read.
#[derive(Default)]
struct Cache {
    config: Option<Rc<Config>>,
    /// The text the config was parsed from, so an unchanged value is not parsed again.
    text: Option<String>,
    /// The Durable Object's serial of that text: the object answers `304` while it holds no
    /// newer one.
    serial: Option<String>,
    read_at_ms: Option<u64>,
    /// The config decided with while there is none, made once.
    empty: Option<Rc<Config>>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// What a read of the source gave.
pub(crate) enum Read {
    /// The config text, with the object's serial.
    Text(String, Option<String>),
    /// The object holds nothing newer than the isolate's serial.
    Unchanged,
    /// The source holds no config.
    Missing,
    /// The source could not be read.
    Failed(String),
}

impl Settings {
    /// The source, as logs name it.
    pub(crate) fn source_name(&self) -> String {
        if self.config_from_state {
            format!("Durable Object {STATE_BINDING} (config)")
        } else {
            format!("KV key {}", self.kv_key)
        }
    }
}

/// Reads the config text from the source in use.
pub(crate) async fn read(
    env: &Env,
    settings: &Settings,
    serial: Option<String>,
    wait_ms: u64,
) -> Read {
    if settings.config_from_state {
        return within(wait_ms, read_state(env, serial))
            .await
            .unwrap_or_else(|| Read::Failed(format!("no answer within {wait_ms} ms")));
    }
    match env.kv(KV_BINDING) {
        Ok(kv) => match kv.get(&settings.kv_key).text().await {
            Ok(Some(text)) => Read::Text(text, None),
            Ok(None) => Read::Missing,
            Err(e) => Read::Failed(e.to_string()),
        },
        Err(e) => Read::Failed(e.to_string()),
    }
}

async fn read_state(env: &Env, serial: Option<String>) -> Read {
    let result = async {
        let stub = env.durable_object(STATE_BINDING)?.get_by_name("config")?;
        let mut init = RequestInit::new();
        init.with_method(Method::Get);
        let request = Request::new_with_init("https://rollout-state/config", &init)?;
        if let Some(serial) = &serial {
            request.headers().set(SERIAL_HEADER, serial)?;
        }
        let mut response = stub.fetch_with_request(request).await?;
        let read = match response.status_code() {
            200 => Read::Text(
                response.text().await?,
                response.headers().get(SERIAL_HEADER)?,
            ),
            304 => Read::Unchanged,
            404 => Read::Missing,
            status => Read::Failed(format!("status {status}: {}", response.text().await?)),
        };
        worker::Result::Ok(read)
    };
    result
        .await
        .unwrap_or_else(|e: worker::Error| Read::Failed(e.to_string()))
}

/// The config to decide with, if the source need not be read first (the held config is not
/// older than the TTL), or with `force` whatever is held: the config in force, else the
/// fallback, else an empty config (which still removes client copies of the contract headers
/// and sends everything to the default origin). The same object while nothing changes.
pub(crate) fn held(settings: &Settings, now: u64, force: bool) -> Option<Rc<Config>> {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let fresh = c
            .read_at_ms
            .is_some_and(|at| now.saturating_sub(at) < settings.ttl_ms);
        if !(fresh || force) {
            return None;
        }
        let config = c.config.clone().or_else(|| settings.fallback.clone());
        Some(config.unwrap_or_else(|| {
            c.empty
                .get_or_insert_with(|| Rc::new(Config::empty()))
                .clone()
        }))
    })
}

/// The config in force, reading the source if the held one is older than the TTL. A value
/// that fails validation is logged with every error path and never replaces the config in
/// force; a missing value or a read error keeps it too. Until the source gives a good one,
/// the fallback (`ROLLOUT_FALLBACK_CONFIG`) is in force, if set.
pub(crate) async fn config(env: &Env, settings: &Settings) -> Option<Rc<Config>> {
    let now = Date::now().as_millis();
    let (fresh, serial, cold) = CACHE.with(|c| {
        let c = c.borrow();
        let fresh = c
            .read_at_ms
            .is_some_and(|at| now.saturating_sub(at) < settings.ttl_ms);
        (fresh, c.serial.clone(), c.config.is_none())
    });
    if fresh {
        return CACHE.with(|c| {
            c.borrow()
                .config
                .clone()
                .or_else(|| settings.fallback.clone())
        });
    }
    let wait_ms = if cold {
        FIRST_READ_WAIT_MS
    } else {
        settings.state_wait_ms
    };
    let read = read(env, settings, serial, wait_ms).await;
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.read_at_ms = Some(now);
        match read {
            Read::Unchanged => {}
            Read::Text(text, _) if c.text.as_deref() == Some(text.as_str()) => {}
            Read::Text(text, _) if text.len() > MAX_CONFIG_BYTES => console_error!(
                "rollout: config of {} bytes from {} is over {MAX_CONFIG_BYTES}; {}",
                text.len(),
                settings.source_name(),
                in_force(c.config.is_some(), settings)
            ),
            Read::Text(text, serial) => match Config::from_json(text.as_bytes()) {
                Ok(mut config) => {
                    console_log!("rollout: config loaded from {}", settings.source_name());
                    install_keys(&mut config, settings);
                    if !settings.has_state
                        && let Some(g) = config.guarded().next()
                    {
                        console_warn!(
                            "rollout: rollouts.{}.guard is not judged: the Durable Object \
                             binding {STATE_BINDING} is missing (see wrangler.toml)",
                            g.rollout
                        );
                    }
                    c.config = Some(Rc::new(config));
                    c.text = Some(text);
                    c.serial = serial;
                }
                Err(errors) => {
                    for line in errors.lines("rollout: config rejected: ") {
                        console_error!("{line}");
                    }
                    console_error!(
                        "rollout: config rejected with {} error(s); {}",
                        errors.len(),
                        in_force(c.config.is_some(), settings)
                    );
                }
            },
            Read::Missing => console_warn!(
                "rollout: {} holds no config; {}",
                settings.source_name(),
                in_force(c.config.is_some(), settings)
            ),
            Read::Failed(e) => console_warn!(
                "rollout: cannot read {} ({e}); {}",
                settings.source_name(),
                in_force(c.config.is_some(), settings)
            ),
        }
        c.config.clone().or_else(|| settings.fallback.clone())
    })
}

/// What stays in force after a read that gave no good config, as the log says it.
fn in_force(held: bool, settings: &Settings) -> &'static str {
    match (held, settings.fallback.is_some()) {
        (true, _) => "keeping the config in force",
        (false, true) => {
            "no config from it yet: the fallback (ROLLOUT_FALLBACK_CONFIG) is in force"
        }
        (false, false) => {
            "no config is in force: requests go undecided to the default origin (set \
             ROLLOUT_FALLBACK_CONFIG for a config to serve on meanwhile)"
        }
    }
}

/// Gives a parsed config the secret's override keys and no others.
pub(crate) fn install_keys(config: &mut Config, settings: &Settings) {
    // Keys in the config are not used: anyone who can read the namespace (any account member
    // or API token with KV access) could mint tokens with them. A Worker secret cannot be
    // read back once put.
    if !config.override_keys().is_empty() {
        console_error!(
            "rollout: config overrides.keys is ignored: secrets do not belong in KV, where \
             anyone who can read the namespace reads them; put them in the secret \
             {KEYS_BINDING} (wrangler secret put {KEYS_BINDING})"
        );
    }
    if config.set_override_keys(settings.override_keys.clone()) && settings.override_keys.is_empty()
    {
        console_warn!(
            "rollout: config overrides reads tokens but the secret {KEYS_BINDING} holds no \
             usable key: no override token is valid"
        );
    }
}
