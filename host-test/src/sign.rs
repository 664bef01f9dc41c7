//! `rollout sign` and `rollout keygen`: minting signed override tokens for testers, and what
//! `rollout explain` shows of a token a request carries.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use rollout_core::token::{Claim, ClaimKind, Token};
use rollout_core::{
    Config, DEFAULT_OVERRIDE_HEADER, Decision, FlagReason, TokenStatus, VersionReason,
    cookie_value, format_time, parse_duration,
};

/// The environment variable `sign` reads the secret from when no `--secret-file` is given.
pub(crate) const SECRET_ENV: &str = "ROLLOUT_OVERRIDE_SECRET";
/// The longest `--ttl`: a token is a bearer credential that cannot be revoked alone (only by
/// removing its key, which revokes every token of that key), so a leaked one must not outlive
/// a test cycle by much.
const MAX_TTL_MS: u64 = 30 * 86_400_000;

/// The arguments of `rollout sign`. There is no flag for the secret itself: it would be kept
/// in the shell's history and shown by `ps`.
#[derive(clap::Args)]
pub(crate) struct SignArgs {
    /// Take the secret from this file (one trailing newline is dropped).
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
    /// The config the token is for: its `overrides.keys[<key id>]` is the secret when neither
    /// --secret-file nor $ROLLOUT_OVERRIDE_SECRET is given, every claim must name a rollout
    /// version or flag value it has, and it says how to send the token.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The key id the token names (default: the config's only key).
    #[arg(long, value_name = "ID")]
    key_id: Option<String>,
    /// A version to reach, `ROLLOUT=VERSION`; repeatable.
    #[arg(long = "version", value_name = "ROLLOUT=VERSION")]
    versions: Vec<String>,
    /// A flag value to get, `FLAG=VALUE`; repeatable.
    #[arg(long = "flag", value_name = "FLAG=VALUE")]
    flags: Vec<String>,
    /// How long the token is valid: 30s, 10m, 1h, 1d (at most 30d).
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    ttl: String,
    /// The time the token is valid from, RFC 3339; default: now.
    #[arg(long, value_name = "TIME")]
    pub(crate) at: Option<String>,
}

/// Where a config's hosts look for a token: the header first, then the cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Carriers {
    /// `overrides.header` (the default header when neither is given).
    pub(crate) header: Option<String>,
    /// `overrides.cookie`.
    pub(crate) cookie: Option<String>,
}

impl Carriers {
    /// The carriers a config names; `None` when it has no `overrides` (hosts read no tokens)
    /// or does not validate.
    pub(crate) fn of(bytes: &[u8]) -> Option<Carriers> {
        let config = rollout_core::Config::from_json(bytes).ok()?;
        let (header, cookie) = config.override_carriers()?;
        Some(Carriers {
            header: header.map(str::to_owned),
            cookie: cookie.map(str::to_owned),
        })
    }

    /// How to send a token, in words.
    fn how_to_send(&self) -> String {
        let header = self
            .header
            .as_deref()
            .map(|h| format!("in the header `{h}: <token>`"));
        let cookie = self
            .cookie
            .as_deref()
            .map(|c| format!("in the cookie `{c}=<token>`"));
        match (header, cookie) {
            (Some(h), Some(c)) => format!("{h} or {c}"),
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => "nowhere: the config reads no token".to_owned(),
        }
    }
}

/// `rollout sign`: prints the token alone on stdout, its expiry and how to send it on stderr.
pub(crate) fn sign(args: &SignArgs, now_ms: u64) -> Result<ExitCode> {
    let ttl_ms = parse_duration(&args.ttl)
        .with_context(|| format!("--ttl {:?} is not a duration (30s, 10m, 1h, 1d)", args.ttl))?;
    if ttl_ms < 1000 {
        bail!("--ttl {:?}: a token lives at least 1s", args.ttl);
    }
    if ttl_ms > MAX_TTL_MS {
        bail!(
            "--ttl {:?} is longer than 30d: a leaked token can only be revoked by removing its \
             key; sign a new one when it expires",
            args.ttl
        );
    }
    let mut claims = Vec::new();
    for (kind, list, flag) in [
        (ClaimKind::Version, &args.versions, "--version"),
        (ClaimKind::Flag, &args.flags, "--flag"),
    ] {
        for text in list {
            let Some((target, value)) = text.split_once('=') else {
                bail!("{flag} {text:?} is not NAME=VALUE");
            };
            if claims
                .iter()
                .any(|c: &Claim<'_>| c.kind == kind && c.target == target)
            {
                // The core takes the first claim for a target: a second would be ignored.
                bail!("{flag} {text:?}: {target} is claimed twice");
            }
            claims.push(Claim {
                kind,
                target,
                value,
            });
        }
    }
    if claims.is_empty() {
        bail!("give at least one --version ROLLOUT=VERSION or --flag FLAG=VALUE");
    }

    let config = match &args.config {
        Some(path) => Some(ConfigFile::read(path)?),
        None => None,
    };
    if let Some(config) = &config {
        config.check_claims(&claims)?;
    }
    let key_id = match (&args.key_id, &config) {
        (Some(id), _) => id.clone(),
        (None, Some(c)) => match c.config.override_keys() {
            [(id, _)] => id.clone(),
            [] => bail!("give --key-id: {} lists no overrides.keys", c.name),
            _ => bail!("give --key-id: {} lists several overrides.keys", c.name),
        },
        (None, None) => bail!("give --key-id (or --config with one key in overrides.keys)"),
    };
    let (secret, from) = secret(args.secret_file.as_deref(), &key_id, config.as_ref())?;

    let expires_s = now_ms.saturating_add(ttl_ms) / 1000;
    let token = rollout_core::token::sign(&key_id, &secret, expires_s, &claims)
        .map_err(|e| anyhow::anyhow!("{e} (secret from {from})"))?;
    println!("{token}");
    eprintln!(
        "expires {} ({} after {})",
        format_time(expires_s * 1000),
        args.ttl,
        format_time(now_ms)
    );
    let carriers = match &config {
        Some(c) => c.carriers.clone(),
        None => Carriers {
            header: Some(DEFAULT_OVERRIDE_HEADER.to_owned()),
            cookie: None,
        },
    };
    match &config {
        Some(c) => eprintln!("send it {} ({})", carriers.how_to_send(), c.name),
        None => eprintln!(
            "send it {} (the default; not checked against a config: give --config)",
            carriers.how_to_send()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// A config given to `sign`, validated.
struct ConfigFile {
    name: String,
    config: Config,
    carriers: Carriers,
}

impl ConfigFile {
    fn read(path: &Path) -> Result<ConfigFile> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).with_context(|| format!("reading {name}"))?;
        let config = match Config::from_json(&bytes) {
            Ok(config) => config,
            Err(errors) => {
                let lines: Vec<String> = errors.lines("  ").collect();
                bail!("{name}: {} error(s)\n{}", errors.len(), lines.join("\n"));
            }
        };
        let Some(carriers) = Carriers::of(&bytes) else {
            bail!("{name} has no `overrides`: its hosts ignore every token");
        };
        Ok(ConfigFile {
            name,
            config,
            carriers,
        })
    }

    /// Refuses a claim the config's hosts would ignore, naming what the config has instead.
    fn check_claims(&self, claims: &[Claim<'_>]) -> Result<()> {
        let name = &self.name;
        for c in claims {
            match c.kind {
                ClaimKind::Version => {
                    let versions: Vec<&str> = self
                        .config
                        .versions()
                        .filter(|(r, _)| *r == c.target)
                        .map(|(_, v)| v)
                        .collect();
                    if versions.is_empty() {
                        let rollouts: Vec<&str> = self.config.rollout_names().collect();
                        bail!(
                            "--version {}={}: {name} has no rollouts.{} (rollouts: {})",
                            c.target,
                            c.value,
                            c.target,
                            rollouts.join(", ")
                        );
                    }
                    if !versions.contains(&c.value) {
                        bail!(
                            "--version {}={}: rollouts.{}.versions has no {:?} in {name} \
                             (versions: {})",
                            c.target,
                            c.value,
                            c.target,
                            c.value,
                            versions.join(", ")
                        );
                    }
                }
                ClaimKind::Flag => {
                    let Some((_, values)) = self.config.flag_values().find(|(f, _)| *f == c.target)
                    else {
                        let flags: Vec<&str> = self.config.flag_values().map(|(f, _)| f).collect();
                        bail!(
                            "--flag {}={}: {name} has no flags.{} (flags: {})",
                            c.target,
                            c.value,
                            c.target,
                            flags.join(", ")
                        );
                    };
                    if !values.contains(&c.value) {
                        bail!(
                            "--flag {}={}: flags.{} has no value {:?} in {name} (values: {})",
                            c.target,
                            c.value,
                            c.target,
                            c.value,
                            values.join(", ")
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// The secret to sign with, and where it came from: `--secret-file`, else the environment,
/// else the config's key. With a config that lists keys, the key id must be one of them, and
/// a secret from elsewhere must be that key's (or the config's hosts would refuse the token).
fn secret(
    file: Option<&Path>,
    key_id: &str,
    config: Option<&ConfigFile>,
) -> Result<(Vec<u8>, String)> {
    let given = match (file, std::env::var_os(SECRET_ENV)) {
        (Some(path), _) => {
            let mut bytes = std::fs::read(path)
                .with_context(|| format!("reading --secret-file {}", path.display()))?;
            // A file written by `echo` or an editor ends in a newline that is no part of it.
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
                if bytes.last() == Some(&b'\r') {
                    bytes.pop();
                }
            }
            Some((bytes, format!("--secret-file {}", path.display())))
        }
        (None, Some(value)) => {
            let Some(text) = value.to_str() else {
                bail!("${SECRET_ENV} is not UTF-8");
            };
            Some((text.as_bytes().to_vec(), format!("${SECRET_ENV}")))
        }
        (None, None) => None,
    };
    let Some(config) = config else {
        return given.with_context(|| {
            format!("no secret: give --secret-file PATH, set ${SECRET_ENV}, or --config FILE")
        });
    };
    let keys = config.config.override_keys();
    let listed = keys.iter().find(|(id, _)| id == key_id).map(|(_, s)| s);
    match (given, listed) {
        (Some((bytes, from)), Some(secret)) if bytes != *secret => bail!(
            "the secret from {from} is not overrides.keys.{key_id} of {}: its hosts would \
             answer bad_signature",
            config.name
        ),
        (Some(given), _) if keys.is_empty() => Ok(given),
        (_, None) if !keys.is_empty() => {
            let ids: Vec<&str> = keys.iter().map(|(id, _)| id.as_str()).collect();
            bail!(
                "{} has no overrides.keys.{key_id} (keys: {}): its hosts would answer unknown_key",
                config.name,
                ids.join(", ")
            )
        }
        (Some(given), _) => Ok(given),
        (None, Some(secret)) => Ok((
            secret.clone(),
            format!("overrides.keys.{key_id} of {}", config.name),
        )),
        (None, None) => bail!(
            "no secret: {} lists no overrides.keys (its hosts supply them); give --secret-file \
             PATH or set ${SECRET_ENV}",
            config.name
        ),
    }
}

/// `rollout keygen`: a fresh secret, 32 bytes from the system's random source as base64url
/// (43 characters; hosts use the text's bytes as the key).
pub(crate) fn keygen() -> Result<ExitCode> {
    let mut bytes = [0u8; 32];
    let mut random =
        std::fs::File::open("/dev/urandom").context("opening /dev/urandom for a secret")?;
    std::io::Read::read_exact(&mut random, &mut bytes).context("reading /dev/urandom")?;
    println!("{}", base64url(&bytes));
    Ok(ExitCode::SUCCESS)
}

/// Base64url without padding.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..=chunk.len() {
            let idx = (n >> (18 - 6 * i)) & 63;
            out.push(char::from(
                ALPHABET.get(idx as usize).copied().unwrap_or(b'A'),
            ));
        }
    }
    out
}

/// What `explain` shows of the token a request carries.
#[derive(Debug, serde::Serialize)]
pub(crate) struct TokenView {
    /// `header NAME` or `cookie NAME`.
    pub(crate) carrier: String,
    /// The core's verdict.
    pub(crate) status: TokenStatus,
    /// The key id, when the token could be read.
    pub(crate) key_id: Option<String>,
    /// The expiry, RFC 3339, when the token could be read.
    pub(crate) expires: Option<String>,
    /// Each claim and what became of it.
    pub(crate) claims: Vec<ClaimView>,
}

/// One claim of a token and whether the decision followed it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct ClaimView {
    /// `version` or `flag`.
    pub(crate) kind: ClaimKind,
    /// The rollout or flag.
    pub(crate) target: String,
    /// The version or value.
    pub(crate) value: String,
    /// Whether the decision took it.
    pub(crate) applied: bool,
    /// Why not, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ignored: Option<String>,
}

/// The token `headers` carry where the config's hosts look for one, as the core read it;
/// `None` when the config reads no tokens or the request carries none.
pub(crate) fn token_view(
    config: &Config,
    bytes: &[u8],
    headers: &[(String, String)],
    decision: &Decision<'_>,
) -> Option<TokenView> {
    let status = decision.token?;
    let carriers = Carriers::of(bytes)?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    };
    // The core's order: the header, else the cookie.
    let (carrier, text) = carriers
        .header
        .as_deref()
        .and_then(|h| Some((format!("header {h}"), header(h)?)))
        .or_else(|| {
            let c = carriers.cookie.as_deref()?;
            Some((format!("cookie {c}"), cookie_value(header("cookie")?, c)?))
        })?;
    let token = Token::parse(text);
    let claims = token
        .iter()
        .flat_map(Token::claims)
        .map(|c| claim_view(config, decision, status, &c))
        .collect();
    Some(TokenView {
        carrier,
        status,
        key_id: token.as_ref().map(|t| t.key_id.to_owned()),
        expires: token
            .as_ref()
            .map(|t| format_time(t.expires_s.saturating_mul(1000))),
        claims,
    })
}

fn claim_view(
    config: &Config,
    decision: &Decision<'_>,
    status: TokenStatus,
    c: &Claim<'_>,
) -> ClaimView {
    let applied = status == TokenStatus::Valid
        && match c.kind {
            ClaimKind::Version => decision.rollout.is_some_and(|r| {
                r.reason == VersionReason::Override && r.rollout == c.target && r.version == c.value
            }),
            ClaimKind::Flag => decision.flags.iter().any(|f| {
                f.reason == FlagReason::Override && f.flag == c.target && f.value == c.value
            }),
        };
    let ignored = (!applied).then(|| {
        if status != TokenStatus::Valid {
            return format!("the token is {}", status.as_str().replace('_', " "));
        }
        match c.kind {
            ClaimKind::Version => {
                let mut versions = config.versions().filter(|(r, _)| *r == c.target);
                let mut rollout_known = false;
                let version_known = versions.any(|(_, v)| {
                    rollout_known = true;
                    v == c.value
                });
                if !rollout_known && config.rollout_names().all(|r| r != c.target) {
                    format!("the config has no rollout {}", c.target)
                } else if !version_known {
                    format!("rollout {} has no version {}", c.target, c.value)
                } else if decision.rollout.is_none_or(|r| r.rollout != c.target) {
                    format!("this request does not match rollout {}", c.target)
                } else {
                    format!("an earlier claim decided rollout {}", c.target)
                }
            }
            ClaimKind::Flag => match config.flag_values().find(|(f, _)| *f == c.target) {
                None => format!("the config has no flag {}", c.target),
                Some((_, values)) if !values.contains(&c.value) => {
                    format!("flag {} has no value {}", c.target, c.value)
                }
                Some(_) => format!("an earlier claim decided flag {}", c.target),
            },
        }
    });
    ClaimView {
        kind: c.kind,
        target: c.target.to_owned(),
        value: c.value.to_owned(),
        applied,
        ignored,
    }
}

/// `1h 5m`, `3d 2h`, `42s`: the two largest units of a span.
pub(crate) fn span_words(ms: u64) -> String {
    let s = ms / 1000;
    let parts = [
        (s / 86_400, "d"),
        (s / 3600 % 24, "h"),
        (s / 60 % 60, "m"),
        (s % 60, "s"),
    ];
    let words: Vec<String> = parts
        .iter()
        .skip_while(|(n, _)| *n == 0)
        .take(2)
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if words.is_empty() {
        "0s".to_owned()
    } else {
        words.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_of_32_bytes_is_43_characters_of_the_alphabet() {
        assert_eq!(base64url(b"\xfb\xff"), "-_8");
        assert_eq!(base64url(b"Man"), "TWFu");
        let text = base64url(&[0xa5; 32]);
        assert_eq!(text.len(), 43);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn spans_read_as_their_two_largest_units() {
        assert_eq!(span_words(0), "0s");
        assert_eq!(span_words(42_000), "42s");
        assert_eq!(span_words(3_600_000), "1h");
        assert_eq!(span_words(3_900_000 + 7_000), "1h 5m");
        assert_eq!(span_words(2 * 86_400_000 + 3_600_000 + 1000), "2d 1h");
    }

    #[test]
    fn carriers_default_to_the_header_only_when_neither_is_named() {
        assert_eq!(Carriers::of(br#"{"rollouts":{}}"#), None);
        assert_eq!(
            Carriers::of(br#"{"overrides":{}}"#),
            Some(Carriers {
                header: Some(DEFAULT_OVERRIDE_HEADER.to_owned()),
                cookie: None
            })
        );
        assert_eq!(
            Carriers::of(br#"{"overrides":{"cookie":"ro"}}"#),
            Some(Carriers {
                header: None,
                cookie: Some("ro".to_owned())
            })
        );
    }
}
