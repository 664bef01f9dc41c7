"""The Istio manifests (envoy/istio/) against Istio's own CRD schemas (envoy/istio/schemas/,
no cluster runs here), and against each other: the plugin config is a valid rollout config,
every version it can choose has a subset and a route, and the EnvoyFilter drops client copies
of exactly the contract headers on the same gateways, which a real Envoy checks with a dead VM."""

import json
import subprocess

import jsonschema
import pytest
import yaml

from harness import (
    PROBE_WASM,
    ROLLOUT_CLI,
    ROOT,
    STATIC_CONFIG,
    check_spoofing_while_the_vm_is_dead,
    connection_managers,
    load,
    set_plugin_configuration,
)

ISTIO = ROOT / "envoy/istio"
CRDS = ISTIO / "schemas/crds.yaml"


def schemas():
    """{(group/version, kind): openAPIV3Schema} for every served version of each CRD."""
    assert CRDS.exists(), f"Istio CRD schemas not found at {CRDS}"
    out = {}
    for crd in yaml.safe_load_all(CRDS.read_text()):
        if not crd:
            continue
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            out[key] = version["schema"]["openAPIV3Schema"]
    return out


def manifest(name):
    return yaml.safe_load((ISTIO / name).read_text())


def validate(doc, all_schemas):
    schema = all_schemas[(doc["apiVersion"], doc["kind"])]
    jsonschema.Draft7Validator(schema).validate(doc)


@pytest.mark.parametrize("name", ["wasmplugin.yaml", "virtualservice.yaml", "destinationrule.yaml", "envoyfilter.yaml"])
def test_manifest_matches_istios_crd_schema(name):
    validate(manifest(name), schemas())


def test_the_schema_check_catches_a_wrong_manifest():
    doc = manifest("wasmplugin.yaml")
    doc["spec"]["failStrategy"] = "FAIL_OPENN"
    with pytest.raises(jsonschema.ValidationError):
        validate(doc, schemas())


def test_plugin_config_is_a_valid_rollout_config_and_every_version_has_a_subset_and_route(tmp_path):
    plugin = manifest("wasmplugin.yaml")["spec"]["pluginConfig"]
    config_file = tmp_path / "plugin.json"
    config_file.write_text(json.dumps(plugin))
    result = subprocess.run([str(ROLLOUT_CLI), "validate", str(config_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rollout = plugin["rollouts"]["checkout"]
    versions = {v["name"] for v in rollout["versions"]}
    subsets = {s["name"] for s in manifest("destinationrule.yaml")["spec"]["subsets"]}
    assert versions <= subsets, f"versions without a subset: {versions - subsets}"
    routes = manifest("virtualservice.yaml")["spec"]["http"]
    routed = {r["route"][0]["destination"]["subset"]: r for r in routes}
    for version in versions - {rollout["stable"]}:
        match = routed[version]["match"][0]
        assert match["headers"]["x-rollout-version"] == {"exact": version}
    default = routes[-1]
    assert "headers" not in default["match"][0] and default["route"][0]["destination"]["subset"] == rollout["stable"]
    assert manifest("virtualservice.yaml")["spec"]["hosts"] == rollout["match"]["hosts"]


def test_the_envoyfilter_drops_exactly_the_contract_headers_on_the_plugins_gateways():
    plugin, envoy_filter = manifest("wasmplugin.yaml"), manifest("envoyfilter.yaml")
    assert envoy_filter["spec"]["workloadSelector"]["labels"] == plugin["spec"]["selector"]["matchLabels"]
    defaults = {"version": "x-rollout-version", "rollout": "x-rollout", "flags": "x-rollout-flags",
                "reason": "x-rollout-reason"}
    # The defaults above are the core's: a vector whose config names no headers carries the
    # request contract the core resolved, so a new contract header cannot be missed here.
    vector = json.loads((ROOT / "testdata/vectors/basic-split.json").read_text())
    assert "headers" not in vector["config"]
    assert set(vector["contract"]["request"]) == set(defaults.values())
    names = {**defaults, **plugin["spec"]["pluginConfig"].get("headers", {})}
    [patch] = envoy_filter["spec"]["configPatches"]
    assert patch["match"]["context"] == "GATEWAY" and patch["patch"]["operation"] == "MERGE"
    [extension] = patch["patch"]["value"]["typed_config"]["early_header_mutation_extensions"]
    removed = {m["remove"] for m in extension["typed_config"]["mutations"]}
    assert removed == set(names.values())
    routes = manifest("virtualservice.yaml")["spec"]["http"]
    routed = {h for route in routes for m in route["match"] for h in m.get("headers", {})}
    assert routed <= removed, f"routes match on headers a client may still send: {routed - removed}"


def test_the_envoyfilters_patch_stops_spoofing_in_real_envoy_while_the_vm_is_dead(start_envoy, upstreams):
    """The EnvoyFilter's MERGE applied to the static scenario's connection manager, without the
    scrub it ships with, in a real Envoy whose filter VM dies."""
    [patch] = manifest("envoyfilter.yaml")["spec"]["configPatches"]
    merged = patch["patch"]["value"]["typed_config"]
    target = patch["match"]["listener"]["filterChain"]["filter"]["name"]
    assert target == "envoy.filters.network.http_connection_manager"
    bootstrap = set_plugin_configuration(load(STATIC_CONFIG), "die", wasm=PROBE_WASM)
    [hcm] = connection_managers(bootstrap)
    assert hcm["@type"] == merged["@type"]
    del hcm["early_header_mutation_extensions"]
    for key, value in merged.items():
        # Protobuf merge semantics, as istiod applies MERGE: repeated fields are appended.
        if isinstance(value, list):
            hcm.setdefault(key, []).extend(value)
        else:
            hcm[key] = value
    check_spoofing_while_the_vm_is_dead(start_envoy(bootstrap), upstreams)
