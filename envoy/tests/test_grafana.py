"""The Grafana dashboard (envoy/grafana/rollout-dashboard.json): its structure is one Grafana
loads (panels with targets, unique ids, a grid position each, every query on the `datasource`
variable), every metric name its PromQL reads is either exposed by a real Envoy running the
shipped static config after some requests or recorded by envoy/prometheus/rules.yaml, with
the labels it filters on, and promtool parses every expression (the name checker is shown to
catch a misspelt name or label, and promtool a broken expression). Then a real Prometheus with
rules.yaml, scraping a real Envoy under traffic, answers every panel's query with the values the
proxy produced, and the guard-trip annotation marks a trip on synthetic series (promtool)."""

import copy
import json
import math
import re
import shutil
import subprocess
import time

import pytest
import yaml

from harness import ROOT, STATIC_CONFIG, Envoy, Traffic, Upstream, load, plugin_configuration, set_plugin_configuration

DASHBOARD = ROOT / "envoy/grafana/rollout-dashboard.json"
RULES = ROOT / "envoy/prometheus/rules.yaml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# The last schema version of Grafana's classic (v1) dashboard model, which its import accepts.
SCHEMA_VERSION = 42
# Variables Grafana defines itself; any other `$name` must be one of the dashboard's.
GRAFANA_GLOBALS = {"__rate_interval", "__interval", "__range"}


def dashboard():
    """The dashboard as parsed JSON."""
    return json.loads(DASHBOARD.read_text())


def expressions(dash):
    """[(where, PromQL)] of every query in the dashboard: panel targets, annotations, and the
    series selector of each `label_values(selector, label)` variable."""
    out = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            out.append((f"panel {panel['id']} target {target['refId']}", target["expr"]))
    for annotation in dash["annotations"]["list"]:
        if "expr" in annotation:
            out.append((f"annotation {annotation['name']}", annotation["expr"]))
    for variable in dash["templating"]["list"]:
        if variable["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
            assert m, f"templating.{variable['name']}: not label_values(selector, label): {variable['query']}"
            out.append((f"variable {variable['name']}", m.group(1)))
    return out


# --- a small PromQL tokenizer: which metric names, with which label matchers ---------------

TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:ms|[smhdwy])*)
  | (?P<variable>\$\{\w+\}|\$\w+)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=(){}\[\],@:])
""", re.X)
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                "quantile", "limitk", "limit_ratio"}
# Keywords followed by a parenthesised list of label names, not an expression.
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"bool", "and", "or", "unless", "offset", "inf", "nan"}
MATCH_OPS = {"=", "!=", "=~", "!~"}


def tokens(expr):
    """[(kind, text)] of a PromQL expression, spaces left out; fails on a character PromQL has not."""
    out, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        assert m, f"cannot read {expr[pos:pos + 20]!r} in {expr!r}"
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group()))
        pos = m.end()
    return out


def metric_selectors(expr):
    """{metric name: set of label names its selectors match on} of a PromQL expression.
    Function and aggregation names, keywords, label lists (`by (...)`, `on (...)`) and
    everything inside `{...}` and `[...]` are not metric names."""
    toks = tokens(expr)
    names, braces, brackets, i = {}, 0, 0, 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else None
        if text in "{}[]" and kind == "op":
            braces += {"{": 1, "}": -1}.get(text, 0)
            brackets += {"[": 1, "]": -1}.get(text, 0)
        elif kind == "ident" and braces == 0 and brackets == 0:
            word = text.lower()
            if word in LABEL_LISTS and following == "(":
                i = toks.index((("op", ")")), i)  # label lists hold names only: no nested ")"
            elif word in KEYWORDS or word in AGGREGATIONS or following == "(":
                pass
            else:
                labels = names.setdefault(text, set())
                if following == "{":
                    j = i + 2
                    while toks[j][1] != "}":
                        if toks[j][0] == "ident" and toks[j + 1][1] in MATCH_OPS:
                            labels.add(toks[j][1])
                        j += 1
        i += 1
    return names


def unknown_names(queries, exposed, recorded):
    """Problems of a list of (where, query): a metric name neither exposed ({name: label
    names seen on it}) nor recorded, a label matcher on an exposed metric that has no such
    label, a query that names no metric at all."""
    problems = []
    for where, query in queries:
        selectors = metric_selectors(query)
        if not selectors:
            problems.append(f"{where}: names no metric: {query}")
        for name, labels in sorted(selectors.items()):
            if name in recorded:
                continue
            if name not in exposed:
                problems.append(f"{where}: {name} is neither exposed by Envoy nor recorded by rules.yaml")
            elif labels - exposed[name]:
                problems.append(f"{where}: {name} has no label {sorted(labels - exposed[name])}")
    return problems


def recorded_names():
    """The `record:` names of rules.yaml."""
    return {rule["record"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
            if "record" in rule}


@pytest.mark.parametrize("expr, expected", [
    ('sum by (rollout, version) (rate(rollout_requests_total{rollout=~"$rollout", version=~"a, b"}[$__rate_interval]))',
     {"rollout_requests_total": {"rollout", "version"}}),
    ("a:b:rate1m / on (rollout) group_left () max by (rollout) (c offset 1m) > bool 1e6",
     {"a:b:rate1m": set(), "c": set()}),
    ('histogram_quantile(0.99, sum without (pod) (rate(x_bucket{le!="+Inf"}[5m30s]))) and Inf',
     {"x_bucket": {"le"}}),
    ('sum(increase(up[1m])) by (job) unless count_values("v", on_metric)', {"up": set(), "on_metric": set()}),
])
def test_the_tokenizer_finds_metric_names_and_their_matched_labels(expr, expected):
    assert metric_selectors(expr) == expected


# --- (a) the structure Grafana loads ------------------------------------------------------


def test_the_dashboard_is_one_grafana_loads():
    dash = dashboard()
    assert dash["schemaVersion"] == SCHEMA_VERSION and dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("rollout", "version"):
        assert variables[name]["type"] == "query" and variables[name]["datasource"] == DATASOURCE, name
    panels = dash["panels"]
    assert len(panels) >= 5
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), ids
    cells = set()
    for panel in panels:
        where = f"panels[id={panel['id']}]"
        assert panel["type"] in {"timeseries", "state-timeline", "stat"} and panel["title"] and panel["description"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in "hwxy"), f"{where}.gridPos: {grid}"
        assert grid["h"] > 0 and grid["w"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{where}.gridPos"
        xs, ys = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        mine = {(x, y) for x in xs for y in ys}
        assert not cells & mine, f"{where}.gridPos overlaps another panel"
        cells |= mine
        assert panel["datasource"] == DATASOURCE, f"{where}.datasource"
        assert panel["targets"], f"{where}.targets is empty"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), f"{where}.targets: refIds {ref_ids}"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE and target["expr"], f"{where}.targets[{target['refId']}]"
    for annotation in dash["annotations"]["list"]:
        if not annotation.get("builtIn"):
            assert annotation["datasource"] == DATASOURCE and annotation["expr"], f"annotations {annotation['name']}"
    # Every variable a query uses is defined (a typo would leave a literal "$rollut" in the query).
    used = {m.strip("${}") for _, query in expressions(dash) for m in re.findall(r"\$\{?\w+\}?", query)}
    assert used - GRAFANA_GLOBALS <= set(variables), used - GRAFANA_GLOBALS - set(variables)


def test_the_threshold_lines_are_the_alerts_limits():
    """The red lines on the error- and slow-ratio panels are the limits rules.yaml alerts on."""
    alerts = {r["alert"]: r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
              if "alert" in r}
    for alert, series in [("RolloutCanaryErrorRatioHigh", "rollout_version:error_ratio:rate1m"),
                          ("RolloutCanarySlowRatioHigh", "rollout_version:slow_ratio:rate1m")]:
        limit = float(re.search(rf"\({re.escape(series)} > ([0-9.]+)\)", alerts[alert]).group(1))
        [panel] = [p for p in dashboard()["panels"] if p["targets"][0]["expr"].startswith(series + "{")]
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [s["value"] for s in steps if s["color"] == "red"] == [limit], (panel["title"], steps, limit)
        assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"


# --- (b) every metric name is one a real Envoy exposes, or a recorded rule -----------------


@pytest.fixture(scope="module")
def exposed(upstreams, start_envoy):
    """{metric name: label names} of /stats/prometheus of a real Envoy running the shipped static
    config after 200 requests. The config gets one more rollout, `search` (not matched by the
    traffic), with a schedule and a guard with a latency bound: the schedule, guard and
    slow-response series exist only for such a rollout; and the opt-in flag counts. The shipped
    `checkout` is unchanged."""
    config = load(STATIC_CONFIG)
    rollout_config = plugin_configuration(config)
    rollout_config["rollouts"]["search"] = {
        "match": {"path_prefix": "/search"}, "stable": "v1", "versions": [{"name": "v1"}, {"name": "v2"}],
        "schedule": {"start": "2026-01-01T00:00:00Z", "steps": [{"percent": 10, "hold": "1h"}, {"percent": 50}]},
        "guard": {"latency": {"bound": "500ms"}},
    }
    rollout_config["metrics"] = {"flags": True}
    set_plugin_configuration(config, json.dumps(rollout_config))
    envoy = start_envoy(config)
    replies = Traffic(envoy.port, [f"user-{i}" for i in range(100)], threads=2, rounds=2).stop(wait=True)
    assert {r.upstream for r in replies} == {"v1", "v2"} and {r.status for r in replies} == {200}
    out = {}
    for name, labels in envoy.prometheus():
        out.setdefault(name, set()).update(label for label, _ in labels)
    return out


def test_every_metric_the_dashboard_reads_is_exposed_by_envoy_or_recorded(exposed):
    queries = expressions(dashboard())
    assert len(queries) >= 10
    assert unknown_names(queries, exposed, recorded_names()) == []
    # Both sources are used: the check above is not passing on recorded names alone.
    names = set().union(*(metric_selectors(q) for _, q in queries))
    raw = {"rollout_requests_total", "rollout_upstream_latency_ms_bucket", "rollout_weight_ppm"}
    assert raw <= names & set(exposed), names
    assert "rollout_version:error_ratio:rate1m" in names & recorded_names()


@pytest.mark.parametrize("wrong, right, problem", [
    ("rollout_request_total", "rollout_requests_total", "rollout_request_total is neither exposed"),
    ("rollout_version:error_ratio:rate5m", "rollout_version:error_ratio:rate1m", "rate5m is neither exposed"),
    ("rollout_weight_ppm{rollout=~\"$rollout\", versoin=", "rollout_weight_ppm{rollout=~\"$rollout\", version=",
     "rollout_weight_ppm has no label ['versoin']"),
])
def test_the_name_check_catches_a_misspelt_name_or_label(exposed, wrong, right, problem):
    dash = dashboard()
    broken = copy.deepcopy(dash)
    for panel in broken["panels"]:
        for target in panel["targets"]:
            target["expr"] = target["expr"].replace(right, wrong, 1)
    assert broken != dash, f"{right} is not in the dashboard"
    problems = unknown_names(expressions(broken), exposed, recorded_names())
    assert problems and all(problem in p for p in problems), problems


# --- (c) promtool parses every expression -------------------------------------------------


def promtool_check(queries, tmp_path):
    """promtool's verdict on the queries written as recording rules, Grafana's variables
    replaced as Grafana would: (returncode, output)."""
    rules = [{"record": f"dashboard:query_{n}:check",
              "expr": re.sub(r"\$\{?\w+\}?", lambda m: "1m" if "interval" in m.group() else ".+", query)}
             for n, (_, query) in enumerate(queries)]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    return check.returncode, check.stdout + check.stderr


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH (scripts/lib.sh installs it for CI)")


@needs_promtool
def test_promtool_parses_every_expression(tmp_path):
    queries = expressions(dashboard())
    code, output = promtool_check(queries, tmp_path)
    assert code == 0 and f"SUCCESS: {len(queries)} rules found" in output, output


@needs_promtool
def test_promtool_check_catches_a_broken_expression(tmp_path):
    code, output = promtool_check([("broken", "sum by (version (rate(rollout_requests_total[1m]))")], tmp_path)
    assert code != 0, output


@needs_promtool
@pytest.mark.parametrize("eval_time, marked", [("2m30s", True), ("3m", True), ("3m30s", False), ("1m", False)])
def test_the_guard_trip_annotation_marks_the_minute_after_a_trip(tmp_path, eval_time, marked):
    """The annotation's query on a synthetic gauge (promtool's unit tests, 15 s samples): a
    proxy's guard trips at 2m15s and stays tripped; only the next minute is marked."""
    [annotation] = [a for a in dashboard()["annotations"]["list"] if a["name"] == "Guard trips"]
    # promtool runs a query at the last step of its evaluation grid (1 m by default) up to
    # eval_time, as seen with 2m30s read at 2m: a 15 s grid puts 2m30s on it.
    tests = {"evaluation_interval": "15s", "tests": [{
        "interval": "15s",
        "input_series": [
            {"series": 'rollout_guard_tripped{rollout="checkout",version="v2",instance="a"}', "values": "0+0x8 1+0x20"},
            {"series": 'rollout_guard_tripped{rollout="checkout",version="v3",instance="a"}', "values": "0+0x28"},
        ],
        "promql_expr_test": [{
            "expr": for_checkout(annotation["expr"], "1m"), "eval_time": eval_time,
            "exp_samples": [{"labels": '{rollout="checkout",version="v2"}', "value": 1}] if marked else [],
        }],
    }]}
    path = tmp_path / "annotation_test.yaml"
    path.write_text(yaml.safe_dump(tests))
    run = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr


# --- (d) the panels' queries, run by a real Prometheus, show what the proxy did --------------


def for_checkout(query, rate_interval):
    """A panel's query as Grafana sends it with rollout `checkout` and every version chosen."""
    values = {"rollout": "checkout", "version": ".+", "__rate_interval": rate_interval}
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], query)


def test_a_real_prometheus_answers_every_panel_query(tmp_path):
    """A real Prometheus (1 s scrapes, rules.yaml loaded) scraping a real Envoy whose `checkout`
    is scheduled at 50% for v2 and guarded (limits too loose to trip), v2's upstream failing one
    request in five: every panel's query returns series, and the main ones the right values.
    Annotations are left out: they need a minute of history (`offset 1m`) or a config change."""
    from test_prometheus import Prometheus  # the same real Prometheus the rules are tested with

    config = load(STATIC_CONFIG)
    rollout_config = plugin_configuration(config)
    rollout_config["rollouts"]["checkout"] = {
        "stable": "v1", "versions": [{"name": "v1"}, {"name": "v2"}],
        "schedule": {"start": "2026-01-01T00:00:00Z", "steps": [{"percent": 50}]},
        "guard": {"errors": {"max_ratio": 0.9}, "latency": {"bound": "10s"}},
    }
    rollout_config["metrics"] = {"flags": True}
    set_plugin_configuration(config, json.dumps(rollout_config))
    upstreams = {"v1": Upstream("v1"), "v2": Upstream("v2", fail_ratio=0.2)}
    started = []
    try:
        envoy = Envoy(config, tmp_path, {8081: upstreams["v1"].port, 8082: upstreams["v2"].port})
        started.append(envoy)
        prometheus = Prometheus(tmp_path, envoy.admin_port)
        started.append(prometheus)
        started.append(Traffic(envoy.port, [f"user-{i}" for i in range(100_000)], threads=1, pause=0.005))
        queries = [(f"panel {p['id']} {t['refId']}", for_checkout(t["expr"], "15s"))
                   for p in dashboard()["panels"] for t in p["targets"]]
        deadline, answers = time.monotonic() + 30, {}
        while time.monotonic() < deadline:
            time.sleep(1)
            answers = {where: prometheus.query(query) for where, query in queries}
            if all(a and all(math.isfinite(v) for v in a.values()) for a in answers.values()):
                break
        empty = [where for where, a in answers.items() if not a or not all(math.isfinite(v) for v in a.values())]
        assert not empty, f"no finite answer after 30 s from {empty}: {answers}"
        print(f"every panel query answered {30 - (deadline - time.monotonic()):.1f} s after traffic started: {answers}")
    finally:
        for part in reversed(started):
            part.stop()
        for upstream in upstreams.values():
            upstream.close()
    # Panel 2: v2 fails one in five, v1 never; panel 4: about half each, the weight exactly half;
    # panel 6: the guard did not trip; panel 7: the schedule's only step.
    assert answers["panel 2 A"]["v1"] == 0 and 0.1 < answers["panel 2 A"]["v2"] < 0.3, answers["panel 2 A"]
    assert 0.35 < answers["panel 4 A"]["v2"] < 0.65 and answers["panel 4 B"] == {"v1": 0.5, "v2": 0.5}, answers
    assert answers["panel 6 A"] == {"v2": 0}, answers["panel 6 A"]  # stable has no guard gauge
    assert answers["panel 7 A"] == {None: 1}, answers["panel 7 A"]
    # Panel 8: one proxy, on one revision; panel 9: the shipped flag is evaluated.
    assert answers["panel 8 A"] == {None: 1}, answers["panel 8 A"]
    assert all(v > 0 for v in answers["panel 9 A"].values()), answers["panel 9 A"]
    assert 0 < answers["panel 3 A"]["v1"] <= answers["panel 3 B"]["v1"], answers
