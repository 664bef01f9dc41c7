//! Where the rollout config comes from: inline plugin configuration, or a live source (any
//! HTTP server behind an Envoy cluster) polled with ETags by one VM and shared with every
//! other VM of the process through shared data.
//!
//! The plugin configuration is either a rollout config (static), or
//! `{"config_source": {...}, "fallback": {rollout config}, "override_keys": {id: secret}}`
//! (live). The fallback is in force until the first good config arrives from the source.
//! `override_keys` are merged into every config installed, so that token secrets need not
//! travel through the config source.

use rollout_core::Config;
use rollout_core::json::{self, Value};

use crate::host;

/// The fields of `config_source`.
const SOURCE_FIELDS: &[&str] = &[
    "cluster",
    "path",
    "authority",
    "poll_interval_ms",
    "timeout_ms",
    "long_poll_s",
];

/// The fields of the live form of the plugin configuration.
const LIVE_FIELDS: &[&str] = &["config_source", "fallback", "override_keys"];

/// Override-token keys: (key id, secret).
pub(crate) type OverrideKeys = Vec<(String, Vec<u8>)>;

/// The longest `long_poll_s`: five minutes. Longer holds save next to nothing more and only
/// delay noticing a source that stopped answering.
const MAX_LONG_POLL_S: u64 = 300;

/// A live config source: an HTTP GET through an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveSource {
    pub(crate) cluster: String,
    pub(crate) path: String,
    pub(crate) authority: String,
    /// How often the leader VM asks the source, with `If-None-Match`.
    pub(crate) poll_interval_ms: u64,
    pub(crate) timeout_ms: u64,
    /// How long a conditional poll asks the source to hold it (`Prefer: wait`), in seconds
    /// as RFC 7240 counts them; 0: plain polling.
    pub(crate) long_poll_s: u64,
}

/// The parsed plugin configuration.
pub(crate) enum PluginConfig {
    /// The rollout config itself.
    Static(Config),
    /// A live source, and the config in force until the source delivers a good one.
    Live {
        source: LiveSource,
        fallback: Config,
        /// Keys merged into every config installed, the fallback included (see
        /// [`merge_override_keys`]).
        override_keys: OverrideKeys,
    },
}

/// Parses the plugin configuration; on error, every problem as `path: message`.
pub(crate) fn parse_plugin_config(bytes: &[u8]) -> Result<PluginConfig, Vec<String>> {
    let lines = |errors: rollout_core::ConfigErrors, prefix: &str| -> Vec<String> {
        errors
            .iter()
            .map(|e| match (prefix.is_empty(), e.path.is_empty()) {
                (true, _) => e.to_string(),
                (false, true) => format!("{prefix}: {}", e.kind),
                (false, false) => format!("{prefix}.{}: {}", e.path, e.kind),
            })
            .collect()
    };
    let value = json::parse(bytes).map_err(|e| vec![e.to_string()])?;
    let Some(map) = value
        .as_object()
        .filter(|m| m.contains_key("config_source"))
    else {
        return Config::from_value(&value)
            .map(PluginConfig::Static)
            .map_err(|e| lines(e, ""));
    };
    let mut errors = Vec::new();
    for key in map.keys() {
        if !LIVE_FIELDS.contains(&key.as_str()) {
            errors.push(format!(
                "{key}: unknown field, expected one of: {}",
                LIVE_FIELDS.join(", ")
            ));
        }
    }
    let source = live_source(map.get("config_source"), &mut errors);
    let override_keys = map
        .get("override_keys")
        .map(|v| plugin_keys(v, &mut errors))
        .unwrap_or_default();
    let fallback = match map.get("fallback") {
        Some(v) => Config::from_value(v)
            .map_err(|e| errors.extend(lines(e, "fallback")))
            .ok(),
        None => Some(Config::empty()),
    };
    match (source, fallback) {
        (Some(source), Some(fallback)) if errors.is_empty() => Ok(PluginConfig::Live {
            source,
            fallback,
            override_keys,
        }),
        _ => Err(errors),
    }
}

/// Reads `override_keys` with the checks and wording of the config's `overrides.keys`.
fn plugin_keys(value: &Value, errors: &mut Vec<String>) -> OverrideKeys {
    let (keys, bad) = Config::read_override_keys(value, "override_keys");
    errors.extend(bad.iter().map(ToString::to_string));
    keys
}

/// Puts the plugin configuration's keys into a config that reads tokens: a plugin key replaces
/// the config's key of the same id, the config's other keys stay. A config without
/// `overrides` is left alone (it reads no tokens).
pub(crate) fn merge_override_keys(config: &mut Config, plugin: &[(String, Vec<u8>)]) {
    if plugin.is_empty() || !config.has_overrides() {
        return;
    }
    let mut keys: OverrideKeys = config
        .override_keys()
        .iter()
        .filter(|(id, _)| !plugin.iter().any(|(p, _)| p == id))
        .cloned()
        .collect();
    keys.extend(plugin.iter().cloned());
    config.set_override_keys(keys);
}

fn live_source(value: Option<&Value>, errors: &mut Vec<String>) -> Option<LiveSource> {
    let Some(map) = value.and_then(Value::as_object) else {
        errors.push("config_source: expected an object".to_owned());
        return None;
    };
    for key in map.keys() {
        if !SOURCE_FIELDS.contains(&key.as_str()) {
            errors.push(format!(
                "config_source.{key}: unknown field, expected one of: {}",
                SOURCE_FIELDS.join(", ")
            ));
        }
    }
    let mut text = |key: &str, required: bool| -> Option<String> {
        match map.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(_) => {
                errors.push(format!("config_source.{key}: expected a non-empty string"));
                None
            }
            None if required => {
                errors.push(format!("config_source.{key}: missing required field"));
                None
            }
            None => None,
        }
    };
    let cluster = text("cluster", true);
    let path = text("path", true);
    let authority = text("authority", false);
    let mut millis = |key: &str, default: u64, min: u64, max: u64| -> u64 {
        match map.get(key) {
            None => default,
            Some(v) => {
                match v.as_u64() {
                    Some(n) if (min..=max).contains(&n) => n,
                    _ => {
                        errors.push(format!("config_source.{key}: expected an integer from {min} to {max}, found {v}"));
                        default
                    }
                }
            }
        }
    };
    let poll_interval_ms = millis("poll_interval_ms", 1000, 10, 3_600_000);
    let timeout_ms = millis("timeout_ms", 2000, 10, 60_000);
    // Off by default: a source that honours it holds one connection per Envoy open, which
    // its operator should size for; a source that ignores it is polled as before either way.
    let long_poll_s = millis("long_poll_s", 0, 0, MAX_LONG_POLL_S);
    if let Some(path) = &path
        && !path.starts_with('/')
    {
        errors.push(format!(
            "config_source.path: expected a path starting with '/', found {path:?}"
        ));
    }
    let (cluster, path) = (cluster?, path?);
    Some(LiveSource {
        authority: authority.unwrap_or_else(|| cluster.clone()),
        cluster,
        path,
        poll_interval_ms,
        timeout_ms,
        long_poll_s,
    })
}

/// Why a call to the source's cluster could not even start, in words. Envoy answers
/// `proxy_http_call` with BadArgument (2) when it has no cluster of that name (the filter
/// always sends the pseudo-headers Envoy requires, the other cause): a mistyped
/// `config_source.cluster` passes `envoy --mode validate` and shows up only here, at run time.
pub(crate) fn call_failure(cluster: &str, status: host::HostError) -> String {
    match status {
        host::HostError(2) => format!(
            "Envoy has no cluster named {cluster:?} (config_source.cluster): add it to the \
             bootstrap's clusters or correct the name (host status 2, BadArgument)"
        ),
        host::HostError(n) => format!("cannot call cluster {cluster:?}: host status {n}"),
    }
}

/// The shared-data keys one live source uses; shared data is process-wide per VM id, so the
/// keys name the source to keep two filters with different sources apart.
pub(crate) struct SharedKeys {
    /// The published config: the ETag, a newline, then the body.
    pub(crate) config: String,
    /// The generation of the published config, as decimal text: cheap to poll every tick.
    pub(crate) generation: String,
    /// Which VM polls the source, and until when: `TOKEN EXPIRY_MS`.
    pub(crate) lease: String,
    /// Set once the source has answered for the first time (a config, or a definite
    /// failure), after any config was published: until then, requests wait.
    pub(crate) settled: String,
}

impl SharedKeys {
    pub(crate) fn new(source: &LiveSource) -> SharedKeys {
        let base = format!("rollout.{}{}", source.cluster, source.path);
        SharedKeys {
            config: format!("{base}.config"),
            generation: format!("{base}.generation"),
            lease: format!("{base}.lease"),
            settled: format!("{base}.settled"),
        }
    }

    /// The generation published so far (0 if none).
    pub(crate) fn generation(&self) -> u64 {
        match host::shared_data(&self.generation) {
            Ok((Some(bytes), _)) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            _ => 0,
        }
    }

    /// Whether some VM has seen the source's first answer.
    pub(crate) fn settled(&self) -> bool {
        matches!(host::shared_data(&self.settled), Ok((Some(_), _)))
    }

    /// Tells every VM that the source has answered; false if shared data refused it.
    pub(crate) fn mark_settled(&self) -> bool {
        host::set_shared_data(&self.settled, b"1", 0).is_ok()
    }

    /// The published (ETag, body).
    pub(crate) fn published(&self) -> Option<(String, Vec<u8>)> {
        let Ok((Some(bytes), _)) = host::shared_data(&self.config) else {
            return None;
        };
        let split = bytes.iter().position(|&b| b == b'\n')?;
        let etag = String::from_utf8_lossy(bytes.get(..split)?).into_owned();
        Some((etag, bytes.get(split + 1..)?.to_vec()))
    }

    /// Publishes a config for every VM: the body first, then the generation that announces it.
    pub(crate) fn publish(&self, etag: &str, body: &[u8], generation: u64) -> bool {
        let mut value = Vec::with_capacity(etag.len() + 1 + body.len());
        value.extend_from_slice(etag.as_bytes());
        value.push(b'\n');
        value.extend_from_slice(body);
        host::set_shared_data(&self.config, &value, 0).is_ok()
            && host::set_shared_data(&self.generation, generation.to_string().as_bytes(), 0).is_ok()
    }

    /// Takes or renews the polling lease for `token` until `until_ms`; false if another VM
    /// holds an unexpired lease or won the race (compare-and-swap).
    pub(crate) fn take_lease(&self, token: u64, now_ms: u64, until_ms: u64) -> bool {
        let (current, cas) = match host::shared_data(&self.lease) {
            Ok(found) => found,
            Err(_) => return false,
        };
        if let Some(bytes) = current {
            let (holder, expiry) = decode_lease(&bytes);
            if holder != Some(token) && expiry > now_ms {
                return false;
            }
        }
        let value = format!("{token} {until_ms}");
        // A zero CAS means "unconditional" to the host, so a first lease can only be raced
        // by another first lease; both then poll once, which is harmless.
        host::set_shared_data(&self.lease, value.as_bytes(), cas).is_ok()
    }

    /// Expires `token`'s lease at once, if it still holds it; the compare-and-swap leaves a
    /// lease another VM took meanwhile.
    pub(crate) fn release_lease(&self, token: u64) {
        let Ok((Some(bytes), cas)) = host::shared_data(&self.lease) else {
            return;
        };
        if decode_lease(&bytes).0 == Some(token) {
            let _ = host::set_shared_data(&self.lease, b"0 0", cas);
        }
    }
}

/// A lease's `TOKEN EXPIRY_MS`: the holder, if readable, and the expiry (0 if unreadable).
fn decode_lease(bytes: &[u8]) -> (Option<u64>, u64) {
    let text = String::from_utf8_lossy(bytes);
    let mut parts = text.split(' ');
    let holder = parts.next().and_then(|p| p.parse().ok());
    let expiry = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (holder, expiry)
}

#[cfg(test)]
mod tests {
    use super::{PluginConfig, call_failure, merge_override_keys, parse_plugin_config};
    use crate::host::HostError;
    use rollout_core::Config;

    const SECRET_A: &str = "plugin-secret-a-0123456789abcdef0";
    const SECRET_B: &str = "plugin-secret-b-0123456789abcdef0";

    fn errors(json: &str) -> Vec<String> {
        match parse_plugin_config(json.as_bytes()) {
            Ok(_) => Vec::new(),
            Err(errors) => errors,
        }
    }

    #[test]
    fn a_rollout_config_is_static() {
        let parsed = parse_plugin_config(br#"{"rollouts":{}}"#);
        assert!(matches!(parsed, Ok(PluginConfig::Static(_))));
    }

    #[test]
    fn a_config_source_gets_defaults_and_an_empty_fallback() {
        let Ok(PluginConfig::Live {
            source, fallback, ..
        }) = parse_plugin_config(br#"{"config_source":{"cluster":"cfg","path":"/r.json"}}"#)
        else {
            panic!("refused");
        };
        assert_eq!(source.authority, "cfg");
        assert_eq!((source.poll_interval_ms, source.timeout_ms), (1000, 2000));
        assert_eq!(
            source.long_poll_s, 0,
            "long-polling is off unless asked for"
        );
        assert_eq!(fallback.n_slots(), 0);
    }

    #[test]
    fn long_polling_is_read_in_seconds() {
        let Ok(PluginConfig::Live { source, .. }) = parse_plugin_config(
            br#"{"config_source":{"cluster":"c","path":"/r","long_poll_s":30}}"#,
        ) else {
            panic!("refused");
        };
        assert_eq!(source.long_poll_s, 30);
    }

    #[test]
    fn every_problem_of_a_live_config_is_named_with_its_path() {
        assert_eq!(
            errors(
                r#"{"config_source":{"path":"r.json","poll_interval_ms":5,"extra":1},
                   "fallback":{"rollouts":{"r":{"versions":[]}}},"other":1}"#
            ),
            [
                "other: unknown field, expected one of: config_source, fallback, override_keys",
                "config_source.extra: unknown field, expected one of: cluster, path, authority, poll_interval_ms, timeout_ms, long_poll_s",
                "config_source.cluster: missing required field",
                "config_source.poll_interval_ms: expected an integer from 10 to 3600000, found 5",
                "config_source.path: expected a path starting with '/', found \"r.json\"",
                "fallback.rollouts.r.versions: must not be empty",
            ]
        );
        assert_eq!(
            errors(r#"{"config_source":3}"#),
            ["config_source: expected an object"]
        );
        assert_eq!(
            errors(
                r#"{"config_source":{"cluster":"c","path":"/r","long_poll_s":301,"timeout_ms":"1"}}"#
            ),
            [
                "config_source.timeout_ms: expected an integer from 10 to 60000, found \"1\"",
                "config_source.long_poll_s: expected an integer from 0 to 300, found 301",
            ]
        );
        assert_eq!(
            errors(r#"{"config_source":{"cluster":"c","path":"/r","long_poll_s":-1}}"#),
            ["config_source.long_poll_s: expected an integer from 0 to 300, found -1"]
        );
        let syntax = errors("{nope");
        assert_eq!(syntax.len(), 1);
        assert!(syntax[0].contains("line 1"), "{syntax:?}");
    }

    #[test]
    fn override_keys_are_read_from_the_live_form() {
        let plugin = format!(
            r#"{{"config_source":{{"cluster":"c","path":"/r"}},"override_keys":{{"k1":"{SECRET_A}"}}}}"#
        );
        let Ok(PluginConfig::Live { override_keys, .. }) = parse_plugin_config(plugin.as_bytes())
        else {
            panic!("refused");
        };
        assert_eq!(
            override_keys,
            [("k1".to_owned(), SECRET_A.as_bytes().to_vec())]
        );
    }

    #[test]
    fn every_bad_override_key_is_named_with_its_path() {
        assert_eq!(
            errors(
                r#"{"config_source":{"cluster":"c","path":"/r"},
                   "override_keys":{"short":"too short","bad id":"0123456789abcdef0123456789abcdef","n":3}}"#
            ),
            [
                "override_keys.bad id: name \"bad id\" must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'",
                "override_keys.n: expected a string, found a number",
                "override_keys.short: expected a secret of at least 32 bytes, found 9 bytes",
            ]
        );
        assert_eq!(
            errors(r#"{"config_source":{"cluster":"c","path":"/r"},"override_keys":["k"]}"#),
            ["override_keys: expected an object of key id to secret, found an array"]
        );
    }

    #[test]
    fn plugin_keys_replace_same_id_keys_and_keep_the_others() {
        let source = format!(
            r#"{{"overrides":{{"keys":{{"k1":"{SECRET_B}","k2":"{SECRET_B}"}}}},"rollouts":{{}}}}"#
        );
        let mut config = Config::from_json(source.as_bytes()).unwrap();
        merge_override_keys(
            &mut config,
            &[
                ("k1".to_owned(), SECRET_A.as_bytes().to_vec()),
                ("k3".to_owned(), SECRET_A.as_bytes().to_vec()),
            ],
        );
        let mut keys = config.override_keys().to_vec();
        keys.sort();
        let key = |id: &str, s: &str| (id.to_owned(), s.as_bytes().to_vec());
        assert_eq!(
            keys,
            [
                key("k1", SECRET_A),
                key("k2", SECRET_B),
                key("k3", SECRET_A)
            ]
        );
        // A config that reads no tokens gets no keys.
        let mut plain = Config::from_json(br#"{"rollouts":{}}"#).unwrap();
        merge_override_keys(&mut plain, &[key("k1", SECRET_A)]);
        assert!(!plain.has_overrides() && plain.override_keys().is_empty());
    }

    #[test]
    fn an_unknown_cluster_is_named_in_words() {
        let words = call_failure("rollout-confg", HostError(2));
        assert!(
            words.starts_with(
                "Envoy has no cluster named \"rollout-confg\" (config_source.cluster)"
            ),
            "{words}"
        );
        assert!(!words.contains("HostError"), "{words}");
        let other = call_failure("rollout-config", HostError(10));
        assert_eq!(
            other,
            "cannot call cluster \"rollout-config\": host status 10"
        );
    }
}
