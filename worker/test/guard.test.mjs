// The guard and the Durable Object config source in real workerd (through Miniflare, which runs
// Durable Objects locally): a canary failing half its requests trips and its users go to
// stable; a healthy one does not; two isolates' counts add up in the rollout's object; an object
// that never answers does not hold requests up; a config put through the admin endpoint reaches
// the isolate within the hold time; a trip holds until the rollout is changed.

import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";

import { servers, worker, send } from "./support.mjs";

const TOKEN = "a-test-admin-token";
const TRIP_LINE = "rollout: guard tripped";

/** An origin named `name` whose `state.fail` share of requests (every n-th, deterministic)
 * gets a 500; it answers with its name. */
async function flaky(name, state) {
  let seen = 0;
  const server = http.createServer((req, res) => {
    seen++;
    const fail = state.fail > 0 && seen % Math.round(1 / state.fail) === 0;
    res.writeHead(fail ? 500 : 200, { "content-type": "application/json" });
    res.end(JSON.stringify({ origin: name }));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  servers.push(server);
  return `http://127.0.0.1:${server.address().port}`;
}

async function origins(v2) {
  return { "checkout/v1": await flaky("v1", { fail: 0 }), "checkout/v2": await flaky("v2", v2) };
}

function checkout({ weights = [50, 50], guard = { window: "30s", min_requests: 20 }, extra = {} } = {}) {
  return {
    user_key: ["header:x-user-id"],
    rollouts: {
      checkout: {
        stable: "v1",
        versions: [{ name: "v1", weight: weights[0] }, { name: "v2", weight: weights[1] }],
        guard,
      },
    },
    ...extra,
  };
}

/** One request of `user`; returns {status, origin, version, reason}. */
async function get(target, user) {
  const res = await send(target, [[":path", "/cart"], [":authority", "shop.example.com"], ["x-user-id", user]]);
  const header = (name) => res.headers.find(([k]) => k === name)?.[1];
  return { status: res.status, origin: res.body?.origin, version: header("x-rollout-version"), reason: header("x-rollout-reason") };
}

async function admin(mf, method, route, body, token = TOKEN) {
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  const res = await mf.dispatchFetch(`http://shop.example.com/__rollout${route}`, { method, headers, body });
  return { status: res.status, text: await res.text() };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const trips = (logs) => logs.filter((l) => l.message.includes(TRIP_LINE));

test("a canary failing half its requests trips; its users go to stable, latched in the object", async () => {
  const { mf, logs } = await worker({
    config: checkout(), origins: await origins({ fail: 0.5 }), ttlMs: 60_000,
    vars: { ROLLOUT_GUARD_SYNC_MS: "100", ROLLOUT_ADMIN_TOKEN: TOKEN },
  });
  try {
    let sent = 0;
    while (trips(logs).length === 0 && sent < 2_000) {
      const r = await get(mf, `user-${sent++ % 500}`);
      assert.ok(r.status === 200 || r.status === 500, JSON.stringify(r));
      if (sent % 50 === 0) await sleep(110); // a batch is due every 100 ms
    }
    assert.equal(trips(logs).length, 1, `no trip after ${sent} requests`);
    assert.match(trips(logs)[0].message, /rollout=checkout version=v2 reason=errors/);
    // The isolate learns the trip from its next batch's answer.
    await get(mf, "user-0");
    await sleep(300);
    await get(mf, "user-0");
    const after = [];
    for (let i = 0; i < 200; i++) after.push(await get(mf, `user-${i}`));
    assert.deepEqual(after.filter((r) => r.origin !== "v1" || r.status !== 200), []);
    const moved = after.filter((r) => r.reason === "guard").length;
    assert.ok(moved > 50 && moved < 150, `${moved} of 200 users moved by the guard at 50%`);
    const status = JSON.parse((await admin(mf, "GET", "/status")).text);
    assert.equal(status.rollouts.checkout.guard.latch.version, "v2");
    assert.equal(status.rollouts.checkout.guard.latch.reason, "errors");
    assert.equal(status.rollouts.checkout.guard.latch.revision, status.rollouts.checkout.revision);
    assert.equal(trips(logs).length, 1, "one trip, logged once");
    console.log(`tripped after ${sent} requests`);
  } finally {
    await mf.dispose();
  }
});

test("a healthy canary under 1,500 requests does not trip, and the object has its counts", async () => {
  const { mf, logs } = await worker({
    config: checkout(), origins: await origins({ fail: 0.01 }), ttlMs: 60_000,
    vars: { ROLLOUT_GUARD_SYNC_MS: "100", ROLLOUT_ADMIN_TOKEN: TOKEN },
  });
  try {
    let onV2 = 0;
    for (let i = 0; i < 1_500; i++) {
      const r = await get(mf, `user-${i}`);
      if (r.version === "v2") onV2++;
      assert.equal(r.reason, undefined);
      if (i % 100 === 99) await sleep(110);
    }
    await sleep(110);
    await get(mf, "user-0"); // sends the last batch
    await sleep(200);
    assert.deepEqual(trips(logs), []);
    const status = JSON.parse((await admin(mf, "GET", "/status")).text);
    assert.equal(status.rollouts.checkout.guard.latch, null);
    const [window] = status.rollouts.checkout.guard.windows;
    assert.ok(window.versions.v2.responses >= onV2, `${window.versions.v2.responses} of ${onV2} counted`);
    assert.ok(window.versions.v2.errors > 0 && window.versions.v2.errors < 20, JSON.stringify(window));
    assert.ok(window.versions.v1.responses > 500, JSON.stringify(window));
  } finally {
    await mf.dispose();
  }
});

test("two isolates' counts add up in the rollout's object, and both take up its trip", async () => {
  // min_requests 100: 60 failures from each isolate trip only together.
  const config = checkout({ weights: [0, 100], guard: { window: "60s", min_requests: 100 } });
  const { mf, logs } = await worker({
    config, origins: await origins({ fail: 1 }), ttlMs: 60_000, twin: true,
    vars: { ROLLOUT_GUARD_SYNC_MS: "100", ROLLOUT_ADMIN_TOKEN: TOKEN },
  });
  try {
    const a = mf;
    const b = await mf.getWorker("rollout-b");
    // 60 failures through the first isolate, then one more request to send them in its batch.
    for (let i = 0; i < 60; i++) assert.equal((await get(a, `user-${i}`)).status, 500);
    await sleep(150);
    await get(a, "user-flush");
    await sleep(200);
    assert.deepEqual(trips(logs), [], "one isolate's 60 responses do not trip");
    const status = JSON.parse((await admin(a, "GET", "/status")).text);
    assert.equal(status.rollouts.checkout.guard.latch, null, JSON.stringify(status));
    assert.ok(status.rollouts.checkout.guard.windows[0].versions.v2.responses >= 60, JSON.stringify(status));
    // The second isolate's failures trip the sum; it then sends its users to v1.
    let sent = 0;
    while (sent < 200 && (await get(b, `user-${sent}`)).reason !== "guard") {
      if (++sent % 20 === 0) await sleep(110);
    }
    assert.equal(trips(logs).length, 1, `no trip after ${sent} requests through the second isolate`);
    const [, total] = /: (\d+) of \d+ responses 5xx/.exec(trips(logs)[0].message);
    assert.ok(Number(total) >= 100 && sent < 100, `tripped at ${total} responses, ${sent} from the second isolate`);
    for (const target of [a, b]) {
      await sleep(150);
      await get(target, "user-learn");
      await sleep(200);
      const r = await get(target, "user-1");
      assert.deepEqual([r.status, r.origin, r.reason], [200, "v1", "guard"]);
    }
  } finally {
    await mf.dispose();
  }
});

test("an object that never answers costs a request at most the bounded wait", async () => {
  const hang = {
    name: "hang",
    modules: true,
    script: `export class Hang { fetch() { return new Promise(() => {}); } }
export default { fetch() { return new Response("hang"); } };`,
    durableObjects: { SELF: "Hang" },
  };
  const { mf, logs } = await worker({
    config: checkout(), origins: await origins({ fail: 0 }), ttlMs: 1_000,
    durableObjects: { ROLLOUT_STATE: { className: "Hang", scriptName: "hang" } },
    extraWorkers: [hang],
    vars: { ROLLOUT_GUARD_SYNC_MS: "100", ROLLOUT_STATE_WAIT_MS: "100" },
  });
  try {
    const took = [];
    const versions = new Set();
    const until = Date.now() + 2_500; // past two hold times
    for (let i = 0; Date.now() < until; i++) {
      const start = Date.now();
      const r = await get(mf, `user-${i}`);
      took.push(Date.now() - start);
      assert.equal(r.status, 200);
      versions.add(r.origin);
    }
    assert.deepEqual([...versions].sort(), ["v1", "v2"], "the split goes on");
    // The object never answers: the first request waits 100 ms for it, not forever; the others
    // do not wait, as batches keep trying in the background.
    assert.ok(Math.max(...took) < 1_500, `slowest request ${Math.max(...took)} ms`);
    const waited = took.filter((t) => t >= 100).length;
    assert.ok(took[0] >= 100 && waited <= 3, `${waited} of ${took.length} requests waited: ${took.join(",")}`);
    assert.ok(logs.some((l) => /guard state of checkout not reached: no answer within 100 ms/.test(l.message)),
      JSON.stringify(logs.slice(0, 5)));
  } finally {
    await mf.dispose();
  }
});

test("a config put through the admin endpoint reaches the isolate within the hold time", async () => {
  const ttlMs = 500;
  const all = (version) => checkout({ weights: version === "v1" ? [100, 0] : [0, 100] });
  const { mf } = await worker({
    origins: { ...(await origins({ fail: 0 })), default: await flaky("default", { fail: 0 }) }, ttlMs,
    vars: { ROLLOUT_CONFIG_SOURCE: "durable_object", ROLLOUT_ADMIN_TOKEN: TOKEN },
  });
  try {
    assert.equal((await get(mf, "user-1")).origin, "default", "nothing put yet: the default origin");
    assert.equal((await admin(mf, "PUT", "/config", JSON.stringify(all("v1")), null)).status, 401);
    assert.equal((await admin(mf, "PUT", "/config", JSON.stringify(all("v1")), "wrong")).status, 401);
    const bad = checkout();
    bad.rollouts.checkout.versions[1].weight = -5;
    const refused = await admin(mf, "PUT", "/config", JSON.stringify(bad));
    assert.equal(refused.status, 400);
    assert.match(refused.text, /rollouts\.checkout\.versions\[1\]\.weight/);
    const keyed = { ...all("v1"), overrides: { keys: { k1: "x".repeat(32) } } };
    assert.match((await admin(mf, "PUT", "/config", JSON.stringify(keyed))).text, /overrides\.keys/);
    const put = await admin(mf, "PUT", "/config", JSON.stringify(all("v1")));
    assert.equal(put.status, 200, put.text);
    assert.match(put.text, /serial 1/);
    await sleep(ttlMs + 50);
    assert.equal((await get(mf, "user-1")).origin, "v1");
    assert.deepEqual(JSON.parse((await admin(mf, "GET", "/config")).text), all("v1"));

    // The switch: requests every 10 ms until one reaches v2.
    assert.equal((await admin(mf, "PUT", "/config", JSON.stringify(all("v2")))).status, 200);
    const start = Date.now();
    let seen;
    while (Date.now() - start < ttlMs + 2_000) {
      if ((await get(mf, "user-1")).origin === "v2") { seen = Date.now() - start; break; }
      await sleep(10);
    }
    assert.ok(seen !== undefined && seen <= ttlMs + 200, `the new config took ${seen} ms (hold ${ttlMs} ms)`);
    for (let i = 0; i < 20; i++) assert.equal((await get(mf, `user-${i}`)).origin, "v2");
    const status = JSON.parse((await admin(mf, "GET", "/status")).text);
    assert.match(status.source, /Durable Object ROLLOUT_STATE/);
    assert.match(status.rollouts.checkout.revision, /^[0-9a-f]{16}$/);
    console.log(`a config put reached the isolate after ${seen} ms (hold time ${ttlMs} ms)`);
  } finally {
    await mf.dispose();
  }
});

test("with KV as the source the admin endpoint checks a config but does not store it", async () => {
  const { mf } = await worker({ config: checkout(), origins: await origins({ fail: 0 }), vars: { ROLLOUT_ADMIN_TOKEN: TOKEN } });
  try {
    const res = await admin(mf, "PUT", "/config", JSON.stringify(checkout({ weights: [0, 100] })));
    assert.equal(res.status, 409);
    assert.match(res.text, /wrangler kv key put/);
    assert.deepEqual(JSON.parse((await admin(mf, "GET", "/config")).text), checkout());
    // Without the secret, the admin path is the origins'.
    const plain = await worker({ config: checkout(), origins: await origins({ fail: 0 }) });
    try {
      const r = await plain.mf.dispatchFetch("http://shop.example.com/__rollout/status");
      assert.equal(r.status, 200);
      assert.ok(["v1", "v2"].includes((await r.json()).origin));
    } finally {
      await plain.mf.dispose();
    }
  } finally {
    await mf.dispose();
  }
});

test("a trip holds through an edit elsewhere in the config and lifts with a new revision", async () => {
  const ttlMs = 300;
  const v2 = { fail: 1 };
  const { mf, logs } = await worker({
    origins: await origins(v2), ttlMs,
    vars: { ROLLOUT_CONFIG_SOURCE: "durable_object", ROLLOUT_ADMIN_TOKEN: TOKEN, ROLLOUT_GUARD_SYNC_MS: "100" },
  });
  const users = Array.from({ length: 100 }, (_, i) => `user-${i}`);
  const onV2 = async () => {
    await sleep(ttlMs + 150);
    await get(mf, "user-learn");
    await sleep(200);
    let n = 0;
    for (const u of users) if ((await get(mf, u)).origin === "v2") n++;
    return n;
  };
  try {
    assert.equal((await admin(mf, "PUT", "/config", JSON.stringify(checkout()))).status, 200);
    await sleep(ttlMs + 50);
    for (let i = 0; trips(logs).length === 0 && i < 1_000; i++) {
      await get(mf, users[i % 100]);
      if (i % 50 === 49) await sleep(110);
    }
    assert.equal(trips(logs).length, 1);
    assert.equal(await onV2(), 0, "tripped: nobody on v2");
    v2.fail = 0;
    // A flag added: the rollout's revision is the same, the trip holds.
    const flagged = checkout({ extra: { flags: { "new-cart": { percentage: 50 } } } });
    assert.equal((await admin(mf, "PUT", "/config", JSON.stringify(flagged))).status, 200);
    assert.equal(await onV2(), 0, "an edit elsewhere keeps the trip");
    // The rollout changed: a new revision, judged afresh.
    const changed = checkout({ weights: [40, 60], extra: flagged.flags ? { flags: flagged.flags } : {} });
    assert.equal((await admin(mf, "PUT", "/config", JSON.stringify(changed))).status, 200);
    const back = await onV2();
    assert.ok(back > 30, `${back} of 100 users on v2 after the change`);
  } finally {
    await mf.dispose();
  }
});
