"""The live scenario (envoy/live/envoy.yaml) in a real Envoy with --concurrency 2: the config
comes from a config source over HTTP, changes while traffic flows, and neither bad configs
nor a failing source ever fail a client request. With `long_poll_s`, a source that honours
`Prefer: wait` sees about one poll per wait at rest, and one that ignores it is polled as before."""

import json
import statistics
import time

import pytest

from harness import LIVE_CONFIG, ConfigServer, Probes, Steady, flip_and_time, live_config_with, rollout, wait_until


@pytest.fixture
def source():
    server = ConfigServer(rollout(1, 0))
    yield server
    server.stop()


@pytest.fixture
def live(start_envoy, source):
    envoy = start_envoy(LIVE_CONFIG, ports={8090: source.port})
    probes = Probes(envoy.port)
    yield envoy, probes
    probes.close()


def metric(envoy, name):
    return envoy.prometheus().get((name, frozenset()), 0.0)


def test_config_flips_reach_every_worker_fast_with_zero_failed_requests(live, source):
    envoy, probes = live
    wait_until(lambda: set(probes.versions()) == {"v1"}, what="the first config")
    load = Steady(envoy.port, connections=4)
    started, requests_before = time.monotonic(), source.requests
    delays = flip_and_time(source, probes, 10)
    elapsed = time.monotonic() - started
    total, failed = load.stop()
    assert total > 100 and not failed, f"{len(failed)} of {total} requests failed: {failed[:5]}"
    # One worker polls for all: about one request per poll interval (50 ms), not one per worker.
    polls = source.requests - requests_before
    assert polls <= elapsed / 0.05 * 1.3 + 5, f"{polls} polls in {elapsed:.2f} s"
    assert source.not_modified > 0, "an unchanged source must be answered with 304"
    assert metric(envoy, "rollout_config_updates_total") >= 10
    print(f"\npropagation over {len(delays)} flips: median {statistics.median(delays) * 1000:.0f} ms, "
          f"max {max(delays) * 1000:.0f} ms; {polls} polls in {elapsed:.1f} s")


def test_bad_configs_and_failing_sources_never_fail_a_request_or_replace_the_config(live, source):
    envoy, probes = live
    source.set(rollout(0, 1))
    wait_until(lambda: set(probes.versions()) == {"v2"}, what="the good config")
    load = Steady(envoy.port, connections=4)
    rejected = metric(envoy, "rollout_config_rejected_total")
    source.set(rollout(1, -1))  # fails validation
    wait_until(lambda: metric(envoy, "rollout_config_rejected_total") == rejected + 1, what="the rejection")
    source.garbage = True
    wait_until(lambda: metric(envoy, "rollout_config_rejected_total") == rejected + 2, what="garbage refused")
    source.garbage = False
    assert set(probes.versions()) == {"v2"}
    for what, breakage, undo in [
        ("503", lambda: setattr(source, "fail_with", 503), lambda: setattr(source, "fail_with", None)),
        ("slower than the timeout", lambda: setattr(source, "delay", 1.5), lambda: setattr(source, "delay", 0.0)),
        ("down", source.stop, source.start),
    ]:
        failures = metric(envoy, "rollout_config_fetch_failures_total")
        breakage()
        wait_until(lambda failures=failures: metric(envoy, "rollout_config_fetch_failures_total") >= failures + 2,
                   timeout=15, what=f"source {what} noticed")
        assert set(probes.versions()) == {"v2"}, f"source {what}"
        undo()
    source.set(rollout(1, 0))
    wait_until(lambda: set(probes.versions()) == {"v1"}, what="recovery")
    total, failed = load.stop()
    assert total > 100 and not failed, f"{len(failed)} of {total} requests failed: {failed[:5]}"
    log = envoy.log_text()
    assert "config from source rejected: rollouts.checkout.versions[1].weight: expected an integer weight" in log
    assert "config source failing" in log and "config source answers again" in log


def test_with_no_config_ever_loaded_requests_go_to_the_default_version(start_envoy, source):
    source.stop()
    envoy = start_envoy(LIVE_CONFIG, ports={8090: source.port})
    probes = Probes(envoy.port)
    spoof = [("x-rollout-version", "v2")]
    for i in range(20):
        assert set(probes.versions(f"user-{i}", spoof)) == {"v1"}
    source.start()
    source.set(rollout(0, 1))
    wait_until(lambda: set(probes.versions()) == {"v2"}, what="the first config once the source is up")
    probes.close()


def test_a_weight_raised_at_the_source_moves_users_only_into_that_version(live, source):
    envoy, probes = live
    client = probes.clients[0]

    def versions():
        out = []
        for i in range(2000):
            _, _, body = client.send([(":path", "/"), (":authority", "a"), ("x-user-id", f"user-{i}")])
            out.append(json.loads(body)["upstream"])
        return out

    source.set(rollout(90, 10))
    wait_until(lambda: len(set(probes.versions("user-3") + probes.versions("user-1"))) == 2, what="90/10")
    before = versions()
    updates = metric(envoy, "rollout_config_updates_total")
    source.set(rollout(90, 30))
    wait_until(lambda: metric(envoy, "rollout_config_updates_total") == updates + 1, what="90/30")
    time.sleep(0.1)  # every worker takes it up within a tick
    after = versions()
    moved = [(i, b, a) for i, (b, a) in enumerate(zip(before, after, strict=True)) if b != a]
    assert moved, "raising v2 moved nobody"
    assert all(b == "v1" and a == "v2" for _, b, a in moved), moved[:10]


def polls_at_rest(source, seconds):
    """How many polls the source got in `seconds` with no change."""
    before = source.requests
    time.sleep(seconds)
    return source.requests - before


def test_long_polling_propagates_changes_and_costs_about_one_poll_per_wait_at_rest(start_envoy, source):
    envoy = start_envoy(live_config_with(long_poll_s=1), ports={8090: source.port})
    probes = Probes(envoy.port)
    wait_until(lambda: set(probes.versions()) == {"v1"}, what="the first config")
    load = Steady(envoy.port, connections=4)
    delays = flip_and_time(source, probes, 6)
    # At rest each held poll ends after the 1 s wait: about 3 polls in 3 s, where polling every
    # 50 ms (the shipped poll_interval_ms) would make about 60.
    polls = polls_at_rest(source, 3.0)
    total, failed = load.stop()
    probes.close()
    assert total > 100 and not failed, f"{len(failed)} of {total} requests failed: {failed[:5]}"
    assert 2 <= polls <= 5, f"{polls} polls in 3 s of rest with a 1 s wait"
    assert source.held >= 2, "the source never held a poll"
    assert source.asked_to_wait >= polls
    assert metric(envoy, "rollout_config_updates_total") >= 7
    assert metric(envoy, "rollout_config_fetch_failures_total") == 0
    print(f"\nlong-polling: propagation over {len(delays)} flips: median {statistics.median(delays) * 1000:.0f} ms, "
          f"max {max(delays) * 1000:.0f} ms; {polls} polls in 3 s at rest")


def test_long_polling_a_source_that_ignores_prefer_is_plain_polling(start_envoy):
    source = ConfigServer(rollout(1, 0), honour_wait=False)
    try:
        envoy = start_envoy(live_config_with(long_poll_s=30), ports={8090: source.port})
        probes = Probes(envoy.port)
        wait_until(lambda: set(probes.versions()) == {"v1"}, what="the first config")
        delays = flip_and_time(source, probes, 4)
        polls = polls_at_rest(source, 2.0)
        probes.close()
        # Answered at once, so polled every 50 ms (poll_interval_ms): about 40 in 2 s.
        # At least 10: a held poll (30 s wait) would make none; the margin is for a loaded machine.
        assert 10 <= polls <= 40 * 1.3 + 5, f"{polls} polls in 2 s"
        assert source.asked_to_wait >= polls and source.held == 0
        assert metric(envoy, "rollout_config_fetch_failures_total") == 0
        print(f"\nsource ignoring Prefer: propagation median {statistics.median(delays) * 1000:.0f} ms; "
              f"{polls} polls in 2 s at rest")
    finally:
        source.stop()
