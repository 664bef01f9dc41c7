"""Fixtures of the real-Envoy tests: the echo upstreams that say which version they are, and
Envoys started from the shipped configs (envoy/harness.py), stopped when a module is done."""

import pytest

from harness import STATIC_CONFIG, Envoy, Upstream


@pytest.fixture(scope="module")
def upstreams():
    """v1 and v2 echo upstreams on free ports."""
    servers = {"v1": Upstream("v1"), "v2": Upstream("v2")}
    yield servers
    for s in servers.values():
        s.close()


@pytest.fixture(scope="module")
def start_envoy(tmp_path_factory, upstreams):
    """Starts Envoys from a config (YAML text, a path or a dict; the shipped static config by
    default) with the upstream ports 8081 and 8082 moved to the echo upstreams; stops them all
    when the module's tests are done."""
    started = []
    tmp = tmp_path_factory.mktemp("envoy")

    def start(config=STATIC_CONFIG, ports=None):
        mapping = {8081: upstreams["v1"].port, 8082: upstreams["v2"].port, **(ports or {})}
        envoy = Envoy(config, tmp, mapping)
        started.append(envoy)
        return envoy

    yield start
    for envoy in started:
        envoy.stop()
