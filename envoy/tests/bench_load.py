"""Benchmark: the proxy's throughput, latency and CPU per request with no filter, with Envoy's
native weighted_clusters, with a Lua filter doing an equivalent sticky split, with a wasm filter
that does nothing (the floor for any proxy-wasm filter), and with the rollout filter, in one run
with interleaved rounds, on loopback only.

    .venv/bin/python envoy/tests/bench_load.py [ROUNDS] [SECONDS] [--json PATH]

The proxy under test is envoy/static/envoy.yaml with --concurrency 1 (so its CPU time per
request is comparable): as shipped, and with the wasm filter removed (no filter; with the
routes replaced by weighted_clusters 90/10; with a Lua filter that hashes x-user-id and sets
x-rollout-version for 10% of users; with the probe test filter configured to do nothing, which
needs target/wasm32-wasip1/release/probe_filter.wasm). Its upstream
is a second Envoy answering with a direct response, so the upstream is never the bottleneck.
Load: wrk -t2 -c50 with a distinct x-user-id per request. CPU is the proxy process's
user+system time from /proc, divided by the requests wrk completed."""

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from conftest import STATIC_CONFIG, Envoy, json_option  # noqa: E402

UPSTREAM = """
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 9901}}}
static_resources:
  listeners:
  - address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: upstream
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                direct_response: {status: 200, body: {inline_string: "ok"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"""

LUA_USER_IDS = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/checkout", {["x-user-id"] = "user-" .. counter})
end
"""


LUA_SPLIT = """
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
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
"""

WEIGHTED_ROUTES = """              routes:
              - match: {prefix: "/"}
                route:
                  weighted_clusters:
                    clusters:
                    - {name: checkout-v1, weight: 90}
                    - {name: checkout-v2, weight: 10}
"""


def without_filter(text, insert=""):
    """The shipped config with the wasm filter removed (the proxy's floor), or replaced."""
    start = text.index("          - name: envoy.filters.http.wasm")
    end = text.index("          - name: envoy.filters.http.router")
    return text[:start] + insert.lstrip("\n") + text[end:]


def weighted_clusters(text):
    """No filter, and Envoy's own weighted split instead of the header routes."""
    text = without_filter(text)
    start = text.index("              routes:")
    end = text.index("          http_filters:")
    return text[:start] + WEIGHTED_ROUTES + text[end:]


def empty_wasm_filter(text):
    """The shipped config with the rollout filter swapped for a wasm filter that does nothing:
    what the host charges for running any proxy-wasm filter, before it does any work."""
    text = text.replace("release/rollout_filter.wasm", "release/probe_filter.wasm")
    start = text.index("                  value: |")
    end = text.index("          - name: envoy.filters.http.router")
    return text[:start] + "                  value: pass\n" + text[end:]


def cpu_seconds(pid):
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def run_wrk(port, seconds, script):
    out = subprocess.run(["wrk", "-t2", "-c50", f"-d{seconds}s", "--latency", "-s", script,
                          f"http://127.0.0.1:{port}/checkout"], capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def latency(p):
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return requests, rps, latency(50), latency(99), int(errors.group(1)) if errors else 0


def main(rounds, seconds, json_path=None):
    tmp = pathlib.Path(tempfile.mkdtemp())
    script = tmp / "user_ids.lua"
    script.write_text(LUA_USER_IDS)
    upstream = Envoy(UPSTREAM, tmp, {})
    shipped = STATIC_CONFIG.read_text()
    variants = {
        "no filter": without_filter(shipped),
        "weighted_clusters": weighted_clusters(shipped),
        "lua split": without_filter(shipped, LUA_SPLIT),
        "empty wasm filter": empty_wasm_filter(shipped),
        "rollout filter": shipped,
    }
    results = {name: [] for name in variants}
    try:
        for _ in range(rounds):
            for name, text in variants.items():
                envoy = Envoy(text, tmp, {8081: upstream.port, 8082: upstream.port}, concurrency=1)
                try:
                    run_wrk(envoy.port, 2, str(script))  # warm up
                    before = cpu_seconds(envoy.process.pid)
                    requests, rps, p50, p99, errors = run_wrk(envoy.port, seconds, str(script))
                    cpu = cpu_seconds(envoy.process.pid) - before
                    results[name].append((rps, p50, p99, cpu / requests * 1e6, errors))
                finally:
                    envoy.stop()
    finally:
        upstream.stop()
    columns = ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "non_2xx")
    medians = {name: dict(zip(columns, (sorted(col)[len(col) // 2] for col in zip(*rows))))
               for name, rows in results.items()}
    native = medians["weighted_clusters"]
    for med in medians.values():
        med["rps_vs_native"] = med["rps"] / native["rps"]
        med["cpu_vs_native"] = med["cpu_us_per_request"] / native["cpu_us_per_request"]
    print(f"{rounds} interleaved rounds of {seconds} s, wrk -t2 -c50, proxy --concurrency 1, median per variant")
    print(f"{'variant':<18} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} {'non-2xx':>8} "
          f"{'rps vs native':>14}")
    for name, med in medians.items():
        print(f"{name:<18} {med['rps']:>9.0f} {med['p50_ms']:>8.2f} {med['p99_ms']:>8.2f} "
              f"{med['cpu_us_per_request']:>11.1f} {med['non_2xx']:>8d} {med['rps_vs_native']:>14.2f}")
    if json_path:
        pathlib.Path(json_path).write_text(json.dumps(
            {"rounds": rounds, "seconds": seconds, "variants": medians}, indent=2))


if __name__ == "__main__":
    args, json_out = json_option(sys.argv[1:])
    main(int(args[0]) if args else 3, int(args[1]) if len(args) > 1 else 10, json_out)
