// Where the Worker's CPU per request goes in workerd (issue 12): V8's sampling CPU profiler,
// through workerd's DevTools inspector, and optionally `perf record` on the workerd process for
// what V8 cannot see (workerd's C++: headers, fetch, streams, promises, timers). Same origin,
// requests and variants as benches/worker_cpu.mjs: `js` (a plain JavaScript Worker), `rollout`
// (worker/ as built) and every NAME=DIR given with --build. Each variant gets its own Miniflare
// instance (own workerd process) with the inspector on a free port; after a warm-up the
// profiler samples every --interval us while --requests sequential requests are sent.
// Prints, per variant, self time per request by category (wasm function, the Worker's JS glue,
// runtime builtins, (program), (garbage collector), (idle)) and the --top functions by self
// time; with --perf, `perf report --no-children --sort dso,sym` of a second, unprofiled load.
// Measures only; asserts nothing. For function names in wasm, profile a build that keeps its
// name section (worker-build with CARGO_PROFILE_RELEASE_STRIP=false; build_worker strips it).
//
//   node benches/worker_profile.mjs [--requests 3000] [--warmup 500] [--interval 50]
//       [--top 25] [--variants js,rollout] [--build NAME=DIR ...] [--config FILE]
//       [--perf] [--perf-top 40] [--out FILE] [--dump PREFIX]
//
// --dump writes each variant's profile as PREFIX.NAME.cpuprofile (Chrome DevTools opens it).
// The times are profiled wall time of the isolate's thread under the profiler, which slows it
// (about 3x here) and samples it unevenly: compare shares and variants of one run, not the
// absolute figures with benches/worker_cpu.mjs's CPU per request.
// perf needs kernel.perf_event_paranoid <= 1 or root; workerd's own symbols are in its binary,
// JIT-compiled JavaScript and wasm show as unresolved addresses there.

import net from "node:net";
import { writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { spawn, execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { parseArgs } from "node:util";
import { ROOT, request, requireFromWorker, setUp, startVariant } from "./workerd_common.mjs";

// Node 20 has no global WebSocket; miniflare depends on `ws`.
const WebSocket = requireFromWorker("ws");

const { values: args } = parseArgs({
  options: {
    requests: { type: "string", default: "3000" },
    warmup: { type: "string", default: "500" },
    interval: { type: "string", default: "50" },
    top: { type: "string", default: "25" },
    config: { type: "string", default: `${ROOT}examples/checkout.json` },
    variants: { type: "string", default: "js,rollout" },
    build: { type: "string", multiple: true, default: [] },
    perf: { type: "boolean", default: false },
    "perf-top": { type: "string", default: "40" },
    out: { type: "string" },
    dump: { type: "string" },
  },
});
const REQUESTS = Number(args.requests);
const WARMUP = Number(args.warmup);
const TOP = Number(args.top);

/** A port nothing listens on now, for workerd's inspector (Miniflare needs a number). */
function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function load(worker, count, offset) {
  for (let i = 0; i < count; i++) await request(worker.url, offset + i);
}

/** A DevTools protocol session with the isolate of the worker named `workerName`. */
async function devtools(port, workerName) {
  const list = await (await fetch(`http://localhost:${port}/json/list`)).json();
  // Miniflare names the user's worker `core:user:NAME` (its entry worker is another isolate).
  const target = list.find((t) => t.id === `core:user:${workerName}`);
  if (!target) throw new Error(`no inspector target for ${workerName} in ${JSON.stringify(list)}`);
  const ws = new WebSocket(target.webSocketDebuggerUrl);
  await new Promise((resolve, reject) => { ws.once("open", resolve); ws.once("error", reject); });
  let id = 0;
  const waiting = new Map();
  ws.on("message", (data) => {
    const msg = JSON.parse(data.toString());
    const w = waiting.get(msg.id);
    if (!w) return;
    waiting.delete(msg.id);
    if (msg.error) w.reject(new Error(`${w.method}: ${JSON.stringify(msg.error)}`));
    else w.resolve(msg.result);
  });
  return {
    send(method, params = {}) {
      const msgId = ++id;
      ws.send(JSON.stringify({ id: msgId, method, params }));
      return new Promise((resolve, reject) => waiting.set(msgId, { resolve, reject, method }));
    },
    close: () => ws.close(),
  };
}

/** The category of a profile node's frame. */
function category(frame, worker) {
  const { functionName: fn, url } = frame;
  if (["(program)", "(garbage collector)", "(idle)", "(root)"].includes(fn)) return fn;
  if (url.startsWith("wasm://")) return "wasm function";
  if (url === "") return "runtime builtin";
  if (worker.name.startsWith("js")) return "worker script";
  return url.endsWith("index.js") ? "JS glue (index.js)" : `script ${url}`;
}

/** Self time (us) per category and per function, from a V8 CPU profile. */
function summarise(profile, worker) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  // Samples come at uneven intervals on a loaded machine (the sampler thread competes for the
  // two cores: gaps from 0.1 to 15 ms were seen), so a sample's delta says more about the
  // sampler than about the frame. Each sample is charged the mean interval instead: the count
  // of samples in a frame, as a share of the profiled wall time, which the sampler's timing
  // does not bias as long as it is independent of what the isolate runs.
  const { samples } = profile;
  const total = profile.endTime - profile.startTime;
  const mean = total / Math.max(1, samples.length);
  const selfUs = new Map();
  for (const id of samples) selfUs.set(id, (selfUs.get(id) ?? 0) + mean);
  const cats = new Map();
  const fns = new Map();
  for (const [nodeId, us] of selfUs) {
    const frame = byId.get(nodeId).callFrame;
    const cat = category(frame, worker);
    cats.set(cat, (cats.get(cat) ?? 0) + us);
    const key = `${frame.functionName || "(anonymous)"} [${cat}${frame.url && !frame.url.startsWith("wasm://") ? `:${frame.lineNumber}:${frame.columnNumber}` : ""}]`;
    fns.set(key, (fns.get(key) ?? 0) + us);
  }
  const perRequest = (m) => [...m].map(([k, us]) => ({ name: k, us_per_request: us / REQUESTS }))
    .sort((a, b) => b.us_per_request - a.us_per_request);
  return { wall_us_per_request: total / REQUESTS, samples: samples.length, categories: perRequest(cats), functions: perRequest(fns) };
}

/** `perf record -g` on the workerd process while `count` requests go through. */
async function perfReport(worker, count, offset) {
  const dir = mkdtempSync(`${tmpdir()}/worker-profile-`);
  const data = `${dir}/perf.data`;
  const perf = spawn("perf", ["record", "-g", "-F", "2000", "-p", String(worker.pid), "-o", data], { stdio: "ignore" });
  await new Promise((r) => setTimeout(r, 500));
  await load(worker, count, offset);
  const done = new Promise((r) => perf.once("exit", r));
  perf.kill("SIGINT");
  await done;
  const report = execFileSync("perf", ["report", "-i", data, "--no-children", "--sort", "dso,sym", "--stdio", "-g", "none", "--percent-limit", "0.3"], { maxBuffer: 64 << 20 }).toString();
  rmSync(dir, { recursive: true, force: true });
  return report.split("\n").filter((l) => l.trim() && !l.startsWith("#")).slice(0, Number(args["perf-top"]));
}

const { origin, originUrl, config, names, builds } = await setUp(args);
const results = [];
try {
  for (const name of names) {
    const inspectorPort = await freePort();
    const worker = { ...(await startVariant(name, originUrl, config, builds, { inspectorPort })), inspectorPort };
    try {
      await load(worker, WARMUP, 0);
      const session = await devtools(worker.inspectorPort, worker.workerName);
      await session.send("Profiler.enable");
      await session.send("Profiler.setSamplingInterval", { interval: Number(args.interval) });
      await session.send("Profiler.start");
      await load(worker, REQUESTS, WARMUP);
      const { profile } = await session.send("Profiler.stop");
      session.close();
      if (args.dump) writeFileSync(`${args.dump}.${name}.cpuprofile`, JSON.stringify(profile));
      const summary = summarise(profile, worker);
      const perf = args.perf ? await perfReport(worker, REQUESTS, WARMUP + REQUESTS) : null;
      results.push({ variant: name, ...summary, perf });

      console.log(`\n## ${name}: ${REQUESTS} requests, ${summary.samples} samples, ` +
        `${summary.wall_us_per_request.toFixed(1)} us profiled wall time per request`);
      console.log("\n| category | self us/request |\n|---|---|");
      for (const c of summary.categories) console.log(`| ${c.name} | ${c.us_per_request.toFixed(1)} |`);
      const busy = summary.categories.filter((c) => c.name !== "(idle)").reduce((a, c) => a + c.us_per_request, 0);
      console.log(`| all but (idle) | ${busy.toFixed(1)} |`);
      console.log("\n| function | self us/request |\n|---|---|");
      for (const f of summary.functions.slice(0, TOP)) console.log(`| ${f.name} | ${f.us_per_request.toFixed(1)} |`);
      if (perf) console.log(`\nperf report --no-children --sort dso,sym (${REQUESTS} requests):\n${perf.join("\n")}`);
    } finally {
      await worker.mf.dispose();
    }
  }
  if (args.out) {
    writeFileSync(args.out, `${JSON.stringify({ requests: REQUESTS, interval_us: Number(args.interval), started: new Date().toISOString(), variants: results }, null, 2)}\n`);
  }
} finally {
  await new Promise((r) => origin.close(r));
}
