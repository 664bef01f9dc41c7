"""The Envoy side of the differential suite (issue 16): runs one scenario
(testdata/differential/NAME.json, format in the scenario16 brief and docs of the test) through
a real Envoy 1.40 with `--concurrency 1`, and prints what happened in the shared output shape:
per request what the client received and what the route's upstream received, the lines the
filter logged (level and text, in order), and the filter's metrics.

    python envoy/differential.py testdata/differential/local-reply.json [--filter PATH]

Envoy is built from the scenario: one listener with the Wasm filter (plugin_config, vm_config,
failure_policy) and a route to the cluster `upstream` (a Python server that records each
request); one cluster per scenario cluster: an HTTP answer is a Python server answering exactly
that, `hang` a server that accepts and never answers, `refuse` a free port nobody listens on,
and a gRPC status a bare HTTP/2 (h2c) server answering every call trailers-only with that
grpc-status and grpc-message (not a second Envoy listener: Envoy's own direct_response would
be a second Envoy between the filter and the answer)."""

import argparse
import http.client
import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from harness import ADMIN_PORT, HCM_TYPE, LISTENER_PORT, WASM_TYPE, Envoy, free_port  # noqa: E402
from scenario_servers import Answering, GrpcTrailersOnly, Hanging  # noqa: E402

# Every filter line Envoy logs starts with `wasm log <plugin name> <root_id> <vm_id>: ` (from a
# stream context) or `wasm log <plugin name> <root_id>: ` (from the root context, e.g. in
# on_vm_start and on_configure); all three are this name here.
PLUGIN = "differential"
WASM_PREFIXES = (f"wasm log {PLUGIN} {PLUGIN} {PLUGIN}: ", f"wasm log {PLUGIN} {PLUGIN}: ")
# Records of Envoy's log start with this byte, so a message spanning lines stays one record.
RECORD = "\x1e"
LEVELS = {"trace": "trace", "debug": "debug", "info": "info", "warning": "warn", "error": "error",
          "critical": "critical"}
# Filter metrics are Envoy stats under this prefix.
METRIC_PREFIX = "wasmcustom."
# How long after the last request a late callback (a call answering after its stream ended)
# may still log before logs and metrics are read.
SETTLE_S = 0.3
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
SCENARIO_FIELDS = {"description", "filter", "plugin_config", "vm_config", "failure_policy", "clusters", "upstream",
                   "requests"}
FAILURE_POLICIES = {"FAIL_CLOSED", "FAIL_OPEN", "FAIL_RELOAD"}
CLUSTER_KINDS = {"answer": {"status", "headers", "body"}, "hang": {"hang"}, "refuse": {"refuse"},
                 "grpc": {"grpc_status", "grpc_message"}}


def load_scenario(path):
    """A scenario file as a dict with every default filled in."""
    path = pathlib.Path(path)
    scenario = json.loads(path.read_text())
    unknown = set(scenario) - SCENARIO_FIELDS
    if unknown:
        raise ValueError(f"{path}: unknown fields {sorted(unknown)}")
    if "filter" not in scenario:
        raise ValueError(f"{path}: filter: missing (the .wasm, relative to the scenario)")
    if scenario.get("failure_policy", "FAIL_CLOSED") not in FAILURE_POLICIES:
        raise ValueError(f"{path}: failure_policy: one of {sorted(FAILURE_POLICIES)}")
    for name, spec in scenario.get("clusters", {}).items():
        kinds = [kind for kind, fields in CLUSTER_KINDS.items() if set(spec) & fields]
        if name == "upstream" or len(kinds) > 1 or set(spec) - set().union(*CLUSTER_KINDS.values()):
            raise ValueError(f"{path}: clusters.{name}: not one of answer {sorted(CLUSTER_KINDS['answer'])}, "
                             "hang, refuse, grpc (grpc_status, grpc_message); `upstream` is the route's")
    scenario["_dir"] = path.resolve().parent
    scenario.setdefault("vm_config", "")
    scenario.setdefault("failure_policy", "FAIL_CLOSED")
    scenario.setdefault("clusters", {})
    scenario.setdefault("upstream", {})
    requests = []
    for i, request in enumerate(scenario.get("requests", [])):
        unknown = set(request) - {"method", "path", "authority", "headers", "body", "wait_ms"}
        if unknown:
            raise ValueError(f"{path}: requests[{i}]: unknown fields {sorted(unknown)}")
        requests.append({"method": "GET", "path": "/", "authority": "example.com", "headers": [], "body": "",
                         "wait_ms": 0, **request})
    scenario["requests"] = requests
    return scenario


def text_config(value):
    """A plugin or VM configuration as the filter reads it: a string as is, anything else as
    compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def static_cluster(name, port, http2=False):
    """A cluster with one endpoint on 127.0.0.1:port (HTTP/2 without TLS when `http2`)."""
    cluster = {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                            "port_value": port}}}}]}]},
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}}
    return cluster


def listener(name, port, routes, http_filters):
    """A listener on 127.0.0.1:port with one HTTP connection manager (HTTP/1 or h2c)."""
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM_TYPE, "stat_prefix": name, "codec_type": "AUTO",
                "route_config": {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]},
                "http_filters": http_filters,
            },
        }]}],
    }


def envoy_config(scenario, wasm, upstream_port, cluster_ports):
    """The Envoy bootstrap of a scenario: the listener (on the harness's placeholder port, moved
    by harness.Envoy) with the Wasm filter and the route to `upstream`, and one cluster per
    scenario cluster at `cluster_ports[name]` (HTTP/2 for a gRPC one)."""
    wasm_filter = {"name": "envoy.filters.http.wasm", "typed_config": {"@type": WASM_TYPE, "config": {
        "name": PLUGIN, "root_id": PLUGIN,
        "failure_policy": scenario["failure_policy"],
        "vm_config": {"vm_id": PLUGIN, "runtime": "envoy.wasm.runtime.v8",
                      "code": {"local": {"filename": str(wasm)}},
                      "configuration": {"@type": STRING_VALUE, "value": text_config(scenario["vm_config"])}},
        "configuration": {"@type": STRING_VALUE, "value": text_config(scenario.get("plugin_config", ""))},
    }}}
    listeners = [listener("ingress", LISTENER_PORT, [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                          [wasm_filter, ROUTER])]
    clusters = [static_cluster("upstream", upstream_port)]
    for name, spec in scenario["clusters"].items():
        clusters.append(static_cluster(name, cluster_ports[name], http2="grpc_status" in spec))
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ADMIN_PORT}}},
        # Histograms reach the admin endpoint when stats are flushed: on each admin read here.
        "stats_flush_on_admin": True,
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def send(port, request):
    """What the client received for one request, sent on a fresh connection: status, headers
    in the order received, body as text."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(request["method"], request["path"], skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", request["authority"])
        for name, value in request["headers"]:
            conn.putheader(name, value)
        body = request["body"].encode()
        if body:
            conn.putheader("content-length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        data = response.read()
        return {"status": response.status, "headers": [[k, v] for k, v in response.getheaders()],
                "body": data.decode(errors="replace")}
    finally:
        conn.close()


def filter_logs(text):
    """The filter's own lines in an Envoy log written with RECORD-led `level|logger|message`
    records: level and message, in order, Envoy's prefix removed."""
    logs = []
    for record in text.split(RECORD)[1:]:
        level, _, rest = record.partition("|")
        logger, _, message = rest.partition("|")
        message = message.removesuffix("\n")
        if logger != "wasm":
            continue
        for prefix in WASM_PREFIXES:
            if message.startswith(prefix):
                logs.append({"level": LEVELS.get(level, level), "message": message.removeprefix(prefix)})
                break
    return logs


def filter_metrics(envoy):
    """The filter's metrics by the names it gave them: counters and gauges by value, histograms
    by their number of samples (summed over the detailed buckets of the cumulative histogram)."""
    # The first read flushes stats; the histograms' merge from the worker thread completes
    # after it returns, so the second read is the one that counts their samples.
    envoy.admin("/stats?filter=%5Ewasmcustom%5C.")
    time.sleep(0.2)
    status, body = envoy.admin("/stats?format=json&histogram_buckets=detailed&filter=%5Ewasmcustom%5C.")
    if status != 200:
        raise RuntimeError(f"admin /stats answered {status}: {body[:500]}")
    metrics = {}
    for stat in json.loads(body)["stats"]:
        if "name" in stat and stat["name"].startswith(METRIC_PREFIX):
            metrics[stat["name"].removeprefix(METRIC_PREFIX)] = stat["value"]
        for histogram in stat.get("histograms", {}).get("details", []):
            if histogram["name"].startswith(METRIC_PREFIX):
                samples = sum(bucket.get("count", 0) for bucket in histogram.get("totals", []))
                metrics[histogram["name"].removeprefix(METRIC_PREFIX)] = samples
    return dict(sorted(metrics.items()))


def start_cluster(spec):
    """The server behind one scenario cluster, or None for `refuse` (nobody listens)."""
    if spec.get("refuse"):
        return None
    if "grpc_status" in spec:
        return GrpcTrailersOnly(spec["grpc_status"], spec.get("grpc_message"))
    if spec.get("hang"):
        return Hanging()
    return Answering(spec.get("status", 200), spec.get("headers", []), spec.get("body", ""))


def run(scenario_path, wasm=None, tmp_dir=None):
    """Runs a scenario through a real Envoy; the output dict (requests, logs, metrics)."""
    scenario = load_scenario(scenario_path)
    wasm = pathlib.Path(wasm) if wasm else (scenario["_dir"] / scenario["filter"]).resolve()
    if not wasm.is_file():
        raise FileNotFoundError(f"{scenario_path}: filter: no file {wasm}")
    upstream_spec = scenario["upstream"]
    servers = []
    envoy = None
    with tempfile.TemporaryDirectory() as own_tmp:
        try:
            upstream = Answering(upstream_spec.get("status", 200), upstream_spec.get("headers", []),
                                 upstream_spec.get("body", ""))
            servers.append(upstream)
            ports = {}
            for name, spec in scenario["clusters"].items():
                server = start_cluster(spec)
                if server is not None:
                    servers.append(server)
                ports[name] = server.port if server is not None else free_port()
            config = envoy_config(scenario, wasm, upstream.port, ports)
            envoy = Envoy(config, tmp_dir or own_tmp, {}, concurrency=1,
                          args=["--component-log-level", "wasm:trace", "--log-format", f"{RECORD}%l|%n|%v"])
            results = []
            for request in scenario["requests"]:
                time.sleep(request["wait_ms"] / 1000)
                before = len(upstream.requests)
                client = send(envoy.port, request)
                reached = upstream.requests[before:]
                if len(reached) > 1:
                    raise RuntimeError(f"one request reached the upstream {len(reached)} times: {reached}")
                results.append({"client": client, "upstream": reached[0] if reached else None})
            time.sleep(SETTLE_S)
            metrics = filter_metrics(envoy)
            logs = filter_logs(envoy.log_text())
        finally:
            if envoy is not None:
                envoy.stop()
            for server in servers:
                server.close()
    return {"requests": results, "logs": logs, "metrics": metrics}


def main():
    """Command line: runs one scenario and prints its output JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", help="a scenario file, e.g. testdata/differential/local-reply.json")
    parser.add_argument("--filter", help="the .wasm to run instead of the scenario's `filter`")
    args = parser.parse_args()
    print(json.dumps(run(args.scenario, args.filter), indent=2))


if __name__ == "__main__":
    main()
