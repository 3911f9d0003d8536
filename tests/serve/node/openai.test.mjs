// `dsv3 serve` driven by the official OpenAI client (npm `openai`), on the tiny test model:
// completions and chat, streamed and not, with and without MTP speculation; greedy text equals
// `dsv3 generate` and `dsv3 chat` on the same model; errors arrive as OpenAI errors with the
// right status and param; --api-key; stop strings; logprobs; usage; graceful SIGTERM.
import assert from "node:assert/strict";
import { BIN, MODEL, requireSetup, skip, startServer, runCli, test, done, waitIdle } from "./harness.mjs";

requireSetup();
const OpenAI = await import("openai").then((m) => m.default,
    () => skip("npm package openai is absent (scripts/setup.sh installs it)"));

const N = 24;
const PROMPTS = ["The capital of France is", "Once upon a time, in a land far", "1, 2, 3, 4,"];
const greedy = { temperature: 0, max_tokens: N, ignore_eos: true };

const plain = await startServer();
const spec = await startServer(["--speculative", "mtp"]);
const client = (s, apiKey = "unused") => new OpenAI({ baseURL: s.url + "/v1", apiKey, maxRetries: 0 });

async function streamed(c, kind, body) {
  const api = kind === "chat.completions" ? c.chat.completions : c.completions;
  const stream = await api.create({ ...body, stream: true, stream_options: { include_usage: true } });
  let text = "", finish = null, usage = null, chunks = 0;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    const ch = chunk.choices[0];
    if (!ch) continue;
    chunks++;
    text += kind === "chat.completions" ? (ch.delta.content ?? "") : ch.text;
    if (ch.finish_reason) finish = ch.finish_reason;
  }
  return { text, finish, usage, chunks };
}

await test("models lists the served model", async () => {
  const list = await client(plain).models.list();
  assert.equal(list.data.length, 1);
  assert.equal(list.data[0].object, "model");
});

await test("completions: greedy text equals dsv3 generate, streamed or not, with or without MTP", async () => {
  for (const prompt of PROMPTS.slice(0, 2)) {
    const gen = await runCli(["generate", "--model", MODEL, "--prompt", prompt, "-n", String(N),
                        "--temperature", "0", "--no-stop", "--precision", "f32", "--threads", "1"]);
    assert.ok(gen.startsWith(prompt), gen);
    const want = gen.slice(prompt.length).replace(/\n$/, "");
    for (const s of [plain, spec]) {
      const c = client(s);
      const r = await c.completions.create({ model: "tiny", prompt, ...greedy });
      assert.equal(r.object, "text_completion");
      assert.equal(r.choices[0].text, want, `${s === spec ? "mtp" : "plain"}: ${prompt}`);
      assert.equal(r.choices[0].finish_reason, "length");
      assert.equal(r.usage.completion_tokens, N);
      const st = await streamed(c, "completions", { model: "tiny", prompt, ...greedy });
      assert.equal(st.text, want);
      assert.equal(st.finish, "length");
      assert.equal(st.usage.completion_tokens, N);
      assert.equal(st.usage.prompt_tokens, r.usage.prompt_tokens);
      assert.ok(st.chunks >= 2, "streamed in several chunks");
    }
  }
});

await test("chat: greedy replies equal dsv3 chat's (history, /reset), streamed or not, with or without MTP", async () => {
  const u1 = "Tell me a story about a robot.", u2 = "And then?";
  const cli = await runCli(["chat", "--model", MODEL, "--temperature", "0", "-n", String(N),
                            "--precision", "f32", "--threads", "1", "--kv-cache-mb", "16"],
                           `${u1}\n${u2}\n/reset\n${u1}\n`);
  for (const s of [plain, spec]) {
    const c = client(s);
    const ask = async (messages) => {
      const body = { model: "tiny", messages, temperature: 0, max_tokens: N };
      const r = await c.chat.completions.create(body);
      assert.equal(r.object, "chat.completion");
      assert.equal(r.choices[0].message.role, "assistant");
      assert.ok(["stop", "length"].includes(r.choices[0].finish_reason));
      const st = await streamed(c, "chat.completions", body);
      assert.equal(st.text, r.choices[0].message.content);
      assert.equal(st.finish, r.choices[0].finish_reason);
      assert.equal(st.usage.completion_tokens, r.usage.completion_tokens);
      return r.choices[0].message.content;
    };
    const r1 = await ask([{ role: "user", content: u1 }]);
    const r2 = await ask([{ role: "user", content: u1 }, { role: "assistant", content: r1 },
                          { role: "user", content: u2 }]);
    assert.equal(cli, `${r1}\n${r2}\n(history cleared)\n${r1}\n`);
  }
});

await test("concurrent greedy requests (one batch) equal the same requests alone", async () => {
  const prompts = ["a", "The sky", "In 1999,", "Dear Sir", "x y z", "Hello world", "Once upon", "3.14"];
  for (const s of [plain, spec]) {
    const c = client(s);
    const body = (prompt) => ({ model: "tiny", prompt, ...greedy, max_tokens: 16 });
    const alone = [];
    for (const p of prompts) alone.push((await c.completions.create(body(p))).choices[0].text);
    const together = await Promise.all(prompts.map((p) => c.completions.create(body(p))));
    assert.deepEqual(together.map((r) => r.choices[0].text), alone);
  }
});

await test("chat with history and a system prompt: stream equals non-stream; prefix cache hits", async () => {
  const c = client(plain);
  const messages = [{ role: "system", content: "You are terse." },
                    { role: "user", content: "Hi" }, { role: "assistant", content: "Hello." },
                    { role: "user", content: "What is 2+2?" }];
  const r = await c.chat.completions.create({ messages, model: "tiny", ...greedy });
  const st = await streamed(c, "chat.completions", { messages, model: "tiny", ...greedy });
  assert.equal(st.text, r.choices[0].message.content);
  assert.ok(st.usage.prompt_tokens_details.cached_tokens > 0, JSON.stringify(st.usage));
});

await test("stop strings end the text before them", async () => {
  const c = client(plain);
  const full = (await c.completions.create({ model: "tiny", prompt: PROMPTS[0], ...greedy })).choices[0].text;
  const chars = [...full];
  assert.ok(chars.length >= 6, full);
  const stop = chars.slice(3, 5).join("");
  const want = full.slice(0, full.indexOf(stop));
  const r = await c.completions.create({ model: "tiny", prompt: PROMPTS[0], ...greedy, stop: [stop] });
  assert.equal(r.choices[0].text, want);
  assert.equal(r.choices[0].finish_reason, "stop");
  const st = await streamed(c, "completions", { model: "tiny", prompt: PROMPTS[0], ...greedy, stop });
  assert.equal(st.text, want);
  assert.equal(st.finish, "stop");
});

await test("logprobs: one entry per token, top alternatives sorted, the greedy token first", async () => {
  const c = client(plain);
  const r = await c.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "Hi" }],
    ...greedy, max_tokens: 8, logprobs: true, top_logprobs: 3 });
  const lp = r.choices[0].logprobs.content;
  assert.equal(lp.length, r.usage.completion_tokens);
  for (const t of lp) {
    assert.equal(t.top_logprobs.length, 3);
    assert.ok(t.logprob <= 0);
    assert.ok(Math.abs(t.top_logprobs[0].logprob - t.logprob) < 1e-5, JSON.stringify(t));
    for (let i = 1; i < 3; i++) assert.ok(t.top_logprobs[i].logprob <= t.top_logprobs[i - 1].logprob);
  }
});

await test("sampling with a seed is reproducible", async () => {
  const c = client(plain);
  const body = { model: "tiny", prompt: "Hello", max_tokens: 16, temperature: 1, top_p: 0.9, top_k: 50, seed: 1234 };
  const a = await c.completions.create(body), b = await c.completions.create(body);
  assert.equal(a.choices[0].text, b.choices[0].text);
});

await test("bad requests are OpenAI errors with status and param", async () => {
  const c = client(plain);
  const cases = [
    [{ messages: [{ role: "user", content: "x" }], temperature: 3 }, 400, "temperature"],
    [{ messages: [{ role: "user", content: "x" }], max_tokens: "ten" }, 400, "max_tokens"],
    [{ messages: [{ role: "user", content: "x" }], n: 2 }, 400, "n"],
    [{ messages: "x" }, 400, "messages"],
    [{ messages: [{ role: "user", content: "word ".repeat(400) }] }, 400, "messages"],
    [{ messages: [{ role: "user", content: "x" }], max_tokens: 255 }, 400, "max_tokens"],
  ];
  for (const [body, status, param] of cases) {
    await assert.rejects(c.chat.completions.create({ model: "tiny", ...body }), (e) => {
      assert.ok(e instanceof OpenAI.APIError, String(e));
      assert.equal(e.status, status, JSON.stringify(body).slice(0, 80) + " " + e.message);
      assert.equal(e.param, param, e.message);
      assert.equal(e.type, "invalid_request_error");
      return true;
    });
  }
  const r = await fetch(plain.url + "/v1/chat/completions", { method: "POST", body: "{bad json" });
  assert.equal(r.status, 400);
  assert.equal((await r.json()).error.code, "invalid_json");
  const nf = await fetch(plain.url + "/v1/nothing");
  assert.equal(nf.status, 404);
  assert.ok((await nf.json()).error.message);
  const big = await fetch(plain.url + "/v1/completions", { method: "POST", body: "x".repeat(5 << 20) });
  assert.equal(big.status, 413);
  assert.equal((await big.json()).error.code, "body_too_large");
});

await test("--api-key requires Authorization: Bearer; SIGTERM mid-stream ends it, exit 0", async () => {
  const s = await startServer(["--api-key", "sekret"]);
  await assert.rejects(client(s, "wrong").models.list(), (e) => e.status === 401);
  const r = await fetch(s.url + "/v1/models");
  assert.equal(r.status, 401);
  assert.equal((await r.json()).error.code, "invalid_api_key");
  assert.equal((await fetch(s.url + "/metrics")).status, 401);
  assert.equal((await fetch(s.url + "/health")).status, 200);
  const c = client(s, "sekret");
  const ok = await c.completions.create({ model: "t", prompt: "Hi", max_tokens: 2 });
  assert.equal(ok.choices.length, 1);
  // A stream that the shutdown interrupts: it ends (with an error event), the server exits 0.
  const stream = await c.completions.create({ model: "t", prompt: "Hi", max_tokens: 200,
                                              ignore_eos: true, stream: true });
  let got = 0;
  try {
    for await (const _ of stream) if (++got === 2) s.proc.kill("SIGTERM");
  } catch (e) { /* the server ends the stream with an error event */ }
  assert.ok(got >= 2 && got < 200, `${got} chunks`);
  assert.deepEqual(await s.exited, { code: 0, signal: null });
});

await test("idle after all of this: no KV block referenced", async () => {
  const m = await waitIdle(plain.url);
  assert.equal(m.dsv3_kv_blocks_referenced, 0);
  assert.ok(m.dsv3_requests_total > 10);
  const ms = await waitIdle(spec.url);
  assert.ok(ms.dsv3_spec_drafted_tokens_total > 0, "MTP drafted tokens");
});

for (const s of [plain, spec]) assert.deepEqual(await s.stop(), { code: 0, signal: null });
done();
