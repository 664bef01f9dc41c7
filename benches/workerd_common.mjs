// What benches/worker_cpu.mjs and benches/worker_profile.mjs share: the local origin, the plain
// JavaScript Worker they compare with, the Miniflare options of each variant, the workerd
// process a variant runs in, and the browser-like request they send.

import http from "node:http";
import { readFileSync, readdirSync, existsSync } from "node:fs";
import { createRequire } from "node:module";

export const ROOT = new URL("../", import.meta.url).pathname;
// Miniflare is resolved from worker/node_modules, so the benches run from any directory.
export const requireFromWorker = createRequire(`${ROOT}worker/package.json`);
export const { Miniflare } = await import(requireFromWorker.resolve("miniflare"));

/** The origin: a small JSON body and the response headers a typical app sends. */
export function startOrigin() {
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

/** The same split with what the rollout Worker adds besides deciding, written by hand: the
 * origin timeout (15 s, aborted), the version header on the upstream request, and one
 * Analytics Engine data point. It tells the cost of those apart from the cost of the core. */
export const JS_FEATURES_WORKER = `export default {
  async fetch(request, env) {
    const version = Math.random() < 0.9 ? "v1" : "v2";
    const url = new URL(request.url);
    const origin = version === "v1" ? env.ORIGIN_V1 : env.ORIGIN_V2;
    const headers = new Headers(request.headers);
    headers.set("x-version", version);
    const controller = new AbortController();
    const upstream = new Request(origin + url.pathname + url.search, { method: request.method, headers, signal: controller.signal });
    const started = Date.now();
    let timer;
    const timedOut = new Promise((resolve) => { timer = setTimeout(resolve, 15000, null); });
    let response;
    try {
      response = await Promise.race([fetch(upstream), timedOut]);
    } finally {
      clearTimeout(timer);
    }
    if (response === null) {
      controller.abort();
      return new Response("timed out", { status: 504 });
    }
    env.ANALYTICS.writeDataPoint({ indexes: ["checkout"], blobs: ["checkout", version, "", String(response.status), ""], doubles: [response.status, Date.now() - started] });
    const out = new Response(response.body, response);
    out.headers.set("x-version", version);
    return out;
  },
};`;

/** What a user would write instead: a random 90/10 split, the origin's response returned with
 * one header added. */
export const JS_WORKER = `export default {
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
export function workerdChildren() {
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

/** The Worker's modules in `dir`: a worker directory (the entry src/entry.mjs over
 * worker-build's build/), or the build directory of a Worker from before that entry
 * (index.js), for A/B runs against older builds; `index` is worker-build's output. */
function modulesOf(dir) {
  const rules = [
    // worker-build's output is an ES module named .js.
    { type: "ESModule", include: ["**/*.js"] },
    { type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true },
  ];
  // Module names are paths under the root: a build outside the working directory needs it.
  if (existsSync(`${dir}/src/entry.mjs`) && existsSync(`${dir}/build/index.js`)) {
    return {
      modules: { modules: true, scriptPath: `${dir}/src/entry.mjs`, modulesRoot: dir, modulesRules: rules },
      index: `${dir}/build/index.js`,
    };
  }
  if (existsSync(`${dir}/index.js`)) {
    return { modules: { modules: true, scriptPath: `${dir}/index.js`, modulesRoot: dir, modulesRules: rules }, index: `${dir}/index.js` };
  }
  throw new Error(`${dir}: neither src/entry.mjs with build/index.js nor index.js`);
}

/** The rollout Worker in `dir` (see modulesOf), bound as wrangler.toml binds it, with the
 * config in KV; `analytics`: "local" (a local Analytics Engine dataset, which discards points
 * as Cloudflare's would store them), "none", or "recorder" (the tests' recording binding, a
 * service call to node per point). */
function rolloutOptions(dir, analytics, origins, config) {
  const { modules, index } = modulesOf(dir);
  const worker = {
    name: "rollout",
    ...modules,
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
  if (readFileSync(index, "utf8").includes("RolloutState")) {
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

/** Starts variant `name` in its own Miniflare instance (its own workerd process): `js`,
 * `js-features` (JS_FEATURES_WORKER), a
 * `rollout*` variant of the built worker/ (`rollout-noae`, `rollout-recorder`: see
 * rolloutOptions), or a NAME of `builds` ({NAME: DIR}). `miniflare`: more Miniflare options. */
export async function startVariant(name, originUrl, config, builds, miniflare = {}) {
  const versions = Object.entries(JSON.parse(config).rollouts ?? {})
    .flatMap(([r, body]) => (body.versions ?? []).map((v) => `${r}/${v.name}`));
  const origins = Object.fromEntries([["default", originUrl], ...versions.map((v) => [v, originUrl])]);
  let options;
  if (name === "js-features") {
    options = {
      workers: [{
        name: "js-features", modules: true, script: JS_FEATURES_WORKER, compatibilityDate: "2026-04-01",
        bindings: { ORIGIN_V1: originUrl, ORIGIN_V2: originUrl },
        analyticsEngineDatasets: { ANALYTICS: { dataset: "js" } },
      }],
    };
  } else if (name === "js") {
    options = {
      workers: [{
        name: "js", modules: true, script: JS_WORKER, compatibilityDate: "2026-04-01",
        bindings: { ORIGIN_V1: originUrl, ORIGIN_V2: originUrl },
      }],
    };
  } else if (name in builds || name.startsWith("rollout")) {
    const dir = builds[name] ?? `${ROOT}worker`;
    const analytics = { "rollout-noae": "none", "rollout-recorder": "recorder" }[name] ?? "local";
    options = rolloutOptions(dir, analytics, origins, config);
  } else {
    throw new Error(`--variants: unknown variant ${name}`);
  }
  const before = workerdChildren();
  const mf = new Miniflare({ workers: options.workers, handleStructuredLogs: () => {}, ...miniflare });
  const url = await mf.ready;
  if (options.setup) await options.setup(mf);
  const pids = [...workerdChildren()].filter((p) => !before.has(p));
  if (pids.length !== 1) throw new Error(`${name}: expected one new workerd process, found ${pids}`);
  return { name, mf, url, pid: pids[0], workerName: options.workers[0].name };
}

/** A browser-like request; the user id varies so every version is served. */
export async function request(url, i) {
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

/** What both benches start from, given their parsed --config, --variants and --build: the
 * origin (a server to close), its URL, the config text, the variant names in order, and the
 * builds ({NAME: DIR}). */
export async function setUp(args) {
  const origin = await startOrigin();
  const builds = Object.fromEntries(args.build.map((b) => b.split("=")));
  return {
    origin,
    originUrl: `http://127.0.0.1:${origin.address().port}`,
    config: readFileSync(args.config, "utf8"),
    names: [...new Set([...args.variants.split(",").filter(Boolean), ...Object.keys(builds)])],
    builds,
  };
}
