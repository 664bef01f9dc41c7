//! Override tokens. Any bytes: `Token::parse` and `verify` with a fixed key never panic, and
//! what verifies is a token the key signed. A token signed with the key verifies, and the
//! same token with any one byte changed never does.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rollout_core::TokenStatus;
use rollout_core::token::{Claim, ClaimKind, Token, sign};

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef-0123";

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    raw: &'a [u8],
    now_ms: Option<u64>,
    key_id: &'a str,
    expires_s: u64,
    claims: Vec<(bool, &'a str, &'a str)>,
    at: usize,
    byte: u8,
}

fuzz_target!(|input: Input<'_>| {
    let keys = vec![
        ("k1".to_owned(), SECRET.to_vec()),
        (input.key_id.to_owned(), SECRET.to_vec()),
    ];
    if let Some(token) = Token::parse(input.raw) {
        let status = token.verify(&keys, input.now_ms);
        let _ = token.claims().count();
        if matches!(status, TokenStatus::Valid | TokenStatus::Expired) {
            // Only the holder of the secret makes a signature that checks: the fuzzer found
            // one by chance only if it is this token's own re-signing.
            let claims: Vec<Claim<'_>> = token.claims().collect();
            let again = sign(token.key_id, SECRET, token.expires_s, &claims);
            let text = std::str::from_utf8(input.raw)
                .map(str::trim_ascii)
                .unwrap_or_default();
            assert_eq!(
                again.as_deref(),
                Ok(text),
                "a signature that checks was not the key's"
            );
        }
    }

    let claims: Vec<Claim<'_>> = input
        .claims
        .iter()
        .map(|&(flag, target, value)| Claim {
            kind: if flag {
                ClaimKind::Flag
            } else {
                ClaimKind::Version
            },
            target,
            value,
        })
        .collect();
    let Ok(signed) = sign(input.key_id, SECRET, input.expires_s, &claims) else {
        return;
    };
    let token = Token::parse(signed.as_bytes())
        .unwrap_or_else(|| panic!("a signed token does not parse: {signed:?}"));
    let now = input.expires_s.saturating_mul(1000).saturating_sub(1);
    let status = token.verify(&keys, Some(now));
    let expected = if input.expires_s == 0 {
        TokenStatus::Expired
    } else {
        TokenStatus::Valid
    };
    assert_eq!(status, expected, "a signed token: {signed}");
    assert_eq!(
        token.claims().count(),
        claims.len(),
        "claims lost: {signed}"
    );

    let mut mutated = signed.into_bytes();
    let at = input.at % mutated.len();
    if mutated[at] == input.byte {
        return;
    }
    mutated[at] = input.byte;
    if let Some(token) = Token::parse(&mutated) {
        let status = token.verify(&keys, Some(now));
        assert!(
            !matches!(status, TokenStatus::Valid | TokenStatus::Expired),
            "a token changed at byte {at} still verifies: {:?}",
            String::from_utf8_lossy(&mutated)
        );
    }
});
