"""Benchmark: how long from a config change at the source until every probed worker of a real
Envoy (--concurrency 2, envoy/live/envoy.yaml) decides by it. Prints p50/p99 over N flips.

    .venv/bin/python envoy/bench_propagation.py [FLIPS] [--long-poll S] [--json PATH]

Each flip switches every user between v1 and v2 and times until 8 keep-alive connections
(spread over both workers) have all seen the new version. The connections probe back to back,
multiplexed in one thread, and Envoy answers the probes itself (each version's route becomes a
direct response naming the version), so a flip's time is the propagation plus at most one
request, whose median is printed too, and no Python upstream or thread switch is timed.
By default the filter polls every 50 ms (the shipped config); `--long-poll S` sets
`config_source.long_poll_s`, and the source holds each poll until the config changes."""

import argparse
import json
import pathlib
import re
import selectors
import socket
import statistics
import sys
import tempfile
import time

from harness import (
    ConfigServer,
    Envoy,
    connection_managers,
    live_config_with,
    plugin_configuration,
    rollout,
)

PROBE = b"GET / HTTP/1.1\r\nHost: a\r\nx-user-id: user-1\r\n\r\n"


def answered_by_envoy(doc):
    """The config with every route answered by Envoy itself, the body naming the route's
    version (`checkout-v2` answers `v2`): the filter and the routing stay as shipped."""
    [hcm] = connection_managers(doc)
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        version = route.pop("route")["cluster"].rsplit("-", 1)[-1]
        route["direct_response"] = {"status": 200, "body": {"inline_string": version}}
    return doc


class MultiplexedProbes:
    """`n` keep-alive connections multiplexed in one thread (harness.Probes asks its connections
    one after another, through an upstream); `until_all_see` sends a probe on each, again as
    soon as the answer is back, until every connection has got `version`."""

    def __init__(self, port, n=8):
        self.selector = selectors.DefaultSelector()
        for i in range(n):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, [i, bytearray()])
        self.n = n
        self.exchanges = []  # seconds per probe exchange

    def until_all_see(self, version, timeout=10.0):
        """{connection: monotonic time its first answer `version` arrived}."""
        seen, sent_at = {}, {}
        for key in self.selector.get_map().values():
            key.fileobj.sendall(PROBE)
            sent_at[key.data[0]] = time.monotonic()
        deadline = time.monotonic() + timeout
        while len(seen) < self.n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(seen)} of {self.n} connections saw {version} in {timeout} s")
            for key, _ in self.selector.select(0.5):
                i, buffer = key.data
                chunk = key.fileobj.recv(65536)
                if not chunk:
                    raise AssertionError(f"Envoy closed probe connection {i}")
                buffer += chunk
                for status, body in take_responses(buffer):
                    now = time.monotonic()
                    self.exchanges.append(now - sent_at[i])
                    if status != 200:
                        raise AssertionError(f"probe {i} got {status}")
                    if body == version.encode():
                        seen.setdefault(i, now)
                    if i not in seen:
                        key.fileobj.sendall(PROBE)
                        sent_at[i] = time.monotonic()
        return seen

    def close(self):
        """Closes every connection."""
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()


def take_responses(buffer):
    """(status, body) of each whole response at the start of `buffer`, removed from it."""
    out = []
    while (end := buffer.find(b"\r\n\r\n")) >= 0:
        head = bytes(buffer[:end])
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        size = int(length.group(1)) if length else 0
        if len(buffer) < end + 4 + size:
            break
        out.append((int(head[9:12]), bytes(buffer[end + 4:end + 4 + size])))
        del buffer[:end + 4 + size]
    return out


def main(flips, json_path=None, long_poll_s=0):
    """Times `flips` config changes and prints (and optionally writes) p50, p99 and max;
    returns them as a dict."""
    source = ConfigServer(rollout(1, 0))
    config = answered_by_envoy(live_config_with(long_poll_s=long_poll_s or None))
    poll_interval_ms = plugin_configuration(config)["config_source"]["poll_interval_ms"]
    envoy = Envoy(config, pathlib.Path(tempfile.mkdtemp()), {8090: source.port})
    # The source answers from a thread of this process; a thread waiting for the interpreter
    # lock waits up to the switch interval (5 ms by default), which would be timed too.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        probes = MultiplexedProbes(envoy.port)
        probes.until_all_see("v1")
        # Timed from rest: with long-polling, a poll is held at the source. Right after a start,
        # the held poll follows the first plain one by up to poll_interval_ms, and a change in
        # that gap waits for it (the first flip measured 60 ms that way, the other 99 under 17).
        deadline = time.monotonic() + 5
        while long_poll_s and not source.asked_to_wait and time.monotonic() < deadline:
            time.sleep(0.005)
        delays = []
        for flip in range(flips):
            target = "v2" if flip % 2 == 0 else "v1"
            t0 = time.monotonic()
            source.set(rollout(0, 1) if target == "v2" else rollout(1, 0))
            delays.append((max(probes.until_all_see(target).values()) - t0) * 1000)
            time.sleep(0.2)
        exchange_ms = statistics.median(probes.exchanges) * 1000
        probes.close()
        delays.sort()
        p99 = delays[min(len(delays) - 1, int(round(0.99 * (len(delays) - 1))))]
        mode = f"long-poll {long_poll_s} s" if long_poll_s else f"poll interval {poll_interval_ms} ms"
        print(f"propagation over {flips} flips ({mode}): p50 {statistics.median(delays):.1f} ms, "
              f"p99 {p99:.1f} ms, max {delays[-1]:.1f} ms; the source answered {source.requests} polls; "
              f"one probe exchange takes p50 {exchange_ms:.2f} ms")
        result = {"flips": flips, "poll_interval_ms": poll_interval_ms, "long_poll_s": long_poll_s,
                  "p50_ms": statistics.median(delays), "p99_ms": p99, "max_ms": delays[-1],
                  "probe_exchange_p50_ms": exchange_ms}
        if json_path:
            pathlib.Path(json_path).write_text(json.dumps(result, indent=2))
        return result
    finally:
        sys.setswitchinterval(switch_interval)
        envoy.stop()
        source.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("flips", type=int, nargs="?", default=30, help="config changes to time (default 30)")
    parser.add_argument("--long-poll", type=int, default=0, metavar="S",
                        help="config_source.long_poll_s (default 0: plain polling)")
    parser.add_argument("--json", metavar="PATH", help="also write p50, p99 and max as JSON")
    args = parser.parse_args()
    main(args.flips, args.json, args.long_poll)
