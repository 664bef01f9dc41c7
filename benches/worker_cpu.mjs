// The Worker's CPU per request in workerd (issue 12): the built rollout Worker beside a plain
// JavaScript Worker doing a random 90/10 split to the same local origin (what a user would
// write instead), each in its own Miniflare instance (its own workerd process), in one run.
// Per round and Worker: N sequential requests, the workerd process's CPU (utime + stime from
// /proc/<pid>/stat) read before and after each block of them; the Workers take turns block by
// block, so noise hits all.
// Prints a table (ms CPU per request per round, median, ratio of medians to the JS Worker, and
// the median of the per-round ratios) and writes it as JSON to --out. Measures only; asserts nothing.
//
//   node benches/worker_cpu.mjs [--requests 3000] [--rounds 5] [--warmup 300] [--block 100]
//       [--out FILE]
//       [--config examples/checkout.json] [--variants js,rollout]
//       [--build NAME=DIR ...]   (another build of the Worker, measured as variant NAME)
//
// Variants: `js` (the plain JavaScript Worker), `rollout` (worker/build with a local Analytics
// Engine binding, which discards points as Cloudflare's would store them), `rollout-noae` (no
// Analytics Engine binding), `rollout-recorder` (the tests' recording binding, a service call
// to node per point), and every NAME given with --build (like `rollout`, from DIR).
// Miniflare is resolved from worker/node_modules, so it runs from any directory.

import http from "node:http";
import { readFileSync, readdirSync, writeFileSync, existsSync } from "node:fs";
import { execSync } from "node:child_process";
import { createRequire } from "node:module";
import { parseArgs } from "node:util";

const ROOT = new URL("../", import.meta.url).pathname;
const require = createRequire(`${ROOT}worker/package.json`);
const { Miniflare } = await import(require.resolve("miniflare"));

const { values: args } = parseArgs({
  options: {
    requests: { type: "string", default: "3000" },
    rounds: { type: "string", default: "5" },
    warmup: { type: "string", default: "300" },
    block: { type: "string", default: "100" },
    out: { type: "string" },
    config: { type: "string", default: `${ROOT}examples/checkout.json` },
    variants: { type: "string", default: "js,rollout" },
    build: { type: "string", multiple: true, default: [] },
  },
});
const REQUESTS = Number(args.requests);
const ROUNDS = Number(args.rounds);
const WARMUP = Number(args.warmup);
const BLOCK = Math.max(1, Number(args.block));
const CLOCK_TICKS = Number(execSync("getconf CLK_TCK").toString().trim());

/** The origin: a small JSON body and the response headers a typical app sends. */
function startOrigin() {
  const body = JSON.stringify({ ok: true, items: [{ id: 42, qty: 1 }], total: "19.99" });
  const server = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      res.writeHead(200, {
        "content-type": "application/json",
        "cache-control": "private, no-store",
        "x-request-id": "7f3c2a9e-1d4b-4c8a-9e2f-3b6a1c0d5e7f",
        "content-length": Buffer.byteLength(body),
      });
      res.end(body);
    });
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

/** What a user would write instead: a random 90/10 split, the origin's response returned with
 * one header added. */
const JS_WORKER = `export default {
  async fetch(request, env) {
    const version = Math.random() < 0.9 ? "v1" : "v2";
    const url = new URL(request.url);
    const origin = version === "v1" ? env.ORIGIN_V1 : env.ORIGIN_V2;
    const response = await fetch(new Request(origin + url.pathname + url.search, request));
    const out = new Response(response.body, response);
    out.headers.set("x-version", version);
    return out;
  },
};`;

/** workerd processes that are children of this process. */
function workerdChildren() {
  const pids = new Set();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const close = stat.lastIndexOf(")");
      const comm = stat.slice(stat.indexOf("(") + 1, close);
      const ppid = Number(stat.slice(close + 2).split(" ")[1]);
      if (ppid === process.pid && comm.startsWith("workerd")) pids.add(Number(entry));
    } catch {
      // The process ended while listed.
    }
  }
  return pids;
}

/** utime + stime of a process (all its threads), in ms. */
function cpuMs(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields 14 and 15 of proc(5), counted from the state field (3).
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
}

function rolloutOptions(scriptDir, analytics, origins, config) {
  const worker = {
    name: "rollout",
    modules: true,
    scriptPath: `${scriptDir}/index.js`,
    // Module names are paths under this root: a build outside the working directory needs it.
    modulesRoot: scriptDir,
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true }],
    compatibilityDate: "2026-04-01",
    kvNamespaces: ["ROLLOUT_CONFIG"],
    bindings: {
      ROLLOUT_CONFIG_KEY: "rollout.json",
      ROLLOUT_CONFIG_TTL_MS: "10000",
      ROLLOUT_ORIGINS: JSON.stringify(origins),
    },
  };
  // As wrangler.toml declares it, when the build has the class (older builds measured with
  // --build may not): a config with a guard then sends its batches to it.
  if (readFileSync(`${scriptDir}/index.js`, "utf8").includes("RolloutState")) {
    worker.durableObjects = { ROLLOUT_STATE: "RolloutState" };
  }
  const workers = [worker];
  if (analytics === "local") {
    worker.analyticsEngineDatasets = { ROLLOUT_ANALYTICS: { dataset: "rollout" } };
  } else if (analytics === "recorder") {
    worker.wrappedBindings = { ROLLOUT_ANALYTICS: { scriptName: "analytics-recorder" } };
    workers.push({
      name: "analytics-recorder",
      modules: true,
      script: `export default function (env) {
        return { writeDataPoint(point) { env.SINK.fetch("http://sink/", { method: "POST", body: JSON.stringify(point) }); } };
      }`,
      serviceBindings: { SINK: async () => new Response("ok") },
    });
  }
  return { workers, setup: async (mf) => (await mf.getKVNamespace("ROLLOUT_CONFIG", "rollout")).put("rollout.json", config) };
}

async function start(name, originUrl, config) {
  const builds = Object.fromEntries(args.build.map((b) => b.split("=")));
  const versions = Object.entries(JSON.parse(config).rollouts ?? {})
    .flatMap(([r, body]) => (body.versions ?? []).map((v) => `${r}/${v.name}`));
  const origins = Object.fromEntries([["default", originUrl], ...versions.map((v) => [v, originUrl])]);
  let options;
  if (name === "js") {
    options = {
      workers: [{
        name: "js", modules: true, script: JS_WORKER, compatibilityDate: "2026-04-01",
        bindings: { ORIGIN_V1: originUrl, ORIGIN_V2: originUrl },
      }],
    };
  } else if (name in builds || name.startsWith("rollout")) {
    const dir = builds[name] ?? `${ROOT}worker/build`;
    if (!existsSync(`${dir}/index.js`)) throw new Error(`--build ${name}: no index.js in ${dir}`);
    const analytics = { "rollout-noae": "none", "rollout-recorder": "recorder" }[name] ?? "local";
    options = rolloutOptions(dir, analytics, origins, config);
  } else {
    throw new Error(`--variants: unknown variant ${name}`);
  }
  const before = workerdChildren();
  const mf = new Miniflare({ workers: options.workers, handleStructuredLogs: () => {} });
  const url = await mf.ready;
  if (options.setup) await options.setup(mf);
  const pids = [...workerdChildren()].filter((p) => !before.has(p));
  if (pids.length !== 1) throw new Error(`${name}: expected one new workerd process, found ${pids}`);
  return { name, mf, url, pid: pids[0] };
}

/** A browser-like request; the user id varies so both versions are served. */
async function request(url, i) {
  const res = await fetch(new URL(`/checkout/cart?item=${i % 97}`, url), {
    headers: {
      "x-user-id": `user-${i}`,
      cookie: `uid=user-${i}; session=3b1f9c2e8a; theme=dark`,
      accept: "application/json, text/plain, */*",
      "accept-language": "en-GB,en;q=0.9",
      "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
      "x-app-version": "3.2.1",
    },
  });
  if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
  await res.arrayBuffer();
}

async function run(worker, count, offset) {
  const before = cpuMs(worker.pid);
  for (let i = 0; i < count; i++) await request(worker.url, offset + i);
  return (cpuMs(worker.pid) - before) / count;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const origin = await startOrigin();
const originUrl = `http://127.0.0.1:${origin.address().port}`;
const config = readFileSync(args.config, "utf8");
const names = [...new Set([...args.variants.split(",").filter(Boolean), ...args.build.map((b) => b.split("=")[0])])];
const workers = [];
try {
  for (const name of names) workers.push(await start(name, originUrl, config));
  for (const w of workers) await run(w, WARMUP, 0);
  const perRound = Object.fromEntries(names.map((n) => [n, []]));
  for (let round = 0; round < ROUNDS; round++) {
    // A round's requests go in blocks, the Workers taking turns block by block (in an order
    // rotated each time, so none always runs first): load that comes and goes on a shared
    // machine then falls on every Worker alike rather than on whichever ran at the time.
    const cpu = Object.fromEntries(names.map((n) => [n, 0]));
    for (let done = 0, turn = 0; done < REQUESTS; done += BLOCK, turn++) {
      const count = Math.min(BLOCK, REQUESTS - done);
      for (let k = 0; k < workers.length; k++) {
        const w = workers[(k + turn + round) % workers.length];
        cpu[w.name] += (await run(w, count, WARMUP + round * REQUESTS + done)) * count;
      }
    }
    for (const n of names) perRound[n].push(cpu[n] / REQUESTS);
  }
  const base = names.includes("js") ? median(perRound.js) : null;
  // Also the median of each round's own ratio: a round's variants run back to back, so this
  // one is less moved by load that comes and goes on a shared machine.
  const rows = names.map((n) => ({
    variant: n,
    rounds_ms: perRound[n],
    median_ms: median(perRound[n]),
    ratio_to_js: base ? median(perRound[n]) / base : null,
    paired_ratio_to_js: base ? median(perRound[n].map((x, i) => x / perRound.js[i])) : null,
  }));
  const header = ["variant", ...Array.from({ length: ROUNDS }, (_, i) => `r${i + 1}`), "median", "ratio", "paired"];
  console.log(`workerd CPU per request (ms), ${REQUESTS} sequential requests per round, ${ROUNDS} rounds`);
  console.log(`| ${header.join(" | ")} |`);
  console.log(`|${header.map(() => "---").join("|")}|`);
  for (const r of rows) {
    const ratio = r.ratio_to_js === null ? "" : `${r.ratio_to_js.toFixed(3)}x`;
    const paired = r.paired_ratio_to_js === null ? "" : `${r.paired_ratio_to_js.toFixed(3)}x`;
    console.log(`| ${[r.variant, ...r.rounds_ms.map((x) => x.toFixed(3)), r.median_ms.toFixed(3), ratio, paired].join(" | ")} |`);
  }
  if (args.out) {
    writeFileSync(args.out, `${JSON.stringify({
      requests: REQUESTS, rounds: ROUNDS, warmup: WARMUP, block: BLOCK, config: args.config,
      clock_ticks_per_s: CLOCK_TICKS, started: new Date().toISOString(), variants: rows,
    }, null, 2)}\n`);
  }
} finally {
  await Promise.all(workers.map((w) => w.mf.dispose()));
  await new Promise((r) => origin.close(r));
}
