"""Soak: a real Envoy on the shipped live config (envoy/live/envoy.yaml, two workers) under wrk
for SECONDS (default 300), while its config source changes every second: a new valid config
(the weights and a flag's percentage move), an invalid one, a body that is not JSON, a 503, a
source slower than the filter's timeout, a source that is down. The filter must keep serving
on the last good config: every response 2xx, Envoy's RSS flat. Opt-in (scripts/bench.sh runs
it; CI runs a short smoke of it in envoy/tests/test_soak.py), on loopback only.

    .venv/bin/python envoy/soak.py [SECONDS] [--json PATH]

Prints, every SAMPLE_S seconds, Envoy's RSS and the filter's config counters (updates taken,
configs refused, fetches that failed), then the totals: wrk's requests, non-2xx responses and
socket errors. The filter's shared data (the published config, its generation, the polling
lease, the settled mark: four keys per source, each overwritten, never added to) is inside
Envoy's RSS; Envoy's admin does not report it on its own."""

import argparse
import json
import pathlib
import subprocess
import tempfile
import threading
import time

from bench_load import UPSTREAM, wrk_script

from config_server import ConfigServer
from harness import LIVE_CONFIG, ROOT, Envoy

SAMPLE_S = 10
# One step a second, in this order, round and round: what the source does during that second.
STEPS = ("valid", "valid", "invalid", "valid", "not json", "503", "valid", "slow", "down", "valid")


def config_text(i):
    """The i-th valid config: the example's rollout with v2's weight and the flag's percentage
    moving, so that every valid step is a real change."""
    config = json.loads((ROOT / "examples/checkout.json").read_text())
    weight = 5 + (i * 7) % 90
    config["rollouts"]["checkout"]["versions"] = [{"name": "v1", "weight": 100 - weight},
                                                  {"name": "v2", "weight": weight}]
    for flag in config.get("flags", {}).values():
        flag["percentage"] = (i * 13) % 101
    return json.dumps(config).encode()


def rss_kib(pid):
    """The process's resident set, from /proc."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def counters(envoy):
    """The filter's config counters, from /stats/prometheus."""
    samples = envoy.prometheus()
    names = ("rollout_config_updates_total", "rollout_config_rejected_total",
             "rollout_config_fetch_failures_total")
    return {name: int(samples.get((name, frozenset()), 0)) for name in names}


def drive(source, stop):
    """Changes what the source does once a second until `stop` is set; counts each kind."""
    done = dict.fromkeys(STEPS, 0)
    i = 0
    while not stop.is_set():
        step = STEPS[i % len(STEPS)]
        source.fail_with, source.delay, source.garbage = None, 0.0, False
        if source.server is None:
            source.start()
        if step == "valid":
            source.set(config_text(i))
        elif step == "invalid":
            source.set(b'{"rollouts": {"checkout": {"versions": [{"name": "v1", "weight": -1}]}}}')
        elif step == "not json":
            source.garbage = True
        elif step == "503":
            source.fail_with = 503
        elif step == "slow":
            source.delay = 1.5  # over the shipped timeout_ms of 1000
        elif step == "down":
            source.stop()
        done[step] += 1
        i += 1
        stop.wait(1.0)
    if source.server is None:
        source.start()
    return done


def main(seconds, json_path=None, quiet=False):
    """Runs the soak; returns its figures (also written to `json_path` if given)."""
    tmp = pathlib.Path(tempfile.mkdtemp())
    script = tmp / "user_ids.lua"
    script.write_text(wrk_script({}))
    source = ConfigServer(config_text(0))
    upstream = Envoy(UPSTREAM, tmp, {})
    envoy = Envoy(LIVE_CONFIG, tmp, {8081: upstream.port, 8082: upstream.port, 8090: source.port})
    stop = threading.Event()
    driven = {}
    driver = threading.Thread(target=lambda: driven.update(drive(source, stop)), daemon=True)
    samples = []
    try:
        wrk = subprocess.Popen(["wrk", "-t2", "-c20", f"-d{seconds}s", "-s", str(script),
                                f"http://127.0.0.1:{envoy.port}/checkout"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        driver.start()
        started = time.monotonic()
        while wrk.poll() is None:
            sample = {"t_s": round(time.monotonic() - started), "rss_mib": rss_kib(envoy.process.pid) / 1024,
                      **counters(envoy)}
            samples.append(sample)
            if not quiet:
                print(json.dumps(sample), flush=True)
            deadline = time.monotonic() + min(SAMPLE_S, max(seconds / 6, 1))
            while wrk.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
        out = wrk.communicate()[0]
        stop.set()
        driver.join(timeout=5)
        final = {"t_s": round(time.monotonic() - started), "rss_mib": rss_kib(envoy.process.pid) / 1024,
                 **counters(envoy)}
        samples.append(final)
    finally:
        stop.set()
        envoy.stop()
        upstream.stop()
        source.stop()
    requests = int(out.split(" requests in ")[0].split()[-1])
    non_2xx = int(out.split("Non-2xx or 3xx responses:")[1].split()[0]) if "Non-2xx" in out else 0
    socket_errors = out.split("Socket errors:")[1].splitlines()[0].strip() if "Socket errors:" in out else "none"
    result = {"seconds": seconds, "requests": requests, "non_2xx": non_2xx, "socket_errors": socket_errors,
              "source_steps": driven, "samples": samples}
    if not quiet:
        rss = [s["rss_mib"] for s in samples]
        print(f"{seconds} s, {requests} requests, {non_2xx} non-2xx, socket errors: {socket_errors}; "
              f"RSS {min(rss):.1f} to {max(rss):.1f} MiB; source steps {driven}; "
              f"final counters {dict(list(final.items())[2:])}")
    if json_path:
        pathlib.Path(json_path).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seconds", type=int, nargs="?", default=300, help="seconds of load (default 300)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args()
    main(args.seconds, args.json)
