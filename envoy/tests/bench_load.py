"""Benchmark: the proxy's throughput, latency and CPU per request with and without the rollout
filter, in one run with interleaved rounds, on loopback only.

    .venv/bin/python envoy/tests/bench_load.py [ROUNDS] [SECONDS]

The proxy under test is envoy/static/envoy.yaml with --concurrency 1 (so its CPU time per
request is comparable), once as shipped and once with the wasm filter removed. Its upstream
is a second Envoy answering with a direct response, so the upstream is never the bottleneck.
Load: wrk -t2 -c50 with a distinct x-user-id per request. CPU is the proxy process's
user+system time from /proc, divided by the requests wrk completed."""

import os
import pathlib
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from conftest import STATIC_CONFIG, Envoy  # noqa: E402

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


def without_filter(text):
    """The shipped config with the wasm filter removed: the proxy's floor."""
    start = text.index("          - name: envoy.filters.http.wasm")
    end = text.index("          - name: envoy.filters.http.router")
    return text[:start] + text[end:]


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


def main(rounds, seconds):
    tmp = pathlib.Path(tempfile.mkdtemp())
    script = tmp / "user_ids.lua"
    script.write_text(LUA_USER_IDS)
    upstream = Envoy(UPSTREAM, tmp, {})
    shipped = STATIC_CONFIG.read_text()
    variants = {"no filter": without_filter(shipped), "rollout filter": shipped}
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
    base = None
    print(f"{rounds} interleaved rounds of {seconds} s, wrk -t2 -c50, proxy --concurrency 1, median per variant")
    print(f"{'variant':<16} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} {'non-2xx':>8} {'rps ratio':>10}")
    for name, rows in results.items():
        med = [sorted(col)[len(col) // 2] for col in zip(*rows)]
        base = base or med[0]
        print(f"{name:<16} {med[0]:>9.0f} {med[1]:>8.2f} {med[2]:>8.2f} {med[3]:>11.1f} {med[4]:>8d} {med[0] / base:>10.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, int(sys.argv[2]) if len(sys.argv) > 2 else 10)
