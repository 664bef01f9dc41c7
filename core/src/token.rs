//! Signed override tokens: how a tester reaches a version (or a flag value) that no user
//! gets yet. A token names what it overrides, when it expires and which key signed it, and
//! carries an HMAC-SHA-256 over all of that:
//!
//! ```text
//! r1.<key id>.<expires, Unix seconds>.<claims>.<signature>
//! claims:    v:ROLLOUT=VERSION and f:FLAG=VALUE, joined with '&'
//! signature: base64url (no padding) of HMAC-SHA-256(secret, everything before the last '.')
//! ```
//!
//! Every character is legal in a header value and in a cookie value (RFC 6265 cookie-octet),
//! so one format serves both carriers, and a person can read what a token does. A token is a
//! bearer credential: anyone holding it can use it until it expires (replay within the expiry
//! is by design, as for any bearer token).

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

/// The format's version prefix.
const PREFIX: &str = "r1";
/// Tokens longer than this are malformed without being read further.
pub const MAX_TOKEN_BYTES: usize = 2048;
/// The latest expiry a token can carry: 12 digits of Unix seconds.
pub const MAX_EXPIRES_S: u64 = 999_999_999_999;
/// The shortest secret accepted: HMAC's key should be at least the hash's output length.
pub const MIN_SECRET_BYTES: usize = 32;
/// Length of the base64url signature (32 bytes, no padding).
const SIGNATURE_CHARS: usize = 43;

/// What a request's token turned out to be. Every status but `Valid` is ignored by the
/// decision; hosts count each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenStatus {
    /// Signed by a listed key and not expired: its claims decide.
    Valid,
    /// Signed by a listed key, but expired (or the host gave no time to check it against).
    Expired,
    /// The signature does not match: tampered with, or signed with another secret.
    BadSignature,
    /// Signed with a key id the config does not list (or no longer lists).
    UnknownKey,
    /// Not a token of this format.
    Malformed,
}

impl TokenStatus {
    /// Every status, in a fixed order (hosts define one counter each).
    pub const ALL: [TokenStatus; 5] = [
        TokenStatus::Valid,
        TokenStatus::Expired,
        TokenStatus::BadSignature,
        TokenStatus::UnknownKey,
        TokenStatus::Malformed,
    ];

    /// The status as a metric label and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Valid => "valid",
            TokenStatus::Expired => "expired",
            TokenStatus::BadSignature => "bad_signature",
            TokenStatus::UnknownKey => "unknown_key",
            TokenStatus::Malformed => "malformed",
        }
    }
}

/// What a claim overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimKind {
    /// `v:ROLLOUT=VERSION`: the rollout's version.
    Version,
    /// `f:FLAG=VALUE`: the flag's value.
    Flag,
}

/// One claim of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Claim<'t> {
    /// A version or a flag value.
    pub kind: ClaimKind,
    /// The rollout or flag name.
    pub target: &'t str,
    /// The version or flag value.
    pub value: &'t str,
}

/// A token split into its parts; nothing is verified yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token<'t> {
    /// The key id.
    pub key_id: &'t str,
    /// Expiry, Unix seconds.
    pub expires_s: u64,
    claims: &'t str,
    signed: &'t str,
    signature: [u8; 32],
}

/// Names in tokens are the config's names (`A-Z a-z 0-9 _ -`), so no separator can hide in
/// one.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl<'t> Token<'t> {
    /// Splits a token; `None` for anything not in the format (claims are checked here too, so
    /// a valid signature never covers claims that cannot be read).
    pub fn parse(text: &'t [u8]) -> Option<Token<'t>> {
        if text.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let text = core::str::from_utf8(text).ok()?.trim_ascii();
        let (signed, signature) = text.rsplit_once('.')?;
        let mut parts = signed.splitn(4, '.');
        let (prefix, key_id, expires, claims) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if prefix != PREFIX || !is_name(key_id) || expires.is_empty() || expires.len() > 12 {
            return None;
        }
        if !expires.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let token = Token {
            key_id,
            expires_s: expires.parse().ok()?,
            claims,
            signed,
            signature: decode_signature(signature)?,
        };
        let mut n = 0;
        for claim in claims.split('&') {
            parse_claim(claim)?;
            n += 1;
        }
        (n > 0).then_some(token)
    }

    /// The claims, in the order written.
    pub fn claims(&self) -> impl Iterator<Item = Claim<'t>> + use<'t> {
        self.claims.split('&').filter_map(parse_claim)
    }

    /// Checks the signature with the key the token names and the expiry against `now_ms`.
    /// The signature is checked first, so an expired token is reported as expired only when
    /// it was genuine.
    pub fn verify(&self, keys: &[(String, Vec<u8>)], now_ms: Option<u64>) -> TokenStatus {
        let Some((_, secret)) = keys.iter().find(|(id, _)| id == self.key_id) else {
            return TokenStatus::UnknownKey;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return TokenStatus::BadSignature;
        };
        mac.update(self.signed.as_bytes());
        // `verify_slice` compares in constant time.
        if mac.verify_slice(&self.signature).is_err() {
            return TokenStatus::BadSignature;
        }
        match now_ms {
            Some(now) if now < self.expires_s.saturating_mul(1000) => TokenStatus::Valid,
            _ => TokenStatus::Expired,
        }
    }
}

fn parse_claim(claim: &str) -> Option<Claim<'_>> {
    let (kind, rest) = claim.split_once(':')?;
    let kind = match kind {
        "v" => ClaimKind::Version,
        "f" => ClaimKind::Flag,
        _ => return None,
    };
    let (target, value) = rest.split_once('=')?;
    (is_name(target) && is_name(value)).then_some(Claim {
        kind,
        target,
        value,
    })
}

/// Why a token cannot be minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignError {
    /// The key id is not a name (`A-Z a-z 0-9 _ -`, 1 to 64 characters).
    BadKeyId,
    /// The secret is shorter than [`MIN_SECRET_BYTES`].
    ShortSecret,
    /// A claim's target or value is not a name.
    BadClaim(String),
    /// A token needs at least one claim.
    NoClaims,
    /// The expiry has more than 12 digits: the token would not parse.
    FarExpiry,
    /// The token would be longer than [`MAX_TOKEN_BYTES`], so it would not parse.
    TooLong,
}

impl core::fmt::Display for SignError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SignError::BadKeyId => write!(f, "the key id must be 1 to 64 of A-Z a-z 0-9 _ -"),
            SignError::ShortSecret => {
                write!(f, "the secret must be at least {MIN_SECRET_BYTES} bytes")
            }
            SignError::BadClaim(c) => {
                write!(f, "claim {c:?}: names are 1 to 64 of A-Z a-z 0-9 _ -")
            }
            SignError::NoClaims => write!(f, "a token needs at least one version or flag"),
            SignError::FarExpiry => {
                write!(f, "the expiry must be at most {MAX_EXPIRES_S} (Unix s)")
            }
            SignError::TooLong => write!(f, "the token would be over {MAX_TOKEN_BYTES} bytes"),
        }
    }
}

/// Mints a token: the claims, signed with `secret` under `key_id`, valid until `expires_s`
/// (Unix seconds).
pub fn sign(
    key_id: &str,
    secret: &[u8],
    expires_s: u64,
    claims: &[Claim<'_>],
) -> Result<String, SignError> {
    if !is_name(key_id) {
        return Err(SignError::BadKeyId);
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(SignError::ShortSecret);
    }
    if claims.is_empty() {
        return Err(SignError::NoClaims);
    }
    // `parse` refuses what these two refuse: a token is never minted that cannot be used.
    if expires_s > MAX_EXPIRES_S {
        return Err(SignError::FarExpiry);
    }
    let mut signed = format!("{PREFIX}.{key_id}.{expires_s}.");
    for (i, c) in claims.iter().enumerate() {
        if !is_name(c.target) || !is_name(c.value) {
            return Err(SignError::BadClaim(format!("{}={}", c.target, c.value)));
        }
        if i > 0 {
            signed.push('&');
        }
        let kind = match c.kind {
            ClaimKind::Version => 'v',
            ClaimKind::Flag => 'f',
        };
        signed.push_str(&format!("{kind}:{}={}", c.target, c.value));
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return Err(SignError::ShortSecret);
    };
    mac.update(signed.as_bytes());
    let signature = mac.finalize().into_bytes();
    signed.push('.');
    encode_base64url(&signature, &mut signed);
    if signed.len() > MAX_TOKEN_BYTES {
        return Err(SignError::TooLong);
    }
    Ok(signed)
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn encode_base64url(bytes: &[u8], out: &mut String) {
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            let idx = (n >> (18 - 6 * i)) & 63;
            out.push(char::from(
                ALPHABET.get(idx as usize).copied().unwrap_or(b'A'),
            ));
        }
    }
}

/// The 32 signature bytes from 43 base64url characters; `None` for any other text, including
/// a last character with bits set past the 256th (so one signature has one spelling).
fn decode_signature(text: &str) -> Option<[u8; 32]> {
    if text.len() != SIGNATURE_CHARS {
        return None;
    }
    let mut out = [0u8; 32];
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut n = 0;
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
            acc &= (1 << bits) - 1;
        }
    }
    (n == 32 && acc == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn keys() -> Vec<(String, Vec<u8>)> {
        vec![("k1".to_owned(), SECRET.to_vec())]
    }

    fn claims() -> Vec<Claim<'static>> {
        vec![
            Claim {
                kind: ClaimKind::Version,
                target: "checkout",
                value: "v2",
            },
            Claim {
                kind: ClaimKind::Flag,
                target: "new-cart",
                value: "on",
            },
        ]
    }

    #[test]
    fn a_signed_token_reads_back_and_verifies_until_it_expires() {
        let token = sign("k1", SECRET, 2_000_000_000, &claims()).unwrap();
        assert!(token.starts_with("r1.k1.2000000000.v:checkout=v2&f:new-cart=on."));
        let parsed = Token::parse(token.as_bytes()).unwrap();
        assert_eq!(parsed.claims().collect::<Vec<_>>(), claims());
        assert_eq!(
            parsed.verify(&keys(), Some(1_999_999_999_999)),
            TokenStatus::Valid
        );
        assert_eq!(
            parsed.verify(&keys(), Some(2_000_000_000_000)),
            TokenStatus::Expired
        );
        assert_eq!(parsed.verify(&keys(), None), TokenStatus::Expired);
        // Rotation: the old key removed, the token no longer opens anything.
        let rotated = vec![("k2".to_owned(), SECRET.to_vec())];
        assert_eq!(parsed.verify(&rotated, Some(0)), TokenStatus::UnknownKey);
    }

    #[test]
    fn sign_refuses_a_token_that_would_not_parse() {
        // Found by fuzz/fuzz_targets/token.rs: a 19-digit expiry was signed, then refused.
        let last = sign("k1", SECRET, MAX_EXPIRES_S, &claims()).unwrap();
        assert!(Token::parse(last.as_bytes()).is_some());
        assert_eq!(
            sign("k1", SECRET, MAX_EXPIRES_S + 1, &claims()),
            Err(SignError::FarExpiry)
        );
        let name = "n".repeat(64);
        let many: Vec<Claim<'_>> = (0..20)
            .map(|_| Claim {
                kind: ClaimKind::Flag,
                target: &name,
                value: &name,
            })
            .collect();
        assert_eq!(sign("k1", SECRET, 1, &many), Err(SignError::TooLong));
        assert!(Token::parse(sign("k1", SECRET, 1, &many[..10]).unwrap().as_bytes()).is_some());
    }

    #[test]
    fn any_change_to_a_token_breaks_it() {
        let token = sign("k1", SECRET, 2_000_000_000, &claims()).unwrap();
        // Change each byte in turn: the result is malformed or fails the signature, never
        // valid.
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'1' { b'2' } else { b'1' };
            let status =
                Token::parse(&bytes).map_or(TokenStatus::Malformed, |t| t.verify(&keys(), Some(0)));
            assert_ne!(status, TokenStatus::Valid, "byte {i} changed: {:?}", bytes);
        }
        let other = sign(
            "k1",
            b"another secret of at least 32 bytes",
            2_000_000_000,
            &claims(),
        )
        .unwrap();
        let parsed = Token::parse(other.as_bytes()).unwrap();
        assert_eq!(parsed.verify(&keys(), Some(0)), TokenStatus::BadSignature);
    }

    #[test]
    fn odd_input_is_malformed() {
        let good = sign("k1", SECRET, 5, &claims()).unwrap();
        let sig = good.rsplit_once('.').unwrap().1;
        for bad in [
            String::new(),
            "r1".to_owned(),
            format!("r2.k1.5.v:a=b.{sig}"),
            format!("r1.k1.5..{sig}"),
            format!("r1.k1.5.v:a=b&.{sig}"),
            format!("r1.k1.5.x:a=b.{sig}"),
            format!("r1.k1.5.v:a.{sig}"),
            format!("r1.k1.-5.v:a=b.{sig}"),
            format!("r1.k1.99999999999999.v:a=b.{sig}"),
            format!("r1.k 1.5.v:a=b.{sig}"),
            format!("r1.k1.5.v:a=b.{sig}A"),
            format!("r1.k1.5.v:a=b.{}", &sig[..42]),
            "r1.k1.5.v:a=b.".to_owned() + &"/".repeat(43),
            "x".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(Token::parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
        assert!(Token::parse(b"\xff\xfe").is_none());
        // The last signature character may not carry bits beyond the 256th.
        let (head, last) = sig.split_at(42);
        let last = ALPHABET
            .iter()
            .position(|&a| a == last.as_bytes()[0])
            .unwrap();
        let odd = format!(
            "{}.{head}{}",
            good.rsplit_once('.').unwrap().0,
            char::from(ALPHABET[last | 1])
        );
        assert_eq!(last & 3, 0);
        assert!(Token::parse(odd.as_bytes()).is_none());
    }

    #[test]
    fn minting_refuses_what_could_not_be_read_back() {
        assert_eq!(sign("k 1", SECRET, 5, &claims()), Err(SignError::BadKeyId));
        assert_eq!(
            sign("k1", b"short", 5, &claims()),
            Err(SignError::ShortSecret)
        );
        assert_eq!(sign("k1", SECRET, 5, &[]), Err(SignError::NoClaims));
        let bad = [Claim {
            kind: ClaimKind::Flag,
            target: "a&b",
            value: "on",
        }];
        assert!(matches!(
            sign("k1", SECRET, 5, &bad),
            Err(SignError::BadClaim(_))
        ));
    }

    #[test]
    fn base64url_round_trips() {
        for len in 0usize..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let mut text = String::new();
            encode_base64url(&bytes, &mut text);
            assert_eq!(text.len(), (len * 4).div_ceil(3));
            if len == 32 {
                assert_eq!(decode_signature(&text).unwrap().to_vec(), bytes);
            }
        }
    }
}
