// What the workerd tests share: local origins, a Worker in Miniflare with a local KV namespace
// and a recording Analytics Engine binding, requests in the golden vectors' form, and tokens
// minted as rollout_core::token::sign does.

import { after } from "node:test";
import http from "node:http";
import { createHmac } from "node:crypto";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { Miniflare } from "miniflare";

export const ROOT = new URL("../../", import.meta.url).pathname;
/** The Worker as wrangler.toml builds it: the JavaScript entry and, under build/, what
 * worker-build made of the Rust crate. Module names are paths under the worker directory. */
export const WORKER_MODULES = {
  modules: true,
  scriptPath: new URL("../src/entry.mjs", import.meta.url).pathname,
  modulesRoot: new URL("../", import.meta.url).pathname,
  modulesRules: [
    // worker-build's output is an ES module named .js.
    { type: "ESModule", include: ["**/*.js"] },
    { type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true },
  ],
};

export const servers = [];
after(() => Promise.all(servers.map((s) => new Promise((r) => s.close(r)))));

/** An origin that answers with its name and the request headers it got (JSON); a request
 * header x-echo-response ([[name, value], ...]) sets the status and response headers. */
export async function origin(name) {
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks).toString();
    const headers = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      headers.push([req.rawHeaders[i].toLowerCase(), req.rawHeaders[i + 1]]);
    }
    const respond = JSON.parse(req.headers["x-echo-response"] || "[]");
    const status = Number((respond.find(([k]) => k === ":status") || [0, 200])[1]);
    for (const [k, v] of respond) if (!k.startsWith(":")) res.appendHeader(k, v);
    res.setHeader("content-type", "application/json");
    res.writeHead(status);
    res.end(JSON.stringify({ origin: name, method: req.method, url: req.url, body, headers }));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  servers.push(server);
  return `http://127.0.0.1:${server.address().port}`;
}

/** A recording stand-in for the Analytics Engine binding (the local one discards points):
 * a wrapped binding whose writeDataPoint forwards each point to this process. */
export const RECORDER = `export default function (env) {
  return { writeDataPoint(point) { env.SINK.fetch("http://sink/", { method: "POST", body: JSON.stringify(point) }); } };
}`;

/** A Worker in Miniflare with the config put in KV. `overrideKeys` (an object, or any text)
 * becomes the ROLLOUT_OVERRIDE_KEYS secret; `vars` adds bindings. The Durable Object binding
 * ROLLOUT_STATE is the Worker's own class unless `durableObjects` says otherwise; `twin` adds a
 * second Worker of the same script, "rollout-b" (its own isolate), sharing the KV namespace and
 * the first one's Durable Objects; `extraWorkers` are added as they are. The Workers' console
 * lines are collected in `logs` ({level, message}). */
export async function worker({
  config, origins, ttlMs = 0, overrideKeys, vars = {},
  durableObjects = { ROLLOUT_STATE: "RolloutState" }, twin = false, extraWorkers = [],
}) {
  const points = [];
  const logs = [];
  const secrets = overrideKeys === undefined ? {}
    : { ROLLOUT_OVERRIDE_KEYS: typeof overrideKeys === "string" ? overrideKeys : JSON.stringify(overrideKeys) };
  const rolloutWorker = (name, objects) => ({
    name,
    ...WORKER_MODULES,
    compatibilityDate: "2026-04-01",
    kvNamespaces: ["ROLLOUT_CONFIG"],
    durableObjects: objects,
    wrappedBindings: { ROLLOUT_ANALYTICS: { scriptName: "analytics-recorder" } },
    bindings: {
      ROLLOUT_CONFIG_KEY: "rollout.json",
      ROLLOUT_CONFIG_TTL_MS: String(ttlMs),
      ROLLOUT_ORIGINS: JSON.stringify(origins),
      ...secrets,
      ...vars,
    },
  });
  const mf = new Miniflare({
    handleStructuredLogs: (entry) => { logs.push({ level: entry.level, message: entry.message }); },
    workers: [
      rolloutWorker("rollout", durableObjects),
      ...(twin ? [rolloutWorker("rollout-b", { ROLLOUT_STATE: { className: "RolloutState", scriptName: "rollout" } })] : []),
      {
        name: "analytics-recorder",
        modules: true,
        script: RECORDER,
        serviceBindings: { SINK: async (request) => { points.push(await request.json()); return new Response("ok"); } },
      },
      ...extraWorkers,
    ],
  });
  const kv = await mf.getKVNamespace("ROLLOUT_CONFIG", "rollout");
  if (config !== undefined) await kv.put("rollout.json", typeof config === "string" ? config : JSON.stringify(config));
  return { mf, kv, points, logs };
}

/** A tester's token, as rollout_core::token::sign makes it: r1.<key id>.<expires>.<claims>.<sig>,
 * sig the unpadded base64url HMAC-SHA-256 of everything before it. */
export function mint(keyId, secret, claims, expiresS = Math.floor(Date.now() / 1000) + 3600) {
  const body = `r1.${keyId}.${expiresS}.${claims}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/** A config's revision as `rollout validate` prints it (the CLI is built before these tests). */
export function revisionOf(config) {
  const dir = mkdtempSync(`${tmpdir()}/rollout-revision-`);
  try {
    writeFileSync(`${dir}/config.json`, JSON.stringify(config));
    const out = execFileSync(`${ROOT}target/release/rollout`, ["validate", `${dir}/config.json`], { encoding: "utf8" });
    return /revision ([0-9a-f]{16})$/.exec(out.trim())[1];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Expected response headers with the Server-Timing config revision replaced: for a config a
 * test shifted in time, which is a config of its own. */
export function withRevision(response, revision) {
  const out = { ...response };
  if (out["server-timing"]) out["server-timing"] = out["server-timing"].replace(/rollout-config;desc="[0-9a-f]{16}"/, `rollout-config;desc="${revision}"`);
  return out;
}

/** The config without `overrides.keys`: what goes to KV, the keys going to the secret. */
export function withoutKeys(config) {
  if (!config.overrides?.keys) return config;
  const out = structuredClone(config);
  delete out.overrides.keys;
  return out;
}

/** Whether a request carries a user key from one of the config's sources. */
export function hasKey(config, pairs) {
  const header = (name) => pairs.find(([k]) => k === name)?.[1];
  return (config.user_key ?? []).some((source) => {
    const [kind, name] = source.split(":");
    if (kind === "header") return Boolean(header(name));
    if (kind === "cookie") return (header("cookie") ?? "").split(";").some((p) => {
      const [k, ...v] = p.trim().split("=");
      return k === name && v.join("=") !== "";
    });
    return false;
  });
}

/** The cookie header of `pairs` with `name=value` in place of any pair of that name. */
export function withCookie(pairs, name, value) {
  const old = pairs.find(([k]) => k === "cookie")?.[1] ?? "";
  const kept = old.split(";").map((p) => p.trim()).filter((p) => p && !p.startsWith(`${name}=`));
  return [...pairs.filter(([k]) => k !== "cookie"), ["cookie", [...kept, `${name}=${value}`].join("; ")]];
}

/** Sends a vector-style request (pseudo-headers included) through the Worker: `mf`, or a
 * Worker of it (mf.getWorker(name)). */
export async function send(mf, pairs) {
  const pseudo = Object.fromEntries(pairs.filter(([k]) => k.startsWith(":")));
  const headers = new Headers();
  for (const [k, v] of pairs) if (!k.startsWith(":")) headers.append(k, v);
  const url = `http://${pseudo[":authority"] || "localhost"}${pseudo[":path"] || "/"}`;
  const init = { method: pseudo[":method"] || "GET", headers };
  const res = await (mf instanceof Miniflare ? mf.dispatchFetch(url, init) : mf.fetch(url, init));
  const text = await res.text();
  let body = null;
  try { body = JSON.parse(text); } catch { body = text; }
  return { status: res.status, headers: [...res.headers], body };
}

export function contractView(pairs, names) {
  const view = {};
  for (const [k, v] of pairs) if (names.has(k)) view[k] = k in view ? `${view[k]}, ${v}` : v;
  return view;
}

/** The config with every schedule time moved by `deltaMs`, as rollout_core::vectors::shift_times
 * does: a case at time T runs at real time T + delta on it. */
export function shiftTimes(config, deltaMs) {
  const out = structuredClone(config);
  for (const r of Object.values(out.rollouts ?? {})) {
    if (typeof r.schedule !== "object" || r.schedule === null) continue;
    for (const key of ["start", "paused_at"]) {
      if (typeof r.schedule[key] === "string") {
        r.schedule[key] = new Date(Math.max(Date.parse(r.schedule[key]) + deltaMs, 0)).toISOString();
      }
    }
  }
  return out;
}

export const rollout = (v1, v2) => ({
  user_key: ["header:x-user-id", "cookie:uid"],
  rollouts: { checkout: { versions: [{ name: "v1", weight: v1 }, { name: "v2", weight: v2 }] } },
});

