"""The fleet-wide view (envoy/prometheus/): the Flagger and Argo Rollouts templates against those
projects' CRD schemas (envoy/prometheus/schemas/, no cluster runs here), the rules through
promtool's checker and unit tests, the templates' queries against the recorded rule names, and
a real Prometheus scraping a real Envoy during a bad canary: the canary's error alert fires, the
healthy stable version's does not, and the templates' queries, run for real, tell them apart."""

import copy
import functools
import json
import pathlib
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import jsonschema
import pytest
import yaml

from harness import (
    ROOT,
    STATIC_CONFIG,
    Envoy,
    Traffic,
    Upstream,
    free_port,
    load,
    plugin_configuration,
    set_plugin_configuration,
    stop_process,
)

PROMETHEUS_DIR = ROOT / "envoy/prometheus"
RULES = PROMETHEUS_DIR / "rules.yaml"
FLAGGER = PROMETHEUS_DIR / "flagger-metrictemplate.yaml"
ARGO = PROMETHEUS_DIR / "argo-analysistemplate.yaml"
ERROR_ALERT = "RolloutCanaryErrorRatioHigh"
INSTALL_HINT = "install Debian's prometheus package (scripts/test.sh does: ensure_apt_tool promtool prometheus)"


def tool(name):
    """The path of a Prometheus command; fails (never skips) when it is missing."""
    path = shutil.which(name)
    assert path, f"{name} not found: {INSTALL_HINT}"
    return path


# --- the manifests against the CRD schemas -----------------------------------------------


def strict(schema):
    """A copy of an OpenAPI schema that refuses unknown fields, as the API server's strict field
    validation does: a misspelt optional field would otherwise pass, since CRD schemas leave
    `additionalProperties` open where Kubernetes prunes instead."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: strict(s) for name, s in value.items()}
        elif key in ("items", "additionalProperties", "allOf", "anyOf", "oneOf", "not"):
            out[key] = strict(value)
        else:
            out[key] = copy.deepcopy(value)
    open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not open_ended:
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schemas():
    """{(group/version, kind): strict openAPIV3Schema} for every served version of each CRD."""
    files = sorted((PROMETHEUS_DIR / "schemas").glob("*.yaml"))
    assert len(files) == 2, f"expected the Flagger and Argo Rollouts CRD files, found {files}"
    out = {}
    for path in files:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            for version in crd["spec"]["versions"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                out[key] = strict(version["schema"]["openAPIV3Schema"])
    return out


def validate(doc):
    schema = crd_schemas()[(doc["apiVersion"], doc["kind"])]
    jsonschema.Draft7Validator(schema).validate(doc)


@pytest.mark.parametrize("path", [FLAGGER, ARGO], ids=lambda p: p.name)
def test_template_matches_its_projects_crd_schema(path):
    validate(yaml.safe_load(path.read_text()))


def test_the_readmes_canary_matches_flaggers_crd_schema():
    """The README's Canary snippet (Argo's Rollout CRD is not in schemas/: its snippet is not checked)."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", (PROMETHEUS_DIR / "README.md").read_text(), re.S | re.M)
    [canary] = [doc for doc in map(yaml.safe_load, blocks) if doc.get("kind") == "Canary"]
    validate(canary)
    [metric] = canary["spec"]["analysis"]["metrics"]
    assert metric["templateRef"]["name"] == yaml.safe_load(FLAGGER.read_text())["metadata"]["name"]


def _flagger_provider_typo(doc):
    doc["spec"]["provider"]["type"] = "promethues"


def _flagger_query_misspelt(doc):
    doc["spec"]["querry"] = doc["spec"].pop("query")


def _argo_condition_misspelt(doc):
    metric = doc["spec"]["metrics"][0]
    metric["successCondtion"] = metric.pop("successCondition")


def _argo_metric_without_provider(doc):
    del doc["spec"]["metrics"][0]["provider"]


@pytest.mark.parametrize("path, breakage", [
    (FLAGGER, _flagger_provider_typo),
    (FLAGGER, _flagger_query_misspelt),
    (ARGO, _argo_condition_misspelt),
    (ARGO, _argo_metric_without_provider),
], ids=lambda x: getattr(x, "__name__", getattr(x, "name", "")).lstrip("_"))
def test_the_schema_check_catches_a_broken_template(path, breakage):
    doc = yaml.safe_load(path.read_text())
    breakage(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


# --- the rules and the templates' queries ------------------------------------------------


def test_promtool_checks_the_rules_and_passes_their_unit_tests():
    promtool = tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    # Run from elsewhere: rule_files in the test file must resolve relative to it.
    unit = subprocess.run([promtool, "test", "rules", str(PROMETHEUS_DIR / "rules_test.yaml")],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def rules():
    """Every rule of rules.yaml, in order."""
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def recorded_names(query):
    """The recorded-series names a query reads (Prometheus reserves ':' for them)."""
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*(?::[A-Za-z0-9_]+)+", query))


def flagger_query():
    return yaml.safe_load(FLAGGER.read_text())["spec"]["query"]


def argo_metric():
    [metric] = yaml.safe_load(ARGO.read_text())["spec"]["metrics"]
    return metric


def test_the_templates_read_the_error_ratio_rules_yaml_records_with_the_alerts_limit():
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    assert "rollout_version:error_ratio:rate1m" in recorded
    for where, query in [("flagger", flagger_query()), ("argo", argo_metric()["provider"]["prometheus"]["query"])]:
        assert recorded_names(query) == {"rollout_version:error_ratio:rate1m"}, f"{where}: {query}"
    # The alert and the Argo condition agree on the limit, 5%.
    [alert] = [rule for rule in rules() if rule.get("alert") == ERROR_ALERT]
    assert "(rollout_version:error_ratio:rate1m > 0.05)" in alert["expr"]
    assert argo_metric()["successCondition"].endswith("result[0] <= 0.05")


def render(query, values):
    """A template's query with its `{{ name }}` placeholders filled in, as Flagger and Argo
    Rollouts do; fails if one is left."""
    out = re.sub(r"\{\{\s*([\w.-]+)\s*\}\}", lambda m: values[m.group(1)], query)
    assert "{{" not in out, out
    return out


# --- a real Prometheus scraping a real Envoy ---------------------------------------------


class Prometheus:
    """A real Prometheus on a free loopback port with its own storage, scraping one Envoy's
    /stats/prometheus and evaluating rules.yaml every second."""

    def __init__(self, tmp_path, envoy_admin_port):
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "envoy", "metrics_path": "/stats/prometheus",
                                "static_configs": [{"targets": [f"127.0.0.1:{envoy_admin_port}"]}]}],
        }
        config_path = pathlib.Path(tmp_path) / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = pathlib.Path(tmp_path) / "prometheus.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 (open while Prometheus runs; stop() closes it)
        self.process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited:\n{self.log_text()[-3000:]}"
            try:
                if self.get("/-/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"prometheus did not become ready:\n{self.log_text()[-3000:]}")

    def log_text(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def get(self, path):
        """(status, body) of a GET on Prometheus's HTTP interface."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            return response.status, response.read().decode()

    def api(self, path, **params):
        """The `data` of a successful /api/v1 answer."""
        _, body = self.get(f"/api/v1/{path}?{urllib.parse.urlencode(params)}")
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr):
        """{version: value} of an instant query whose series carry a version label."""
        return {s["metric"].get("version"): float(s["value"][1]) for s in self.api("query", query=expr)["result"]}

    def alerts(self, name):
        """Alerts of that name, pending or firing, with their labels and state."""
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def stop(self):
        """Terminates the process (kills it after 10 s) and closes its log."""
        stop_process(self.process, self.log)


@pytest.fixture
def bad_canary(tmp_path):
    """The static scenario with v2's upstream failing every second request, a Prometheus
    scraping its Envoy, and traffic flowing; everything stopped afterwards. The split is 50/50
    instead of 90/10 so that v2 passes the alert's traffic floor within seconds."""
    config = load(STATIC_CONFIG)
    rollout_config = plugin_configuration(config)
    rollout_config["rollouts"]["checkout"]["versions"] = [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}]
    set_plugin_configuration(config, json.dumps(rollout_config))
    upstreams = {"v1": Upstream("v1"), "v2": Upstream("v2", fail_ratio=0.5)}
    started = []
    try:
        envoy = Envoy(config, tmp_path, {8081: upstreams["v1"].port, 8082: upstreams["v2"].port})
        started.append(envoy)
        prometheus = Prometheus(tmp_path, envoy.admin_port)
        started.append(prometheus)
        # One client, about 150 requests a second, each from a new user.
        traffic = Traffic(envoy.port, [f"user-{i}" for i in range(100_000)], threads=1, pause=0.005)
        started.append(traffic)
        yield prometheus, traffic, upstreams
    finally:
        for part in reversed(started):
            part.stop()
        for upstream in upstreams.values():
            upstream.close()


def test_a_real_prometheus_fires_the_canary_error_alert_on_a_bad_canary_and_not_on_stable(bad_canary):
    prometheus, traffic, upstreams = bad_canary
    started = time.monotonic()
    firing = []
    while time.monotonic() - started < 60 and not firing:
        time.sleep(0.5)
        firing = [a for a in prometheus.alerts(ERROR_ALERT) if a["state"] == "firing"]
    waited = time.monotonic() - started
    ratios = prometheus.query("rollout_version:error_ratio:rate1m")
    assert firing, (f"{ERROR_ALERT} not firing after {waited:.0f} s; error ratios {ratios}, "
                    f"statuses {traffic.statuses()}, targets {prometheus.api('targets')['activeTargets']}")
    assert [(a["labels"]["rollout"], a["labels"]["version"]) for a in firing] == [("checkout", "v2")]
    # The healthy stable version, under the same rules and as much traffic, is not even pending.
    assert [a["labels"]["version"] for a in prometheus.alerts(ERROR_ALERT)] == ["v2"]
    # Both versions were served, and the recorded ratios are what the upstreams did.
    assert min(upstreams["v1"].count, upstreams["v2"].count) > 0.4 * (upstreams["v1"].count + upstreams["v2"].count)
    assert ratios["v1"] == 0 and 0.4 < ratios["v2"] < 0.6, ratios
    assert prometheus.query("rollout_version:responses:rate1m * 60")["v2"] >= 100
    # The templates' queries, filled in as Flagger and Argo Rollouts would, tell the two apart.
    for version, bad in [("v1", False), ("v2", True)]:
        flagger = prometheus.query(render(flagger_query(), {
            "target": "checkout", "variables.version": version, "interval": "1m"}))
        assert (flagger[version] > 0.05) == bad, (version, flagger)
        argo = prometheus.query(render(argo_metric()["provider"]["prometheus"]["query"], {
            "args.rollout": "checkout", "args.version": version}))
        assert (argo[version] <= 0.05) == (not bad), (version, argo)
    print(f"{ERROR_ALERT} firing {waited:.1f} s after traffic started; statuses {traffic.statuses()}")
