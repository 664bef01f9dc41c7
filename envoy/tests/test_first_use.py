"""What a first-time user meets in a real Envoy, as the docs quote it (issue 18): the metric
names with and without the shipped `stats_tags` (docs/config.md, Metrics), a refused config at
start-up whatever `failure_policy` says (README.md, Bad configs), and a live source whose
cluster is mistyped or down (docs/config.md, Live config)."""

import json
import re
import subprocess

import pytest

from harness import (
    ENVOY,
    ROOT,
    STATIC_CONFIG,
    Client,
    absolute_wasm_paths,
    dump,
    free_port,
    live_config_with,
    load,
    move_ports,
    set_plugin_configuration,
    wait_until,
    wasm_plugins,
)

CONFIG_MD = (ROOT / "docs/config.md").read_text()
README = (ROOT / "README.md").read_text()
# The rollout config the README's "Bad configs" log quotes.
REFUSED = json.dumps({"rollouts": {"checkout": {"versions": [{"name": "v1", "weight": -10}]}}})


def quoted(text, marker):
    """The lines of the fenced block between `<!-- MARKER:begin -->` and `<!-- MARKER:end -->`."""
    m = re.search(rf"<!-- {marker}:begin -->\s*```\w*\n(.*?)```\s*<!-- {marker}:end -->", text, re.S)
    assert m, f"no {marker} block"
    return m.group(1).splitlines()


def prometheus_lines(envoy):
    """The sample lines of /stats/prometheus."""
    return [line for line in envoy.admin("/stats/prometheus")[1].splitlines() if not line.startswith("#")]


@pytest.mark.parametrize("tags", [True, False], ids=["with-stats_tags", "without-stats_tags"])
def test_the_metric_names_the_docs_quote_are_the_ones_envoy_emits(start_envoy, tags):
    doc = load(STATIC_CONFIG)
    if not tags:
        del doc["stats_config"]
    envoy = start_envoy(doc)
    client = Client(envoy.port)
    # The docs quote these 20 users: user keys decide the split, so the counts are exact.
    for i in range(20):
        assert client.send([(":path", "/"), ("x-user-id", f"u{i}")])[0] == 200
    client.close()
    lines = prometheus_lines(envoy)
    expected = quoted(CONFIG_MD, "metrics-with-tags" if tags else "metrics-without-tags")
    assert len(expected) >= 3
    missing = [line for line in expected if line not in lines]
    assert not missing, f"{missing} not in\n" + "\n".join(line for line in lines if "rollout_" in line)
    # /stats shows the embedded name either way, as docs/config.md and the yaml comment say.
    name = "wasmcustom.rollout_requests_total.rollout=.=checkout;.;.version=.=v2;.;"
    stats = envoy.admin("/stats?filter=wasmcustom.rollout_requests_total")[1]
    assert f"{name}: 1" in stats, stats
    assert f"{name}: 1" in CONFIG_MD.splitlines()
    for bootstrap in ROOT.glob("envoy/*/envoy.yaml"):
        text = bootstrap.read_text()
        if "stats_tags" in text:
            assert f"# {name} (as /stats shows" in text, bootstrap


def run_envoy(config, tmp_path, *args):
    """Runs Envoy to its end on a config (its ports moved to free ones); (exit status, log)."""
    doc = move_ports(load(config), {10000: free_port(), 9901: free_port()})
    path = tmp_path / "envoy.yaml"
    path.write_text(dump(absolute_wasm_paths(doc)))
    out = subprocess.run([str(ENVOY), "-c", str(path), "--disable-hot-restart", "--base-id", str(free_port()),
                          "-l", "info", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    return out.returncode, out.stdout + out.stderr


@pytest.mark.parametrize("policy", ["FAIL_OPEN", "FAIL_CLOSED", None])
def test_a_refused_config_stops_envoy_and_envoy_says_fail_closed_whatever_the_policy(tmp_path, policy):
    doc = set_plugin_configuration(load(STATIC_CONFIG), REFUSED)
    for plugin in wasm_plugins(doc):
        plugin.pop("failure_policy", None)
        if policy:
            plugin["failure_policy"] = policy
    status, log = run_envoy(doc, tmp_path, "--concurrency", "1")
    assert status == 1, log[-2000:]
    # Every line the README quotes, in its order, without times, thread ids and locations.
    block = re.search(r"### Bad configs.*?```\n(.*?)```", README, re.S).group(1).splitlines()
    assert len(block) == 5
    found = [re.sub(r"^\[[^]]*\]\[\d+\](\[\w+\]\[\w+\]) \[[^]]*\] ", r"\1 ", line) for line in log.splitlines()]
    positions = [found.index(line) if line in found else None for line in block]
    absent = [b for b, p in zip(block, positions, strict=True) if p is None]
    assert not absent, f"{absent} not in\n{log[-3000:]}"
    assert positions == sorted(positions)
    assert "error `Unable to create Wasm plugin rollout` initializing config" in log
    status, log = run_envoy(doc, tmp_path, "--mode", "validate")
    assert status == 1, log[-2000:]
    assert "Unable to create Wasm plugin rollout" in log


def test_a_mistyped_source_cluster_passes_validation_and_is_named_in_words_at_run_time(start_envoy, tmp_path):
    doc = live_config_with(cluster="rollout-confg")
    status, log = run_envoy(doc, tmp_path, "--mode", "validate")
    assert status == 0, log[-2000:]
    envoy = start_envoy(doc, ports={8090: free_port()})
    words = ('rollout: config source failing, keeping the config in force: Envoy has no cluster named '
             '"rollout-confg" (config_source.cluster)')
    wait_until(lambda: words in envoy.log_text(), what="the unknown cluster's log line")
    assert "HostError" not in envoy.log_text()
    client = Client(envoy.port)
    status, _, body = client.send([(":path", "/"), ("x-user-id", "u1")])
    client.close()
    assert (status, json.loads(body)["upstream"]) == (200, "v1")  # the fallback's version


def test_a_source_that_is_down_is_logged_as_503_which_is_envoys_own_reply(start_envoy):
    # Nothing listens on the source's port, so no source can have answered 503.
    envoy = start_envoy(live_config_with(), ports={8090: free_port()})
    line = "rollout: config source failing, keeping the config in force: status 503"
    wait_until(lambda: line in envoy.log_text(), what="the failing source's log line")
    stats = envoy.admin("/stats?filter=cluster.rollout-config.upstream_cx_connect_fail")[1]
    assert re.search(r"upstream_cx_connect_fail: [1-9]", stats), stats
    client = Client(envoy.port)
    status, _, body = client.send([(":path", "/"), ("x-user-id", "u1")])
    client.close()
    assert (status, json.loads(body)["upstream"]) == (200, "v1")
