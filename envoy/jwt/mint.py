"""Mints RS256 JWTs with the TEST-ONLY key beside this file (test-only-private-key.jwk.json), for
the jwt scenario's README and its tests (envoy/tests/test_jwt.py). The standard library only:
RS256 is RSASSA-PKCS1-v1_5 over SHA-256, one modular exponentiation, so no crypto package is
added to the project's Python tools for it.

    python3 envoy/jwt/mint.py alice            # sub=alice, valid for 1 h
    python3 envoy/jwt/mint.py alice --ttl -60  # already expired"""

import argparse
import base64
import functools
import hashlib
import json
import pathlib
import time

KEY_PATH = pathlib.Path(__file__).resolve().parent / "test-only-private-key.jwk.json"
# The issuer and audience envoy.yaml's provider requires.
ISSUER = "https://idp.example.test"
AUDIENCE = "checkout"
# DER prefix of a SHA-256 DigestInfo (RFC 8017, section 9.2, note 1).
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def b64url(data):
    """Unpadded base64url, as JWS uses."""
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _int(field):
    return int.from_bytes(base64.urlsafe_b64decode(field + "=" * (-len(field) % 4)), "big")


@functools.cache
def load_key(path=KEY_PATH):
    """The private JWK: (kid, n, the CRT parameters p, q, dp, dq, qi)."""
    jwk = json.loads(pathlib.Path(path).read_text())
    return jwk["kid"], _int(jwk["n"]), tuple(_int(jwk[k]) for k in ("p", "q", "dp", "dq", "qi"))


def rs256(signing_input, key=None):
    """The RS256 signature of `signing_input` (bytes) under `key` (as load_key returns it, the
    test key by default)."""
    _, n, (p, q, dp, dq, qi) = key or load_key()
    size = (n.bit_length() + 7) // 8
    digest = SHA256_DIGEST_INFO + hashlib.sha256(signing_input).digest()
    encoded = int.from_bytes(b"\x00\x01" + b"\xff" * (size - len(digest) - 3) + b"\x00" + digest, "big")
    # m^d mod n by the Chinese remainder theorem (RFC 8017, 5.1.2): four times faster than pow(m, d, n).
    m1, m2 = pow(encoded, dp, p), pow(encoded, dq, q)
    return (m2 + q * (qi * (m1 - m2) % p)).to_bytes(size, "big")


def token(claims, header=None, key=None):
    """A compact JWS of `claims` (a dict), signed RS256 with the test key; `header` fields
    replace the default ones (alg RS256, typ JWT, the key's kid)."""
    key = key or load_key()
    head = {"alg": "RS256", "typ": "JWT", "kid": key[0], **(header or {})}
    signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(rs256(signing_input.encode(), key))}"


def claims_for(sub, ttl_s=3600, **extra):
    """Claims the scenario's provider accepts for user `sub` (None: no sub claim), expiring in
    `ttl_s` seconds (negative: already expired); `extra` adds or replaces claims."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + ttl_s}
    if sub is not None:
        claims["sub"] = sub
    claims.update(extra)
    return claims


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sub", help="the user, written to the token's sub claim")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (negative: expired)")
    args = parser.parse_args()
    print(token(claims_for(args.sub, args.ttl)))


if __name__ == "__main__":
    main()
