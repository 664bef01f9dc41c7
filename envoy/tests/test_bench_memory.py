"""The memory benchmark's arithmetic and checks (envoy/bench_memory.py) on recorded inputs:
reading VmRSS, the slope and percentile, the configs it starts Envoy with, and the check that
fails when the filter did not decide. No Envoy is started and nothing is timed."""

import json
import os

import bench_memory
import pytest

from harness import WASM_TYPE, http_filters, plugin_configuration

STATUS = """Name:\tenvoy
VmPeak:\t  312000 kB
VmSize:\t  311000 kB
VmHWM:\t   99000 kB
VmRSS:\t   95872 kB
RssAnon:\t   60000 kB
"""


def test_vm_rss_is_read_from_its_own_line():
    assert bench_memory.vm_rss_kib(STATUS) == 95872
    with pytest.raises(ValueError, match="VmRSS"):
        bench_memory.vm_rss_kib(STATUS.replace("VmRSS", "VmXXX"))


def test_rss_of_this_process_is_read():
    assert bench_memory.rss_median(os.getpid(), samples=3, pause=0) > 1000


def test_slope_is_the_least_squares_one():
    assert bench_memory.slope((1, 2, 4), (100, 110, 130)) == pytest.approx(10.0)
    # Not the end points' difference: (1, 100), (2, 130), (4, 130) fits 8.57 per step.
    assert bench_memory.slope((1, 2, 4), (100, 130, 130)) == pytest.approx(60 / 7)


def test_percentile_is_nearest_rank():
    values = list(range(100, 0, -1))
    assert bench_memory.percentile(values, 0.99) == 99
    assert bench_memory.percentile(values, 0.5) == 51
    assert bench_memory.percentile([7.0], 0.99) == 7.0


def test_variants_change_only_the_wasm_filter():
    plain, shipped, big = (bench_memory.static_config(v) for v in bench_memory.VARIANTS)
    assert [f["typed_config"]["@type"] for f in http_filters(plain) if "typed_config" in f].count(WASM_TYPE) == 0
    assert len(http_filters(plain)) == len(http_filters(shipped)) - 1
    assert len(plugin_configuration(shipped)["flags"]) == 1
    flags = plugin_configuration(big)["flags"]
    assert len(flags) == bench_memory.FLAGS and flags["flag-3"]["percentage"] == 21


def test_check_reply_fails_when_the_filter_did_not_decide():
    body = json.dumps({"upstream": "v1", "headers": [["x-rollout-flags", "a=on,b=off"]]}).encode()
    bench_memory.check_reply(200, [("x-rollout-version", "v1")], body, 2)
    with pytest.raises(AssertionError, match="did not decide"):
        bench_memory.check_reply(200, [], body, 2)
    with pytest.raises(AssertionError, match="2 flags on the upstream request, expected 200"):
        bench_memory.check_reply(200, [("x-rollout-version", "v1")], body, 200)
    with pytest.raises(AssertionError, match="status 503"):
        bench_memory.check_reply(503, [("x-rollout-version", "v1")], body, 2)
    bench_memory.check_reply(200, [], body, None)
    with pytest.raises(AssertionError, match="without a filter"):
        bench_memory.check_reply(200, [("x-rollout-version", "v1")], body, None)
