"""The ECDS scenario (envoy/ecds/): the filter's extension config discovered from a watched
file, the route Istio's WasmPlugin takes. A new file updates the filter without a restart; a
config the filter refuses is rejected by Envoy and the one in force stays."""

import json
import os

from harness import (
    PROBE_WASM,
    Client,
    check_spoofing_while_the_vm_is_dead,
    ecds_envoy_config,
    ecds_resource,
    rollout,
    wait_until,
)


def rollout_json(v1, v2):
    """A rollout config with these weights for v1 and v2."""
    return rollout(v1, v2).decode()


def publish(folder, text):
    """Writes the resource the way ECDS expects: a new file renamed over the watched one."""
    tmp = folder / ".rollout-filter.yaml.next"
    tmp.write_text(text)
    os.replace(tmp, folder / "rollout-filter.yaml")


def version_of(client, user):
    status, headers, body = client.send([(":path", "/"), (":authority", "a"), ("x-user-id", user)])
    assert status == 200
    return json.loads(body)["upstream"]


def test_ecds_updates_the_filter_without_a_restart_and_rejects_a_bad_config(start_envoy, tmp_path):
    folder = tmp_path / "ecds"
    folder.mkdir()
    publish(folder, ecds_resource(rollout_json(1, 0)))
    envoy = start_envoy(ecds_envoy_config(folder))
    clients = [Client(envoy.port) for _ in range(6)]
    assert {version_of(c, "user-1") for c in clients} == {"v1"}

    publish(folder, ecds_resource(rollout_json(0, 1)))
    wait_until(lambda: {version_of(c, "user-1") for c in clients} == {"v2"}, what="the ECDS update")

    rejected_before = envoy.log_text().count("rollout: config rejected:")
    publish(folder, ecds_resource('{"rollouts": {"checkout": {"versions": [{"name": "v1", "weight": "lots"}]}}}'))
    wait_until(lambda: envoy.log_text().count("rollout: config rejected:") > rejected_before, what="the rejection")
    assert "rollouts.checkout.versions[0].weight: expected an integer, found a string" in envoy.log_text()
    stats = envoy.admin("/stats?filter=extension_config_discovery.http_filter.rollout.update_rejected")[1]
    assert "update_rejected: 1" in stats, stats
    for _ in range(20):
        assert {version_of(c, "user-1") for c in clients} == {"v2"}
    for c in clients:
        c.close()


def test_while_the_discovered_filters_vm_is_dead_a_client_cannot_choose_its_version(start_envoy, upstreams, tmp_path):
    folder = tmp_path / "ecds"
    folder.mkdir()
    publish(folder, ecds_resource("die", wasm=PROBE_WASM))
    check_spoofing_while_the_vm_is_dead(start_envoy(ecds_envoy_config(folder)), upstreams)
