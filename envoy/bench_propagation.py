"""Benchmark: how long from a config change at the source until every probed worker of a real
Envoy (--concurrency 2, envoy/live/envoy.yaml) decides by it. Prints p50/p99 over N flips.

    .venv/bin/python envoy/bench_propagation.py [FLIPS] [--long-poll S] [--json PATH]

Each flip switches every user between v1 and v2 and times until 8 keep-alive connections
(spread over both workers) all see the new version; the time includes the probe requests (a
round of them alone is timed and printed too).
By default the filter polls every 50 ms (the shipped config); `--long-poll S` sets
`config_source.long_poll_s`, and the source holds each poll until the config changes."""

import argparse
import json
import pathlib
import statistics
import tempfile
import time

from harness import (
    ConfigServer,
    Envoy,
    Probes,
    Upstream,
    flip_and_time,
    live_config_with,
    plugin_configuration,
    rollout,
    wait_until,
)


def main(flips, json_path=None, long_poll_s=0):
    """Times `flips` config changes and prints (and optionally writes) p50, p99 and max;
    returns them as a dict."""
    upstreams = {"v1": Upstream("v1"), "v2": Upstream("v2")}
    source = ConfigServer(rollout(1, 0))
    config = live_config_with(long_poll_s=long_poll_s or None)
    poll_interval_ms = plugin_configuration(config)["config_source"]["poll_interval_ms"]
    envoy = Envoy(config, pathlib.Path(tempfile.mkdtemp()),
                  {8081: upstreams["v1"].port, 8082: upstreams["v2"].port, 8090: source.port})
    try:
        probes = Probes(envoy.port)
        wait_until(lambda: set(probes.versions()) == {"v1"}, what="the first config")
        # What one round of the probes costs on its own: every delay below includes at least one.
        rounds = []
        for _ in range(20):
            t0 = time.monotonic()
            probes.versions()
            rounds.append((time.monotonic() - t0) * 1000)
        delays = [seconds * 1000 for seconds in flip_and_time(source, probes, flips, pause=0.2)]
        probes.close()
        delays.sort()
        p99 = delays[min(len(delays) - 1, int(round(0.99 * (len(delays) - 1))))]
        mode = f"long-poll {long_poll_s} s" if long_poll_s else f"poll interval {poll_interval_ms} ms"
        print(f"propagation over {flips} flips ({mode}): p50 {statistics.median(delays):.0f} ms, "
              f"p99 {p99:.0f} ms, max {delays[-1]:.0f} ms; the source answered {source.requests} polls; "
              f"one probe round alone (8 requests) takes p50 {statistics.median(rounds):.1f} ms")
        result = {"flips": flips, "poll_interval_ms": poll_interval_ms, "long_poll_s": long_poll_s,
                  "p50_ms": statistics.median(delays), "p99_ms": p99, "max_ms": delays[-1],
                  "probe_round_p50_ms": statistics.median(rounds)}
        if json_path:
            pathlib.Path(json_path).write_text(json.dumps(result, indent=2))
        return result
    finally:
        envoy.stop()
        source.stop()
        for u in upstreams.values():
            u.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("flips", type=int, nargs="?", default=30, help="config changes to time (default 30)")
    parser.add_argument("--long-poll", type=int, default=0, metavar="S",
                        help="config_source.long_poll_s (default 0: plain polling)")
    parser.add_argument("--json", metavar="PATH", help="also write p50, p99 and max as JSON")
    args = parser.parse_args()
    main(args.flips, args.json, args.long_poll)
