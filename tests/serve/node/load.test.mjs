// Load and abuse: 32 concurrent clients for a bounded time (DSV3_LOAD_SECONDS, default 10) send a
// mix of good requests (streamed and not, chat and completions), malformed ones (bad JSON, wrong
// types, prompts over the context, oversized bodies) and streams they abandon midway. Afterwards
// the server still answers, every KV block is released (/metrics), no request is left in flight,
// and its memory grew by less than a bound. The random mix is seeded; the seed is printed.
import assert from "node:assert/strict";
import { requireSetup, startServer, test, done, waitIdle, metrics, rssKb } from "./harness.mjs";

requireSetup();
const SECONDS = Number(process.env.DSV3_LOAD_SECONDS || 10);
const CLIENTS = 32;
let seed = Number(process.env.DSV3_LOAD_SEED || 20261207);
console.log(`seed ${seed}, ${CLIENTS} clients, ${SECONDS} s`);
const rand = () => {  // mulberry32
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const pick = (a) => a[Math.floor(rand() * a.length)];

const s = await startServer(["--kv-cache-mb", "4", "--max-running", "16", "--http-threads", "48",
                             "--max-body-kb", "64"]);
const post = (path, body, signal) => fetch(s.url + path, {
  method: "POST", headers: { "Content-Type": "application/json" }, signal,
  body: typeof body === "string" ? body : JSON.stringify(body),
});
const chat = (extra = {}) => ({ messages: [{ role: "user", content: pick(["Hi", "Tell me more", "Why?"]) }],
                                 max_tokens: 1 + Math.floor(rand() * 24), ...extra });
const counts = {};
const count = (k) => { counts[k] = (counts[k] || 0) + 1; };

// One client's request; every outcome is checked.
async function one() {
  const kind = pick(["chat", "chat_stream", "completion", "completion_stream", "abandon", "abandon",
                     "bad_json", "bad_type", "too_long", "huge_body", "bad_range"]);
  count(kind);
  switch (kind) {
    case "chat": case "completion": {
      const body = kind === "chat" ? chat({ temperature: rand() }) :
        { prompt: pick(["Once", "The", "A B C"]), max_tokens: 1 + Math.floor(rand() * 24), seed: 3 };
      const r = await post(kind === "chat" ? "/v1/chat/completions" : "/v1/completions", body);
      assert.equal(r.status, 200, await r.clone().text());
      const j = await r.json();
      assert.ok(j.usage.completion_tokens <= body.max_tokens);
      break;
    }
    case "chat_stream": case "completion_stream": {
      const path = kind === "chat_stream" ? "/v1/chat/completions" : "/v1/completions";
      const body = kind === "chat_stream" ? chat({ stream: true }) :
        { prompt: "Hello there", stream: true, max_tokens: 1 + Math.floor(rand() * 24) };
      const r = await post(path, body);
      assert.equal(r.status, 200);
      const text = await r.text();
      assert.ok(text.endsWith("data: [DONE]\n\n"), text.slice(-200));
      break;
    }
    case "abandon": {  // a client that goes away after the first chunk(s)
      const ac = new AbortController();
      const r = await post("/v1/completions", { prompt: "Go", stream: true, max_tokens: 200,
                                                ignore_eos: true }, ac.signal);
      assert.equal(r.status, 200);
      const reader = r.body.getReader();
      const n = 1 + Math.floor(rand() * 3);
      for (let i = 0; i < n; i++) await reader.read();
      ac.abort();
      await reader.cancel().catch(() => {});
      break;
    }
    case "bad_json": {
      const r = await post("/v1/chat/completions", pick(["{", "[1,2", "{\"messages\": [}", "\u0000"]));
      assert.equal(r.status, 400);
      assert.ok((await r.json()).error.message);
      break;
    }
    case "bad_type": {
      const r = await post("/v1/chat/completions", chat({ temperature: "warm", stream: 7 }));
      assert.equal(r.status, 400);
      assert.ok(["temperature", "stream"].includes((await r.json()).error.param));
      break;
    }
    case "bad_range": {
      const r = await post("/v1/completions", { prompt: "x", top_p: 0, max_tokens: -4 });
      assert.equal(r.status, 400);
      break;
    }
    case "too_long": {
      const r = await post("/v1/completions", { prompt: "hello ".repeat(300) });
      assert.equal(r.status, 400);
      assert.equal((await r.json()).error.code, "context_length_exceeded");
      break;
    }
    case "huge_body": {
      const r = await post("/v1/completions", "{\"prompt\": \"" + "y".repeat(100 << 10) + "\"}")
        .catch(() => null);  // the server may close the connection before reading it all
      if (r) assert.equal(r.status, 413);
      break;
    }
  }
}

await test(`${CLIENTS} clients for ${SECONDS} s: valid, malformed and abandoned requests`, async () => {
  await one();  // warm up before the memory baseline
  await waitIdle(s.url);
  const rss0 = rssKb(s.proc.pid);
  const end = Date.now() + SECONDS * 1000;
  const errors = [];
  await Promise.all(Array.from({ length: CLIENTS }, async () => {
    while (Date.now() < end) await one().catch((e) => errors.push(e));
  }));
  console.log("requests by kind", JSON.stringify(counts));
  assert.deepEqual(errors.map(String).slice(0, 5), []);
  // Afterwards: idle, nothing referenced, the server answers, memory bounded.
  const m = await waitIdle(s.url);
  console.log("metrics after load", JSON.stringify({ total: m.dsv3_requests_total,
    tokens: m.dsv3_generation_tokens_total, cancelled: m.dsv3_http_streams_cancelled_total,
    blocks_used: m.dsv3_kv_blocks_used, blocks_total: m.dsv3_kv_blocks_total,
    preemptions: m.dsv3_preemptions_total }));
  assert.equal(m.dsv3_kv_blocks_referenced, 0);
  assert.ok(m.dsv3_http_streams_cancelled_total > 0, "abandoned streams were cancelled");
  const r = await post("/v1/chat/completions", chat());
  assert.equal(r.status, 200);
  assert.equal((await fetch(s.url + "/health")).status, 200);
  const rss1 = rssKb(s.proc.pid);
  console.log(`RSS ${rss0} kB before, ${rss1} kB after`);
  assert.ok(rss1 - rss0 < 256 * 1024, `RSS grew by ${rss1 - rss0} kB`);
});

assert.deepEqual(await s.stop(), { code: 0, signal: null });
done();
