// Refusals: an alias at its session cap answers HTTP 429 with Retry-After (header
// auth) or closes with 4429 (browser auth frame); the client waits at least
// Retry-After where the platform shows it, keeps retrying, and gets in once a slot frees.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import WebSocket from "ws";

import { HeraldClient } from "../dist/index.js";
import { Cluster, DEMO, waitFor } from "./harness.mjs";

describe("refused upgrades (alias session cap 1)", { timeout: 120_000 }, () => {
  let cluster;

  before(async () => {
    cluster = await Cluster.start({ nodes: 1, config: { limits: { connections_per_ip_per_minute: 100000, max_sessions_per_alias: 1 } } });
  });

  after(async () => {
    await cluster?.stop();
  });

  const client = (authTransport) =>
    new HeraldClient({
      urls: cluster.node("A").ws("/v1/ws"),
      auth: { user: DEMO.user, password: DEMO.password },
      WebSocket,
      authTransport,
      backoff: { initialMs: 100, maxMs: 400 },
    });

  test("HTTP 429 with Retry-After: the next attempt waits at least that long, then succeeds", async () => {
    const holder = client("header");
    await holder.connect();
    const waiting = client("header");
    const reconnecting = [];
    waiting.on("reconnecting", (r) => reconnecting.push(r));
    const started = Date.now();
    const connected = waiting.connect();
    await waitFor(() => reconnecting.length >= 1, 10_000, () => JSON.stringify(reconnecting));
    assert.equal(reconnecting[0].reason, "HTTP 429");
    assert.ok(reconnecting[0].delayMs >= 10_000, `Retry-After: 10 honoured: ${JSON.stringify(reconnecting[0])}`);
    await holder.close();
    await connected;
    assert.ok(Date.now() - started >= 9_500, "did not retry before Retry-After");
    assert.equal(reconnecting.length, 1, "one refusal, one wait, no storm");
    await waiting.close();
  });

  test("4429 after the auth frame (browsers): retried with backoff until a slot frees", async () => {
    const holder = client("header");
    await holder.connect();
    const waiting = client("browser");
    const reconnecting = [];
    waiting.on("reconnecting", (r) => reconnecting.push(r));
    const connected = waiting.connect();
    await waitFor(() => reconnecting.length >= 3, 10_000, () => JSON.stringify(reconnecting));
    assert.ok(reconnecting.every((r) => r.code === 4429 && r.delayMs <= 400), JSON.stringify(reconnecting));
    await holder.close();
    await connected;
    await waiting.close();
  });
});
