"""Benchmark: the proxy's throughput, latency and CPU per request with no filter, with Envoy's
native weighted_clusters, with a Lua filter doing an equivalent sticky split, with a wasm filter
that does nothing (the floor for any proxy-wasm filter), with the rollout filter with and
without the header scrub in front of it, and with the rollout filter following a schedule under
a guard, in one run with interleaved rounds, on loopback only.

    .venv/bin/python envoy/bench_load.py [ROUNDS] [SECONDS] [--variants NAME,...] [--json PATH]

The proxy under test is envoy/static/envoy.yaml with --concurrency 1 (so its CPU time per
request is comparable), edited as parsed YAML: as shipped ("rollout filter": the wasm filter
behind the connection manager's early header mutation that drops client copies of the
contract headers); without that scrub ("rollout filter without scrub"); and, every other variant
without the scrub too, with the wasm filter removed (no filter; with the routes replaced by
weighted_clusters 90/10; with a Lua filter that hashes x-user-id and sets x-rollout-version
for 10% of users; with the probe test filter configured to do nothing, which needs
target/wasm32-wasip1/wasm/probe_filter.wasm). "guard" is the shipped config with the split
set by a schedule (at its 10% step) instead of weights and a guard with a latency bound (every
response is timed and judged; the upstream is healthy, so it never trips). "lean" is the
shipped config with `headers.response` and `metrics.responses` off (the response passes
untouched); "unmatched" moves the rollout to another path and drops the flags, so the filter
reads the headers and has nothing to do. "rollout filter + header_mutation"
(only when named in --variants) does the scrub with the header_mutation HTTP filter first in
the chain instead. "token" (only when named) is the shipped config reading override tokens,
with every request carrying a valid one in `x-rollout-override` (what a tester's request costs:
the clock read, HMAC-SHA-256, the header removed); "overrides" (only when named) is the same
config with requests that carry no token (what reading tokens costs everyone else). "flag
counts" (only when named) is the shipped config with `metrics.flags` on. The
proxy's upstream is a second Envoy answering with a direct response, so the upstream is never
the bottleneck. Load: wrk -t2 -c50 with a distinct x-user-id per request. CPU is the proxy
process's user+system time from /proc, divided by the requests wrk completed."""

import argparse
import json
import os
import pathlib
import re
import subprocess
import tempfile

from harness import (
    STATIC_CONFIG,
    Envoy,
    connection_managers,
    http_filters,
    load,
    override_token,
    plugin_configuration,
    set_plugin_configuration,
)

UPSTREAM = {
    "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}},
    "static_resources": {"listeners": [{
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                         ".HttpConnectionManager",
                "stat_prefix": "upstream",
                "route_config": {"virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"},
                                "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            },
        }]}],
    }]},
}

LUA_USER_IDS = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/checkout", {["x-user-id"] = "user-" .. counter%s})
end
"""

TOKEN_KEY = ("bench", "bench-secret-0123456789abcdef0123")
# Valid until 2100: a benchmark run never sees it expire.
TOKEN = override_token(*TOKEN_KEY, 4102444800, "v:checkout=v2")
# Headers every request of a variant carries besides its user id.
EXTRA_HEADERS = {"token": {"x-rollout-override": TOKEN}}


def wrk_script(headers):
    """The wrk script: a distinct x-user-id per request, and these headers on each."""
    extra = "".join(f', ["{k}"] = "{v}"' for k, v in headers.items())
    return LUA_USER_IDS % extra

LUA_SPLIT = {
    "name": "envoy.filters.http.lua",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": """
function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove("x-rollout-version")
  local key = headers:get("x-user-id")
  if key == nil then return end
  local h = 2166136261
  for i = 1, #key do
    h = (bit.bxor(h, key:byte(i)) * 16777619) % 4294967296
  end
  if h % 100 < 10 then headers:add("x-rollout-version", "v2") end
end
"""},
    },
}

WEIGHTED_ROUTES = [{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
    {"name": "checkout-v1", "weight": 90}, {"name": "checkout-v2", "weight": 10}]}}}]

HEADER_MUTATION_TYPE = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"


def early_scrub(doc):
    """The connection manager's early header mutations (the shipped scrub)."""
    [hcm] = connection_managers(doc)
    return hcm["early_header_mutation_extensions"]


def without_scrub(doc):
    """The config without the early header mutation that drops client contract headers."""
    [hcm] = connection_managers(doc)
    del hcm["early_header_mutation_extensions"]
    return doc


def scrub_as_http_filter(doc):
    """The same removals done by the header_mutation HTTP filter, first in the chain."""
    [extension] = early_scrub(doc)
    removals = [{"remove": m["remove"]} for m in extension["typed_config"]["mutations"]]
    without_scrub(doc)
    http_filters(doc).insert(0, {"name": "envoy.filters.http.header_mutation", "typed_config": {
        "@type": HEADER_MUTATION_TYPE, "mutations": {"request_mutations": removals}}})
    return doc


def without_filter(doc, replacement=None):
    """No scrub, and the wasm filter removed (the proxy's floor) or replaced."""
    without_scrub(doc)
    filters = http_filters(doc)
    at = next(i for i, f in enumerate(filters) if f["name"] == "envoy.filters.http.wasm")
    filters[at:at + 1] = [replacement] if replacement else []
    return doc


def weighted_clusters(doc):
    """No filter, and Envoy's own weighted split instead of the header routes."""
    without_filter(doc)
    [hcm] = connection_managers(doc)
    [virtual_host] = hcm["route_config"]["virtual_hosts"]
    virtual_host["routes"] = WEIGHTED_ROUTES
    return doc


def empty_wasm_filter(doc):
    """No scrub, and the rollout filter swapped for a wasm filter that does nothing: what the
    host charges for running any proxy-wasm filter, before it does any work."""
    without_scrub(doc)
    [wasm] = [f for f in http_filters(doc) if f["name"] == "envoy.filters.http.wasm"]
    config = wasm["typed_config"]["config"]
    config["vm_config"]["code"]["local"]["filename"] = "target/wasm32-wasip1/wasm/probe_filter.wasm"
    config["configuration"]["value"] = "pass"
    return doc


def scheduled_and_guarded(doc):
    """The shipped config with the same 10% split set by a schedule, long at its last step,
    and a guard judging errors and latency: what the guard's ticks and the slow-response
    counting add to a request."""
    config = plugin_configuration(doc)
    rollout = config["rollouts"]["checkout"]
    rollout["versions"] = [{"name": v["name"]} for v in rollout["versions"]]
    rollout["schedule"] = {"version": "v2", "start": "2020-01-01T00:00:00Z",
                           "steps": [{"percent": 1, "hold": "1h"}, {"percent": 10}]}
    rollout["guard"] = {"latency": {"bound": "500ms"}}
    return set_plugin_configuration(doc, json.dumps(config))


def lean(doc):
    """The shipped config with the response left alone: no contract headers on it and no
    per-response counting (Envoy's per-cluster stats count each version's responses)."""
    config = plugin_configuration(doc)
    config["headers"] = {"response": False}
    config["metrics"] = {"responses": False}
    return set_plugin_configuration(doc, json.dumps(config))


def flag_counts(doc):
    """The shipped config counting flag evaluations by value (`metrics.flags`): counted in the
    VM per request, added to Envoy's counters on the tick."""
    config = plugin_configuration(doc)
    config["metrics"] = {"flags": True}
    return set_plugin_configuration(doc, json.dumps(config))


def unmatched(doc):
    """A rollout on another path and no flags: a request the filter has nothing to do for."""
    config = plugin_configuration(doc)
    config["rollouts"]["checkout"]["match"] = {"path_prefix": "/elsewhere"}
    config.pop("flags", None)
    return set_plugin_configuration(doc, json.dumps(config))


def with_tokens(doc):
    """The shipped config reading override tokens in the default header, with the bench key."""
    config = plugin_configuration(doc)
    config["overrides"] = {"keys": dict([TOKEN_KEY])}
    return set_plugin_configuration(doc, json.dumps(config))


VARIANTS = {
    "no filter": without_filter,
    "weighted_clusters": weighted_clusters,
    "lua split": lambda doc: without_filter(doc, LUA_SPLIT),
    "empty wasm filter": empty_wasm_filter,
    "rollout filter without scrub": without_scrub,
    "rollout filter": lambda doc: doc,
    "guard": scheduled_and_guarded,
    "lean": lean,
    "unmatched": unmatched,
    "flag counts": flag_counts,
    "rollout filter + header_mutation": scrub_as_http_filter,
    "token": with_tokens,
    "overrides": with_tokens,
}
DEFAULT_VARIANTS = [
    name for name in VARIANTS
    if name not in ("rollout filter + header_mutation", "token", "overrides", "flag counts")
]


def cpu_seconds(pid):
    """User plus system CPU time of a process so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def run_wrk(port, seconds, script):
    """(requests, req/s, p50 ms, p99 ms, non-2xx responses) of one wrk run."""
    out = subprocess.run(["wrk", "-t2", "-c50", f"-d{seconds}s", "--latency", "-s", script,
                          f"http://127.0.0.1:{port}/checkout"], capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def latency(p):
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return requests, rps, latency(50), latency(99), int(errors.group(1)) if errors else 0


def main(rounds, seconds, names, json_path=None):
    """Runs the variants `names` in `rounds` interleaved rounds and prints the medians."""
    tmp = pathlib.Path(tempfile.mkdtemp())
    scripts = {}
    for name in names:
        scripts[name] = tmp / f"user_ids_{len(scripts)}.lua"
        scripts[name].write_text(wrk_script(EXTRA_HEADERS.get(name, {})))
    upstream = Envoy(UPSTREAM, tmp, {})
    variants = {name: VARIANTS[name](load(STATIC_CONFIG)) for name in names}
    results = {name: [] for name in variants}
    try:
        for _ in range(rounds):
            for name, doc in variants.items():
                envoy = Envoy(doc, tmp, {8081: upstream.port, 8082: upstream.port}, concurrency=1)
                try:
                    script = str(scripts[name])
                    run_wrk(envoy.port, 2, script)  # warm up
                    before = cpu_seconds(envoy.process.pid)
                    requests, rps, p50, p99, errors = run_wrk(envoy.port, seconds, script)
                    cpu = cpu_seconds(envoy.process.pid) - before
                    results[name].append((rps, p50, p99, cpu / requests * 1e6, errors))
                finally:
                    envoy.stop()
    finally:
        upstream.stop()
    columns = ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "non_2xx")
    medians = {name: dict(zip(columns, [sorted(col)[len(col) // 2] for col in zip(*rows, strict=True)], strict=True))
               for name, rows in results.items()}
    native = medians.get("weighted_clusters")
    if native:
        for med in medians.values():
            med["rps_vs_native"] = med["rps"] / native["rps"]
            med["cpu_vs_native"] = med["cpu_us_per_request"] / native["cpu_us_per_request"]
    print(f"{rounds} interleaved rounds of {seconds} s, wrk -t2 -c50, proxy --concurrency 1, median per variant")
    width = max(len(name) for name in medians)
    print(f"{'variant':<{width}} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} {'non-2xx':>8} "
          f"{'rps vs native':>14}")
    for name, med in medians.items():
        ratio = f"{med['rps_vs_native']:>14.2f}" if native else f"{'':>14}"
        print(f"{name:<{width}} {med['rps']:>9.0f} {med['p50_ms']:>8.2f} {med['p99_ms']:>8.2f} "
              f"{med['cpu_us_per_request']:>11.1f} {med['non_2xx']:>8d} {ratio}")
    if json_path:
        pathlib.Path(json_path).write_text(json.dumps(
            {"rounds": rounds, "seconds": seconds, "variants": medians}, indent=2))


def variant_names(text):
    """--variants: comma-separated names from VARIANTS."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    return names


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", type=int, nargs="?", default=3, help="interleaved rounds (default 3)")
    parser.add_argument("seconds", type=int, nargs="?", default=10, help="seconds of load per variant and round")
    parser.add_argument("--variants", type=variant_names, default=DEFAULT_VARIANTS,
                        help=f"comma-separated, from: {', '.join(VARIANTS)} (default: all but the last two)")
    parser.add_argument("--json", metavar="PATH", help="also write the medians as JSON")
    args = parser.parse_args()
    main(args.rounds, args.seconds, args.variants, args.json)
