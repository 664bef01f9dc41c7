"""The JWT scenario (envoy/jwt/envoy.yaml) in a real Envoy (--concurrency 2) with real upstreams:
the user key is the `sub` of a token jwt_authn verified, so a client cannot choose its bucket by
sending the key header itself. Tokens are minted here with the scenario's test-only key."""

import importlib.util
import json
import subprocess

import pytest

from harness import (
    PROBE_WASM,
    ROLLOUT_CLI,
    ROOT,
    Client,
    check_binomial,
    check_spoofing_while_the_vm_is_dead,
    connection_managers,
    load,
    plugin_configuration,
    set_plugin_configuration,
)

JWT_CONFIG = ROOT / "envoy/jwt/envoy.yaml"
KEY_HEADER = "x-auth-sub"

_spec = importlib.util.spec_from_file_location("jwt_mint", ROOT / "envoy/jwt/mint.py")
mint = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mint)


@pytest.fixture(scope="module")
def envoy(start_envoy):
    """One Envoy on the shipped JWT scenario for the module."""
    return start_envoy(JWT_CONFIG)


@pytest.fixture(scope="module")
def core_decision(tmp_path_factory):
    """The core's decision (`rollout explain --json`) for a request whose key header is `sub`,
    under the scenario's rollout config: what Envoy must do for a verified token of `sub`."""
    path = tmp_path_factory.mktemp("jwt") / "rollout.json"
    path.write_text(json.dumps(plugin_configuration(load(JWT_CONFIG))))

    cache = {}

    def decide(sub):
        if sub in cache:
            return cache[sub]
        out = subprocess.run([str(ROLLOUT_CLI), "explain", str(path), "--json", "--path", "/", "--host", "a",
                              "-H", f"{KEY_HEADER}: {sub}"], capture_output=True, text=True, check=True,
                             timeout=60).stdout
        decision = json.loads(out)["decision"]
        assert decision["key"] == {"header": KEY_HEADER}, decision
        cache[sub] = decision
        return decision

    return decide


def bearer(claims, **header):
    """An Authorization header carrying a token of `claims` signed with the test key."""
    return ("authorization", f"Bearer {mint.token(claims, header or None)}")


def send(client, *headers):
    """(status, upstream name or None, the headers the upstream received, response headers)."""
    status, response_headers, body = client.send([(":path", "/"), (":authority", "a"), *headers])
    if status != 200:
        return status, None, [], dict(response_headers)
    echoed = json.loads(body)
    return status, echoed["upstream"], echoed["headers"], dict(response_headers)


def received(headers, name):
    """Every value of header `name` the upstream received."""
    return [v for k, v in headers if k == name]


def flags_of(decision):
    """A decision's flags as the contract header spells them."""
    return ",".join(f"{f['flag']}={f['value']}" for f in decision["flags"])


def test_a_valid_token_gets_the_decision_the_core_gives_its_sub(envoy, core_decision):
    client = Client(envoy.port)
    # `rollout explain` takes a third of a second: the exact decision for a sample of subs...
    for sub in [f"sub-{i}" for i in range(20)]:
        expected = core_decision(sub)
        status, upstream, seen, response = send(client, bearer(mint.claims_for(sub)))
        assert status == 200, sub
        assert upstream == expected["rollout"]["version"] == response["x-rollout-version"], sub
        assert received(seen, "x-rollout-flags") == [flags_of(expected)], sub
        # The upstream gets the verified sub (the application may use it), not the token.
        assert received(seen, KEY_HEADER) == [sub]
        assert not received(seen, "authorization")
    client.close()


def test_the_split_over_400_verified_subs_is_the_harness_split(envoy, tmp_path):
    # ...and, for many, the counts: `rollout simulate` sends user-0 .. user-399 as the key
    # header through the same .wasm; tokens for those subs must land exactly alike.
    n = 400
    client = Client(envoy.port)
    versions, flags = {"v1": 0, "v2": 0}, {"new-cart=on": 0, "new-cart=off": 0}
    for i in range(n):
        status, upstream, seen, _ = send(client, bearer(mint.claims_for(f"user-{i}")))
        assert status == 200
        versions[upstream] += 1
        [flag] = received(seen, "x-rollout-flags")
        flags[flag] += 1
    client.close()
    config = tmp_path / "rollout.json"
    config.write_text(json.dumps(plugin_configuration(load(JWT_CONFIG))))
    out = subprocess.run([str(ROLLOUT_CLI), "simulate", str(config), "--users", str(n)],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if line.startswith(("checkout/", "new-cart="))}
    assert (versions["v2"], flags["new-cart=on"]) == (counts["checkout/v2"], counts["new-cart=on"]), out
    check_binomial("v2 share of verified subs", versions["v2"], n, 0.5)
    check_binomial("new-cart share of verified subs", flags["new-cart=on"], n, 0.25)


def test_a_user_keeps_its_version_across_fresh_tokens(envoy):
    client = Client(envoy.port)
    seen_versions = set()
    for sub in ["alice", "bob", "carol", "dave", "erin", "frank"]:
        versions = set()
        for ttl in range(600, 620):  # a different token each time (its exp differs)
            status, upstream, _, _ = send(client, bearer(mint.claims_for(sub, ttl)))
            assert status == 200
            versions.add(upstream)
        assert len(versions) == 1, f"{sub} reached {versions}"
        seen_versions |= versions
    client.close()
    assert seen_versions == {"v1", "v2"}, "the chosen subs cover both versions"


def canary_subs(core_decision, n):
    """`n` subs the core puts on v2 with new-cart on: a forged key would show on both."""
    found = []
    for i in range(400):
        decision = core_decision(f"wanted-{i}")
        if decision["rollout"]["version"] == "v2" and flags_of(decision) == "new-cart=on":
            found.append(f"wanted-{i}")
            if len(found) == n:
                return found
    raise AssertionError(f"only {len(found)} of 400 subs are on v2 with new-cart on")


def test_a_forged_key_header_without_a_token_is_keyless(envoy, core_decision, upstreams):
    client = Client(envoy.port)
    before = upstreams["v2"].count
    for sub in canary_subs(core_decision, 4):
        for forged in ([(KEY_HEADER, sub)], [("X-Auth-Sub", sub)], [(KEY_HEADER, sub), (KEY_HEADER, sub)],
                       [(KEY_HEADER, sub), ("cookie", f"uid={sub}"), ("x-user-id", sub)]):
            status, upstream, seen, response = send(client, *forged)
            # Anonymous: allowed, and decided without a key (stable, every flag at its default).
            assert status == 200, forged
            assert (upstream, response["x-rollout-version"]) == ("v1", "v1"), forged
            assert received(seen, "x-rollout-flags") == ["new-cart=off"], forged
            assert not received(seen, KEY_HEADER), f"the forged {forged} reached the upstream"
    client.close()
    assert upstreams["v2"].count == before


def test_a_token_that_fails_verification_is_refused_whatever_header_comes_with_it(envoy, core_decision,
                                                                                   upstreams):
    [sub] = canary_subs(core_decision, 1)
    good = mint.token(mint.claims_for("someone"))
    head, _, signature = good.split(".")
    # The payload of a good token swapped for one naming `sub`: the signature no longer fits.
    swapped = f"{head}.{mint.b64url(json.dumps(mint.claims_for(sub)).encode())}.{signature}"
    none_header = mint.b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    unsigned = f"{none_header}.{swapped.split('.')[1]}."
    bad = {
        "expired": bearer(mint.claims_for(sub, ttl_s=-3600)),
        "payload swapped": ("authorization", f"Bearer {swapped}"),
        "alg none": ("authorization", f"Bearer {unsigned}"),
        "unknown kid": bearer(mint.claims_for(sub), kid="another-key"),
        "wrong issuer": bearer(mint.claims_for(sub, iss="https://elsewhere.example.test")),
        "wrong audience": bearer(mint.claims_for(sub, aud="another-service")),
        "not a JWT": ("authorization", f"Bearer {sub}"),
    }
    before = {name: u.count for name, u in upstreams.items()}
    client = Client(envoy.port)
    statuses = {what: send(client, authorization, (KEY_HEADER, sub))[0] for what, authorization in bad.items()}
    client.close()
    # jwt_authn answers 403 to a token it verified but whose audience is not allowed, 401 to
    # every other failure.
    assert statuses == {what: 403 if what == "wrong audience" else 401 for what in bad}
    assert {name: u.count for name, u in upstreams.items()} == before, "a refused request reached an upstream"


def test_a_valid_token_wins_over_a_forged_key_header(envoy, core_decision):
    [forged] = canary_subs(core_decision, 1)
    # Stable users whom the forged key would move to the canary (from the subs canary_subs
    # already asked the core about).
    stable = [s for s in (f"wanted-{i}" for i in range(12)) if core_decision(s)["rollout"]["version"] == "v1"]
    assert len(stable) >= 3
    client = Client(envoy.port)
    for sub in stable:
        token = bearer(mint.claims_for(sub))
        for headers in ([token, (KEY_HEADER, forged)], [(KEY_HEADER, forged), token]):
            status, upstream, seen, _ = send(client, *headers)
            assert status == 200
            assert upstream == "v1", f"{sub} with a forged {forged!r}"
            assert received(seen, KEY_HEADER) == [sub]
    client.close()


def test_a_valid_token_without_sub_is_keyless(envoy, core_decision):
    [forged] = canary_subs(core_decision, 1)
    client = Client(envoy.port)
    for _ in range(10):
        status, upstream, seen, _ = send(client, bearer(mint.claims_for(None)), (KEY_HEADER, forged))
        assert (status, upstream) == (200, "v1")
        assert received(seen, "x-rollout-flags") == ["new-cart=off"]
        assert not received(seen, KEY_HEADER)
    client.close()


def test_jwt_authn_alone_also_drops_a_client_copy_in_this_envoy(start_envoy, core_decision):
    # What the README says of Envoy 1.40: jwt_authn itself removes a client's x-auth-sub, token
    # or not, so the early removal is a second line (older Envoys and routes jwt_authn skips).
    doc = load(JWT_CONFIG)
    [hcm] = connection_managers(doc)
    mutations = hcm["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
    assert {"remove": KEY_HEADER} in mutations
    mutations.remove({"remove": KEY_HEADER})
    envoy = start_envoy(doc)
    [forged] = canary_subs(core_decision, 1)
    client = Client(envoy.port)
    status, upstream, seen, _ = send(client, (KEY_HEADER, forged))
    assert (status, upstream, received(seen, KEY_HEADER)) == (200, "v1", [])
    status, upstream, seen, _ = send(client, bearer(mint.claims_for("alice")), (KEY_HEADER, forged))
    assert (status, received(seen, KEY_HEADER)) == (200, ["alice"])
    client.close()


def test_while_the_vm_is_dead_a_client_cannot_choose_its_version_here_either(start_envoy, upstreams):
    # The scenario keeps the static one's early removal of the contract headers, which a dead
    # (FAIL_OPEN, so skipped) filter cannot do.
    dying = set_plugin_configuration(load(JWT_CONFIG), "die", wasm=PROBE_WASM)
    check_spoofing_while_the_vm_is_dead(start_envoy(dying), upstreams)
