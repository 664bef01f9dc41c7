"""Benchmark: how long a failing new version keeps serving its users before the guard trips, in
a real Envoy (--concurrency 2, the ECDS setup of envoy/ecds/). Prints p50/p99 over N trips.

    .venv/bin/python envoy/bench_guard.py [TRIPS] [--json PATH]

The seed scenario, repeated: v2 holds 10% of users (weights 90/10) and answers every second
request 500; guard window 10 s, min_requests 20 (at the 5% limit the rule judges no fewer than
100 responses). Steady load from 8 keep-alive clients cycling over 2,000 users. Each trip is
started by publishing a new revision of the rollout (min_requests 20 + i), which lifts the
previous trip; it is timed from the first 500 the clients receive after the publication to the
last response v2 served, both as received by the clients, and ends when Envoy logs the trip;
also from v2's 100th response (the first the rule can judge at) to its last."""

import argparse
import json
import pathlib
import statistics
import tempfile
import time

from harness import Envoy, Traffic, Upstream, ecds_envoy_config, ecds_resource, wait_until

TRIP_LINE = "rollout: guard tripped"
# Responses the rule needs before it judges at the 5% limit (5 expected errors): the trip
# cannot come earlier, whatever min_requests says.
JUDGEABLE = 100


def config(min_requests):
    """The rollout with the guard; each min_requests is a new revision."""
    rollout = {"stable": "v1", "versions": [{"name": "v1", "weight": 90}, {"name": "v2", "weight": 10}],
               "guard": {"window": "10s", "min_requests": min_requests}}
    return json.dumps({"user_key": ["header:x-user-id"], "rollouts": {"checkout": rollout}})


def publish(folder, text):
    """Writes the ECDS resource as a new file renamed over the watched one."""
    tmp = folder / ".rollout-filter.yaml.next"
    tmp.write_text(text)
    tmp.replace(folder / "rollout-filter.yaml")


def percentile(sorted_values, q):
    """The nearest-rank percentile of a sorted list."""
    return sorted_values[min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))]


def main(n_trips, json_path=None):
    """Times `n_trips` trips and prints (and optionally writes) p50, p99 and max."""
    upstreams = {"v1": Upstream("v1"), "v2": Upstream("v2", fail_ratio=0.5)}
    tmp = pathlib.Path(tempfile.mkdtemp())
    folder = tmp / "ecds"
    folder.mkdir()
    # The first config has no guard: traffic starts before the first timed trip.
    publish(folder, ecds_resource(json.dumps({"user_key": ["header:x-user-id"], "rollouts": {"checkout": {
        "versions": [{"name": "v1", "weight": 1}, {"name": "v2", "weight": 0}]}}})))
    envoy = Envoy(ecds_envoy_config(folder), tmp, {8081: upstreams["v1"].port, 8082: upstreams["v2"].port})
    traffic = Traffic(envoy.port, [f"user-{i}" for i in range(2_000)])
    try:
        starts = []
        for i in range(n_trips):
            starts.append(time.time())
            publish(folder, ecds_resource(config(20 + i)))
            wait_until(lambda i=i: envoy.log_text().count(TRIP_LINE) > i, timeout=30, what=f"trip {i}")
            time.sleep(0.5)  # every VM has taken the latch up: v2 serves nobody until the next revision
        starts.append(time.time())
        replies = traffic.stop()
    finally:
        traffic.stop()
        envoy.stop()
        for u in upstreams.values():
            u.close()
    delays, reactions, served, rates = [], [], [], []
    for begin, end in zip(starts, starts[1:], strict=False):
        trip = [r for r in replies if begin <= r.sent < end]
        first_fail = min(r.received for r in trip if r.status == 500)
        by_v2 = [r for r in trip if r.upstream == "v2"]
        last = max(r.received for r in by_v2)
        delays.append((last - first_fail) * 1000)
        # From the response that makes the window judgeable: what the ticks and the latch add.
        reactions.append((last - sorted(r.received for r in by_v2)[JUDGEABLE - 1]) * 1000)
        served.append(len(by_v2))
        rates.append(len(trip) / (end - begin))
    delays.sort()
    reactions.sort()
    p50, p99 = statistics.median(delays), percentile(delays, 0.99)
    print(f"guard trip over {n_trips} trips (v2 10% of users, failing 50%; window 10 s; "
          f"load {statistics.median(rates):.0f} req/s): first 500 to last v2 response p50 {p50:.0f} ms, "
          f"p99 {p99:.0f} ms, max {delays[-1]:.0f} ms; v2 responses per trip median "
          f"{statistics.median(served):.0f}, max {max(served)}; from v2's {JUDGEABLE}th response to its last "
          f"p50 {statistics.median(reactions):.0f} ms, p99 {percentile(reactions, 0.99):.0f} ms")
    if json_path:
        pathlib.Path(json_path).write_text(json.dumps({
            "trips": n_trips, "load_rps": statistics.median(rates), "p50_ms": p50, "p99_ms": p99,
            "max_ms": delays[-1], "v2_responses_median": statistics.median(served),
            "v2_responses_max": max(served), "reaction_p50_ms": statistics.median(reactions),
            "reaction_p99_ms": percentile(reactions, 0.99)}, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trips", type=int, nargs="?", default=25, help="trips to time (default 25)")
    parser.add_argument("--json", metavar="PATH", help="also write p50, p99 and max as JSON")
    args = parser.parse_args()
    main(args.trips, args.json)
