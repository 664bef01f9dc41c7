"""Writes the benchmark results table (markdown) from one run of scripts/bench.sh: criterion's
estimates, the load, propagation and memory JSON, the two wasm modules' sizes, and the machine's
description. The same text goes to benches/RESULTS.md and between the bench markers in README.md.

    python benches/report.py --criterion target/criterion --results target/bench-results \\
        [--wasm-opt PATH] [--filter PATH] [--worker PATH] [--write FILE] [--readme FILE]
"""

import argparse
import datetime
import gzip
import json
import os
import pathlib
import platform
import re
import subprocess
import tempfile

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

# The wasm features rustc's wasm32 targets emit (and wasm-bindgen's exception handling); wasm-opt
# must be told, or it refuses them.
WASM_FEATURES = ["--enable-bulk-memory", "--enable-sign-ext", "--enable-mutable-globals",
                 "--enable-nontrapping-float-to-int", "--enable-multivalue",
                 "--enable-reference-types", "--enable-exception-handling"]

FLAG_GROUP = "100 gradual-rollout flags for one user"
OURS, THEIRS = "rollout-core decide", "unleash-yggdrasil is_enabled"
PARSE_GROUP = "config parse+validate"


def criterion_means(root):
    """full id -> mean time in ns, for every benchmark criterion has results for."""
    means = {}
    for bench in pathlib.Path(root).glob("**/new/benchmark.json"):
        full_id = json.loads(bench.read_text())["full_id"]
        estimates = json.loads((bench.parent / "estimates.json").read_text())
        means[full_id] = estimates["mean"]["point_estimate"]
    return means


def gzip_size(data):
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def wasm_sizes(path, wasm_opt=None):
    """raw, after `wasm-opt -Oz` (None without wasm-opt), and gzip -9 of each."""
    raw = pathlib.Path(path).read_bytes()
    sizes = {"raw": len(raw), "raw_gzip": gzip_size(raw), "opt": None, "opt_gzip": None}
    if wasm_opt:
        with tempfile.TemporaryDirectory() as tmp:
            out = pathlib.Path(tmp) / "opt.wasm"
            subprocess.run([wasm_opt, "-Oz", *WASM_FEATURES, str(path), "-o", str(out)], check=True)
            opt = out.read_bytes()
        sizes["opt"], sizes["opt_gzip"] = len(opt), gzip_size(opt)
    return sizes


def command_line(args):
    try:
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not found"


def machine(run=None):
    cpuinfo = pathlib.Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    meminfo = pathlib.Path("/proc/meminfo").read_text() if os.path.exists("/proc/meminfo") else ""
    mem = re.search(r"MemTotal:\s*(\d+) kB", meminfo)
    os_release = pathlib.Path("/etc/os-release")
    pretty = re.search(r'PRETTY_NAME="(.*)"', os_release.read_text()) if os_release.exists() else None
    envoy = command_line([".venv/bin/envoy", "--version"])
    envoy_version = re.search(r"/(\d+\.\d+\.\d+)/", envoy)
    return [
        ("CPU", model.group(1) if model else platform.processor() or "unknown"),
        ("cores", str(os.cpu_count())),
        ("memory", f"{int(mem.group(1)) / 1048576:.1f} GiB" if mem else "unknown"),
        ("OS", f"{pretty.group(1) if pretty else platform.system()}, kernel {platform.release()}"),
        ("rustc", command_line(["rustc", "--version"])),
        ("Envoy", envoy_version.group(1) if envoy_version else envoy),
        ("commit", (run or {}).get("commit") or command_line(["git", "rev-parse", "--short", "HEAD"])),
        ("run started", (run or {}).get("started")
         or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def fmt_bytes(n):
    return "n/a" if n is None else f"{n:,} B"


def goal_row(goal, target, measured, met):
    """`met` None: the run cannot say (its noise is larger than what the goal measures)."""
    verdict = "**inconclusive**" if met is None else "met" if met else "**missed**"
    return f"| {goal} | {target} | {measured} | {verdict} |"


def memory_section(memory, means):
    """Envoy's RSS per worker and the time to load a 200-flag config (envoy/bench_memory.py)."""
    mem, loads = memory["memory"], memory["config_load"]
    rows, slopes = mem["rows"], mem["slope_kib_per_worker"]
    variants = list(slopes)
    counts = sorted({row["concurrency"] for row in rows})

    def mib(kib):
        return f"{kib / 1024:.1f} MiB"

    lines = ["", "### Envoy memory per worker and config load (issue 15)", "",
             f"VmRSS of a real Envoy (envoy/static/envoy.yaml) after requests from {mem['requests']:,} users "
             "over connections that reached every worker (median of 5 samples; of "
             f"{mem['repeats']} round(s)); after startup in brackets. The slope is the least-squares "
             "RSS per added worker, i.e. one more worker with its wasm VM.", "",
             "| variant | " + " | ".join(f"{n} worker{'s' if n > 1 else ''}" for n in counts)
             + " | per added worker |", "|---|" + "---|" * (len(counts) + 1)]
    for variant in variants:
        cells = [next(r for r in rows if r["variant"] == variant and r["concurrency"] == n) for n in counts]
        lines.append(f"| {variant} | " + " | ".join(f"{mib(c['traffic_kib'])} ({mib(c['startup_kib'])})"
                                                   for c in cells)
                     + f" | {slopes[variant]['traffic']:,.0f} KiB ({slopes[variant]['startup']:,.0f} KiB) |")
    base, first = variants[0], counts[0]

    def at(variant, n):
        return next(r for r in rows if r["variant"] == variant and r["concurrency"] == n)

    added = "; ".join(f"{slopes[variant]['traffic'] - slopes[base]['traffic']:,.0f} KiB ({variant})"
                      for variant in variants[1:])
    fixed = "; ".join(f"{mib(at(variant, first)['traffic_kib'] - at(base, first)['traffic_kib'])} ({variant})"
                      for variant in variants[1:])
    vms = ", ".join(f"{at(variants[-1], n)['wasm_vms']} with {n}" for n in counts)
    lines += ["", f"Per added worker, beyond Envoy with {base} (after traffic): {added}. With {first} worker, the "
                  f"filter adds {fixed}: V8, the compiled module, and the VMs Envoy keeps besides the workers' "
                  f"(`wasm.wasm_vm_count`: {vms} workers). Rounds differed by up to "
                  f"{max(r.get('traffic_spread_kib', 0) for r in rows):,.0f} KiB for one variant and worker count."]
    lines += ["", f"Time to load a config: the live scenario (`--concurrency {loads['concurrency']}`, source polled "
                  f"every {loads['poll_interval_ms']} ms) serves each config in turns, {loads['flips']} times each; "
                  "timed from the change at the source until every probe connection (at least one per worker) "
                  "gets a decision by it.", "",
              "| config served | size | p50 | p99 | max |", "|---|---|---|---|---|"]
    for kind, c in loads["configs"].items():
        lines.append(f"| {kind} | {c['bytes']:,} B | {c['p50_ms']:.0f} ms | {c['p99_ms']:.0f} ms | "
                     f"{c['max_ms']:.0f} ms |")
    parse = means.get(f"{PARSE_GROUP}/2 versions, {mem['flags']} flags")
    if parse:
        lines += ["", f"The filter's own parse and validation of a {mem['flags']}-flag config: {fmt_ns(parse)} "
                      "natively (criterion, `config parse+validate`), not measured inside Envoy's V8."]
    return lines


# Issue 15's goals: the lean request path against the floor any wasm filter pays, and the
# filter's size as it was before schedules, the guard and overrides.
FLOOR_RATIO_GOAL = 0.95
FILTER_SIZE_GOAL = 181_931
LONG_POLL_P99_GOAL_MS = 20


def issue15_goals(variants, filter_sizes, poll):
    """Goal rows of issue 15: throughput vs the empty wasm filter (shipped config, and with the
    response switches off), the filter's size, long-polling's propagation p99."""
    rows = []
    floor = variants.get("empty wasm filter")
    for name, what in [("rollout filter", "shipped config"), ("lean", "response switches off")]:
        v = variants.get(name)
        if floor and v:
            ratio = v["rps"] / floor["rps"]
            # A filter that does more than the empty one cannot be faster than it: a ratio
            # above 1 is this run's noise, not a goal met.
            measured = f"{ratio:.2f}" + (" (the empty filter ran slower: noise)" if ratio > 1 else "")
            rows.append(goal_row(f"Envoy throughput with the rollout filter ({what}), vs the empty wasm filter",
                                 f">= {FLOOR_RATIO_GOAL:.2f}", measured,
                                 None if ratio > 1 else ratio >= FLOOR_RATIO_GOAL))
    rows.append(goal_row("filter module, raw, with schedules and the guard", f"<= {FILTER_SIZE_GOAL:,} B",
                         fmt_bytes(filter_sizes["raw"]), filter_sizes["raw"] <= FILTER_SIZE_GOAL))
    long = (poll or {}).get("propagation", {}).get("long")
    if long:
        rows.append(goal_row("config propagation with long-polling, p99", f"<= {LONG_POLL_P99_GOAL_MS} ms",
                             f"{long['p99_ms']:.0f} ms", long["p99_ms"] <= LONG_POLL_P99_GOAL_MS))
    return rows


def poll_section(poll):
    """The live source at fleet scale (envoy/bench_poll.py): propagation and the source at rest."""
    lines = ["", "### The live source: plain polling and long-polling (issue 15)", "",
             "| | plain polling (every 50 ms) | long-polling |", "|---|---|---|"]
    prop = poll.get("propagation", {})
    if prop.get("plain") and prop.get("long"):
        p, q = prop["plain"], prop["long"]
        lines.append(f"| propagation to every worker, {p['flips']} flips | p50 {p['p50_ms']:.0f} ms, "
                     f"p99 {p['p99_ms']:.0f} ms | p50 {q['p50_ms']:.0f} ms, p99 {q['p99_ms']:.0f} ms |")
    rest = poll.get("at_rest", {})
    if rest.get("plain") and rest.get("long"):
        p, q = rest["plain"], rest["long"]
        lines.append(f"| the source at rest, {p['pollers']:,} pollers: answers/s (asked for) | "
                     f"{p['answers_per_s']:,.0f} ({p['expected_per_s']:,.0f}) | "
                     f"{q['answers_per_s']:,.0f} ({q['expected_per_s']:,.0f}, `Prefer: wait={q['wait_s']}`) |")
        lines.append(f"| the source's CPU at rest (`envoy/config_server.py`, 100 % = one core) | "
                     f"{p['server_cpu_percent']:.0f} % | {q['server_cpu_percent']:.0f} % |")
    lines += ["", "Propagation is timed from the change at the source until 8 probe connections over "
                  "both workers of Envoy `--concurrency 2` see it, probe requests included."]
    return lines


def render(means, load, propagation, filter_sizes, worker_sizes, machine_rows, profile=None,
           size_profile=None, memory=None, poll=None):
    lines = ["Written by `scripts/bench.sh` (`benches/report.py`); every number below is from the "
             "one run described here.", "", "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in machine_rows]

    ours = means.get(f"{FLAG_GROUP}/{OURS}")
    theirs = means.get(f"{FLAG_GROUP}/{THEIRS}")
    variants = load["variants"] if load else {}
    rollout = variants.get("rollout filter")
    floor = variants.get("empty wasm filter")
    lines += ["", "### Goals (issue 5)", "", "| goal | target | measured | |", "|---|---|---|---|"]
    if rollout:
        lines.append(goal_row("Envoy throughput with the rollout filter, vs native weighted_clusters",
                              ">= 0.90", f"{rollout['rps_vs_native']:.2f}",
                              rollout["rps_vs_native"] >= 0.90))
    if ours and theirs:
        ratio = ours / theirs
        lines.append(goal_row("per-flag evaluation, vs unleash-yggdrasil `is_enabled`", "<= 0.3x",
                              f"{ratio:.2f}x ({fmt_ns(ours / 100)} vs {fmt_ns(theirs / 100)} per flag)",
                              ratio <= 0.3))
    lines.append(goal_row("filter module, raw", "<= 100,000 B", fmt_bytes(filter_sizes["raw"]),
                          filter_sizes["raw"] <= 100_000))
    lines.append(goal_row("Worker wasm, gzip", "<= 150,000 B", fmt_bytes(worker_sizes["raw_gzip"]),
                          worker_sizes["raw_gzip"] <= 150_000))
    if propagation:
        lines.append(goal_row("config propagation to every Envoy worker, p99", "<= 100 ms",
                              f"{propagation['p99_ms']:.0f} ms", propagation["p99_ms"] <= 100))

    lines += ["", "### Goals (issue 15)", "", "| goal | target | measured | |", "|---|---|---|---|"]
    lines += issue15_goals(variants, filter_sizes, poll)

    if any("**missed**" in line for line in lines):
        lines += ["", "Where a goal is missed, `benches/STEPS.md` (also at the end of "
                      "benches/RESULTS.md) says what bounds it and what was tried."]
    if any("**inconclusive**" in line for line in lines):
        lines += ["", "An inconclusive goal is one this run's noise decided: rerun with more rounds "
                      "(`envoy/bench_load.py ROUNDS SECONDS`)."]
    lines += ["", "### Module sizes", "",
              "| module | raw | gzip -9 | after `wasm-opt -Oz` | gzip -9 of that |", "|---|---|---|---|---|"]
    for name, s in [("filter (`rollout_filter.wasm`, as Envoy loads it)", filter_sizes),
                    ("Worker (`index_bg.wasm`, as deployed: worker-build ran wasm-opt)", worker_sizes)]:
        lines.append(f"| {name} | {fmt_bytes(s['raw'])} | {fmt_bytes(s['raw_gzip'])} | "
                     f"{fmt_bytes(s['opt'])} | {fmt_bytes(s['opt_gzip'])} |")

    lines += ["", "### Criterion (mean time per iteration)", "", "| benchmark | time |", "|---|---|"]
    lines += [f"| {name} | {fmt_ns(ns)} |" for name, ns in sorted(means.items())]
    if ours and theirs:
        lines += ["", f"Per flag: rollout-core {fmt_ns(ours / 100)} (a whole decision for 100 flags, "
                      f"key lookup and version choice included, divided by 100), unleash-yggdrasil "
                      f"{fmt_ns(theirs / 100)} (100 `is_enabled` calls on a ready context, divided by "
                      f"100): ratio {ours / theirs:.2f}x."]

    if load:
        lines += ["", f"### Envoy under load ({load['rounds']} interleaved rounds of {load['seconds']} s "
                      "per variant, wrk -t2 -c50, proxy `--concurrency 1`, medians)", "",
                  "| variant | req/s | p50 | p99 | proxy CPU per request | req/s vs native | CPU vs native |",
                  "|---|---|---|---|---|---|---|"]
        for name, v in variants.items():
            lines.append(f"| {name} | {v['rps']:,.0f} | {v['p50_ms']:.2f} ms | {v['p99_ms']:.2f} ms | "
                         f"{v['cpu_us_per_request']:.1f} µs | {v['rps_vs_native']:.2f} | "
                         f"{v['cpu_vs_native']:.2f} |")
        if floor and floor["rps_vs_native"] < 1:
            lines += ["", f"The empty wasm filter (written with the SDK) returns at once from every callback: "
                          f"its {floor['rps_vs_native']:.2f} is roughly what Envoy's V8 runtime charges for "
                          "running a proxy-wasm filter at all, before the filter does any work."]
        elif floor:
            lines += ["", f"The empty wasm filter (written with the SDK) returns at once from every callback, "
                          f"yet it ran at {floor['rps_vs_native']:.2f} of native here: this run's noise was "
                          "larger than what running a wasm filter costs, so compare its rows with care "
                          "(more rounds narrow it)."]
    if profile:
        lines += ["", "### Profile (not timed)", "",
                  "| config | heap allocations per decision (native) | filter → host calls per request | "
                  "host → filter calls per request |", "|---|---|---|---|"]
        for row in profile:
            lines.append(f"| {row['shape']} | {row['allocations_per_decision']} | "
                         f"{row['host_calls_per_request']} | {row['filter_calls_per_request']} |")
    if size_profile:
        lines += ["", f"Filter code by crate ({size_profile['code']:,} B of code, {size_profile['data']:,} B "
                      "of data; `benches/wasm_size.py` on a build that keeps names): " +
                  ", ".join(f"{crate} {size:,} B" for crate, size in size_profile["by_crate"][:10]) + "."]
    if propagation:
        lines += ["", f"### Config propagation ({propagation['flips']} flips, poll every "
                      f"{propagation['poll_interval_ms']} ms)", "",
                  f"p50 {propagation['p50_ms']:.0f} ms, p99 {propagation['p99_ms']:.0f} ms, "
                  f"max {propagation['max_ms']:.0f} ms from the change at the source until every "
                  "probed worker decides by it."]
    if poll:
        lines += poll_section(poll)
    if memory:
        lines += memory_section(memory, means)
    return "\n".join(lines) + "\n"


def replace_between_markers(text, body):
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + body + text[end:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criterion", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--wasm-opt")
    parser.add_argument("--filter", default="target/wasm32-wasip1/wasm/rollout_filter.wasm")
    parser.add_argument("--worker", default="worker/build/index_bg.wasm")
    parser.add_argument("--write")
    parser.add_argument("--readme")
    args = parser.parse_args()

    results = pathlib.Path(args.results)

    def optional_json(name):
        path = results / name
        return json.loads(path.read_text()) if path.exists() else None

    body = render(criterion_means(args.criterion), optional_json("load.json"),
                  optional_json("propagation.json"), wasm_sizes(args.filter, args.wasm_opt),
                  wasm_sizes(args.worker, args.wasm_opt), machine(optional_json("run.json")),
                  optional_json("profile.json"),
                  optional_json("filter_size.json"), optional_json("memory.json"),
                  optional_json("poll.json"))
    steps = pathlib.Path(__file__).with_name("STEPS.md")
    if args.write:
        history = ("\n" + steps.read_text()) if steps.exists() else ""
        pathlib.Path(args.write).write_text("# Benchmark results\n\n" + body + history)
    if args.readme:
        readme = pathlib.Path(args.readme)
        readme.write_text(replace_between_markers(readme.read_text(), body))
    print(body)


if __name__ == "__main__":
    main()
