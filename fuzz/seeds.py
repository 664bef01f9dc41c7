"""Writes the fuzz targets' seed corpora from the golden vectors and examples.

Usage: python3 fuzz/seeds.py CORPUS_DIR. Each target gets a folder of seeds named by their
hash, so running it again adds nothing twice; libFuzzer adds what it finds beside them.
"""

import hashlib
import json
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def configs():
    """Every vector and example config as JSON text, and every invalid config of the tests."""
    for path in sorted((ROOT / "testdata" / "vectors").glob("*.json")):
        yield json.dumps(json.loads(path.read_text())["config"])
    for path in sorted((ROOT / "examples").glob("*.json")):
        yield path.read_text()
    for case in json.loads((ROOT / "testdata" / "invalid-configs.json").read_text()):
        config = case["config"]
        yield config if isinstance(config, str) else json.dumps(config)


def requests():
    """Every request of every vector case, as a list of [name, value] pairs."""
    for path in sorted((ROOT / "testdata" / "vectors").glob("*.json")):
        for case in json.loads(path.read_text())["cases"]:
            yield case["request"]["headers"]


def wire(pairs):
    """Header pairs in the host's serialised form (proxy-wasm ABI)."""
    pairs = [(n.encode(), v.encode()) for n, v in pairs]
    out = struct.pack("<I", len(pairs))
    for n, v in pairs:
        out += struct.pack("<II", len(n), len(v))
    for n, v in pairs:
        out += n + b"\0" + v + b"\0"
    return out


def seeds():
    """(target, seed bytes) for every target."""
    texts = list(configs())
    for text in texts:
        yield "config_json", text.encode()
        yield "config_structured", text.encode()
        yield "filter_plugin_config", text.encode()
    for text in texts[:12]:
        live = {
            "config_source": {"cluster": "config", "path": "/rollout.json", "long_poll_s": 30},
            "fallback": json.loads(text),
            "override_keys": {"k1": "plugin-secret-0123456789abcdef0123"},
        }
        yield "filter_plugin_config", json.dumps(live).encode()
    for pairs in requests():
        yield "decide", wire(pairs)
        yield "filter_headers", wire(pairs)
        for name, value in pairs:
            if name == "cookie":
                yield "cookie_semver", value.encode()
            if name == "x-app-version":
                yield "cookie_semver", value.encode()
            if value.startswith("r1."):
                yield "token", value.encode()


def main():
    """Writes the seeds under the folder named on the command line."""
    out = Path(sys.argv[1])
    for target, seed in seeds():
        folder = out / target
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)


if __name__ == "__main__":
    main()
