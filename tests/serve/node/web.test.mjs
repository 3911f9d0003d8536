// The chat page at / in headless Chromium (Debian's chromium, driven by puppeteer-core): it loads,
// sends a message, shows the reply as it streams (the reply element changes several times), and
// the reply equals the API's greedy reply for the same conversation.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { requireSetup, skip, startServer, test, done } from "./harness.mjs";

requireSetup();
const CHROMIUM = process.env.DSV3_CHROMIUM || "/usr/bin/chromium";
if (!existsSync(CHROMIUM)) skip(`no ${CHROMIUM} (scripts/setup.sh installs chromium)`);
const puppeteer = await import("puppeteer-core").then((m) => m.default,
    () => skip("npm package puppeteer-core is absent (scripts/setup.sh installs it)"));

const s = await startServer();
const browser = await puppeteer.launch({
  executablePath: CHROMIUM, headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});

await test("the page loads, sends a message and shows the streamed reply", async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(s.url + "/", { waitUntil: "load" });
  assert.equal(await page.title(), "dsv3 chat");
  // Greedy, a fixed length, so the reply can be compared with the API's.
  await page.$eval("#temperature", (e) => { e.value = "0"; });
  await page.$eval("#max_tokens", (e) => { e.value = "32"; });
  // Count the reply's updates while it streams.
  await page.evaluate(() => {
    window.updates = 0;
    new MutationObserver(() => window.updates++).observe(document.getElementById("log"),
        { subtree: true, childList: true, characterData: true });
  });
  await page.type("#input", "Hello! Who are you?");
  await page.click("#send");
  await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state),
                             { timeout: 30000 });
  assert.equal(await page.evaluate(() => document.body.dataset.state), "done");
  const reply = await page.$eval(".msg.assistant", (e) => e.firstChild ? e.firstChild.textContent : "");
  const updates = await page.evaluate(() => window.updates);
  const api = await fetch(s.url + "/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content: "Hello! Who are you?" }],
                           temperature: 0, max_tokens: 32 }),
  }).then((r) => r.json());
  const want = api.choices[0].message.content;
  assert.ok(want.length > 0, "the model's reply is empty: nothing to see streamed");
  assert.equal(reply, want);
  assert.ok(updates >= 3, `the reply changed ${updates} times: not streamed`);
  assert.match(await page.$eval(".msg.assistant .meta", (e) => e.textContent), /tokens/);
  assert.deepEqual(errors, []);
});

await browser.close();
assert.deepEqual(await s.stop(), { code: 0, signal: null });
done();
