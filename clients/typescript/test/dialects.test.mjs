// The other three dialects through the client, against two real nodes on NATS:
// /ws helpers (Ack/Error by request id), /ws resume with Subscribe.since across a
// node kill, token refresh on AuthStatus token_expiring, /jmap/ws pushState resume,
// rooms re-join.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import WebSocket from "ws";

import { HeraldClient, HeraldError } from "../dist/index.js";
import { Cluster, DEMO, Publisher, demoJwt, sleep, waitFor } from "./harness.mjs";

function recorder(client) {
  const log = { notifications: [], connected: [], reconnecting: [], closed: [], resync: [], errors: [] };
  for (const k of Object.keys(log)) client.on(k === "notifications" ? "notification" : k === "errors" ? "error" : k, (x) => log[k].push(x));
  return log;
}

describe("dialects through the client (two nodes on NATS)", { timeout: 300_000 }, () => {
  let cluster;
  let pub;

  before(async () => {
    cluster = await Cluster.start({ nodes: 2, config: { realtime: { token_expiry_warning: "60s" } } });
    pub = await Publisher.connect(cluster.natsUrl);
  });

  after(async () => {
    await pub?.close();
    await cluster?.stop();
  });

  async function bothNodes() {
    for (const name of ["A", "B"]) {
      const n = cluster.node(name);
      if (!n || n.proc.exitCode !== undefined) await cluster.startNode(name);
    }
    return [cluster.node("A"), cluster.node("B")];
  }

  const wsClient = (urls, user, extra = {}) =>
    new HeraldClient({ urls, dialect: "ws", auth: { jwt: demoJwt({ sub: user }) }, WebSocket, backoff: { initialMs: 100, maxMs: 1000 }, ...extra });

  test("/ws: subscribe, broadcast and directMessage resolve with the matching Ack, reject with the Error", async () => {
    const [a, b] = await bothNodes();
    const alice = wsClient([a.ws("/ws")], "alice", { authTransport: "browser" }); // access_token.<JWT> subprotocol
    const bob = wsClient([b.ws("/ws")], "bob");
    const got = recorder(alice);
    await alice.connect();
    await bob.connect();
    try {
      const sub = await alice.subscribe(["news.*"]);
      assert.equal(sub.status, "subscribed", JSON.stringify(sub));
      const [ack1, ack2] = await Promise.all([bob.broadcast("news.a", { n: 1 }), bob.broadcast("news.b", { n: 2 })]);
      assert.equal(ack1.status, "delivered");
      assert.equal(ack1.recipients, 1, JSON.stringify(ack1));
      assert.equal(ack2.recipients, 1, JSON.stringify(ack2));
      const dm = await bob.directMessage("alice", { hi: true });
      assert.equal(dm.status, "delivered");
      assert.equal(dm.delivered_to.length, 1, JSON.stringify(dm));
      await assert.rejects(bob.directMessage("carol-offline", { hi: 1 }), (err) => {
        assert.ok(err instanceof HeraldError);
        assert.equal(err.code, 404);
        assert.equal(err.details.queued, true);
        return true;
      });
      await waitFor(() => got.notifications.length >= 3, 10_000, () => JSON.stringify(got));
      const types = got.notifications.map((n) => `${n.type}:${JSON.stringify(n.data.payload)}`);
      assert.deepEqual(types.sort(), ['Broadcast:{"n":1}', 'Broadcast:{"n":2}', 'DirectMessage:{"hi":true}']);
    } finally {
      await alice.close();
      await bob.close();
    }
  });

  test("/ws: kill -9 of the client's node: topic events resume with Subscribe.since, once and in order", async () => {
    const [a, b] = await bothNodes();
    const client = wsClient([a.ws("/ws"), b.ws("/ws")], "dana", { topics: ["feed.>"] });
    const log = recorder(client);
    await client.connect(); // resolves once the topics are subscribed
    const run = `ws-${Date.now()}`;
    for (let i = 0; i < 200; i++) {
      await pub.subject("herald.v1.topic.feed.x", { payload: { run, i } });
      if (i === 60) await a.proc.kill();
      await sleep(3);
    }
    const mine = () => log.notifications.filter((n) => n.data?.payload?.run === run);
    await waitFor(() => mine().length >= 200, 60_000, () => `${mine().length}/200 ${JSON.stringify(log.reconnecting)}\n${cluster.diag()}`);
    await sleep(500);
    assert.deepEqual(mine().map((n) => n.data.payload.i), [...Array(200).keys()]);
    assert.ok(log.reconnecting.length >= 1);
    await client.close();
  });

  test("/ws: AuthStatus token_expiring → the jwt callback is asked, the client reconnects with the new token, nothing lost", async () => {
    const [a, b] = await bothNodes();
    let calls = 0;
    const jwt = async () => {
      calls++;
      // The first token expires in 63 s: with a 60 s warning, AuthStatus comes after ~3 s.
      return demoJwt({ sub: "erin", exp: Math.floor(Date.now() / 1000) + (calls === 1 ? 63 : 3600) });
    };
    const client = new HeraldClient({ urls: [a.ws("/ws"), b.ws("/ws")], dialect: "ws", auth: { jwt }, WebSocket, topics: ["tick"] });
    const log = recorder(client);
    await client.connect();
    const run = `tok-${Date.now()}`;
    for (let i = 0; i < 60; i++) {
      await pub.subject("herald.v1.topic.tick", { payload: { run, i } });
      await sleep(100);
    }
    const mine = () => log.notifications.filter((n) => n.data?.payload?.run === run);
    await waitFor(() => mine().length >= 60, 30_000, () => `${mine().length}/60 ${JSON.stringify(log)}`);
    await sleep(300);
    assert.ok(calls >= 2, `jwt callback called ${calls} times`);
    assert.ok(log.reconnecting.some((r) => r.reason === "token refreshed"), JSON.stringify(log.reconnecting));
    assert.deepEqual(mine().map((n) => n.data.payload.i), [...Array(60).keys()]);
    assert.deepEqual(log.closed, []);
    await client.close();
  });

  test("a rejected JWT (HTTP 401 on /ws, close 4401 on rooms) makes the client ask the jwt callback, then connect", async () => {
    const [a] = await bothNodes();
    for (const [url, dialect] of [[a.ws("/ws"), "ws"], [a.ws("/api/v1/ws/connect"), "rooms"]]) {
      let calls = 0;
      const jwt = async () => {
        calls++;
        // The first token expired an hour ago (beyond any leeway); the second is good.
        return demoJwt({ sub: "42", exp: Math.floor(Date.now() / 1000) + (calls === 1 ? -3600 : 3600) });
      };
      const client = new HeraldClient({ urls: url, auth: { jwt }, WebSocket, backoff: { initialMs: 100, maxMs: 500 } });
      const log = recorder(client);
      await client.connect();
      assert.equal(calls, 2, `${dialect}: ${JSON.stringify(log)}`);
      assert.equal(log.reconnecting.length, 1, `${dialect}: ${JSON.stringify(log)}`);
      assert.deepEqual(log.closed, []);
      await client.close();
    }
  });

  test("/jmap/ws: push resumes from the last pushState on the other node", async () => {
    const [a, b] = await bothNodes();
    const client = new HeraldClient({ urls: [a.ws("/jmap/ws"), b.ws("/jmap/ws")], dialect: "jmap", auth: { user: DEMO.user, password: DEMO.password }, WebSocket, backoff: { initialMs: 100, maxMs: 500 } });
    const log = recorder(client);
    await client.connect();
    await sleep(300);
    const seq1 = await pub.alias(DEMO.aliasId, { event: "newMessage", message: { uid: 1 } });
    await waitFor(() => log.notifications.some((n) => Number(n.pushState) >= seq1), 10_000, () => JSON.stringify(log));
    assert.ok(log.notifications.at(-1).changed[DEMO.aliasId].Email, JSON.stringify(log.notifications));
    await a.proc.kill();
    const seq2 = await pub.alias(DEMO.aliasId, { event: "contactCreated", content: "BEGIN:VCARD\r\nEND:VCARD\r\n" });
    await waitFor(() => log.notifications.some((n) => Number(n.pushState) >= seq2), 20_000, () => JSON.stringify(log));
    const last = log.notifications.at(-1);
    assert.ok(last.changed[DEMO.aliasId].ContactCard, `the change made while disconnected is pushed: ${JSON.stringify(last)}`);
    assert.equal(client.pushState, last.pushState);
    await client.close();
  });

  test("rooms: rooms are re-joined after a reconnect", async () => {
    const [a, b] = await bothNodes();
    const client = new HeraldClient({ urls: [a.ws("/api/v1/ws/connect"), b.ws("/api/v1/ws/connect")], auth: { jwt: demoJwt({ sub: "42", username: "alice", rooms: ["project:123"] }) }, WebSocket, rooms: ["project:123"], backoff: { initialMs: 100, maxMs: 500 } });
    assert.equal(client.dialect, "rooms");
    const log = recorder(client);
    await client.connect();
    const tasks = () => log.notifications.filter((n) => n.type === "task.created").map((n) => n.data.n);
    await waitFor(() => log.notifications.some((n) => n.type === "user_joined"), 10_000, () => JSON.stringify(log));
    await pub.subject("herald.v1.room.project.123", { payload: { type: "task.created", data: { n: 1 } } });
    await waitFor(() => tasks().includes(1), 10_000, () => JSON.stringify(log));
    await a.proc.kill();
    await waitFor(() => log.connected.length >= 2, 20_000, () => JSON.stringify(log));
    await waitFor(() => log.notifications.filter((n) => n.type === "user_joined").length >= 2, 10_000, () => JSON.stringify(log));
    await pub.subject("herald.v1.room.project.123", { payload: { type: "task.created", data: { n: 2 } } });
    await waitFor(() => tasks().includes(2), 10_000, () => JSON.stringify(log));
    assert.deepEqual(tasks(), [1, 2]);
    await client.close();
  });
});
