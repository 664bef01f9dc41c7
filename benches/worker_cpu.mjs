// The Worker's CPU per request in workerd (issue 12): the built rollout Worker beside a plain
// JavaScript Worker doing a random 90/10 split to the same local origin (what a user would
// write instead), each in its own Miniflare instance (its own workerd process), in one run.
// Per round and Worker: N sequential requests, the workerd process's CPU (the scheduler's
// nanoseconds per thread, see cpuMs) read before and after each block of them; the Workers
// take turns block by block, so noise hits all.
// Prints a table (ms CPU per request per round, median, ratio of medians to the JS Worker, the
// median of the per-round ratios, and the median of the per-block ratios, each block against
// the JS Worker's block of the same turn: the least moved by a machine whose speed drifts) and
// writes it as JSON to --out. Measures only; asserts nothing.
//
//   node benches/worker_cpu.mjs [--requests 3000] [--rounds 5] [--warmup 300] [--block 100]
//       [--concurrency 1] [--out FILE]
//       [--config examples/checkout.json] [--variants js,rollout]
//       [--build NAME=DIR ...]   (another build of the Worker, measured as variant NAME: a copy of
//                                 worker/ with src/entry.mjs and build/, or an older build/)
//
// Variants: `js` (the plain JavaScript Worker), `js-features` (the same with an origin timeout,
// a request header and an Analytics Engine point, written by hand: workerd_common.mjs),
// `rollout` (worker/ as built, with a local Analytics Engine binding, which discards points as
// Cloudflare's would store them), `rollout-noae` (no Analytics Engine binding),
// `rollout-recorder` (the tests' recording binding, a service call to node per point), and
// every NAME given with --build (like `rollout`, from DIR).
// Miniflare is resolved from worker/node_modules, so it runs from any directory. What it shares
// with benches/worker_profile.mjs is in benches/workerd_common.mjs.

import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { execSync } from "node:child_process";
import { parseArgs } from "node:util";
import { ROOT, request, setUp, startVariant } from "./workerd_common.mjs";

const { values: args } = parseArgs({
  options: {
    requests: { type: "string", default: "3000" },
    rounds: { type: "string", default: "5" },
    warmup: { type: "string", default: "300" },
    block: { type: "string", default: "100" },
    concurrency: { type: "string", default: "1" },
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
const CONCURRENCY = Math.max(1, Number(args.concurrency));
const CLOCK_TICKS = Number(execSync("getconf CLK_TCK").toString().trim());

/** CPU time of a process (all its threads), in ms: the scheduler's nanosecond count of each
 * thread (/proc/<pid>/task/<tid>/schedstat) where the kernel keeps it, else utime + stime in
 * clock ticks (10 ms each here, coarse for a block of requests). */
function cpuMs(pid) {
  try {
    let ns = 0;
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]);
    }
    return ns / 1e6;
  } catch {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields 14 and 15 of proc(5), counted from the state field (3).
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
  }
}

async function run(worker, count, offset) {
  const before = cpuMs(worker.pid);
  // CONCURRENCY requests in flight at a time (1: one after another).
  let next = 0;
  const lane = async () => {
    while (next < count) await request(worker.url, offset + next++);
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, count) }, lane));
  return (cpuMs(worker.pid) - before) / count;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const { origin, originUrl, config, names, builds } = await setUp(args);
const workers = [];
try {
  for (const name of names) workers.push(await startVariant(name, originUrl, config, builds));
  for (const w of workers) await run(w, WARMUP, 0);
  const perRound = Object.fromEntries(names.map((n) => [n, []]));
  // Each block's CPU per request over the JavaScript Worker's block of the same turn.
  const perBlock = Object.fromEntries(names.map((n) => [n, []]));
  for (let round = 0; round < ROUNDS; round++) {
    // A round's requests go in blocks, the Workers taking turns block by block (in an order
    // rotated each time, so none always runs first): load that comes and goes on a shared
    // machine then falls on every Worker alike rather than on whichever ran at the time.
    const cpu = Object.fromEntries(names.map((n) => [n, 0]));
    for (let done = 0, turn = 0; done < REQUESTS; done += BLOCK, turn++) {
      const count = Math.min(BLOCK, REQUESTS - done);
      const block = {};
      for (let k = 0; k < workers.length; k++) {
        const w = workers[(k + turn + round) % workers.length];
        block[w.name] = await run(w, count, WARMUP + round * REQUESTS + done);
        cpu[w.name] += block[w.name] * count;
      }
      if (block.js > 0) for (const n of names) perBlock[n].push(block[n] / block.js);
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
    block_ratio_to_js: base ? median(perBlock[n]) : null,
  }));
  const header = ["variant", ...Array.from({ length: ROUNDS }, (_, i) => `r${i + 1}`), "median", "ratio", "paired", "by block"];
  const how = CONCURRENCY === 1 ? "sequential requests" : `requests, ${CONCURRENCY} in flight,`;
  console.log(`workerd CPU per request (ms), ${REQUESTS} ${how} per round, ${ROUNDS} rounds`);
  console.log(`| ${header.join(" | ")} |`);
  console.log(`|${header.map(() => "---").join("|")}|`);
  for (const r of rows) {
    const ratio = r.ratio_to_js === null ? "" : `${r.ratio_to_js.toFixed(3)}x`;
    const paired = r.paired_ratio_to_js === null ? "" : `${r.paired_ratio_to_js.toFixed(3)}x`;
    const block = r.block_ratio_to_js === null ? "" : `${r.block_ratio_to_js.toFixed(3)}x`;
    console.log(`| ${[r.variant, ...r.rounds_ms.map((x) => x.toFixed(3)), r.median_ms.toFixed(3), ratio, paired, block].join(" | ")} |`);
  }
  if (args.out) {
    writeFileSync(args.out, `${JSON.stringify({
      requests: REQUESTS, rounds: ROUNDS, warmup: WARMUP, block: BLOCK, concurrency: CONCURRENCY, config: args.config,
      clock_ticks_per_s: CLOCK_TICKS, started: new Date().toISOString(), variants: rows,
    }, null, 2)}\n`);
  }
} finally {
  await Promise.all(workers.map((w) => w.mf.dispose()));
  await new Promise((r) => origin.close(r));
}
