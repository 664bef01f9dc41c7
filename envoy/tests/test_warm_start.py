"""Warm start in a real Envoy with --concurrency 2: the first requests after `/ready` are
decided on the config in force, never on a live config's fallback while its source can answer.

With envoy/live/envoy.yaml a request waits (the filter pauses it) until the source's first
answer; a source that is down or slow holds it at most the bound, `timeout_ms` + 30 ms, then
the fallback serves. With a static or ECDS config Envoy itself runs the filter's configuration
before the listener takes traffic. Run with `pytest -s` to see the measured latencies.

ROLLOUT_FILTER_WASM names another rollout_filter.wasm to test (e.g. an older build)."""

import collections
import contextlib
import datetime
import json
import os
import pathlib
import statistics
import threading
import time

from harness import (
    FILTER_WASM,
    LIVE_CONFIG,
    STATIC_CONFIG,
    Client,
    ConfigServer,
    Envoy,
    ecds_envoy_config,
    ecds_resource,
    load,
    plugin_configuration,
    rollout,
    set_plugin_configuration,
    wait_until,
)

WASM = pathlib.Path(os.environ.get("ROLLOUT_FILTER_WASM", FILTER_WASM))
STARTS = 5
REQUESTS, CONNECTIONS = 20, 5
# /ready is polled this often, so that the burst leaves within a few ms of Envoy being ready.
READY_POLL = 0.002
SHORT_TIMEOUT_MS = 300
BOUND_S = (SHORT_TIMEOUT_MS + 30) / 1000
# This machine has 2 cores shared with builds and other Envoys: a request may be held a
# scheduling hiccup longer than the bound. Generous, and still far below "never resumed".
MARGIN_S = 0.7


def live_config(timeout_ms=None):
    """envoy/live/envoy.yaml with the .wasm under test and, if given, another `timeout_ms`."""
    doc = load(LIVE_CONFIG)
    value = plugin_configuration(doc)
    if timeout_ms is not None:
        value["config_source"]["timeout_ms"] = timeout_ms
    return set_plugin_configuration(doc, json.dumps(value), WASM)


@contextlib.contextmanager
def started(config, tmp_path, upstreams, source=None):
    """An Envoy from `config` whose upstreams (and config source, if any) are ours; stopped on exit."""
    ports = {8081: upstreams["v1"].port, 8082: upstreams["v2"].port}
    if source is not None:
        ports[8090] = source.port
    envoy = Envoy(config, tmp_path, ports, ready_poll=READY_POLL)
    try:
        yield envoy
    finally:
        envoy.stop()


Result = collections.namedtuple("Result", "status upstream seconds nth done")
Result.__doc__ = """One request of a burst: status ('error ...' if it failed), the upstream that answered,
how long it took, its rank on its connection (0: the first, connect included), and the wall
clock time its response was in."""


def burst(port, requests=REQUESTS, connections=CONNECTIONS):
    """Sends `requests` requests over `connections` new connections at once, each connection
    its share one after another; returns a Result per request."""
    results, lock = [], threading.Lock()
    go = threading.Barrier(connections)

    def run(c):
        client = Client(port)
        go.wait()
        for n in range(requests // connections):
            t0 = time.monotonic()
            try:
                status, _, body = client.send([(":path", "/"), (":authority", "a"), ("x-user-id", f"u-{c}-{n}")])
                upstream = json.loads(body)["upstream"] if status == 200 else None
            except OSError as e:
                status, upstream = f"error {e}", None
            with lock:
                results.append(Result(status, upstream, time.monotonic() - t0, n, time.time()))
        client.close()

    threads = [threading.Thread(target=run, args=(c,)) for c in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == requests, f"{len(results)} of {requests} requests came back"
    return results


def ms(seconds):
    return f"{seconds * 1000:.0f} ms"


def summary(results):
    """Latency of the first request on each connection (connect included) and of all."""
    first = [r.seconds for r in results if r.nth == 0]
    every = [r.seconds for r in results]
    return (f"first requests median {ms(statistics.median(first))} max {ms(max(first))}; "
            f"all median {ms(statistics.median(every))} max {ms(max(every))}")


def firsts(runs):
    """Median and max latency of the first request on each connection, over several bursts."""
    first = [r.seconds for results in runs for r in results if r.nth == 0]
    return f"median {ms(statistics.median(first))} max {ms(max(first))}"


def check_all(results, version, what):
    """Every request got a 200 from `version`."""
    wrong = [(r.status, r.upstream) for r in results if (r.status, r.upstream) != (200, version)]
    assert not wrong, f"{what}: {len(wrong)} of {len(results)} requests not a 200 from {version}: {wrong[:5]}"


GAVE_UP = ("rollout: config source failing", "rollout: no answer from the config source")


def gave_up_at(envoy):
    """Wall-clock time of the first log line in which a VM of `envoy` stopped waiting for the
    source (a failed fetch, or the bound passed); waits up to 5 s for it to be written."""
    found = []

    def find():
        found[:] = [line for line in envoy.log_text().splitlines() if any(g in line for g in GAVE_UP)]
        return found

    wait_until(find, timeout=5, what="the filter giving up on the source")
    # Envoy stamps lines "[YYYY-mm-dd HH:MM:SS.mmm]" in local time, as naive datetimes are read.
    return min(datetime.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S.%f").timestamp() for line in found)


def check_held_until_given_up(envoy, results, what):
    """Every request was a 200 from the fallback's v1, none came back before the filter gave up
    on the source (so none was decided while the source could still answer), and none was held
    longer than the bound plus the margin."""
    check_all(results, "v1", what)
    given_up = gave_up_at(envoy)
    early = [r for r in results if r.done < given_up - 0.002]  # log stamps have 1 ms steps
    assert not early, f"{what}: {len(early)} requests answered before the filter gave up on the source"
    slowest = max(r.seconds for r in results)
    assert slowest <= BOUND_S + MARGIN_S, (
        f"{what}: a request waited {ms(slowest)}, bound {ms(BOUND_S)} + margin {ms(MARGIN_S)}")


def test_right_after_ready_no_request_is_decided_on_the_fallback_while_the_source_answers(upstreams, tmp_path):
    source = ConfigServer(rollout(0, 1))  # everyone to v2; the fallback says v1
    try:
        lines, colds, warms = [], [], []
        for start in range(STARTS):
            before = source.requests
            with started(live_config(), tmp_path, upstreams, source) as envoy:
                cold = burst(envoy.port)
                after_ready = time.monotonic() - envoy.ready_at
                warm = burst(envoy.port)
            check_all(cold, "v2", f"start {start}, right after /ready")
            check_all(warm, "v2", f"start {start}, warm")
            assert source.requests > before, "the source was never asked"
            colds.append(cold)
            warms.append(warm)
            lines.append(f"start {start}: cold {summary(cold)} | warm {summary(warm)} "
                         f"| both bursts done {ms(after_ready)} after /ready")
        print("\n" + "\n".join(lines))
        print(f"live, first request of each connection over {STARTS} starts: right after /ready "
              f"{firsts(colds)}; warm {firsts(warms)}")
    finally:
        source.stop()


def test_a_source_that_is_down_holds_requests_at_most_the_bound_then_the_fallback_serves(upstreams, tmp_path):
    source = ConfigServer(rollout(0, 1))
    source.stop()  # nothing listens on its port now
    with started(live_config(SHORT_TIMEOUT_MS), tmp_path, upstreams, source) as envoy:
        results = burst(envoy.port)
        check_held_until_given_up(envoy, results, "source down")
    print(f"\nsource down: {summary(results)} (bound {ms(BOUND_S)})")


def test_a_source_slower_than_its_timeout_holds_requests_about_the_bound_then_the_fallback_serves(
        upstreams, tmp_path):
    source = ConfigServer(rollout(0, 1))
    source.delay = 3 * SHORT_TIMEOUT_MS / 1000
    try:
        with started(live_config(SHORT_TIMEOUT_MS), tmp_path, upstreams, source) as envoy:
            results = burst(envoy.port)
            check_held_until_given_up(envoy, results, "slow source")
    finally:
        source.stop()
    assert source.requests >= 1, "the source was never asked"
    print(f"\nslow source: {summary(results)} (bound {ms(BOUND_S)})")


def check_first_requests_over_starts(config, tmp_path, upstreams, what):
    """Restarts Envoy STARTS times; every burst right after /ready must be decided on v2."""
    lines, runs = [], []
    for start in range(STARTS):
        with started(config, tmp_path, upstreams) as envoy:
            results = burst(envoy.port)
        check_all(results, "v2", f"{what}, start {start}")
        runs.append(results)
        lines.append(f"{what} start {start}: {summary(results)}")
    print("\n" + "\n".join(lines))
    print(f"{what}, first request of each connection over {STARTS} starts: right after /ready {firsts(runs)}")


def test_a_static_config_decides_the_first_requests_after_ready(upstreams, tmp_path):
    config = set_plugin_configuration(load(STATIC_CONFIG), rollout(0, 1).decode(), WASM)
    check_first_requests_over_starts(config, tmp_path, upstreams, "static")


def test_an_ecds_config_decides_the_first_requests_after_ready(upstreams, tmp_path):
    folder = tmp_path / "ecds"
    folder.mkdir()
    (folder / "rollout-filter.yaml").write_text(ecds_resource(rollout(0, 1).decode(), WASM))
    check_first_requests_over_starts(ecds_envoy_config(folder), tmp_path, upstreams, "ECDS")
