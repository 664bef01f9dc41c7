// A step schedule with short holds in the Worker, in real workerd (through Miniflare): the
// schedule moves users by the isolate's clock, not by KV, so a population of 1,000 users is
// sent through it round after round while its steps run, and each step's share of users on the
// new version is checked, as envoy/tests/test_guard.py does in Envoy; and a paused schedule
// holds its step. Build first: worker-build --release.

import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { Miniflare } from "miniflare";

import { WORKER_MODULES, origin } from "./support.mjs";

const HOLD_MS = 5000; // per step: enough for every user to be sent at least once inside it
const STEPS = [{ percent: 10, hold: `${HOLD_MS}ms` }, { percent: 50, hold: `${HOLD_MS}ms` }, { percent: 100 }];
const USERS = Array.from({ length: 1000 }, (_, i) => `user-${i}`);
const CONCURRENCY = 50; // requests in flight at once
// A request counts for a step only if it was sent and answered this far inside it: the
// isolate's clock and this process's are the same machine's, but a request reads the time
// somewhere between the two.
const MARGIN_MS = 100;

/** The rollout `checkout` (v1 stable, v2 new) on a schedule starting at `startMs`; `extra`
 * adds or replaces fields of the schedule. */
function scheduled(startMs, extra = {}) {
  return {
    user_key: ["header:x-user-id"],
    rollouts: {
      checkout: {
        stable: "v1",
        versions: [{ name: "v1" }, { name: "v2" }],
        schedule: { version: "v2", start: new Date(startMs).toISOString(), steps: STEPS, ...extra },
      },
    },
  };
}

/** Fails if `observed` of `n` is 5 standard deviations or more from n*p (envoy/harness.py's
 * check_binomial). */
function checkBinomial(what, observed, n, p) {
  const mean = n * p;
  const sd = Math.max(Math.sqrt(n * p * (1 - p)), 1);
  const z = (observed - mean) / sd;
  assert.ok(Math.abs(z) < 5, `${what}: observed ${observed} of ${n}, expected ${mean.toFixed(0)} (z = ${z.toFixed(1)})`);
}

/** The Worker in Miniflare as support.mjs's worker() starts it, but without the Analytics
 * Engine binding: the recording one costs each request a second trip back into this process,
 * and this test needs every user through the Worker several times in a few seconds. */
async function scheduleWorker(origins) {
  const mf = new Miniflare({
    workers: [{
      name: "rollout",
      ...WORKER_MODULES,
      compatibilityDate: "2026-04-01",
      kvNamespaces: ["ROLLOUT_CONFIG"],
      // The config is never changed: a small TTL reads the same text again and again, and
      // only the clock moves the schedule.
      bindings: { ROLLOUT_CONFIG_KEY: "rollout.json", ROLLOUT_CONFIG_TTL_MS: "200", ROLLOUT_ORIGINS: JSON.stringify(origins) },
    }],
  });
  return { mf, url: await mf.ready, kv: await mf.getKVNamespace("ROLLOUT_CONFIG", "rollout") };
}

/** One request for `user` straight to the Worker's address over a keep-alive connection (in
 * this sandbox about twice the requests a second of dispatchFetch), with its send and receive
 * times and what each side says the version was: the origin that answered, the upstream
 * request's contract headers, and the response's version header. */
function exchange(url, agent, user) {
  return new Promise((resolve, reject) => {
    const sent = Date.now();
    const req = http.request(new URL("/cart", url), { agent, headers: { "x-user-id": user } }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => { text += chunk; });
      res.on("end", () => {
        const received = Date.now();
        let body = {};
        try { body = JSON.parse(text); } catch { body = { text }; }
        const upstream = (name) => (Array.isArray(body.headers) ? body.headers : []).filter(([k]) => k === name).map(([, v]) => v);
        const version = res.headers["x-rollout-version"];
        resolve({
          user, sent, received, status: res.statusCode,
          origin: body.origin,
          upstreamVersion: upstream("x-rollout-version"),
          upstreamRollout: upstream("x-rollout"),
          upstreamReason: upstream("x-rollout-reason"),
          responseVersion: version === undefined ? [] : [version],
        });
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

/** Sends every user, CONCURRENCY at a time, round after round, until `untilMs`. */
async function traffic(url, untilMs) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  const replies = [];
  let rounds = 0;
  try {
    while (Date.now() < untilMs) {
      for (let i = 0; i < USERS.length && Date.now() < untilMs; i += CONCURRENCY) {
        replies.push(...await Promise.all(USERS.slice(i, i + CONCURRENCY).map((u) => exchange(url, agent, u))));
      }
      rounds++;
    }
  } finally {
    agent.destroy();
  }
  return { replies, rounds };
}

/** The version each user got in requests sent and answered inside [begin, end], margins off;
 * fails if a user got two: a step decides every user the same way all through it. */
function versionsInside(replies, begin, end, what) {
  const versions = new Map();
  for (const r of replies) {
    if (r.sent < begin + MARGIN_MS || r.received > end - MARGIN_MS) continue;
    const had = versions.get(r.user);
    assert.ok(had === undefined || had === r.origin, `${r.user} moved from ${had} to ${r.origin} ${what}, at ${r.sent - begin} ms`);
    versions.set(r.user, r.origin);
  }
  return versions;
}

/** Every reply is a 200 whose origin, upstream version header and response version header
 * agree, with rollout `checkout` and no reason upstream; sorted by send time, no user who
 * reached v2 goes back to v1 (a user's requests never overlap: one per round). */
function checkReplies(replies, start) {
  const seen = new Map();
  for (const r of [...replies].sort((a, b) => a.sent - b.sent)) {
    assert.equal(r.status, 200, JSON.stringify(r));
    assert.deepEqual(r.upstreamVersion, [r.origin], JSON.stringify(r));
    assert.deepEqual(r.responseVersion, [r.origin], JSON.stringify(r));
    assert.deepEqual(r.upstreamRollout, ["checkout"], JSON.stringify(r));
    assert.deepEqual(r.upstreamReason, [], JSON.stringify(r));
    assert.ok(!(seen.get(r.user) === "v2" && r.origin === "v1"), `${r.user} went back to v1 at ${r.sent - start} ms`);
    seen.set(r.user, r.origin);
  }
}

test("a step schedule moves users 10%, 50%, 100% by the clock, and nobody goes back", async () => {
  const origins = { "checkout/v1": await origin("v1"), "checkout/v2": await origin("v2") };
  // The config goes to KV once Miniflare is up and before any request, so the time it takes
  // to start does not eat into the time before the start.
  const { mf, url, kv } = await scheduleWorker(origins);
  try {
    const start = Date.now() + 2500;
    await kv.put("rollout.json", JSON.stringify(scheduled(start)));
    const end = start + 3 * HOLD_MS; // the last step is held as long as the others for the check
    const { replies, rounds } = await traffic(url, end);

    checkReplies(replies, start);

    const before = versionsInside(replies, 0, start, "before the start");
    assert.ok(before.size >= 100, `only ${before.size} users before the start`);
    assert.deepEqual([...new Set(before.values())], ["v1"], "before the start everyone is on v1");

    const shares = [];
    for (const [i, step] of STEPS.entries()) {
      const begin = start + i * HOLD_MS;
      const got = versionsInside(replies, begin, begin + HOLD_MS, `in the ${step.percent}% step`);
      assert.equal(got.size, USERS.length, `only ${got.size} users during the ${step.percent}% step`);
      const onV2 = [...got.values()].filter((v) => v === "v2").length;
      shares.push(`${step.percent}%: ${onV2} of ${got.size}`);
      if (step.percent === 100) assert.equal(onV2, got.size, `${got.size - onV2} users not on v2 in the 100% step`);
      else checkBinomial(`the ${step.percent}% step`, onV2, got.size, step.percent / 100);
    }
    console.log(`schedule: ${replies.length} requests in ${rounds} rounds of ${USERS.length} users; before the start ${before.size} on v1; on v2 in step ${shares.join(", ")}`);
  } finally {
    await mf.dispose();
  }
});

test("a schedule paused in its first step stays there past the times of the next steps", async () => {
  const origins = { "checkout/v1": await origin("v1"), "checkout/v2": await origin("v2") };
  const { mf, url, kv } = await scheduleWorker(origins);
  try {
    // Short holds: unpaused, the 50% step would begin 1.5 s after the start and the 100% step
    // at 3 s; the pause, 0.5 s after the start, holds the 10% step through both.
    const start = Date.now() + 1500;
    const steps = [{ percent: 10, hold: "1500ms" }, { percent: 50, hold: "1500ms" }, { percent: 100 }];
    await kv.put("rollout.json", JSON.stringify(scheduled(start, { steps, paused_at: new Date(start + 500).toISOString() })));
    const end = start + 5000;
    const { replies, rounds } = await traffic(url, end);
    checkReplies(replies, start);

    const before = versionsInside(replies, 0, start, "before the start");
    assert.deepEqual([...new Set(before.values())], ["v1"], "before the start everyone is on v1");
    // From the start on, every user keeps one version, and a tenth of them are on v2.
    const got = versionsInside(replies, start, end, "while paused");
    assert.equal(got.size, USERS.length, `only ${got.size} users after the start`);
    const onV2 = [...got.values()].filter((v) => v === "v2").length;
    checkBinomial("the paused 10% step", onV2, got.size, 0.1);
    console.log(`paused: ${replies.length} requests in ${rounds} rounds; before the start ${before.size} on v1; from the start ${onV2} of ${got.size} on v2`);
  } finally {
    await mf.dispose();
  }
});
