// The Worker's entry (wrangler.toml's `main`). It forwards every request itself and asks the
// Rust module (src/lib.rs, built by worker-build into build/index.js) only for the plan: which
// origin, which header edits, what to count. A workers-rs fetch handler pays a promise, a
// closure and an object wrapper for each runtime call, and measured at 1.13x to 1.2x the CPU
// of a plain JavaScript Worker (issue 12, benches/STEPS.md); here a request with nothing due
// costs one synchronous call with strings in and out. Reading the config source, the
// guard's wait and batches, and the admin endpoints stay in Rust (`rollout_prepare`).

import RustEntry, { RolloutState } from "../build/index.js";

// The Durable Object class, as wrangler.toml binds it.
export { RolloutState };

// worker-build puts every function the Rust module exports on its entry class's prototype.
const core = RustEntry.prototype;
for (const name of ["rollout_plan", "rollout_observe", "rollout_prepare"]) {
  if (typeof core[name] !== "function") {
    throw new Error(`rollout: build/index.js does not export ${name}: rebuild with worker-build`);
  }
}

// The headers the config in force reads, as the last `H` answer of rollout_plan named them.
let reading = { generation: 0, names: [] };

/** The plan for `request` (see `rollout_plan` in src/lib.rs): its fields, the tag `P` first, or
 * null if it needs `rollout_prepare` first. */
function planFor(request, force) {
  const now = Date.now();
  // A second try only after the config changed, with the headers it reads.
  for (let tries = 0; tries < 2; tries++) {
    // Only the headers the config reads: a runtime call each, and walking all of a request's
    // headers measured as the largest single cost (benches/STEPS.md).
    const headers = request.headers;
    let facts = `${request.method} ${request.url}`;
    for (const name of reading.names) {
      const value = headers.get(name);
      if (value !== null) facts += `\n${name},${value}`;
    }
    const text = core.rollout_plan(reading.generation, facts, now, force);
    const fields = text.split("\0");
    switch (fields[0]) {
      case "P":
        return { generation: reading.generation, fields };
      case "H":
        reading = { generation: Number(fields[1]), names: fields.slice(2, -1) };
        continue;
      case "E":
        throw new Error(fields[1]);
      default:
        return null;
    }
  }
  throw new Error("the config changed twice while one request was planned");
}

/** Makes on `headers` the edits that start at `fields[at]` (a count, then the fields). */
function edit(headers, fields, at) {
  const end = at + 1 + Number(fields[at]);
  for (let i = at + 1; i < end; ) {
    const op = fields[i];
    if (op === "d") {
      headers.delete(fields[i + 1]);
      i += 2;
    } else {
      if (op === "s") headers.set(fields[i + 1], fields[i + 2]);
      else headers.append(fields[i + 1], fields[i + 2]);
      i += 3;
    }
  }
}

// The statuses of a reply of the Worker's own, Envoy's for the same cases, so both hosts answer
// a dead version alike: an origin that cannot be reached or is not configured, and one that
// sent nothing within ROLLOUT_ORIGIN_TIMEOUT_MS.
const UNREACHABLE = 503;
const TIMED_OUT = 504;
const TIMEOUT = Symbol("timeout");

/** Forwards `request` as planned and returns the client's response. */
async function forward(request, env, { generation, fields }) {
  const [, key, entry, origin, url, timeout, slot, rollout, version, flags, token] = fields;
  const requestEdits = 11;
  const originEdits = requestEdits + 1 + Number(fields[requestEdits]);
  const contractEdits = originEdits + 1 + Number(fields[originEdits]);
  // A reply of the Worker's own, with the contract's response headers, so the client still
  // learns which version it was decided for.
  const reply = (status, body) => {
    const response = new Response(body, { status });
    edit(response.headers, fields, contractEdits);
    return response;
  };
  if (url === "") return reply(UNREACHABLE, `rollout worker: no origin configured for ${key}`);

  // The upstream request: everything as the client sent it, with the plan's edits (the header
  // contract, X-Forwarded-Host and -Proto; the fetch sets Host from the URL). The edits are made
  // on the new request's own copy of the headers: a copy costs more than all the edits. A
  // redirect goes back to the client, as from a proxy, not followed here.
  const controller = new AbortController();
  const init = { method: request.method, headers: request.headers, redirect: "manual", signal: controller.signal };
  if (request.method !== "GET" && request.method !== "HEAD") init.body = request.body;
  let upstream;
  try {
    upstream = new Request(url, init);
  } catch (e) {
    console.error(`rollout: ROLLOUT_ORIGINS.${entry}: ${JSON.stringify(origin)} is not a usable origin URL (${e})`);
    return reply(UNREACHABLE, `rollout worker: no usable origin configured for ${key}`);
  }
  edit(upstream.headers, fields, requestEdits);

  const finished = (status, started) => {
    const latency = Date.now() - started;
    if (slot !== "") core.rollout_observe(generation, Number(slot), status, latency);
    writePoint(env, rollout, version, flags, token, status, latency);
  };
  // A silent origin would hold the request for as long as the client waits: bounded, and
  // aborted so the subrequest does not outlive the answer.
  const ms = Number(timeout);
  const started = Date.now();
  let timer;
  const timedOut = new Promise((resolve) => {
    timer = setTimeout(resolve, ms, TIMEOUT);
  });
  let response;
  try {
    response = await Promise.race([fetch(upstream), timedOut]);
  } catch (e) {
    console.error(`rollout: origin ${origin} for ${key} failed: ${e}`);
    finished(UNREACHABLE, started);
    return reply(UNREACHABLE, `rollout worker: origin for ${key} is unreachable`);
  } finally {
    clearTimeout(timer);
  }
  if (response === TIMEOUT) {
    controller.abort();
    console.error(`rollout: origin ${origin} for ${key} sent no response within ${ms} ms (ROLLOUT_ORIGIN_TIMEOUT_MS)`);
    finished(TIMED_OUT, started);
    return reply(TIMED_OUT, `rollout worker: origin for ${key} did not answer within ${ms} ms`);
  }
  finished(response.status, started);
  // Fetched responses have immutable headers: the client's response is a copy (status, status
  // text, headers, the body streamed through), edited.
  const out = new Response(response.body, response);
  edit(out.headers, fields, originEdits);
  edit(out.headers, fields, contractEdits);
  return out;
}

/**
 * One Analytics Engine data point per request, if the binding ROLLOUT_ANALYTICS exists:
 * indexed by rollout, with rollout, version, flags, status and the override token's status
 * (`valid`, `expired`, ...; empty without a token) as blobs, and status and latency as
 * doubles. New blobs go at the end so that queries on the earlier positions keep working.
 */
function writePoint(env, rollout, version, flags, token, status, latency) {
  const dataset = env.ROLLOUT_ANALYTICS;
  if (dataset === undefined) return;
  try {
    dataset.writeDataPoint({
      indexes: [rollout],
      blobs: [rollout, version, flags, String(status), token],
      doubles: [status, latency],
    });
  } catch (e) {
    console.warn(`rollout: analytics data point not written: ${e}`);
  }
}

export default {
  async fetch(request, env, ctx) {
    try {
      let plan = planFor(request, false);
      if (plan === null) {
        // Settings not read yet, the config source or the guard due, or an admin request.
        const answer = await core.rollout_prepare(request, env, ctx);
        if (answer !== undefined) return answer;
        plan = planFor(request, true);
        if (plan === null) throw new Error("no plan for a request after rollout_prepare");
      }
      return await forward(request, env, plan);
    } catch (e) {
      // Nothing the client sent gets here (a NUL in the config's header values, a runtime
      // error): logged, and the client gets an error rather than an undecided request.
      reading = { generation: 0, names: [] };
      console.error(`rollout: ${e}`);
      return new Response("rollout worker: internal error", { status: 500 });
    }
  },
};
