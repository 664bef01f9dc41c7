"""Benchmark (issue 15): a real Envoy's memory per worker VM with the rollout filter, and the
time until every worker decides by a newly served 200-flag config.

    .venv/bin/python envoy/bench_memory.py [--quick] [--json PATH]

1. RSS: Envoy (envoy/static/envoy.yaml) with `--concurrency` 1, 2 and 4, each without the wasm
   filter, with the rollout filter and the shipped config, and with a 200-flag config. VmRSS
   from /proc/PID/status, the median of a few samples, right after startup and again after
   requests from distinct users over connections that reach every worker. The slope of RSS
   over the worker count is what one more worker (and its VM) costs.
2. Config load: the live scenario (envoy/live/envoy.yaml and a config source) takes turns
   serving a one-rollout config and the same rollout with 200 flags; each change is timed
   until every probe connection (at least one on each worker) gets the new version and the
   new number of flags. p50/p99 per config.

Exits non-zero if Envoy does not start, a worker gets no connection, or the filter does not
decide (a response without the version header, or the wrong number of flags)."""

import argparse
import json
import pathlib
import random
import re
import statistics
import sys
import tempfile
import threading
import time

from harness import (
    LIVE_CONFIG,
    STATIC_CONFIG,
    WASM_TYPE,
    Client,
    ConfigServer,
    Envoy,
    Upstream,
    http_filters,
    load,
    rollout,
    set_plugin_configuration,
    wait_until,
)

FLAGS = 200
CONCURRENCIES = (1, 2, 4)
VARIANTS = ("no wasm filter", "rollout filter, shipped config", f"rollout filter, {FLAGS} flags")


# --- configs ------------------------------------------------------------------------------


def flag(i):
    """One flag shaped like the criterion benches' (benches/benches/decide.rs): a percentage,
    allow and deny lists, and a rule with two conditions."""
    return {"percentage": (i * 7) % 100, "allow": [f"qa-{i}"], "deny": [f"banned-{i}"],
            "rules": [{"when": [{"attribute": "header:x-country", "op": "one_of", "values": ["DE", "FR"]},
                                {"attribute": "header:x-app-version", "op": "semver_gte", "value": f"2.{i}.0"}],
                       "serve": "on"}]}


def flags_config(n_flags, v1=50, v2=50):
    """JSON bytes: the `checkout` rollout with these weights and `n_flags` flags."""
    return json.dumps({"user_key": ["header:x-user-id", "cookie:uid"],
                       "rollouts": {"checkout": {"versions": [{"name": "v1", "weight": v1},
                                                              {"name": "v2", "weight": v2}]}},
                       "flags": {f"flag-{i}": flag(i) for i in range(n_flags)}}).encode()


def static_config(variant):
    """The shipped static config for one variant, as a dict."""
    doc = load(STATIC_CONFIG)
    if variant == VARIANTS[0]:
        filters = http_filters(doc)
        filters[:] = [f for f in filters if f.get("typed_config", {}).get("@type") != WASM_TYPE]
    elif variant == VARIANTS[2]:
        set_plugin_configuration(doc, flags_config(FLAGS).decode())
    return doc


# --- numbers ------------------------------------------------------------------------------


def vm_rss_kib(status_text):
    """VmRSS in KiB from the text of /proc/PID/status."""
    m = re.search(r"^VmRSS:\s+(\d+) kB$", status_text, re.MULTILINE)
    if not m:
        raise ValueError("no VmRSS line in /proc/PID/status")
    return int(m.group(1))


def rss_median(pid, samples=5, pause=0.1):
    """The median of `samples` readings of a process's VmRSS (KiB), `pause` seconds apart."""
    readings = []
    for k in range(samples):
        if k:
            time.sleep(pause)
        readings.append(vm_rss_kib(pathlib.Path(f"/proc/{pid}/status").read_text()))
    return statistics.median(readings)


def slope(xs, ys):
    """The least-squares slope of ys over xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def percentile(values, q):
    """The nearest-rank q-quantile (0..1) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def stat_values(envoy, pattern):
    """{name: value} of the integer stats whose name matches `pattern` (a regex)."""
    values = {}
    for line in envoy.admin("/stats")[1].splitlines():
        name, _, value = line.partition(": ")
        if re.search(pattern, name) and value.strip().isdigit():
            values[name] = int(value)
    return values


def worker_connections(envoy, concurrency, which="total"):
    """Downstream connections (`total` or `active`) of each worker of Envoy's listener."""
    counts = [0] * concurrency
    pattern = rf"^listener\.127\.0\.0\.1_{envoy.port}\.worker_\d+\.downstream_cx_{which}$"
    for name, value in stat_values(envoy, pattern).items():
        counts[int(re.search(r"worker_(\d+)", name).group(1))] = value
    return counts


# --- part 1: RSS --------------------------------------------------------------------------


def check_reply(status, headers, body, n_flags):
    """Fails unless the reply is a 200 the filter decided with a config of `n_flags` flags
    (None: no filter, so no version header may appear)."""
    assert status == 200, f"status {status}"
    version = dict(headers).get("x-rollout-version")
    if n_flags is None:
        assert version is None, "x-rollout-version without a filter"
        return
    assert version in ("v1", "v2"), "the filter did not decide (no x-rollout-version on the response)"
    got = flag_count(json.loads(body))
    assert got == n_flags, f"{got} flags on the upstream request, expected {n_flags}"


def flag_count(echoed):
    """How many flags the upstream request's x-rollout-flags carries."""
    value = dict(echoed["headers"]).get("x-rollout-flags", "")
    return len(value.split(",")) if value else 0


def traffic(port, requests, connections, n_flags, threads=4):
    """`requests` requests from distinct users over `connections` keep-alive connections,
    `threads` at a time; every reply is checked (check_reply)."""
    failures = []

    def run(first):
        for c in range(first, connections, threads):
            client = Client(port)
            try:
                for i in range(c, requests, connections):
                    check_reply(*client.send([(":path", "/"), (":authority", "a"), ("x-user-id", f"user-{i}"),
                                              ("x-country", "DE"), ("x-app-version", "2.4.1")]), n_flags)
            except Exception as e:  # noqa: BLE001 (reported below, not lost in a thread)
                failures.append(e)
                return
            finally:
                client.close()

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if failures:
        raise AssertionError(f"{len(failures)} client(s) failed, e.g. {failures[0]!r}")


def measure_rss(variant, concurrency, requests, connections, tmp, upstreams, settle):
    """One Envoy for one (variant, concurrency): RSS (KiB) after startup and after traffic, and
    its wasm VM count."""
    n_flags = {VARIANTS[0]: None, VARIANTS[1]: 1, VARIANTS[2]: FLAGS}[variant]
    envoy = Envoy(static_config(variant), tmp, {8081: upstreams["v1"].port, 8082: upstreams["v2"].port},
                  concurrency=concurrency)
    try:
        time.sleep(settle)
        startup = rss_median(envoy.process.pid)
        traffic(envoy.port, requests, connections, n_flags)
        per_worker = worker_connections(envoy, concurrency)
        assert all(per_worker), f"a worker got no connection: {per_worker}"
        time.sleep(settle)
        after = rss_median(envoy.process.pid)
        vms = stat_values(envoy, r"^wasm\.wasm_vm_count$").get("wasm.wasm_vm_count", 0)
        assert envoy.process.poll() is None, "envoy exited"
    finally:
        envoy.stop()
    return {"variant": variant, "concurrency": concurrency, "wasm_vms": vms,
            "startup_kib": startup, "traffic_kib": after, "connections_per_worker": per_worker}


def memory(repeats, requests, connections, settle):
    """Every (variant, concurrency) `repeats` times, interleaved; medians per pair and slopes."""
    upstreams = {"v1": Upstream("v1"), "v2": Upstream("v2")}
    runs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(repeats):
                for concurrency in CONCURRENCIES:
                    for variant in VARIANTS:
                        run = measure_rss(variant, concurrency, requests, connections, pathlib.Path(tmp),
                                          upstreams, settle)
                        print(f"  round {r + 1}: {variant}, {concurrency} worker(s): "
                              f"{run['startup_kib'] / 1024:.1f} MiB after startup, "
                              f"{run['traffic_kib'] / 1024:.1f} MiB after traffic, {run['wasm_vms']} wasm VMs",
                              flush=True)
                        runs.append(run)
    finally:
        for u in upstreams.values():
            u.close()
    rows, slopes = [], {}
    for variant in VARIANTS:
        mine = []
        for concurrency in CONCURRENCIES:
            same = [x for x in runs if x["variant"] == variant and x["concurrency"] == concurrency]
            traffic_kib = [x["traffic_kib"] for x in same]
            mine.append({"variant": variant, "concurrency": concurrency, "wasm_vms": same[0]["wasm_vms"],
                         "startup_kib": statistics.median(x["startup_kib"] for x in same),
                         "traffic_kib": statistics.median(traffic_kib),
                         "traffic_spread_kib": max(traffic_kib) - min(traffic_kib)})
        rows += mine
        slopes[variant] = {key: slope(CONCURRENCIES, [row[f"{key}_kib"] for row in mine])
                           for key in ("startup", "traffic")}
    return {"repeats": repeats, "requests": requests, "connections": connections, "flags": FLAGS,
            "rows": rows, "slope_kib_per_worker": slopes}


# --- part 2: config load ------------------------------------------------------------------


class Probe:
    """Keep-alive connections, at least one on every worker of `envoy`, that report what one
    user gets on each: (upstream, number of flags)."""

    def __init__(self, envoy, concurrency, at_least=8, at_most=64):
        self.clients = []
        while len(self.clients) < at_least or not all(worker_connections(envoy, concurrency, "active")):
            assert len(self.clients) < at_most, f"{at_most} connections and still a worker without one"
            self.clients.append(Client(envoy.port))
            self.clients[-1].send([(":path", "/"), (":authority", "a")])

    def seen(self):
        """The set of (upstream, flag count) over every connection; every answer must be a 200."""
        seen = set()
        for client in self.clients:
            status, headers, body = client.send([(":path", "/"), (":authority", "a"), ("x-user-id", "user-1")])
            assert status == 200, status
            echoed = json.loads(body)
            seen.add((echoed["upstream"], flag_count(echoed)))
        return seen

    def close(self):
        """Closes every connection."""
        for c in self.clients:
            c.close()


def config_load(flips, concurrency, pause=0.2):
    """Times `flips` changes of the served config per kind (a one-rollout config and the same
    with FLAGS flags, in turns) until every probe sees it: ms, p50/p99/max per kind."""
    tiny = {"v1": rollout(1, 0), "v2": rollout(0, 1)}
    big = {"v1": flags_config(FLAGS, 1, 0), "v2": flags_config(FLAGS, 0, 1)}
    kinds = {"1 rollout, 0 flags": (tiny, 0), f"1 rollout, {FLAGS} flags": (big, FLAGS)}
    upstreams = {"v1": Upstream("v1"), "v2": Upstream("v2")}
    source = ConfigServer(tiny["v1"])
    delays = {kind: [] for kind in kinds}
    phase = random.Random(15)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            envoy = Envoy(LIVE_CONFIG, pathlib.Path(tmp),
                          {8081: upstreams["v1"].port, 8082: upstreams["v2"].port, 8090: source.port},
                          concurrency=concurrency)
            try:
                probe = Probe(envoy, concurrency)
                wait_until(lambda: probe.seen() == {("v1", 0)}, what="the first config")
                for i in range(2 * flips):
                    # The kind changes every time (so does the flag count), the version every
                    # other time: each kind is timed on both versions.
                    kind = list(kinds)[i % 2]
                    bodies, n_flags = kinds[kind]
                    target = "v2" if (i // 2) % 2 == 0 else "v1"
                    source.set(bodies[target])
                    t0 = time.monotonic()
                    wait_until(lambda want={(target, n_flags)}: probe.seen() == want, what=f"change {i} ({kind})")
                    delays[kind].append((time.monotonic() - t0) * 1000)
                    # A random share of a poll interval on top: a fixed pause would put every
                    # change at a similar point of the 50 ms poll cycle, a bias that can differ
                    # between the two kinds (seen: p50 64 ms for the small config, 42 ms for 200 flags).
                    time.sleep(pause + phase.uniform(0, 0.05))
                probe.close()
                assert envoy.process.poll() is None, "envoy exited"
            finally:
                envoy.stop()
    finally:
        source.stop()
        for u in upstreams.values():
            u.close()
    return {"flips": flips, "concurrency": concurrency, "poll_interval_ms": 50,
            "configs": {kind: {"bytes": len(kinds[kind][0]["v1"]), "p50_ms": statistics.median(d),
                               "p99_ms": percentile(d, 0.99), "max_ms": max(d)} for kind, d in delays.items()}}


# --- main ---------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, fewer requests and flips")
    parser.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    args = parser.parse_args()
    repeats, requests, flips = (1, 800, 6) if args.quick else (3, 3000, 30)

    print(f"RSS: concurrency {CONCURRENCIES}, {len(VARIANTS)} variants, {repeats} round(s), "
          f"{requests} users each", flush=True)
    mem = memory(repeats, requests, connections=48, settle=1.0)
    print(f"config load: {flips} changes per config, concurrency 2", flush=True)
    load_times = config_load(flips, concurrency=2)

    for row in mem["rows"]:
        print(f"{row['variant']}, {row['concurrency']} worker(s): {row['startup_kib'] / 1024:.1f} MiB after startup, "
              f"{row['traffic_kib'] / 1024:.1f} MiB after traffic")
    for variant, s in mem["slope_kib_per_worker"].items():
        print(f"{variant}: +{s['startup']:.0f} KiB per worker after startup, +{s['traffic']:.0f} KiB after traffic")
    for kind, c in load_times["configs"].items():
        print(f"{kind} ({c['bytes']:,} B): p50 {c['p50_ms']:.0f} ms, p99 {c['p99_ms']:.0f} ms, "
              f"max {c['max_ms']:.0f} ms until every worker decides by it")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"memory": mem, "config_load": load_times}, indent=2))


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, RuntimeError) as e:
        print(f"bench_memory: {e}", file=sys.stderr)
        sys.exit(1)
