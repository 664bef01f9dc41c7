"""Code size of a wasm module by crate and by function, from its name section (build it with
`CARGO_PROFILE_RELEASE_STRIP=false` so the names survive).

    python benches/wasm_size.py MODULE.wasm [--top N] [--json PATH]
"""

import argparse
import collections
import json
import pathlib
import re

# Crates looked for in (mangled or demangled) function names; the earliest one named wins, so
# `<serde_json::Value as core::fmt::Debug>::fmt` counts as serde_json.
CRATES = ["rollout_core", "rollout_filter", "rollout_worker", "proxy_wasm", "serde_json", "serde_core",
          "serde", "hashbrown", "foldhash", "dlmalloc", "zmij", "itoa", "url", "idna", "js_sys", "web_sys",
          "wasm_bindgen", "worker", "std", "alloc", "core"]


def leb128(data, at):
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def skip_limits(data, at):
    flags = data[at]
    _, at = leb128(data, at + 1)
    if flags & 1:
        _, at = leb128(data, at)
    return at


def functions(data):
    """(name, body size) of every function defined in the module, plus section sizes."""
    if data[:4] != b"\0asm":
        raise ValueError("not a wasm module")
    at, imported, bodies, names, sections = 8, 0, [], {}, collections.Counter()
    while at < len(data):
        section = data[at]
        size, start = leb128(data, at + 1)
        end = start + size
        sections[section] += size
        if section == 2:  # imports: functions among them shift the index space
            count, p = leb128(data, start)
            for _ in range(count):
                for _ in range(2):
                    length, p = leb128(data, p)
                    p += length
                kind = data[p]
                p += 1
                if kind == 0:
                    _, p = leb128(data, p)
                    imported += 1
                elif kind == 1:
                    p = skip_limits(data, p + 1)
                elif kind == 2:
                    p = skip_limits(data, p)
                elif kind == 3:
                    p += 2
                elif kind == 4:
                    _, p = leb128(data, p + 1)
        elif section == 10:  # code
            count, p = leb128(data, start)
            for _ in range(count):
                length, q = leb128(data, p)
                bodies.append(q + length - p)
                p = q + length
        elif section == 0:
            length, p = leb128(data, start)
            if data[p:p + length] == b"name":
                p += length
                while p < end:
                    kind = data[p]
                    sub_size, p = leb128(data, p + 1)
                    if kind == 1:  # function names
                        count, q = leb128(data, p)
                        for _ in range(count):
                            index, q = leb128(data, q)
                            length, q = leb128(data, q)
                            names[index] = data[q:q + length].decode("utf-8", "replace")
                            q += length
                    p += sub_size
        at = end
    return [(names.get(i + imported, f"function {i + imported}"), size) for i, size in enumerate(bodies)], sections


def crate_of(name):
    if name.startswith("proxy_on_") or name.startswith("proxy_abi_"):
        return "ABI entry points"  # exported by name; the code inlined into them
    best = None
    for crate in CRATES:
        m = re.search(rf"(?<![A-Za-z_]){crate}(?![A-Za-z_])", name)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), crate)
    if best:
        return best[1]
    return "other"


def profile(path, top=15):
    data = pathlib.Path(path).read_bytes()
    funcs, sections = functions(data)
    by_crate = collections.Counter()
    for name, size in funcs:
        by_crate[crate_of(name)] += size
    return {
        "total": len(data),
        "code": sections[10],
        "data": sections[11],
        "by_crate": by_crate.most_common(),
        "largest_functions": sorted(((size, name) for name, size in funcs), reverse=True)[:top],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json")
    args = parser.parse_args()
    result = profile(args.module, args.top)
    print(f"{result['total']:,} B in all: code {result['code']:,} B, data {result['data']:,} B")
    for crate, size in result["by_crate"]:
        print(f"{size:>9,} B  {crate}")
    for size, name in result["largest_functions"]:
        print(f"{size:>9,} B  {name[:120]}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
