"""Who gets which version beyond the hash, in a real Envoy (--concurrency 2): signed tester
override tokens (minted in Python by harness.override_token, which cross-checks the format) in the
static and the live scenario (the live form's plugin `override_keys`), their counters on
/stats, sticky keys assigned to anonymous users in a cookie, and shipped scrub lists that
leave the override header and `cookie` to the filter."""

import json
import re
import subprocess
import time

import pytest

from harness import (
    LIVE_CONFIG,
    ROLLOUT_CLI,
    ROOT,
    STATIC_CONFIG,
    Client,
    ConfigServer,
    load,
    nodes,
    override_token,
    plugin_configuration,
    set_plugin_configuration,
    wait_until,
)

SECRET = "envoy-test-secret-0123456789abcdef"
OTHER_SECRET = "envoy-other-secret-0123456789abcde"
FAR = 4102444800  # 2100-01-01
RESULTS = ("valid", "expired", "bad_signature", "unknown_key", "malformed")


mint = override_token


def checkout(weights, **extra):
    """A plugin configuration: the `checkout` rollout with weights for v1 and v2."""
    config = {"user_key": ["header:x-user-id", "cookie:uid"],
              "rollouts": {"checkout": {"stable": "v1", "versions": [
                  {"name": "v1", "weight": weights[0]}, {"name": "v2", "weight": weights[1]}]}}}
    config.update(extra)
    return config


def overrides(keys):
    """An `overrides` section reading the header and the cookie, with these keys."""
    return {"header": "x-rollout-override", "cookie": "rollout_override", "keys": keys}


def send(client, *headers):
    """(upstream name, headers the upstream got, response headers) of a GET /; must be a 200."""
    status, response_headers, body = client.send([(":path", "/"), (":authority", "a"), *headers])
    assert status == 200, status
    echoed = json.loads(body)
    return echoed["upstream"], echoed["headers"], response_headers


def override_counts(envoy):
    samples = envoy.prometheus()
    return {r: samples.get(("rollout_overrides_total", frozenset({("result", r)}))) for r in RESULTS}


def test_python_minted_tokens_are_the_vectors_tokens():
    vector = json.loads((ROOT / "testdata/vectors/overrides.json").read_text())
    keys = vector["config"]["overrides"]["keys"]
    sent = {v for case in vector["cases"] for k, v in case["request"]["headers"] if k == "x-rollout-override"}
    assert mint("k1", keys["k1"], FAR, "v:checkout=v2") in sent
    assert mint("k2", keys["k2"], FAR, "f:new-cart=on&f:kill=on") in sent


def test_tokens_reach_a_zero_percent_version_only_when_valid_and_never_reach_the_upstream(start_envoy):
    config = checkout((100, 0), overrides=overrides({"k1": SECRET}))
    envoy = start_envoy(set_plugin_configuration(load(STATIC_CONFIG), json.dumps(config)))
    client = Client(envoy.port)
    valid = mint("k1", SECRET, FAR, "v:checkout=v2")
    signature = valid.rsplit(".", 1)[1]
    tokens = {
        "valid": [valid, mint("k1", SECRET, FAR, "v:checkout=v2&f:new-cart=on")],
        "expired": [mint("k1", SECRET, int(time.time()) - 60, "v:checkout=v2")],
        # Signed with another secret, and the claims changed under a genuine signature.
        "bad_signature": [mint("k1", OTHER_SECRET, FAR, "v:checkout=v2"), f"r1.k1.{FAR}.v:checkout=v3.{signature}"],
        "unknown_key": [mint("k9", SECRET, FAR, "v:checkout=v2")],
        "malformed": ["v2 please", "r1.k1.soon.v:checkout=v2.abc"],
    }
    for i in range(30):
        user = ("x-user-id", f"user-{i}")
        assert send(client, user)[0] == "v1", "v2 is at 0%: no user gets it by the hash"
        for result, carried in tokens.items():
            token = carried[i % len(carried)]
            in_header = i % 2 == 0
            carrier = ("x-rollout-override", token) if in_header else ("cookie", f"a=1; rollout_override={token}; b=2")
            upstream, received, _ = send(client, user, carrier)
            assert upstream == ("v2" if result == "valid" else "v1"), f"{result} token {token!r}"
            assert dict(received)["x-rollout-version"] == upstream
            assert "x-rollout-override" not in dict(received), "the token header reached the upstream"
            cookies = [v for k, v in received if k == "cookie"]
            assert cookies == ([] if in_header else ["a=1; b=2"]), f"{result}: upstream cookies {cookies}"
    client.close()
    expected = {r: 30.0 for r in RESULTS}
    wait_until(lambda: override_counts(envoy) == expected, timeout=5, what="the token counters")


def test_a_config_without_overrides_has_no_token_counters(start_envoy):
    envoy = start_envoy()
    client = Client(envoy.port)
    send(client, ("x-user-id", "u"), ("x-rollout-override", mint("k1", SECRET, FAR, "v:checkout=v2")))
    client.close()
    assert override_counts(envoy) == dict.fromkeys(RESULTS)


def set_cookies(response_headers):
    return [v for k, v in response_headers if k == "set-cookie"]


def assigned(response_headers, secure):
    """The id of the one `uid` Set-Cookie of a response, after checking its attributes."""
    [cookie] = set_cookies(response_headers)
    parts = [p.strip() for p in cookie.split(";")]
    m = re.fullmatch(r"uid=([0-9a-f]{16})", parts[0])
    assert m, cookie
    attributes = set(parts[1:])
    assert {"Path=/", "HttpOnly", "SameSite=Lax", f"Max-Age={86400}"} <= attributes, cookie
    assert ("Secure" in attributes) == secure, cookie
    assert len(attributes) == 4 + secure, cookie
    return m.group(1)


def core_version(tmp_path, config, uid):
    """The version the core (natively, through `rollout explain`) gives a request with this uid."""
    path = tmp_path / "assign.json"
    path.write_text(json.dumps(config))
    out = subprocess.run([str(ROLLOUT_CLI), "explain", str(path), "--json", "-H", f"cookie: uid={uid}"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    explained = json.loads(out)
    assert explained["filter_agrees_with_core"]
    return explained["decision"]["rollout"]["version"]


@pytest.mark.parametrize("secure", [True, False])
def test_anonymous_users_get_a_cookie_and_stay_on_the_version_the_core_gives_it(start_envoy, tmp_path, secure):
    config = checkout((50, 50), assign={"cookie": "uid", "max_age": "1d", "secure": secure})
    envoy = start_envoy(set_plugin_configuration(load(STATIC_CONFIG), json.dumps(config)))
    client = Client(envoy.port)
    first, received, response_headers = send(client, ("cookie", "theme=dark"))
    uid = assigned(response_headers, secure)
    # The upstream decides on the same key: the assigned cookie is added to the client's.
    assert [v for k, v in received if k == "cookie"] == [f"theme=dark; uid={uid}"]
    assert dict(received)["x-rollout-version"] == first
    for _ in range(20):
        again, _, response_headers = send(client, ("cookie", f"theme=dark; uid={uid}"))
        assert again == first, f"uid {uid} moved from {first} to {again}"
        assert set_cookies(response_headers) == [], "a user with a key got a new cookie"
    assert core_version(tmp_path, config, uid) == first
    if not secure:
        client.close()
        return
    seen, ids = {}, set()
    for _ in range(40):
        upstream, _, response_headers = send(client)
        uid = assigned(response_headers, secure)
        ids.add(uid)
        seen.setdefault(upstream, uid)
    client.close()
    assert len(ids) == 40, "every fresh user gets a new key"
    assert set(seen) == {"v1", "v2"}, f"40 fresh users all reached {set(seen)}"
    for version, uid in seen.items():
        assert core_version(tmp_path, config, uid) == version, uid


def test_the_live_forms_override_keys_sign_tokens_the_sources_config_carries_no_secret_for(start_envoy):
    served = checkout((100, 0), overrides={"header": "x-rollout-override"})
    source = ConfigServer(json.dumps(served).encode())
    try:
        doc = load(LIVE_CONFIG)
        plugin = plugin_configuration(doc)
        plugin["override_keys"] = {"k1": SECRET}
        envoy = start_envoy(set_plugin_configuration(doc, json.dumps(plugin)), ports={8090: source.port})
        client = Client(envoy.port)
        valid = mint("k1", SECRET, FAR, "v:checkout=v2")
        wait_until(lambda: send(client, ("x-user-id", "u"), ("x-rollout-override", valid))[0] == "v2",
                   what="the source's config with the plugin's key")
        assert SECRET not in json.dumps(served) and "keys" not in served["overrides"]
        before = override_counts(envoy)
        for i in range(10):
            user = ("x-user-id", f"user-{i}")
            assert send(client, user, ("x-rollout-override", valid))[0] == "v2"
            assert send(client, user, ("x-rollout-override", mint("k1", OTHER_SECRET, FAR, "v:checkout=v2")))[0] == "v1"
        client.close()
        after = override_counts(envoy)
        gained = {r: (after[r] or 0) - (before[r] or 0) for r in ("valid", "bad_signature")}
        assert gained == {"valid": 10, "bad_signature": 10}
    finally:
        source.stop()


def test_no_shipped_scrub_removes_what_the_filter_reads_tokens_and_keys_from():
    """The early header mutations drop client copies of the four headers the filter sets (the
    routes match on one), and may drop others (envoy/jwt drops the header its user key comes
    from). The override header and `cookie` are request contract names too (the filter strips
    the token itself), but dropping them before the filter would disable override tokens and
    cookie user keys."""
    vector = json.loads((ROOT / "testdata/vectors/overrides.json").read_text())
    read_by_filter = {"cookie", vector["config"]["overrides"]["header"]}
    assert read_by_filter <= set(vector["contract"]["request"])
    shipped = sorted((ROOT / "envoy").glob("*/envoy.yaml")) + [ROOT / "envoy/istio/envoyfilter.yaml"]
    for path in shipped:
        removed = {m["remove"].lower() for n in nodes(load(path)) for m in n.get("mutations", []) if "remove" in m}
        assert removed, f"{path}: no scrub found"
        assert not removed & read_by_filter, f"{path} drops {removed & read_by_filter}"
        assert {"x-rollout-version", "x-rollout", "x-rollout-flags", "x-rollout-reason"} <= removed, path


@pytest.mark.parametrize("protocol", ["--http2-prior-knowledge", "--http1.1"])
def test_a_token_in_a_second_cookie_field_is_read_and_stripped(start_envoy, protocol):
    """HTTP/2 lets a client split Cookie into several fields (RFC 9113 8.2.3), and an HTTP/1.1
    client may send several Cookie headers: the token is found in any of them, and the upstream
    gets one Cookie header without it. curl sends each -H as its own field."""
    config = checkout((100, 0), overrides=overrides({"k1": SECRET}))
    envoy = start_envoy(set_plugin_configuration(load(STATIC_CONFIG), json.dumps(config)))
    token = mint("k1", SECRET, FAR, "v:checkout=v2")
    out = subprocess.run(
        ["curl", "-sS", protocol, f"http://127.0.0.1:{envoy.port}/",
         "-H", "x-user-id: user-1", "-H", "cookie: a=1", "-H", f"cookie: rollout_override={token}",
         "-H", "cookie: b=2"],
        capture_output=True, text=True, check=True, timeout=30).stdout
    echoed = json.loads(out)
    assert echoed["upstream"] == "v2", echoed
    cookies = [v for k, v in echoed["headers"] if k == "cookie"]
    assert cookies == ["a=1; b=2"], cookies
