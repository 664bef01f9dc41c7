//! Lowering of the two ways in besides the hash: `overrides` (where signed tester tokens are
//! carried and the keys that sign them) and `assign` (the cookie a keyless user is given a
//! key in).

use crate::json::Value;

use super::walk::{Walk, is_cookie_name, is_header_name, is_name, json_type};
use super::{Assign, Overrides, Source};
use crate::error::ErrorKind;
use crate::token::MIN_SECRET_BYTES;

/// The override header when the config names neither a header nor a cookie.
pub const DEFAULT_OVERRIDE_HEADER: &str = "x-rollout-override";
/// A year: the assigned cookie's default lifetime.
const DEFAULT_MAX_AGE_S: u64 = 365 * 86_400;

impl Walk {
    pub(super) fn overrides(&mut self, value: &Value) -> Option<Overrides> {
        let map = self.object(value, &["header", "cookie", "keys"])?;
        let errors_before = self.errors.len();
        let mut out = Overrides {
            header: None,
            cookie: None,
            keys: Vec::new(),
        };
        if let Some(v) = map.get("header") {
            self.at_key("header", |w| {
                let name = w.string(v)?;
                if is_header_name(name) {
                    out.header = Some(name.to_owned());
                } else {
                    w.error(ErrorKind::BadHeaderName {
                        name: name.to_owned(),
                    });
                }
                Some(())
            });
        }
        if let Some(v) = map.get("cookie") {
            self.at_key("cookie", |w| {
                let name = w.string(v)?;
                if is_cookie_name(name) {
                    out.cookie = Some(name.to_owned());
                } else {
                    w.error(ErrorKind::BadHeaderName {
                        name: name.to_owned(),
                    });
                }
                Some(())
            });
        }
        if !map.contains_key("header") && !map.contains_key("cookie") {
            out.header = Some(DEFAULT_OVERRIDE_HEADER.to_owned());
        }
        if let Some(v) = map.get("keys") {
            out.keys = self.at_key("keys", |w| w.key_map(v));
        }
        (self.errors.len() == errors_before).then_some(out)
    }

    /// Key id -> secret: every good entry, each bad one reported by its id.
    pub(super) fn key_map(&mut self, value: &Value) -> Vec<(String, Vec<u8>)> {
        let mut keys = Vec::new();
        let Some(map) = value.as_object() else {
            self.error(ErrorKind::WrongType {
                expected: "an object of key id to secret",
                found: json_type(value),
            });
            return keys;
        };
        for (id, secret) in map {
            self.at_key(id, |w| {
                if !is_name(id) {
                    w.error(ErrorKind::BadName { name: id.clone() });
                    return;
                }
                let Some(secret) = w.string(secret) else {
                    return;
                };
                if secret.len() < MIN_SECRET_BYTES {
                    w.error(ErrorKind::OutOfRange {
                        expected: "a secret of at least 32 bytes",
                        found: format!("{} bytes", secret.len()),
                    });
                    return;
                }
                keys.push((id.clone(), secret.as_bytes().to_vec()));
            });
        }
        keys
    }

    pub(super) fn assign(&mut self, value: &Value, user_key: &[Source]) -> Option<Assign> {
        let map = self.object(value, &["cookie", "max_age", "secure"])?;
        let errors_before = self.errors.len();
        let mut out = Assign {
            cookie: String::new(),
            max_age_s: DEFAULT_MAX_AGE_S,
            secure: false,
        };
        if let Some(v) = self.required(map, "cookie") {
            self.at_key("cookie", |w| {
                let name = w.string(v)?;
                if !is_cookie_name(name) {
                    w.error(ErrorKind::BadHeaderName {
                        name: name.to_owned(),
                    });
                } else if !user_key.contains(&Source::Cookie(name.to_owned())) {
                    // The assigned key must be read back on the next request.
                    w.error(ErrorKind::UnknownReference {
                        name: format!("cookie:{name}"),
                        what: "user_key source",
                    });
                } else {
                    out.cookie = name.to_owned();
                }
                Some(())
            });
        }
        if let Some(v) = map.get("max_age") {
            self.at_key("max_age", |w| {
                let text = w.string(v)?;
                match crate::schedule::parse_duration(text) {
                    Some(ms) if ms >= 1_000 => out.max_age_s = ms / 1_000,
                    _ => w.error(ErrorKind::BadOperand {
                        expected: "a duration of at least 1s (30s, 10m, 1h, 365d)",
                        found: format!("{text:?}"),
                    }),
                }
                Some(())
            });
        }
        if let Some(v) = map.get("secure")
            && let Some(b) = self.at_key("secure", |w| w.boolean(v))
        {
            out.secure = b;
        }
        (self.errors.len() == errors_before).then_some(out)
    }
}
