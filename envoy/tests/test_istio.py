"""The Istio manifests (envoy/istio/) against Istio's own CRD schemas (shared/istio/crds.yaml,
no cluster runs here), and against each other: the plugin config is a valid rollout config,
and every version it can choose has a subset and a route."""

import json
import subprocess

import jsonschema
import pytest
import yaml

from conftest import ROOT

ISTIO = ROOT / "envoy/istio"
CRDS = ROOT.parent / "shared/istio/crds.yaml"
ROLLOUT_CLI = ROOT / "target/release/rollout"


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


@pytest.mark.parametrize("name", ["wasmplugin.yaml", "virtualservice.yaml", "destinationrule.yaml"])
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
