// Pure pieces of the client (no processes), and the committed browser bundle.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { backoffDelay, HeraldClient, topicMatches } from "../dist/index.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));

test("backoff: full jitter under an exponential ceiling, capped", () => {
  const opts = { initialMs: 100, maxMs: 5000 };
  const top = () => 0.999999;
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 10, 60].map((n) => backoffDelay(n, opts, top)), [99, 199, 399, 799, 1599, 3199, 4999, 4999, 4999]);
  assert.equal(backoffDelay(7, opts, () => 0), 0, "full jitter starts at zero");
  const spread = new Set(Array.from({ length: 200 }, () => backoffDelay(3, opts)));
  assert.ok(spread.size > 50, "delays are spread, so a restarted node is not stormed");
  assert.ok([...spread].every((d) => d >= 0 && d < 800));
});

test("topic patterns: * is one token, > the rest", () => {
  assert.ok(topicMatches("a.*", "a.b"));
  assert.ok(!topicMatches("a.*", "a.b.c"));
  assert.ok(topicMatches("a.>", "a.b.c"));
  assert.ok(!topicMatches("a.>", "a"));
  assert.ok(topicMatches("a.b", "a.b"));
  assert.ok(!topicMatches("a.b", "a.c"));
});

test("options are checked up front with a message saying what to do", () => {
  assert.throws(() => new HeraldClient({ urls: [] }), /at least one URL/);
  const WS = class {};
  assert.throws(() => new HeraldClient({ urls: "ws://x/ws", format: "msgpackr", WebSocket: WS }), /only on \/v1\/ws/);
  assert.throws(() => new HeraldClient({ urls: "ws://x/jmap/ws", auth: { user: "u", password: "p" }, authTransport: "browser", WebSocket: WS }), /browsers cannot set/);
  assert.equal(new HeraldClient({ urls: "ws://x/api/v1/ws/connect", WebSocket: WS }).dialect, "rooms");
  assert.equal(new HeraldClient({ urls: "ws://x/jmap/ws", WebSocket: WS }).dialect, "jmap");
  assert.equal(new HeraldClient({ urls: "ws://x/ws", WebSocket: WS }).dialect, "ws");
  assert.throws(() => new HeraldClient({ urls: "ws://x/v1/ws", WebSocket: WS }).broadcast("t", 1), /only on the ws dialect/);
});

test("the browser example's herald-client.js is the current build (npm run bundle-demo)", () => {
  const built = readFileSync(path.join(HERE, "..", "dist", "index.js"), "utf8");
  const committed = readFileSync(path.join(HERE, "..", "..", "..", "examples", "browser", "herald-client.js"), "utf8");
  assert.ok(built === committed,
    "examples/browser/herald-client.js is stale: run `npm run bundle-demo` in clients/typescript, commit it, and rebuild herald (it is compiled in)");
});

test("close() during the handshake stops cleanly (no stray error event from ws)", async () => {
  const { default: WebSocket } = await import("ws");
  const net = await import("node:net");
  const silent = net.createServer(() => {}).listen(0, "127.0.0.1"); // accepts, never answers the upgrade
  await new Promise((r) => silent.once("listening", r));
  const client = new HeraldClient({ urls: `ws://127.0.0.1:${silent.address().port}/v1/ws`, WebSocket });
  const closed = [];
  client.on("closed", (c) => closed.push(c));
  const connecting = client.connect();
  await new Promise((r) => setTimeout(r, 200));
  await client.close();
  await assert.rejects(connecting, /closed by the client/);
  assert.deepEqual(closed, [{ code: 1000, reason: "closed by the client" }]);
  silent.close();
});
