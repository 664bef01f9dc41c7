"""Benchmark: how long from a config change at the source until every probed worker of a real
Envoy (--concurrency 2, envoy/live/envoy.yaml) decides by it. Prints p50/p99 over N flips.

    .venv/bin/python envoy/tests/bench_propagation.py [FLIPS] [--json PATH]

Each flip switches every user between v1 and v2 and times until 8 keep-alive connections
(spread over both workers) all see the new version; the time includes the probe requests."""

import json
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from conftest import LIVE_CONFIG, ConfigServer, Envoy, Upstream, json_option  # noqa: E402
from test_live import Probes, rollout, wait_until  # noqa: E402


def main(flips, json_path=None):
    upstreams = {"v1": Upstream("v1"), "v2": Upstream("v2")}
    source = ConfigServer(rollout(1, 0))
    envoy = Envoy(LIVE_CONFIG.read_text(), pathlib.Path(tempfile.mkdtemp()),
                  {8081: upstreams["v1"].port, 8082: upstreams["v2"].port, 8090: source.port})
    try:
        probes = Probes(envoy.port)
        wait_until(lambda: set(probes.versions()) == {"v1"}, what="the first config")
        delays = []
        for flip in range(flips):
            target = "v2" if flip % 2 == 0 else "v1"
            source.set(rollout(0, 1) if target == "v2" else rollout(1, 0))
            t0 = time.monotonic()
            wait_until(lambda: set(probes.versions()) == {target}, what=f"flip {flip}")
            delays.append((time.monotonic() - t0) * 1000)
            time.sleep(0.2)
        delays.sort()
        p99 = delays[min(len(delays) - 1, int(round(0.99 * (len(delays) - 1))))]
        print(f"propagation over {flips} flips (poll interval 50 ms): p50 {statistics.median(delays):.0f} ms, "
              f"p99 {p99:.0f} ms, max {delays[-1]:.0f} ms")
        if json_path:
            pathlib.Path(json_path).write_text(json.dumps({
                "flips": flips, "poll_interval_ms": 50, "p50_ms": statistics.median(delays),
                "p99_ms": p99, "max_ms": delays[-1]}, indent=2))
    finally:
        envoy.stop()
        source.stop()
        for u in upstreams.values():
            u.close()


if __name__ == "__main__":
    args, json_out = json_option(sys.argv[1:])
    main(int(args[0]) if args else 30, json_out)
