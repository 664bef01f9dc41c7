// The Worker's Durable Object per batched call, in workerd through Miniflare: a driver Worker
// bound to the rollout Worker's RolloutState sends guard batches (the isolates' report format,
// worker/src/state.rs) to one object, one after another, and times each call from the isolate;
// the same driver times a call to a Durable Object that only answers, for the floor of a call.
// Timers inside a Worker tick only in whole milliseconds, so the time is taken here: the wall
// time of one driver request making N calls, over N, in interleaved rounds.
// Run from the repository root after the Worker is built (worker/build):
//   node benches/worker_state.mjs [--calls 2000] [--rounds 5] [--out FILE]
// Prints the mean time per call of each round and their median; --out writes them as JSON.

import { createRequire } from "node:module";
import { writeFileSync } from "node:fs";

const require = createRequire(new URL("../worker/package.json", import.meta.url));
const { Miniflare } = require("miniflare");

const args = process.argv.slice(2);
const arg = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const calls = Number(arg("--calls", 2000));
const rounds = Number(arg("--rounds", 5));
const out = arg("--out");

// A report as the isolate encodes it: rollout, revision (hex), stable index; the guard (window
// ms, min requests, ratios as f64 bits in hex, "-" for none); then per version its counts.
const bits = (x) => Buffer.from(new Float64Array([x]).buffer).readBigUInt64LE().toString(16);
const REPORT = `checkout 1f2e3d4c5b6a7988 0\n30000 100 ${bits(0.05)} - - ${bits(0.01)} -\nv1 90 0 0\nv2 10 0 0\n`;

const DRIVER = `
export class Echo { fetch() { return new Response(""); } }
export default {
  async fetch(request, env) {
    const which = new URL(request.url).pathname === "/echo" ? env.ECHO : env.ROLLOUT_STATE;
    const name = which === env.ECHO ? "echo" : "guard:checkout";
    const stub = which.get(which.idFromName(name));
    const n = Number(new URL(request.url).searchParams.get("n"));
    for (let i = 0; i < n; i++) {
      const res = await stub.fetch("https://rollout-state/guard", { method: "POST", body: ${JSON.stringify(REPORT)} });
      await res.text();
      if (res.status !== 200) return new Response("status " + res.status, { status: 500 });
    }
    return new Response("ok");
  },
};`;

const mf = new Miniflare({
  workers: [
    {
      name: "rollout",
      modules: true,
      scriptPath: new URL("../worker/src/entry.mjs", import.meta.url).pathname,
      modulesRoot: new URL("../worker/", import.meta.url).pathname,
      modulesRules: [{ type: "ESModule", include: ["**/*.js"] }, { type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true }],
      compatibilityDate: "2026-04-01",
      durableObjects: { ROLLOUT_STATE: "RolloutState" },
    },
    {
      name: "driver",
      modules: true,
      script: DRIVER,
      compatibilityDate: "2026-04-01",
      durableObjects: {
        ROLLOUT_STATE: { className: "RolloutState", scriptName: "rollout" },
        ECHO: "Echo",
      },
    },
  ],
});

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

try {
  const driver = await mf.getWorker("driver");
  const time = async (path, n) => {
    const start = process.hrtime.bigint();
    const res = await driver.fetch(`http://driver${path}?n=${n}`);
    if (!res.ok) throw new Error(`${path}: ${await res.text()}`);
    await res.text();
    return Number(process.hrtime.bigint() - start) / 1e6;
  };
  for (const path of ["/guard", "/echo"]) await time(path, 100); // warm up
  const result = { calls, rounds: [], guard_batch_ms: 0, empty_object_ms: 0 };
  for (let r = 0; r < rounds; r++) {
    const base = await time("/guard", 0);
    const round = {
      guard_batch_ms: (await time("/guard", calls) - base) / calls,
      empty_object_ms: (await time("/echo", calls) - base) / calls,
    };
    result.rounds.push(round);
    console.log(`round ${r + 1}: guard batch ${round.guard_batch_ms.toFixed(3)} ms, empty object ${round.empty_object_ms.toFixed(3)} ms per call`);
  }
  result.guard_batch_ms = median(result.rounds.map((r) => r.guard_batch_ms));
  result.empty_object_ms = median(result.rounds.map((r) => r.empty_object_ms));
  console.log(`Durable Object per call from an isolate (workerd via Miniflare, ${calls} calls one after another, median of ${rounds} rounds): guard batch ${result.guard_batch_ms.toFixed(3)} ms, an object that only answers ${result.empty_object_ms.toFixed(3)} ms`);
  if (out) writeFileSync(out, JSON.stringify(result, null, 2) + "\n");
} finally {
  await mf.dispose();
}
