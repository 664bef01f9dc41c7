"""Benchmark: what long-polling buys over plain polling for the live config source.

    .venv/bin/python envoy/bench_poll.py [--flips N] [--pollers N] [--seconds S] [--json PATH]

(1) Propagation: p50/p99 from a change at the source to every probed worker of a real Envoy
    (--concurrency 2), plain polling every 50 ms against long-polling (bench_propagation.py,
    run once per mode).
(2) The source at rest: envoy/config_server.py as a subprocess, and N simulated pollers of
    each kind on loopback (asyncio, one keep-alive connection each): plain ones GET every
    50 ms with If-None-Match, long ones with `Prefer: wait=W` and again as soon as the answer
    is back. Reports the answers per second the pollers got over S seconds at rest, the
    server's CPU over the same S seconds (utime + stime from /proc/PID/stat, all its threads),
    and this client process's CPU, which shares the machine's cores with the server.

Pollers start spread over one period (50 ms, or W), and the count starts one period later,
so the window sees steady state. No config changes during (2)."""

import argparse
import asyncio
import json
import os
import pathlib
import random
import re
import subprocess
import sys
import time

import bench_propagation

HERE = pathlib.Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PLAIN_INTERVAL_S = 0.05


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far, its threads included (/proc/PID/stat)."""
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime and stime, fields 14 and 15


async def read_response(reader):
    """Reads one response (headers, then a content-length body); returns (status, etag)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    if length and int(length.group(1)):
        await reader.readexactly(int(length.group(1)))
    etag = re.search(rb"(?i)\r\netag: *(\S+)", head)
    return status, etag.group(1).decode() if etag else None


class Pollers:
    """N pollers of one kind against a source on `port`; `answers` counts the responses they got
    once `counting` is set, `errors` the failed exchanges."""

    def __init__(self, port, n, wait_s):
        self.port, self.n, self.wait_s = port, n, wait_s
        self.counting = False
        self.answers = 0
        self.errors = 0

    async def poller(self, stop):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(b"GET /rollout.json HTTP/1.1\r\nHost: config\r\n\r\n")
            _, etag = await read_response(reader)
            request = (f"GET /rollout.json HTTP/1.1\r\nHost: config\r\nIf-None-Match: {etag}\r\n"
                       + (f"Prefer: wait={self.wait_s}\r\n" if self.wait_s else "") + "\r\n").encode()
            period = self.wait_s or PLAIN_INTERVAL_S
            await asyncio.sleep(random.uniform(0, period))  # a fleet's polls are spread out
            next_at = time.monotonic()
            while not stop.is_set():
                writer.write(request)
                status, _ = await read_response(reader)
                if status not in (200, 304):
                    self.errors += 1
                elif self.counting:
                    self.answers += 1
                if not self.wait_s:
                    # Every 50 ms from the start, as the filter's poll interval; late polls go at once.
                    next_at += PLAIN_INTERVAL_S
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        except (OSError, asyncio.IncompleteReadError):
            self.errors += 1
        finally:
            writer.close()

    async def run(self, pid, seconds):
        """Starts the pollers, lets them settle for one period, then counts for `seconds`."""
        stop = asyncio.Event()
        tasks = [asyncio.create_task(self.poller(stop)) for _ in range(self.n)]
        await asyncio.sleep(1.0 + (self.wait_s or PLAIN_INTERVAL_S))
        cpu0, own0, t0 = cpu_seconds(pid), time.process_time(), time.monotonic()
        self.counting = True
        await asyncio.sleep(seconds)
        self.counting = False
        elapsed = time.monotonic() - t0
        cpu, own = cpu_seconds(pid) - cpu0, time.process_time() - own0
        stop.set()
        # Held polls end within the wait; plain ones at their next answer.
        await asyncio.wait(tasks, timeout=(self.wait_s or 1) + 5)
        for task in tasks:
            task.cancel()
        return {"pollers": self.n, "wait_s": self.wait_s, "seconds": round(elapsed, 2),
                "answers_per_s": round(self.answers / elapsed, 1),
                "expected_per_s": round(self.n / (self.wait_s or PLAIN_INTERVAL_S), 1),
                "server_cpu_percent": round(100 * cpu / elapsed, 1),
                "client_cpu_percent": round(100 * own / elapsed, 1), "errors": self.errors}


def source_at_rest(pollers, seconds, wait_s):
    """Runs the source as a subprocess under `pollers` pollers (long ones if `wait_s`); returns
    the measurement."""
    server = subprocess.Popen([sys.executable, str(HERE / "config_server.py"), "0", str(HERE / "live/rollout.json")],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().rsplit(":", 1)[1])
        return asyncio.run(Pollers(port, pollers, wait_s).run(server.pid, seconds))
    finally:
        server.terminate()
        server.wait(10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=40, help="config changes timed per mode (default 40; 0: skip)")
    parser.add_argument("--pollers", type=int, default=1000, help="simulated pollers of each kind (default 1000)")
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds at rest per kind (default 20)")
    parser.add_argument("--wait", type=int, default=10, help="the long pollers' Prefer: wait, in s (default 10)")
    parser.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    args = parser.parse_args()
    results = {"propagation": {}, "at_rest": {}}
    if args.flips:
        results["propagation"]["plain"] = bench_propagation.main(args.flips)
        results["propagation"]["long"] = bench_propagation.main(args.flips, long_poll_s=30)
    for kind, wait_s in [("plain", 0), ("long", args.wait)]:
        r = source_at_rest(args.pollers, args.seconds, wait_s)
        results["at_rest"][kind] = r
        what = f"Prefer: wait={wait_s}" if wait_s else "every 50 ms"
        print(f"source at rest, {r['pollers']} {kind} pollers ({what}): {r['answers_per_s']:.0f} answers/s "
              f"(the pollers asked for {r['expected_per_s']:.0f}/s), server CPU {r['server_cpu_percent']:.0f} %, "
              f"client CPU {r['client_cpu_percent']:.0f} %, {r['errors']} errors, over {r['seconds']:.0f} s",
              flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
