"""The filter in a real Envoy (--concurrency 2) with real upstreams, from the shipped static
scenario (envoy/static/envoy.yaml): golden vectors, split, stickiness, spoofing, metrics, and
what happens when the filter's VM dies."""

import copy
import datetime
import json
import re
import subprocess
import time

import pytest

from harness import (
    ENVOY,
    LIVE_CONFIG,
    PROBE_WASM,
    ROLLOUT_CLI,
    ROOT,
    STATIC_CONFIG,
    Client,
    check_binomial,
    check_spoofing_while_the_vm_is_dead,
    free_port,
    load,
    plugin_configuration,
    set_plugin_configuration,
)

# Vector cases HTTP cannot express: every request through Envoy has a path and a Host.
# Listed by name so that nothing else is ever skipped silently.
INEXPRESSIBLE = {
    ("route-matching.json", "missing :path is treated as /"),
    ("route-matching.json", "missing :authority can match only host-less rollouts"),
}


EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def parse_time_ms(text):
    """An RFC 3339 time as Unix milliseconds."""
    delta = datetime.datetime.fromisoformat(text.replace("z", "Z")) - EPOCH
    return delta // datetime.timedelta(milliseconds=1)


def format_time_ms(ms):
    """Unix milliseconds as RFC 3339 in UTC, with milliseconds only when there are some."""
    text = (EPOCH + datetime.timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"


def shift_times(config, delta_ms):
    """The config with every schedule time moved by `delta_ms`, as rollout_core::vectors::shift_times
    does: a case at time T runs at real time T + delta on it."""
    out = copy.deepcopy(config)
    for rollout in out.get("rollouts", {}).values():
        schedule = rollout.get("schedule")
        if not isinstance(schedule, dict):
            continue
        for key in ("start", "paused_at"):
            if isinstance(schedule.get(key), str):
                schedule[key] = format_time_ms(max(parse_time_ms(schedule[key]) + delta_ms, 0))
    return out


def start_at(start_envoy, config, now, lead):
    """An Envoy on `config` shifted so that its clock reads `now` (RFC 3339) when this returns,
    with that moment (Unix s), the lead used and the shifted config. The shift is anchored `lead` seconds ahead, not
    at the start, so that cases are sent at their own time rather than Envoy's start-up later
    (a case may sit a second before a step begins); the lead doubles while Envoy is not ready
    in time."""
    while True:
        anchor = time.time() + lead
        shifted = shift_times(config, round(anchor * 1000) - parse_time_ms(now))
        envoy = start_envoy(set_plugin_configuration(load(STATIC_CONFIG), json.dumps(shifted)))
        if time.time() < anchor:
            time.sleep(max(anchor - time.time(), 0))
            return envoy, anchor, lead, shifted
        envoy.stop()
        assert lead < 30, f"Envoy took over {lead} s to start"
        lead *= 2


def test_shift_times_moves_schedule_times_only():
    config = {"rollouts": {
        "a": {"schedule": {"start": "2026-11-23T10:00:00Z", "paused_at": "2026-11-23T10:30:00+01:00"}},
        "b": {"versions": [{"name": "v1"}]},
    }}
    shifted = shift_times(config, 90_500)
    assert shifted["rollouts"]["a"]["schedule"] == {"start": "2026-11-23T10:01:30.500Z",
                                                    "paused_at": "2026-11-23T09:31:30.500Z"}
    assert shifted["rollouts"]["b"] == config["rollouts"]["b"]
    assert config["rollouts"]["a"]["schedule"]["start"] == "2026-11-23T10:00:00Z", "the input is not changed"


def revision_of(config, tmp_path):
    """The config's revision, as `rollout validate` prints it."""
    path = tmp_path / "revision.json"
    path.write_text(json.dumps(config))
    out = subprocess.run([str(ROLLOUT_CLI), "validate", str(path)],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return re.search(r"revision ([0-9a-f]{16})$", out.strip()).group(1)


def with_revision(response_headers, revision):
    """Expected response headers with the Server-Timing config revision replaced: for a
    config a test shifted in time, which is a config of its own."""
    out = dict(response_headers)
    if "server-timing" in out:
        out["server-timing"] = re.sub(r'rollout-config;desc="[0-9a-f]{16}"',
                                      f'rollout-config;desc="{revision}"', out["server-timing"])
    return out


def contract_view(headers, names):
    view = {}
    for k, v in headers:
        if k in names:
            view[k] = f"{view[k]}, {v}" if k in view else v
    return view


def explained(config, headers, tmp_path):
    """The core's decision (`rollout explain --json`) for a request with these headers."""
    path = tmp_path / "explain.json"
    path.write_text(json.dumps(config))
    pseudo = dict(h for h in headers if h[0].startswith(":"))
    args = ["--path", pseudo.get(":path", "/"), "--host", pseudo.get(":authority", "example.com")]
    args += [a for k, v in headers if not k.startswith(":") for a in ("-H", f"{k}: {v}")]
    out = subprocess.run([str(ROLLOUT_CLI), "explain", str(path), "--json", *args],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return json.loads(out)["decision"]


def assigned_expectation(config, case, client_view, tmp_path):
    """A case's expected headers for a keyless user whom Envoy gave a key of its own drawing:
    the vector's key replaced by the one in the response's Set-Cookie and, when the version
    came from hashing that key, the version the core gives it (a request carrying it as the
    cookie). None if the response set no such cookie."""
    expected = case["expected"]
    decision = expected["decision"]
    cookie = config["assign"]["cookie"]
    m = re.match(rf"{re.escape(cookie)}=([0-9a-f]{{16}});", client_view.get("set-cookie", ""))
    if not m:
        return None
    headers = {"request": expected["request_headers"], "response": expected["response_headers"]}
    headers = json.loads(json.dumps(headers).replace(decision["assigned"], m.group(1)))
    rollout = decision.get("rollout")
    if rollout and rollout["reason"] == "bucket":
        request = [(k, v) for k, v in case["request"]["headers"] if k != "cookie"]
        again = explained(config, [*request, ("cookie", f"{cookie}={m.group(1)}")], tmp_path)["rollout"]
        before, after = f"{rollout['rollout']}/{rollout['version']}", f"{again['rollout']}/{again['version']}"
        for side in headers.values():
            for name, value in side.items():
                if value == rollout["version"]:
                    side[name] = again["version"]
                else:
                    side[name] = value.replace(before, after)
    return headers


def test_every_shipped_envoy_yaml_passes_envoy_validate():
    files = sorted((ROOT / "envoy").glob("*/envoy.yaml"))
    assert files, "no shipped envoy.yaml found"
    for path in files:
        result = subprocess.run(
            [str(ENVOY), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0 and "OK" in result.stdout, f"{path}:\n{result.stdout}{result.stderr}"


def test_golden_vectors_give_the_same_headers_in_real_envoy(start_envoy, tmp_path):
    skipped, ran, failures = set(), 0, []
    n_tripped = n_untimed = n_timed = n_assigned = 0
    lead = 2.0
    for path in sorted((ROOT / "testdata/vectors").glob("*.json")):
        vector = json.loads(path.read_text())
        config = vector["config"]
        scheduled = any("schedule" in r for r in config.get("rollouts", {}).values())
        # The contract's header names, as the core resolved them for this config.
        request_names, response_names = set(vector["contract"]["request"]), set(vector["contract"]["response"])
        version_header = vector["contract"]["request"][0]
        # Envoy's clock cannot be set: each distinct time is one Envoy on a shifted config.
        groups = {}
        for case in vector["cases"]:
            request = case["request"]
            present = {k for k, _ in request["headers"]}
            if not {":path", ":authority"} <= present:
                skipped.add((path.name, case["description"]))
            elif request.get("tripped"):
                # Staging a trip in real Envoy means failing a version for real: the guard's
                # own real-Envoy tests cover trips.
                n_tripped += 1
            elif scheduled and "now" not in request:
                # "No time from the host" is an input of the core that Envoy, which always
                # has a clock, never gives.
                n_untimed += 1
            else:
                # Only a schedule needs Envoy at the case's time. A token's expiry is checked
                # on Envoy's own clock: the vectors' tokens expire in 2023 or 2100, on the
                # same side of it as of their time.
                groups.setdefault(request.get("now") if scheduled else None, []).append(case)
        for now, cases in groups.items():
            # The vector's own revision, unless the config was shifted in time.
            revision = None
            if now is None:
                envoy = start_envoy(set_plugin_configuration(load(STATIC_CONFIG), json.dumps(config)))
            else:
                envoy, anchor, lead, shifted = start_at(start_envoy, config, now, lead)
                revision = revision_of(shifted, tmp_path)
            client = Client(envoy.port)
            for case in cases:
                where = f"{path.name} / {case['description']}"
                request = case["request"]
                headers = list(request["headers"])
                if request.get("response_headers"):
                    headers.append(("x-echo-response", json.dumps(request["response_headers"])))
                status, response_headers, body = client.send(headers)
                ran += 1
                n_timed += now is not None
                if status != 200:
                    failures.append(f"{where}: status {status}")
                    continue
                upstream = contract_view(json.loads(body)["headers"], request_names)
                client_view = contract_view(response_headers, response_names)
                expected = case["expected"]
                if "assigned" in expected["decision"]:
                    # Envoy's randomness cannot be fixed from outside: the key it drew is the
                    # one the upstream got, and decides as the core says it does.
                    n_assigned += 1
                    headers = assigned_expectation(config, case, client_view, tmp_path)
                    if headers is None:
                        failures.append(f"{where}: no assigned key in {client_view}")
                    elif (upstream, client_view) != (headers["request"], headers["response"]):
                        failures.append(f"{where}: upstream got {upstream}, client got {client_view}, "
                                        f"expected {headers}")
                    continue
                if "entropy" in request and expected["decision"]["key"] == "missing":
                    # Envoy's randomness cannot be fixed from outside: check the choice is one
                    # of the rollout's versions, and that both sides agree.
                    versions = {v["name"] for r in config["rollouts"].values() for v in r["versions"]}
                    got = upstream.get(version_header)
                    if got not in versions or client_view.get(version_header) != got:
                        failures.append(f"{where}: version {got!r} not one of {versions}")
                    continue
                if upstream != expected["request_headers"]:
                    failures.append(f"{where}: upstream got {upstream}, expected {expected['request_headers']}")
                expected_response = expected["response_headers"]
                if revision is not None:
                    expected_response = with_revision(expected_response, revision)
                if client_view != expected_response:
                    failures.append(f"{where}: client got {client_view}, expected {expected_response}")
            client.close()
            if now is not None:
                late = time.time() - anchor
                assert late < 1, f"{path.name} at {now}: sent up to {late:.2f} s after the case's time"
            envoy.stop()
    assert not failures, "\n".join(failures)
    assert skipped == INEXPRESSIBLE, f"skipped {skipped}"
    assert (n_tripped, n_untimed) == (8, 1), f"skipped {n_tripped} tripped and {n_untimed} untimed cases"
    assert n_assigned == 3, f"{n_assigned} cases with an assigned key"
    assert ran >= 40 and n_timed >= 20, f"only {ran} cases ran, {n_timed} of them timed"


def test_split_over_10000_users_matches_the_weights_and_the_harness(start_envoy, tmp_path):
    envoy = start_envoy()
    client = Client(envoy.port)
    n_users = 10_000
    counts = {"v1": 0, "v2": 0}
    for i in range(n_users):
        status, _, body = client.send([(":path", "/"), (":authority", "shop.example.com"), ("x-user-id", f"user-{i}")])
        assert status == 200
        counts[json.loads(body)["upstream"]] += 1
    client.close()
    check_binomial("v2 share through real Envoy", counts["v2"], n_users, 0.10)
    # The same users through the same .wasm in the wasmtime harness land exactly alike.
    config_file = tmp_path / "static.json"
    config_file.write_text(json.dumps(plugin_configuration(load(STATIC_CONFIG))))
    out = subprocess.run([str(ROLLOUT_CLI), "simulate", str(config_file), "--users", str(n_users)],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    harness_v2 = int(next(line for line in out.splitlines() if line.startswith("checkout/v2")).split()[1])
    assert counts["v2"] == harness_v2, f"envoy {counts}, harness v2 {harness_v2}"


def test_one_users_100_requests_all_reach_one_version(start_envoy):
    envoy = start_envoy()
    client = Client(envoy.port)
    seen_versions = set()
    for user in ["user-3", "user-1", "someone@example.com", "9f8e7d6c"]:
        versions = set()
        for _ in range(100):
            status, headers, body = client.send([(":path", "/"), (":authority", "a"), ("cookie", f"uid={user}")])
            assert status == 200
            versions.add(json.loads(body)["upstream"])
        assert len(versions) == 1, f"{user} reached {versions}"
        seen_versions |= versions
    assert seen_versions == {"v1", "v2"}, "the chosen users cover both versions"
    client.close()


def test_spoofed_client_headers_change_neither_the_decision_nor_the_metrics_headers(start_envoy):
    envoy = start_envoy()
    client = Client(envoy.port)
    spoof = [("x-rollout-version", "v2"), ("x-rollout", "other"), ("x-rollout-flags", "new-cart=on"),
             ("x-rollout-reason", "guard"), ("X-Rollout-Version", "v2")]
    for i in range(300):
        base = [(":path", "/"), (":authority", "a"), ("x-user-id", f"user-{i}")]
        _, honest_headers, honest_body = client.send(base)
        _, spoof_headers, spoof_body = client.send(base + spoof)
        honest, spoofed = json.loads(honest_body), json.loads(spoof_body)
        assert spoofed["upstream"] == honest["upstream"], f"user-{i}"
        received = [(k, v) for k, v in spoofed["headers"] if k.startswith("x-rollout")]
        assert received == [(k, v) for k, v in honest["headers"] if k.startswith("x-rollout")], f"user-{i}"
        assert dict(spoof_headers)["x-rollout-version"] == honest["upstream"]
        assert dict(honest_headers)["x-rollout-version"] == honest["upstream"]
    client.close()


def test_prometheus_metrics_match_the_upstreams_own_counters(start_envoy, upstreams):
    envoy = start_envoy()
    before = {name: u.count for name, u in upstreams.items()}
    client = Client(envoy.port)
    failed = {"v1": 0, "v2": 0}
    for i in range(600):
        headers = [(":path", "/"), (":authority", "a"), ("x-user-id", f"m-{i}")]
        if i % 7 == 0:
            headers.append(("x-echo-response", json.dumps([[":status", "503"]])))
        status, response_headers, _ = client.send(headers)
        if status == 503:
            failed[dict(response_headers)["x-rollout-version"]] += 1
    client.close()
    samples = envoy.prometheus()
    for version, upstream in upstreams.items():
        served = upstream.count - before[version]
        labels = {("rollout", "checkout"), ("version", version)}
        assert samples[("rollout_requests_total", frozenset(labels))] == served, version
        assert samples[("rollout_responses_total", frozenset(labels | {("class", "5xx")}))] == failed[version]
        assert samples[("rollout_responses_total", frozenset(labels | {("class", "2xx")}))] == served - failed[version]
    # Every response is also a sample of its version's latency histogram. Envoy merges
    # histograms from the workers at its stats flush (every 5 s by default), so wait for one.
    deadline = time.monotonic() + 15
    while True:
        samples = envoy.prometheus()
        counts = {v: samples.get(("rollout_upstream_latency_ms_count",
                                  frozenset({("rollout", "checkout"), ("version", v)})), 0)
                  for v in upstreams}
        served = {v: u.count - before[v] for v, u in upstreams.items()}
        if counts == served or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert counts == served
    assert sum(failed.values()) == len(range(0, 600, 7))


def test_a_filter_whose_vm_dies_degrades_to_the_stable_version(start_envoy, upstreams):
    # The shipped route layout and failure policy, with a filter that traps on every request.
    dying = set_plugin_configuration(load(STATIC_CONFIG), "die", wasm=PROBE_WASM)
    envoy = start_envoy(dying)
    before = upstreams["v1"].count
    statuses = []
    # Several connections, so that both workers' VMs see requests and die.
    clients = [Client(envoy.port) for _ in range(4)]
    for i in range(100):
        client = clients[i % len(clients)]
        status, _, body = client.send([(":path", "/"), (":authority", "a"), ("x-user-id", f"user-{i}")])
        statuses.append(status)
        if status == 200:
            assert json.loads(body)["upstream"] == "v1", f"request {i}"
    for client in clients:
        client.close()
    # The request during which a worker's VM traps is answered 503 by Envoy; with FAIL_OPEN
    # every later request skips the filter and the default route sends it to stable.
    failed = [i for i, s in enumerate(statuses) if s != 200]
    assert len(failed) <= 2, f"more failures than workers: {failed}"
    assert all(i < 8 for i in failed), f"failures after the VMs died: {failed}"
    assert upstreams["v1"].count - before == 100 - len(failed)
    assert "dying on purpose" in envoy.log_text()


@pytest.mark.parametrize("shipped", [STATIC_CONFIG, LIVE_CONFIG], ids=["static", "live"])
def test_while_the_vm_is_dead_a_client_cannot_choose_its_version(start_envoy, upstreams, shipped):
    # FAIL_OPEN skips a dead filter, so only something outside the VM can drop client copies of
    # the contract headers before the routes match on them.
    dying = set_plugin_configuration(load(shipped), "die", wasm=PROBE_WASM)
    check_spoofing_while_the_vm_is_dead(start_envoy(dying), upstreams)


def test_a_version_whose_upstream_is_down_gets_503_with_the_contract_headers(start_envoy):
    # What a user can rely on, on both hosts (the Worker's test is in worker/test): the
    # request is answered 503, and the response still says which version it was decided for.
    config = set_plugin_configuration(load(STATIC_CONFIG), json.dumps({
        "user_key": ["header:x-user-id"],
        "rollouts": {"checkout": {"stable": "v1", "versions": [{"name": "v1", "weight": 0},
                                                                {"name": "v2", "weight": 100}]}},
    }))
    envoy = start_envoy(config, ports={8082: free_port()})  # nothing listens there
    client = Client(envoy.port)
    status, headers, body = client.send([(":path", "/"), (":authority", "a"), ("x-user-id", "u1")])
    client.close()
    headers = dict(headers)
    assert status == 503, body
    assert headers["x-rollout-version"] == "v2"
    assert 'rollout;desc="checkout/v2"' in headers["server-timing"]


def test_the_config_in_force_and_flag_evaluations_reach_prometheus(start_envoy, tmp_path):
    # rollout_config_info{hash} names the config as `rollout validate` and Server-Timing do;
    # the opt-in flag counts, kept in each worker's VM, reach Envoy's counters on the tick.
    config = {
        "user_key": ["header:x-user-id"],
        "metrics": {"flags": True},
        "rollouts": {"checkout": {"versions": [{"name": "v1", "weight": 1}, {"name": "v2", "weight": 1}]}},
        "flags": {"all": {"percentage": 100}, "none": {"enabled": False}, "half": {"percentage": 50}},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config, indent=2))
    out = subprocess.run([str(ROLLOUT_CLI), "validate", str(path)],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    revision = re.search(r"revision ([0-9a-f]{16})$", out.strip()).group(1)
    envoy = start_envoy(set_plugin_configuration(load(STATIC_CONFIG), json.dumps(config)))
    client = Client(envoy.port)
    for i in range(200):
        status, headers, _ = client.send([(":path", "/"), (":authority", "a"), ("x-user-id", f"f-{i}")])
        assert status == 200
        assert dict(headers)["server-timing"].endswith(f'rollout-config;desc="{revision}"')
    client.close()

    def flag(name, value):
        return samples.get(("rollout_flag_evaluations_total", frozenset({("flag", name), ("value", value)})))

    deadline = time.monotonic() + 10
    while True:
        samples = envoy.prometheus()
        if flag("all", "on") == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert samples[("rollout_config_info", frozenset({("hash", revision)}))] == 1
    assert (flag("all", "on"), flag("all", "off")) == (200, 0)
    assert (flag("none", "on"), flag("none", "off")) == (0, 200)
    assert flag("half", "on") + flag("half", "off") == 200
    assert 60 < flag("half", "on") < 140
