"""The differential suite (issue 16): every scenario in testdata/differential/ runs through the
harness (`target/release/rollout run SCENARIO --filter WASM`) and through a real Envoy 1.40
(`envoy/differential.py`, `--concurrency 1`), and the two outputs must agree field by field:
per request the client's status, headers and body and what the route's upstream received (or
that nothing reached it), then the filter's log lines (level and text, in order) and its
metrics.

One normalisation is applied to both sides before comparing (`normalise`): the headers that
Envoy's connection manager and router add, whose values no filter sets or sees, are dropped
(client side `date`, `server`, `x-envoy-upstream-service-time`; upstream side
`x-forwarded-proto`, `x-request-id`, `x-envoy-expected-rq-timeout-ms`), and header lists are
compared as sorted lists of [name, value] (names case-sensitive: Envoy lowercases them, so the
harness must too). Nothing else is forgiven: any other difference fails, printing both sides.

Build first: the filters (`cargo build --profile wasm -p rollout-filter -p probe-filter --target
wasm32-wasip1`) and the CLI (`cargo build --release -p host-test`)."""

import json
import re
import subprocess

import pytest

import differential
from harness import ROLLOUT_CLI, ROOT

SCENARIOS = sorted((ROOT / "testdata/differential").glob("*.json"))

DROPPED_CLIENT = {"date", "server", "x-envoy-upstream-service-time"}
DROPPED_UPSTREAM = {"x-forwarded-proto", "x-request-id", "x-envoy-expected-rq-timeout-ms"}


def normalise(output):
    """The output with Envoy's own headers dropped and header lists sorted (see the module)."""
    requests = []
    for request in output["requests"]:
        client = request["client"]  # None: the client got no response
        if client is not None:
            client = dict(client)
            client["headers"] = sorted([k, v] for k, v in client["headers"] if k not in DROPPED_CLIENT)
        upstream = request["upstream"]
        if upstream is not None:
            upstream = dict(upstream)
            upstream["headers"] = sorted([k, v] for k, v in upstream["headers"] if k not in DROPPED_UPSTREAM)
        requests.append({"client": client, "upstream": upstream})
    return {"requests": requests, "logs": output["logs"], "metrics": output["metrics"]}


def differences(harness, envoy):
    """Every field where the two normalised outputs differ, as readable lines."""
    found = []
    if len(harness["requests"]) != len(envoy["requests"]):
        found.append(f"requests: harness ran {len(harness['requests'])}, Envoy {len(envoy['requests'])}")
    for i, (h, e) in enumerate(zip(harness["requests"], envoy["requests"], strict=False)):
        if (h["client"] is None) != (e["client"] is None):
            found.append(f"requests[{i}].client: harness {h['client']!r}, Envoy {e['client']!r}")
            continue
        for field in ("status", "headers", "body"):
            if h["client"] is not None and h["client"].get(field) != e["client"].get(field):
                found.append(f"requests[{i}].client.{field}: harness {h['client'].get(field)!r}, "
                             f"Envoy {e['client'].get(field)!r}")
        if (h["upstream"] is None) != (e["upstream"] is None):
            found.append(f"requests[{i}].upstream: harness {h['upstream']!r}, Envoy {e['upstream']!r}")
        elif h["upstream"] is not None:
            for field in ("method", "path", "headers", "body"):
                if h["upstream"].get(field) != e["upstream"].get(field):
                    found.append(f"requests[{i}].upstream.{field}: harness {h['upstream'].get(field)!r}, "
                                 f"Envoy {e['upstream'].get(field)!r}")
    if harness["logs"] != envoy["logs"]:
        found.append(f"logs:\n  harness {json.dumps(harness['logs'])}\n  Envoy   {json.dumps(envoy['logs'])}")
    for name in sorted(set(harness["metrics"]) | set(envoy["metrics"])):
        h, e = harness["metrics"].get(name), envoy["metrics"].get(name)
        if h != e:
            found.append(f"metrics[{name!r}]: harness {h!r}, Envoy {e!r}")
    return found


def wasm_of(scenario):
    """The .wasm a scenario names, relative to its own file."""
    return (scenario.parent / json.loads(scenario.read_text())["filter"]).resolve()


def run_harness(scenario):
    """The harness's output for a scenario, or the reason it gave none."""
    try:
        done = subprocess.run([str(ROLLOUT_CLI), "run", str(scenario), "--filter", str(wasm_of(scenario))],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
    except OSError as e:
        return None, f"could not run {ROLLOUT_CLI}: {e}"
    if done.returncode != 0:
        return None, f"`rollout run` exited {done.returncode}:\n{done.stderr[-3000:]}"
    try:
        return json.loads(done.stdout), None
    except json.JSONDecodeError as e:
        return None, f"`rollout run` printed no JSON ({e}):\n{done.stdout[-3000:]}"


def test_the_scenarios_are_there():
    """The parametrised test below would pass vacuously on an empty folder."""
    assert len(SCENARIOS) >= 15, [s.name for s in SCENARIOS]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.stem for s in SCENARIOS])
def test_the_harness_does_what_envoy_does(scenario, tmp_path):
    envoy_side = differential.run(scenario, tmp_dir=tmp_path)
    harness_side, failure = run_harness(scenario)
    both = f"Envoy's output:\n{json.dumps(envoy_side, indent=1)}"
    assert failure is None, f"{scenario.name}: the harness side failed: {failure}\n{both}"
    diffs = differences(normalise(harness_side), normalise(envoy_side))
    assert not diffs, (f"{scenario.name}: the harness and Envoy differ:\n" + "\n".join(diffs)
                       + f"\nharness's output:\n{json.dumps(harness_side, indent=1)}\n{both}")


def test_normalise_drops_only_envoys_own_headers_and_sorts():
    """The normalisation forgives exactly what the module says, no more."""
    output = {"requests": [{
        "client": {"status": 200, "body": "", "headers": [["x-b", "1"], ["date", "now"], ["server", "envoy"],
                                                           ["x-envoy-upstream-service-time", "3"], ["X-A", "2"]]},
        "upstream": {"method": "GET", "path": "/", "body": "", "headers": [
            ["x-request-id", "r"], ["x-forwarded-proto", "http"], ["x-envoy-expected-rq-timeout-ms", "15000"],
            ["host", "a"], ["x-forwarded-for", "1.2.3.4"]]}}], "logs": [], "metrics": {}}
    [request] = normalise(output)["requests"]
    assert request["client"]["headers"] == [["X-A", "2"], ["x-b", "1"]]
    assert request["upstream"]["headers"] == [["host", "a"], ["x-forwarded-for", "1.2.3.4"]]


def test_differences_name_each_field_that_differs():
    """A difference anywhere is reported; equal outputs give none."""
    base = {"requests": [{"client": {"status": 200, "headers": [], "body": "a"}, "upstream": None}],
            "logs": [{"level": "info", "message": "x"}], "metrics": {"m": 1}}
    assert differences(base, json.loads(json.dumps(base))) == []
    other = json.loads(json.dumps(base))
    other["requests"][0]["client"]["body"] = "b"
    other["requests"][0]["upstream"] = {"method": "GET", "path": "/", "headers": [], "body": ""}
    other["logs"][0]["level"] = "warn"
    other["metrics"]["m"] = 2
    found = differences(base, other)
    assert [line.split(":")[0] for line in found] == [
        "requests[0].client.body", "requests[0].upstream", "logs", "metrics['m']"]


def test_the_envoy_runner_keeps_only_the_filters_lines():
    """Envoy's records (RECORD-led `level|logger|message`): the filter's lines, prefix removed,
    levels mapped, a message spanning lines kept whole; host lines dropped."""
    r = differential.RECORD
    text = (f"{r}info|main|starting\n"
            f"{r}info|wasm|wasm log differential differential: vm config: \n"
            f"{r}critical|wasm|wasm log differential differential differential: panicked at x:\nboom\n"
            f"{r}error|wasm|Function: proxy_on_request_headers failed\n"
            f"{r}warning|wasm|wasm log differential differential differential: careful\n")
    assert differential.filter_logs(text) == [
        {"level": "info", "message": "vm config: "},
        {"level": "critical", "message": "panicked at x:\nboom"},
        {"level": "warn", "message": "careful"},
    ]


def test_every_scenario_names_a_filter_that_is_built():
    missing = [s.name for s in SCENARIOS if not wasm_of(s).is_file()]
    assert not missing, f"build the filters first; missing for {missing}"


@pytest.mark.parametrize(("scenario", "path"), [
    ({"filter": "x.wasm", "bogus": 1}, "unknown fields ['bogus']"),
    ({"plugin_config": ""}, "filter: missing"),
    ({"filter": "x.wasm", "failure_policy": "OPEN"}, "failure_policy:"),
    ({"filter": "x.wasm", "clusters": {"a": {"hang": True, "status": 200}}}, "clusters.a:"),
    ({"filter": "x.wasm", "requests": [{}, {"header": []}]}, "requests[1]: unknown fields ['header']"),
])
def test_the_envoy_runner_names_what_is_wrong_in_a_scenario(tmp_path, scenario, path):
    file = tmp_path / "bad.json"
    file.write_text(json.dumps(scenario))
    with pytest.raises(ValueError, match=re.escape(f"{file}: {path}")):
        differential.load_scenario(file)
