// Shared by the node tests of `dsv3 serve`: skip (exit 77) when something they need is absent,
// start a server on a free port and stop it, run the dsv3 CLI, read /metrics.
import { spawn, execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createInterface } from "node:readline";

export const SKIP = 77;
export const BIN = process.env.DSV3_BIN;
export const MODEL = process.env.DSV3_SERVE_MODEL;

export function skip(why) {
  console.log("SKIP: " + why);
  process.exit(SKIP);
}

export function requireSetup() {
  if (!BIN || !existsSync(BIN)) skip("DSV3_BIN is not set or missing");
  if (!MODEL || !existsSync(MODEL + "/config.json")) skip("no test model (DSV3_SERVE_MODEL)");
}

// Starts `dsv3 serve` with `args` on a free port; resolves once it listens.
// A small KV budget: the tiny model needs little, and the pool is allocated up front.
export function startServer(args = [], { quiet = true } = {}) {
  const kv = args.includes("--kv-cache-mb") ? [] : ["--kv-cache-mb", "16"];
  const proc = spawn(BIN, ["serve", "--model", MODEL, "--port", "0", "--threads", "1",
                           "--precision", "f32", ...kv, ...args],
                     { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  proc.stderr.on("data", (d) => {
    stderr += d;
    if (!quiet) process.stderr.write(d);
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("server did not start in 60 s\n" + stderr)), 60000);
    proc.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening\n${stderr}`));
    });
    const lines = createInterface({ input: proc.stdout });
    lines.on("line", (line) => {
      const m = line.match(/listening on (http:\/\/\S+)/);
      if (!m) return;
      clearTimeout(timer);
      proc.removeAllListeners("exit");
      const exited = new Promise((res) => proc.on("exit", (code, signal) => res({ code, signal })));
      resolve({
        url: m[1], proc, exited, stderr: () => stderr,
        // SIGTERM: graceful shutdown; resolves with the exit status.
        async stop() {
          proc.kill("SIGTERM");
          const t = setTimeout(() => proc.kill("SIGKILL"), 20000);
          const r = await exited;
          clearTimeout(t);
          return r;
        },
      });
    });
  });
}

// Runs the dsv3 CLI without blocking the event loop (clients' keep-alive timers must run);
// resolves with its stdout.
export function runCli(args, input = "") {
  return new Promise((resolve, reject) => {
    const p = execFile(BIN, args, { encoding: "utf8", maxBuffer: 1 << 24 }, (err, stdout, stderr) =>
      err ? reject(new Error(`dsv3 ${args.join(" ")}: ${err.message}\n${stderr}`)) : resolve(stdout));
    p.stdin.end(input);
  });
}

// /metrics as {name: value} (labels kept in the name).
export async function metrics(url, headers = {}) {
  const r = await fetch(url + "/metrics", { headers });
  if (!r.ok) throw new Error("/metrics: " + r.status);
  const out = {};
  for (const line of (await r.text()).split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}

// Waits until the engine is idle: nothing running or waiting, no block referenced.
export async function waitIdle(url, headers = {}, seconds = 30) {
  const end = Date.now() + seconds * 1000;
  let m;
  while (Date.now() < end) {
    m = await metrics(url, headers);
    if (m.dsv3_requests_running === 0 && m.dsv3_requests_waiting === 0 &&
        m.dsv3_kv_blocks_referenced === 0 && m.dsv3_http_requests_in_flight === 0) return m;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("the engine did not become idle: " + JSON.stringify(m));
}

export function rssKb(pid) {
  const s = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(s.match(/VmRSS:\s+(\d+)/)[1]);
}

let failures = 0;
export async function test(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}\n${e.stack || e}`);
  }
}
export function done() {
  console.log(failures ? `${failures} failed` : "all passed");
  process.exit(failures ? 1 : 0);
}
